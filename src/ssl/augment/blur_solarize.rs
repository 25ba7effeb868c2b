//! Gaussian blur (per-image σ, one grouped separable convolution) and
//! solarisation, with their random-application settings.
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::{
    apply_to_subset, bernoulli, check_images, check_len, check_probability, check_range, per_image,
    uniform,
};
use crate::error::{Error, Result};

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
