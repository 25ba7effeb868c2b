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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::cell_image::CellImage;
use crate::classes::{class_index, BAG_LABELS};
use crate::error::{Error, Result};

mod folds;
mod summary;
mod tables;

pub use folds::{stratified_chunks, stratified_folds, FoldSplit, DEFAULT_FOLDS};
pub use summary::{ClassSummary, DatasetSummary};

use tables::{quote_list, Table};

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

/// How serious an [`Issue`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Something is ignored that is probably a mistake, but nothing was left out
    /// of the cohort (e.g. a patient folder that `metadata.csv` does not list).
    /// Never fails [`Dataset::open`].
    Warning,
    /// A patient, image or annotation is broken; it is left out under
    /// [`OnError::Skip`] and fails the open under [`OnError::Fail`].
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// What kind of problem an [`Issue`] is, for callers that group or filter them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    /// A `metadata.csv` row is unreadable, lacks a field, or its `patient_id`
    /// cannot be a folder name.
    BadMetadataRow,
    /// A `bag_label` that is not one of [`BAG_LABELS`].
    UnknownBagLabel,
    /// A `patient_id` listed a second time.
    DuplicatePatient,
    /// No folder `data/<bag_label>/<patient_id>/` for a listed patient.
    MissingPatientFolder,
    /// A patient folder without any image file.
    EmptyPatientFolder,
    /// A folder could not be listed.
    UnreadableFolder,
    /// A patient folder under `data/` that `metadata.csv` does not list (warning).
    UnlistedPatientFolder,
    /// A file or folder name that is not valid UTF-8 (shown lossily).
    NonUtf8Path,
    /// `cells.csv` exists but cannot be used at all (e.g. missing columns).
    BadCellsFile,
    /// A `cells.csv` row is unreadable, incomplete, repeated or has a bad `annotated`.
    BadCellRow,
    /// A `cells.csv` row for a patient that `metadata.csv` does not list.
    UnknownCellPatient,
    /// A `cells.csv` row naming an image that is not in the patient's folder.
    MissingCellImage,
    /// An image file that cannot be read or decoded (zero bytes, corrupt, …).
    UnreadableImage,
}

