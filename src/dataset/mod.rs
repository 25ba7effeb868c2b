//! The dataset layer: a cohort of patients, each a *bag* of single white-cell
//! images on disk, with one genetic AML label per patient.
//!
//! It reads the layout of the public AML single-cell data set and of SCEMILA
//! (Hehr et al. 2023), as fixed in DESIGN §3, so real data drops in unchanged:
//!
//! ```text
//! ROOT/metadata.csv                          patient_id, bag_label, [extra columns…]
//! ROOT/data/<bag_label>/<patient_id>/image_<k>.tif   (.tiff, .png, .jpg, .jpeg too)
//! ROOT/cells.csv                  optional: patient_id, image, cell_type, [annotated]
//! ```
//!
//! * Columns are found by name, in any order; extra metadata columns are kept
//!   per patient ([`Patient::metadata`]).
//! * `bag_label` must be one of [`BAG_LABELS`]; a patient's class index is its
//!   position there, never the order in which labels appear in the files.
//! * Images of a patient are ordered by the number `k` of `image_<k>.*`, then
//!   other names by name. Hidden files (`.*`, e.g. macOS `._image_1.tif`) and
//!   other extensions (SCEMILA keeps `.npy` feature files beside the images)
//!   are ignored.
//! * `cells.csv` gives per-cell types (used only for analysis: attention vs.
//!   cell type). `image` is the file name inside the patient's folder (a path
//!   is accepted; only its last component is used). `annotated` (`0`/`1`)
//!   marks expert-labelled cells; without that column a cell counts as
//!   annotated when its `cell_type` is non-empty.
//!
//! [`Dataset::open`] validates the layout. Each problem becomes an [`Issue`]
//! (path + reason); with [`OnError::Fail`] the first problem of
//! [`Severity::Error`] aborts with [`Error::Dataset`], with [`OnError::Skip`]
//! the offending patient, image or row is left out and the issues are
//! returned. Images are decoded only on request ([`Dataset::check_images`] or
//! [`OpenOptions::check_images`]), as that reads every file.
//!
//! Cross-validation splits live in [`folds`](stratified_folds); the per-class
//! overview for `amlmil dataset check DIR` is [`Dataset::summary`].
//!
//! This file holds the cohort's types, [`Dataset::open`] and the image check;
//! the issue types are in `issues.rs`, the folder scan and `metadata.csv`
//! reader in `scan.rs`, the `cells.csv` reader in `cell_types.rs`.
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::cell_image::CellImage;
#[cfg(doc)]
use crate::classes::BAG_LABELS;
use crate::error::{Error, Result};

mod cell_types;
mod folds;
mod issues;
mod scan;
mod summary;
mod tables;

pub use folds::{stratified_chunks, stratified_folds, FoldSplit, DEFAULT_FOLDS};
pub use issues::{Issue, IssueKind, Severity};
pub use summary::{ClassSummary, DatasetSummary};

use issues::{dataset_error, reason_of, Issues};
use scan::{list_images, read_patients, scan_patient_folders, Listed};
use tables::Table;

/// Name of the per-patient label table under the root.
pub const METADATA_FILE: &str = "metadata.csv";
/// Name of the optional per-cell annotation table under the root.
pub const CELLS_FILE: &str = "cells.csv";
/// Folder under the root that holds `<bag_label>/<patient_id>/` image folders.
pub const DATA_DIR: &str = "data";
/// File extensions taken as cell images (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["tif", "tiff", "png", "jpg", "jpeg"];

/// What [`Dataset::open`] does with a problem of [`Severity::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop at the first problem with [`Error::Dataset`] naming its path.
    /// The default: silently training on a different cohort than intended is worse
    /// than stopping.
    #[default]
    Fail,
    /// Leave out the patient, image or row concerned and report it as an [`Issue`].
    Skip,
}

/// Options of [`Dataset::open`].
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Fail on the first problem or skip what is broken.
    pub on_error: OnError,
    /// Also decode every image while opening (slow: reads every file); unreadable
    /// images are then problems like any other and, when skipped, left out.
    pub check_images: bool,
}

