//! Geometric augmentations: flips, rotation by any angle, and the random
//! resized crop (torchvision's box sampling, `roi_align`-like resampling).
use rand::Rng;
use tch::Tensor;

use super::{
    apply_to_subset, bernoulli, check_images, check_len, check_probability, check_range, per_image,
    uniform, Padding,
};
use crate::error::{Error, Result};

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

pub(super) fn check_crop_ranges(scale: (f64, f64), ratio: (f64, f64)) -> Result<()> {
    check_range("scale", scale, f64::MIN_POSITIVE)?;
    if scale.1 > 1.0 {
        return Err(Error::invalid(
            "scale",
            format!("area fraction {} exceeds 1", scale.1),
        ));
    }
    check_range("ratio", ratio, f64::MIN_POSITIVE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

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
