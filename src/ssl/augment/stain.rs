//! Stain jitter in optical-density space.
//!
//! A stained smear is, to the light that crosses it, a sum of dyes: by the
//! Beer–Lambert law a pixel's optical density `OD = −ln(I / I₀)` is the dye
//! concentrations times each dye's OD vector, `OD = c · B` (rows of `B`: one
//! dye's OD per unit concentration, R G B). What varies from slide to slide is
//! dye uptake and scanner white balance, i.e. the concentrations, not the hue
//! of the image. [`StainJitter`] therefore changes each image the way another
//! slide would: per image and dye, `c ← α c + β` with `α ~ U(1 − scale, 1 + scale)`
//! and `β ~ U(−shift, shift)`, then back to RGB (after Tellez et al. 2018,
//! "H&E-DAB"/HED augmentation, here for whatever stain `basis` names).
//!
//! `I₀ = 1` (images in `[0, 1]`, white light); intensities are clamped to
//! `[1/255, 1]` before the logarithm, so a saturated pixel has a finite OD.
//! The default basis is the identity, one "dye" per colour channel: a
//! stain-agnostic per-channel OD jitter that needs no knowledge of the stain.
//! A lab that knows its stain vectors (e.g. estimated from its slides by
//! Macenko's method) sets `basis` to them and jitters the dyes themselves.
use rand::Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::{check_images, check_probability, uniform};
use crate::error::{Error, Result};

/// Darkest intensity the optical density is computed from (one 8-bit level).
const MIN_INTENSITY: f64 = 1.0 / 255.0;

/// Per-image jitter of the dye concentrations (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StainJitter {
    /// Probability of jittering an image.
    pub p: f64,
    /// Concentration factor range: `α ~ U(1 − scale, 1 + scale)`, `scale` in `[0, 1)`.
    pub scale: f64,
    /// Concentration shift range (OD units): `β ~ U(−shift, shift)`.
    pub shift: f64,
    /// Rows: the OD vector (R, G, B) of one dye per unit concentration; must
    /// be invertible. Rows are used as given (not normalised).
    pub basis: [[f64; 3]; 3],
}

impl Default for StainJitter {
    fn default() -> Self {
        StainJitter::none()
    }
}

impl StainJitter {
    /// No jitter.
    pub fn none() -> Self {
        StainJitter {
            p: 0.0,
            scale: 0.0,
            shift: 0.0,
            basis: IDENTITY,
        }
    }

    /// Per-channel OD jitter of the given strengths, applied with probability `p`.
    pub fn per_channel(p: f64, scale: f64, shift: f64) -> Self {
        StainJitter {
            p,
            scale,
            shift,
            basis: IDENTITY,
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_probability("stain_jitter.p", self.p)?;
        if !(0.0..1.0).contains(&self.scale) {
            return Err(Error::invalid(
                "stain_jitter.scale",
                format!("{} is not in [0, 1)", self.scale),
            ));
        }
        if !(self.shift.is_finite() && self.shift >= 0.0) {
            return Err(Error::invalid(
                "stain_jitter.shift",
                format!("{} must be finite and ≥ 0", self.shift),
            ));
        }
        if self.basis.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "stain_jitter.basis",
                "has a non-finite entry",
            ));
        }
        inverse(&self.basis).map(|_| ())
    }

    /// Jitters each image with probability `p`. Draws per image: whether to
    /// jitter (one draw also when `p` is 0: adding this step to the chain
    /// moved the later draws of every view once); then for jittered images
    /// `α` and `β` of each dye in basis order.
    pub fn apply<R: Rng + ?Sized>(&self, images: &Tensor, rng: &mut R) -> Result<Tensor> {
        let [n, _, h, w] = check_images(images, "images", true)?;
        self.validate()?;
        let inv = inverse(&self.basis)?;
        let mut mats = Vec::with_capacity(9 * n as usize);
        let mut offsets = Vec::with_capacity(3 * n as usize);
        let mut jittered = false;
        for _ in 0..n {
            let (mut alpha, mut beta) = ([1.0; 3], [0.0; 3]);
            if rng.random_bool(self.p) {
                jittered = true;
                for d in 0..3 {
                    alpha[d] = uniform(rng, (1.0 - self.scale, 1.0 + self.scale));
                    beta[d] = uniform(rng, (-self.shift, self.shift));
                }
            }
            // OD' = (OD · B⁻¹ · diag α + β) · B = OD · M + o.
            for inv_row in &inv {
                for j in 0..3 {
                    let m: f64 = (0..3)
                        .map(|d| inv_row[d] * alpha[d] * self.basis[d][j])
                        .sum();
                    mats.push(m as f32);
                }
            }
            for j in 0..3 {
                offsets.push((0..3).map(|d| beta[d] * self.basis[d][j]).sum::<f64>() as f32);
            }
        }
        if !jittered {
            return Ok(images.shallow_clone());
        }
        let (device, kind) = (images.device(), images.kind());
        let mats = Tensor::from_slice(&mats).view([n, 3, 3]).to_device(device);
        let offsets = Tensor::from_slice(&offsets)
            .view([n, 1, 3])
            .to_device(device);
        let od = -images
            .to_kind(Kind::Float)
            .clamp(MIN_INTENSITY, 1.0)
            .log()
            .view([n, 3, h * w])
            .transpose(1, 2);
        let od = od.bmm(&mats) + offsets;
        Ok((-od)
            .exp()
            .clamp(0.0, 1.0)
            .transpose(1, 2)
            .reshape([n, 3, h, w])
            .to_kind(kind))
    }
}

