//! Cell types and the procedural single-cell renderer.
//!
//! A rendered crop is what a smear scanner's segmentation hands on: a square
//! of pale background with red-cell discs (lighter centres, some cut by the
//! border) and one leukocyte near the centre. The leukocyte is built from a
//! per-type recipe (cytoplasm outline and colour, nucleus shape and chromatin,
//! granules, Auer rods, vacuoles, nucleoli) with random size, rotation, shift,
//! nucleus/cytoplasm ratio and texture, then painted as stain concentrations
//! and converted to RGB by the stain model in [`super::stain`], blurred by a
//! random focus and given sensor noise.
//!
//! Abnormal types carry the morphology the literature describes for each AML
//! subtype (see [`CellType`]); normal types are shared by all patients.

use std::f32::consts::{PI, TAU};
use std::fmt;
use std::str::FromStr;

use rand::Rng;

use super::geom::{
    add, capsule_sdf, coverage, dir, rot, scale, smin, smoothstep, sub, Blob, Noise, P2,
};
use super::stain::Stain;
use crate::cell_image::CellImage;
use crate::error::{Error, Result};

/// Smallest crop side the renderer accepts: below it nuclei and granules are
/// under a pixel and the types stop being distinguishable.
pub const MIN_IMAGE_SIZE: u32 = 32;

/// Crop side of the public AML data set (144 px = 24.9 µm).
pub const DEFAULT_IMAGE_SIZE: u32 = 144;

/// White-cell types the generator draws. Names (`name()`) are the snake_case
/// strings written to `cells.csv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CellType {
    /// Mature neutrophil, 2–5 nuclear lobes joined by thin filaments.
    SegmentedNeutrophil,
    /// Neutrophil with a curved, unsegmented band nucleus.
    BandNeutrophil,
    /// Small round cell, dense nucleus, rim of sky-blue cytoplasm.
    Lymphocyte,
    /// Large cell, folded kidney-shaped lacy nucleus, grey-blue cytoplasm, vacuoles.
    Monocyte,
    /// Bilobed nucleus, cytoplasm packed with orange granules.
    Eosinophil,
    /// Dark purple-black granules covering the nucleus.
    Basophil,
    /// Round eccentric nucleus, granular pink-blue cytoplasm.
    Myelocyte,
    /// Kidney-shaped (indented) nucleus, granular pink cytoplasm.
    Metamyelocyte,
    /// PML::RARA: hypergranular abnormal promyelocyte with a bilobed
    /// ("butterfly") nucleus largely hidden by dense azurophilic granules.
    AbnormalPromyelocyte,
    /// PML::RARA: promyelocyte with bundles of Auer rods ("faggot cell").
    FaggotCell,
    /// NPM1: blast with a cup-shaped nuclear invagination, fine chromatin,
    /// nucleoli and scant granules.
    Npm1Blast,
    /// CBFB::MYH11: myelomonocytic blast with a folded nucleus, grey-blue
    /// cytoplasm and a few azurophilic granules.
    MyelomonocyticBlast,
    /// CBFB::MYH11: abnormal eosinophil with large dark (basophilic-looking) granules.
    AbnormalEosinophil,
    /// RUNX1::RUNX1T1: large blast with deeply basophilic cytoplasm, a pale
    /// perinuclear zone and a single long thin Auer rod.
    Runx1Blast,
}

impl CellType {
    /// Every type, normal first, in the order of the montage rows.
    pub const ALL: [CellType; 14] = [
        CellType::SegmentedNeutrophil,
        CellType::BandNeutrophil,
        CellType::Lymphocyte,
        CellType::Monocyte,
        CellType::Eosinophil,
        CellType::Basophil,
        CellType::Myelocyte,
        CellType::Metamyelocyte,
        CellType::AbnormalPromyelocyte,
        CellType::FaggotCell,
        CellType::Npm1Blast,
        CellType::MyelomonocyticBlast,
        CellType::AbnormalEosinophil,
        CellType::Runx1Blast,
    ];

    /// The normal types, shared by every patient's differential.
    pub const NORMAL: [CellType; 8] = [
        CellType::SegmentedNeutrophil,
        CellType::BandNeutrophil,
        CellType::Lymphocyte,
        CellType::Monocyte,
        CellType::Eosinophil,
        CellType::Basophil,
        CellType::Myelocyte,
        CellType::Metamyelocyte,
    ];

    /// The snake_case name used in `cells.csv`.
    pub fn name(self) -> &'static str {
        match self {
            CellType::SegmentedNeutrophil => "segmented_neutrophil",
            CellType::BandNeutrophil => "band_neutrophil",
            CellType::Lymphocyte => "lymphocyte",
            CellType::Monocyte => "monocyte",
            CellType::Eosinophil => "eosinophil",
            CellType::Basophil => "basophil",
            CellType::Myelocyte => "myelocyte",
            CellType::Metamyelocyte => "metamyelocyte",
            CellType::AbnormalPromyelocyte => "abnormal_promyelocyte",
            CellType::FaggotCell => "faggot_cell",
            CellType::Npm1Blast => "npm1_blast",
            CellType::MyelomonocyticBlast => "myelomonocytic_blast",
            CellType::AbnormalEosinophil => "abnormal_eosinophil",
            CellType::Runx1Blast => "runx1_blast",
        }
    }

    /// Whether this type only occurs in leukemic patients.
    pub fn is_abnormal(self) -> bool {
        !CellType::NORMAL.contains(&self)
    }

    /// The bag label (see [`crate::classes::BAG_LABELS`]) whose morphology an
    /// abnormal type carries; `None` for normal types.
    pub fn subtype(self) -> Option<&'static str> {
        match self {
            CellType::AbnormalPromyelocyte | CellType::FaggotCell => Some("PML_RARA"),
            CellType::Npm1Blast => Some("NPM1"),
            CellType::MyelomonocyticBlast | CellType::AbnormalEosinophil => Some("CBFB_MYH11"),
            CellType::Runx1Blast => Some("RUNX1_RUNX1T1"),
            _ => None,
        }
    }
}

