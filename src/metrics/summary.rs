//! One run's [`Report`] and the [`Summary`] of many runs (mean ± sd), with the
//! Markdown table that mirrors Table 1 of the paper.
use super::{
    argmax_predictions, average_precision_per_class, check_scores, confusion_matrix,
    precision_recall_f1_support, roc_curves_ovr, PrecisionRecallF1, RocCurve,
};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The sentence every report carries so that nobody mistakes our PR AUC for a
/// trapezoidal area under the precision–recall curve.
pub const PR_AUC_DEFINITION: &str = "PR AUC = macro mean over classes of the one-vs-rest \
average precision (step-wise, no interpolation), as scikit-learn's \
average_precision_score(average=\"macro\")";

/// How the ± in a [`Summary`] is computed.
pub const SD_DEFINITION: &str = "± = sample standard deviation over runs (ddof = 1; 0 for a \
single run)";

/// All metrics of one prediction set (one test fold of one seed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Class names in class-index order.
    pub class_names: Vec<String>,
    /// Number of samples (bags) scored.
    pub n_samples: usize,
    /// `confusion_matrix[true][pred]` of the arg-max predictions.
    pub confusion_matrix: Vec<Vec<usize>>,
    /// Per-class precision, recall, F1 and support of the arg-max predictions.
    pub per_class: PrecisionRecallF1,
    /// Macro F1 of the arg-max predictions (ties to the lowest class index).
    pub macro_f1: f64,
    /// Macro one-vs-rest ROC AUC.
    pub roc_auc: f64,
    /// One-vs-rest ROC AUC of each class.
    pub roc_auc_per_class: Vec<f64>,
    /// PR AUC: macro mean of per-class average precision ([`PR_AUC_DEFINITION`]).
    pub pr_auc: f64,
    /// One-vs-rest average precision of each class.
    pub average_precision_per_class: Vec<f64>,
    /// One-vs-rest ROC curve of each class, for plotting.
    pub roc_curves: Vec<RocCurve>,
    /// [`PR_AUC_DEFINITION`], stored so a JSON report explains itself.
    pub pr_auc_definition: String,
}

impl Report {
    /// Computes every metric from true labels and the n×C score matrix; the
    /// number of classes is `class_names.len()` (at least 2).
    ///
    /// Fails with [`Error::InvalidArgument`] naming the class when a class has no
    /// sample in `y_true` or is the only class present, since its ROC AUC is then
    /// undefined: evaluate on stratified test sets that contain every class.
    pub fn from_scores<S: AsRef<str>>(
        y_true: &[usize],
        y_score: &[Vec<f64>],
        class_names: &[S],
    ) -> Result<Report> {
        let num_classes = class_names.len();
        if num_classes < 2 {
            return Err(Error::invalid(
                "class_names",
                format!("has {num_classes} names; need at least 2 classes"),
            ));
        }
        let class_names: Vec<String> = class_names.iter().map(|s| s.as_ref().to_owned()).collect();
        check_scores(y_true, y_score, num_classes)?;
        // Check class presence here, where the names are known, for a clearer message.
        for (c, name) in class_names.iter().enumerate() {
            let count = y_true.iter().filter(|&&t| t == c).count();
            if count == 0 || count == y_true.len() {
                let what = if count == 0 { "no" } else { "only" };
                return Err(Error::invalid(
                    "y_true",
                    format!(
                        "class {c} (`{name}`) has {what} samples, so its one-vs-rest ROC \
                         AUC is undefined; every class must occur in y_true alongside \
                         another class"
                    ),
                ));
            }
        }
        let y_pred = argmax_predictions(y_score, num_classes)?;
        let per_class = precision_recall_f1_support(y_true, &y_pred, num_classes)?;
        let roc_curves = roc_curves_ovr(y_true, y_score, num_classes)?;
        let roc_auc_per_class: Vec<f64> = roc_curves.iter().map(RocCurve::auc).collect();
        let average_precision_per_class =
            average_precision_per_class(y_true, y_score, num_classes)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        Ok(Report {
            n_samples: y_true.len(),
            confusion_matrix: confusion_matrix(y_true, &y_pred, num_classes)?,
            macro_f1: mean(&per_class.f1),
            per_class,
            roc_auc: mean(&roc_auc_per_class),
            roc_auc_per_class,
            pr_auc: mean(&average_precision_per_class),
            average_precision_per_class,
            roc_curves,
            class_names,
            pr_auc_definition: PR_AUC_DEFINITION.to_owned(),
        })
    }

    /// Writes the report as pretty JSON (temp file + rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(self, path)
    }
}

/// Mean and sample standard deviation of one metric over runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanSd {
    /// Arithmetic mean.
    pub mean: f64,
    /// Sample standard deviation (ddof = 1); 0 for a single value.
    pub sd: f64,
}