impl OpenOptions {
    /// Options that stop at the first problem.
    pub fn fail() -> Self {
        OpenOptions {
            on_error: OnError::Fail,
            check_images: false,
        }
    }

    /// Options that skip broken patients, images and rows and report them.
    pub fn skip() -> Self {
        OpenOptions {
            on_error: OnError::Skip,
            check_images: false,
        }
    }

    /// The same options with image decoding switched on or off.
    pub fn with_image_check(mut self, check_images: bool) -> Self {
        self.check_images = check_images;
        self
    }
}

/// One single-cell image of a patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellRecord {
    /// Stable cell id: the position (from 0) of this file in the patient folder's
    /// image files sorted as described in the module docs. It does not change when
    /// other cells are left out as unreadable, so ids may have gaps; it changes
    /// only when image files are added to or removed from the folder.
    pub id: u64,
    /// Full path of the image file.
    pub path: PathBuf,
    /// Cell type from `cells.csv`, if the cell is listed there with a type.
    pub cell_type: Option<String>,
    /// Whether an expert labelled this cell (`cells.csv`'s `annotated`).
    pub annotated: bool,
}

impl CellRecord {
    /// Reads and decodes this cell as 8-bit RGB (alpha dropped, greyscale and
    /// 16-bit converted by [`CellImage`]).
    pub fn load(&self) -> Result<CellImage> {
        CellImage::open(&self.path)
    }

    /// The image's file name (lossy for names that are not UTF-8).
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    }
}

/// One patient: a bag of cells with its genetic label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patient {
    /// `patient_id` from `metadata.csv` (also the folder name).
    pub id: String,
    /// `bag_label` from `metadata.csv`, one of [`BAG_LABELS`].
    pub bag_label: String,
    /// Position of `bag_label` in [`BAG_LABELS`].
    pub class_index: usize,
    /// The folder `ROOT/data/<bag_label>/<patient_id>`.
    pub dir: PathBuf,
    /// The cells in id order (never empty in an opened dataset).
    pub cells: Vec<CellRecord>,
    /// The other `metadata.csv` columns of this patient, in header order.
    pub metadata: Vec<(String, String)>,
}

impl Patient {
    /// Number of cells in the bag.
    pub fn num_cells(&self) -> usize {
        self.cells.len()
    }

    /// The cell with id `id`, if present.
    pub fn cell(&self, id: u64) -> Option<&CellRecord> {
        self.cells
            .binary_search_by_key(&id, |c| c.id)
            .ok()
            .map(|i| &self.cells[i])
    }

    /// Loads the cell with id `id`.
    pub fn load_cell(&self, id: u64) -> Result<CellImage> {
        self.cell(id)
            .ok_or_else(|| {
                Error::invalid(
                    "cell_id",
                    format!("patient `{}` has no cell with id {id}", self.id),
                )
            })?
            .load()
    }

    /// Loads the whole bag as `(cell id, image)` pairs; fails on the first
    /// unreadable image, naming its file.
    pub fn load_cells(&self) -> Result<Vec<(u64, CellImage)>> {
        self.iter_cells().collect()
    }

    /// Loads the bag lazily, one cell per item, for bags too large to hold decoded.
    pub fn iter_cells(&self) -> impl Iterator<Item = Result<(u64, CellImage)>> + '_ {
        self.cells.iter().map(|c| Ok((c.id, c.load()?)))
    }

    /// Value of an extra `metadata.csv` column for this patient.
    pub fn metadata_value(&self, column: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(name, _)| name == column)
            .map(|(_, value)| value.as_str())
    }
}

/// A validated cohort on disk.
#[derive(Debug, Clone)]
pub struct Dataset {
    root: PathBuf,
    /// Sorted by (class index, patient id), so that everything derived from this
    /// order (folds above all) does not depend on the row order of `metadata.csv`.
    patients: Vec<Patient>,
    has_cell_types: bool,
}