impl fmt::Display for CellType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CellType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        CellType::ALL
            .iter()
            .copied()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = CellType::ALL.iter().map(|t| t.name()).collect();
                Error::invalid(
                    "cell_type",
                    format!("unknown cell type `{s}` (known: {})", known.join(", ")),
                )
            })
    }
}

/// Abnormal types of a subtype with their relative frequencies; empty for
/// `control` and unknown labels.
pub fn abnormal_types(bag_label: &str) -> &'static [(CellType, f32)] {
    match bag_label {
        "PML_RARA" => &[
            (CellType::AbnormalPromyelocyte, 0.7),
            (CellType::FaggotCell, 0.3),
        ],
        "NPM1" => &[(CellType::Npm1Blast, 1.0)],
        "CBFB_MYH11" => &[
            (CellType::MyelomonocyticBlast, 0.7),
            (CellType::AbnormalEosinophil, 0.3),
        ],
        "RUNX1_RUNX1T1" => &[(CellType::Runx1Blast, 1.0)],
        _ => &[],
    }
}

// ---------------------------------------------------------------------------
// Cell recipe: everything in cell-local crop units, centred at the origin.
// ---------------------------------------------------------------------------

/// Stain concentrations of a structure: eosin, azure, methylene blue, orange.
#[derive(Debug, Clone, Copy, Default)]
struct Dens {
    e: f32,
    a: f32,
    b: f32,
    o: f32,
}

impl Dens {
    const fn new(e: f32, a: f32, b: f32, o: f32) -> Self {
        Dens { e, a, b, o }
    }

    #[inline]
    fn mul(self, k: f32) -> Self {
        Dens::new(self.e * k, self.a * k, self.b * k, self.o * k)
    }

    #[inline]
    fn add(self, o: Dens) -> Self {
        Dens::new(self.e + o.e, self.a + o.a, self.b + o.b, self.o + o.o)
    }

    /// `self` where `t` = 0, `other` where `t` = 1.
    #[inline]
    fn lerp(self, other: Dens, t: f32) -> Self {
        self.mul(1.0 - t).add(other.mul(t))
    }
}

/// One round granule (or vacuole when `dens` is negative).
#[derive(Debug, Clone, Copy)]
struct Dot {
    c: P2,
    r: f32,
    dens: Dens,
    /// Whether the dot may lie over the nucleus (basophil, hypergranular promyelocyte).
    over_nucleus: bool,
}

#[derive(Debug, Clone, Copy)]
struct Rod {
    a: P2,
    b: P2,
    r: f32,
}

/// The nucleus: a smooth union of blobs, minus cuts (indentations, clefts, cups).
#[derive(Debug, Clone, Default)]
struct Nucleus {
    parts: Vec<Blob>,
    /// Thin connecting filaments between lobes (capsules with radius).
    filaments: Vec<Rod>,
    cuts: Vec<Blob>,
    /// Fillet size of the union of parts.
    smooth: f32,
    dens: Dens,
    /// Base frequency of chromatin texture (per crop unit) and its contrast.
    chromatin_freq: f32,
    chromatin_contrast: f32,
    nucleoli: Vec<Blob>,
}

impl Nucleus {
    #[inline]
    fn sdf(&self, p: P2) -> f32 {
        // Start from the first part: smin with an infinite operand gives NaN.
        let mut parts = self.parts.iter();
        let mut d = parts.next().map_or(f32::INFINITY, |b| b.sdf(p));
        for b in parts {
            d = smin(d, b.sdf(p), self.smooth);
        }
        for f in &self.filaments {
            d = d.min(capsule_sdf(p, f.a, f.b, f.r));
        }
        for c in &self.cuts {
            d = d.max(-c.sdf(p));
        }
        d
    }
}

#[derive(Debug, Clone)]
struct Recipe {
    cyto: Blob,
    cyto_dens: Dens,
    /// Fine granular texture of the cytoplasm (neutrophilic granules, monocyte dust).
    grain: Dens,
    nucleus: Nucleus,
    dots: Vec<Dot>,
    rods: Vec<Rod>,
    /// Pale zones of cytoplasm (Golgi hof, cup): cytoplasm colour scaled by `1 - strength`.
    pale: Vec<(Blob, f32)>,
}

impl Recipe {
    fn new(cyto: Blob, cyto_dens: Dens) -> Self {
        Recipe {
            cyto,
            cyto_dens,
            grain: Dens::default(),
            nucleus: Nucleus {
                smooth: 0.0,
                chromatin_freq: 25.0,
                chromatin_contrast: 0.3,
                ..Nucleus::default()
            },
            dots: Vec::new(),
            rods: Vec::new(),
            pale: Vec::new(),
        }
    }

