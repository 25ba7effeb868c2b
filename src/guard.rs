//! The diagnosis guard: reduced precision is worth having only if the answer
//! is the same. [`check`] classifies the same bags with the same checkpoints
//! at fp32 and at a reduced precision (bf16 on the CPU or CUDA, fp16 on CUDA)
//! and compares, bag by bag, the three things a diagnosis rests on:
//!
//! 1. the predicted class — equal;
//! 2. the class probabilities — largest absolute difference at most
//!    [`GuardBounds::max_probability_diff`];
//! 3. the cells shown to the cytologist — for every class, the
//!    [`GuardBounds::top_k`] cells of highest attention overlap the fp32 ones
//!    in at least [`GuardBounds::min_overlap`] cells. A bag with fewer cells
//!    than `top_k` compares all its cells and may miss as many as a full bag
//!    (`min_overlap − (top_k − n)`, at least 0).
//!
//! `amlmil check-precision` runs it from the command line; the test suite and
//! the benchmark hold bf16 to it on trained models.
use std::path::Path;

use serde::Serialize;

use crate::bag::Bag;
use crate::device::Precision;
use crate::error::{Error, Result};
use crate::inference::{BagPrediction, Session, SessionOptions};

/// What "the same diagnosis" allows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct GuardBounds {
    /// Largest allowed |p_reduced − p_fp32| of any class probability.
    pub max_probability_diff: f32,
    /// Cells compared per class ranking.
    pub top_k: usize,
    /// Of those, how many must be among fp32's top `top_k`.
    pub min_overlap: usize,
}

impl Default for GuardBounds {
    /// 0.02 of probability, 9 of the top 10 cells.
    fn default() -> Self {
        GuardBounds {
            max_probability_diff: 0.02,
            top_k: 10,
            min_overlap: 9,
        }
    }
}

impl GuardBounds {
    fn validate(&self) -> Result<()> {
        if !(self.max_probability_diff.is_finite() && self.max_probability_diff >= 0.0) {
            return Err(Error::invalid(
                "max_probability_diff",
                format!("{} is not a finite number ≥ 0", self.max_probability_diff),
            ));
        }
        if self.top_k == 0 || self.min_overlap > self.top_k {
            return Err(Error::invalid(
                "top_k/min_overlap",
                format!(
                    "need 1 ≤ top_k and min_overlap ≤ top_k, got top_k {} and min_overlap {}",
                    self.top_k, self.min_overlap
                ),
            ));
        }
        Ok(())
    }
}

/// One bag at fp32 and at the reduced precision.
#[derive(Debug, Clone, Serialize)]
pub struct BagAgreement {
    pub bag: String,
    pub cells: usize,
    /// Predicted class at fp32 and at the reduced precision.
    pub fp32_class: String,
    pub reduced_class: String,
    pub max_probability_diff: f32,
    /// Largest difference of any cell's softmax attention for any class.
    pub max_attention_diff: f32,
    /// Cells compared per class (`top_k`, or all of a smaller bag).
    pub compared: usize,
    /// Smallest top-`compared` overlap over the classes.
    pub min_overlap: usize,
    /// What the bounds require of `min_overlap` for this bag.
    pub required_overlap: usize,
    pub holds: bool,
}

/// Every bag's agreement and the verdict.
#[derive(Debug, Clone, Serialize)]
pub struct GuardReport {
    pub precision: Precision,
    pub bounds: GuardBounds,
    pub bags: Vec<BagAgreement>,
    /// Bags whose predicted class is the same at both precisions.
    pub same_class: usize,
    pub max_probability_diff: f32,
    pub max_attention_diff: f32,
    /// Smallest top-k overlap of any class of any bag.
    pub min_overlap: usize,
    /// Whether every bag holds.
    pub holds: bool,
}

/// Compares one bag's fp32 prediction with its reduced-precision one.
pub fn agreement(
    bag: &str,
    fp32: &BagPrediction,
    reduced: &BagPrediction,
    bounds: &GuardBounds,
) -> Result<BagAgreement> {
    bounds.validate()?;
    if fp32.cell_ids != reduced.cell_ids || fp32.classes != reduced.classes {
        return Err(Error::Mismatch(format!(
            "bag `{bag}`: the two predictions are of different cells or classes"
        )));
    }
    let n = fp32.num_cells();
    let compared = bounds.top_k.min(n);
    let required = bounds.min_overlap.saturating_sub(bounds.top_k - compared);
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    let mut min_overlap = compared;
    for class in 0..fp32.classes.len() {
        let ids = |p: &BagPrediction| -> Vec<u64> {
            p.top_cells(class, compared)
                .unwrap_or_default()
                .iter()
                .map(|c| c.cell_id)
                .collect()
        };
        let (a, b) = (ids(fp32), ids(reduced));
        min_overlap = min_overlap.min(a.iter().filter(|id| b.contains(id)).count());
    }
    let max_probability_diff = max_diff(&fp32.probabilities, &reduced.probabilities);
    let holds = fp32.predicted == reduced.predicted
        && max_probability_diff <= bounds.max_probability_diff
        && min_overlap >= required;
    Ok(BagAgreement {
        bag: bag.to_owned(),
        cells: n,
        fp32_class: fp32.classes[fp32.predicted].clone(),
        reduced_class: reduced.classes[reduced.predicted].clone(),
        max_probability_diff,
        max_attention_diff: max_diff(&fp32.attention, &reduced.attention),
        compared,
        min_overlap,
        required_overlap: required,
        holds,
    })
}

