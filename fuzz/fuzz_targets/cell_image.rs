//! Cell images from bytes: TIFF/PNG/JPEG decoding (decompression bombs included)
//! and raw pixel buffers, then the preprocessing to the encoder input (resize,
//! normalisation, NCHW tensor). Every input must give `Ok` or `Err`.
//!
//! Each input is decoded as an encoded image; when it is at least 13 bytes it is
//! also read as a raw buffer: width (u16 LE), height (u16 LE), stride (u64 LE),
//! format (`% 4`: RGB, RGBA, BGR, BGRA), then the pixels.
#![no_main]

use amlmil::checkpoint::Normalization;
use amlmil::{CellImage, PixelFormat};
use libfuzzer_sys::fuzz_target;
use tch::{Device, Kind};

/// The encoder input sides tried (the input's length picks one).
const SIZES: [u32; 4] = [32, 64, 144, 224];

fn preprocess(cell: &CellImage, size: u32) {
    let batch = amlmil::preprocess::to_input_batch(
        &[cell],
        size,
        &Normalization::default(),
        Device::Cpu,
        Kind::Float,
    )
    .expect("preprocessing a valid cell image");
    assert_eq!(batch.size(), [1, 3, i64::from(size), i64::from(size)]);
}

fuzz_target!(init: amlmil_fuzz::init("cell_image"), |data: &[u8]| {
    let size = SIZES[data.len() % SIZES.len()];
    let decoded = CellImage::decode(data, "fuzz input");
    amlmil_fuzz::report("CellImage::decode", &decoded);
    if let Ok(cell) = decoded {
        assert!(cell.width() <= amlmil::cell_image::MAX_SIDE);
        assert!(cell.height() <= amlmil::cell_image::MAX_SIDE);
        assert_eq!(cell.rgb().len(), cell.width() as usize * cell.height() as usize * 3);
        preprocess(&cell, size);
    }
    if data.len() >= 13 {
        let width = u32::from(u16::from_le_bytes([data[0], data[1]]));
        let height = u32::from(u16::from_le_bytes([data[2], data[3]]));
        let stride = u64::from_le_bytes(data[4..12].try_into().unwrap()) as usize;
        let format = [
            PixelFormat::Rgb8,
            PixelFormat::Rgba8,
            PixelFormat::Bgr8,
            PixelFormat::Bgra8,
        ][data[12] as usize % 4];
        let raw = CellImage::from_pixels(&data[13..], width, height, stride, format);
        amlmil_fuzz::report("CellImage::from_pixels", &raw);
        if let Ok(cell) = raw {
            preprocess(&cell, size);
        }
    }
});