    /// Scatters up to `n` dots of radius in `r` inside the cytoplasm (and over
    /// the nucleus only when `over_nucleus`), rejecting positions too close to
    /// the cell edge so granules never hang outside the cell.
    fn scatter<R: Rng + ?Sized>(
        &mut self,
        n: usize,
        r: (f32, f32),
        dens: Dens,
        over_nucleus: bool,
        rng: &mut R,
    ) {
        let ext = self.cyto.extent();
        let mut placed = 0;
        let mut tries = 0;
        while placed < n && tries < n * 8 {
            tries += 1;
            let rr = rng.random_range(r.0..=r.1);
            let c = [rng.random_range(-ext..ext), rng.random_range(-ext..ext)];
            if self.cyto.sdf(c) > -rr * 1.2 {
                continue;
            }
            if !over_nucleus && self.nucleus.sdf(c) < rr * 0.5 {
                continue;
            }
            let jitter = rng.random_range(0.75..1.25f32);
            self.dots.push(Dot {
                c,
                r: rr,
                dens: dens.mul(jitter),
                over_nucleus,
            });
            placed += 1;
        }
    }

    /// A random point inside the cytoplasm, outside the nucleus.
    fn cyto_point<R: Rng + ?Sized>(&self, margin: f32, rng: &mut R) -> P2 {
        let ext = self.cyto.extent();
        for _ in 0..200 {
            let c = [rng.random_range(-ext..ext), rng.random_range(-ext..ext)];
            if self.cyto.sdf(c) < -margin && self.nucleus.sdf(c) > margin * 0.5 {
                return c;
            }
        }
        [0.0, 0.0]
    }
}

/// Lobes along an arc (segmented neutrophil, eosinophil, band nucleus).
fn lobed_nucleus<R: Rng + ?Sized>(
    n: usize,
    arc_radius: f32,
    step: f32,
    lobe_r: (f32, f32),
    filament_r: f32,
    rng: &mut R,
) -> (Vec<Blob>, Vec<Rod>) {
    let start = rng.random_range(0.0..TAU);
    let mut parts = Vec::with_capacity(n);
    let mut centres = Vec::with_capacity(n);
    let mut a = start;
    for i in 0..n {
        let rad = arc_radius * rng.random_range(0.8..1.15);
        let c = scale(dir(a), rad);
        let r = rng.random_range(lobe_r.0..=lobe_r.1);
        parts.push(Blob::random(c, r, 0.18, 0.05, rng));
        centres.push(c);
        if i + 1 < n {
            a += step * rng.random_range(0.8..1.2);
        }
    }
    let filaments = if filament_r > 0.0 {
        centres
            .windows(2)
            .map(|w| Rod {
                a: w[0],
                b: w[1],
                r: filament_r,
            })
            .collect()
    } else {
        Vec::new()
    };
    (parts, filaments)
}

