//! The vocabulary of the morphology table ([`CellType::params`](super::cell::CellType::params)):
//! what one cell type's entry can say ([`CellParams`]: cell size and stain, a
//! nucleus shape kind with its parameters, nucleoli, hof, granules, Auer
//! rods), and the shared builders that turn an entry into the parts of a
//! [`Recipe`] (lobed, round and butterfly nuclei, granule scatter, rods).
//!
//! Lengths are fractions of the cell radius unless a field says otherwise.
//! Each builder draws from the RNG in a fixed order; see [`super::recipe`].

use std::f32::consts::{PI, TAU};

use rand::Rng;

use super::geom::{add, dir, rot, scale, sub, Blob, P2};
use super::recipe::{Dens, Nucleus, Recipe, Rod};

/// The stain channel of a structure that gets the per-cell colour jitter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Channel {
    Eosin,
    Blue,
}

/// Everything that varies between cell types.
#[derive(Debug, Clone, Copy)]
pub(super) struct CellParams {
    /// Range of the cell radius, crop units.
    pub(super) radius: (f32, f32),
    /// Most eccentricity and wobble of the cell outline (see [`Blob::random`]).
    pub(super) outline: (f32, f32),
    /// Cytoplasm stain.
    pub(super) cyto: Dens,
    /// Cytoplasm channel that gets the per-cell jitter, if any.
    pub(super) cyto_jitter: Option<Channel>,
    pub(super) nucleus: Shape,
    pub(super) chromatin: Chromatin,
    pub(super) extras: Extras,
}

/// The structures only some types have.
#[derive(Debug, Clone, Copy)]
pub(super) struct Extras {
    /// Fine granularity of the cytoplasm; zero for none.
    pub(super) grain: Dens,
    pub(super) nucleoli: Option<Nucleoli>,
    pub(super) hof: Option<Hof>,
    /// Granules and vacuoles, scattered in this order.
    pub(super) granules: &'static [Granules],
    pub(super) rods: Rods,
}

impl Extras {
    /// None of them.
    pub(super) const NONE: Extras = Extras {
        grain: Dens::new(0.0, 0.0, 0.0, 0.0),
        nucleoli: None,
        hof: None,
        granules: &[],
        rods: Rods::None,
    };
}

/// The outline of a nucleus.
#[derive(Debug, Clone, Copy)]
pub(super) enum Shape {
    Lobed(Lobed),
    Round(Round),
    Butterfly(Butterfly),
}

/// Lobes along an arc, optionally joined by filaments (segmented and band
/// neutrophils, eosinophil); see [`lobed_nucleus`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Lobed {
    pub(super) count: Lobes,
    pub(super) step: Step,
    /// Radius of the arc the lobe centres lie on.
    pub(super) arc: f32,
    /// Range of the lobe radii.
    pub(super) lobe: (f32, f32),
    /// Radius of the filaments between lobes; 0 for none.
    pub(super) filament: f32,
    /// Fillet of the union of the lobes.
    pub(super) smooth: f32,
}

/// How many lobes a lobed nucleus has.
#[derive(Debug, Clone, Copy)]
pub(super) enum Lobes {
    Fixed(usize),
    /// One of these, uniformly.
    Pick(&'static [usize]),
    /// The first with probability `.0`, else the second.
    Either(f64, usize, usize),
}

/// The angle between successive lobe centres (each step then jittered).
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    /// This many radians.
    Fixed(f32),
    /// A whole arc drawn from this range (radians), split evenly.
    Arc(f32, f32),
}

/// A length that is fixed or drawn per cell.
#[derive(Debug, Clone, Copy)]
pub(super) enum Span {
    Fixed(f32),
    Range(f32, f32),
}

impl Span {
    /// The length in crop units for a cell of radius `r`.
    fn of<R: Rng + ?Sized>(self, r: f32, rng: &mut R) -> f32 {
        match self {
            Span::Fixed(k) => k * r,
            Span::Range(lo, hi) => r * rng.random_range(lo..hi),
        }
    }
}

