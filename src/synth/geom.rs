//! Small 2-D geometry and noise helpers for the renderer.
//!
//! Shapes are signed-distance functions (negative inside) in *crop units*: the
//! crop spans [-1, 1] on both axes whatever its pixel size, so a cell looks the
//! same at 64 and 144 px. Edges are anti-aliased by turning the signed distance
//! into a coverage with a ramp about one pixel wide ([`coverage`]).

use rand::Rng;
use std::f32::consts::TAU;

pub(crate) type P2 = [f32; 2];

#[inline]
pub(crate) fn len(p: P2) -> f32 {
    (p[0] * p[0] + p[1] * p[1]).sqrt()
}

#[inline]
pub(crate) fn sub(a: P2, b: P2) -> P2 {
    [a[0] - b[0], a[1] - b[1]]
}

#[inline]
pub(crate) fn add(a: P2, b: P2) -> P2 {
    [a[0] + b[0], a[1] + b[1]]
}

#[inline]
pub(crate) fn scale(a: P2, s: f32) -> P2 {
    [a[0] * s, a[1] * s]
}

/// `p` rotated by `angle` radians (counter-clockwise).
#[inline]
pub(crate) fn rot(p: P2, angle: f32) -> P2 {
    let (s, c) = angle.sin_cos();
    [c * p[0] - s * p[1], s * p[0] + c * p[1]]
}

/// Unit vector at `angle`.
#[inline]
pub(crate) fn dir(angle: f32) -> P2 {
    let (s, c) = angle.sin_cos();
    [c, s]
}

/// Fraction of a pixel of width `pw` covered by a shape at signed distance `d`.
#[inline]
pub(crate) fn coverage(d: f32, pw: f32) -> f32 {
    (0.5 - d / (1.2 * pw)).clamp(0.0, 1.0)
}

#[inline]
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Polynomial smooth minimum: unions shapes with a fillet of size `k`, so
/// nuclear lobes merge like soft matter rather than overlapping discs.
#[inline]
pub(crate) fn smin(a: f32, b: f32, k: f32) -> f32 {
    if k <= 0.0 {
        return a.min(b);
    }
    let h = (0.5 + 0.5 * (b - a) / k).clamp(0.0, 1.0);
    b + (a - b) * h - k * h * (1.0 - h)
}

/// A wobbly ellipse: semi-axes `ax`, `ay`, rotated by `angle`, its radius
/// modulated by low harmonics so no two cells or nuclei have the same outline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blob {
    pub c: P2,
    pub ax: f32,
    pub ay: f32,
    pub angle: f32,
    /// (amplitude, phase) of harmonics 2, 3, 4, 5 of the radius.
    pub wobble: [(f32, f32); 4],
}

impl Blob {
    pub fn circle(c: P2, r: f32) -> Self {
        Blob {
            c,
            ax: r,
            ay: r,
            angle: 0.0,
            wobble: [(0.0, 0.0); 4],
        }
    }

    /// A blob of mean radius `r`, eccentricity up to `ecc` and wobble up to `wob`.
    pub fn random<R: Rng + ?Sized>(c: P2, r: f32, ecc: f32, wob: f32, rng: &mut R) -> Self {
        let e = rng.random_range(0.0..=ecc);
        let mut wobble = [(0.0, 0.0); 4];
        for (k, w) in wobble.iter_mut().enumerate() {
            // Higher harmonics get less amplitude: outlines stay smooth.
            *w = (
                rng.random_range(0.0..=wob) / (1.0 + k as f32),
                rng.random_range(0.0..TAU),
            );
        }
        Blob {
            c,
            ax: r * (1.0 + e),
            ay: r * (1.0 - e),
            angle: rng.random_range(0.0..TAU),
            wobble,
        }
    }

    /// Largest distance of the outline from the centre (for bounding boxes).
    pub fn extent(&self) -> f32 {
        let w: f32 = self.wobble.iter().map(|w| w.0.abs()).sum();
        self.ax.max(self.ay) * (1.0 + w)
    }

