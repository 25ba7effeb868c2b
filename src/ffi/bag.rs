//! `amlmil_bag`: one patient's cells, added as raw pixels, encoded bytes or files.
use std::ffi::c_char;
use std::path::Path;

use parking_lot::RwLock;

use super::boundary::{arg_ref, arg_slice, arg_str, guard, guard_value, out_ptr};
use super::session::amlmil_session;
use super::status::{amlmil_status, FfiError};
use crate::bag::Bag;
use crate::cell_image::{CellImage, PixelFormat};
use crate::error::Error;
use crate::streaming::StreamingBag;

/// Opaque bag of cells. Create with `amlmil_bag_new`, free with `amlmil_bag_free`.
///
/// What a cell should be (the preprocessing contract): one segmented white
/// cell, centred, at the magnification the encoder was trained on (the
/// session's `amlmil_model_info.pixel_size_um` when recorded; the public AML
/// data set is 144 × 144 px crops covering 24.9 µm, 0.17 µm a pixel). Any size
/// from 1 to 4096 px a side is accepted and stretched (bilinear, aspect ratio
/// not kept) to the encoder's square `input_size`: pad or crop non-square cells
/// to a square first when their aspect ratio matters, and expect tiny crops
/// (a few pixels) to be upscaled into blur rather than refused. Pixels are
/// 8-bit; an alpha channel is dropped (not composited), greyscale is copied to
/// three channels and 16-bit images keep their high byte. Preprocessing
/// plugins and callbacks see the cells as added, before the resize.
///
/// Memory: a plain bag keeps a packed RGB copy of every cell (the caller
/// bounds it; sessions refuse to classify more than `max_cells_per_bag`
/// cells); a streaming bag (`amlmil_bag_stream`) keeps only features.
///
/// Thread safety: a bag may be classified from several threads at once; adding
/// cells while another thread classifies the same bag is safe but the
/// classification then sees the bag either before or after the addition.
#[allow(non_camel_case_types)]
pub struct amlmil_bag {
    pub(crate) inner: RwLock<BagCells>,
}

/// A bag's cells: kept as images, or streamed to a session's encoder.
pub(crate) enum BagCells {
    Plain(Bag),
    Streaming(StreamingBag),
}

impl BagCells {
    pub(crate) fn len(&self) -> usize {
        match self {
            BagCells::Plain(b) => b.len(),
            BagCells::Streaming(b) => b.len(),
        }
    }

    fn add(&mut self, id: u64, cell: CellImage) -> crate::Result<()> {
        match self {
            BagCells::Plain(b) => b.add(id, cell),
            BagCells::Streaming(b) => b.add(id, cell),
        }
    }

    fn clear(&mut self) -> crate::Result<()> {
        *self = match self {
            BagCells::Plain(_) => BagCells::Plain(Bag::new()),
            BagCells::Streaming(b) => BagCells::Streaming(StreamingBag::new(b.session().clone())?),
        };
        Ok(())
    }

    /// The plain bag, or an error naming `what` needs the images a streaming bag dropped.
    pub(crate) fn plain(&self, what: &str) -> Result<&Bag, FfiError> {
        match self {
            BagCells::Plain(b) => Ok(b),
            BagCells::Streaming(_) => Err(Error::invalid(
                "bag",
                format!("streams its cells to a session's encoder and keeps no images; {what} needs a bag that is not streaming"),
            )
            .into()),
        }
    }
}

/// Channel order of a raw pixel buffer (values of the `format` argument).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum amlmil_pixel_format {
    Rgb8 = 0,
    Rgba8 = 1,
    Bgr8 = 2,
    Bgra8 = 3,
}

/// Creates an empty bag.
///
/// @param[out] out_bag receives the new bag; the caller owns it and frees it with
///   `amlmil_bag_free`. Untouched on failure.
/// @return AMLMIL_STATUS_OK, or AMLMIL_STATUS_NULL_ARGUMENT if `out_bag` is NULL.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_new(out_bag: *mut *mut amlmil_bag) -> amlmil_status {
    guard(|| {
        let out = out_ptr(out_bag, "out_bag")?;
        let bag = Box::new(amlmil_bag {
            inner: RwLock::new(BagCells::Plain(Bag::new())),
        });
        *out = Box::into_raw(bag);
        Ok(())
    })
}

/// Frees a bag. `NULL` is a no-op. The bag must not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_free(bag: *mut amlmil_bag) {
    guard_value((), || {
        if !bag.is_null() {
            drop(Box::from_raw(bag));
        }
    })
}

/// Number of cells in the bag.
///
/// @param[out] out_len receives the count. Untouched on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_len(
    bag: *const amlmil_bag,
    out_len: *mut usize,
) -> amlmil_status {
    guard(|| {
        let bag = arg_ref(bag, "bag")?;
        let out = out_ptr(out_len, "out_len")?;
        *out = bag.inner.read().len();
        Ok(())
    })
}

/// Removes every cell from the bag so it can be reused for another patient
/// (a streaming bag keeps streaming to its session).
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_clear(bag: *mut amlmil_bag) -> amlmil_status {
    guard(|| Ok(arg_ref(bag, "bag")?.inner.write().clear()?))
}