/// One problem found in a dataset: which file, what is wrong, how serious.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Issue {
    pub severity: Severity,
    pub kind: IssueKind,
    /// The file or folder concerned (a CSV file for row problems).
    pub path: PathBuf,
    /// What is wrong; row problems start with `line N:`.
    pub reason: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.severity,
            self.path.display(),
            self.reason
        )
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

    /// Reads `cells.csv` into the cells' `cell_type`/`annotated`. Returns whether
    /// the file could be used at all.
    fn attach_cell_types(
        &mut self,
        path: &Path,
        dropped: &HashSet<String>,
        issues: &mut Issues,
    ) -> Result<bool> {
        let table = match Table::read(path, &["patient_id", "image", "cell_type"]) {
            Ok(t) => t,
            Err(e) if issues.on_error == OnError::Skip => {
                issues.report(
                    Severity::Error,
                    IssueKind::BadCellsFile,
                    path,
                    reason_of(&e),
                )?;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        // Required columns are present (checked by `Table::read`); 0 is never used.
        let col = |name| table.column(name);
        let (pid_col, image_col, type_col) = (
            col("patient_id").unwrap_or(0),
            col("image").unwrap_or(0),
            col("cell_type").unwrap_or(0),
        );
        let annotated_col = col("annotated");

        let patient_pos: HashMap<&str, usize> = self
            .patients
            .iter()
            .enumerate()
            .map(|(i, p)| (p.id.as_str(), i))
            .collect();
        // File name → position in the patient's cell list, per patient.
        let cell_pos: Vec<HashMap<OsString, usize>> = self
            .patients
            .iter()
            .map(|p| {
                p.cells
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| c.path.file_name().map(|n| (n.to_owned(), i)))
                    .collect()
            })
            .collect();
        let mut seen: HashMap<(usize, usize), u64> = HashMap::new();
        let mut updates = Vec::new();

        for row in &table.rows {
            let row = match row {
                Ok(r) => r,
                Err(bad) => {
                    let reason = format!("line {}: {}", bad.line, bad.reason);
                    issues.report(Severity::Error, IssueKind::BadCellRow, path, reason)?;
                    continue;
                }
            };
            let line = row.line;
            let (pid, image) = match (row.get(pid_col), row.get(image_col)) {
                (Some(p), Some(i)) if !p.is_empty() && !i.is_empty() => (p, i),
                _ => {
                    let reason = format!("line {line}: empty `patient_id` or `image`");
                    issues.report(Severity::Error, IssueKind::BadCellRow, path, reason)?;
                    continue;
                }
            };
            let Some(&p) = patient_pos.get(pid) else {
                // Rows of a patient left out earlier would only repeat that patient's issue.
                if !dropped.contains(pid) {
                    let reason =
                        format!("line {line}: patient `{pid}` is not listed in {METADATA_FILE}");
                    issues.report(Severity::Error, IssueKind::UnknownCellPatient, path, reason)?;
                }
                continue;
            };
            let name = Path::new(image).file_name().unwrap_or(OsStr::new(image));
            let Some(&c) = cell_pos[p].get(name) else {
                let reason = format!(
                    "{CELLS_FILE} line {line} names this image of patient `{pid}`, but the patient's folder has no such image file"
                );
                let missing = self.patients[p].dir.join(name);
                issues.report(
                    Severity::Error,
                    IssueKind::MissingCellImage,
                    &missing,
                    reason,
                )?;
                continue;
            };
            if let Some(first) = seen.get(&(p, c)) {
                let reason = format!(
                    "line {line}: cell `{image}` of patient `{pid}` is already annotated on line {first}"
                );
                issues.report(Severity::Error, IssueKind::BadCellRow, path, reason)?;
                continue;
            }
            let cell_type = row
                .get(type_col)
                .filter(|t| !t.is_empty())
                .map(str::to_owned);
            let annotated = match annotated_col.map(|i| row.get(i).unwrap_or("")) {
                None | Some("") => cell_type.is_some(),
                Some("1" | "true" | "TRUE" | "True") => true,
                Some("0" | "false" | "FALSE" | "False") => false,
                Some(other) => {
                    let reason = format!("line {line}: `annotated` is `{other}`, expected 0 or 1");
                    issues.report(Severity::Error, IssueKind::BadCellRow, path, reason)?;
                    continue;
                }
            };
            seen.insert((p, c), line);
            updates.push((p, c, cell_type, annotated));
        }
        for (p, c, cell_type, annotated) in updates {
            let cell = &mut self.patients[p].cells[c];
            cell.cell_type = cell_type;
            cell.annotated = annotated;
        }
        Ok(true)
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

/// Collects issues and decides, per [`OnError`], whether one ends the open.
struct Issues {
    on_error: OnError,
    list: Vec<Issue>,
}

impl Issues {
    fn new(on_error: OnError) -> Self {
        Issues {
            on_error,
            list: Vec::new(),
        }
    }

    /// Records an issue, or turns it into [`Error::Dataset`] when it is an error
    /// and the caller asked to fail.
    fn report(
        &mut self,
        severity: Severity,
        kind: IssueKind,
        path: &Path,
        reason: impl Into<String>,
    ) -> Result<()> {
        let reason = reason.into();
        if severity == Severity::Error && self.on_error == OnError::Fail {
            return Err(dataset_error(path, reason));
        }
        self.list.push(Issue {
            severity,
            kind,
            path: path.to_owned(),
            reason,
        });
        Ok(())
    }
}

/// Patient folders on disk: `(label folder, patient folder) → path`, for names
/// that are UTF-8 (others cannot match `metadata.csv` and are reported).
type Folders = BTreeMap<(String, String), PathBuf>;

fn scan_patient_folders(data_dir: &Path, issues: &mut Issues) -> Result<Folders> {
    let mut folders = Folders::new();
    for label_dir in sorted_subdirs(data_dir).map_err(|e| Error::io("cannot list", data_dir, e))? {
        let Some(label) = utf8_name(&label_dir, issues)? else {
            continue;
        };
        let patient_dirs = match sorted_subdirs(&label_dir) {
            Ok(dirs) => dirs,
            Err(e) => {
                issues.report(
                    Severity::Error,
                    IssueKind::UnreadableFolder,
                    &label_dir,
                    format!("cannot list: {e}"),
                )?;
                continue;
            }
        };
        for patient_dir in patient_dirs {
            if let Some(id) = utf8_name(&patient_dir, issues)? {
                folders.insert((label.clone(), id), patient_dir);
            }
        }
    }
    Ok(folders)
}

/// The folder's name as UTF-8, or `None` after reporting a non-UTF-8 name.
fn utf8_name(dir: &Path, issues: &mut Issues) -> Result<Option<String>> {
    match dir.file_name().map(OsStr::to_str) {
        Some(Some(name)) => Ok(Some(name.to_owned())),
        _ => {
            issues.report(
                Severity::Warning,
                IssueKind::NonUtf8Path,
                dir,
                "folder name is not valid UTF-8, so no metadata.csv row can name it; ignored",
            )?;
            Ok(None)
        }
    }
}

/// Sub-folders of `dir` (following symbolic links), skipping hidden ones, sorted.
fn sorted_subdirs(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() && !is_hidden(&path) {
            dirs.push(path);
        }
    }
    dirs.sort();
    Ok(dirs)
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().first() == Some(&b'.'))
}

