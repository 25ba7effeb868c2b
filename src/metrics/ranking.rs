//! Metrics of scores rather than hard labels: ROC curves, one-vs-rest ROC AUC and
//! average precision, each with scikit-learn's treatment of tied scores.
//!
//! All of them start from the same table: sort the samples by score from high to
//! low and, at every *distinct* score value `t`, count the positives (`tp`) and
//! negatives (`fp`) with score ≥ `t`. Tied samples therefore enter a curve together
//! as one diagonal step, never one at a time in some arbitrary order.
use super::check_scores;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// One ROC curve as `sklearn.metrics.roc_curve(..., drop_intermediate=True)`
/// returns it: the first point is (0, 0) at threshold +∞, then one point per
/// kept distinct score, from high to low threshold, ending at (1, 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// False positive rate at each threshold, non-decreasing.
    pub fpr: Vec<f64>,
    /// True positive rate at each threshold, non-decreasing.
    pub tpr: Vec<f64>,
    /// Score thresholds, decreasing; the first is +∞. JSON has no infinity, so
    /// it is written as `null` and read back as +∞.
    #[serde(with = "infinity_as_null")]
    pub thresholds: Vec<f64>,
}

impl RocCurve {
    /// Area under the curve by the trapezoidal rule (`sklearn.metrics.auc`).
    pub fn auc(&self) -> f64 {
        trapezoid(&self.fpr, &self.tpr)
    }
}

/// ROC curve of a binary problem: `y_true[i]` tells whether sample `i` is
/// positive, `y_score[i]` is its score. Errors when there is no positive or no
/// negative sample, where scikit-learn would return NaN rates.
pub fn roc_curve(y_true: &[bool], y_score: &[f64]) -> Result<RocCurve> {
    check_binary(y_true, y_score)?;
    roc_from_table(&threshold_table(y_true, y_score)).map_err(|what| {
        Error::invalid(
            "y_true",
            format!("has no {what} sample, so the ROC curve is undefined"),
        )
    })
}

/// Average precision of a binary problem, as
/// `sklearn.metrics.average_precision_score`: `Σ_k (R_k − R_{k−1}) · P_k` over the
/// distinct thresholds from high to low, with `R_{−1} = 0`. Without any positive
/// sample scikit-learn sets recall to 1 everywhere, which makes the AP 0; so does
/// this function.
pub fn average_precision(y_true: &[bool], y_score: &[f64]) -> Result<f64> {
    check_binary(y_true, y_score)?;
    Ok(ap_from_table(&threshold_table(y_true, y_score)))
}

/// The macro-average of `curves`: the mean true positive rate, each curve
/// linearly interpolated at every false positive rate any of them has (as
/// scikit-learn's "macro-average ROC curve" example does). Its area is close to,
/// but not the same as, the mean of the curves' areas. It has no thresholds.
pub fn mean_roc_curve(curves: &[RocCurve]) -> Result<RocCurve> {
    if curves.is_empty() {
        return Err(Error::invalid("curves", "is empty"));
    }
    let mut grid: Vec<f64> = curves.iter().flat_map(|c| c.fpr.iter().copied()).collect();
    grid.sort_by(f64::total_cmp);
    grid.dedup();
    let interp = |c: &RocCurve, x: f64| -> f64 {
        // The highest TPR at the last point with fpr ≤ x, linear to the next.
        let k = c.fpr.partition_point(|&f| f <= x);
        if k == 0 {
            return c.tpr[0];
        }
        if k == c.fpr.len() {
            return c.tpr[k - 1];
        }
        let (x0, x1, y0, y1) = (c.fpr[k - 1], c.fpr[k], c.tpr[k - 1], c.tpr[k]);
        if x1 > x0 {
            y0 + (y1 - y0) * (x - x0) / (x1 - x0)
        } else {
            y1
        }
    };
    let mut tpr: Vec<f64> = grid
        .iter()
        .map(|&x| curves.iter().map(|c| interp(c, x)).sum::<f64>() / curves.len() as f64)
        .collect();
    // Start at (0, 0) like every ROC curve; the vertical first step adds no area.
    grid.insert(0, 0.0);
    tpr.insert(0, 0.0);
    Ok(RocCurve {
        thresholds: Vec::new(),
        fpr: grid,
        tpr,
    })
}

