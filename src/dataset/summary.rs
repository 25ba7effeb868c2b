//! Per-class overview of a dataset: patients, cells and bag sizes, as printed by
//! `amlmil dataset check DIR`. Every class of [`BAG_LABELS`] gets a row, in the
//! fixed order, so an absent class is visible rather than silently missing.
use std::fmt;
use std::path::PathBuf;

use super::Dataset;
use crate::classes::BAG_LABELS;

/// Counts for one class.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClassSummary {
    /// The class's `bag_label`.
    pub bag_label: &'static str,
    /// Number of patients (bags).
    pub patients: usize,
    /// Number of cells over those patients.
    pub cells: usize,
    /// Number of those cells labelled by an expert (`cells.csv`).
    pub annotated_cells: usize,
    /// Fewest cells in one patient of the class (`None` without patients).
    pub min_cells: Option<usize>,
    /// Most cells in one patient of the class (`None` without patients).
    pub max_cells: Option<usize>,
}

/// Counts for a whole dataset; see [`Dataset::summary`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DatasetSummary {
    /// The dataset's root folder.
    pub root: PathBuf,
    /// One entry per class of [`BAG_LABELS`], in that order.
    pub classes: Vec<ClassSummary>,
    /// The totals over all classes (`bag_label` is `"total"`).
    pub total: ClassSummary,
    /// Whether `cells.csv` was read.
    pub has_cell_types: bool,
}

impl ClassSummary {
    fn empty(bag_label: &'static str) -> Self {
        ClassSummary {
            bag_label,
            patients: 0,
            cells: 0,
            annotated_cells: 0,
            min_cells: None,
            max_cells: None,
        }
    }

    fn add_patient(&mut self, cells: usize, annotated: usize) {
        self.patients += 1;
        self.cells += cells;
        self.annotated_cells += annotated;
        self.min_cells = Some(self.min_cells.map_or(cells, |m| m.min(cells)));
        self.max_cells = Some(self.max_cells.map_or(cells, |m| m.max(cells)));
    }
}

impl DatasetSummary {
    pub(super) fn of(dataset: &Dataset) -> Self {
        let mut classes: Vec<ClassSummary> =
            BAG_LABELS.iter().map(|l| ClassSummary::empty(l)).collect();
        let mut total = ClassSummary::empty("total");
        for patient in dataset.patients() {
            let cells = patient.num_cells();
            let annotated = patient.cells.iter().filter(|c| c.annotated).count();
            // Class indices come from BAG_LABELS, so this index is always in range.
            if let Some(class) = classes.get_mut(patient.class_index) {
                class.add_patient(cells, annotated);
            }
            total.add_patient(cells, annotated);
        }
        DatasetSummary {
            root: dataset.root().to_owned(),
            classes,
            total,
            has_cell_types: dataset.has_cell_types(),
        }
    }
}

impl fmt::Display for DatasetSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "dataset {}: {} patients, {} cells{}",
            self.root.display(),
            self.total.patients,
            self.total.cells,
            if self.has_cell_types {
                format!(", {} annotated", self.total.annotated_cells)
            } else {
                ", no cells.csv".to_owned()
            }
        )?;
        writeln!(
            f,
            "{:<15} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "class", "patients", "cells", "annotated", "min/bag", "max/bag"
        )?;
        let opt = |v: Option<usize>| v.map_or_else(|| "-".to_owned(), |n| n.to_string());
        for row in self.classes.iter().chain(std::iter::once(&self.total)) {
            writeln!(
                f,
                "{:<15} {:>8} {:>9} {:>9} {:>9} {:>9}",
                row.bag_label,
                row.patients,
                row.cells,
                row.annotated_cells,
                opt(row.min_cells),
                opt(row.max_cells)
            )?;
        }
        Ok(())
    }
}
