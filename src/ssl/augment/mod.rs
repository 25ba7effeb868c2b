//! Batched image augmentations of self-supervised pre-training, and the
//! multi-crop view generator.
//!
//! Every function takes float NCHW images with values in `[0, 1]` (before the
//! encoder's mean/std normalisation, which the training loop applies to the
//! views) on any device, and returns a new tensor; nothing is modified in place.
//! The operations follow torchvision's definitions, which SimCLR (Chen et al.
//! 2020), SwAV (Caron et al. 2020) and DINO (Caron et al. 2021) use:
//!
//! - random resized crop: area fraction `s ~ U(scale)`, aspect ratio
//!   `r ~ exp U(log ratio)`, `w = round(√(s·A·r))`, `h = round(√(s·A/r))`, up to
//!   ten tries, then the largest central crop within the ratio range; resampled
//!   bilinearly like `roi_align` (each output pixel averages `k×k` bilinear
//!   samples of its bin, `k = ⌈crop side / output side⌉ ≤ 4`), so shrinking a
//!   crop does not alias;
//! - rotation by any angle (`affine_grid` + `grid_sample`), flips (exact);
//! - colour jitter: brightness `x·b`, contrast `c·x + (1−c)·mean(grey(x))`,
//!   saturation `s·x + (1−s)·grey(x)`, each factor `~ U(max(0, 1−σ), 1+σ)`, hue
//!   `h ← (h + δ) mod 1` in HSV with `δ ~ U(−σ_h, σ_h)`, results clamped to
//!   `[0, 1]`, the four in a random order per image, applied with probability p;
//! - stain jitter: per image and dye, concentration `c ← α c + β` in
//!   optical-density space (`OD = −ln x = c · basis`), see [`StainJitter`];
//! - greyscale `0.299 R + 0.587 G + 0.114 B` (ITU-R 601-2) on all three channels;
//! - Gaussian blur with `σ ~ U(σ_min, σ_max)` pixels per image (separable, kernel
//!   radius `⌈3 σ_max⌉`, reflected borders);
//! - solarisation `x ← 1 − x` where `x ≥ threshold`.
//!
//! **Randomness.** Every random choice is a per-image parameter drawn on the host
//! from the caller's `&mut impl Rng` (e.g. `rand_chacha::ChaCha8Rng::seed_from_u64`)
//! in a fixed order; no tch generator and no global torch seed is used. A seed
//! therefore gives the same views on every run and the same parameters on CPU and
//! CUDA (pixel values then differ only by floating-point rounding).
//!
//! **Layout.** This file holds the crop sizes, [`Padding`] and the checks and
//! per-image helpers every family shares; `geometry.rs` the flips, rotations
//! and resized crops; `colour.rs` greyscale, HSV and colour jitter; `stain.rs` the stain jitter;
//! `blur_solarize.rs` Gaussian blur and solarisation; `pipeline.rs` the
//! per-view chain [`ViewAugment`] and the multi-crop views of
//! [`MultiCropConfig`].
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

mod blur_solarize;
mod colour;
mod geometry;
mod pipeline;
mod stain;

pub use blur_solarize::{gaussian_blur, solarize, GaussianBlur, Solarize};
pub use colour::{
    adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, grayscale, hsv_to_rgb,
    random_grayscale, rgb_to_hsv, ColorJitter,
};
pub use geometry::{
    hflip, random_flips, random_resized_crop, random_rotation, resized_crop, rotate,
    sample_crop_box, vflip, CropBox,
};
pub use pipeline::{local_size_for, CropSpec, MultiCropConfig, ViewAugment};
pub use stain::StainJitter;

/// Side of the cells of the data set (DESIGN.md §2), which presets scale to.
pub const CELL_SIZE: i64 = 144;
/// Side of the `cpu-small` presets, for runs on a laptop's CPU.
pub const CPU_SMALL_SIZE: i64 = 64;
/// Global and local crop sides of the reference implementations (ImageNet).
pub const GLOBAL_REFERENCE_SIDE: f64 = 224.0;
pub const LOCAL_REFERENCE_SIDE: f64 = 96.0;

/// How `grid_sample` fills pixels that come from outside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    /// Black, as torchvision's `RandomRotation(fill=0)`.
    Zeros,
    /// Repeat the edge pixel: a cell's near-uniform background continues, so
    /// rotated corners do not show up as dark triangles.
    #[default]
    Border,
    /// Mirror the image at its edges.
    Reflection,
}