/// Builds the random recipe of one cell of `t`.
fn recipe<R: Rng + ?Sized>(t: CellType, rng: &mut R) -> Recipe {
    // Per-cell multiplicative jitter on colours keeps cells of one type from
    // being identical in hue; per-patient shifts come on top (Stain).
    let j = |rng: &mut R| rng.random_range(0.85..1.15f32);
    match t {
        CellType::SegmentedNeutrophil | CellType::BandNeutrophil => {
            let r = rng.random_range(0.42..0.52);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.06, 0.05, rng),
                Dens::new(0.30 * j(rng), 0.05, 0.02, 0.0),
            );
            rc.grain = Dens::new(0.10, 0.12, 0.0, 0.0);
            let n = &mut rc.nucleus;
            if t == CellType::SegmentedNeutrophil {
                let lobes = [2, 3, 3, 3, 4, 4, 4, 5][rng.random_range(0..8)];
                let (p, f) =
                    lobed_nucleus(lobes, 0.45 * r, 1.15, (0.19 * r, 0.26 * r), 0.03 * r, rng);
                n.parts = p;
                n.filaments = f;
                n.smooth = 0.02 * r;
            } else {
                // A band: many small overlapping blobs along a 180–260° arc.
                let span = rng.random_range(PI..1.45 * PI);
                let k = 9;
                let (p, _) = lobed_nucleus(
                    k,
                    0.45 * r,
                    span / (k - 1) as f32,
                    (0.15 * r, 0.2 * r),
                    0.0,
                    rng,
                );
                n.parts = p;
                n.smooth = 0.06 * r;
            }
            n.dens = Dens::new(0.2, 1.55 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 22.0;
            n.chromatin_contrast = 0.35;
            rc
        }
        CellType::Lymphocyte => {
            let r = rng.random_range(0.28..0.40);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.08, 0.04, rng),
                Dens::new(0.04, 0.02, 0.45 * j(rng), 0.0),
            );
            let nr = r * rng.random_range(0.76..0.88);
            let off = scale(
                dir(rng.random_range(0.0..TAU)),
                (r - nr) * rng.random_range(0.0..0.9),
            );
            rc.nucleus.parts = vec![Blob::random(off, nr, 0.08, 0.06, rng)];
            rc.nucleus.dens = Dens::new(0.15, 1.85 * j(rng), 0.0, 0.0);
            rc.nucleus.chromatin_freq = 16.0;
            rc.nucleus.chromatin_contrast = 0.3;
            if r > 0.35 {
                rc.scatter(
                    rng.random_range(0..4),
                    (0.012, 0.018),
                    Dens::new(0.4, 0.7, 0.0, 0.0),
                    false,
                    rng,
                );
            }
            rc
        }
        CellType::Monocyte => {
            let r = rng.random_range(0.55..0.68);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.1, 0.1, rng),
                Dens::new(0.12, 0.07, 0.24 * j(rng), 0.0),
            );
            rc.grain = Dens::new(0.03, 0.10, 0.0, 0.0);
            let a = rng.random_range(0.0..TAU);
            let nc = scale(dir(a), 0.12 * r);
            let nr = r * rng.random_range(0.46..0.56);
            let n = &mut rc.nucleus;
            n.parts = vec![
                Blob::random(nc, nr, 0.2, 0.08, rng),
                Blob::random(
                    add(nc, scale(dir(a + 1.8), 0.3 * nr)),
                    0.7 * nr,
                    0.2,
                    0.08,
                    rng,
                ),
            ];
            n.smooth = 0.1 * r;
            // Kidney / horseshoe indentation facing the cell centre.
            n.cuts = vec![Blob::random(
                add(nc, scale(dir(a + PI), nr * 1.05)),
                nr * 0.5,
                0.2,
                0.05,
                rng,
            )];
            n.dens = Dens::new(0.18, 1.15 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 30.0;
            n.chromatin_contrast = 0.45;
            let vac = rng.random_range(0..6);
            rc.scatter(
                vac,
                (0.02, 0.04),
                Dens::new(-0.08, -0.05, -0.16, 0.0),
                false,
                rng,
            );
            rc
        }
        CellType::Eosinophil | CellType::AbnormalEosinophil => {
            let abnormal = t == CellType::AbnormalEosinophil;
            let r = if abnormal {
                rng.random_range(0.48..0.58)
            } else {
                rng.random_range(0.45..0.54)
            };
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.06, 0.05, rng),
                Dens::new(0.18, 0.03, 0.06, 0.0),
            );
            let n = &mut rc.nucleus;
            if abnormal {
                // inv(16) eosinophils are often less segmented, monocytoid.
                n.parts = vec![Blob::random(
                    scale(dir(rng.random_range(0.0..TAU)), 0.15 * r),
                    0.42 * r,
                    0.25,
                    0.1,
                    rng,
                )];
            } else {
                let lobes = if rng.random_bool(0.8) { 2 } else { 3 };
                let (p, f) =
                    lobed_nucleus(lobes, 0.42 * r, 1.6, (0.22 * r, 0.28 * r), 0.04 * r, rng);
                n.parts = p;
                n.filaments = f;
                n.smooth = 0.03 * r;
            }
            n.dens = Dens::new(0.2, 1.45 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 22.0;
            let area = PI * r * r;
            let orange = Dens::new(0.25, 0.0, 0.0, 0.55);
            if abnormal {
                let gr = 0.024;
                let count = (0.45 * area / (PI * gr * gr)) as usize;
                rc.scatter(count, (0.018, 0.026), orange, false, rng);
                // The large dark granules, some over the nucleus.
                let big = rng.random_range(15..40);
                rc.scatter(
                    big,
                    (0.03, 0.045),
                    Dens::new(0.15, 1.1, 0.35, 0.0),
                    true,
                    rng,
                );
            } else {
                let gr = 0.024;
                let count = (0.75 * area / (PI * gr * gr)) as usize;
                rc.scatter(count, (0.02, 0.028), orange, false, rng);
            }
            rc
        }
        CellType::Basophil => {
            let r = rng.random_range(0.40..0.48);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.06, 0.06, rng),
                Dens::new(0.12, 0.12, 0.05, 0.0),
            );
            let n = &mut rc.nucleus;
            n.parts = vec![
                Blob::random([0.0, 0.0], 0.45 * r, 0.2, 0.15, rng),
                Blob::random(
                    scale(dir(rng.random_range(0.0..TAU)), 0.25 * r),
                    0.3 * r,
                    0.2,
                    0.1,
                    rng,
                ),
            ];
            n.smooth = 0.08 * r;
            n.dens = Dens::new(0.15, 1.0 * j(rng), 0.0, 0.0);
            let count = rng.random_range(40..80);
            rc.scatter(
                count,
                (0.022, 0.04),
                Dens::new(0.1, 1.5, 0.5, 0.0),
                true,
                rng,
            );
            rc
        }
        CellType::Myelocyte | CellType::Metamyelocyte => {
            let r = if t == CellType::Myelocyte {
                rng.random_range(0.46..0.56)
            } else {
                rng.random_range(0.44..0.52)
            };
            let blue = if t == CellType::Myelocyte { 0.12 } else { 0.06 };
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.08, 0.05, rng),
                Dens::new(0.28 * j(rng), 0.06, blue, 0.0),
            );
            rc.grain = Dens::new(0.10, 0.12, 0.0, 0.0);
            let a = rng.random_range(0.0..TAU);
            let nr = r * rng.random_range(0.48..0.56);
            let nc = scale(dir(a), r * rng.random_range(0.15..0.3));
            let n = &mut rc.nucleus;
            n.parts = vec![Blob::random(nc, nr, 0.15, 0.05, rng)];
            if t == CellType::Metamyelocyte {
                n.cuts = vec![Blob::random(
                    add(nc, scale(dir(a + PI), nr * 1.0)),
                    nr * 0.45,
                    0.15,
                    0.03,
                    rng,
                )];
                n.dens = Dens::new(0.2, 1.4 * j(rng), 0.0, 0.0);
            } else {
                n.dens = Dens::new(0.2, 1.25 * j(rng), 0.0, 0.0);
            }
            n.chromatin_contrast = 0.28;
            rc.scatter(
                rng.random_range(3..12),
                (0.012, 0.018),
                Dens::new(0.45, 0.6, 0.0, 0.0),
                false,
                rng,
            );
            rc
        }
        CellType::AbnormalPromyelocyte | CellType::FaggotCell => {
            let r = rng.random_range(0.52..0.64);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.1, 0.08, rng),
                Dens::new(0.30 * j(rng), 0.08, 0.10, 0.0),
            );
            // Bilobed "butterfly" nucleus: two lobes fused with a cleft.
            let a = rng.random_range(0.0..TAU);
            let nr = r * rng.random_range(0.30..0.36);
            let axis = dir(a);
            let n = &mut rc.nucleus;
            n.parts = vec![
                Blob::random(scale(axis, 0.55 * nr), nr, 0.15, 0.06, rng),
                Blob::random(scale(axis, -0.55 * nr), nr, 0.15, 0.06, rng),
            ];
            n.smooth = 0.15 * r;
            let cleft = rot(axis, PI / 2.0);
            n.cuts = vec![Blob::circle(scale(cleft, nr * 1.05), nr * 0.35)];
            n.dens = Dens::new(0.22, 1.3 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 32.0;
            n.chromatin_contrast = 0.2;
            let granule = Dens::new(0.55, 0.75, 0.0, 0.0);
            if t == CellType::AbnormalPromyelocyte {
                let count = rng.random_range(250..450);
                rc.scatter(count, (0.012, 0.02), granule, true, rng);
                if rng.random_bool(0.3) {
                    let c = rc.cyto_point(0.1, rng);
                    let ang = rng.random_range(0.0..TAU);
                    let l = rng.random_range(0.08..0.14);
                    rc.rods.push(Rod {
                        a: sub(c, scale(dir(ang), l)),
                        b: add(c, scale(dir(ang), l)),
                        r: 0.011,
                    });
                }
            } else {
                let count = rng.random_range(40..120);
                rc.scatter(count, (0.012, 0.02), granule, false, rng);
                // Bundles of Auer rods, roughly parallel, some crossing.
                let bundles = if rng.random_bool(0.3) { 2 } else { 1 };
                for _ in 0..bundles {
                    let c = rc.cyto_point(0.12, rng);
                    let base = rng.random_range(0.0..TAU);
                    let k = rng.random_range(4..10);
                    for _ in 0..k {
                        let ang = base + rng.random_range(-0.3..0.3);
                        let l = rng.random_range(0.07..0.15);
                        let off = scale(dir(base + PI / 2.0), rng.random_range(-0.06..0.06));
                        let m = add(c, add(off, scale(dir(base), rng.random_range(-0.04..0.04))));
                        rc.rods.push(Rod {
                            a: sub(m, scale(dir(ang), l)),
                            b: add(m, scale(dir(ang), l)),
                            r: rng.random_range(0.009..0.013),
                        });
                    }
                }
            }
            rc
        }
        CellType::Npm1Blast => {
            let r = rng.random_range(0.44..0.56);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.08, 0.05, rng),
                Dens::new(0.08, 0.04, 0.32 * j(rng), 0.0),
            );
            let nr = r * rng.random_range(0.72..0.8);
            let a = rng.random_range(0.0..TAU);
            let nc = scale(dir(a), (r - nr) * rng.random_range(0.0..0.8));
            // Cup-like invagination: a pale pocket opening at the nuclear rim.
            let cup_dir = dir(rng.random_range(0.0..TAU));
            let cup = Blob::random(
                add(nc, scale(cup_dir, nr * rng.random_range(0.45..0.6))),
                nr * rng.random_range(0.35..0.45),
                0.25,
                0.03,
                rng,
            );
            let n = &mut rc.nucleus;
            n.parts = vec![Blob::random(nc, nr, 0.1, 0.05, rng)];
            n.cuts = vec![cup];
            n.dens = Dens::new(0.18, 1.1 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 38.0;
            n.chromatin_contrast = 0.15;
            for _ in 0..rng.random_range(1..3) {
                let p = add(
                    nc,
                    scale(
                        dir(rng.random_range(0.0..TAU)),
                        nr * rng.random_range(0.0..0.4),
                    ),
                );
                n.nucleoli.push(Blob::random(
                    p,
                    r * rng.random_range(0.06..0.09),
                    0.2,
                    0.05,
                    rng,
                ));
            }
            rc.pale.push((cup, 0.25));
            let count = rng.random_range(0..5);
            rc.scatter(
                count,
                (0.01, 0.016),
                Dens::new(0.4, 0.6, 0.0, 0.0),
                false,
                rng,
            );
            rc
        }
        CellType::MyelomonocyticBlast => {
            let r = rng.random_range(0.52..0.64);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.1, 0.09, rng),
                Dens::new(0.13, 0.07, 0.28 * j(rng), 0.0),
            );
            let a = rng.random_range(0.0..TAU);
            let nr = r * rng.random_range(0.55..0.64);
            let nc = scale(dir(a), r * 0.1);
            let n = &mut rc.nucleus;
            n.parts = vec![
                Blob::random(nc, nr, 0.15, 0.14, rng),
                Blob::random(
                    add(nc, scale(dir(a + 2.0), 0.35 * nr)),
                    0.6 * nr,
                    0.2,
                    0.1,
                    rng,
                ),
            ];
            n.smooth = 0.1 * r;
            // Shallow fold, not the deep kidney of a mature monocyte.
            n.cuts = vec![Blob::random(
                add(nc, scale(dir(a + PI), nr * 1.15)),
                nr * 0.35,
                0.2,
                0.03,
                rng,
            )];
            n.dens = Dens::new(0.18, 1.05 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 36.0;
            n.chromatin_contrast = 0.18;
            for _ in 0..rng.random_range(1..3) {
                let p = add(
                    nc,
                    scale(
                        dir(rng.random_range(0.0..TAU)),
                        nr * rng.random_range(0.0..0.45),
                    ),
                );
                n.nucleoli.push(Blob::random(
                    p,
                    r * rng.random_range(0.05..0.08),
                    0.2,
                    0.05,
                    rng,
                ));
            }
            let count = rng.random_range(4..16);
            rc.scatter(
                count,
                (0.012, 0.018),
                Dens::new(0.35, 0.65, 0.0, 0.0),
                false,
                rng,
            );
            let vac = rng.random_range(0..3);
            rc.scatter(
                vac,
                (0.02, 0.035),
                Dens::new(-0.08, -0.05, -0.18, 0.0),
                false,
                rng,
            );
            rc
        }
        CellType::Runx1Blast => {
            let r = rng.random_range(0.56..0.70);
            let mut rc = Recipe::new(
                Blob::random([0.0, 0.0], r, 0.1, 0.06, rng),
                Dens::new(0.06, 0.05, 0.62 * j(rng), 0.0),
            );
            let a = rng.random_range(0.0..TAU);
            let nr = r * rng.random_range(0.5..0.58);
            let nc = scale(dir(a), r * rng.random_range(0.18..0.28));
            let n = &mut rc.nucleus;
            n.parts = vec![Blob::random(nc, nr, 0.15, 0.05, rng)];
            n.dens = Dens::new(0.18, 1.1 * j(rng), 0.0, 0.0);
            n.chromatin_freq = 36.0;
            n.chromatin_contrast = 0.16;
            for _ in 0..rng.random_range(1..4) {
                let p = add(
                    nc,
                    scale(
                        dir(rng.random_range(0.0..TAU)),
                        nr * rng.random_range(0.0..0.5),
                    ),
                );
                n.nucleoli.push(Blob::random(
                    p,
                    r * rng.random_range(0.05..0.08),
                    0.2,
                    0.05,
                    rng,
                ));
            }
            // Perinuclear pale zone (Golgi hof) on the side facing the cell centre.
            let hof = Blob::random(
                add(nc, scale(dir(a + PI), nr * 0.95)),
                r * rng.random_range(0.2..0.26),
                0.3,
                0.05,
                rng,
            );
            rc.pale.push((hof, 0.65));
            rc.scatter(
                rng.random_range(8..30),
                (0.01, 0.016),
                Dens::new(0.45, 0.35, 0.0, 0.0),
                false,
                rng,
            );
            // One long thin Auer rod in the cytoplasm away from the nucleus.
            let far = scale(dir(a + PI + rng.random_range(-0.5..0.5)), r * 0.55);
            let ang = a + PI / 2.0 + rng.random_range(-0.4..0.4);
            let l = r * rng.random_range(0.28..0.4);
            rc.rods.push(Rod {
                a: sub(far, scale(dir(ang), l)),
                b: add(far, scale(dir(ang), l)),
                r: 0.009,
            });
            rc
        }
    }
}