/// One round nucleus, optionally with a second lobe fused to it and a fold
/// or a cup cut out of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Round {
    pub(super) place: Place,
    /// Nucleus radius.
    pub(super) size: Span,
    /// Most eccentricity and wobble of its outline.
    pub(super) outline: (f32, f32),
    pub(super) lobe: Option<SideLobe>,
    pub(super) fold: Option<Fold>,
    pub(super) cup: Option<Cup>,
    /// Fillet of the union with the side lobe.
    pub(super) smooth: f32,
}

/// Where a round nucleus sits, and the order its direction and size are drawn in.
#[derive(Debug, Clone, Copy)]
pub(super) enum Place {
    /// At the cell centre; no direction.
    Centre,
    /// A random direction, then the size; the centre this far out.
    Eccentric(Span),
    /// The size, then a random direction; the centre out by a fraction in
    /// this range of the room left (cell radius minus nucleus radius).
    Slack(f32, f32),
}

/// What a side lobe's offset and size are fractions of.
#[derive(Debug, Clone, Copy)]
pub(super) enum Unit {
    NucleusRadius,
    CellRadius,
}

/// A second, smaller lobe fused to a round nucleus.
#[derive(Debug, Clone, Copy)]
pub(super) struct SideLobe {
    /// Its direction from the nucleus centre, turned this far (radians) from
    /// the nucleus direction; `None`: a random direction.
    pub(super) turn: Option<f32>,
    pub(super) unit: Unit,
    /// Offset of its centre from the nucleus centre and its radius, in `unit`.
    pub(super) offset: f32,
    pub(super) size: f32,
    pub(super) outline: (f32, f32),
}

/// A kidney fold: a blob cut out of the nucleus on the side facing the cell
/// centre. Offset from the nucleus centre and radius in nucleus radii.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fold {
    pub(super) offset: f32,
    pub(super) size: f32,
    pub(super) outline: (f32, f32),
}

/// A cup: an invagination cut out of the nucleus in a random direction, which
/// also pales the cytoplasm under it by `pallor`. Ranges in nucleus radii.
#[derive(Debug, Clone, Copy)]
pub(super) struct Cup {
    pub(super) offset: (f32, f32),
    pub(super) size: (f32, f32),
    pub(super) outline: (f32, f32),
    pub(super) pallor: f32,
}

/// Two equal lobes either side of a cleft ("butterfly").
#[derive(Debug, Clone, Copy)]
pub(super) struct Butterfly {
    /// Range of each lobe's radius.
    pub(super) size: (f32, f32),
    /// Lobe centres at ± this many lobe radii along the axis.
    pub(super) separation: f32,
    pub(super) outline: (f32, f32),
    /// Fillet of the union of the lobes.
    pub(super) smooth: f32,
    /// The cleft: a circle this many lobe radii across the axis, of this
    /// many lobe radii.
    pub(super) cleft: (f32, f32),
}

/// Nuclear stain and texture.
#[derive(Debug, Clone, Copy)]
pub(super) struct Chromatin {
    /// Eosin and azure; azure gets the per-cell jitter.
    pub(super) dens: (f32, f32),
    /// Base frequency of the texture (per crop unit) and its contrast.
    pub(super) freq: f32,
    pub(super) contrast: f32,
}

/// Nucleoli of a round nucleus.
#[derive(Debug, Clone, Copy)]
pub(super) struct Nucleoli {
    /// Range of the count (upper bound excluded).
    pub(super) count: (i32, i32),
    /// Largest offset from the nucleus centre, in nucleus radii.
    pub(super) spread: f32,
    /// Range of the radii.
    pub(super) size: (f32, f32),
}

/// A Golgi hof: a pale zone against a round nucleus, on the side facing the
/// cell centre, paling the cytoplasm by `pallor`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Hof {
    /// Offset from the nucleus centre, in nucleus radii.
    pub(super) offset: f32,
    /// Range of the radius.
    pub(super) size: (f32, f32),
    pub(super) outline: (f32, f32),
    pub(super) pallor: f32,
}

/// How many granules to scatter.
#[derive(Debug, Clone, Copy)]
pub(super) enum Count {
    /// Drawn from this range (upper bound excluded).
    Range(usize, usize),
    /// As many granules of radius [`FILL_GRANULE_R`] as cover this fraction
    /// of the cell's area.
    Fill(f32),
}

/// Nominal granule radius of [`Count::Fill`], crop units.
const FILL_GRANULE_R: f32 = 0.024;

