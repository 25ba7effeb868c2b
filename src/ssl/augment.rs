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
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use crate::error::{Error, Result};

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

// ---------------------------------------------------------------- geometry

/// Mirrors images left–right (exact).
pub fn hflip(images: &Tensor) -> Result<Tensor> {
    check_images(images, "images", false)?;
    Ok(images.flip([3]))
}

/// Mirrors images top–bottom (exact).
pub fn vflip(images: &Tensor) -> Result<Tensor> {
    check_images(images, "images", false)?;
    Ok(images.flip([2]))
}

/// Flips each image left–right with probability `p_horizontal`, then top–bottom
/// with probability `p_vertical` (draws: all horizontal, then all vertical).
pub fn random_flips<R: Rng + ?Sized>(
    images: &Tensor,
    p_horizontal: f64,
    p_vertical: f64,
    rng: &mut R,
) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", false)?;
    check_probability("p_horizontal", p_horizontal)?;
    check_probability("p_vertical", p_vertical)?;
    let h = bernoulli(n, p_horizontal, rng);
    let v = bernoulli(n, p_vertical, rng);
    let x = apply_to_subset(images, &h, |x| Ok(x.flip([3])))?;
    apply_to_subset(&x, &v, |x| Ok(x.flip([2])))
}

/// Rotates image `i` by `degrees[i]` counter-clockwise about its centre
/// (bilinear; `padding` fills what comes from outside).
pub fn rotate(images: &Tensor, degrees: &[f64], padding: Padding) -> Result<Tensor> {
    let [n, c, h, w] = check_images(images, "images", false)?;
    check_len("degrees", degrees.len(), n)?;
    if let Some(d) = degrees.iter().find(|d| !d.is_finite()) {
        return Err(Error::invalid(
            "degrees",
            format!("angle {d} is not finite"),
        ));
    }
    // grid_sample maps output → input in coordinates normalised per axis to
    // [−1, 1]; rotating pixel coordinates of a non-square image needs the
    // aspect ratio in the off-diagonal terms.
    let (hw, wh) = (h as f64 / w as f64, w as f64 / h as f64);
    let theta: Vec<f64> = degrees
        .iter()
        .flat_map(|d| {
            let (s, co) = d.to_radians().sin_cos();
            [co, -s * hw, 0.0, s * wh, co, 0.0]
        })
        .collect();
    let theta = per_image(&theta, images).view([n, 2, 3]);
    let grid = Tensor::f_affine_grid_generator(&theta, [n, c, h, w], false)?;
    Ok(images.f_grid_sampler_2d(&grid, 0, padding.grid_sampler_mode(), false)?)
}

/// Rotates each image by an angle drawn uniformly from `degrees` (one draw per image).
pub fn random_rotation<R: Rng + ?Sized>(
    images: &Tensor,
    degrees: (f64, f64),
    padding: Padding,
    rng: &mut R,
) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", false)?;
    check_range("degrees", degrees, f64::NEG_INFINITY)?;
    let angles: Vec<f64> = (0..n).map(|_| uniform(rng, degrees)).collect();
    rotate(images, &angles, padding)
}

/// A crop rectangle in pixels of the source image (may be fractional).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropBox {
    pub top: f64,
    pub left: f64,
    pub height: f64,
    pub width: f64,
}

