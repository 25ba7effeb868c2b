//! The metrics module against scikit-learn: fixed and seeded cases go through
//! tests/reference/metrics.py, and every number must agree to 1e-9.
mod common;

use amlmil::metrics::{
    argmax_predictions, average_precision_macro, average_precision_per_class, confusion_matrix,
    macro_f1, precision_recall_f1_support, roc_auc_ovr_macro, roc_auc_ovr_per_class,
    roc_curves_ovr, Report, RocCurve,
};
use serde_json::{json, Value};
use std::path::PathBuf;

const TOL: f64 = 1e-9;

struct Case {
    name: &'static str,
    y_true: Vec<usize>,
    y_score: Vec<Vec<f64>>,
    num_classes: usize,
}

/// 64-bit LCG (Knuth's MMIX constants): deterministic cases without a rand dependency.
struct Lcg(u64);

impl Lcg {
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    /// Uniform in [0, 1) from the 53 high bits.
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() >> 33) as usize % n
    }
}

/// Rows scaled to sum to 1, since scikit-learn's multiclass ROC AUC insists on it.
fn normalise(rows: Vec<Vec<f64>>) -> Vec<Vec<f64>> {
    rows.into_iter()
        .map(|r| {
            let s: f64 = r.iter().sum();
            r.into_iter().map(|v| v / s).collect()
        })
        .collect()
}

/// A noisy classifier: exp of uniform logits plus a bonus for the true class.
/// With `levels`, logits are rounded to that many steps, giving many ties.
fn random_case(name: &'static str, seed: u64, c: usize, levels: Option<f64>) -> Case {
    let mut rng = Lcg(seed);
    let n = 30 + rng.below(71);
    let y_true: Vec<usize> = (0..n)
        .map(|i| if i < c { i } else { rng.below(c) })
        .collect();
    let rows = y_true
        .iter()
        .map(|&t| {
            (0..c)
                .map(|k| {
                    let mut logit = 2.0 * rng.uniform() + if k == t { 1.2 } else { 0.0 };
                    if let Some(l) = levels {
                        logit = (logit * l).round() / l;
                    }
                    f64::exp(logit)
                })
                .collect()
        })
        .collect();
    Case {
        name,
        y_true,
        y_score: normalise(rows),
        num_classes: c,
    }
}

fn cases() -> Vec<Case> {
    // Heavy ties: every row is one of four patterns, so each column has few
    // distinct values shared by positives and negatives.
    let patterns = [
        vec![0.4, 0.15, 0.15, 0.15, 0.15],
        vec![0.15, 0.4, 0.15, 0.15, 0.15],
        vec![0.2, 0.2, 0.2, 0.2, 0.2],
        vec![0.15, 0.15, 0.15, 0.15, 0.4],
    ];
    let mut rng = Lcg(7);
    let mut tie_true = vec![0, 1, 2, 3, 4];
    let mut tie_score: Vec<Vec<f64>> = tie_true.iter().map(|&t| patterns[t % 4].clone()).collect();
    for _ in 0..40 {
        tie_true.push(rng.below(5));
        tie_score.push(patterns[rng.below(4)].clone());
    }

    // Class 3 occurs but is never the arg-max; class 2 is never predicted either.
    let never_true = vec![0, 0, 1, 1, 2, 2, 3, 3, 3, 0, 1];
    let never_score = normalise(vec![
        vec![0.9, 0.1, 0.3, 0.2],
        vec![0.5, 0.4, 0.1, 0.3],
        vec![0.2, 0.7, 0.3, 0.1],
        vec![0.6, 0.6, 0.2, 0.5],
        vec![0.3, 0.4, 0.35, 0.1],
        vec![0.5, 0.2, 0.45, 0.3],
        vec![0.4, 0.3, 0.2, 0.35],
        vec![0.1, 0.5, 0.1, 0.45],
        vec![0.6, 0.1, 0.1, 0.5],
        vec![0.7, 0.2, 0.2, 0.2],
        vec![0.3, 0.3, 0.1, 0.2],
    ]);

    // Class 4 has exactly one positive, ranked in the middle of its column.
    let mut one = random_case("one positive", 11, 4, None);
    one.num_classes = 5;
    one.y_score = normalise(
        one.y_score
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                r.push(if i == 3 {
                    0.3
                } else {
                    0.1 + 0.4 * (i % 3) as f64 / 2.0
                });
                r
            })
            .collect(),
    );
    one.y_true[3] = 4;

    // Class 2 never occurs in y_true: ROC AUC is undefined and must be refused.
    let mut absent = random_case("class absent", 23, 3, None);
    for t in &mut absent.y_true {
        if *t == 2 {
            *t = 1;
        }
    }

    vec![
        Case {
            name: "heavy ties",
            y_true: tie_true,
            y_score: tie_score,
            num_classes: 5,
        },
        Case {
            name: "never predicted",
            y_true: never_true,
            y_score: never_score,
            num_classes: 4,
        },
        one,
        absent,
        Case {
            name: "all rows tied",
            y_true: vec![0, 1, 2, 0, 1, 2, 2],
            y_score: vec![vec![0.25, 0.5, 0.25]; 7],
            num_classes: 3,
        },
        random_case("random 1", 1, 5, None),
        random_case("random 2", 2, 5, None),
        random_case("random 3", 3, 5, None),
        random_case("random quantised 4", 4, 5, Some(2.0)),
        random_case("random quantised 5", 5, 5, Some(4.0)),
        random_case("random 3 classes", 6, 3, None),
    ]
}