/// One kind of granule (or vacuole) scattered in the cytoplasm.
#[derive(Debug, Clone, Copy)]
pub(super) struct Granules {
    pub(super) count: Count,
    /// Range of the radii, crop units.
    pub(super) size: (f32, f32),
    /// Stain; negative for vacuoles.
    pub(super) dens: Dens,
    /// Whether they may lie over the nucleus.
    pub(super) over_nucleus: bool,
    /// Only in cells larger than this radius (crop units).
    pub(super) min_cell_radius: Option<f32>,
}

impl Granules {
    /// A count drawn from `lo..hi` of radii in `size` (crop units), beside the nucleus.
    pub(super) const fn range(lo: usize, hi: usize, size: (f32, f32), dens: Dens) -> Self {
        Granules {
            count: Count::Range(lo, hi),
            size,
            dens,
            over_nucleus: false,
            min_cell_radius: None,
        }
    }

    /// Enough to cover `fraction` of the cell (see [`Count::Fill`]), beside the nucleus.
    pub(super) const fn fill(fraction: f32, size: (f32, f32), dens: Dens) -> Self {
        Granules {
            count: Count::Fill(fraction),
            ..Granules::range(0, 0, size, dens)
        }
    }

    /// The same, also over the nucleus.
    pub(super) const fn over_nucleus(self) -> Self {
        Granules {
            over_nucleus: true,
            ..self
        }
    }

    /// The same, only in cells of radius above `r`.
    pub(super) const fn above_radius(self, r: f32) -> Self {
        Granules {
            min_cell_radius: Some(r),
            ..self
        }
    }
}

/// Auer rods. Half-lengths and radii in crop units unless said otherwise.
#[derive(Debug, Clone, Copy)]
pub(super) enum Rods {
    None,
    /// With probability `p`, one rod at a random point of the cytoplasm at
    /// least `margin` inside it.
    Maybe {
        p: f64,
        margin: f32,
        half_len: (f32, f32),
        radius: f32,
    },
    /// A bundle of `count` roughly parallel rods (directions within ± `tilt`
    /// radians, centres spread ± `across` and ± `along` the bundle), a second
    /// bundle with probability `second`.
    Bundles {
        second: f64,
        margin: f32,
        count: (i32, i32),
        tilt: f32,
        half_len: (f32, f32),
        across: f32,
        along: f32,
        radius: (f32, f32),
    },
    /// One long rod on the far side of the cell from a round nucleus:
    /// `dist` cell radii out, within ± `spread` radians of straight opposite,
    /// across that direction within ± `tilt`, half-length in cell radii.
    Opposite {
        spread: f32,
        dist: f32,
        tilt: f32,
        half_len: (f32, f32),
        radius: f32,
    },
}

// ---------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------

/// Where the nucleus was put, for the parts placed relative to it (nucleoli,
/// hof, the far-side rod). A lobed nucleus has no single centre: its frame is
/// the cell centre with a zero radius.
pub(super) struct Frame {
    /// Direction of the nucleus from the cell centre.
    a: f32,
    /// Nucleus centre and radius.
    nc: P2,
    nr: f32,
    /// The cup cut out of the nucleus, with the pallor it gives the cytoplasm.
    pub(super) cup: Option<(Blob, f32)>,
}

impl Frame {
    /// A nucleus centred in the cell, without a cup.
    fn centred(a: f32, nr: f32) -> Self {
        Frame {
            a,
            nc: [0.0, 0.0],
            nr,
            cup: None,
        }
    }
}

impl Rod {
    /// A rod of half-length `l` through `m` in direction `angle`.
    fn through(m: P2, angle: f32, l: f32, r: f32) -> Self {
        Rod {
            a: sub(m, scale(dir(angle), l)),
            b: add(m, scale(dir(angle), l)),
            r,
        }
    }
}

impl Shape {
    /// Sets the outline of `n` for a cell of radius `r`.
    pub(super) fn build<R: Rng + ?Sized>(&self, r: f32, n: &mut Nucleus, rng: &mut R) -> Frame {
        match self {
            Shape::Lobed(s) => s.build(r, n, rng),
            Shape::Round(s) => s.build(r, n, rng),
            Shape::Butterfly(s) => s.build(r, n, rng),
        }
    }
}