/// Sort key of an image file: `image_<k>` by `k` first, other names after, by name.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum ImageOrder {
    Numbered(u64, OsString),
    Named(OsString),
}

fn image_order(path: &Path) -> ImageOrder {
    let name = path.file_name().unwrap_or_default().to_owned();
    let number = path
        .file_stem()
        .and_then(OsStr::to_str)
        .and_then(|stem| stem.strip_prefix("image_"))
        .and_then(|k| k.parse::<u64>().ok());
    match number {
        Some(k) => ImageOrder::Numbered(k, name),
        None => ImageOrder::Named(name),
    }
}

/// The image files of a patient folder in cell-id order.
fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_image = path
            .extension()
            .and_then(OsStr::to_str)
            .is_some_and(|ext| IMAGE_EXTENSIONS.iter().any(|e| ext.eq_ignore_ascii_case(e)));
        if is_image && !is_hidden(&path) && path.is_file() {
            images.push(path);
        }
    }
    images.sort_by_cached_key(|p| image_order(p));
    Ok(images)
}

/// What [`read_patients`] found.
struct Listed {
    /// Usable patients in `metadata.csv` order.
    patients: Vec<Patient>,
    /// Ids of listed patients that were left out.
    dropped: HashSet<String>,
    /// Folders some `metadata.csv` row refers to.
    claimed: HashSet<(String, String)>,
}

