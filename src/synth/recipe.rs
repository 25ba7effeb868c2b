//! Cell recipes: the random geometry and stain concentrations of one
//! leukocyte, in cell-local crop units, centred at the origin, as
//! [`super::render`] paints it; and [`recipe`], which builds one from its
//! type's entry in the morphology table ([`CellType::params`]) with the
//! builders of [`super::morphology`].
//!
//! The order of the random draws is part of the output: the same seed gives
//! the same cell only while the builders draw in the same order, from the
//! same ranges (a test in `cohort` pins the bytes).

use rand::Rng;

use super::cell::CellType;
use super::geom::{capsule_sdf, smin, Blob, P2};
use super::morphology::Channel;

/// Stain concentrations of a structure: eosin, azure, methylene blue, orange.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Dens {
    pub(super) e: f32,
    pub(super) a: f32,
    pub(super) b: f32,
    pub(super) o: f32,
}

impl Dens {
    pub(super) const fn new(e: f32, a: f32, b: f32, o: f32) -> Self {
        Dens { e, a, b, o }
    }

    #[inline]
    pub(super) fn mul(self, k: f32) -> Self {
        Dens::new(self.e * k, self.a * k, self.b * k, self.o * k)
    }

    #[inline]
    pub(super) fn add(self, o: Dens) -> Self {
        Dens::new(self.e + o.e, self.a + o.a, self.b + o.b, self.o + o.o)
    }

    /// `self` where `t` = 0, `other` where `t` = 1.
    #[inline]
    pub(super) fn lerp(self, other: Dens, t: f32) -> Self {
        self.mul(1.0 - t).add(other.mul(t))
    }
}

/// One round granule (or vacuole when `dens` is negative).
#[derive(Debug, Clone, Copy)]
pub(super) struct Dot {
    pub(super) c: P2,
    pub(super) r: f32,
    pub(super) dens: Dens,
    /// Whether the dot may lie over the nucleus (basophil, hypergranular promyelocyte).
    pub(super) over_nucleus: bool,
}

/// An Auer rod or a filament between nuclear lobes: a capsule from `a` to
/// `b` of radius `r`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Rod {
    pub(super) a: P2,
    pub(super) b: P2,
    pub(super) r: f32,
}

/// The nucleus: a smooth union of blobs, minus cuts (indentations, clefts, cups).
#[derive(Debug, Clone, Default)]
pub(super) struct Nucleus {
    pub(super) parts: Vec<Blob>,
    /// Thin connecting filaments between lobes (capsules with radius).
    pub(super) filaments: Vec<Rod>,
    pub(super) cuts: Vec<Blob>,
    /// Fillet size of the union of parts.
    pub(super) smooth: f32,
    pub(super) dens: Dens,
    /// Base frequency of chromatin texture (per crop unit) and its contrast.
    pub(super) chromatin_freq: f32,
    pub(super) chromatin_contrast: f32,
    pub(super) nucleoli: Vec<Blob>,
}

impl Nucleus {
    #[inline]
    pub(super) fn sdf(&self, p: P2) -> f32 {
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

/// One leukocyte, ready to paint.
#[derive(Debug, Clone)]
pub(super) struct Recipe {
    pub(super) cyto: Blob,
    pub(super) cyto_dens: Dens,
    /// Fine granular texture of the cytoplasm (neutrophilic granules, monocyte dust).
    pub(super) grain: Dens,
    pub(super) nucleus: Nucleus,
    pub(super) dots: Vec<Dot>,
    pub(super) rods: Vec<Rod>,
    /// Pale zones of cytoplasm (Golgi hof, cup): cytoplasm colour scaled by `1 - strength`.
    pub(super) pale: Vec<(Blob, f32)>,
}

impl Recipe {
    /// A cell of this outline and cytoplasm stain, with nothing else yet.
    fn new(cyto: Blob, cyto_dens: Dens) -> Self {
        Recipe {
            cyto,
            cyto_dens,
            grain: Dens::default(),
            nucleus: Nucleus::default(),
            dots: Vec::new(),
            rods: Vec::new(),
            pale: Vec::new(),
        }
    }

    /// Scatters up to `n` dots of radius in `r` inside the cytoplasm (and over
    /// the nucleus only when `over_nucleus`), rejecting positions too close to
    /// the cell edge so granules never hang outside the cell.
    pub(super) fn scatter<R: Rng + ?Sized>(
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
    pub(super) fn cyto_point<R: Rng + ?Sized>(&self, margin: f32, rng: &mut R) -> P2 {
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

/// Per-cell multiplicative colour jitter: keeps cells of one type from being
/// identical in hue; per-patient shifts come on top (Stain).
fn jitter<R: Rng + ?Sized>(rng: &mut R) -> f32 {
    rng.random_range(0.85..1.15f32)
}

/// Builds the random recipe of one cell of `t` from its parameters
/// ([`CellType::params`]).
pub(super) fn recipe<R: Rng + ?Sized>(t: CellType, rng: &mut R) -> Recipe {
    let p = t.params();
    let r = rng.random_range(p.radius.0..p.radius.1);
    let cyto = Blob::random([0.0, 0.0], r, p.outline.0, p.outline.1, rng);
    let mut cyto_dens = p.cyto;
    match p.cyto_jitter {
        Some(Channel::Eosin) => cyto_dens.e *= jitter(rng),
        Some(Channel::Blue) => cyto_dens.b *= jitter(rng),
        None => {}
    }
    let mut rc = Recipe::new(cyto, cyto_dens);
    rc.grain = p.extras.grain;
    let frame = p.nucleus.build(r, &mut rc.nucleus, rng);
    let n = &mut rc.nucleus;
    let (e, a) = p.chromatin.dens;
    n.dens = Dens::new(e, a * jitter(rng), 0.0, 0.0);
    n.chromatin_freq = p.chromatin.freq;
    n.chromatin_contrast = p.chromatin.contrast;
    if let Some(nucleoli) = &p.extras.nucleoli {
        nucleoli.add(r, &frame, n, rng);
    }
    rc.pale.extend(frame.cup);
    if let Some(hof) = &p.extras.hof {
        rc.pale.push(hof.pale(r, &frame, rng));
    }
    for g in p.extras.granules {
        g.scatter(r, &mut rc, rng);
    }
    p.extras.rods.add(r, &frame, &mut rc, rng);
    rc
}