/// torchvision's `RandomResizedCrop.get_params` for an `height × width` image.
pub fn sample_crop_box<R: Rng + ?Sized>(
    height: i64,
    width: i64,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> CropBox {
    let (hf, wf) = (height as f64, width as f64);
    let area = hf * wf;
    let log_ratio = (ratio.0.ln(), ratio.1.ln());
    for _ in 0..10 {
        let target = area * uniform(rng, scale);
        let aspect = uniform(rng, log_ratio).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
            let top = rng.random_range(0..=(height - h as i64)) as f64;
            let left = rng.random_range(0..=(width - w as i64)) as f64;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    // Fallback: the whole image, cut to the nearest allowed aspect ratio.
    let in_ratio = wf / hf;
    let (w, h) = if in_ratio < ratio.0 {
        (wf, (wf / ratio.0).round())
    } else if in_ratio > ratio.1 {
        ((hf * ratio.1).round(), hf)
    } else {
        (wf, hf)
    };
    CropBox {
        top: ((hf - h) / 2.0).floor(),
        left: ((wf - w) / 2.0).floor(),
        height: h,
        width: w,
    }
}

/// Resamples box `i` of image `i` to `size × size` pixels.
///
/// Bilinear sampling as `roi_align(aligned=True)`: each output pixel is the mean
/// of `k×k` bilinear samples spread over its bin, with `k = ⌈crop side / size⌉`
/// (at most 4, at least 1) shared by the batch. A box covering the whole image at
/// its own size returns the image (up to rounding).
pub fn resized_crop(images: &Tensor, boxes: &[CropBox], size: i64) -> Result<Tensor> {
    let [n, c, h, w] = check_images(images, "images", false)?;
    check_len("boxes", boxes.len(), n)?;
    if size < 1 {
        return Err(Error::invalid("size", format!("{size} px is not a size")));
    }
    let (hf, wf) = (h as f64, w as f64);
    let mut longest: f64 = 0.0;
    let mut theta = Vec::with_capacity(6 * boxes.len());
    for (i, b) in boxes.iter().enumerate() {
        let ok = [b.top, b.left, b.height, b.width]
            .iter()
            .all(|v| v.is_finite())
            && b.height > 0.0
            && b.width > 0.0;
        if !ok {
            return Err(Error::invalid(
                "boxes",
                format!("box {i} {b:?} is not a rectangle"),
            ));
        }
        longest = longest.max(b.height).max(b.width);
        // Normalised (align_corners=false) input x = (w/W)·x_out + (2·left + w)/W − 1:
        // the output's edges land on the box's edges.
        theta.extend_from_slice(&[
            b.width / wf,
            0.0,
            (2.0 * b.left + b.width) / wf - 1.0,
            0.0,
            b.height / hf,
            (2.0 * b.top + b.height) / hf - 1.0,
        ]);
    }
    let k = ((longest / size as f64).ceil() as i64).clamp(1, 4);
    let theta = per_image(&theta, images).view([n, 2, 3]);
    let grid = Tensor::f_affine_grid_generator(&theta, [n, c, size * k, size * k], false)?;
    // Border padding: samples within half a pixel of the image edge repeat it, as
    // upsample_bilinear2d does.
    let sampled = images.f_grid_sampler_2d(&grid, 0, 1, false)?;
    if k == 1 {
        return Ok(sampled);
    }
    Ok(sampled.f_avg_pool2d([k, k], [k, k], [0, 0], false, true, None::<i64>)?)
}

/// Random resized crop of every image to `size × size` (boxes drawn per image).
pub fn random_resized_crop<R: Rng + ?Sized>(
    images: &Tensor,
    size: i64,
    scale: (f64, f64),
    ratio: (f64, f64),
    rng: &mut R,
) -> Result<Tensor> {
    let [n, _, h, w] = check_images(images, "images", false)?;
    check_crop_ranges(scale, ratio)?;
    let boxes: Vec<CropBox> = (0..n)
        .map(|_| sample_crop_box(h, w, scale, ratio, rng))
        .collect();
    resized_crop(images, &boxes, size)
}

fn check_crop_ranges(scale: (f64, f64), ratio: (f64, f64)) -> Result<()> {
    check_range("scale", scale, f64::MIN_POSITIVE)?;
    if scale.1 > 1.0 {
        return Err(Error::invalid(
            "scale",
            format!("area fraction {} exceeds 1", scale.1),
        ));
    }
    check_range("ratio", ratio, f64::MIN_POSITIVE)
}

// ---------------------------------------------------------------- colour

/// ITU-R 601-2 luma of RGB images, `[N, 1, H, W]`.
fn luma(images: &Tensor) -> Tensor {
    let weights = per_image(&[0.299, 0.587, 0.114], images).view([1, 3, 1, 1]);
    (images * weights).sum_dim_intlist([1i64].as_slice(), true, images.kind())
}

/// Greyscale RGB images: the luma repeated on the three channels.
pub fn grayscale(images: &Tensor) -> Result<Tensor> {
    check_images(images, "images", true)?;
    Ok(luma(images).expand([-1, 3, -1, -1], false).contiguous())
}

/// Converts each image to greyscale with probability `p`.
pub fn random_grayscale<R: Rng + ?Sized>(images: &Tensor, p: f64, rng: &mut R) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", true)?;
    check_probability("p", p)?;
    let chosen = bernoulli(n, p, rng);
    apply_to_subset(images, &chosen, grayscale)
}

fn check_factors(arg: &str, factors: &[f64], n: i64) -> Result<()> {
    check_len(arg, factors.len(), n)?;
    if let Some(f) = factors.iter().find(|f| !(f.is_finite() && **f >= 0.0)) {
        return Err(Error::invalid(
            arg,
            format!("factor {f} must be finite and ≥ 0"),
        ));
    }
    Ok(())
}

/// `clamp(f·x, 0, 1)` per image.
pub fn adjust_brightness(images: &Tensor, factors: &[f64]) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", false)?;
    check_factors("factors", factors, n)?;
    let f = per_image(factors, images).view([n, 1, 1, 1]);
    Ok((images * f).clamp(0.0, 1.0))
}