/// Turns the rows of `metadata.csv` into patients with their cell lists.
fn read_patients(
    metadata: &Table,
    data_dir: &Path,
    folders: &Folders,
    issues: &mut Issues,
) -> Result<Listed> {
    let mut patients = Vec::new();
    let mut dropped = HashSet::new();
    let mut claimed = HashSet::new();
    let path = metadata.path.as_path();
    // Required columns are present (checked by `Table::read`); 0 is never used.
    let pid_col = metadata.column("patient_id").unwrap_or(0);
    let label_col = metadata.column("bag_label").unwrap_or(0);
    let extra_cols: Vec<usize> = (0..metadata.headers.len())
        .filter(|&i| i != pid_col && i != label_col)
        .collect();
    let mut first_line: HashMap<String, u64> = HashMap::new();

    for row in &metadata.rows {
        let row = match row {
            Ok(r) => r,
            Err(bad) => {
                let reason = format!("line {}: {}; row left out", bad.line, bad.reason);
                issues.report(Severity::Error, IssueKind::BadMetadataRow, path, reason)?;
                continue;
            }
        };
        let line = row.line;
        let (Some(id), Some(label)) = (row.get(pid_col), row.get(label_col)) else {
            let reason = format!("line {line}: too few fields for `patient_id` and `bag_label`");
            issues.report(Severity::Error, IssueKind::BadMetadataRow, path, reason)?;
            continue;
        };
        if let Err(why) = check_patient_id(id) {
            let reason = format!("line {line}: patient_id `{id}` {why}");
            issues.report(Severity::Error, IssueKind::BadMetadataRow, path, reason)?;
            continue;
        }
        if let Some(first) = first_line.get(id) {
            let reason = format!("line {line}: patient `{id}` is already listed on line {first}; the later row is left out");
            issues.report(Severity::Error, IssueKind::DuplicatePatient, path, reason)?;
            continue;
        }
        first_line.insert(id.to_owned(), line);
        let key = (label.to_owned(), id.to_owned());
        if folders.contains_key(&key) {
            // Claimed even when the row fails below, so the folder is not also reported as unlisted.
            claimed.insert(key);
        }
        // Once a listed patient is left out, its cells.csv rows are not reported again.
        dropped.insert(id.to_owned());

        let Some(class) = class_index(label) else {
            let reason = format!(
                "line {line}: unknown bag_label `{label}` for patient `{id}`; expected one of {}",
                quote_list(&BAG_LABELS)
            );
            issues.report(Severity::Error, IssueKind::UnknownBagLabel, path, reason)?;
            continue;
        };
        let dir = data_dir.join(label).join(id);
        if !dir.is_dir() {
            let elsewhere: Vec<String> = folders
                .keys()
                .filter(|(l, p)| p == id && l != label)
                .map(|(l, p)| format!("{DATA_DIR}/{l}/{p}"))
                .collect();
            let hint = if elsewhere.is_empty() {
                String::new()
            } else {
                format!(
                    " (found {} instead: does bag_label match the folder?)",
                    elsewhere.join(", ")
                )
            };
            let reason =
                format!("no folder for patient `{id}` listed on {METADATA_FILE} line {line}{hint}");
            issues.report(
                Severity::Error,
                IssueKind::MissingPatientFolder,
                &dir,
                reason,
            )?;
            continue;
        }
        let files = match list_images(&dir) {
            Ok(files) => files,
            Err(e) => {
                issues.report(
                    Severity::Error,
                    IssueKind::UnreadableFolder,
                    &dir,
                    format!("cannot list: {e}"),
                )?;
                continue;
            }
        };
        let mut cells = Vec::with_capacity(files.len());
        for (id_in_bag, file) in (0u64..).zip(files) {
            if file.file_name().and_then(OsStr::to_str).is_none() {
                issues.report(
                    Severity::Error,
                    IssueKind::NonUtf8Path,
                    &file,
                    "image file name is not valid UTF-8 and could not be named in reports or cells.csv; left out",
                )?;
                continue;
            }
            cells.push(CellRecord {
                id: id_in_bag,
                path: file,
                cell_type: None,
                annotated: false,
            });
        }
        if cells.is_empty() {
            let reason = format!(
                "patient `{id}` has no image file ({}); left out",
                IMAGE_EXTENSIONS.join(", ")
            );
            issues.report(Severity::Error, IssueKind::EmptyPatientFolder, &dir, reason)?;
            continue;
        }
        let metadata = extra_cols
            .iter()
            .map(|&i| {
                let value = row.get(i).unwrap_or_default().to_owned();
                (metadata.headers[i].clone(), value)
            })
            .collect();
        dropped.remove(id);
        patients.push(Patient {
            id: id.to_owned(),
            bag_label: label.to_owned(),
            class_index: class,
            dir,
            cells,
            metadata,
        });
    }
    Ok(Listed {
        patients,
        dropped,
        claimed,
    })
}

/// A patient id names a folder, so it must be exactly one plain path component
/// (this also keeps `../x` from reaching outside the dataset).
fn check_patient_id(id: &str) -> std::result::Result<(), &'static str> {
    if id.is_empty() {
        Err("is empty")
    } else if id == "." || id == ".." || id.contains(['/', '\\', '\0']) {
        Err("cannot be a folder name (no `/`, `\\`, `.` or `..`)")
    } else {
        Ok(())
    }
}

/// The reason part of an error whose path an [`Issue`] already carries.
fn reason_of(e: &Error) -> String {
    match e {
        Error::Dataset { reason, .. } | Error::Decode { reason, .. } => reason.clone(),
        Error::Io { op, source, .. } => format!("{op}: {source}"),
        other => other.to_string(),
    }
}

fn dataset_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests;
