//! Cross-validation of the attention-MIL head (DESIGN §2 "Evaluation"): for each
//! seed, stratified folds with the 60/20/20 rotation; per run a checkpoint,
//! per-patient predictions, per-cell attention for the test patients and the
//! learning curve; over all runs the metrics summary (mean ± sd), plots, the
//! attention analysis and a gallery of each test patient's top-ranked cells.
//!
//! Output layout:
//! ```text
//! OUT/features/                      feature cache (unless `features` names one)
//! OUT/runs/seed<S>_fold<F>/mil.safetensors
//!                         predictions.csv    patient, true label, predicted, p_<class>…
//!                         attention.csv      patient, cell, image, cell type, att_<class>…, raw_<class>…
//!                         learning_curve.csv epoch, lr, train/validation loss, accuracy, steps
//!                         metrics.json       scikit-learn-identical metrics of the test fold
//!                         run.json           status (complete | incomplete), best epoch, …
//! OUT/summary.json, summary.md       mean ± sd over runs (Table 1 shape)
//! OUT/roc.png, confusion.png (+ .legend.json)
//! OUT/attention.json                 mean attention per cell type, abnormal-vs-normal AUC
//! OUT/gallery/<patient>.png          top cells for the predicted class (first seed)
//! OUT/report.json                    everything above in one JSON; `complete` flag
//! ```
//!
//! Crash-safe: every file is written atomically; a run is finished when its
//! `run.json` says `complete` (written last, and marked incomplete before a
//! retraining replaces its files), the whole when `report.json` says
//! `complete` (rewritten incomplete when a cross-validation starts). A rerun
//! after a kill reuses the feature cache and the finished runs, retrains the
//! rest with the same seeds and so ends with the same files.
use std::path::{Path, PathBuf};

use serde::Serialize;
use tch::{Device, Kind};

use super::attention::AttentionAnalysis;
use super::config::CvConfig;
use super::mil::{evaluate, head_config, train_mil, TrainBag, TrainEvent};
use crate::checkpoint::{self, Manifest, MilManifest, Provenance};
use crate::classes::BAG_LABELS;
use crate::dataset::{Dataset, FoldSplit, OpenOptions};
use crate::error::{Error, Result};
use crate::features::{extract_features, ExtractOptions, FeatureCache};
use crate::frozen::EncoderOptions;
use crate::io::write_atomic;
use crate::metrics::{self, Report, Summary};
use crate::model::AttentionMil;

/// Progress of a cross-validation, for progress bars and the C callback.
#[derive(Debug, Clone, Copy)]
pub enum CvEvent<'a> {
    /// Feature extraction: patients done of total.
    Extract { done: usize, total: usize },
    /// Training of run `run` (0-based, of `runs`) = (seed, fold).
    Train {
        run: usize,
        runs: usize,
        seed: u64,
        fold: usize,
        event: &'a TrainEvent,
    },
    /// Writing the summary.
    Report,
}

impl CvEvent<'_> {
    /// `(done, total, what they count, loss)` for a progress display; the loss
    /// is NaN outside training.
    pub fn describe(&self) -> (u64, u64, String, f64) {
        match *self {
            CvEvent::Extract { done, total } => (
                done as u64,
                total as u64,
                "extracting features (patients)".into(),
                f64::NAN,
            ),
            CvEvent::Train {
                run,
                runs,
                seed,
                fold,
                event,
            } => (
                event.bag as u64,
                event.bags as u64,
                format!(
                    "run {}/{runs} seed {seed} fold {fold} epoch {}/{} (bags)",
                    run + 1,
                    event.epoch + 1,
                    event.epochs
                ),
                event.loss,
            ),
            CvEvent::Report => (0, 1, "writing the report".into(), f64::NAN),
        }
    }
}

/// Per-run numbers in the report.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct RunSummary {
    pub seed: u64,
    pub fold: usize,
    pub dir: PathBuf,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub optimizer_steps: usize,
    pub stopped_early: bool,
    pub first_train_loss: f64,
    pub best_train_loss: f64,
    pub macro_f1: f64,
    pub roc_auc: f64,
    pub pr_auc: f64,
}

