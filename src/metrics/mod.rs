//! Evaluation metrics for the cross-validated MIL runs (DESIGN.md §2, Evaluation).
//!
//! Every number here is defined to be identical (to floating-point rounding) to
//! what scikit-learn 1.9 returns for the same inputs, so a result computed by this
//! crate can be compared with the paper and with Python notebooks:
//!
//! | here | scikit-learn |
//! | --- | --- |
//! | [`confusion_matrix`] | `confusion_matrix(y_true, y_pred, labels=range(C))` |
//! | [`precision_recall_f1_support`] | `precision_recall_fscore_support(y_true, y_pred, labels=range(C), zero_division=0)` |
//! | [`macro_f1`] | `f1_score(y_true, y_pred, average="macro", labels=range(C), zero_division=0)` |
//! | [`roc_auc_ovr_macro`] | `roc_auc_score(y_true, y_score, multi_class="ovr", average="macro", labels=range(C))` |
//! | [`average_precision_macro`] | `average_precision_score(onehot(y_true), y_score, average="macro")` |
//! | [`roc_curve`], [`roc_curves_ovr`] | `roc_curve(y_true == c, y_score[:, c], drop_intermediate=True)` |
//!
//! **PR AUC here = macro average precision as scikit-learn defines it**: for each
//! class (one-vs-rest) the step-wise average precision
//! `AP = Σ_k (R_k − R_{k−1}) · P_k` over the distinct score thresholds taken from
//! high to low (no trapezoidal interpolation), then the unweighted mean over the
//! classes. [`PR_AUC_DEFINITION`] carries this sentence into every report.
//!
//! Conventions shared by all functions:
//! - `y_true[i]` is the class index of sample `i`, in `0..num_classes`;
//! - `y_score[i][c]` is the score (usually the softmax probability) of class `c`
//!   for sample `i`; every row has `num_classes` finite entries;
//! - predicted labels come from [`argmax_predictions`], which breaks ties towards
//!   the lowest class index, as `numpy.argmax` does.
//!
//! Where scikit-learn would warn and return NaN — ROC AUC or a ROC curve for a
//! class that has no positive or no negative sample — these functions return
//! [`Error::InvalidArgument`](crate::error::Error::InvalidArgument) naming the
//! class instead, because a NaN silently poisons the mean over folds.
//!
//! [`Report`] bundles all metrics of one prediction set, [`Summary`] aggregates
//! many (mean ± sample standard deviation), and [`plot_roc_curves`] /
//! [`plot_confusion_matrix`] draw PNG figures.

mod classification;
mod figures;
mod plot;
mod ranking;
mod summary;

pub use classification::{
    argmax_predictions, confusion_matrix, macro_f1, precision_recall_f1_support, PrecisionRecallF1,
};
pub use figures::{plot_grouped_bars, plot_scatter_panels, Bars, ScatterPanel};
pub use plot::{
    plot_confusion_matrix, plot_roc_curves, plot_roc_curves_titled, PlotOutput, FONT_ENV,
};
pub use ranking::{
    average_precision, average_precision_macro, average_precision_per_class, mean_roc_curve,
    roc_auc_ovr_macro, roc_auc_ovr_per_class, roc_curve, roc_curves_ovr, RocCurve,
};
pub use summary::{markdown_table, MeanSd, Report, Summary, PR_AUC_DEFINITION, SD_DEFINITION};

use crate::error::{Error, Result};

/// Checks the label vector: non-empty and every label below `num_classes`.
fn check_labels(arg: &str, labels: &[usize], num_classes: usize) -> Result<()> {
    if num_classes == 0 {
        return Err(Error::invalid("num_classes", "must be at least 1"));
    }
    if labels.is_empty() {
        return Err(Error::invalid(arg, "is empty: need at least one sample"));
    }
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(Error::invalid(
            arg,
            format!("sample {i} has label {l}, but num_classes is {num_classes}"),
        ));
    }
    Ok(())
}

/// Checks `y_true` and the n×C score matrix together: matching lengths, rows of
/// exactly `num_classes` entries, all finite (a NaN would make the ranking
/// undefined, and sorting would silently place it somewhere).
fn check_scores(y_true: &[usize], y_score: &[Vec<f64>], num_classes: usize) -> Result<()> {
    check_labels("y_true", y_true, num_classes)?;
    if y_score.len() != y_true.len() {
        return Err(Error::invalid(
            "y_score",
            format!(
                "has {} rows but y_true has {} samples",
                y_score.len(),
                y_true.len()
            ),
        ));
    }
    for (i, row) in y_score.iter().enumerate() {
        if row.len() != num_classes {
            return Err(Error::invalid(
                "y_score",
                format!(
                    "row {i} has {} entries, expected num_classes = {num_classes}",
                    row.len()
                ),
            ));
        }
        if let Some((c, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::invalid(
                "y_score",
                format!("row {i}, class {c} is {v}; scores must be finite"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_scores_names_the_argument() {
        let err = check_scores(&[0, 1], &[vec![0.5, 0.5]], 2).unwrap_err();
        assert!(err.to_string().contains("`y_score`"), "{err}");
        let err = check_scores(&[0, 2], &[vec![0.5, 0.5], vec![0.5, 0.5]], 2).unwrap_err();
        assert!(err.to_string().contains("`y_true`"), "{err}");
        assert!(err.to_string().contains("sample 1 has label 2"), "{err}");
        let err = check_scores(&[0, 1], &[vec![0.5, 0.5], vec![f64::NAN, 0.5]], 2).unwrap_err();
        assert!(err.to_string().contains("`y_score`"), "{err}");
        assert!(err.to_string().contains("row 1, class 0 is NaN"), "{err}");
        let err = check_scores(&[0, 1], &[vec![0.5, 0.5], vec![0.5]], 2).unwrap_err();
        assert!(err.to_string().contains("row 1 has 1 entries"), "{err}");
        let err = check_scores(&[], &[], 2).unwrap_err();
        assert!(err.to_string().contains("`y_true`"), "{err}");
        assert!(check_labels("y_true", &[0], 0).is_err());
    }
}
