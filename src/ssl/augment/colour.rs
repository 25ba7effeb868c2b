//! Colour augmentations: greyscale, brightness, contrast, saturation and hue
//! (through HSV), and the random-order [`ColorJitter`] built from them.
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{
    apply_to_subset, bernoulli, check_images, check_len, check_probability, per_image, uniform,
};
use crate::error::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::super::tests::images;
    use super::*;

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
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
}
