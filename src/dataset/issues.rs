//! The problems [`Dataset::open`] reports: their
//! [`Severity`], [`IssueKind`] and the [`Issue`] itself, and the collector that
//! records them or, under [`OnError::Fail`], turns the first error into
//! [`Error::Dataset`].
use std::fmt;
use std::path::{Path, PathBuf};

#[cfg(doc)]
use super::Dataset;
use super::OnError;
#[cfg(doc)]
use crate::classes::BAG_LABELS;
use crate::error::{Error, Result};

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

/// Collects issues and decides, per [`OnError`], whether one ends the open.
pub(super) struct Issues {
    pub(super) on_error: OnError,
    pub(super) list: Vec<Issue>,
}

impl Issues {
    pub(super) fn new(on_error: OnError) -> Self {
        Issues {
            on_error,
            list: Vec::new(),
        }
    }

    /// Records an issue, or turns it into [`Error::Dataset`] when it is an error
    /// and the caller asked to fail.
    pub(super) fn report(
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

/// The reason part of an error whose path an [`Issue`] already carries.
pub(super) fn reason_of(e: &Error) -> String {
    match e {
        Error::Dataset { reason, .. } | Error::Decode { reason, .. } => reason.clone(),
        Error::Io { op, source, .. } => format!("{op}: {source}"),
        other => other.to_string(),
    }
}

pub(super) fn dataset_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Dataset {
        path: path.to_owned(),
        reason: reason.into(),
    }
}
