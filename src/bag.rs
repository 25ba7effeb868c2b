//! A bag: one patient's single-cell images, each with a caller-chosen 64-bit id.
use std::collections::HashSet;

use crate::cell_image::CellImage;
use crate::error::{Error, Result};

/// Cells of one patient in the order they were added. Ids are unique within a bag
/// and come back with every per-cell result, so callers never track indices.
#[derive(Debug, Default, Clone)]
pub struct Bag {
    ids: Vec<u64>,
    cells: Vec<CellImage>,
    seen: HashSet<u64>,
}

impl Bag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a cell; fails if `id` is already in the bag (the bag is then unchanged).
    pub fn add(&mut self, id: u64, cell: CellImage) -> Result<()> {
        if !self.seen.insert(id) {
            return Err(Error::invalid(
                "cell_id",
                format!("{id} is already in this bag"),
            ));
        }
        self.ids.push(id);
        self.cells.push(cell);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.cells.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cells.is_empty()
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    pub fn cells(&self) -> &[CellImage] {
        &self.cells
    }

    /// Removes every cell.
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}