impl Lobed {
    /// Draws the lobe count, then the step, then the lobes (see [`lobed_nucleus`]).
    fn build<R: Rng + ?Sized>(&self, r: f32, n: &mut Nucleus, rng: &mut R) -> Frame {
        let count = match self.count {
            Lobes::Fixed(k) => k,
            Lobes::Pick(ks) => ks[rng.random_range(0..ks.len())],
            Lobes::Either(p, a, b) => {
                if rng.random_bool(p) {
                    a
                } else {
                    b
                }
            }
        };
        let step = match self.step {
            Step::Fixed(s) => s,
            Step::Arc(lo, hi) => rng.random_range(lo..hi) / (count - 1) as f32,
        };
        let lobe = (self.lobe.0 * r, self.lobe.1 * r);
        let (parts, filaments) =
            lobed_nucleus(count, self.arc * r, step, lobe, self.filament * r, rng);
        n.parts = parts;
        n.filaments = filaments;
        n.smooth = self.smooth * r;
        Frame::centred(0.0, 0.0)
    }
}

impl Round {
    /// A nucleus of this place, size and outline, with no side lobe, fold or cup.
    pub(super) const fn plain(place: Place, size: Span, outline: (f32, f32)) -> Self {
        Round {
            place,
            size,
            outline,
            lobe: None,
            fold: None,
            cup: None,
            smooth: 0.0,
        }
    }

    /// Draws the direction and size (in the order `place` says), the cup,
    /// the nucleus outline, the side lobe, then the fold.
    fn build<R: Rng + ?Sized>(&self, r: f32, n: &mut Nucleus, rng: &mut R) -> Frame {
        let (a, nr, nc) = match self.place {
            Place::Centre => (0.0, self.size.of(r, rng), [0.0, 0.0]),
            Place::Eccentric(offset) => {
                let a = rng.random_range(0.0..TAU);
                let nr = self.size.of(r, rng);
                (a, nr, scale(dir(a), offset.of(r, rng)))
            }
            Place::Slack(lo, hi) => {
                let nr = self.size.of(r, rng);
                let a = rng.random_range(0.0..TAU);
                (a, nr, scale(dir(a), (r - nr) * rng.random_range(lo..hi)))
            }
        };
        let cup = self.cup.map(|c| {
            let towards = dir(rng.random_range(0.0..TAU));
            let blob = Blob::random(
                add(
                    nc,
                    scale(towards, nr * rng.random_range(c.offset.0..c.offset.1)),
                ),
                nr * rng.random_range(c.size.0..c.size.1),
                c.outline.0,
                c.outline.1,
                rng,
            );
            (blob, c.pallor)
        });
        n.parts = vec![Blob::random(nc, nr, self.outline.0, self.outline.1, rng)];
        if let Some(l) = self.lobe {
            let unit = match l.unit {
                Unit::NucleusRadius => nr,
                Unit::CellRadius => r,
            };
            let towards = match l.turn {
                Some(turn) => a + turn,
                None => rng.random_range(0.0..TAU),
            };
            n.parts.push(Blob::random(
                add(nc, scale(dir(towards), l.offset * unit)),
                l.size * unit,
                l.outline.0,
                l.outline.1,
                rng,
            ));
        }
        n.smooth = self.smooth * r;
        n.cuts = cup.iter().map(|c| c.0).collect();
        if let Some(f) = self.fold {
            n.cuts.push(Blob::random(
                add(nc, scale(dir(a + PI), nr * f.offset)),
                nr * f.size,
                f.outline.0,
                f.outline.1,
                rng,
            ));
        }
        Frame { a, nc, nr, cup }
    }
}

impl Butterfly {
    /// Draws the axis, the lobe size, then the two lobe outlines.
    fn build<R: Rng + ?Sized>(&self, r: f32, n: &mut Nucleus, rng: &mut R) -> Frame {
        let a = rng.random_range(0.0..TAU);
        let nr = r * rng.random_range(self.size.0..self.size.1);
        let axis = dir(a);
        let (ecc, wob) = self.outline;
        n.parts = vec![
            Blob::random(scale(axis, self.separation * nr), nr, ecc, wob, rng),
            Blob::random(scale(axis, -self.separation * nr), nr, ecc, wob, rng),
        ];
        n.smooth = self.smooth * r;
        let cleft = rot(axis, PI / 2.0);
        n.cuts = vec![Blob::circle(
            scale(cleft, nr * self.cleft.0),
            nr * self.cleft.1,
        )];
        Frame::centred(a, nr)
    }
}