/// `clamp(f·x + (1 − f)·mean(grey(x)), 0, 1)` per image.
pub fn adjust_contrast(images: &Tensor, factors: &[f64]) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", true)?;
    check_factors("factors", factors, n)?;
    let f = per_image(factors, images).view([n, 1, 1, 1]);
    let mean = luma(images).mean_dim([1i64, 2, 3].as_slice(), true, images.kind());
    let blended: Tensor = images * &f + mean * (1.0 - &f);
    Ok(blended.clamp(0.0, 1.0))
}

/// `clamp(f·x + (1 − f)·grey(x), 0, 1)` per image.
pub fn adjust_saturation(images: &Tensor, factors: &[f64]) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", true)?;
    check_factors("factors", factors, n)?;
    let f = per_image(factors, images).view([n, 1, 1, 1]);
    let blended: Tensor = images * &f + luma(images) * (1.0 - &f);
    Ok(blended.clamp(0.0, 1.0))
}

/// Shifts the hue of image `i` by `shifts[i]` turns (in `[−0.5, 0.5]`).
pub fn adjust_hue(images: &Tensor, shifts: &[f64]) -> Result<Tensor> {
    let [n, ..] = check_images(images, "images", true)?;
    check_len("shifts", shifts.len(), n)?;
    if let Some(s) = shifts.iter().find(|s| !(-0.5..=0.5).contains(*s)) {
        return Err(Error::invalid(
            "shifts",
            format!("hue shift {s} is not in [-0.5, 0.5]"),
        ));
    }
    let hsv = rgb_to_hsv(images)?;
    let d = per_image(shifts, images).view([n, 1, 1]);
    let hue = (hsv.select(1, 0) + d).remainder(1.0);
    let hsv = Tensor::stack(&[hue, hsv.select(1, 1), hsv.select(1, 2)], 1);
    hsv_to_rgb(&hsv)
}

/// RGB → HSV (all three in `[0, 1]`, hue in turns), as Python's `colorsys`.
pub fn rgb_to_hsv(images: &Tensor) -> Result<Tensor> {
    check_images(images, "images", true)?;
    let (r, g, b) = (
        images.select(1, 0),
        images.select(1, 1),
        images.select(1, 2),
    );
    let maxc = images.amax([1i64].as_slice(), false);
    let minc = images.amin([1i64].as_slice(), false);
    let delta = &maxc - &minc;
    let zero = delta.zeros_like();
    // Grey pixels (delta = 0) have hue and, when black, saturation 0; divide by 1 there.
    let grey = delta.eq(0.0);
    let safe_delta = delta.ones_like().where_self(&grey, &delta);
    let safe_max = maxc.ones_like().where_self(&maxc.eq(0.0), &maxc);
    let sat = (&delta / &safe_max).where_self(&maxc.gt(0.0), &zero);
    let rc = (&maxc - &r) / &safe_delta;
    let gc = (&maxc - &g) / &safe_delta;
    let bc = (&maxc - &b) / &safe_delta;
    let h_r = &bc - &gc;
    let h_g = &rc - &bc + 2.0;
    let h_b = &gc - &rc + 4.0;
    let hue = h_r.where_self(
        &maxc.eq_tensor(&r),
        &h_g.where_self(&maxc.eq_tensor(&g), &h_b),
    );
    let hue = (hue / 6.0)
        .remainder(1.0)
        .where_self(&grey.logical_not(), &zero);
    Ok(Tensor::stack(&[hue, sat, maxc], 1))
}