/// The JSON report of a cross-validation.
#[derive(Debug, Clone, Serialize)]
pub struct CvReport {
    pub complete: bool,
    pub output: PathBuf,
    pub features: PathBuf,
    pub classes: Vec<String>,
    pub runs: Vec<RunSummary>,
    pub summary: Option<Summary>,
    pub attention: AttentionAnalysis,
    pub config: CvConfig,
    /// Every run's test-fold metrics, in run order (also each run's `metrics.json`).
    #[serde(skip)]
    pub run_metrics: Vec<Report>,
    /// Every test prediction of every run: (true class, probabilities).
    #[serde(skip)]
    pub test_predictions: Vec<(usize, Vec<f64>)>,
    /// Runs found finished on disk and reloaded rather than trained.
    pub runs_reloaded: usize,
}

fn write_csv(path: &Path, header: &[String], rows: &[Vec<String>]) -> Result<()> {
    let mut text = header.join(",");
    text.push('\n');
    for r in rows {
        text.push_str(&r.join(","));
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::invalid("report", e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io("cannot create directory", path, e))
}

/// Test-set output of one run, kept for the analysis across runs.
pub(super) struct TestOutput {
    patient: usize,
    probabilities: Vec<f64>,
    /// `[C × N]` softmax attention.
    attention: Vec<f32>,
}

fn predict(
    mil: &AttentionMil,
    bag: &TrainBag,
    device: Device,
) -> Result<(Vec<f64>, Vec<f32>, Vec<f32>)> {
    let _g = tch::no_grad_guard();
    let out = mil.forward_bag(&bag.plain(device), false);
    let v = |t: &tch::Tensor| {
        Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))
    };
    let probs = v(&out.probabilities)?.into_iter().map(f64::from).collect();
    Ok((probs, v(&out.attention)?, v(&out.attention_raw)?))
}

/// Data, features and model shape shared by the runs of an experiment.
pub(super) struct Prepared {
    pub(super) dataset: Dataset,
    cache: FeatureCache,
    bags: Vec<TrainBag>,
    classes: Vec<String>,
    head: crate::model::MilConfig,
    device: Device,
    features_dir: PathBuf,
}

