//! Reading the layout: the patient folders under `data/`, the rows of
//! `metadata.csv` turned into [`Patient`]s with their image files, and the
//! order of those files (which fixes the cell ids).
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::issues::Issues;
use super::tables::{quote_list, Table};
use super::{CellRecord, IssueKind, Patient, Severity, DATA_DIR, IMAGE_EXTENSIONS, METADATA_FILE};
use crate::classes::{class_index, BAG_LABELS};
use crate::error::{Error, Result};

/// Patient folders on disk: `(label folder, patient folder) → path`, for names
/// that are UTF-8 (others cannot match `metadata.csv` and are reported).
pub(super) type Folders = BTreeMap<(String, String), PathBuf>;

pub(super) fn scan_patient_folders(data_dir: &Path, issues: &mut Issues) -> Result<Folders> {
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
pub(super) fn list_images(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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
pub(super) struct Listed {
    /// Usable patients in `metadata.csv` order.
    pub(super) patients: Vec<Patient>,
    /// Ids of listed patients that were left out.
    pub(super) dropped: HashSet<String>,
    /// Folders some `metadata.csv` row refers to.
    pub(super) claimed: HashSet<(String, String)>,
}

/// Turns the rows of `metadata.csv` into patients with their cell lists.
pub(super) fn read_patients(
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