impl MeanSd {
    /// Mean and sample sd (divisor n − 1) of `values`; sd is 0 when there is one
    /// value. Errors on an empty slice.
    pub fn of(values: &[f64]) -> Result<MeanSd> {
        if values.is_empty() {
            return Err(Error::invalid("values", "is empty: need at least one run"));
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let sd = if values.len() < 2 {
            0.0
        } else {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        };
        Ok(MeanSd { mean, sd })
    }
}

impl fmt::Display for MeanSd {
    /// `0.82 ± 0.03`, two decimals as in the paper's Table 1 unless a precision
    /// is given (`{:.3}`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = f.precision().unwrap_or(2);
        write!(f, "{:.p$} ± {:.p$}", self.mean, self.sd)
    }
}

/// The metrics of many runs of one configuration (e.g. one encoder over 5 folds ×
/// 3 seeds = 15 prediction sets).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Row name in the table: the encoder or run group.
    pub name: String,
    /// Class names in class-index order (the same for every run).
    pub class_names: Vec<String>,
    /// Number of runs aggregated.
    pub n_runs: usize,
    /// Macro F1 over runs.
    pub macro_f1: MeanSd,
    /// Macro one-vs-rest ROC AUC over runs.
    pub roc_auc: MeanSd,
    /// PR AUC ([`PR_AUC_DEFINITION`]) over runs.
    pub pr_auc: MeanSd,
    /// Element-wise sum of the runs' confusion matrices (`[true][pred]`).
    pub confusion_matrix: Vec<Vec<usize>>,
    /// [`PR_AUC_DEFINITION`].
    pub pr_auc_definition: String,
    /// [`SD_DEFINITION`].
    pub sd_definition: String,
}

impl Summary {
    /// Aggregates `reports`, which must be non-empty and share their class names.
    pub fn from_reports(name: impl Into<String>, reports: &[Report]) -> Result<Summary> {
        let first = reports
            .first()
            .ok_or_else(|| Error::invalid("reports", "is empty: need at least one run"))?;
        let num_classes = first.class_names.len();
        let mut confusion = vec![vec![0usize; num_classes]; num_classes];
        for (r, report) in reports.iter().enumerate() {
            if report.class_names != first.class_names {
                return Err(Error::invalid(
                    "reports",
                    format!(
                        "run {r} has classes {:?} but run 0 has {:?}",
                        report.class_names, first.class_names
                    ),
                ));
            }
            let shape_ok = report.confusion_matrix.len() == num_classes
                && report
                    .confusion_matrix
                    .iter()
                    .all(|row| row.len() == num_classes);
            if !shape_ok {
                return Err(Error::invalid(
                    "reports",
                    format!("run {r}: confusion matrix is not {num_classes}×{num_classes}"),
                ));
            }
            for (sum_row, row) in confusion.iter_mut().zip(&report.confusion_matrix) {
                for (s, v) in sum_row.iter_mut().zip(row) {
                    *s += v;
                }
            }
        }
        let collect = |f: fn(&Report) -> f64| reports.iter().map(f).collect::<Vec<_>>();
        Ok(Summary {
            name: name.into(),
            class_names: first.class_names.clone(),
            n_runs: reports.len(),
            macro_f1: MeanSd::of(&collect(|r| r.macro_f1))?,
            roc_auc: MeanSd::of(&collect(|r| r.roc_auc))?,
            pr_auc: MeanSd::of(&collect(|r| r.pr_auc))?,
            confusion_matrix: confusion,
            pr_auc_definition: PR_AUC_DEFINITION.to_owned(),
            sd_definition: SD_DEFINITION.to_owned(),
        })
    }

    /// This summary as a one-row Markdown table shaped like the paper's Table 1,
    /// with the PR AUC and ± definitions as a footnote.
    pub fn to_markdown(&self) -> String {
        markdown_table(std::slice::from_ref(self))
    }

    /// The summed confusion matrix as a Markdown table (rows = true class,
    /// columns = predicted class).
    pub fn confusion_markdown(&self) -> String {
        let mut s = String::from("| true \\ predicted |");
        for name in &self.class_names {
            s.push_str(&format!(" {} |", escape_cell(name)));
        }
        s.push_str("\n|---|");
        s.push_str(&"---:|".repeat(self.class_names.len()));
        s.push('\n');
        for (name, row) in self.class_names.iter().zip(&self.confusion_matrix) {
            s.push_str(&format!("| {} |", escape_cell(name)));
            for v in row {
                s.push_str(&format!(" {v} |"));
            }
            s.push('\n');
        }
        s
    }

    /// Writes the summary as pretty JSON (temp file + rename).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        write_json(self, path)
    }
}

/// A Markdown table with one row per summary (encoder / run group) and the
/// columns `F1`, `ROC AUC`, `PR AUC` as `mean ± sd`, like the paper's Table 1,
/// followed by a footnote defining PR AUC, the ± and the number of runs per row.
pub fn markdown_table(summaries: &[Summary]) -> String {
    let mut s = String::from("| | F1 | ROC AUC | PR AUC¹ |\n|---|---|---|---|\n");
    for sum in summaries {
        s.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            escape_cell(&sum.name),
            sum.macro_f1,
            sum.roc_auc,
            sum.pr_auc
        ));
    }
    let runs: Vec<String> = summaries
        .iter()
        .map(|x| format!("{}: {}", x.name, x.n_runs))
        .collect();
    s.push_str(&format!(
        "\n¹ {PR_AUC_DEFINITION}. F1 = macro F1 of the arg-max predictions; ROC AUC = macro \
         one-vs-rest. {SD_DEFINITION}; runs per row: {}.\n",
        runs.join(", ")
    ));
    s
}

