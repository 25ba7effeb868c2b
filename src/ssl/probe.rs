//! k-nearest-neighbour probe of a frozen encoder on labelled cells, and a
//! collapse measure of its embeddings.
//!
//! The probe follows DINO's weighted k-NN classifier (Caron et al. 2021, §4.1;
//! Wu et al. 2018): pooled features are L2-normalised, each query takes its `k`
//! most cosine-similar labelled cells and votes for their labels with weights
//! `exp(s / T)` (T = 0.07). Evaluation is leave-one-out over all labelled cells
//! (the cell itself is excluded from its neighbours) or a seeded train/test
//! split; the report gives accuracy and macro F1 (scikit-learn's definition over
//! the classes present in the truth, [`crate::metrics::macro_f1`]). Labels are
//! the `cells.csv` types, which the synthetic cohorts carry for every cell.
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::nn::{ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Normalization;
use crate::dataset::Dataset;
use crate::error::{Error, Result};
use crate::model::{Encoder, EncoderArch, EncoderNet};
use crate::ssl::train::{decode_cells, init_seeded, normalize_views, to_unit_float};

/// How the probe splits the labelled cells.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeSplit {
    /// Every cell is classified by all the others.
    LeaveOneOut,
    /// A seeded fraction of the cells is classified by the rest.
    TrainTest { test_fraction: f64, seed: u64 },
}

/// Settings of the k-NN probe.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KnnConfig {
    /// Neighbours (DINO: 20; 5 for small sets).
    pub k: usize,
    /// Temperature of the vote weights `exp(s / T)`.
    pub temperature: f64,
    pub split: ProbeSplit,
}

impl Default for KnnConfig {
    fn default() -> Self {
        KnnConfig {
            k: 5,
            temperature: 0.07,
            split: ProbeSplit::LeaveOneOut,
        }
    }
}

/// Result of [`knn_probe`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub k: usize,
    /// Cells classified.
    pub queries: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
}

/// Labelled cells decoded at one size, with class indices into `classes`.
#[derive(Debug)]
pub struct LabelledCells {
    /// `[N, 3, S, S]` u8.
    pub images: Tensor,
    pub labels: Vec<usize>,
    /// Cell-type names, sorted.
    pub classes: Vec<String>,
    /// Patient index of each cell into `patient_ids`.
    pub patients: Vec<usize>,
    /// Patient ids, sorted.
    pub patient_ids: Vec<String>,
}

/// The cells of `dataset` that have a `cells.csv` type (a seeded subset of at
/// most `max_cells`), decoded at `size` px.
pub fn labelled_cells(
    dataset: &Dataset,
    size: i64,
    max_cells: Option<usize>,
    seed: u64,
) -> Result<LabelledCells> {
    let cache = decode_cells(dataset, size, max_cells, true, seed, 0, &mut |_, _| true)?;
    let mut classes: Vec<String> = cache.cell_types.iter().flatten().cloned().collect();
    classes.sort();
    classes.dedup();
    if classes.len() < 2 {
        return Err(Error::Dataset {
            path: dataset.root().to_path_buf(),
            reason: format!(
                "the k-NN probe needs cells of at least 2 types in cells.csv, found {}",
                classes.len()
            ),
        });
    }
    let labels = cache
        .cell_types
        .iter()
        .map(|t| {
            let t = t.as_deref().unwrap_or_default();
            classes.binary_search_by(|c| c.as_str().cmp(t)).unwrap_or(0)
        })
        .collect();
    let mut patient_ids: Vec<String> = cache.ids.iter().map(|(p, _)| p.clone()).collect();
    patient_ids.sort();
    patient_ids.dedup();
    let patients = cache
        .ids
        .iter()
        .map(|(p, _)| patient_ids.binary_search(p).unwrap_or(0))
        .collect();
    Ok(LabelledCells {
        images: cache.images,
        labels,
        classes,
        patients,
        patient_ids,
    })
}