impl Dataset {
    /// Opens and validates the dataset at `root` (see the module docs for the
    /// layout). Returns the usable cohort and every issue found (warnings too).
    ///
    /// Fails regardless of [`OpenOptions::on_error`] when `root`, `metadata.csv`,
    /// its `patient_id`/`bag_label` columns or the `data/` folder are missing, or
    /// when no usable patient is left.
    pub fn open(root: impl AsRef<Path>, options: &OpenOptions) -> Result<(Dataset, Vec<Issue>)> {
        let root = root.as_ref();
        if !root.is_dir() {
            let reason = if root.exists() {
                "is not a folder"
            } else {
                "does not exist"
            };
            return Err(dataset_error(root, reason));
        }
        let metadata_path = root.join(METADATA_FILE);
        if !metadata_path.is_file() {
            return Err(dataset_error(
                &metadata_path,
                "missing: every dataset needs a metadata.csv with the columns `patient_id` and `bag_label`",
            ));
        }
        let metadata = Table::read(&metadata_path, &["patient_id", "bag_label"])?;
        let data_dir = root.join(DATA_DIR);
        if !data_dir.is_dir() {
            return Err(dataset_error(
                &data_dir,
                "missing: images belong in data/<bag_label>/<patient_id>/",
            ));
        }

        let mut issues = Issues::new(options.on_error);
        let folders = scan_patient_folders(&data_dir, &mut issues)?;
        let Listed {
            mut patients,
            dropped,
            claimed,
        } = read_patients(&metadata, &data_dir, &folders, &mut issues)?;
        for ((label, id), dir) in &folders {
            if !claimed.contains(&(label.clone(), id.clone())) {
                let images = list_images(dir).map_or(0, |l| l.len());
                issues.report(
                    Severity::Warning,
                    IssueKind::UnlistedPatientFolder,
                    dir,
                    format!("{images} image file(s) of a patient that {METADATA_FILE} does not list; ignored"),
                )?;
            }
        }
        patients.sort_by(|a, b| (a.class_index, &a.id).cmp(&(b.class_index, &b.id)));

        let mut dataset = Dataset {
            root: root.to_owned(),
            patients,
            has_cell_types: false,
        };
        let cells_path = root.join(CELLS_FILE);
        if cells_path.is_file() {
            dataset.has_cell_types =
                dataset.attach_cell_types(&cells_path, &dropped, &mut issues)?;
        }
        if options.check_images {
            dataset.drop_unreadable(&mut issues)?;
        }
        if dataset.patients.is_empty() {
            let first = issues
                .list
                .iter()
                .find(|i| i.severity == Severity::Error)
                .map_or_else(String::new, |i| format!("; first problem: {i}"));
            return Err(dataset_error(
                root,
                format!(
                    "no usable patient ({} issue(s) reported){first}",
                    issues.list.len()
                ),
            ));
        }
        Ok((dataset, issues.list))
    }

    /// The dataset's root folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The patients, sorted by class index and then patient id.
    pub fn patients(&self) -> &[Patient] {
        &self.patients
    }

    /// The patient with `patient_id` `id`.
    pub fn patient(&self, id: &str) -> Option<&Patient> {
        self.patients.iter().find(|p| p.id == id)
    }

    /// The same data set with only the patients `ids` (in this data set's
    /// order); an id it does not hold is an error naming it.
    pub fn only_patients(&self, ids: &[String]) -> Result<Dataset> {
        let wanted: std::collections::BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        if let Some(missing) = wanted.iter().find(|id| self.patient(id).is_none()) {
            return Err(Error::Dataset {
                path: self.root.clone(),
                reason: format!("no patient `{missing}` in metadata.csv"),
            });
        }
        Ok(Dataset {
            root: self.root.clone(),
            patients: self
                .patients
                .iter()
                .filter(|p| wanted.contains(p.id.as_str()))
                .cloned()
                .collect(),
            has_cell_types: self.has_cell_types,
        })
    }

    /// Class index of every patient, index-aligned with [`Dataset::patients`].
    pub fn labels(&self) -> Vec<usize> {
        self.patients.iter().map(|p| p.class_index).collect()
    }

    /// Total number of cells over all patients.
    pub fn num_cells(&self) -> usize {
        self.patients.iter().map(Patient::num_cells).sum()
    }