/// HSV → RGB, the inverse of [`rgb_to_hsv`].
pub fn hsv_to_rgb(hsv: &Tensor) -> Result<Tensor> {
    check_images(hsv, "hsv", true)?;
    let (h, s, v) = (hsv.select(1, 0), hsv.select(1, 1), hsv.select(1, 2));
    let h6 = h * 6.0;
    let sector = h6.floor();
    let f = &h6 - &sector;
    let p = &v * (1.0 - &s);
    let q = &v * (1.0 - &s * &f);
    let t = &v * (1.0 - &s * (1.0 - &f));
    // The six sectors of the hexcone; pick each channel's value by sector.
    let idx = sector
        .remainder(6.0)
        .to_kind(Kind::Int64)
        .clamp(0, 5)
        .unsqueeze(1);
    let pick = |parts: [&Tensor; 6]| Tensor::stack(&parts, 1).gather(1, &idx, false);
    let r = pick([&v, &q, &p, &p, &t, &v]);
    let g = pick([&t, &v, &v, &q, &p, &p]);
    let b = pick([&p, &p, &t, &v, &v, &q]);
    Ok(Tensor::cat(&[r, g, b], 1))
}

/// Colour jitter strengths (torchvision's `ColorJitter`) and the probability of
/// applying it to an image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColorJitter {
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    /// At most 0.5 (half a turn of the colour wheel).
    pub hue: f64,
    pub p: f64,
}

impl ColorJitter {
    /// SimCLR's jitter with strength `s`: 0.8 s, 0.8 s, 0.8 s, 0.2 s, p 0.8.
    pub fn simclr(s: f64) -> Self {
        ColorJitter {
            brightness: 0.8 * s,
            contrast: 0.8 * s,
            saturation: 0.8 * s,
            hue: 0.2 * s,
            p: 0.8,
        }
    }

    /// DINO's (and BYOL's) jitter: 0.4, 0.4, 0.2, 0.1, p 0.8.
    pub fn dino() -> Self {
        ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.2,
            hue: 0.1,
            p: 0.8,
        }
    }

    /// No jitter.
    pub fn none() -> Self {
        ColorJitter {
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
            hue: 0.0,
            p: 0.0,
        }
    }

    pub fn validate(&self) -> Result<()> {
        for (arg, v) in [
            ("color_jitter.brightness", self.brightness),
            ("color_jitter.contrast", self.contrast),
            ("color_jitter.saturation", self.saturation),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(arg, format!("strength {v} must be ≥ 0")));
            }
        }
        if !(0.0..=0.5).contains(&self.hue) {
            return Err(Error::invalid(
                "color_jitter.hue",
                format!("strength {} is not in [0, 0.5]", self.hue),
            ));
        }
        check_probability("color_jitter.p", self.p)
    }

    /// Jitters each image with probability `p`. Draws per image: whether to
    /// jitter; then for jittered images the order of the four operations (a
    /// random permutation) and the four factors, brightness to hue.
    pub fn apply<R: Rng + ?Sized>(&self, images: &Tensor, rng: &mut R) -> Result<Tensor> {
        let [n, ..] = check_images(images, "images", true)?;
        self.validate()?;
        let strengths = [self.brightness, self.contrast, self.saturation, self.hue];
        let mut order = vec![[0usize; 4]; n as usize];
        let mut factors = vec![[1.0, 1.0, 1.0, 0.0]; n as usize];
        let mut jittered = vec![false; n as usize];
        for i in 0..n as usize {
            if !rng.random_bool(self.p) {
                continue;
            }
            jittered[i] = true;
            let mut perm = [0usize, 1, 2, 3];
            // Fisher–Yates with the caller's generator.
            for k in (1..4).rev() {
                perm.swap(k, rng.random_range(0..=k));
            }
            order[i] = perm;
            for (op, &s) in strengths.iter().enumerate().take(3) {
                factors[i][op] = uniform(rng, ((1.0 - s).max(0.0), 1.0 + s));
            }
            factors[i][3] = uniform(rng, (-self.hue, self.hue));
        }
        let mut x = images.shallow_clone();
        // Slot by slot, each operation runs once on the images that have it there.
        for slot in 0..4 {
            let op_in_slot: Vec<usize> = order.iter().map(|perm| perm[slot]).collect();
            for (op, &strength) in strengths.iter().enumerate() {
                if strength == 0.0 {
                    continue; // torchvision skips an operation of strength 0
                }
                let chosen: Vec<usize> = (0..n as usize)
                    .filter(|&i| jittered[i] && op_in_slot[i] == op)
                    .collect();
                let f: Vec<f64> = chosen.iter().map(|&i| factors[i][op]).collect();
                x = apply_to_subset(&x, &chosen, |sub| match op {
                    0 => adjust_brightness(sub, &f),
                    1 => adjust_contrast(sub, &f),
                    2 => adjust_saturation(sub, &f),
                    _ => adjust_hue(sub, &f),
                })?;
            }
        }
        Ok(x)
    }
}