    /// Approximate signed distance (exact for a circle).
    #[inline]
    pub fn sdf(&self, p: P2) -> f32 {
        let q = rot(sub(p, self.c), -self.angle);
        let n = [q[0] / self.ax, q[1] / self.ay];
        let rho = len(n);
        let mut r = 1.0;
        if self.wobble.iter().any(|w| w.0 != 0.0) {
            let phi = n[1].atan2(n[0]);
            for (k, (amp, ph)) in self.wobble.iter().enumerate() {
                r += amp * ((k as f32 + 2.0) * phi + ph).cos();
            }
        }
        (rho - r) * self.ax.min(self.ay)
    }
}

/// Signed distance to a capsule (segment `a`–`b` thickened by `r`).
#[inline]
pub(crate) fn capsule_sdf(p: P2, a: P2, b: P2, r: f32) -> f32 {
    let pa = sub(p, a);
    let ba = sub(b, a);
    let denom = ba[0] * ba[0] + ba[1] * ba[1];
    let h = if denom > 0.0 {
        ((pa[0] * ba[0] + pa[1] * ba[1]) / denom).clamp(0.0, 1.0)
    } else {
        0.0
    };
    len(sub(pa, scale(ba, h))) - r
}

/// Hash-based value noise with fractal sums, seeded per cell. Used for
/// chromatin texture, cytoplasm mottling and fine neutrophil granularity.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Noise {
    seed: u32,
}

impl Noise {
    pub fn new(seed: u32) -> Self {
        Noise { seed }
    }

    #[inline]
    fn hash(&self, x: i32, y: i32) -> f32 {
        let mut h = (x as u32).wrapping_mul(0x8da6_b343)
            ^ (y as u32).wrapping_mul(0xd816_3841)
            ^ self.seed.wrapping_mul(0xcb1a_b31f);
        h ^= h >> 13;
        h = h.wrapping_mul(0x5bd1_e995);
        h ^= h >> 15;
        (h & 0x00ff_ffff) as f32 / 16_777_216.0
    }

    /// Smooth value noise in [0, 1).
    #[inline]
    pub fn value(&self, x: f32, y: f32) -> f32 {
        let (xf, yf) = (x.floor(), y.floor());
        let (xi, yi) = (xf as i32, yf as i32);
        let (tx, ty) = (x - xf, y - yf);
        let (sx, sy) = (tx * tx * (3.0 - 2.0 * tx), ty * ty * (3.0 - 2.0 * ty));
        let a = self.hash(xi, yi);
        let b = self.hash(xi + 1, yi);
        let c = self.hash(xi, yi + 1);
        let d = self.hash(xi + 1, yi + 1);
        let top = a + (b - a) * sx;
        let bottom = c + (d - c) * sx;
        top + (bottom - top) * sy
    }

    /// Fractal sum of `octaves` octaves at base frequency `freq`, in [0, 1).
    #[inline]
    pub fn fbm(&self, p: P2, freq: f32, octaves: u32) -> f32 {
        let (mut sum, mut amp, mut norm, mut f) = (0.0, 1.0, 0.0, freq);
        for o in 0..octaves {
            // Offset each octave so their lattices do not line up.
            let off = o as f32 * 17.31;
            sum += amp * self.value(p[0] * f + off, p[1] * f - off);
            norm += amp;
            amp *= 0.5;
            f *= 2.0;
        }
        sum / norm
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn circle_sdf_is_exact_and_smin_is_below_min() {
        let b = Blob::circle([0.1, 0.0], 0.5);
        assert!((b.sdf([0.1, 0.0]) + 0.5).abs() < 1e-6);
        assert!((b.sdf([0.9, 0.0]) - 0.3).abs() < 1e-6);
        assert!(smin(0.2, 0.25, 0.1) < 0.2);
        assert!((capsule_sdf([0.0, 1.0], [-1.0, 0.0], [1.0, 0.0], 0.5) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn noise_is_in_range_and_seeded() {
        let n = Noise::new(3);
        for i in 0..100 {
            let v = n.fbm([i as f32 * 0.37, i as f32 * 0.11], 5.0, 3);
            assert!((0.0..1.0).contains(&v));
        }
        assert_ne!(Noise::new(1).value(0.5, 0.5), Noise::new(2).value(0.5, 0.5));
    }
}
