//! Synthetic cohort generator: patients (bags) of rendered cells on disk.
//!
//! Layout written under `OUT` (DESIGN.md §3):
//! - `metadata.csv`: `patient_id,bag_label,abnormal_fraction,n_cells`
//! - `data/<bag_label>/<patient_id>/image_<k>.tif`: RGB TIFF, `k` from 0
//! - `cells.csv`: `patient_id,image,cell_type,annotated` for every image, with
//!   the true cell type; `annotated` = 1 marks the subset an expert would have
//!   labelled (the paper's 1,983 cells).
//!
//! Patient ids (`P0001`, …) are assigned after shuffling the patients of all
//! classes, so an id says nothing about the label.

use std::path::{Path, PathBuf};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::cell::{abnormal_types, render_cell, CellType};
use super::stain::Stain;
use super::{mix_seed, CohortConfig};
use crate::classes::BAG_LABELS;
use crate::error::{Error, Result};
use crate::io::{write_atomic, write_replacing};

/// One generated patient, as listed in `metadata.csv`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PatientRecord {
    pub patient_id: String,
    pub bag_label: &'static str,
    /// Realised fraction of abnormal cells (`n_abnormal / n_cells`).
    pub abnormal_fraction: f64,
    pub n_cells: usize,
    pub n_abnormal: usize,
}

/// What [`generate_cohort`] wrote.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CohortSummary {
    pub out: PathBuf,
    /// Patients in `metadata.csv` order (by id).
    pub patients: Vec<PatientRecord>,
    pub n_cells: usize,
    pub n_annotated: usize,
}

/// Mean normal differential of peripheral blood white cells (fractions of the
/// non-leukemic cells). Every patient of every class draws around it.
const DIFFERENTIAL: [(CellType, f64); 8] = [
    (CellType::SegmentedNeutrophil, 0.50),
    (CellType::BandNeutrophil, 0.06),
    (CellType::Lymphocyte, 0.27),
    (CellType::Monocyte, 0.08),
    (CellType::Eosinophil, 0.03),
    (CellType::Basophil, 0.01),
    (CellType::Myelocyte, 0.025),
    (CellType::Metamyelocyte, 0.025),
];

fn pick<T: Copy, R: Rng + ?Sized>(items: &[(T, f64)], rng: &mut R) -> T {
    let total: f64 = items.iter().map(|(_, w)| w).sum();
    let mut u = rng.random_range(0.0..total);
    for (t, w) in items {
        if u < *w {
            return *t;
        }
        u -= w;
    }
    items[items.len() - 1].0
}

/// Draws the cell types of one patient: `round(abnormal_fraction · n)` cells
/// from the subtype's abnormal types (at least one for a leukemic class, none
/// for `control`), the rest from a patient-specific normal differential, in
/// random order.
pub fn draw_patient_cells<R: Rng + ?Sized>(
    bag_label: &str,
    n: usize,
    abnormal_fraction: f64,
    rng: &mut R,
) -> Vec<CellType> {
    let abnormal = abnormal_types(bag_label);
    let n_abn = if abnormal.is_empty() || n == 0 {
        0
    } else {
        ((abnormal_fraction * n as f64).round() as usize).clamp(1, n)
    };
    // Patients differ in their differential (log-normal jitter per type);
    // the spread is the same for every class.
    let diff: Vec<(CellType, f64)> = DIFFERENTIAL
        .iter()
        .map(|&(t, w)| {
            let z: f64 = (0..3).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>() * 0.35;
            (t, w * z.exp())
        })
        .collect();
    let abn: Vec<(CellType, f64)> = abnormal.iter().map(|&(t, w)| (t, w as f64)).collect();
    let mut cells: Vec<CellType> = (0..n)
        .map(|i| {
            if i < n_abn {
                pick(&abn, rng)
            } else {
                pick(&diff, rng)
            }
        })
        .collect();
    cells.shuffle(rng);
    cells
}

/// One patient's plan (cheap: cell types, stain, seeds); rendering follows.
pub(crate) struct Plan {
    pub record: PatientRecord,
    pub seed: u64,
    pub stain: Stain,
    pub cells: Vec<CellType>,
    pub annotated: Vec<bool>,
}