/// One-vs-rest ROC curve of every class (class `c` positive, all others negative),
/// for plotting. Errors naming the class when a class has no positive or no
/// negative sample.
pub fn roc_curves_ovr(
    y_true: &[usize],
    y_score: &[Vec<f64>],
    num_classes: usize,
) -> Result<Vec<RocCurve>> {
    check_scores(y_true, y_score, num_classes)?;
    (0..num_classes)
        .map(|c| {
            let (pos, score) = one_vs_rest(y_true, y_score, c);
            roc_from_table(&threshold_table(&pos, &score)).map_err(|what| {
                Error::invalid(
                    "y_true",
                    format!(
                        "class {c} has no {what} sample, so its one-vs-rest ROC AUC is \
                         undefined (scikit-learn returns NaN); every class must occur \
                         in y_true and at least one other class too"
                    ),
                )
            })
        })
        .collect()
}

/// One-vs-rest ROC AUC of every class (trapezoidal area of [`roc_curves_ovr`]).
pub fn roc_auc_ovr_per_class(
    y_true: &[usize],
    y_score: &[Vec<f64>],
    num_classes: usize,
) -> Result<Vec<f64>> {
    Ok(roc_curves_ovr(y_true, y_score, num_classes)?
        .iter()
        .map(RocCurve::auc)
        .collect())
}

/// Macro one-vs-rest ROC AUC, identical to
/// `roc_auc_score(y_true, y_score, multi_class="ovr", average="macro", labels=range(C))`.
///
/// Differences from scikit-learn, both deliberate: rows of `y_score` need not sum
/// to 1 (each class's AUC only depends on the ranking of its own column;
/// scikit-learn refuses such input), and a class without positive or without
/// negative samples is an error naming the class instead of a NaN mean.
/// `num_classes` must be at least 2; with exactly 2, scikit-learn wants the
/// binary form `roc_auc_score(y_true, y_score[:, 1])`, which equals this mean of
/// the two one-vs-rest AUCs whenever the rows sum to 1.
pub fn roc_auc_ovr_macro(
    y_true: &[usize],
    y_score: &[Vec<f64>],
    num_classes: usize,
) -> Result<f64> {
    if num_classes < 2 {
        return Err(Error::invalid(
            "num_classes",
            "ROC AUC needs at least 2 classes",
        ));
    }
    let per_class = roc_auc_ovr_per_class(y_true, y_score, num_classes)?;
    Ok(per_class.iter().sum::<f64>() / num_classes as f64)
}

/// One-vs-rest average precision of every class.
pub fn average_precision_per_class(
    y_true: &[usize],
    y_score: &[Vec<f64>],
    num_classes: usize,
) -> Result<Vec<f64>> {
    check_scores(y_true, y_score, num_classes)?;
    Ok((0..num_classes)
        .map(|c| {
            let (pos, score) = one_vs_rest(y_true, y_score, c);
            ap_from_table(&threshold_table(&pos, &score))
        })
        .collect())
}

/// PR AUC as this project reports it: the unweighted mean over classes of the
/// one-vs-rest average precision, identical to
/// `average_precision_score(onehot(y_true), y_score, average="macro")`.
/// A class absent from `y_true` contributes 0, as in scikit-learn.
pub fn average_precision_macro(
    y_true: &[usize],
    y_score: &[Vec<f64>],
    num_classes: usize,
) -> Result<f64> {
    let per_class = average_precision_per_class(y_true, y_score, num_classes)?;
    Ok(per_class.iter().sum::<f64>() / num_classes as f64)
}

/// Cumulative counts at one distinct score value.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Step {
    threshold: f64,
    /// Positives with score ≥ threshold.
    tp: usize,
    /// Negatives with score ≥ threshold.
    fp: usize,
}

/// The (threshold, tp, fp) table over distinct scores, highest score first.
/// Scores are finite (checked by the callers), so `total_cmp` is a plain order;
/// its only difference from `==` is −0.0 < +0.0, which `==` below undoes by
/// treating the two zeros as one threshold, as numpy does.
fn threshold_table(pos: &[bool], score: &[f64]) -> Vec<Step> {
    let mut order: Vec<usize> = (0..score.len()).collect();
    order.sort_by(|&a, &b| score[b].total_cmp(&score[a]));
    let mut table: Vec<Step> = Vec::new();
    let (mut tp, mut fp) = (0, 0);
    for (k, &i) in order.iter().enumerate() {
        if pos[i] {
            tp += 1;
        } else {
            fp += 1;
        }
        // Emit a row only after the last sample of a group of equal scores.
        let last_of_group = order
            .get(k + 1)
            .map_or(true, |&next| score[next] != score[i]);
        if last_of_group {
            table.push(Step {
                threshold: score[i],
                tp,
                fp,
            });
        }
    }
    table
}

