//! `cells.csv`: per-cell types and the expert `annotated` flag, attached to
//! the cells of an opened cohort.
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::path::Path;

use super::issues::{reason_of, Issues};
use super::tables::Table;
use super::{Dataset, IssueKind, OnError, Severity, CELLS_FILE, METADATA_FILE};
use crate::error::Result;

impl Dataset {
    /// Reads `cells.csv` into the cells' `cell_type`/`annotated`. Returns whether
    /// the file could be used at all.
    pub(super) fn attach_cell_types(
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
}