// ---------------------------------------------------------------- blur, solarise

/// Blurs image `i` with a Gaussian of standard deviation `sigmas[i]` pixels
/// (separable; kernel radius `⌈3 max σ⌉`, at most the image side − 1; borders
/// reflected, so a constant image stays constant).
pub fn gaussian_blur(images: &Tensor, sigmas: &[f64]) -> Result<Tensor> {
    let [n, c, h, w] = check_images(images, "images", false)?;
    check_len("sigmas", sigmas.len(), n)?;
    if let Some(s) = sigmas.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid("sigmas", format!("σ {s} must be > 0")));
    }
    if n == 0 {
        return Ok(images.shallow_clone());
    }
    let max_sigma = sigmas.iter().cloned().fold(0.0, f64::max);
    let radius = ((3.0 * max_sigma).ceil() as i64).min(h.min(w) - 1);
    if radius < 1 {
        return Ok(images.shallow_clone());
    }
    let k = 2 * radius + 1;
    let mut kernels = Vec::with_capacity((n * k) as usize);
    for &s in sigmas {
        let taps: Vec<f64> = (-radius..=radius)
            .map(|x| (-((x * x) as f64) / (2.0 * s * s)).exp())
            .collect();
        let total: f64 = taps.iter().sum();
        kernels.extend(taps.iter().map(|t| t / total));
    }
    // One group per (image, channel): the batch becomes the channels of a single
    // image so every image gets its own kernel in one grouped convolution.
    let kernel = per_image(&kernels, images)
        .view([n, 1, k])
        .expand([n, c, k], false)
        .reshape([n * c, 1, 1, k]);
    let x = images
        .reshape([1, n * c, h, w])
        .f_reflection_pad2d([radius, radius, radius, radius])?;
    let x = x.f_conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], n * c)?;
    let x = x.f_conv2d(
        &kernel.view([n * c, 1, k, 1]),
        None::<Tensor>,
        [1, 1],
        [0, 0],
        [1, 1],
        n * c,
    )?;
    Ok(x.reshape([n, c, h, w]))
}

/// Gaussian blur settings: probability and σ range in pixels **of the
/// references' view sizes** (σ 0.1–2 on 224-px global and 96-px local crops);
/// [`GaussianBlur::apply`] scales σ by the view's side over that reference, so
/// a 32-px crop is blurred as much, relative to its content, as a 224-px one.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GaussianBlur {
    pub p: f64,
    pub sigma: (f64, f64),
}

impl GaussianBlur {
    pub fn validate(&self) -> Result<()> {
        check_probability("blur.p", self.p)?;
        check_range("blur.sigma", self.sigma, f64::MIN_POSITIVE)
    }

    /// Blurs each image with probability `p` (draws per image: whether, then
    /// σ · side / `reference_side`).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        images: &Tensor,
        rng: &mut R,
        reference_side: f64,
    ) -> Result<Tensor> {
        let [n, _, _, side] = check_images(images, "images", false)?;
        self.validate()?;
        let relative = side as f64 / reference_side;
        let mut chosen = Vec::new();
        let mut sigmas = Vec::new();
        for i in 0..n as usize {
            if rng.random_bool(self.p) {
                chosen.push(i);
                sigmas.push(uniform(rng, self.sigma) * relative);
            }
        }
        apply_to_subset(images, &chosen, |x| gaussian_blur(x, &sigmas))
    }
}

/// Inverts the pixels at or above `threshold`: `x ≥ t ? 1 − x : x`.
pub fn solarize(images: &Tensor, threshold: f64) -> Result<Tensor> {
    check_images(images, "images", false)?;
    Ok(images
        .neg()
        .f_add_scalar(1.0)?
        .where_self(&images.ge(threshold), images))
}

/// Solarisation settings (DINO/BYOL: p 0.2 on the second global view, threshold ½).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Solarize {
    pub p: f64,
    pub threshold: f64,
}

impl Solarize {
    pub fn validate(&self) -> Result<()> {
        check_probability("solarize.p", self.p)?;
        if !self.threshold.is_finite() {
            return Err(Error::invalid("solarize.threshold", "must be finite"));
        }
        Ok(())
    }