/// Classifies `bags` with the checkpoints at fp32 and at `options.precision`
/// (everything else as `options` says) and compares them (module docs).
pub fn check(
    encoder: &Path,
    mil: &Path,
    options: &SessionOptions,
    bags: &[(String, Bag)],
    bounds: &GuardBounds,
) -> Result<GuardReport> {
    bounds.validate()?;
    if options.precision == Precision::Fp32 {
        return Err(Error::invalid(
            "precision",
            "the guard compares a reduced precision (bf16 or fp16) with fp32; fp32 was given",
        ));
    }
    let reduced = Session::new(encoder, mil, options)?;
    let reference = Session::new(
        encoder,
        mil,
        &SessionOptions {
            precision: Precision::Fp32,
            ..options.clone()
        },
    )?;
    let mut agreements = Vec::with_capacity(bags.len());
    for (name, bag) in bags {
        let a = reference.classify(bag, &mut |_, _, _| true)?;
        let b = reduced.classify(bag, &mut |_, _, _| true)?;
        agreements.push(agreement(name, &a, &b, bounds)?);
    }
    let fold = |f: fn(&BagAgreement) -> f32| agreements.iter().map(f).fold(0.0f32, f32::max);
    Ok(GuardReport {
        precision: options.precision,
        bounds: *bounds,
        same_class: agreements
            .iter()
            .filter(|a| a.fp32_class == a.reduced_class)
            .count(),
        max_probability_diff: fold(|a| a.max_probability_diff),
        max_attention_diff: fold(|a| a.max_attention_diff),
        min_overlap: agreements.iter().map(|a| a.min_overlap).min().unwrap_or(0),
        holds: agreements.iter().all(|a| a.holds),
        bags: agreements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(probabilities: [f32; 2], attention: [[f32; 12]; 2]) -> BagPrediction {
        let predicted = usize::from(probabilities[1] > probabilities[0]);
        BagPrediction {
            classes: vec!["a".into(), "b".into()],
            logits: probabilities.to_vec(),
            probabilities: probabilities.to_vec(),
            predicted,
            cell_ids: (0..12).collect(),
            attention_raw: attention.concat(),
            attention: attention.concat(),
        }
    }

    fn ramp() -> [f32; 12] {
        std::array::from_fn(|i| 12.0 - i as f32)
    }

    #[test]
    fn equal_predictions_hold_and_a_swapped_top_cell_is_counted() {
        let b = GuardBounds::default();
        let p = prediction([0.3, 0.7], [ramp(), ramp()]);
        let same = agreement("x", &p, &p, &b).unwrap();
        assert!(same.holds);
        assert_eq!((same.compared, same.min_overlap), (10, 10));
        // Cell 0 (top) falls to the bottom in class 1's ranking: 9 of 10 remain.
        let mut moved = ramp();
        moved[0] = -1.0;
        let q = prediction([0.31, 0.69], [ramp(), moved]);
        let a = agreement("x", &p, &q, &b).unwrap();
        assert_eq!(a.min_overlap, 9);
        assert!(a.holds, "{a:?}");
        // Two cells out: 8 of 10 fails.
        moved[1] = -2.0;
        let q = prediction([0.31, 0.69], [ramp(), moved]);
        assert!(!agreement("x", &p, &q, &b).unwrap().holds);
    }

    #[test]
    fn another_class_or_a_large_probability_change_fails() {
        let b = GuardBounds::default();
        let p = prediction([0.3, 0.7], [ramp(), ramp()]);
        let flipped = prediction([0.6, 0.4], [ramp(), ramp()]);
        let a = agreement("x", &p, &flipped, &b).unwrap();
        assert!(!a.holds);
        assert_eq!(
            (a.fp32_class.as_str(), a.reduced_class.as_str()),
            ("b", "a")
        );
        let drift = prediction([0.33, 0.67], [ramp(), ramp()]);
        let a = agreement("x", &p, &drift, &b).unwrap();
        assert!((a.max_probability_diff - 0.03).abs() < 1e-6);
        assert!(!a.holds);
    }

    #[test]
    fn bad_bounds_name_the_argument() {
        let p = prediction([0.3, 0.7], [ramp(), ramp()]);
        let bounds = GuardBounds {
            min_overlap: 11,
            ..Default::default()
        };
        let err = agreement("x", &p, &p, &bounds).unwrap_err().to_string();
        assert!(err.contains("min_overlap"), "{err}");
    }
}