fn add(bag: &amlmil_bag, cell_id: u64, cell: CellImage) -> Result<(), FfiError> {
    Ok(bag.inner.write().add(cell_id, cell)?)
}

/// Adds one cell from a raw 8-bit pixel buffer. The pixels are copied.
///
/// @param bag the bag (not NULL).
/// @param cell_id caller-chosen id, unique within the bag; results refer to cells by it.
/// @param pixels `height` rows of `width` pixels, `stride` bytes apart.
/// @param pixels_len size of the `pixels` buffer in bytes (checked against the geometry).
/// @param width, height image size in pixels (1..4096).
/// @param stride bytes from one row to the next; at least `width * channels`.
/// @param format one of `amlmil_pixel_format`.
/// @return AMLMIL_STATUS_OK; AMLMIL_STATUS_NULL_ARGUMENT, AMLMIL_STATUS_INVALID_ARGUMENT
///   (bad size, stride, format or duplicate id). The bag is unchanged on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_add_pixels(
    bag: *mut amlmil_bag,
    cell_id: u64,
    pixels: *const u8,
    pixels_len: usize,
    width: u32,
    height: u32,
    stride: usize,
    format: u32,
) -> amlmil_status {
    guard(|| {
        let bag = arg_ref(bag, "bag")?;
        let pixels = arg_slice(pixels, pixels_len, "pixels")?;
        let format = match format {
            0 => PixelFormat::Rgb8,
            1 => PixelFormat::Rgba8,
            2 => PixelFormat::Bgr8,
            3 => PixelFormat::Bgra8,
            other => {
                return Err(Error::invalid(
                    "format",
                    format!("{other} is not an amlmil_pixel_format (0..=3)"),
                )
                .into())
            }
        };
        add(
            bag,
            cell_id,
            CellImage::from_pixels(pixels, width, height, stride, format)?,
        )
    })
}

/// Adds one cell from encoded TIFF, PNG or JPEG bytes (RGB, RGBA, greyscale, 8 or 16 bit).
///
/// @return AMLMIL_STATUS_OK; AMLMIL_STATUS_DECODE when the bytes are not a supported
///   image. The bag is unchanged on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_add_encoded(
    bag: *mut amlmil_bag,
    cell_id: u64,
    data: *const u8,
    data_len: usize,
) -> amlmil_status {
    guard(|| {
        let bag = arg_ref(bag, "bag")?;
        let data = arg_slice(data, data_len, "data")?;
        add(bag, cell_id, CellImage::decode(data, "`data`")?)
    })
}

/// Adds one cell from an image file (TIFF, PNG or JPEG), path in UTF-8.
///
/// @return AMLMIL_STATUS_OK; AMLMIL_STATUS_IO when the file cannot be read;
///   AMLMIL_STATUS_DECODE when it is not a supported image. The bag is unchanged on failure.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_add_file(
    bag: *mut amlmil_bag,
    cell_id: u64,
    path: *const c_char,
) -> amlmil_status {
    guard(|| {
        let bag = arg_ref(bag, "bag")?;
        let path = arg_str(path, "path")?;
        add(bag, cell_id, CellImage::open(Path::new(path))?)
    })
}

/// Makes an empty bag stream: from now on every cell added is encoded by
/// `session` on a background worker while the caller goes on adding (a scanner
/// adding cells as it segments), and only its features are kept, so memory is
/// bounded by the batch, not the bag. `amlmil_session_classify` with the same
/// session then only encodes the last partial batch and runs the MIL head.
///
/// `add` calls block while the worker is a batch behind. The bag keeps the
/// session alive until the bag is freed. `amlmil_session_embed` needs the
/// images and refuses a streaming bag; `amlmil_bag_clear` empties it and it
/// keeps streaming. Adding more cells than the session's `max_cells_per_bag`
/// returns AMLMIL_STATUS_LIMIT (the cell is not added).
///
/// @return AMLMIL_STATUS_OK; _INVALID_ARGUMENT when the bag already holds
///   cells or streams already; _UNSUPPORTED when the session preprocesses
///   cells (`preprocess` or `plugin_path` in its options).
/// Thread safety: as for the other bag calls.
#[no_mangle]
pub unsafe extern "C" fn amlmil_bag_stream(
    bag: *mut amlmil_bag,
    session: *const amlmil_session,
) -> amlmil_status {
    guard(|| {
        let bag = arg_ref(bag, "bag")?;
        let session = arg_ref(session, "session")?.shared();
        if session.has_preprocessors() {
            return Err(FfiError::Unsupported(
                "a session with a preprocessing plugin or callback cannot stream bags (plugins may drop cells the stream has already counted); use a plain bag".into(),
            ));
        }
        let mut cells = bag.inner.write();
        match &*cells {
            BagCells::Streaming(_) => return Err(Error::invalid("bag", "streams already").into()),
            BagCells::Plain(b) if !b.is_empty() => {
                return Err(Error::invalid(
                    "bag",
                    format!(
                        "holds {} cells; make a bag stream before adding cells",
                        b.len()
                    ),
                )
                .into())
            }
            BagCells::Plain(_) => {}
        }
        *cells = BagCells::Streaming(StreamingBag::new(session)?);
        Ok(())
    })
}