    /// Solarises each image with probability `p`.
    pub fn apply<R: Rng + ?Sized>(&self, images: &Tensor, rng: &mut R) -> Result<Tensor> {
        let [n, ..] = check_images(images, "images", false)?;
        self.validate()?;
        let chosen = bernoulli(n, self.p, rng);
        apply_to_subset(images, &chosen, |x| solarize(x, self.threshold))
    }
}

// ---------------------------------------------------------------- pipelines

/// Augmentations of one view after its crop, applied in this order: flips,
/// rotation, colour jitter, greyscale, blur, solarisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewAugment {
    pub p_horizontal_flip: f64,
    pub p_vertical_flip: f64,
    /// Angle range in degrees, drawn uniformly; `None` for no rotation.
    pub rotation: Option<(f64, f64)>,
    pub rotation_padding: Padding,
    pub color_jitter: ColorJitter,
    pub p_grayscale: f64,
    pub blur: GaussianBlur,
    pub solarize: Solarize,
}

impl ViewAugment {
    /// SimCLR's view (Chen et al. 2020, appendix A) with the cell-specific
    /// rotation and vertical flip of DESIGN.md §2: jitter strength 1, greyscale
    /// 0.2, blur p 0.5 with σ 0.1–2.0.
    pub fn simclr() -> Self {
        ViewAugment {
            p_horizontal_flip: 0.5,
            p_vertical_flip: 0.5,
            // Cells have no up or down: any angle.
            rotation: Some((-180.0, 180.0)),
            rotation_padding: Padding::Border,
            color_jitter: ColorJitter::simclr(1.0),
            p_grayscale: 0.2,
            blur: GaussianBlur {
                p: 0.5,
                sigma: (0.1, 2.0),
            },
            solarize: Solarize {
                p: 0.0,
                threshold: 0.5,
            },
        }
    }

    /// DINO's view: jitter (0.4, 0.4, 0.2, 0.1) p 0.8, greyscale 0.2, the given
    /// blur and solarisation probabilities (global 1: 1.0/0; global 2: 0.1/0.2;
    /// local: 0.5/0), plus the cells' rotation and vertical flip.
    pub fn dino(p_blur: f64, p_solarize: f64) -> Self {
        ViewAugment {
            color_jitter: ColorJitter::dino(),
            blur: GaussianBlur {
                p: p_blur,
                sigma: (0.1, 2.0),
            },
            solarize: Solarize {
                p: p_solarize,
                threshold: 0.5,
            },
            ..Self::simclr()
        }
    }

    /// Only the crop: no flips, rotation or photometric change.
    pub fn identity() -> Self {
        ViewAugment {
            p_horizontal_flip: 0.0,
            p_vertical_flip: 0.0,
            rotation: None,
            rotation_padding: Padding::Border,
            color_jitter: ColorJitter::none(),
            p_grayscale: 0.0,
            blur: GaussianBlur {
                p: 0.0,
                sigma: (0.1, 2.0),
            },
            solarize: Solarize {
                p: 0.0,
                threshold: 0.5,
            },
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_probability("p_horizontal_flip", self.p_horizontal_flip)?;
        check_probability("p_vertical_flip", self.p_vertical_flip)?;
        if let Some(r) = self.rotation {
            check_range("rotation", r, f64::NEG_INFINITY)?;
        }
        self.color_jitter.validate()?;
        check_probability("p_grayscale", self.p_grayscale)?;
        self.blur.validate()?;
        self.solarize.validate()
    }

    /// Applies the chain to already cropped images; `reference_side` is the
    /// side the references give the blur's σ for (224 for global views, 96 for
    /// local ones: [`GLOBAL_REFERENCE_SIDE`], [`LOCAL_REFERENCE_SIDE`]).
    pub fn apply<R: Rng + ?Sized>(
        &self,
        images: &Tensor,
        rng: &mut R,
        reference_side: f64,
    ) -> Result<Tensor> {
        self.validate()?;
        let mut x = random_flips(images, self.p_horizontal_flip, self.p_vertical_flip, rng)?;
        if let Some(degrees) = self.rotation {
            x = random_rotation(&x, degrees, self.rotation_padding, rng)?;
        }
        x = self.color_jitter.apply(&x, rng)?;
        x = random_grayscale(&x, self.p_grayscale, rng)?;
        x = self.blur.apply(&x, rng, reference_side)?;
        self.solarize.apply(&x, rng)
    }
}

/// One kind of crop of a multi-crop set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CropSpec {
    /// Number of views of this kind.
    pub count: usize,
    /// Output side in pixels.
    pub size: i64,
    /// Range of the crop's area as a fraction of the image.
    pub scale: (f64, f64),
    /// Augmentation of view `i` is `augment[i % len]` (DINO's two global views differ).
    pub augment: Vec<ViewAugment>,
}