impl Nucleoli {
    /// Adds the nucleoli to `n`, placed in its frame `f`.
    pub(super) fn add<R: Rng + ?Sized>(&self, r: f32, f: &Frame, n: &mut Nucleus, rng: &mut R) {
        for _ in 0..rng.random_range(self.count.0..self.count.1) {
            let p = add(
                f.nc,
                scale(
                    dir(rng.random_range(0.0..TAU)),
                    f.nr * rng.random_range(0.0..self.spread),
                ),
            );
            let size = r * rng.random_range(self.size.0..self.size.1);
            n.nucleoli.push(Blob::random(p, size, 0.2, 0.05, rng));
        }
    }
}

impl Hof {
    /// The pale zone and its pallor, placed in the nucleus frame `f`.
    pub(super) fn pale<R: Rng + ?Sized>(&self, r: f32, f: &Frame, rng: &mut R) -> (Blob, f32) {
        let blob = Blob::random(
            add(f.nc, scale(dir(f.a + PI), f.nr * self.offset)),
            r * rng.random_range(self.size.0..self.size.1),
            self.outline.0,
            self.outline.1,
            rng,
        );
        (blob, self.pallor)
    }
}

impl Granules {
    /// Draws the count, then scatters them ([`Recipe::scatter`]).
    pub(super) fn scatter<R: Rng + ?Sized>(&self, r: f32, rc: &mut Recipe, rng: &mut R) {
        if self.min_cell_radius.is_some_and(|min| r <= min) {
            return;
        }
        let n = match self.count {
            Count::Range(lo, hi) => rng.random_range(lo..hi),
            Count::Fill(fraction) => {
                let area = PI * r * r;
                let gr = FILL_GRANULE_R;
                (fraction * area / (PI * gr * gr)) as usize
            }
        };
        rc.scatter(n, self.size, self.dens, self.over_nucleus, rng);
    }
}

impl Rods {
    /// Adds the rods to `rc`, the far-side rod placed in the nucleus frame `f`.
    pub(super) fn add<R: Rng + ?Sized>(&self, r: f32, f: &Frame, rc: &mut Recipe, rng: &mut R) {
        match *self {
            Rods::None => {}
            Rods::Maybe {
                p,
                margin,
                half_len,
                radius,
            } => {
                if rng.random_bool(p) {
                    let c = rc.cyto_point(margin, rng);
                    let ang = rng.random_range(0.0..TAU);
                    let l = rng.random_range(half_len.0..half_len.1);
                    rc.rods.push(Rod::through(c, ang, l, radius));
                }
            }
            Rods::Bundles {
                second,
                margin,
                count,
                tilt,
                half_len,
                across,
                along,
                radius,
            } => {
                let bundles = if rng.random_bool(second) { 2 } else { 1 };
                for _ in 0..bundles {
                    let c = rc.cyto_point(margin, rng);
                    let base = rng.random_range(0.0..TAU);
                    for _ in 0..rng.random_range(count.0..count.1) {
                        let ang = base + rng.random_range(-tilt..tilt);
                        let l = rng.random_range(half_len.0..half_len.1);
                        let off = scale(dir(base + PI / 2.0), rng.random_range(-across..across));
                        let m = add(
                            c,
                            add(off, scale(dir(base), rng.random_range(-along..along))),
                        );
                        let rr = rng.random_range(radius.0..radius.1);
                        rc.rods.push(Rod::through(m, ang, l, rr));
                    }
                }
            }
            Rods::Opposite {
                spread,
                dist,
                tilt,
                half_len,
                radius,
            } => {
                let far = scale(dir(f.a + PI + rng.random_range(-spread..spread)), r * dist);
                let ang = f.a + PI / 2.0 + rng.random_range(-tilt..tilt);
                let l = r * rng.random_range(half_len.0..half_len.1);
                rc.rods.push(Rod::through(far, ang, l, radius));
            }
        }
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
