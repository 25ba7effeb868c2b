//! Metrics of hard predictions: arg-max labels, the confusion matrix and
//! per-class precision / recall / F1 with scikit-learn's `zero_division=0`.
use super::{check_labels, check_scores};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Predicted class of every sample: the index of the largest score, the lowest
/// index among equal maxima (as `numpy.argmax`), so results match Python exactly
/// even when a model outputs tied probabilities.
pub fn argmax_predictions(y_score: &[Vec<f64>], num_classes: usize) -> Result<Vec<usize>> {
    // Validate the matrix with a dummy label vector: only the shape and values matter.
    let dummy = vec![0; y_score.len()];
    if y_score.is_empty() {
        return Err(Error::invalid(
            "y_score",
            "is empty: need at least one sample",
        ));
    }
    check_scores(&dummy, y_score, num_classes)?;
    Ok(y_score
        .iter()
        .map(|row| {
            let mut best = 0;
            for (c, &v) in row.iter().enumerate().skip(1) {
                // Strictly greater keeps the first of tied maxima.
                if v > row[best] {
                    best = c;
                }
            }
            best
        })
        .collect())
}

/// Confusion matrix `m[true][pred]` (rows = true class, columns = predicted
/// class), `num_classes × num_classes`, like
/// `sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(C))`.
pub fn confusion_matrix(
    y_true: &[usize],
    y_pred: &[usize],
    num_classes: usize,
) -> Result<Vec<Vec<usize>>> {
    check_pair(y_true, y_pred, num_classes)?;
    let mut m = vec![vec![0usize; num_classes]; num_classes];
    for (&t, &p) in y_true.iter().zip(y_pred) {
        m[t][p] += 1;
    }
    Ok(m)
}

/// Per-class precision, recall, F1 and support, indexed by class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRecallF1 {
    /// tp / (tp + fp); 0 for a class that is never predicted.
    pub precision: Vec<f64>,
    /// tp / (tp + fn); 0 for a class absent from `y_true`.
    pub recall: Vec<f64>,
    /// 2·tp / (2·tp + fp + fn); 0 when the class is neither present nor predicted.
    pub f1: Vec<f64>,
    /// Number of samples whose true class is this class.
    pub support: Vec<usize>,
}

/// Per-class precision, recall, F1 and support, identical to
/// `precision_recall_fscore_support(y_true, y_pred, labels=range(C), zero_division=0)`.
///
/// F1 is computed from counts as `2·tp / (support + predicted)` rather than from
/// the rounded precision and recall, as scikit-learn does, so the two agree to the
/// last bit rather than to rounding.
pub fn precision_recall_f1_support(
    y_true: &[usize],
    y_pred: &[usize],
    num_classes: usize,
) -> Result<PrecisionRecallF1> {
    let m = confusion_matrix(y_true, y_pred, num_classes)?;
    let ratio = |num: usize, den: usize| {
        if den == 0 {
            0.0
        } else {
            num as f64 / den as f64
        }
    };
    let mut out = PrecisionRecallF1 {
        precision: Vec::with_capacity(num_classes),
        recall: Vec::with_capacity(num_classes),
        f1: Vec::with_capacity(num_classes),
        support: Vec::with_capacity(num_classes),
    };
    for c in 0..num_classes {
        let tp = m[c][c];
        let support: usize = m[c].iter().sum();
        let predicted: usize = m.iter().map(|row| row[c]).sum();
        out.precision.push(ratio(tp, predicted));
        out.recall.push(ratio(tp, support));
        out.f1.push(ratio(2 * tp, support + predicted));
        out.support.push(support);
    }
    Ok(out)
}

/// Unweighted mean of the per-class F1 over all `num_classes` classes, identical to
/// `f1_score(y_true, y_pred, average="macro", labels=range(C), zero_division=0)`.
/// A class absent from both `y_true` and `y_pred` contributes 0.
pub fn macro_f1(y_true: &[usize], y_pred: &[usize], num_classes: usize) -> Result<f64> {
    let prf = precision_recall_f1_support(y_true, y_pred, num_classes)?;
    Ok(prf.f1.iter().sum::<f64>() / num_classes as f64)
}

fn check_pair(y_true: &[usize], y_pred: &[usize], num_classes: usize) -> Result<()> {
    check_labels("y_true", y_true, num_classes)?;
    check_labels("y_pred", y_pred, num_classes)?;
    if y_true.len() != y_pred.len() {
        return Err(Error::invalid(
            "y_pred",
            format!(
                "has {} samples but y_true has {}",
                y_pred.len(),
                y_true.len()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_breaks_ties_to_lowest_index() {
        let s = vec![
            vec![0.2, 0.4, 0.4],
            vec![0.5, 0.5, 0.0],
            vec![0.1, 0.2, 0.7],
            vec![1.0 / 3.0; 3],
        ];
        assert_eq!(argmax_predictions(&s, 3).unwrap(), vec![1, 0, 2, 0]);
        let err = argmax_predictions(&[vec![0.1, f64::NAN]], 2).unwrap_err();
        assert!(err.to_string().contains("`y_score`"), "{err}");
        assert!(argmax_predictions(&[], 2).is_err());
    }

    #[test]
    fn hand_checked_precision_recall_f1() {
        // Class 2 is never predicted, class 3 never occurs in y_true or y_pred.
        let y_true = [0, 0, 0, 1, 1, 2];
        let y_pred = [0, 0, 1, 1, 0, 1];
        let m = confusion_matrix(&y_true, &y_pred, 4).unwrap();
        assert_eq!(
            m,
            vec![
                vec![2, 1, 0, 0],
                vec![1, 1, 0, 0],
                vec![0, 1, 0, 0],
                vec![0, 0, 0, 0]
            ]
        );
        let prf = precision_recall_f1_support(&y_true, &y_pred, 4).unwrap();
        assert_eq!(prf.support, vec![3, 2, 1, 0]);
        assert_eq!(prf.precision, vec![2.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]);
        assert_eq!(prf.recall, vec![2.0 / 3.0, 0.5, 0.0, 0.0]);
        // F1 class 0: 2·2 / (3 + 3); class 1: 2·1 / (2 + 3).
        assert_eq!(prf.f1, vec![4.0 / 6.0, 2.0 / 5.0, 0.0, 0.0]);
        let f1 = macro_f1(&y_true, &y_pred, 4).unwrap();
        assert!((f1 - (4.0 / 6.0 + 0.4) / 4.0).abs() < 1e-15);
    }

    #[test]
    fn perfect_predictions() {
        let y = [0, 1, 2, 2];
        assert_eq!(macro_f1(&y, &y, 3).unwrap(), 1.0);
    }

    #[test]
    fn errors_name_the_argument() {
        let err = confusion_matrix(&[0, 1], &[0], 2).unwrap_err();
        assert!(err.to_string().contains("`y_pred`"), "{err}");
        let err = confusion_matrix(&[0, 1], &[0, 5], 2).unwrap_err();
        assert!(err.to_string().contains("`y_pred`"), "{err}");
        assert!(err.to_string().contains("label 5"), "{err}");
        let err = macro_f1(&[3], &[0], 2).unwrap_err();
        assert!(err.to_string().contains("`y_true`"), "{err}");
        let err = macro_f1(&[], &[], 2).unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