/// Multi-crop views (Caron et al. 2020): `global.count` large crops followed by
/// `local.count` small ones, all from the same images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MultiCropConfig {
    pub global: CropSpec,
    pub local: CropSpec,
    /// Aspect-ratio range of the crops (3/4 – 4/3 in all three methods).
    pub ratio: (f64, f64),
}

/// Local crop side for a global side, keeping the references' 96 : 224 ratio
/// (rounded to an even number of pixels).
pub fn local_size_for(global_size: i64) -> i64 {
    2 * ((LOCAL_REFERENCE_SIDE / GLOBAL_REFERENCE_SIDE * global_size as f64) / 2.0).round() as i64
}

impl MultiCropConfig {
    /// SimCLR: two views of scale 0.08–1 at `size` px.
    pub fn simclr(size: i64) -> Self {
        MultiCropConfig {
            global: CropSpec {
                count: 2,
                size,
                scale: (0.08, 1.0),
                augment: vec![ViewAugment::simclr()],
            },
            local: CropSpec {
                count: 0,
                size: local_size_for(size),
                scale: (0.05, 0.14),
                augment: vec![ViewAugment::simclr()],
            },
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// SwAV: 2 global views (scale 0.14–1) at `size` px and 6 local views (scale
    /// 0.05–0.14) at 96/224 of it, all with SimCLR's augmentations.
    pub fn swav(size: i64) -> Self {
        let mut c = Self::simclr(size);
        c.global.scale = (0.14, 1.0);
        c.local.count = 6;
        c
    }

    /// DINO: 2 global views (scale 0.4–1; blur p 1.0, then blur 0.1 + solarise
    /// 0.2) and 8 local views (scale 0.05–0.4, blur 0.5) at 96/224 of `size`.
    pub fn dino(size: i64) -> Self {
        MultiCropConfig {
            global: CropSpec {
                count: 2,
                size,
                scale: (0.4, 1.0),
                augment: vec![ViewAugment::dino(1.0, 0.0), ViewAugment::dino(0.1, 0.2)],
            },
            local: CropSpec {
                count: 8,
                size: local_size_for(size),
                scale: (0.05, 0.4),
                augment: vec![ViewAugment::dino(0.5, 0.0)],
            },
            ratio: (3.0 / 4.0, 4.0 / 3.0),
        }
    }

    /// Presets by name: `simclr`, `swav`, `dino` at 144 px cells (local crops
    /// 62 px), or with the suffix `-cpu-small` at 64 px (local crops 28 px).
    pub fn preset(name: &str) -> Result<Self> {
        let (method, size) = match name.strip_suffix("-cpu-small") {
            Some(m) => (m, CPU_SMALL_SIZE),
            None => (name, CELL_SIZE),
        };
        match method {
            "simclr" => Ok(Self::simclr(size)),
            "swav" => Ok(Self::swav(size)),
            "dino" => Ok(Self::dino(size)),
            _ => Err(Error::invalid(
                "preset",
                format!("`{name}` is not a multi-crop preset (simclr, swav, dino, with optional -cpu-small)"),
            )),
        }
    }

    /// Turns off colour jitter and greyscale in every view (the `cpu-small`
    /// DINO preset: at that scale they drive DINO's head to uniform outputs).
    pub fn without_colour_changes(&mut self) {
        for a in self
            .global
            .augment
            .iter_mut()
            .chain(self.local.augment.iter_mut())
        {
            a.color_jitter = ColorJitter::none();
            a.p_grayscale = 0.0;
        }
    }

    /// Number of views [`MultiCropConfig::views`] returns.
    pub fn num_views(&self) -> usize {
        self.global.count + self.local.count
    }

    pub fn validate(&self) -> Result<()> {
        check_range("ratio", self.ratio, f64::MIN_POSITIVE)?;
        if self.global.count == 0 {
            return Err(Error::invalid("global.count", "at least one global view"));
        }
        if self.num_views() < 2 {
            return Err(Error::invalid(
                "global.count",
                "self-supervised pre-training compares at least two views",
            ));
        }
        for (arg, spec) in [("global", &self.global), ("local", &self.local)] {
            if spec.count == 0 {
                continue;
            }
            if spec.size < 1 {
                return Err(Error::invalid(
                    format!("{arg}.size"),
                    format!("{} px is not a size", spec.size),
                ));
            }
            check_crop_ranges(spec.scale, self.ratio)?;
            if spec.augment.is_empty() {
                return Err(Error::invalid(
                    format!("{arg}.augment"),
                    "at least one augmentation chain",
                ));
            }
            for a in &spec.augment {
                a.validate()?;
            }
        }
        Ok(())
    }

    /// The views of a batch: `global.count` tensors `[N, 3, G, G]`, then
    /// `local.count` tensors `[N, 3, L, L]`. Each view draws its crop boxes, then
    /// its augmentation parameters, in view order.
    pub fn views<R: Rng + ?Sized>(&self, images: &Tensor, rng: &mut R) -> Result<Vec<Tensor>> {
        check_images(images, "images", true)?;
        self.validate()?;
        let mut out = Vec::with_capacity(self.num_views());
        for (spec, reference) in [
            (&self.global, GLOBAL_REFERENCE_SIDE),
            (&self.local, LOCAL_REFERENCE_SIDE),
        ] {
            for i in 0..spec.count {
                let x = random_resized_crop(images, spec.size, spec.scale, self.ratio, rng)?;
                out.push(spec.augment[i % spec.augment.len()].apply(&x, rng, reference)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn images(n: i64, size: i64) -> Tensor {
        tch::manual_seed(3);
        Tensor::rand([n, 3, size, size], (Kind::Float, tch::Device::Cpu))
    }

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    #[test]
    fn presets_scale_crop_sizes() {
        assert_eq!(local_size_for(224), 96);
        assert_eq!(local_size_for(144), 62);
        assert_eq!(local_size_for(64), 28);
        let d = MultiCropConfig::preset("dino").unwrap();
        assert_eq!((d.global.count, d.local.count), (2, 8));
        assert_eq!((d.global.size, d.local.size), (144, 62));
        let s = MultiCropConfig::preset("swav-cpu-small").unwrap();
        assert_eq!((s.global.count, s.local.count, s.global.size), (2, 6, 64));
        assert_eq!(MultiCropConfig::preset("simclr").unwrap().num_views(), 2);
        assert!(MultiCropConfig::preset("byol").is_err());
        let json = serde_json::to_string(&d).unwrap();
        let back: MultiCropConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
    }

    #[test]
    fn hsv_round_trip() {
        let x = images(4, 16);
        let back = hsv_to_rgb(&rgb_to_hsv(&x).unwrap()).unwrap();
        assert!(max_abs(&x, &back) < 1e-5);
        let shifted = adjust_hue(&x, &[0.0; 4]).unwrap();
        assert!(max_abs(&x, &shifted) < 1e-5);
    }

    #[test]
    fn hue_of_primaries() {
        // red, yellow, green, blue pixels: hue 0, 1/6, 1/3, 2/3.
        let px = Tensor::from_slice(&[1f32, 1., 0., 0., 0., 1., 1., 0., 0., 0., 0., 1.])
            .view([1, 3, 1, 4]);
        let hsv = rgb_to_hsv(&px).unwrap();
        let h = Vec::<f32>::try_from(hsv.select(1, 0).flatten(0, -1)).unwrap();
        let want = [0.0, 1.0 / 6.0, 1.0 / 3.0, 2.0 / 3.0];
        for (a, b) in h.iter().zip(want) {
            assert!((*a as f64 - b).abs() < 1e-6, "{h:?}");
        }
        // Shifting red by a third of a turn gives green.
        let g = adjust_hue(&px.narrow(3, 0, 1), &[1.0 / 3.0]).unwrap();
        let g = Vec::<f32>::try_from(g.flatten(0, -1)).unwrap();
        assert!((g[0]).abs() < 1e-6 && (g[1] - 1.0).abs() < 1e-6 && g[2].abs() < 1e-6);
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

    #[test]
    fn crop_box_within_image() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let b = sample_crop_box(50, 70, (0.05, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            assert!(b.top >= 0.0 && b.left >= 0.0 && b.height >= 1.0 && b.width >= 1.0);
            assert!(
                b.top + b.height <= 50.0 && b.left + b.width <= 70.0,
                "{b:?}"
            );
        }
    }
}