/// Opens and checks the data set, makes or opens the feature cache, loads it.
pub(super) fn prepare(
    config: &CvConfig,
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<Prepared> {
    config.validate()?;
    let device = config.device.resolve()?;
    let (dataset, issues) = Dataset::open(&config.dataset, &OpenOptions::fail())?;
    for issue in issues {
        log::warn!("{issue}");
    }
    let labels = dataset.labels();
    let present: std::collections::BTreeSet<usize> = labels.iter().copied().collect();
    if present.len() < 2 {
        return Err(Error::Dataset {
            path: config.dataset.clone(),
            reason: format!(
                "only one class ({}) present; classification needs at least two",
                BAG_LABELS[labels[0]]
            ),
        });
    }
    // Fails with the class and counts when a class has fewer patients than folds.
    dataset
        .folds(config.folds, config.seeds[0])
        .map_err(|e| Error::Dataset {
            path: config.dataset.clone(),
            reason: e.to_string(),
        })?;

    create_dir(&config.output)?;
    let probe = config.output.join(".amlmil-write-test");
    write_atomic(&probe, b"ok")?;
    let _ = std::fs::remove_file(&probe);
    crate::io::remove_stale_temps(&config.output)?;

    let features_dir = config
        .features
        .clone()
        .unwrap_or_else(|| config.output.join("features"));
    let (cache, bags) = features_and_bags(
        config,
        &dataset,
        &config.encoder,
        &features_dir,
        config.features.is_some(),
        progress,
    )?;
    // The classes present, in the fixed order; labels index into this list.
    let classes: Vec<String> = present.iter().map(|&c| BAG_LABELS[c].to_string()).collect();
    let head = head_config(
        &config.training,
        cache.manifest().feature_map,
        classes.len(),
    );
    head.validate()?;
    Ok(Prepared {
        dataset,
        cache,
        bags,
        classes,
        head,
        device,
        features_dir,
    })
}

/// The feature cache of `encoder` (opened when `existing`, else made or
/// resumed in `features_dir`) and every patient's bag from it.
fn features_and_bags(
    config: &CvConfig,
    dataset: &Dataset,
    encoder: &Path,
    features_dir: &Path,
    existing: bool,
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<(FeatureCache, Vec<TrainBag>)> {
    let cache = if existing {
        FeatureCache::open(features_dir, Some(encoder))?
    } else {
        let options = ExtractOptions {
            flips: config.training.flips,
            encoder: EncoderOptions {
                device: config.device,
                ..Default::default()
            },
        };
        extract_features(
            dataset,
            encoder,
            features_dir,
            &options,
            &mut |_, done, total| progress(CvEvent::Extract { done, total }),
        )?
    };
    if config.training.flips && cache.manifest().flips.len() < 4 {
        return Err(Error::Mismatch(format!(
            "training.flips is on but the feature cache {} holds no flip variants; extract with flips",
            features_dir.display()
        )));
    }
    let present: std::collections::BTreeSet<usize> = dataset.labels().into_iter().collect();
    let bags = dataset
        .patients()
        .iter()
        .map(|p| {
            let f = cache.load(&p.id)?;
            Ok(TrainBag {
                patient_id: p.id.clone(),
                label: present
                    .iter()
                    .position(|&c| c == p.class_index)
                    .unwrap_or(0),
                cell_ids: f.cell_ids,
                maps: f.maps,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((cache, bags))
}

impl Prepared {
    /// The same runs on the features of another encoder (a fold's own),
    /// cached in `features_dir`.
    fn with_encoder(
        &self,
        config: &CvConfig,
        encoder: &Path,
        features_dir: PathBuf,
        progress: &mut dyn FnMut(CvEvent) -> bool,
    ) -> Result<Prepared> {
        let (cache, bags) = features_and_bags(
            config,
            &self.dataset,
            encoder,
            &features_dir,
            false,
            progress,
        )?;
        if cache.manifest().feature_map != self.cache.manifest().feature_map {
            return Err(Error::Mismatch(format!(
                "fold encoder {} gives feature maps {:?}, the others {:?}",
                encoder.display(),
                cache.manifest().feature_map,
                self.cache.manifest().feature_map
            )));
        }
        Ok(Prepared {
            dataset: self.dataset.clone(),
            cache,
            bags,
            classes: self.classes.clone(),
            head: self.head.clone(),
            device: self.device,
            features_dir,
        })
    }
}

/// Trains fold `split` of `seed` and writes its run directory.
pub(super) fn run_fold(
    p: &Prepared,
    config: &CvConfig,
    seed: u64,
    split: &FoldSplit,
    (run, runs_total): (usize, usize),
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<(RunSummary, Report, Vec<TestOutput>, bool)> {
    let (dataset, bags, classes, device) = (&p.dataset, &p.bags, &p.classes, p.device);
    let mut tests = Vec::new();
    let dir = config.output.join("runs").join(run_name(seed, split.fold));
    create_dir(&dir)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| &bags[i]).collect::<Vec<_>>();
    let (train, val, test) = (
        pick(&split.train),
        pick(&split.validation),
        pick(&split.test),
    );
    let encoder_file_sha256 = &p.cache.manifest().encoder_file_sha256;
    let finished = finished_run(&dir, config, encoder_file_sha256, device);
    let reloaded = finished.is_some();
    let (mil, trained_summary) = match finished {
        Some(done) => {
            log::info!("{}: finished before, reloaded", dir.display());
            done
        }
        None => train_run(
            p,
            config,
            seed,
            split,
            &train,
            &val,
            &dir,
            (run, runs_total),
            progress,
        )?,
    };

    // Predictions and attention of the test patients.
    let mut pred_rows = Vec::new();
    let mut att_rows = Vec::new();
    let mut y_true = Vec::new();
    let mut y_score = Vec::new();
    for (&pi, bag) in split.test.iter().zip(&test) {
        let (probs, att, raw) = predict(&mil, bag, device)?;
        let predicted =
            metrics::argmax_predictions(std::slice::from_ref(&probs), classes.len())?[0];
        let mut row = vec![
            bag.patient_id.clone(),
            classes[bag.label].clone(),
            classes[predicted].clone(),
        ];
        row.extend(probs.iter().map(|p| format!("{p:.6}")));
        pred_rows.push(row);
        let patient = &dataset.patients()[pi];
        let n = bag.num_cells();
        for (k, &cell_id) in bag.cell_ids.iter().enumerate() {
            let rec = patient.cell(cell_id);
            let mut row = vec![
                bag.patient_id.clone(),
                cell_id.to_string(),
                rec.map(|r| r.file_name()).unwrap_or_default(),
                rec.and_then(|r| r.cell_type.clone()).unwrap_or_default(),
            ];
            row.extend((0..classes.len()).map(|c| format!("{:.6e}", att[c * n + k])));
            row.extend((0..classes.len()).map(|c| format!("{:.6}", raw[c * n + k])));
            att_rows.push(row);
        }
        y_true.push(bag.label);
        y_score.push(probs.clone());
        tests.push(TestOutput {
            patient: pi,
            probabilities: probs,
            attention: att,
        });
    }
    let mut header: Vec<String> = ["patient_id", "true_label", "predicted_label"]
        .map(String::from)
        .to_vec();
    header.extend(classes.iter().map(|c| format!("p_{c}")));
    write_csv(&dir.join("predictions.csv"), &header, &pred_rows)?;
    let mut header: Vec<String> = ["patient_id", "cell_id", "image", "cell_type"]
        .map(String::from)
        .to_vec();
    header.extend(classes.iter().map(|c| format!("attention_{c}")));
    header.extend(classes.iter().map(|c| format!("raw_attention_{c}")));
    write_csv(&dir.join("attention.csv"), &header, &att_rows)?;
    // Stratified chunks put every class in every test fold, so ROC AUC is defined.
    let metrics = Report::from_scores(&y_true, &y_score, classes)?;
    metrics.write_json(&dir.join("metrics.json"))?;
    let (test_loss, test_acc) = evaluate(&mil, &test, device)?;
    let run_summary = RunSummary {
        macro_f1: metrics.macro_f1,
        roc_auc: metrics.roc_auc,
        pr_auc: metrics.pr_auc,
        ..trained_summary.run
    };
    write_json(
        &dir.join("run.json"),
        &serde_json::json!({"status": "complete", "run": run_summary, "test_loss": test_loss, "test_accuracy": test_acc,
            "best_validation_loss": trained_summary.best_validation_loss,
            "encoder_file_sha256": encoder_file_sha256, "training": config.training}),
    )?;
    Ok((run_summary, metrics, tests, reloaded))
}

/// What a run's training left for its summary (read back from `run.json` on resume).
struct TrainedSummary {
    run: RunSummary,
    best_validation_loss: f64,
}

/// A run directory whose `run.json` says complete for the same training
/// configuration and encoder features, with its checkpoint: reloaded instead of
/// retrained when an experiment is run again.
fn finished_run(
    dir: &Path,
    config: &CvConfig,
    encoder_file_sha256: &str,
    device: Device,
) -> Option<(AttentionMil, TrainedSummary)> {
    let text = std::fs::read_to_string(dir.join("run.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let same = v["status"] == "complete"
        && v["encoder_file_sha256"] == encoder_file_sha256
        && v["training"] == serde_json::to_value(&config.training).ok()?;
    if !same {
        return None;
    }
    let run: RunSummary = serde_json::from_value(v["run"].clone()).ok()?;
    let (heads, _, _vars) = crate::frozen::load_mil(&dir.join("mil.safetensors"), device).ok()?;
    let mil = heads.into_single()?;
    Some((
        mil,
        TrainedSummary {
            run,
            best_validation_loss: v["best_validation_loss"].as_f64().unwrap_or(f64::NAN),
        },
    ))
}

/// Trains one run and writes its checkpoint and learning curve.
#[allow(clippy::too_many_arguments)]
fn train_run(
    p: &Prepared,
    config: &CvConfig,
    seed: u64,
    split: &FoldSplit,
    train: &[&TrainBag],
    val: &[&TrainBag],
    dir: &Path,
    (run, runs_total): (usize, usize),
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<(AttentionMil, TrainedSummary)> {
    let (classes, head, device) = (&p.classes, &p.head, p.device);
    // Before the checkpoint is replaced: a `run.json` of an earlier
    // configuration must never say complete beside this run's files.
    write_json(
        &dir.join("run.json"),
        &serde_json::json!({"status": "incomplete", "seed": seed, "fold": split.fold}),
    )?;
    let result = train_mil(
        &config.training,
        head,
        train,
        val,
        seed * 1000 + split.fold as u64,
        device,
        &mut |e| {
            progress(CvEvent::Train {
                run,
                runs: runs_total,
                seed,
                fold: split.fold,
                event: e,
            })
        },
    );
    let trained = match result {
        Ok(t) => t,
        Err(e) => {
            // Leave the run visibly incomplete.
            write_json(
                &dir.join("run.json"),
                &serde_json::json!({"status": "incomplete", "seed": seed, "fold": split.fold, "error": e.to_string()}),
            )?;
            return Err(e);
        }
    };

    // Checkpoint of the best state.
    let mut provenance = Provenance::new("mil", Some(seed));
    provenance.details.insert("fold".into(), split.fold.into());
    provenance
        .details
        .insert("best_epoch".into(), trained.best_epoch.into());
    provenance.details.insert(
        "encoder_file_sha256".into(),
        p.cache.manifest().encoder_file_sha256.clone().into(),
    );
    provenance.details.insert(
        "training".into(),
        serde_json::to_value(&config.training).unwrap_or_default(),
    );
    let manifest = MilManifest::new(
        head.clone(),
        classes.clone(),
        p.cache.manifest().input_size,
        provenance,
    );
    checkpoint::save(
        &dir.join("mil.safetensors"),
        &Manifest::Mil(manifest),
        &trained.vars,
    )?;

    let header: Vec<String> = [
        "epoch",
        "learning_rate",
        "train_loss",
        "validation_loss",
        "validation_accuracy",
        "optimizer_steps",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = trained
        .curve
        .iter()
        .map(|r| {
            vec![
                r.epoch.to_string(),
                format!("{:.6}", r.learning_rate),
                format!("{:.6}", r.train_loss),
                format!("{:.6}", r.validation_loss),
                format!("{:.4}", r.validation_accuracy),
                r.optimizer_steps.to_string(),
            ]
        })
        .collect();
    write_csv(&dir.join("learning_curve.csv"), &header, &rows)?;
    let run = RunSummary {
        seed,
        fold: split.fold,
        dir: dir.to_path_buf(),
        best_epoch: trained.best_epoch,
        epochs_run: trained.curve.len(),
        optimizer_steps: trained.curve.last().map_or(0, |r| r.optimizer_steps),
        stopped_early: trained.stopped_early,
        first_train_loss: trained.curve.first().map_or(f64::NAN, |r| r.train_loss),
        best_train_loss: trained
            .curve
            .iter()
            .map(|r| r.train_loss)
            .fold(f64::INFINITY, f64::min),
        macro_f1: f64::NAN,
        roc_auc: f64::NAN,
        pr_auc: f64::NAN,
    };
    Ok((
        trained.mil,
        TrainedSummary {
            run,
            best_validation_loss: trained.best_validation_loss,
        },
    ))
}

/// The name of the run of `fold` with `seed` (its folder under `runs/`).
pub fn run_name(seed: u64, fold: usize) -> String {
    format!("seed{seed}_fold{fold}")
}

/// An unfinished report of `config`'s runs on `p`'s features.
fn open_report(config: &CvConfig, p: &Prepared) -> CvReport {
    CvReport {
        complete: false,
        output: config.output.clone(),
        features: p.features_dir.clone(),
        classes: p.classes.clone(),
        runs: Vec::new(),
        summary: None,
        attention: AttentionAnalysis::default(),
        config: config.clone(),
        run_metrics: Vec::new(),
        test_predictions: Vec::new(),
        runs_reloaded: 0,
    }
}

/// The features of a fold whose encoder is its own (the per-fold protocol).
pub(super) fn fold_features(
    p: &Prepared,
    config: &CvConfig,
    seed: u64,
    fold: usize,
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<Option<Prepared>> {
    let name = run_name(seed, fold);
    match config.fold_encoders.get(&name) {
        Some(encoder) if *encoder != config.encoder => {
            let dir = config.output.join("fold-features").join(&name);
            Ok(Some(p.with_encoder(config, encoder, dir, progress)?))
        }
        _ => Ok(None),
    }
}

/// Runs the whole cross-validation described by `config`. Under a
/// distributed launch the runs are spread over the ranks ([`super::ranks`]) and
/// rank 0 writes the report; the other ranks return an unfinished one.
pub fn cross_validate(
    config: &CvConfig,
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<CvReport> {
    let fanned = match crate::distributed::init_from_env()?.filter(|g| g.world_size() > 1) {
        Some(group) => {
            let (mine, p) = super::ranks::fan_out(config, group, progress)?;
            if !group.is_writer() {
                log::info!(
                    "rank {}: {mine} runs trained; rank 0 writes the report",
                    group.rank()
                );
                return Ok(open_report(config, &p));
            }
            Some(p)
        }
        None => None,
    };
    let p = match fanned {
        Some(p) => p,
        None => prepare(config, progress)?,
    };
    let classes = p.classes.clone();
    let runs_total = config.seeds.len() * config.folds;
    let mut report = open_report(config, &p);
    // An earlier complete report must not stand while the runs change under it.
    write_json(&config.output.join("report.json"), &report)?;
    let mut reports = Vec::new();
    let mut tests: Vec<(usize, TestOutput)> = Vec::new(); // (seed index, output)
    for (si, &seed) in config.seeds.iter().enumerate() {
        for split in p.dataset.folds(config.folds, seed)? {
            let run = report.runs.len();
            let own = fold_features(&p, config, seed, split.fold, progress)?;
            let fold_p = own.as_ref().unwrap_or(&p);
            match run_fold(fold_p, config, seed, &split, (run, runs_total), progress) {
                Ok((summary, metrics, outputs, reloaded)) => {
                    report.runs_reloaded += usize::from(reloaded);
                    report.runs.push(summary);
                    reports.push(metrics);
                    tests.extend(outputs.into_iter().map(|t| (si, t)));
                }
                Err(e) => {
                    // report.json marks the experiment incomplete and lists the finished runs.
                    write_json(&config.output.join("report.json"), &report)?;
                    return Err(e);
                }
            }
        }
    }
    let (dataset, bags) = (&p.dataset, &p.bags);
    progress(CvEvent::Report);
    let summary = Summary::from_reports(config.training.preset.clone(), &reports)?;
    summary.write_json(&config.output.join("summary.json"))?;
    let mut md = summary.to_markdown();
    md.push('\n');
    md.push_str(&summary.confusion_markdown());
    write_atomic(&config.output.join("summary.md"), md.as_bytes())?;
    // ROC curves of all test predictions pooled over runs.
    let y_true: Vec<usize> = tests.iter().map(|(_, t)| bags[t.patient].label).collect();
    let y_score: Vec<Vec<f64>> = tests.iter().map(|(_, t)| t.probabilities.clone()).collect();
    let curves = metrics::roc_curves_ovr(&y_true, &y_score, classes.len())?;
    metrics::plot_roc_curves(&config.output.join("roc.png"), &curves, &classes)?;
    metrics::plot_confusion_matrix(
        &config.output.join("confusion.png"),
        &summary.confusion_matrix,
        &classes,
    )?;
    report.attention = super::attention::analyse(
        dataset,
        bags,
        tests
            .iter()
            .map(|(_, t)| (t.patient, t.attention.as_slice())),
    )?;
    write_json(&config.output.join("attention.json"), &report.attention)?;
    let first_seed: Vec<(usize, &[f32], usize)> = tests
        .iter()
        .filter(|(si, _)| *si == 0)
        .map(|(_, t)| {
            (
                t.patient,
                t.attention.as_slice(),
                metrics::argmax_predictions(std::slice::from_ref(&t.probabilities), classes.len())
                    .map(|v| v[0])
                    .unwrap_or(0),
            )
        })
        .collect();
    super::attention::write_galleries(
        dataset,
        bags,
        &first_seed,
        config.gallery_cells,
        &config.output.join("gallery"),
    )?;
    report.summary = Some(summary);
    report.test_predictions = y_true.into_iter().zip(y_score).collect();
    report.run_metrics = reports;
    report.complete = true;
    write_json(&config.output.join("report.json"), &report)?;
    Ok(report)
}

/// Trains and evaluates one fold of one seed (`config.seeds[0]`), writing its run
/// directory (checkpoint, predictions, attention, learning curve, metrics).
pub fn train_single(
    config: &CvConfig,
    fold: usize,
    progress: &mut dyn FnMut(CvEvent) -> bool,
) -> Result<RunSummary> {
    if fold >= config.folds {
        return Err(Error::invalid(
            "fold",
            format!("{fold} is not below folds = {}", config.folds),
        ));
    }
    let p = prepare(config, progress)?;
    let seed = config.seeds[0];
    let split = p.dataset.folds(config.folds, seed)?.swap_remove(fold);
    let (summary, _, _, _) = run_fold(&p, config, seed, &split, (0, 1), progress)?;
    Ok(summary)
}
