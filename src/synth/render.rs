//! The rasteriser: paints a cell recipe ([`super::recipe`]) into a crop.
//!
//! A rendered crop is what a smear scanner's segmentation hands on: a square
//! of pale background with red-cell discs (lighter centres, some cut by the
//! border) and one leukocyte near the centre, painted as stain concentrations
//! and converted to RGB by the stain model in [`super::stain`], blurred by a
//! random focus and given sensor noise.

use std::f32::consts::TAU;

use rand::Rng;

use super::cell::CellType;
use super::geom::{add, capsule_sdf, coverage, rot, scale, smoothstep, sub, Noise, P2};
use super::recipe::{recipe, Dens};
use super::stain::Stain;
use crate::cell_image::CellImage;
use crate::error::{Error, Result};

/// Smallest crop side the renderer accepts: below it nuclei and granules are
/// under a pixel and the types stop being distinguishable.
pub const MIN_IMAGE_SIZE: u32 = 32;

/// Crop side of the public AML data set (144 px = 24.9 µm).
pub const DEFAULT_IMAGE_SIZE: u32 = 144;

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
    let clamp = |v: usize, off: isize| (v as isize + off).clamp(0, last) as usize;
    blur_pass(img, &mut tmp, s, &kernel, |x, y, off| y * s + clamp(x, off));
    blur_pass(&tmp, img, s, &kernel, |x, y, off| clamp(y, off) * s + x);
}

/// One pass of a separable blur: `dst` at (x, y) is the sum over the kernel
/// taps of weight × `src[at(x, y, offset)]`, offsets centred on the kernel.
fn blur_pass(
    src: &[[f32; 3]],
    dst: &mut [[f32; 3]],
    s: usize,
    kernel: &[f32],
    at: impl Fn(usize, usize, isize) -> usize,
) {
    let rad = (kernel.len() / 2) as isize;
    for y in 0..s {
        for x in 0..s {
            let mut acc = [0.0; 3];
            for (k, w) in kernel.iter().enumerate() {
                let p = src[at(x, y, k as isize - rad)];
                acc[0] += w * p[0];
                acc[1] += w * p[1];
                acc[2] += w * p[2];
            }
            dst[y * s + x] = acc;
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
    fn same_seed_same_bytes_different_seed_different_cell() {
        let stain = Stain::from_seed(1);
        let render = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            render_cell(CellType::Runx1Blast, 64, &stain, &mut rng).unwrap()
        };
        let (a, b, c) = (render(9), render(9), render(10));
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