// ---------------------------------------------------------------------------
// Rasterisation
// ---------------------------------------------------------------------------

/// Auer rods: azurophilic material, reddish purple.
const ROD_DENS: Dens = Dens::new(0.9, 1.4, 0.0, 0.0);

/// Red cells: eosin only; the plasma background gets a trace.
const RBC_EOSIN: f32 = 0.72;

/// Renders one crop of `size`×`size` pixels of a cell of type `t` under `stain`.
///
/// Deterministic given the state of `rng`; uses nothing else.
/// Errors with [`Error::InvalidArgument`] when `size` is below [`MIN_IMAGE_SIZE`]
/// or above [`crate::cell_image::MAX_SIDE`].
pub fn render_cell<R: Rng + ?Sized>(
    t: CellType,
    size: u32,
    stain: &Stain,
    rng: &mut R,
) -> Result<CellImage> {
    if !(MIN_IMAGE_SIZE..=crate::cell_image::MAX_SIDE).contains(&size) {
        return Err(Error::invalid(
            "image_size",
            format!(
                "{size} px; must be between {MIN_IMAGE_SIZE} and {}",
                crate::cell_image::MAX_SIDE
            ),
        ));
    }
    let rc = recipe(t, rng);
    let s = size as usize;
    let pw = 2.0 / size as f32;
    let noise = Noise::new(rng.random());

    // Placement of the leukocyte in the crop.
    let angle = rng.random_range(0.0..TAU);
    let centre = [rng.random_range(-0.06..0.06), rng.random_range(-0.06..0.06)];
    let to_local = |p: P2| rot(sub(p, centre), -angle);
    let to_crop = |p: P2| add(rot(p, angle), centre);

    let mut dens = vec![Dens::default(); s * s];
    let pix = |i: usize| (i as f32 + 0.5) * pw - 1.0;

    // 1. Plasma background: a faint, uneven eosin trace.
    for y in 0..s {
        for x in 0..s {
            let p = [pix(x), pix(y)];
            dens[y * s + x].e = 0.03 + 0.03 * noise.fbm(p, 2.0, 2);
        }
    }

    // 2. Red cells behind the leukocyte, some cut by the border.
    let cell_ext = rc.cyto.extent();
    let mut rbcs: Vec<(P2, f32, f32, f32)> = Vec::new(); // centre, radius, aspect, angle
    let n_rbc = rng.random_range(2..9);
    for _ in 0..n_rbc * 10 {
        if rbcs.len() >= n_rbc {
            break;
        }
        let r = rng.random_range(0.25..0.32);
        let c = [rng.random_range(-1.25..1.25), rng.random_range(-1.25..1.25)];
        let dc = super::geom::len(sub(c, centre));
        if dc < 0.75 * (cell_ext + r) {
            continue;
        }
        if rbcs
            .iter()
            .any(|(o, ro, _, _)| super::geom::len(sub(c, *o)) < 1.4 * r.max(*ro))
        {
            continue;
        }
        rbcs.push((c, r, rng.random_range(0.9..1.0), rng.random_range(0.0..TAU)));
    }
    for &(c, r, aspect, a) in &rbcs {
        let conc = RBC_EOSIN * rng.random_range(0.85..1.15);
        let pallor = rng.random_range(0.35..0.55);
        let (x0, x1, y0, y1) = bbox(c, r * 1.05, s, pw);
        for y in y0..y1 {
            for x in x0..x1 {
                let q = rot(sub([pix(x), pix(y)], c), -a);
                let q = [q[0], q[1] / aspect];
                let rho = super::geom::len(q);
                let cov = coverage(rho - r, pw);
                if cov <= 0.0 {
                    continue;
                }
                // Biconcave disc: thinner (paler) centre, slightly denser rim.
                let t = rho / r;
                let profile = 1.0 - pallor * (-(t / 0.45) * (t / 0.45)).exp()
                    + 0.12 * smoothstep(0.7, 0.95, t);
                dens[y * s + x].e += cov * conc * profile;
            }
        }
    }

    // 3. The leukocyte: cytoplasm, nucleus, pale zones. Keep coverage maps
    //    for the granules and rods painted afterwards.
    let mut cell_cov = vec![0.0f32; s * s];
    let mut nuc_cov = vec![0.0f32; s * s];
    let (x0, x1, y0, y1) = bbox(centre, cell_ext + 2.0 * pw, s, pw);
    let nu = &rc.nucleus;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = to_local([pix(x), pix(y)]);
            let cc = coverage(rc.cyto.sdf(p), pw);
            if cc <= 0.0 {
                continue;
            }
            let i = y * s + x;
            // Cytoplasm: mottled, with fine granularity and pale zones.
            let mottle = 0.85 + 0.3 * noise.fbm(p, 6.0, 2);
            let mut cyto = rc.cyto_dens.mul(mottle);
            if rc.grain.e != 0.0 || rc.grain.a != 0.0 {
                let g = (noise.value(p[0] * 90.0 + 31.0, p[1] * 90.0 - 7.0) - 0.45).max(0.0) * 1.8;
                cyto = cyto.add(rc.grain.mul(g));
            }
            for (b, strength) in &rc.pale {
                let d = b.sdf(p);
                let k = strength * smoothstep(0.03, -0.03, d);
                cyto = cyto.mul(1.0 - k);
            }
            let dn = nu.sdf(p);
            let nc = coverage(dn, pw);
            let mut inside = cyto;
            if nc > 0.0 {
                // Chromatin: fractal clumping, denser toward the nuclear rim.
                let ch = noise.fbm(add(p, [5.3, -2.1]), nu.chromatin_freq, 3);
                let mut k = 1.0 + nu.chromatin_contrast * (2.0 * ch - 1.0) * 1.6;
                k *= 1.0 + 0.15 * smoothstep(-0.04, 0.0, dn);
                let mut nd = nu.dens.mul(k.max(0.2));
                for nl in &nu.nucleoli {
                    let c = smoothstep(0.012, -0.012, nl.sdf(p));
                    nd = nd.lerp(Dens::new(0.1, 0.35, 0.3, 0.0), c * 0.85);
                }
                inside = cyto.lerp(nd, nc);
            }
            // The leukocyte lies on top: what is under it shows only faintly.
            dens[i] = dens[i].mul(1.0 - 0.85 * cc).add(inside.mul(cc));
            cell_cov[i] = cc;
            nuc_cov[i] = nc;
        }
    }

    // 4. Granules, vacuoles and Auer rods, clipped to the cell.
    for d in &rc.dots {
        let c = to_crop(d.c);
        let (x0, x1, y0, y1) = bbox(c, d.r + pw, s, pw);
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * s + x;
                let rho = super::geom::len(sub([pix(x), pix(y)], c));
                let cov = coverage(rho - d.r, pw);
                if cov <= 0.0 {
                    continue;
                }
                let mut clip = cell_cov[i];
                if !d.over_nucleus {
                    clip *= 1.0 - nuc_cov[i];
                }
                // Rounded profile: granules are spheres, thicker in the middle.
                let t = rho / d.r;
                let shape = 1.0 - 0.35 * t * t;
                let add_d = d.dens.mul(cov * clip * shape);
                let v = dens[i].add(add_d);
                dens[i] = Dens::new(v.e.max(0.0), v.a.max(0.0), v.b.max(0.0), v.o.max(0.0));
            }
        }
    }
    for rod in &rc.rods {
        let (a, b) = (to_crop(rod.a), to_crop(rod.b));
        let r = rod.r.max(0.6 * pw);
        let lo = [a[0].min(b[0]), a[1].min(b[1])];
        let hi = [a[0].max(b[0]), a[1].max(b[1])];
        let mid = scale(add(lo, hi), 0.5);
        let half = (hi[0] - lo[0]).max(hi[1] - lo[1]) * 0.5 + r + pw;
        let (x0, x1, y0, y1) = bbox(mid, half, s, pw);
        for y in y0..y1 {
            for x in x0..x1 {
                let i = y * s + x;
                let cov = coverage(capsule_sdf([pix(x), pix(y)], a, b, r), pw);
                if cov > 0.0 {
                    dens[i] = dens[i].add(ROD_DENS.mul(cov * cell_cov[i]));
                }
            }
        }
    }

    // 5. Optics: Beer–Lambert, focus blur, sensor noise, stain colour shift.
    let mut rgb: Vec<[f32; 3]> = dens
        .iter()
        .map(|d| stain.absorb(d.e, d.a, d.b, d.o))
        .collect();
    let sigma = rng.random_range(0.25..1.0f32) * size as f32 / DEFAULT_IMAGE_SIZE as f32;
    blur(&mut rgb, s, sigma);
    let m = stain.colour_matrix();
    let mut out = Vec::with_capacity(s * s * 3);
    for px in &rgb {
        // Sum of uniforms: cheap, roughly Gaussian sensor noise, sd ~0.01.
        let n = (rng.random::<f32>() + rng.random::<f32>() + rng.random::<f32>() - 1.5) * 0.02;
        let v = [px[0] + n, px[1] + n, px[2] + n];
        for row in &m {
            let c = row[0] * v[0] + row[1] * v[1] + row[2] * v[2];
            out.push((c.clamp(0.0, 1.0) * 255.0 + 0.5) as u8);
        }
    }
    CellImage::from_rgb(size, size, out)
}

