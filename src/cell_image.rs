//! Single-cell images as the library holds them: 8-bit RGB, tightly packed, any size.
//!
//! Cells arrive as raw pixel buffers from scanner software (RGB, RGBA, BGR or BGRA
//! with an arbitrary row stride) or as encoded TIFF/PNG/JPEG bytes or files (the
//! public AML data set ships RGBA TIFFs). Everything is converted here, once, so the
//! rest of the library sees one layout. Greyscale and 16-bit images are converted to
//! 8-bit RGB (16-bit by keeping the high byte); alpha is dropped.
use std::path::Path;

use crate::error::{Error, Result};

/// Channel order of a raw pixel buffer handed in by a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    Rgb8,
    Rgba8,
    Bgr8,
    Bgra8,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3,
            PixelFormat::Rgba8 | PixelFormat::Bgra8 => 4,
        }
    }

    fn is_bgr(self) -> bool {
        matches!(self, PixelFormat::Bgr8 | PixelFormat::Bgra8)
    }
}

/// An 8-bit RGB image, rows packed without padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellImage {
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

/// Largest side accepted; a single white cell is ~150 px, this guards against
/// a whole slide (or a garbage size) being passed as one cell.
pub const MAX_SIDE: u32 = 4096;

impl CellImage {
    /// Wraps packed RGB bytes; `rgb.len()` must be `width * height * 3`.
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<u8>) -> Result<Self> {
        check_dims(width, height)?;
        let want = width as usize * height as usize * 3;
        if rgb.len() != want {
            return Err(Error::invalid(
                "rgb",
                format!(
                    "{} bytes for a {width}x{height} RGB image, expected {want}",
                    rgb.len()
                ),
            ));
        }
        Ok(CellImage { width, height, rgb })
    }

    /// Copies a raw buffer with row stride `stride` bytes into packed RGB.
    pub fn from_pixels(
        pixels: &[u8],
        width: u32,
        height: u32,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        check_dims(width, height)?;
        let ch = format.channels();
        let row = width as usize * ch;
        if stride < row {
            return Err(Error::invalid(
                "stride",
                format!("{stride} bytes is smaller than one row ({width} px x {ch} channels = {row} bytes)"),
            ));
        }
        // `stride` comes from the caller: a huge one must not wrap the size around.
        let need = stride
            .checked_mul(height as usize - 1)
            .and_then(|n| n.checked_add(row))
            .ok_or_else(|| {
                Error::invalid(
                    "stride",
                    format!("{stride} bytes x {height} rows overflows the address space"),
                )
            })?;
        if pixels.len() < need {
            return Err(Error::invalid(
                "pixels",
                format!("buffer of {} bytes is too small for {width}x{height} with stride {stride} (needs {need})", pixels.len()),
            ));
        }
        let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
        for y in 0..height as usize {
            let line = &pixels[y * stride..y * stride + row];
            for px in line.chunks_exact(ch) {
                if format.is_bgr() {
                    rgb.extend_from_slice(&[px[2], px[1], px[0]]);
                } else {
                    rgb.extend_from_slice(&px[..3]);
                }
            }
        }
        Ok(CellImage { width, height, rgb })
    }

    /// Decodes TIFF, PNG or JPEG bytes; `source_name` names them in errors.
    pub fn decode(bytes: &[u8], source_name: &str) -> Result<Self> {
        if bytes.is_empty() {
            return Err(Error::Decode {
                source_name: source_name.to_owned(),
                reason: "zero bytes".into(),
            });
        }
        let format = image::guess_format(bytes).map_err(|e| Error::Decode {
            source_name: source_name.to_owned(),
            reason: format!("unrecognised format ({e}); TIFF, PNG and JPEG are supported"),
        })?;
        // The limits are checked against the header before any pixel buffer is
        // allocated, so a tiny file declaring a huge image (a decompression bomb)
        // is refused instead of allocating gigabytes.
        let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
        reader.limits(decode_limits());
        let img = reader.decode().map_err(|e| Error::Decode {
            source_name: source_name.to_owned(),
            reason: e.to_string(),
        })?;
        let rgb = img.to_rgb8();
        let (width, height) = rgb.dimensions();
        check_dims(width, height).map_err(|e| Error::Decode {
            source_name: source_name.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(CellImage {
            width,
            height,
            rgb: rgb.into_raw(),
        })
    }

    /// Reads and decodes an image file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
        Self::decode(&bytes, &path.display().to_string())
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    /// Packed RGB bytes, row-major.
    pub fn rgb(&self) -> &[u8] {
        &self.rgb
    }

    /// Packed RGB bytes to change in place (the size stays).
    pub fn rgb_mut(&mut self) -> &mut [u8] {
        &mut self.rgb
    }

    /// This image resized (bilinear) to `size`×`size`; a no-op clone when it already is.
    pub fn resized(&self, size: u32) -> CellImage {
        if self.width == size && self.height == size {
            return self.clone();
        }
        let buf = image::RgbImage::from_raw(self.width, self.height, self.rgb.clone())
            .expect("CellImage invariant: rgb.len() == w*h*3");
        let out = image::imageops::resize(&buf, size, size, image::imageops::FilterType::Triangle);
        CellImage {
            width: size,
            height: size,
            rgb: out.into_raw(),
        }
    }
}

/// Decoder limits: at most [`MAX_SIDE`] px a side, and as much decoder memory as a
/// 16-bit RGBA image of that size needs (plus room for the codec's own buffers).
fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(2 * u64::from(MAX_SIDE) * u64::from(MAX_SIDE) * 8);
    limits
}

fn check_dims(width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::invalid(
            "width/height",
            format!("image of {width}x{height} pixels has no pixels"),
        ));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::invalid(
            "width/height",
            format!("{width}x{height} exceeds the {MAX_SIDE} px limit for a single-cell image"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stride_and_bgr_are_honoured() {
        // 2x2 BGRA with 2 bytes of padding per row.
        let px = [
            1, 2, 3, 255, 4, 5, 6, 255, 0, 0, //
            7, 8, 9, 255, 10, 11, 12, 255, 0, 0,
        ];
        let img = CellImage::from_pixels(&px, 2, 2, 10, PixelFormat::Bgra8).unwrap();
        assert_eq!(img.rgb(), &[3, 2, 1, 6, 5, 4, 9, 8, 7, 12, 11, 10]);
    }

    #[test]
    fn short_stride_and_short_buffer_are_rejected() {
        let px = [0u8; 12];
        let e = CellImage::from_pixels(&px, 2, 2, 5, PixelFormat::Rgb8).unwrap_err();
        assert!(e.to_string().contains("stride"), "{e}");
        let e = CellImage::from_pixels(&px[..10], 2, 2, 6, PixelFormat::Rgb8).unwrap_err();
        assert!(e.to_string().contains("pixels"), "{e}");
        let e = CellImage::from_pixels(&px, 0, 2, 6, PixelFormat::Rgb8).unwrap_err();
        assert!(e.to_string().contains("width"), "{e}");
    }

    #[test]
    fn garbage_and_empty_bytes_do_not_decode() {
        assert!(matches!(
            CellImage::decode(b"", "x"),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            CellImage::decode(b"not an image at all", "x"),
            Err(Error::Decode { .. })
        ));
    }
}