/// Pooled features `[N, C]` (f32, CPU) of u8 images in evaluation mode.
pub fn pooled_features(
    encoder: &dyn ModuleT,
    images: &Tensor,
    norm: &Normalization,
    batch_size: usize,
    device: Device,
) -> Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let n = images.size()[0];
    let mut out = Vec::new();
    let b = batch_size.max(1) as i64;
    for start in (0..n).step_by(b as usize) {
        let x = to_unit_float(&images.narrow(0, start, b.min(n - start)), device)?;
        let x = normalize_views(&[x], norm)?.remove(0);
        out.push(encoder.forward_t(&x, false).to_device(Device::Cpu));
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

/// A seeded random encoder whose batch-norm statistics are those of `images`
/// (one training-mode pass with momentum 1): the fair "untrained" baseline, as
/// an encoder with running statistics (0, 1) misscales every layer.
pub fn calibrated_random_encoder(
    arch: EncoderArch,
    seed: u64,
    images: &Tensor,
    norm: &Normalization,
) -> Result<(Encoder, VarStore)> {
    let vs = VarStore::new(Device::Cpu);
    let encoder = Encoder::with_batch_norm_momentum(&vs.root(), arch, 1.0);
    init_seeded(&vs, seed)?;
    let n = images.size()[0].min(256);
    let x = normalize_views(
        &[to_unit_float(&images.narrow(0, 0, n), Device::Cpu)?],
        norm,
    )?;
    let _ = tch::no_grad(|| encoder.forward_t(&x[0], true));
    Ok((encoder, vs))
}

/// Mean over dimensions of the standard deviation of L2-normalised features
/// `[N, D]` across the batch: 0 for collapsed embeddings, about `1/√D` for
/// isotropic ones (the collapse measure of SimSiam, Chen & He 2021).
pub fn embedding_std(features: &Tensor) -> Result<f64> {
    let norm = features
        .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
        .clamp_min(1e-12);
    let z = features.f_div(&norm)?;
    Ok(z.f_std_dim([0i64].as_slice(), true, false)?
        .f_mean(Kind::Float)?
        .f_double_value(&[])?)
}

/// Weighted cosine k-NN of `features` `[N, D]` with `labels` (classes
/// `0..num_classes`).
pub fn knn_probe(
    features: &Tensor,
    labels: &[usize],
    num_classes: usize,
    config: &KnnConfig,
) -> Result<ProbeReport> {
    let size = features.size();
    if size.len() != 2 || size[0] as usize != labels.len() {
        return Err(Error::invalid(
            "features",
            format!(
                "shape {size:?} for {} labels; expected [N, D]",
                labels.len()
            ),
        ));
    }
    if config.k == 0 || config.temperature.is_nan() || config.temperature <= 0.0 {
        return Err(Error::invalid("k", "k ≥ 1 and temperature > 0 required"));
    }
    if let Some(&bad) = labels.iter().find(|&&l| l >= num_classes) {
        return Err(Error::invalid(
            "labels",
            format!("label {bad} ≥ {num_classes} classes"),
        ));
    }
    let n = labels.len();
    let (queries, train): (Vec<usize>, Vec<usize>) = match config.split {
        ProbeSplit::LeaveOneOut => ((0..n).collect(), (0..n).collect()),
        ProbeSplit::TrainTest {
            test_fraction,
            seed,
        } => {
            if !(0.0 < test_fraction && test_fraction < 1.0) {
                return Err(Error::invalid("test_fraction", "must be in (0, 1)"));
            }
            let mut order: Vec<usize> = (0..n).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
            let n_test = ((n as f64 * test_fraction).round() as usize).clamp(1, n - 1);
            let train = order.split_off(n_test);
            (order, train)
        }
    };
    let k = config
        .k
        .min(train.len() - usize::from(config.split == ProbeSplit::LeaveOneOut));
    if k == 0 {
        return Err(Error::invalid("features", "too few cells for a neighbour"));
    }
    let _guard = tch::no_grad_guard();
    let f = features.to_kind(Kind::Float);
    let f = &f
        / f.norm_scalaropt_dim(2.0, [1i64].as_slice(), true)
            .clamp_min(1e-12);
    let index = |v: &[usize]| Tensor::from_slice(&v.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let q = f.index_select(0, &index(&queries));
    let t = f.index_select(0, &index(&train));
    let mut sim = q.matmul(&t.tr());
    if config.split == ProbeSplit::LeaveOneOut {
        // A cell is not its own neighbour.
        let _ = sim.fill_diagonal_(f64::NEG_INFINITY, false);
    }
    let (top, idx) = sim.topk(k as i64, 1, true, true);
    let weights = Vec::<f64>::try_from(
        (top / config.temperature)
            .exp()
            .to_kind(Kind::Double)
            .flatten(0, -1),
    )?;
    let idx = Vec::<i64>::try_from(idx.flatten(0, -1))?;
    let mut predicted = Vec::with_capacity(queries.len());
    for row in 0..queries.len() {
        let mut votes = vec![0.0; num_classes];
        for j in 0..k {
            let neighbour = train[idx[row * k + j] as usize];
            votes[labels[neighbour]] += weights[row * k + j];
        }
        let best = (0..num_classes)
            .max_by(|&a, &b| votes[a].total_cmp(&votes[b]).then(b.cmp(&a)))
            .unwrap_or(0);
        predicted.push(best);
    }
    let truth: Vec<usize> = queries.iter().map(|&i| labels[i]).collect();
    let correct = truth.iter().zip(&predicted).filter(|(a, b)| a == b).count();
    // Macro F1 over the classes that occur in the truth.
    let mut present: Vec<usize> = truth.clone();
    present.sort_unstable();
    present.dedup();
    let remap = |c: usize| present.binary_search(&c).unwrap_or(present.len());
    let t2: Vec<usize> = truth.iter().map(|&c| remap(c)).collect();
    let p2: Vec<usize> = predicted.iter().map(|&c| remap(c)).collect();
    // Predictions of absent classes count as errors in an extra column.
    let f1 = crate::metrics::precision_recall_f1_support(&t2, &p2, present.len() + 1)?;
    let macro_f1 = f1.f1[..present.len()].iter().sum::<f64>() / present.len() as f64;
    Ok(ProbeReport {
        k,
        queries: queries.len(),
        accuracy: correct as f64 / queries.len() as f64,
        macro_f1,
    })
}

/// Probes an encoder checkpoint on the typed cells of `dataset` (at the
/// checkpoint's input size) on the CPU.
pub fn probe_checkpoint(
    path: &std::path::Path,
    dataset: &Dataset,
    config: &KnnConfig,
    max_cells: Option<usize>,
) -> Result<ProbeReport> {
    Ok(compare_with_random(path, dataset, config, max_cells, None)?.encoder)
}

/// [`probe_checkpoint`] and, optionally, the same probe on the same cells for
/// a seeded random encoder of the checkpoint's architecture
/// ([`calibrated_random_encoder`]): the "better than chance features" check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeComparison {
    pub encoder: ProbeReport,
    /// The random encoder's report (when a seed was given).
    pub random: Option<ProbeReport>,
    /// [`embedding_std`] of the encoder's features (and the random one's).
    pub embedding_std: f64,
    pub random_embedding_std: Option<f64>,
    /// The same probe against the cells' patients: high when the features
    /// identify the patient (the stain) rather than the cell.
    #[serde(default)]
    pub patient: Option<ProbeReport>,
    #[serde(default)]
    pub random_patient: Option<ProbeReport>,
    /// Effective rank (RankMe) of the probe cells' features, and the random
    /// encoder's ([`crate::ssl::monitor::effective_rank`]).
    #[serde(default)]
    pub effective_rank: Option<f64>,
    #[serde(default)]
    pub random_effective_rank: Option<f64>,
    /// Cell types, sorted (the classes of the probe).
    pub classes: Vec<String>,
}

/// Probes the encoder checkpoint at `path` and, when `random_seed` is given,
/// a random encoder on the same cells (CPU).
pub fn compare_with_random(
    path: &std::path::Path,
    dataset: &Dataset,
    config: &KnnConfig,
    max_cells: Option<usize>,
    random_seed: Option<u64>,
) -> Result<ProbeComparison> {
    let (encoder, manifest, _vs) = crate::frozen::load_encoder(path, Device::Cpu)?;
    let cells = labelled_cells(dataset, manifest.input_size, max_cells, 0)?;
    let norm = &manifest.normalization;
    let probe = |encoder: &dyn ModuleT| -> Result<(ProbeReport, f64, ProbeReport, f64)> {
        let f = pooled_features(encoder, &cells.images, norm, 64, Device::Cpu)?;
        Ok((
            knn_probe(&f, &cells.labels, cells.classes.len(), config)?,
            embedding_std(&f)?,
            knn_probe(&f, &cells.patients, cells.patient_ids.len(), config)?,
            crate::ssl::monitor::effective_rank(&f)?,
        ))
    };
    let (report, std, patient, rank) = probe(&encoder)?;
    let random = match random_seed {
        Some(seed) => {
            let random = match &manifest.vit {
                // A ViT has no batch-norm statistics to calibrate.
                Some(vit) => EncoderNet::Vit(crate::model::init::random_vit(vit, seed).0),
                None => EncoderNet::ResNet(
                    calibrated_random_encoder(manifest.architecture, seed, &cells.images, norm)?.0,
                ),
            };
            Some(probe(&random)?)
        }
        None => None,
    };
    Ok(ProbeComparison {
        encoder: report,
        embedding_std: std,
        random_embedding_std: random.as_ref().map(|r| r.1),
        patient: Some(patient),
        random_patient: random.as_ref().map(|r| r.2.clone()),
        effective_rank: Some(rank),
        random_effective_rank: random.as_ref().map(|r| r.3),
        random: random.map(|r| r.0),
        classes: cells.classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knn_on_separable_clusters() {
        // Two clusters along different axes plus noise: perfect k-NN.
        let a = Tensor::from_slice(&[1.0f32, 0.0, 0.0])
            .view([1, 3])
            .repeat([6, 1]);
        let b = Tensor::from_slice(&[0.0f32, 1.0, 0.0])
            .view([1, 3])
            .repeat([6, 1]);
        let noise = Tensor::arange(36, (Kind::Float, Device::Cpu))
            .view([12, 3])
            .sin()
            * 0.1;
        let f = Tensor::cat(&[a, b], 0) + noise;
        let labels: Vec<usize> = (0..12).map(|i| i / 6).collect();
        let r = knn_probe(&f, &labels, 2, &KnnConfig::default()).unwrap();
        assert_eq!((r.accuracy, r.macro_f1, r.queries), (1.0, 1.0, 12));
        let split = KnnConfig {
            split: ProbeSplit::TrainTest {
                test_fraction: 0.25,
                seed: 1,
            },
            ..KnnConfig::default()
        };
        let r = knn_probe(&f, &labels, 2, &split).unwrap();
        assert_eq!((r.accuracy, r.queries), (1.0, 3));
        assert!(knn_probe(&f, &labels[..3], 2, &split).is_err());
        // Identical features: collapsed.
        assert!(embedding_std(&Tensor::ones([4, 8], (Kind::Float, Device::Cpu))).unwrap() < 1e-6);
    }
}