/// ROC curve from the table; `Err("positive" | "negative")` names what is missing.
fn roc_from_table(table: &[Step]) -> std::result::Result<RocCurve, &'static str> {
    let last = *table.last().expect("threshold table of a non-empty input");
    if last.tp == 0 {
        return Err("positive");
    }
    if last.fp == 0 {
        return Err("negative");
    }
    // drop_intermediate: keep the end points and every point where the curve
    // bends, i.e. where the second difference of fp or tp is non-zero; points in
    // the middle of a straight run add nothing to the area or the picture.
    let kept: Vec<Step> = if table.len() > 2 {
        let bends = |a: usize, b: usize, c: usize| a + c != 2 * b;
        table
            .iter()
            .enumerate()
            .filter(|&(k, _)| {
                k == 0
                    || k + 1 == table.len()
                    || bends(table[k - 1].fp, table[k].fp, table[k + 1].fp)
                    || bends(table[k - 1].tp, table[k].tp, table[k + 1].tp)
            })
            .map(|(_, s)| *s)
            .collect()
    } else {
        table.to_vec()
    };
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![f64::INFINITY],
    };
    for s in kept {
        curve.fpr.push(s.fp as f64 / last.fp as f64);
        curve.tpr.push(s.tp as f64 / last.tp as f64);
        curve.thresholds.push(s.threshold);
    }
    Ok(curve)
}

/// Step-wise average precision from the table (see [`average_precision`]).
fn ap_from_table(table: &[Step]) -> f64 {
    let total_pos = table.last().map_or(0, |s| s.tp);
    let mut previous_recall = 0.0;
    let mut ap = 0.0;
    for s in table {
        let recall = if total_pos == 0 {
            1.0
        } else {
            s.tp as f64 / total_pos as f64
        };
        // tp + fp ≥ 1 at every row, as every row holds at least one sample.
        let precision = s.tp as f64 / (s.tp + s.fp) as f64;
        ap += (recall - previous_recall) * precision;
        previous_recall = recall;
    }
    // Rounding can give −0.0 for an AP of zero; report +0.0 like scikit-learn.
    ap.max(0.0)
}

/// Trapezoidal area under y(x) for non-decreasing x.
fn trapezoid(x: &[f64], y: &[f64]) -> f64 {
    x.windows(2)
        .zip(y.windows(2))
        .map(|(xw, yw)| (xw[1] - xw[0]) * (yw[1] + yw[0]) / 2.0)
        .sum()
}

fn one_vs_rest(y_true: &[usize], y_score: &[Vec<f64>], c: usize) -> (Vec<bool>, Vec<f64>) {
    (
        y_true.iter().map(|&t| t == c).collect(),
        y_score.iter().map(|row| row[c]).collect(),
    )
}

fn check_binary(y_true: &[bool], y_score: &[f64]) -> Result<()> {
    if y_true.is_empty() {
        return Err(Error::invalid(
            "y_true",
            "is empty: need at least one sample",
        ));
    }
    if y_score.len() != y_true.len() {
        return Err(Error::invalid(
            "y_score",
            format!(
                "has {} entries but y_true has {} samples",
                y_score.len(),
                y_true.len()
            ),
        ));
    }
    if let Some((i, v)) = y_score.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(
            "y_score",
            format!("entry {i} is {v}; scores must be finite"),
        ));
    }
    Ok(())
}