/// Pixel index range (x0, x1, y0, y1) of a square of half-side `half` around `c`.
fn bbox(c: P2, half: f32, s: usize, pw: f32) -> (usize, usize, usize, usize) {
    let to_px = |v: f32| ((v + 1.0) / pw).floor();
    let clampi = |v: f32| v.clamp(0.0, s as f32) as usize;
    (
        clampi(to_px(c[0] - half) - 1.0),
        clampi(to_px(c[0] + half) + 2.0),
        clampi(to_px(c[1] - half) - 1.0),
        clampi(to_px(c[1] + half) + 2.0),
    )
}

/// Separable Gaussian blur in place (edges clamped).
fn blur(img: &mut [[f32; 3]], s: usize, sigma: f32) {
    if sigma < 0.2 {
        return;
    }
    let rad = (3.0 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-rad..=rad)
        .map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let norm: f32 = kernel.iter().sum();
    let kernel: Vec<f32> = kernel.iter().map(|k| k / norm).collect();
    let mut tmp = vec![[0.0f32; 3]; s * s];
    let last = s as isize - 1;
    for y in 0..s {
        for x in 0..s {
            let mut acc = [0.0; 3];
            for (k, w) in kernel.iter().enumerate() {
                let xx = (x as isize + k as isize - rad).clamp(0, last) as usize;
                let p = img[y * s + xx];
                acc[0] += w * p[0];
                acc[1] += w * p[1];
                acc[2] += w * p[2];
            }
            tmp[y * s + x] = acc;
        }
    }
    for y in 0..s {
        for x in 0..s {
            let mut acc = [0.0; 3];
            for (k, w) in kernel.iter().enumerate() {
                let yy = (y as isize + k as isize - rad).clamp(0, last) as usize;
                let p = tmp[yy * s + x];
                acc[0] += w * p[0];
                acc[1] += w * p[1];
                acc[2] += w * p[2];
            }
            img[y * s + x] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn luma(img: &CellImage, x: u32, y: u32) -> f32 {
        let i = ((y * img.width() + x) * 3) as usize;
        let p = &img.rgb()[i..i + 3];
        0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
    }

    #[test]
    fn names_round_trip_and_abnormal_flags() {
        for t in CellType::ALL {
            assert_eq!(t.name().parse::<CellType>().unwrap(), t);
            assert_eq!(t.is_abnormal(), t.subtype().is_some(), "{t}");
        }
        let e = "blast".parse::<CellType>().unwrap_err();
        assert!(e.to_string().contains("cell_type"), "{e}");
        for label in crate::classes::BAG_LABELS {
            for (t, _) in abnormal_types(label) {
                assert_eq!(t.subtype(), Some(label));
            }
        }
        assert!(abnormal_types("control").is_empty());
    }

    #[test]
    fn same_seed_same_bytes_different_seed_different_cell() {
        let stain = Stain::from_seed(1);
        let a = render_cell(
            CellType::Runx1Blast,
            64,
            &stain,
            &mut ChaCha8Rng::seed_from_u64(9),
        )
        .unwrap();
        let b = render_cell(
            CellType::Runx1Blast,
            64,
            &stain,
            &mut ChaCha8Rng::seed_from_u64(9),
        )
        .unwrap();
        let c = render_cell(
            CellType::Runx1Blast,
            64,
            &stain,
            &mut ChaCha8Rng::seed_from_u64(10),
        )
        .unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn every_type_renders_with_a_leukocyte_at_the_centre() {
        for size in [64u32, 144] {
            for (k, t) in CellType::ALL.into_iter().enumerate() {
                let stain = Stain::from_seed(k as u64);
                let mut rng = ChaCha8Rng::seed_from_u64(100 + k as u64);
                let img = render_cell(t, size, &stain, &mut rng).unwrap();
                assert_eq!((img.width(), img.height()), (size, size));
                // Mean luma of the central 20% against the brightest corner region.
                let c0 = size * 2 / 5;
                let c1 = size * 3 / 5;
                let mut centre = 0.0;
                let mut n = 0.0;
                for y in c0..c1 {
                    for x in c0..c1 {
                        centre += luma(&img, x, y);
                        n += 1.0;
                    }
                }
                centre /= n;
                let max = (0..size)
                    .flat_map(|y| (0..size).map(move |x| (x, y)))
                    .map(|(x, y)| luma(&img, x, y))
                    .fold(0.0f32, f32::max);
                assert!(
                    centre < max - 20.0,
                    "{t} at {size}px: centre {centre} vs brightest {max}"
                );
            }
        }
    }

    #[test]
    fn sizes_out_of_range_are_rejected() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let e = render_cell(CellType::Lymphocyte, 31, &Stain::neutral(), &mut rng).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref arg, .. } if arg == "image_size"),
            "{e}"
        );
    }
}