    /// Whether a usable `cells.csv` was read.
    pub fn has_cell_types(&self) -> bool {
        self.has_cell_types
    }

    /// Stratified `k`-fold splits of the patients (indices into
    /// [`Dataset::patients`]); see [`stratified_folds`].
    pub fn folds(&self, k: usize, seed: u64) -> Result<Vec<FoldSplit>> {
        stratified_folds(&self.labels(), k, seed)
    }

    /// Decodes every image and reports each that cannot be read or decoded
    /// (zero bytes, truncated, not an image) as an [`IssueKind::UnreadableImage`]
    /// error with its path. Uses all cores; the dataset is not changed.
    pub fn check_images(&self) -> Vec<Issue> {
        self.find_unreadable()
            .into_iter()
            .map(|(p, c, reason)| Issue {
                severity: Severity::Error,
                kind: IssueKind::UnreadableImage,
                path: self.patients[p].cells[c].path.clone(),
                reason,
            })
            .collect()
    }

    /// Per-class patient and cell counts.
    pub fn summary(&self) -> DatasetSummary {
        DatasetSummary::of(self)
    }

    /// Decodes every image, reports the unreadable ones and leaves them out
    /// (and any patient left without cells).
    fn drop_unreadable(&mut self, issues: &mut Issues) -> Result<()> {
        let bad = self.find_unreadable();
        let mut remove: HashSet<(usize, usize)> = HashSet::new();
        for (p, c, reason) in bad {
            let path = &self.patients[p].cells[c].path;
            issues.report(Severity::Error, IssueKind::UnreadableImage, path, reason)?;
            remove.insert((p, c));
        }
        if remove.is_empty() {
            return Ok(());
        }
        for (p, patient) in self.patients.iter_mut().enumerate() {
            let mut c = 0;
            patient.cells.retain(|_| {
                c += 1;
                !remove.contains(&(p, c - 1))
            });
        }
        let mut kept = Vec::with_capacity(self.patients.len());
        for patient in std::mem::take(&mut self.patients) {
            if patient.cells.is_empty() {
                issues.report(
                    Severity::Error,
                    IssueKind::EmptyPatientFolder,
                    &patient.dir,
                    format!("patient `{}` has no readable image; left out", patient.id),
                )?;
            } else {
                kept.push(patient);
            }
        }
        self.patients = kept;
        Ok(())
    }

    /// `(patient position, cell position, reason)` of every image that does not
    /// decode, in dataset order. Decoding is spread over the available cores.
    fn find_unreadable(&self) -> Vec<(usize, usize, String)> {
        let jobs: Vec<(usize, usize, &Path)> = self
            .patients
            .iter()
            .enumerate()
            .flat_map(|(p, patient)| {
                patient
                    .cells
                    .iter()
                    .enumerate()
                    .map(move |(c, cell)| (p, c, cell.path.as_path()))
            })
            .collect();
        if jobs.is_empty() {
            return Vec::new();
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, usize::from)
            .min(jobs.len());
        let per_thread = jobs.len().div_ceil(threads);
        let check = |&(p, c, path): &(usize, usize, &Path)| {
            // A decoder bug on one crafted file must not take the whole check down.
            match std::panic::catch_unwind(|| CellImage::open(path)) {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some((p, c, reason_of(&e))),
                Err(_) => Some((p, c, "the image decoder panicked on this file".to_owned())),
            }
        };
        std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .chunks(per_thread)
                .map(|chunk| {
                    scope.spawn(move || chunk.iter().filter_map(check).collect::<Vec<_>>())
                })
                .collect();
            handles
                .into_iter()
                .zip(jobs.chunks(per_thread))
                .flat_map(|(handle, chunk)| {
                    // Panics are caught per image above; a failed join is still reported, not lost.
                    handle.join().unwrap_or_else(|_| {
                        chunk
                            .iter()
                            .map(|&(p, c, _)| (p, c, "image check thread failed".to_owned()))
                            .collect()
                    })
                })
                .collect()
        })
    }
}