/// Serde helper: +∞ (the first ROC threshold) as JSON `null`, since JSON has no
/// infinity and serde_json would otherwise write `null` and fail to read it back.
mod infinity_as_null {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[f64], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|&x| if x == f64::INFINITY { None } else { Some(x) })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        Ok(Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|x| x.unwrap_or(f64::INFINITY))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_roc_curve_averages_interpolated_tpr_and_starts_at_the_origin() {
        let a = RocCurve {
            fpr: vec![0.0, 0.0, 1.0],
            tpr: vec![0.0, 1.0, 1.0],
            thresholds: vec![],
        };
        let b = RocCurve {
            fpr: vec![0.0, 1.0],
            tpr: vec![0.0, 1.0],
            thresholds: vec![],
        };
        let m = mean_roc_curve(&[a.clone(), b.clone()]).unwrap();
        assert_eq!((m.fpr[0], m.tpr[0]), (0.0, 0.0));
        assert!((m.auc() - (a.auc() + b.auc()) / 2.0).abs() < 1e-12, "{m:?}");
        assert_eq!(*m.tpr.last().unwrap(), 1.0);
    }

    #[test]
    fn roc_of_a_textbook_example() {
        // scikit-learn's docstring example: y = [1, 1, 2, 2], scores [.1, .4, .35, .8].
        let pos = [false, false, true, true];
        let score = [0.1, 0.4, 0.35, 0.8];
        let c = roc_curve(&pos, &score).unwrap();
        assert_eq!(c.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(c.thresholds, vec![f64::INFINITY, 0.8, 0.4, 0.35, 0.1]);
        assert_eq!(c.auc(), 0.75);
        // AP: thresholds .8 (P 1, R .5), .4 (P .5), .35 (P 2/3, R 1), .1.
        let ap = average_precision(&pos, &score).unwrap();
        assert!((ap - (0.5 * 1.0 + 0.5 * 2.0 / 3.0)).abs() < 1e-15);
    }

    #[test]
    fn ties_form_one_diagonal_step() {
        // All scores tied: one step from (0,0) to (1,1), AUC 0.5, AP = prevalence.
        let pos = [true, false, false, true, false];
        let score = [0.3; 5];
        let c = roc_curve(&pos, &score).unwrap();
        assert_eq!(c.fpr, vec![0.0, 1.0]);
        assert_eq!(c.tpr, vec![0.0, 1.0]);
        assert_eq!(c.auc(), 0.5);
        assert_eq!(average_precision(&pos, &score).unwrap(), 0.4);
        // A positive tied with a negative counts half (Mann–Whitney).
        let c = roc_curve(&[true, false, false], &[0.5, 0.5, 0.1]).unwrap();
        assert_eq!(c.auc(), 0.75);
    }

    #[test]
    fn intermediate_points_on_straight_runs_are_dropped() {
        // Three negatives in a row at distinct scores: a horizontal run whose two
        // inner points (0.8, 0.7) are dropped, its ends (0.9, 0.6) kept.
        let pos = [true, false, false, false, true];
        let score = [0.9, 0.8, 0.7, 0.6, 0.5];
        let c = roc_curve(&pos, &score).unwrap();
        assert_eq!(c.thresholds, vec![f64::INFINITY, 0.9, 0.6, 0.5]);
        assert_eq!(c.fpr, vec![0.0, 0.0, 1.0, 1.0]);
        assert!((c.auc() - 0.5).abs() < 1e-15);
    }

    #[test]
    fn ovr_errors_name_the_class() {
        let y = [0, 0, 1, 1];
        let s = vec![vec![0.6, 0.3, 0.1]; 4];
        let err = roc_auc_ovr_macro(&y, &s, 3).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("class 2 has no positive sample"), "{msg}");
        let err = roc_curves_ovr(&[1, 1], &vec![vec![0.5, 0.5]; 2], 2).unwrap_err();
        assert!(err.to_string().contains("class 0 has no positive"), "{err}");
        let err = roc_curve(&[true, true], &[0.1, 0.2]).unwrap_err();
        assert!(err.to_string().contains("no negative"), "{err}");
        assert!(roc_auc_ovr_macro(&[0], &[vec![1.0]], 1).is_err());
    }

    #[test]
    fn ap_of_a_class_without_positives_is_zero() {
        let y = [0, 0, 1, 1];
        let s = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.5, 0.3, 0.2],
            vec![0.1, 0.8, 0.1],
            vec![0.2, 0.2, 0.6],
        ];
        // Class 1 ranks .8 (pos), .3 (neg), then a tie of .2 (pos and neg):
        // AP = 0.5 · 1 + 0.5 · 2/4.
        let ap = average_precision_per_class(&y, &s, 3).unwrap();
        assert_eq!(ap, vec![1.0, 0.75, 0.0]);
        assert!((average_precision_macro(&y, &s, 3).unwrap() - 1.75 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn input_errors() {
        let err = roc_curve(&[true, false], &[0.1]).unwrap_err();
        assert!(err.to_string().contains("`y_score`"), "{err}");
        let err = average_precision(&[true, false], &[0.1, f64::NAN]).unwrap_err();
        assert!(err.to_string().contains("`y_score`"), "{err}");
        assert!(err.to_string().contains("NaN"), "{err}");
        let err = average_precision(&[], &[]).unwrap_err();
        assert!(err.to_string().contains("`y_true`"), "{err}");
        let err = roc_auc_ovr_macro(&[0, 3], &vec![vec![0.5, 0.5]; 2], 2).unwrap_err();
        assert!(err.to_string().contains("`y_true`"), "{err}");
        let err =
            average_precision_macro(&[0, 1], &vec![vec![0.5, f64::INFINITY]; 2], 2).unwrap_err();
        assert!(err.to_string().contains("`y_score`"), "{err}");
    }

    #[test]
    fn curve_json_round_trips_infinite_threshold() {
        let c = roc_curve(&[true, false], &[0.9, 0.1]).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        assert!(json.contains("\"thresholds\":[null,0.9,0.1]"), "{json}");
        let back: RocCurve = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }
}
