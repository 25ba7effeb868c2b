//! May–Grünwald–Giemsa stain model and the per-patient stain shift.
//!
//! Cells are painted as *stain concentrations* (one scalar field per dye) and
//! turned into RGB with the Beer–Lambert law, `I = I0 · exp(-Σ c_k · OD_k)`, the
//! same model colour-deconvolution methods use for stained slides. That gives
//! plausible colours where structures overlap (granules over a nucleus look
//! darker, not pasted on) and lets a patient's stain shift act where a real one
//! does: on dye uptake, then on the scanner's white balance.

use rand::Rng;

/// Optical density per unit concentration of the eosin (acidophilic, pink–red) dye, RGB.
pub(crate) const OD_EOSIN: [f32; 3] = [0.07, 0.58, 0.50];
/// Azure / azure-eosinate (nuclear chromatin, azurophilic granules: purple), RGB.
pub(crate) const OD_AZURE: [f32; 3] = [0.62, 0.80, 0.22];
/// Methylene blue (basophilic cytoplasm rich in RNA: blue–grey), RGB.
pub(crate) const OD_BLUE: [f32; 3] = [0.55, 0.28, 0.08];
/// Eosinophil-granule orange (the crystalloid granules stain orange–red), RGB.
pub(crate) const OD_ORANGE: [f32; 3] = [0.05, 0.50, 0.95];

/// A patient's (or slide's) staining and scanning conditions.
///
/// Every cell of one patient is rendered with the same `Stain`; drawing it per
/// patient makes colour vary more between patients than between subtypes, so a
/// classifier cannot read the label off the mean colour of a bag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stain {
    /// Hue rotation of the final image, degrees (scanner white balance / dye batch).
    pub hue_deg: f32,
    /// Saturation multiplier of the final image (1 = unchanged).
    pub saturation: f32,
    /// Brightness multiplier of the final image (1 = unchanged).
    pub brightness: f32,
    /// Multiplier on eosin (and orange-granule) uptake.
    pub eosin: f32,
    /// Multiplier on azure and methylene-blue uptake (nuclei, basophilic cytoplasm).
    pub azure: f32,
    /// Transmitted-light colour of the empty slide, linear 0..1 RGB.
    pub background: [f32; 3],
}

impl Default for Stain {
    fn default() -> Self {
        Stain::neutral()
    }
}

impl Stain {
    /// The reference stain: no shift.
    pub fn neutral() -> Self {
        Stain {
            hue_deg: 0.0,
            saturation: 1.0,
            brightness: 1.0,
            eosin: 1.0,
            azure: 1.0,
            background: [0.93, 0.90, 0.91],
        }
    }

    /// A random patient stain. Ranges were tuned so that per-bag colour
    /// statistics do not separate the subtypes (see `colour_baseline`).
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        let bg_level = rng.random_range(0.84..0.97f32);
        let tint = [
            rng.random_range(-0.04..0.04f32),
            rng.random_range(-0.04..0.04f32),
            rng.random_range(-0.04..0.04f32),
        ];
        Stain {
            hue_deg: rng.random_range(-15.0..15.0),
            saturation: rng.random_range(0.75..1.3),
            brightness: rng.random_range(0.82..1.12),
            eosin: rng.random_range(0.70..1.35),
            azure: rng.random_range(0.70..1.30),
            background: [
                (bg_level + tint[0]).min(0.99),
                (bg_level - 0.02 + tint[1]).min(0.99),
                (bg_level + tint[2]).min(0.99),
            ],
        }
    }

    /// A random patient stain from a seed (same seed → same stain).
    pub fn from_seed(seed: u64) -> Self {
        use rand::SeedableRng;
        Stain::random(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
    }

    /// Converts stain concentrations at one pixel into linear RGB (0..1) before
    /// the colour shift: Beer–Lambert with this stain's uptake multipliers.
    #[inline]
    pub(crate) fn absorb(&self, eosin: f32, azure: f32, blue: f32, orange: f32) -> [f32; 3] {
        let (e, a, b, o) = (
            eosin * self.eosin,
            azure * self.azure,
            blue * self.azure,
            orange * self.eosin,
        );
        let mut out = [0.0; 3];
        for c in 0..3 {
            let od = e * OD_EOSIN[c] + a * OD_AZURE[c] + b * OD_BLUE[c] + o * OD_ORANGE[c];
            out[c] = self.background[c] * (-od).exp();
        }
        out
    }

    /// The 3×3 matrix of the final colour shift (brightness, saturation, hue
    /// rotation about the grey axis, done in YIQ space), applied to linear RGB.
    pub(crate) fn colour_matrix(&self) -> [[f32; 3]; 3] {
        // RGB -> YIQ and back (NTSC coefficients).
        const TO_YIQ: [[f32; 3]; 3] = [
            [0.299, 0.587, 0.114],
            [0.596, -0.274, -0.322],
            [0.211, -0.523, 0.312],
        ];
        const TO_RGB: [[f32; 3]; 3] = [
            [1.0, 0.956, 0.621],
            [1.0, -0.272, -0.647],
            [1.0, -1.106, 1.703],
        ];
        let (s, c) = self.hue_deg.to_radians().sin_cos();
        let sat = self.saturation;
        let shift = [
            [1.0, 0.0, 0.0],
            [0.0, sat * c, -sat * s],
            [0.0, sat * s, sat * c],
        ];
        let m = mat_mul(&TO_RGB, &mat_mul(&shift, &TO_YIQ));
        let mut out = m;
        for row in out.iter_mut() {
            for v in row.iter_mut() {
                *v *= self.brightness;
            }
        }
        out
    }
}

fn mat_mul(a: &[[f32; 3]; 3], b: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_colour_matrix_is_identity() {
        let m = Stain::neutral().colour_matrix();
        for (i, row) in m.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 2e-3, "m[{i}][{j}] = {v}");
            }
        }
    }

    #[test]
    fn stain_from_seed_is_deterministic() {
        assert_eq!(Stain::from_seed(7), Stain::from_seed(7));
        assert_ne!(Stain::from_seed(7), Stain::from_seed(8));
    }
}