impl Padding {
    fn grid_sampler_mode(self) -> i64 {
        match self {
            Padding::Zeros => 0,
            Padding::Border => 1,
            Padding::Reflection => 2,
        }
    }
}

/// Checks that `images` is a float NCHW batch (three channels if `rgb`); returns N, C, H, W.
fn check_images(images: &Tensor, arg: &str, rgb: bool) -> Result<[i64; 4]> {
    let size = images.size();
    let [n, c, h, w] = size[..] else {
        return Err(Error::invalid(
            arg,
            format!("expected NCHW images, got shape {size:?}"),
        ));
    };
    if !matches!(
        images.kind(),
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        return Err(Error::invalid(
            arg,
            format!(
                "expected floating-point images in [0, 1], got {:?}",
                images.kind()
            ),
        ));
    }
    if rgb && c != 3 {
        return Err(Error::invalid(
            arg,
            format!("colour operations need 3 channels, got shape {size:?}"),
        ));
    }
    if h < 1 || w < 1 || c < 1 {
        return Err(Error::invalid(arg, format!("empty images, shape {size:?}")));
    }
    Ok([n, c, h, w])
}

fn check_len(arg: &str, len: usize, n: i64) -> Result<()> {
    if len as i64 != n {
        return Err(Error::invalid(
            arg,
            format!("{len} values for a batch of {n} images"),
        ));
    }
    Ok(())
}

fn check_probability(arg: &str, p: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::invalid(
            arg,
            format!("probability {p} is not in [0, 1]"),
        ));
    }
    Ok(())
}

fn check_range(arg: &str, (lo, hi): (f64, f64), min: f64) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo >= min && lo <= hi) {
        return Err(Error::invalid(
            arg,
            format!("range ({lo}, {hi}) must be finite, ordered and at least {min}"),
        ));
    }
    Ok(())
}

/// Per-image values as a `[N]` tensor of the images' kind and device.
fn per_image(values: &[f64], like: &Tensor) -> Tensor {
    Tensor::from_slice(values)
        .to_kind(like.kind())
        .to_device(like.device())
}

/// Replaces the images at `selected` by `f` of them; the others pass unchanged.
fn apply_to_subset(
    images: &Tensor,
    selected: &[usize],
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if selected.is_empty() {
        return Ok(images.shallow_clone());
    }
    if selected.len() as i64 == images.size()[0] {
        return f(images);
    }
    let idx: Vec<i64> = selected.iter().map(|&i| i as i64).collect();
    let idx = Tensor::from_slice(&idx).to_device(images.device());
    let part = f(&images.index_select(0, &idx))?;
    Ok(images.index_copy(0, &idx, &part))
}

/// Indices of the images chosen with probability `p`, one draw per image.
fn bernoulli<R: Rng + ?Sized>(n: i64, p: f64, rng: &mut R) -> Vec<usize> {
    (0..n as usize).filter(|_| rng.random_bool(p)).collect()
}

fn uniform<R: Rng + ?Sized>(rng: &mut R, (lo, hi): (f64, f64)) -> f64 {
    lo + (hi - lo) * rng.random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// A seeded batch of `n` random RGB images of side `size`.
    pub(super) fn images(n: i64, size: i64) -> Tensor {
        tch::manual_seed(3);
        Tensor::rand([n, 3, size, size], (Kind::Float, tch::Device::Cpu))
    }

    #[test]
    fn rejects_bad_input() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let grey = Tensor::rand([2, 1, 8, 8], (Kind::Float, tch::Device::Cpu));
        assert!(grayscale(&grey).is_err());
        assert!(hflip(&Tensor::zeros([8, 8], (Kind::Float, tch::Device::Cpu))).is_err());
        assert!(hflip(&Tensor::zeros(
            [1, 3, 8, 8],
            (Kind::Uint8, tch::Device::Cpu)
        ))
        .is_err());
        assert!(gaussian_blur(&images(2, 8), &[1.0]).is_err());
        assert!(random_resized_crop(&images(2, 8), 4, (0.5, 2.0), (0.75, 1.33), &mut rng).is_err());
        let mut jitter = ColorJitter::dino();
        jitter.hue = 0.7;
        assert!(jitter.apply(&images(2, 8), &mut rng).is_err());
    }
}