impl Plan {
    /// Renders cell `k` of this patient; depends only on the patient seed and `k`.
    pub fn render(&self, k: usize, size: u32) -> Result<crate::cell_image::CellImage> {
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(self.seed, 0xCE11, k as u64));
        render_cell(self.cells[k], size, &self.stain, &mut rng)
    }
}

/// Plans every patient of a cohort, in `metadata.csv` order. Patient ids are
/// assigned after shuffling (class, index) pairs, so ids hide the label.
pub(crate) fn plan_cohort(cfg: &CohortConfig) -> Vec<Plan> {
    let mut order: Vec<(usize, usize)> = (0..BAG_LABELS.len())
        .flat_map(|c| (0..cfg.patients_per_class).map(move |i| (c, i)))
        .collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix_seed(cfg.seed, 0, 0x1D5)));
    let width = order.len().to_string().len().max(4);
    order
        .iter()
        .enumerate()
        .map(|(j, &(class, index))| plan_patient(cfg, class, index, format!("P{:0width$}", j + 1)))
        .collect()
}

/// Number of rendering threads for a configuration.
pub(crate) fn thread_count(cfg: &CohortConfig) -> usize {
    if cfg.threads == 0 {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8)
    } else {
        cfg.threads
    }
}

fn plan_patient(cfg: &CohortConfig, class: usize, index: usize, patient_id: String) -> Plan {
    let label = BAG_LABELS[class];
    let seed = mix_seed(cfg.seed, class as u64 + 1, index as u64);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.random_range(cfg.cells_min..=cfg.cells_max);
    let fraction = rng.random_range(cfg.abnormal_fraction_min..=cfg.abnormal_fraction_max);
    let stain = Stain::random(&mut rng);
    let cells = draw_patient_cells(label, n, fraction, &mut rng);
    let annotated: Vec<bool> = (0..n)
        .map(|_| rng.random_bool(cfg.annotated_fraction))
        .collect();
    let n_abnormal = cells.iter().filter(|t| t.is_abnormal()).count();
    Plan {
        record: PatientRecord {
            patient_id,
            bag_label: label,
            abnormal_fraction: n_abnormal as f64 / n as f64,
            n_cells: n,
            n_abnormal,
        },
        seed,
        stain,
        cells,
        annotated,
    }
}

fn encode_tiff(img: &crate::cell_image::CellImage, path: &Path) -> Result<Vec<u8>> {
    let buf = image::RgbImage::from_raw(img.width(), img.height(), img.rgb().to_vec()).ok_or_else(
        || {
            Error::Mismatch(format!(
                "rendered cell for {} has a wrong buffer size",
                path.display()
            ))
        },
    )?;
    let mut bytes = Vec::new();
    buf.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Tiff,
    )
    .map_err(|e| Error::io("cannot encode TIFF for", path, std::io::Error::other(e)))?;
    Ok(bytes)
}

