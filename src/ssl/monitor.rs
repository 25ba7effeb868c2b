//! What a method learns, measured while it learns.
//!
//! Every `every_steps` steps the loop records the loss, the **effective rank**
//! of the batch's pooled encoder features (RankMe, Garrido et al. 2023: the
//! exponential of the entropy of the normalised singular values; 1 for a
//! collapse onto a line, up to min(B, D) for isotropic features), their
//! **spread** ([`embedding_std`]) and the method's own monitors (SwAV: the
//! prototypes that are some cell's best match; DINO: the teacher's entropy and
//! the KL to the student). Every `probe_every_epochs` epochs (and after the
//! last) it runs the weighted k-NN probe of the encoder being exported on the
//! typed cells of a held-out data set twice: against their **cell types** (what
//! the encoder should learn) and against their **patients** (a probe that
//! identifies patients well has learnt the stain, not the cell).
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Normalization;
use crate::dataset::{Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::model::Encoder;
use crate::ssl::probe::{
    embedding_std, knn_probe, labelled_cells, pooled_features, KnnConfig, LabelledCells,
    ProbeReport,
};

/// When and on what the monitors are measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Rank, spread and the method's monitors every this many steps (0: never).
    pub every_steps: u64,
    /// The k-NN probes every this many epochs and after the last (0: never).
    pub probe_every_epochs: u64,
    /// The data set whose typed cells are probed: cells the method does not
    /// train on (required when probing).
    pub probe_dataset: Option<PathBuf>,
    /// At most this many typed cells (a seeded subset).
    pub probe_cells: usize,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            every_steps: 10,
            probe_every_epochs: 0,
            probe_dataset: None,
            probe_cells: 600,
        }
    }
}

impl MonitorConfig {
    pub fn validate(&self) -> Result<()> {
        if self.probe_every_epochs > 0 && self.probe_dataset.is_none() {
            return Err(Error::invalid(
                "monitor.probe_dataset",
                "required with probe_every_epochs: a data set with typed cells the method \
                 does not train on",
            ));
        }
        if self.probe_cells < 10 {
            return Err(Error::invalid("monitor.probe_cells", "must be at least 10"));
        }
        Ok(())
    }
}

/// The monitors of one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMonitor {
    pub step: u64,
    pub loss: f64,
    /// RankMe of the batch's pooled features (of the first view).
    pub effective_rank: f64,
    /// [`embedding_std`] of the same features.
    pub embedding_std: f64,
    /// The method's own monitors by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub method: BTreeMap<String, f64>,
}

/// The probes after one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeMonitor {
    /// Epochs completed.
    pub epochs: u64,
    pub cell_type: ProbeReport,
    pub patient: ProbeReport,
    /// RankMe of the probe cells' features.
    pub effective_rank: f64,
}

/// RankMe (Garrido, Balestriero, Najman, LeCun 2023): `exp(−Σ p_k log p_k)` with
/// `p_k = σ_k / Σ σ` over the singular values of the `[N, D]` features.
pub fn effective_rank(features: &Tensor) -> Result<f64> {
    let size = features.size();
    if size.len() != 2 || size[0] < 2 {
        return Err(Error::invalid(
            "features",
            format!("expected [N ≥ 2, D] features, got {size:?}"),
        ));
    }
    let (_, sigma, _) = features
        .f_to_kind(Kind::Double)?
        .f_to_device(Device::Cpu)?
        .f_svd(true, false)?;
    let total = sigma.f_sum(Kind::Double)?.f_double_value(&[])?;
    if !(total.is_finite() && total > 0.0) {
        return Ok(0.0);
    }
    let p = sigma / total + 1e-12;
    let entropy = -(&p * p.log()).f_sum(Kind::Double)?.f_double_value(&[])?;
    Ok(entropy.exp())
}

/// The monitors of a step from its loss, its first view's pooled features and
/// the method's own.
pub fn step_monitor(
    step: u64,
    loss: f64,
    features: &Tensor,
    method: Vec<(&'static str, f64)>,
) -> Result<StepMonitor> {
    let features = features.f_to_kind(Kind::Float)?;
    Ok(StepMonitor {
        step,
        loss,
        effective_rank: effective_rank(&features)?,
        embedding_std: embedding_std(&features)?,
        method: method.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
    })
}

/// The held-out typed cells the probes run on, decoded once.
pub struct ProbeCells {
    cells: LabelledCells,
    normalization: Normalization,
}

impl ProbeCells {
    /// The typed cells of `config.probe_dataset` at `size` px.
    pub fn load(config: &MonitorConfig, size: i64, normalization: Normalization) -> Result<Self> {
        let path = config
            .probe_dataset
            .as_ref()
            .ok_or_else(|| Error::invalid("monitor.probe_dataset", "not set"))?;
        let (dataset, _) = Dataset::open(path, &OpenOptions::fail())?;
        Ok(ProbeCells {
            cells: labelled_cells(&dataset, size, Some(config.probe_cells), 0)?,
            normalization,
        })
    }

    /// Both probes of `encoder` (evaluation mode) after `epochs` epochs.
    pub fn probe(&self, encoder: &Encoder, epochs: u64, device: Device) -> Result<ProbeMonitor> {
        let c = &self.cells;
        let f = pooled_features(encoder, &c.images, &self.normalization, 64, device)?;
        probe_features(&f, c, epochs)
    }
}

/// The cell-type and patient probes and the rank of `features` of `cells`.
pub fn probe_features(
    features: &Tensor,
    cells: &LabelledCells,
    epochs: u64,
) -> Result<ProbeMonitor> {
    let knn = KnnConfig::default();
    Ok(ProbeMonitor {
        epochs,
        cell_type: knn_probe(features, &cells.labels, cells.classes.len(), &knn)?,
        patient: knn_probe(features, &cells.patients, cells.patient_ids.len(), &knn)?,
        effective_rank: effective_rank(features)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_of_a_line_a_plane_and_noise() {
        let opts = (Kind::Float, Device::Cpu);
        let dir = Tensor::randn([1, 16], opts);
        let line = Tensor::randn([32, 1], opts).matmul(&dir);
        assert!(effective_rank(&line).unwrap() < 1.05);
        let plane = Tensor::randn([32, 2], opts).matmul(&Tensor::eye(16, opts).narrow(0, 0, 2));
        let r = effective_rank(&plane).unwrap();
        assert!((1.5..=2.0).contains(&r), "{r}");
        let noise = effective_rank(&Tensor::randn([256, 16], opts)).unwrap();
        assert!(noise > 14.0, "{noise}");
        assert!(effective_rank(&Tensor::zeros([1, 4], opts)).is_err());
    }
}