const IDENTITY: [[f64; 3]; 3] = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];

/// The inverse of a 3×3 matrix (adjugate over determinant); an error naming
/// `stain_jitter.basis` when it is singular.
fn inverse(m: &[[f64; 3]; 3]) -> Result<[[f64; 3]; 3]> {
    let cof = |r: usize, c: usize| {
        let (r1, r2) = ((r + 1) % 3, (r + 2) % 3);
        let (c1, c2) = ((c + 1) % 3, (c + 2) % 3);
        m[r1][c1] * m[r2][c2] - m[r1][c2] * m[r2][c1]
    };
    let det: f64 = (0..3).map(|c| m[0][c] * cof(0, c)).sum();
    let norm: f64 = m.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
    let tiny = 1e-9 * norm.powi(3).max(f64::MIN_POSITIVE);
    if det.is_nan() || det.abs() <= tiny {
        return Err(Error::invalid(
            "stain_jitter.basis",
            format!("the dye vectors {m:?} are linearly dependent (determinant {det:e})"),
        ));
    }
    let mut inv = [[0.0; 3]; 3];
    for (r, row) in inv.iter_mut().enumerate() {
        for (c, v) in row.iter_mut().enumerate() {
            // The inverse is the transposed cofactor matrix over the determinant.
            *v = cof(c, r) / det;
        }
    }
    Ok(inv)
}

#[cfg(test)]
mod tests {
    use super::super::tests::images;
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
        (a - b).abs().max().double_value(&[])
    }

    /// A Giemsa-like basis: eosin, azure, methylene blue (not normalised).
    const DYES: [[f64; 3]; 3] = [[0.07, 0.58, 0.50], [0.62, 0.80, 0.22], [0.55, 0.28, 0.08]];

    #[test]
    fn inverse_inverts() {
        let inv = inverse(&DYES).unwrap();
        for (i, row) in DYES.iter().enumerate() {
            #[allow(clippy::needless_range_loop)] // j indexes a column
            for j in 0..3 {
                let v: f64 = (0..3).map(|k| row[k] * inv[k][j]).sum();
                assert!((v - f64::from(i == j)).abs() < 1e-12, "{i} {j} {v}");
            }
        }
        let singular = [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 0.0]];
        let e = inverse(&singular).unwrap_err().to_string();
        assert!(e.contains("stain_jitter.basis"), "{e}");
    }

    #[test]
    fn zero_strength_and_p_zero_leave_the_images_unchanged() {
        let x = images(4, 8).clamp(MIN_INTENSITY, 1.0);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let mut j = StainJitter::per_channel(1.0, 0.0, 0.0);
        j.basis = DYES;
        assert!(max_abs(&j.apply(&x, &mut rng).unwrap(), &x) < 1e-5);
        let none = StainJitter::none().apply(&x, &mut rng).unwrap();
        assert_eq!(max_abs(&none, &x), 0.0);
    }

    #[test]
    fn changes_the_concentrations_of_the_dyes() {
        // A pure-eosin pixel of concentration c has concentrations (c, 0, 0);
        // after the jitter (α₀ c + β₀, β₁, β₂), whose OD is their sum over the dyes.
        let c = 0.8;
        let px: Vec<f32> = DYES[0].iter().map(|od| (-(c * od)).exp() as f32).collect();
        let x = Tensor::from_slice(&px).view([1, 3, 1, 1]);
        let mut j = StainJitter::per_channel(1.0, 0.5, 0.1);
        j.basis = DYES;
        let y = j.apply(&x, &mut ChaCha8Rng::seed_from_u64(7)).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        assert!(rng.random_bool(1.0));
        let mut conc = [c, 0.0, 0.0];
        for v in conc.iter_mut() {
            let alpha = uniform(&mut rng, (0.5, 1.5));
            *v = alpha * *v + uniform(&mut rng, (-0.1, 0.1));
        }
        let y = Vec::<f32>::try_from(y.flatten(0, -1)).unwrap();
        for (k, v) in y.iter().enumerate() {
            let od: f64 = (0..3).map(|d| conc[d] * DYES[d][k]).sum();
            let want = (-od).exp().clamp(0.0, 1.0);
            assert!((*v as f64 - want).abs() < 1e-5, "{y:?} channel {k}");
        }
        assert!(max_abs(&Tensor::from_slice(&y).view([1, 3, 1, 1]), &x) > 1e-3);
    }

    #[test]
    fn rejects_bad_settings() {
        let mut j = StainJitter::per_channel(1.0, 1.0, 0.0);
        assert!(j
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stain_jitter.scale"));
        j.scale = 0.2;
        j.shift = -1.0;
        assert!(j
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stain_jitter.shift"));
        j.shift = 0.1;
        j.p = 2.0;
        assert!(j
            .validate()
            .unwrap_err()
            .to_string()
            .contains("stain_jitter.p"));
    }
}