/// Renders and writes the cells of one patient, spread over `threads` threads.
/// Each cell's seed depends only on the patient seed and its index.
fn render_patient(plan: &Plan, dir: &Path, size: u32, threads: usize) -> Result<()> {
    let work = |start: usize| -> Result<()> {
        for k in (start..plan.cells.len()).step_by(threads) {
            let img = plan.render(k, size)?;
            let path = dir.join(format!("image_{k}.tif"));
            let bytes = encode_tiff(&img, &path)?;
            write_replacing(&path, &bytes)?;
        }
        Ok(())
    };
    if threads <= 1 {
        return work(0);
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|t| scope.spawn(move || work(t))).collect();
        let mut first_err = None;
        for h in handles {
            let r = h
                .join()
                .unwrap_or_else(|_| Err(Error::Mismatch("a rendering thread panicked".into())));
            if let (Err(e), None) = (r, &first_err) {
                first_err = Some(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    })
}

/// Generates a cohort into `out` (created if missing; refused if it exists
/// and is not empty). `progress(done, total)` is called on the calling thread
/// after each patient, counted in patients.
///
/// Every file is written atomically, and `metadata.csv` last (after
/// `cells.csv`): a cohort cut short by an error or a kill has no
/// `metadata.csv`, so no reader takes it for a data set.
pub fn generate_cohort(
    cfg: &CohortConfig,
    out: &Path,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CohortSummary> {
    cfg.validate()?;
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::invalid(
                "out",
                format!("{} exists and is not a directory", out.display()),
            ));
        }
        let mut entries = std::fs::read_dir(out).map_err(|e| Error::io("cannot list", out, e))?;
        if entries.next().is_some() {
            return Err(Error::invalid(
                "out",
                format!(
                    "{} exists and is not empty; choose a new directory or empty it",
                    out.display()
                ),
            ));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;

    let plans = plan_cohort(cfg);
    let threads = thread_count(cfg);
    let total = plans.len();
    let mut patients = Vec::with_capacity(total);
    let mut cells_csv = String::from("patient_id,image,cell_type,annotated\n");
    let mut n_annotated = 0;
    for (j, plan) in plans.into_iter().enumerate() {
        let dir = out
            .join("data")
            .join(plan.record.bag_label)
            .join(&plan.record.patient_id);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        render_patient(&plan, &dir, cfg.image_size, threads)?;
        for (k, (t, a)) in plan.cells.iter().zip(&plan.annotated).enumerate() {
            cells_csv.push_str(&format!(
                "{},image_{k}.tif,{},{}\n",
                plan.record.patient_id,
                t.name(),
                u8::from(*a)
            ));
            n_annotated += usize::from(*a);
        }
        patients.push(plan.record);
        progress(j + 1, total);
    }

    let mut meta = String::from("patient_id,bag_label,abnormal_fraction,n_cells\n");
    for p in &patients {
        meta.push_str(&format!(
            "{},{},{:.4},{}\n",
            p.patient_id, p.bag_label, p.abnormal_fraction, p.n_cells
        ));
    }
    write_atomic(&out.join("cells.csv"), cells_csv.as_bytes())?;
    write_atomic(&out.join("metadata.csv"), meta.as_bytes())?;
    let n_cells = patients.iter().map(|p| p.n_cells).sum();
    Ok(CohortSummary {
        out: out.to_path_buf(),
        patients,
        n_cells,
        n_annotated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty scratch directory under the system temp dir.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("amlmil-synth-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn tiny(seed: u64) -> CohortConfig {
        CohortConfig {
            patients_per_class: 1,
            cells_min: 3,
            cells_max: 6,
            image_size: 64,
            annotated_fraction: 0.5,
            seed,
            threads: 2,
            ..CohortConfig::default()
        }
    }

    fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push((
                        p.strip_prefix(dir).unwrap().to_path_buf(),
                        std::fs::read(&p).unwrap(),
                    ));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn layout_is_complete_and_consistent() {
        let dir = scratch("layout");
        let mut calls = Vec::new();
        let sum = generate_cohort(&tiny(5), &dir, &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!(sum.patients.len(), 5);
        assert_eq!(calls.last(), Some(&(5, 5)));

        let meta = std::fs::read_to_string(dir.join("metadata.csv")).unwrap();
        let mut lines = meta.lines();
        assert_eq!(
            lines.next(),
            Some("patient_id,bag_label,abnormal_fraction,n_cells")
        );
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
        assert_eq!(rows.len(), 5);
        let mut labels: Vec<&str> = rows.iter().map(|r| r[1]).collect();
        labels.sort();
        let mut want = BAG_LABELS.to_vec();
        want.sort();
        assert_eq!(labels, want);

        let cells = std::fs::read_to_string(dir.join("cells.csv")).unwrap();
        let mut clines = cells.lines();
        assert_eq!(clines.next(), Some("patient_id,image,cell_type,annotated"));
        let crow: Vec<Vec<&str>> = clines.map(|l| l.split(',').collect()).collect();
        assert_eq!(crow.len(), sum.n_cells);

        let mut n_images = 0;
        for r in &rows {
            let n: usize = r[3].parse().unwrap();
            let pdir = dir.join("data").join(r[1]).join(r[0]);
            let files = std::fs::read_dir(&pdir).unwrap().count();
            assert_eq!(files, n, "{}", pdir.display());
            for k in 0..n {
                let img = crate::cell_image::CellImage::open(&pdir.join(format!("image_{k}.tif")))
                    .unwrap();
                assert_eq!(img.width(), 64);
            }
            n_images += n;
            let abn = crow
                .iter()
                .filter(|c| c[0] == r[0] && c[2].parse::<CellType>().unwrap().is_abnormal())
                .count();
            if r[1] == "control" {
                assert_eq!(abn, 0);
                assert_eq!(r[2], "0.0000");
            } else {
                assert!(abn >= 1, "{r:?}");
            }
        }
        assert_eq!(n_images, crow.len());
        for c in &crow {
            assert!(dir
                .join("data")
                .join(rows.iter().find(|r| r[0] == c[0]).unwrap()[1])
                .join(c[0])
                .join(c[1])
                .is_file());
            assert!(c[3] == "0" || c[3] == "1");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn same_seed_gives_identical_files_whatever_the_thread_count() {
        let (a, b, c) = (scratch("det-a"), scratch("det-b"), scratch("det-c"));
        generate_cohort(&tiny(11), &a, &mut |_, _| {}).unwrap();
        generate_cohort(
            &CohortConfig {
                threads: 1,
                ..tiny(11)
            },
            &b,
            &mut |_, _| {},
        )
        .unwrap();
        generate_cohort(&tiny(12), &c, &mut |_, _| {}).unwrap();
        let (ta, tb, tc) = (read_tree(&a), read_tree(&b), read_tree(&c));
        assert_eq!(ta, tb);
        assert_ne!(ta, tc);
        for d in [a, b, c] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    /// SHA-256 (hex) over `(path, length, bytes)` of every file in `tree`.
    fn tree_sha256(tree: &[(PathBuf, Vec<u8>)]) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (p, bytes) in tree {
            h.update(p.to_string_lossy().as_bytes());
            h.update([0]);
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// SHA-256 of the cohort written by [`pinned_cohort_config`].
    const PINNED_COHORT_SHA256: &str =
        "8c7accd6be5f2b3fc7980dc557f3725bc674c93907cc82a69bf6486923e6e4e9";

    /// SHA-256 of the RGB bytes of 24 direct renders of each type (64 px, seeds
    /// and stains fixed), as (type name, hash) in the order of [`CellType::ALL`].
    const PINNED_TYPE_SHA256: [(&str, &str); 14] = [
        (
            "segmented_neutrophil",
            "eff011538c76d3e65e28fe8003eaac0aeabab4d4e42f62d7615de70a2e35c47f",
        ),
        (
            "band_neutrophil",
            "333747d97c823ae5c330f246587bec8b5d677b77cdbdd4d708e1e27baa93e9e3",
        ),
        (
            "lymphocyte",
            "f8f6668dfb6d3d1a1627e8009cc79f0b37a81b4b4ffa2b5f160103411fa1268f",
        ),
        (
            "monocyte",
            "e5c7d6f0bf0dde0244ad315dd2ab277f8c77930ddfdfdbebebf5754f70d34a8d",
        ),
        (
            "eosinophil",
            "2558499962d29317e709e3c392dc90f2ce09417cd451a3979afdd81a8ed7e173",
        ),
        (
            "basophil",
            "0ee29eaa031f01e55d267942bdcbf24fa69720935812971c732061af61eacb73",
        ),
        (
            "myelocyte",
            "89f210f0bb6626ab88627cff9dec310548212c69e387544cd683b83c7804829a",
        ),
        (
            "metamyelocyte",
            "3d5b8d466d6091c607909db8d61ecc80526100e300e36e639f2034b27cf976f4",
        ),
        (
            "abnormal_promyelocyte",
            "6cfda78ffda5bc9dce5d802197e23f0b397f297f412bf6e512766e1db01cb6c5",
        ),
        (
            "faggot_cell",
            "9c5eaaa79bb7f7b8834b8cbbaee01e22ed3fb2ede4a945e8f6004e1deff4e22f",
        ),
        (
            "npm1_blast",
            "0ef34fb1d4f82e729665661838125e189398115981a254f72d3b9e4f28f474ea",
        ),
        (
            "myelomonocytic_blast",
            "d50e0e9fd5587f6c3ef8211b6e3b4264e09331637f8dc3f03fefccb5cc79b45c",
        ),
        (
            "abnormal_eosinophil",
            "972974bca3c35a22ecdd129234803fe4cf22dec988c6def0546a11c65f336bdb",
        ),
        (
            "runx1_blast",
            "ec7bbba617fd49985a047a1f15a2888d8f9fe59dda721956d39f676f38be591b",
        ),
    ];

    fn pinned_cohort_config() -> CohortConfig {
        CohortConfig {
            patients_per_class: 2,
            cells_min: 12,
            cells_max: 20,
            image_size: 64,
            annotated_fraction: 0.5,
            seed: 2024,
            threads: 2,
            ..CohortConfig::default()
        }
    }

    /// Pins the generator's output: the same seed must keep giving the same
    /// bytes (images, `metadata.csv`, `cells.csv`) across refactors of the
    /// renderer. A small cohort need not hold every type, so each type is also
    /// rendered directly, with enough seeds to take its random branches (lobe
    /// counts, optional rods, rod bundles). A change that means to alter the
    /// images updates these constants, and says so. The hashes were taken on
    /// x86_64 Linux; a platform whose `sin`/`exp` round differently may differ.
    #[test]
    fn pinned_seed_gives_pinned_bytes() {
        let dir = scratch("pinned");
        generate_cohort(&pinned_cohort_config(), &dir, &mut |_, _| {}).unwrap();
        let cohort = tree_sha256(&read_tree(&dir));
        std::fs::remove_dir_all(&dir).unwrap();

        let mut changed = Vec::new();
        for (k, (t, (name, want))) in CellType::ALL
            .into_iter()
            .zip(PINNED_TYPE_SHA256)
            .enumerate()
        {
            assert_eq!(t.name(), name);
            let renders: Vec<(PathBuf, Vec<u8>)> = (0..24u64)
                .map(|i| {
                    let stain = Stain::from_seed(mix_seed(77, k as u64, i));
                    let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(78, k as u64, i));
                    let img = render_cell(t, 64, &stain, &mut rng).unwrap();
                    (PathBuf::from(format!("{t}/{i}")), img.rgb().to_vec())
                })
                .collect();
            let got = tree_sha256(&renders);
            if got != want {
                changed.push(format!("{t}: {got}"));
            }
        }
        assert!(changed.is_empty(), "renders changed: {changed:#?}");
        assert_eq!(cohort, PINNED_COHORT_SHA256, "cohort bytes changed");
    }

    #[test]
    fn non_empty_output_and_bad_config_are_refused() {
        let dir = scratch("nonempty");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x"), b"x").unwrap();
        let e = generate_cohort(&tiny(1), &dir, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref arg, .. } if arg == "out"),
            "{e}"
        );
        assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();

        let bad = CohortConfig {
            patients_per_class: 0,
            ..tiny(1)
        };
        let dir = scratch("bad");
        let e = generate_cohort(&bad, &dir, &mut |_, _| {}).unwrap_err();
        assert!(
            matches!(e, Error::InvalidArgument { ref arg, .. } if arg == "patients_per_class"),
            "{e}"
        );
        assert!(!dir.exists(), "nothing is created for an invalid config");
    }

    #[test]
    fn controls_have_no_abnormal_cells_and_fraction_is_respected() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        assert!(draw_patient_cells("control", 200, 0.5, &mut rng)
            .iter()
            .all(|t| !t.is_abnormal()));
        let cells = draw_patient_cells("NPM1", 200, 0.25, &mut rng);
        assert_eq!(cells.iter().filter(|t| t.is_abnormal()).count(), 50);
        assert!(cells
            .iter()
            .filter(|t| t.is_abnormal())
            .all(|t| *t == CellType::Npm1Blast));
    }
}
