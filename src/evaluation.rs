//! A deployed model on a labelled data set: every patient classified by one
//! session, with the metrics the cross-validation reports (macro F1,
//! accuracy, macro one-vs-rest ROC AUC) — how a lab checks a model on a
//! cohort that neither pre-training nor any fold has seen.
use serde::Serialize;

use crate::bag::Bag;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::inference::Session;
use crate::metrics::{argmax_predictions, macro_f1, roc_auc_ovr_macro};

/// One patient's diagnosis beside its label.
#[derive(Debug, Clone, Serialize)]
pub struct PatientResult {
    pub patient: String,
    pub label: String,
    pub predicted: String,
    /// Class probabilities in the model's class order.
    pub probabilities: Vec<f32>,
    pub cells: usize,
}

/// Every patient's result and the metrics over them.
#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    /// The model's classes, in output order.
    pub classes: Vec<String>,
    pub patients: Vec<PatientResult>,
    pub macro_f1: f64,
    pub accuracy: f64,
    /// `None` when some class has no patient (the AUC is undefined).
    pub roc_auc: Option<f64>,
    /// Heads in the MIL checkpoint (an ensemble's K).
    pub heads: usize,
}

/// Classifies every patient of `dataset` with `session`; `progress` sees
/// patients done of all and may cancel by returning `false`.
pub fn evaluate(
    session: &Session,
    dataset: &Dataset,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Evaluation> {
    let classes = session.classes().to_vec();
    let total = dataset.patients().len();
    let mut patients = Vec::with_capacity(total);
    let (mut truth, mut scores) = (Vec::new(), Vec::new());
    for (i, p) in dataset.patients().iter().enumerate() {
        let label = classes
            .iter()
            .position(|c| *c == p.bag_label)
            .ok_or_else(|| {
                Error::Mismatch(format!(
                    "patient {} is labelled `{}`, which the model's classes {:?} do not include",
                    p.id, p.bag_label, classes
                ))
            })?;
        let mut bag = Bag::new();
        for cell in p.load_cells()? {
            bag.add(cell.0, cell.1)?;
        }
        let r = session.classify(&bag, &mut |_, _, _| true)?;
        truth.push(label);
        scores.push(
            r.probabilities
                .iter()
                .map(|&v| v as f64)
                .collect::<Vec<f64>>(),
        );
        patients.push(PatientResult {
            patient: p.id.clone(),
            label: p.bag_label.clone(),
            predicted: classes[r.predicted].clone(),
            probabilities: r.probabilities,
            cells: bag.len(),
        });
        if !progress(i + 1, total) {
            return Err(Error::Cancelled(format!(
                "evaluation after {} of {total} patients",
                i + 1
            )));
        }
    }
    if patients.is_empty() {
        return Err(Error::invalid("dataset", "has no patients"));
    }
    let predicted = argmax_predictions(&scores, classes.len())?;
    let correct = predicted.iter().zip(&truth).filter(|(a, b)| a == b).count();
    Ok(Evaluation {
        macro_f1: macro_f1(&truth, &predicted, classes.len())?,
        accuracy: correct as f64 / truth.len() as f64,
        roc_auc: roc_auc_ovr_macro(&truth, &scores, classes.len()).ok(),
        heads: session.mil_manifest().head_count(),
        classes,
        patients,
    })
}