fn sklearn(cases: &[Case]) -> Vec<Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("cases.json");
    let output = dir.path().join("sklearn.json");
    let json_cases: Vec<Value> = cases
        .iter()
        .map(|c| json!({"y_true": c.y_true, "y_score": c.y_score, "num_classes": c.num_classes}))
        .collect();
    std::fs::write(&input, serde_json::to_vec(&json_cases).unwrap()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/metrics.py");
    let out = std::process::Command::new(common::python())
        .arg(&script)
        .arg(&input)
        .arg(&output)
        .output()
        .expect("cannot start the Python reference");
    assert!(
        out.status.success(),
        "{} failed:\n{}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn floats(v: &Value) -> Vec<Option<f64>> {
    v.as_array().unwrap().iter().map(Value::as_f64).collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn close(what: &str, got: f64, want: f64) {
    assert!(
        (got - want).abs() <= TOL,
        "{what}: Rust {got} vs scikit-learn {want}"
    );
}

fn close_all(what: &str, got: &[f64], want: &[Option<f64>]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{what}[{k}]"), *g, w.expect("a number"));
    }
}

fn check_curve(what: &str, got: &RocCurve, want: &Value) {
    close_all(&format!("{what} fpr"), &got.fpr, &floats(&want["fpr"]));
    close_all(&format!("{what} tpr"), &got.tpr, &floats(&want["tpr"]));
    let thresholds = floats(&want["thresholds"]);
    assert_eq!(got.thresholds.len(), thresholds.len(), "{what} thresholds");
    for (k, (g, w)) in got.thresholds.iter().zip(&thresholds).enumerate() {
        match w {
            None => assert_eq!(*g, f64::INFINITY, "{what} threshold {k}"),
            Some(w) => close(&format!("{what} threshold {k}"), *g, *w),
        }
    }
}

#[test]
fn metrics_match_scikit_learn() {
    let cases = cases();
    assert!(cases.len() >= 6);
    let reference = sklearn(&cases);
    assert_eq!(reference.len(), cases.len());
    let mut refused = 0;
    for (case, want) in cases.iter().zip(&reference) {
        let (y, s, c) = (&case.y_true, &case.y_score, case.num_classes);
        let what = |m: &str| format!("case `{}`: {m}", case.name);

        let y_pred = argmax_predictions(s, c).unwrap();
        assert_eq!(y_pred, usizes(&want["y_pred"]), "{}", what("argmax"));
        let cm = confusion_matrix(y, &y_pred, c).unwrap();
        let want_cm: Vec<Vec<usize>> = want["confusion_matrix"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        assert_eq!(cm, want_cm, "{}", what("confusion matrix"));
        let prf = precision_recall_f1_support(y, &y_pred, c).unwrap();
        close_all(
            &what("precision"),
            &prf.precision,
            &floats(&want["precision"]),
        );
        close_all(&what("recall"), &prf.recall, &floats(&want["recall"]));
        close_all(&what("f1"), &prf.f1, &floats(&want["f1"]));
        assert_eq!(prf.support, usizes(&want["support"]), "{}", what("support"));
        let f1 = macro_f1(y, &y_pred, c).unwrap();
        close(&what("macro F1"), f1, want["macro_f1"].as_f64().unwrap());

        let ap = average_precision_per_class(y, s, c).unwrap();
        close_all(
            &what("AP"),
            &ap,
            &floats(&want["average_precision_per_class"]),
        );
        let pr_auc = average_precision_macro(y, s, c).unwrap();
        close(&what("PR AUC"), pr_auc, want["pr_auc"].as_f64().unwrap());

        let per_class_want = floats(&want["roc_auc_per_class"]);
        match want["roc_auc"].as_f64() {
            Some(auc) => {
                close(&what("ROC AUC"), roc_auc_ovr_macro(y, s, c).unwrap(), auc);
                close_all(
                    &what("ROC AUC per class"),
                    &roc_auc_ovr_per_class(y, s, c).unwrap(),
                    &per_class_want,
                );
                let curves = roc_curves_ovr(y, s, c).unwrap();
                for (k, curve) in curves.iter().enumerate() {
                    check_curve(
                        &what(&format!("ROC class {k}")),
                        curve,
                        &want["roc_curves"][k],
                    );
                }
                // The bundled report holds the same numbers.
                let names: Vec<String> = (0..c).map(|k| format!("class{k}")).collect();
                let report = Report::from_scores(y, s, &names).unwrap();
                assert_eq!(report.confusion_matrix, cm);
                close(&what("report F1"), report.macro_f1, f1);
                close(&what("report ROC AUC"), report.roc_auc, auc);
                close(&what("report PR AUC"), report.pr_auc, pr_auc);
                assert_eq!(report.roc_curves, curves);
            }
            None => {
                // scikit-learn gives NaN: we must refuse, naming the first bad class.
                refused += 1;
                let bad = per_class_want.iter().position(Option::is_none).unwrap();
                let err = roc_auc_ovr_macro(y, s, c).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("class {bad} ")),
                    "{}: {err}",
                    what("error")
                );
                let names: Vec<String> = (0..c).map(|k| format!("class{k}")).collect();
                let err = Report::from_scores(y, s, &names).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("`class{bad}`")),
                    "{}: {err}",
                    what("error")
                );
            }
        }
    }
    assert_eq!(refused, 1, "exactly the `class absent` case is undefined");
}
