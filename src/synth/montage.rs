//! Preview montage: a PNG grid of sample cells.
//!
//! Legend (top to bottom): one row per [`CellType`] in the order of
//! [`CellType::ALL`] — segmented neutrophil, band neutrophil, lymphocyte,
//! monocyte, eosinophil, basophil, myelocyte, metamyelocyte, abnormal
//! promyelocyte (PML::RARA), faggot cell (PML::RARA), NPM1 blast, myelomonocytic
//! blast (CBFB::MYH11), abnormal eosinophil (CBFB::MYH11), RUNX1::RUNX1T1 blast;
//! each cell of a row under a different random patient stain. Then, after a
//! wider gap, one row per class in the order of [`BAG_LABELS`] (PML_RARA, NPM1,
//! CBFB_MYH11, RUNX1_RUNX1T1, control): cells drawn from one simulated patient
//! of that class (one stain, abnormal fraction 0.5 for the leukemic classes),
//! as a bag would show them.

use std::path::Path;

use image::codecs::png::{CompressionType, FilterType as PngFilter, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::cell::{render_cell, CellType};
use super::cohort::draw_patient_cells;
use super::mix_seed;
use super::stain::Stain;
use crate::classes::BAG_LABELS;
use crate::error::{Error, Result};

/// Gap between cells, pixels.
const GAP: u32 = 2;
/// Extra gap between the cell-type rows and the per-class rows.
const SECTION_GAP: u32 = 10;

/// Cells are rendered at the data set's 144 px and resized for display.
const RENDER_SIZE: u32 = super::cell::DEFAULT_IMAGE_SIZE;

/// Builds the montage: `per_row` cells per row, rendered at 144 px and shown
/// at `cell_size` px, rows as in the module documentation. Deterministic in `seed`.
pub fn montage(cell_size: u32, per_row: u32, seed: u64) -> Result<RgbImage> {
    if cell_size == 0 || cell_size > crate::cell_image::MAX_SIDE {
        return Err(Error::invalid(
            "cell_size",
            format!("{cell_size} px is out of range"),
        ));
    }
    if per_row == 0 {
        return Err(Error::invalid("per_row", "must be at least 1"));
    }
    let n_type_rows = CellType::ALL.len() as u32;
    let n_rows = n_type_rows + BAG_LABELS.len() as u32;
    let width = per_row * (cell_size + GAP) + GAP;
    let height = n_rows * (cell_size + GAP) + GAP + SECTION_GAP;
    let mut out = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));

    let mut put = |row: u32, col: u32, img: &crate::cell_image::CellImage| {
        let y0 = GAP + row * (cell_size + GAP) + if row >= n_type_rows { SECTION_GAP } else { 0 };
        let x0 = GAP + col * (cell_size + GAP);
        for (i, px) in img.rgb().chunks_exact(3).enumerate() {
            let (x, y) = (i as u32 % cell_size, i as u32 / cell_size);
            out.put_pixel(x0 + x, y0 + y, Rgb([px[0], px[1], px[2]]));
        }
    };

    for (row, t) in CellType::ALL.into_iter().enumerate() {
        for col in 0..per_row {
            let s = mix_seed(seed, 1, (row as u64) << 16 | col as u64);
            let stain = Stain::from_seed(mix_seed(s, 2, 0));
            let img = render_cell(t, RENDER_SIZE, &stain, &mut ChaCha8Rng::seed_from_u64(s))?
                .resized(cell_size);
            put(row as u32, col, &img);
        }
    }
    for (k, label) in BAG_LABELS.iter().enumerate() {
        let pseed = mix_seed(seed, 3, k as u64);
        let stain = Stain::from_seed(mix_seed(pseed, 2, 0));
        let fraction = if *label == "control" { 0.0 } else { 0.5 };
        let types = draw_patient_cells(
            label,
            per_row as usize,
            fraction,
            &mut ChaCha8Rng::seed_from_u64(pseed),
        );
        for (col, t) in types.into_iter().enumerate() {
            let cseed = mix_seed(pseed, 4, col as u64);
            let img = render_cell(
                t,
                RENDER_SIZE,
                &stain,
                &mut ChaCha8Rng::seed_from_u64(cseed),
            )?
            .resized(cell_size);
            put(n_type_rows + k as u32, col as u32, &img);
        }
    }
    Ok(out)
}

/// Renders [`montage`] with 6 cells per row and writes it as PNG to `path`
/// (colours quantised to 5 bits per channel to keep the file small).
pub fn write_montage(path: &Path, cell_size: u32, seed: u64) -> Result<()> {
    let mut img = montage(cell_size, 6, seed)?;
    // Sensor noise makes PNG large; dropping the three lowest bits of each
    // channel (hardly visible in a preview) keeps the file small.
    for v in img.iter_mut() {
        *v &= 0xF8;
    }
    let mut bytes = Vec::new();
    let encoder =
        PngEncoder::new_with_quality(&mut bytes, CompressionType::Best, PngFilter::Adaptive);
    encoder
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::io("cannot encode PNG for", path, std::io::Error::other(e)))?;
    crate::io::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn montage_has_one_row_per_type_and_class() {
        let m = montage(32, 2, 1).unwrap();
        let rows = (CellType::ALL.len() + BAG_LABELS.len()) as u32;
        assert_eq!(m.height(), rows * 34 + GAP + SECTION_GAP);
        assert_eq!(m.width(), 2 * 34 + GAP);
    }
}