/// A pipe in a name would split the Markdown cell.
fn escape_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

fn write_json<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let json = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::io("serialise JSON for", path, std::io::Error::other(e)))?;
    write_atomic(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_report() -> Report {
        let y_true = [0, 1, 2, 2];
        let y_score = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.2, 0.5, 0.3],
            vec![0.1, 0.6, 0.3],
            vec![0.1, 0.1, 0.8],
        ];
        Report::from_scores(&y_true, &y_score, &["a", "b", "c"]).unwrap()
    }

    #[test]
    fn report_bundles_consistent_numbers() {
        let r = small_report();
        assert_eq!(r.n_samples, 4);
        assert_eq!(
            r.confusion_matrix,
            vec![vec![1, 0, 0], vec![0, 1, 0], vec![0, 1, 1]]
        );
        // F1: a 1, b 2·1/(1+2), c 2·1/(2+1).
        assert!((r.macro_f1 - (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-15);
        // a ranks perfectly; b: positive .5 vs negatives .2 .6 .1 → 2/3;
        // c: positives .3 .8 vs negatives .1 .3, the tie counting half → 3.5/4.
        assert_eq!(r.roc_auc_per_class[0], 1.0);
        assert!((r.roc_auc_per_class[1] - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(r.roc_auc_per_class[2], 0.875);
        assert_eq!(r.pr_auc_definition, PR_AUC_DEFINITION);
        let json = serde_json::to_string(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn report_names_a_missing_class() {
        let err = Report::from_scores(
            &[0, 0, 1],
            &vec![vec![0.5, 0.3, 0.2]; 3],
            &["a", "b", "NPM1"],
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("class 2 (`NPM1`) has no samples"), "{msg}");
        let err = Report::from_scores(&[0, 0], &vec![vec![0.5, 0.5]; 2], &["a", "b"]).unwrap_err();
        assert!(
            err.to_string().contains("class 0 (`a`) has only samples"),
            "{err}"
        );
        let err = Report::from_scores(&[0], &[vec![1.0]], &["a"]).unwrap_err();
        assert!(err.to_string().contains("`class_names`"), "{err}");
    }

    #[test]
    fn mean_and_sample_sd() {
        let m = MeanSd::of(&[0.8, 0.9, 1.0]).unwrap();
        assert!((m.mean - 0.9).abs() < 1e-15);
        assert!((m.sd - 0.1).abs() < 1e-15);
        assert_eq!(MeanSd::of(&[0.5]).unwrap().sd, 0.0);
        assert!(MeanSd::of(&[]).is_err());
        assert_eq!(
            format!(
                "{}",
                MeanSd {
                    mean: 0.8234,
                    sd: 0.0271
                }
            ),
            "0.82 ± 0.03"
        );
        assert_eq!(
            format!("{:.3}", MeanSd { mean: 0.5, sd: 0.0 }),
            "0.500 ± 0.000"
        );
    }

    #[test]
    fn summary_sums_confusions_and_renders_table() {
        let r = small_report();
        let mut r2 = r.clone();
        r2.macro_f1 = 0.5;
        let s = Summary::from_reports("SimCLR", &[r.clone(), r2]).unwrap();
        assert_eq!(s.n_runs, 2);
        assert_eq!(s.confusion_matrix[2], vec![0, 2, 2]);
        let md = s.to_markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| | F1 | ROC AUC | PR AUC¹ |");
        assert!(lines[2].starts_with("| SimCLR | "), "{md}");
        assert!(lines[2].contains(" ± "), "{md}");
        assert!(
            md.contains("average_precision_score(average=\"macro\")"),
            "{md}"
        );
        assert!(md.contains("ddof = 1"), "{md}");
        assert!(md.contains("SimCLR: 2"), "{md}");
        let cm = s.confusion_markdown();
        assert!(cm.contains("| c | 0 | 2 | 2 |"), "{cm}");
    }

    #[test]
    fn summary_refuses_mixed_classes_and_no_runs() {
        let r = small_report();
        let mut other = r.clone();
        other.class_names[0] = "z".into();
        let err = Summary::from_reports("x", &[r, other]).unwrap_err();
        assert!(err.to_string().contains("run 1 has classes"), "{err}");
        assert!(Summary::from_reports("x", &[]).is_err());
    }

    #[test]
    fn json_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let r = small_report();
        let p = dir.path().join("report.json");
        r.write_json(&p).unwrap();
        let back: Report = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, r);
        let s = Summary::from_reports("x", &[r]).unwrap();
        let p = dir.path().join("summary.json");
        s.write_json(&p).unwrap();
        let back: Summary = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
