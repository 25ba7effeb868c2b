//! Crafted PNG headers, shared by the fuzz crate (its seeds and generated
//! dataset trees, as `amlmil_fuzz::png_header`) and tests/fuzz_regressions.rs:
//! a tiny file whose header alone declares a size.

use std::io::Cursor;

/// A 1 × 1 RGB PNG (~70 bytes) whose IHDR chunk is rewritten to declare
/// `width` × `height` pixels, its CRC recomputed so that decoders trust it:
/// only the header tells a decoder how much it would allocate.
pub fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1))
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encoding a 1 × 1 PNG in memory cannot fail");
    let mut png = out.into_inner();
    // 8-byte signature, then IHDR: length (4), type (4), width (4), height (4),
    // five one-byte fields, and the CRC of type and data (bytes 12..29).
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32fast::hash(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}
