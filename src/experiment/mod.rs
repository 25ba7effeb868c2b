//! The paper's experiment as one call (Kazeminia et al., Table 1 and Figures
//! 2–5): does a self-supervised encoder (SimCLR, SwAV, DINO) serve
//! attention-MIL as well as a supervised one, and how far above a random
//! encoder do they all stand?
//!
//! Stages, each resumed when it is already complete under `output` (decided
//! from a marker written atomically after the stage's files: `cohort.json`,
//! `done.json`, each run's `run.json`; so a run killed at any moment, SIGKILL
//! included, resumes from its last complete state and ends with the same
//! results):
//! 1. **cohorts** — the synthetic MIL cohort (`cohort/`) unless a data set is
//!    given, and a disjoint pre-training cohort of another seed
//!    (`pretrain-cohort/`);
//! 2. **pretrain** — each encoder on the pre-training cells only
//!    (`encoders/<name>/`): the supervised one on their cell types, SimCLR, SwAV
//!    and DINO without labels, and the random floor (seeded weights whose
//!    batch-norm statistics are those of the cells);
//! 3. **probe** — the weighted k-NN cell-type probe of every encoder on typed
//!    cells of the MIL data set;
//! 4. **cv** — feature extraction and the MIL cross-validation of every encoder
//!    (`cv/<name>/`, folds × seeds; finished runs are reloaded, not retrained);
//! 5. **embedding** — 2-D UMAP (umap-learn in the set-up Python, else PCA, said
//!    in the report) of the probe cells' features, per encoder;
//! 6. **report** — `report.md`, `report.html`, `report.json` and `figures/`
//!    ([`report`]);
//! 7. **deploy** — after each encoder's cv, `deploy/<name>/encoder.safetensors` and the
//!    ensemble of its cross-validation heads, `deploy/<name>/mil.safetensors`
//!    ([`crate::training::ensemble`]; rewritten on every run, not under the
//!    per-fold protocol).
//!
//! No leakage, as in the paper: the MIL test patients' cells are never seen by
//! an encoder in pre-training. The paper pre-trains its SSL encoders inside
//! each fold on the training patients; here every preset pre-trains once on the
//! disjoint cohort (stated in the report), which is leak-free for every fold
//! and costs one pre-training instead of one per fold.
mod config;
mod embedding;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use config::{ExperimentConfig, PretrainProtocol, ENCODERS};
pub use embedding::Embedding;

use crate::checkpoint::{self, EncoderManifest, Manifest, Provenance};
use crate::dataset::{Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::io::write_atomic;
use crate::model::CellNet;
use crate::ssl::probe::{compare_with_random, ProbeComparison};
use crate::ssl::{KnnConfig, PretrainStage, SslMethod};
use crate::training::{CvEvent, CvReport};

/// The stages of an experiment, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Cohort,
    Pretrain,
    Probe,
    Cv,
    Embedding,
    Report,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Cohort => "cohort",
            Stage::Pretrain => "pretrain",
            Stage::Probe => "probe",
            Stage::Cv => "cv",
            Stage::Embedding => "embedding",
            Stage::Report => "report",
        }
    }
}

/// Progress of an experiment; the callback returns `false` to cancel.
#[derive(Debug, Clone)]
pub struct ExperimentEvent<'a> {
    pub stage: Stage,
    /// The encoder the stage works on (`None` for cohorts, embedding, report).
    pub encoder: Option<&'a str>,
    /// Units done of `total` within the current step (cells, steps, bags).
    pub done: u64,
    pub total: u64,
    /// Work items (cohorts, pre-trainings, CV runs…) finished so far of all
    /// the experiment's items, for an overall bar and ETA.
    pub items_done: usize,
    pub items_total: usize,
    /// What the numbers count, e.g. `"epoch 2/6"`, `"run 3/15 fold 2 epoch 4/40"`.
    pub detail: String,
    /// Latest loss (NaN when there is none).
    pub loss: f64,
}

/// One encoder's results.
#[derive(Debug, Clone, Serialize)]
pub struct EncoderResult {
    pub name: String,
    /// The checkpoint probed and embedded (per-fold: the first run's).
    pub checkpoint: PathBuf,
    /// Per-fold protocol: each run's own encoder (`seed{S}_fold{F}`).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fold_checkpoints: std::collections::BTreeMap<String, PathBuf>,
    /// What pre-training recorded (`done.json`'s summary: losses, monitors,
    /// probes; per-fold: the first run's).
    pub pretraining: serde_json::Value,
    pub probe: ProbeComparison,
    pub cv: CvReport,
    /// The deployable model: `deploy/<encoder>/encoder.safetensors` and the
    /// ensemble of every cross-validation head, `deploy/<encoder>/mil.safetensors`
    /// (`None` under the per-fold protocol, whose runs have encoders of their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
}

/// An encoder and the ensemble of its cross-validation heads, ready for a session.
#[derive(Debug, Clone, Serialize)]
pub struct Deploy {
    pub encoder: PathBuf,
    pub mil: PathBuf,
    pub heads: usize,
    /// Mean held-out macro F1 of the heads' runs (the cross-validated estimate).
    pub mean_test_macro_f1: f64,
}

/// Writes `deploy/<name>/`: a copy of the encoder and the ensemble of the
/// cross-validation's heads (each atomically).
fn deploy(out: &Path, name: &str, encoder: &Path, cv: &CvReport) -> Result<Deploy> {
    let dir = out.join("deploy").join(name);
    create_dir(&dir)?;
    let enc = dir.join("encoder.safetensors");
    let bytes = std::fs::read(encoder).map_err(|e| Error::io("cannot read", encoder, e))?;
    write_atomic(&enc, &bytes)?;
    let mil = dir.join("mil.safetensors");
    let report = crate::training::ensemble(&cv.output, None, &mil)?;
    Ok(Deploy {
        encoder: enc,
        mil,
        heads: report.heads,
        mean_test_macro_f1: report.mean_test_macro_f1,
    })
}

/// Wall time of one stage for one encoder (or for the whole experiment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub stage: Stage,
    pub encoder: Option<String>,
    pub seconds: f64,
    /// `false` when this run found the stage complete and reused it; `seconds`
    /// is then the time of the run that did the work.
    pub computed_now: bool,
}

/// The result of [`run_experiment`].
#[derive(Debug, Clone, Serialize)]
pub struct ExperimentReport {
    pub complete: bool,
    pub output: PathBuf,
    pub dataset: PathBuf,
    pub pretrain_dataset: PathBuf,
    pub encoders: Vec<EncoderResult>,
    pub embedding: Option<Embedding>,
    pub timings: Vec<Timing>,
    pub config: ExperimentConfig,
    pub libamlmil_version: String,
}

const TIMINGS_FILE: &str = "timings.json";
const DONE_FILE: &str = "done.json";

fn create_dir(path: &Path) -> Result<()> {
    std::fs::create_dir_all(path).map_err(|e| Error::io("cannot create directory", path, e))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| Error::invalid("report", e.to_string()))?;
    write_atomic(path, text.as_bytes())
}

/// `path`'s JSON when it exists and its `"config"` equals `config`.
fn done_marker(path: &Path, config: &serde_json::Value) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    (v.get("config") == Some(config)).then_some(v)
}

/// Runs (or resumes) the experiment `config` describes.
pub fn run_experiment(
    config: &ExperimentConfig,
    progress: &mut dyn FnMut(&ExperimentEvent) -> bool,
) -> Result<ExperimentReport> {
    config.validate()?;
    // Its probes, embeddings and deployment are not yet split over ranks:
    // every rank would write them. Data-parallel pre-training (`amlmil
    // pretrain`) and cross-validation (`amlmil cv`) run under a launcher.
    if crate::distributed::Launch::from_env()?.is_some_and(|l| l.world_size > 1) {
        return Err(Error::unsupported(
            "WORLD_SIZE",
            "the experiment runs in one process; under torchrun run `amlmil pretrain` \
             (data-parallel) and `amlmil cv` (runs spread over the ranks), then the \
             experiment with the encoder as an `imported` entry",
        ));
    }
    let config = &config.with_imported_listed();
    let out = &config.output;
    create_dir(out)?;
    crate::io::remove_stale_temps(out)?;
    // `report.json` is written last; an earlier one must not stand for this run.
    crate::io::remove_if_exists(&out.join("report.json"))?;
    write_json(&out.join("config.json"), config)?;
    let mut run = Runner {
        config,
        progress,
        timings: Vec::new(),
        items_done: 0,
        items_total: 2 + 2 * config.encoders.len() + 2,
    };
    let fold_pretrainings = config.folds * config.seeds.len() - 1;
    run.items_total += fold_pretrainings
        * config
            .encoders
            .iter()
            .filter(|e| per_fold(config, e))
            .count();
    run.items_total += config.encoders.len() * (config.folds * config.seeds.len());

    let dataset = match &config.dataset {
        Some(d) => d.clone(),
        None => run.cohort(&config.cohort, &out.join("cohort"))?,
    };
    run.items_done += 1;
    let pretrain_dataset = match &config.pretrain_dataset {
        Some(d) => d.clone(),
        None => run.cohort(&config.pretrain_cohort, &out.join("pretrain-cohort"))?,
    };
    run.items_done += 1;
    let (mil_ds, issues) = Dataset::open(&dataset, &OpenOptions::fail())?;
    for issue in issues {
        log::warn!("{issue}");
    }

    let mut pretrained = Vec::new();
    for name in &config.encoders {
        pretrained.push(if per_fold(config, name) {
            run.fold_encoders(name, &dataset, &mil_ds)?
        } else {
            let dir = out.join("encoders").join(name);
            let (checkpoint, summary) =
                run.encoder(name, &pretrain_dataset, &dir, None, &dataset)?;
            run.items_done += 1;
            (checkpoint, Default::default(), summary)
        });
    }
    let mut encoders = Vec::new();
    for (name, (checkpoint, fold_checkpoints, pretraining)) in
        config.encoders.iter().zip(pretrained)
    {
        let probe = run.probe(name, &checkpoint, &mil_ds)?;
        run.items_done += 1;
        let cv = run.cv(name, &checkpoint, &fold_checkpoints, &dataset)?;
        let deploy = match fold_checkpoints.is_empty() {
            true => Some(deploy(out, name, &checkpoint, &cv)?),
            false => None,
        };
        encoders.push(EncoderResult {
            name: name.clone(),
            checkpoint,
            fold_checkpoints,
            pretraining,
            probe,
            cv,
            deploy,
        });
    }
    let embedding = run.embedding(&mil_ds, &encoders)?;
    run.items_done += 1;
    run.event(
        Stage::Report,
        None,
        (0, 1),
        "writing the report".into(),
        f64::NAN,
    )?;
    let started = Instant::now();
    let mut report = ExperimentReport {
        complete: true,
        output: out.clone(),
        dataset,
        pretrain_dataset,
        encoders,
        embedding,
        timings: Vec::new(),
        config: config.clone(),
        libamlmil_version: crate::VERSION.to_owned(),
    };
    report.timings = run.timings.clone();
    report::write(&report, &mil_ds)?;
    run.record(Stage::Report, None, started.elapsed().as_secs_f64(), true)?;
    report.timings = run.timings.clone();
    write_json(&out.join("report.json"), &report)?;
    Ok(report)
}

/// The state of a run: configuration, progress sink and timings.
struct Runner<'a, 'p> {
    config: &'a ExperimentConfig,
    progress: &'p mut dyn FnMut(&ExperimentEvent) -> bool,
    timings: Vec<Timing>,
    items_done: usize,
    items_total: usize,
}

impl Runner<'_, '_> {
    fn event(
        &mut self,
        stage: Stage,
        encoder: Option<&str>,
        (done, total): (u64, u64),
        detail: String,
        loss: f64,
    ) -> Result<()> {
        let e = ExperimentEvent {
            stage,
            encoder,
            done,
            total,
            items_done: self.items_done,
            items_total: self.items_total,
            detail,
            loss,
        };
        if (self.progress)(&e) {
            Ok(())
        } else {
            Err(Error::Cancelled(format!(
                "experiment at stage {}{}",
                stage.name(),
                encoder.map(|e| format!(" ({e})")).unwrap_or_default()
            )))
        }
    }

    /// Records a stage's time (also in `timings.json`, so a resumed run still
    /// reports what the work cost).
    fn record(
        &mut self,
        stage: Stage,
        encoder: Option<&str>,
        seconds: f64,
        computed_now: bool,
    ) -> Result<()> {
        let path = self.config.output.join(TIMINGS_FILE);
        let mut saved: Vec<Timing> = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let key = |t: &Timing| (t.stage, t.encoder.clone());
        let this = Timing {
            stage,
            encoder: encoder.map(str::to_owned),
            seconds,
            computed_now,
        };
        let timing = if computed_now {
            saved.retain(|t| key(t) != key(&this));
            saved.push(this.clone());
            write_json(&path, &saved)?;
            this
        } else {
            saved
                .into_iter()
                .find(|t| key(t) == key(&this))
                .map(|t| Timing {
                    computed_now: false,
                    ..t
                })
                .unwrap_or(this)
        };
        self.timings.push(timing);
        Ok(())
    }

    /// Generates a synthetic cohort into `dir` unless `dir/cohort.json` says
    /// this configuration is already there.
    fn cohort(&mut self, cohort: &crate::synth::CohortConfig, dir: &Path) -> Result<PathBuf> {
        let marker = dir.join("cohort.json");
        let key = serde_json::to_value(cohort).unwrap_or_default();
        if done_marker(&marker, &key).is_some() {
            self.record(Stage::Cohort, Some(&dir_name(dir)), 0.0, false)?;
            return Ok(dir.to_path_buf());
        }
        let started = Instant::now();
        if dir.exists() {
            // A cohort of another configuration or an interrupted one: ours to replace.
            std::fs::remove_dir_all(dir).map_err(|e| Error::io("cannot remove", dir, e))?;
        }
        let name = dir_name(dir);
        let mut cancelled = false;
        let summary = crate::synth::generate_cohort(cohort, dir, &mut |done, total| {
            if !cancelled {
                let detail = format!("rendering {name}");
                cancelled = self
                    .event(
                        Stage::Cohort,
                        None,
                        (done as u64, total as u64),
                        detail,
                        f64::NAN,
                    )
                    .is_err();
            }
        })?;
        if cancelled {
            return Err(Error::Cancelled("experiment at stage cohort".into()));
        }
        write_json(
            &marker,
            &serde_json::json!({"config": key, "patients": summary.patients.len(),
                "cells": summary.n_cells, "annotated": summary.n_annotated}),
        )?;
        self.record(
            Stage::Cohort,
            Some(&name),
            started.elapsed().as_secs_f64(),
            true,
        )?;
        Ok(dir.to_path_buf())
    }

    /// Each run's own encoder `name`, pre-trained (or resumed) on the cells of
    /// that run's training patients of the MIL data set only (per-fold
    /// protocol): the first run's checkpoint and summary, and every run's.
    #[allow(clippy::type_complexity)]
    fn fold_encoders(
        &mut self,
        name: &str,
        dataset: &Path,
        mil: &Dataset,
    ) -> Result<(
        PathBuf,
        std::collections::BTreeMap<String, PathBuf>,
        serde_json::Value,
    )> {
        let mut all = std::collections::BTreeMap::new();
        let mut first = None;
        for &seed in &self.config.seeds {
            for split in mil.folds(self.config.folds, seed)? {
                let run = crate::training::run_name(seed, split.fold);
                let dir = self.config.output.join("encoders").join(name).join(&run);
                let train: Vec<String> = split
                    .train
                    .iter()
                    .map(|&i| mil.patients()[i].id.clone())
                    .collect();
                let (checkpoint, summary) =
                    self.encoder(name, dataset, &dir, Some(train), dataset)?;
                self.items_done += 1;
                first.get_or_insert((checkpoint.clone(), summary));
                all.insert(run, checkpoint);
            }
        }
        let (checkpoint, summary) =
            first.ok_or_else(|| Error::invalid("folds", "no runs to pre-train for"))?;
        Ok((checkpoint, all, summary))
    }

    /// The checkpoint of encoder `name` in `dir` and what its pre-training
    /// recorded, pre-trained (or resumed) on `dataset` (only `patients`' cells
    /// when given), its monitors probing `probe`'s typed cells.
    fn encoder(
        &mut self,
        name: &str,
        dataset: &Path,
        dir: &Path,
        patients: Option<Vec<String>>,
        probe: &Path,
    ) -> Result<(PathBuf, serde_json::Value)> {
        let dir = dir.to_path_buf();
        let label = match &patients {
            Some(_) => format!("{name} {}", dir_name(&dir)),
            None => name.to_owned(),
        };
        let name = label.as_str();
        let path = dir.join(crate::ssl::train::ENCODER_FILE);
        if let Some(file) = self.config.imported.get(name) {
            // Brought by the lab: checked as a session would load it, not trained.
            let (_, manifest, _) = crate::frozen::load_encoder(file, tch::Device::Cpu)?;
            self.record(Stage::Pretrain, Some(name), 0.0, false)?;
            let summary = serde_json::json!({
                "method": "imported", "file": file,
                "architecture": manifest.architecture.name(),
                "input_size": manifest.input_size,
                "provenance": manifest.provenance,
            });
            return Ok((file.clone(), summary));
        }
        let (key, method) = if name == "random" {
            let size = self
                .config
                .pretrain_config(
                    SslMethod::Supervised,
                    dataset.into(),
                    dir.clone(),
                    probe.into(),
                )?
                .image_size;
            (
                serde_json::json!({"random": {"seed": self.config.seed, "image_size": size}, "dataset": dataset}),
                None,
            )
        } else {
            let method: SslMethod = name.split(' ').next().unwrap_or(name).parse()?;
            let mut pc =
                self.config
                    .pretrain_config(method, dataset.into(), dir.clone(), probe.into())?;
            pc.patients = patients;
            (serde_json::to_value(&pc).unwrap_or_default(), Some(pc))
        };
        if let Some(done) = done_marker(&dir.join(DONE_FILE), &key).filter(|_| path.exists()) {
            self.record(Stage::Pretrain, Some(name), 0.0, false)?;
            return Ok((path, done["summary"].clone()));
        }
        let started = Instant::now();
        create_dir(&dir)?;
        // A marker of another configuration must not outlive the files it described.
        crate::io::remove_if_exists(&dir.join(DONE_FILE))?;
        let summary = match method {
            None => {
                self.event(
                    Stage::Pretrain,
                    Some(name),
                    (0, 1),
                    "calibrating batch norm".into(),
                    f64::NAN,
                )?;
                let size = key["random"]["image_size"].as_i64().unwrap_or(64);
                write_random_encoder(dataset, &path, size, self.config.seed)?;
                serde_json::json!({"method": "random"})
            }
            Some(pc) => {
                let epochs = pc.epochs;
                let report = crate::ssl::pretrain(&pc, &mut |e| {
                    let (detail, loss) = match e.stage {
                        PretrainStage::Decode => ("decoding cells".to_owned(), f64::NAN),
                        _ => (format!("epoch {}/{epochs}", e.epoch + 1), e.loss),
                    };
                    self.event(Stage::Pretrain, Some(name), (e.done, e.total), detail, loss)
                        .is_ok()
                })?;
                serde_json::json!({
                    "method": report.method, "epochs": report.epochs_completed,
                    "steps": report.steps_completed, "cells": report.cells,
                    "loss_by_epoch": report.history.iter().map(|h| h.mean_loss).collect::<Vec<_>>(),
                    "monitors": report.monitors, "probes": report.probes,
                    "patients_seen": report.patients,
                })
            }
        };
        write_json(
            &dir.join(DONE_FILE),
            &serde_json::json!({"config": key, "summary": summary}),
        )?;
        self.record(
            Stage::Pretrain,
            Some(name),
            started.elapsed().as_secs_f64(),
            true,
        )?;
        Ok((path, summary))
    }

    fn probe(
        &mut self,
        name: &str,
        checkpoint: &Path,
        dataset: &Dataset,
    ) -> Result<ProbeComparison> {
        self.event(
            Stage::Probe,
            Some(name),
            (0, 1),
            "k-NN cell-type probe".into(),
            f64::NAN,
        )?;
        let started = Instant::now();
        let probe = compare_with_random(
            checkpoint,
            dataset,
            &KnnConfig::default(),
            Some(self.config.probe_cells),
            None,
        )?;
        self.record(
            Stage::Probe,
            Some(name),
            started.elapsed().as_secs_f64(),
            true,
        )?;
        Ok(probe)
    }

    fn cv(
        &mut self,
        name: &str,
        checkpoint: &Path,
        fold_checkpoints: &std::collections::BTreeMap<String, PathBuf>,
        dataset: &Path,
    ) -> Result<CvReport> {
        let out = self.config.output.join("cv").join(name);
        let mut cv = self
            .config
            .cv_config(dataset.into(), checkpoint.into(), out)?;
        cv.fold_encoders = fold_checkpoints.clone();
        let Manifest::Encoder(manifest) = checkpoint::read_manifest(checkpoint)? else {
            return Err(Error::checkpoint(
                checkpoint,
                "is not an encoder checkpoint",
            ));
        };
        if manifest.feature_map[1] == 1 && cv.training.head.cell_net != CellNet::Pooled {
            // A ViT's features are a vector: only the pooled g reads them.
            log::info!(
                "{name}: {}'s features are a vector; its MIL head uses the pooled g",
                manifest.architecture.name()
            );
            cv.training.head.cell_net = CellNet::Pooled;
        }
        let started = Instant::now();
        let runs_before = self.items_done;
        let report = {
            let mut on_event = |e: CvEvent| {
                if let CvEvent::Train { run, .. } = e {
                    self.items_done = runs_before + run;
                }
                let (done, total, detail, loss) = e.describe();
                self.event(Stage::Cv, Some(name), (done, total), detail, loss)
                    .is_ok()
            };
            crate::training::cross_validate(&cv, &mut on_event)?
        };
        self.items_done = runs_before + report.runs.len();
        let trained_now = report.runs_reloaded < report.runs.len();
        self.record(
            Stage::Cv,
            Some(name),
            started.elapsed().as_secs_f64(),
            trained_now,
        )?;
        Ok(report)
    }

    fn embedding(
        &mut self,
        dataset: &Dataset,
        encoders: &[EncoderResult],
    ) -> Result<Option<Embedding>> {
        self.event(
            Stage::Embedding,
            None,
            (0, 1),
            "2-D embedding of cell features".into(),
            f64::NAN,
        )?;
        let started = Instant::now();
        let e = embedding::embed(
            dataset,
            encoders
                .iter()
                .map(|e| (e.name.as_str(), e.checkpoint.as_path())),
            self.config.umap_cells,
            self.config.seed,
        )?;
        self.record(
            Stage::Embedding,
            None,
            started.elapsed().as_secs_f64(),
            true,
        )?;
        Ok(Some(e))
    }
}

/// Whether encoder `name` is pre-trained inside each run: a self-supervised
/// method under the per-fold protocol.
fn per_fold(config: &ExperimentConfig, name: &str) -> bool {
    config.pretrain_protocol == PretrainProtocol::PerFold
        && matches!(
            name.parse::<SslMethod>(),
            Ok(SslMethod::SimClr | SslMethod::Swav | SslMethod::Dino)
        )
}

fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The random floor: a seeded ResNet18 whose batch-norm statistics are those of
/// up to 256 of `dataset`'s cells (an encoder with statistics (0, 1) would
/// mis-scale every layer), written as an encoder checkpoint.
fn write_random_encoder(dataset: &Path, path: &Path, size: i64, seed: u64) -> Result<()> {
    let (ds, _) = Dataset::open(dataset, &OpenOptions::fail())?;
    let cells =
        crate::ssl::train::decode_cells(&ds, size, Some(256), false, seed, 0, &mut |_, _| true)?;
    let manifest = EncoderManifest::new(
        crate::model::EncoderArch::ResNet18,
        size,
        Provenance::new("random", Some(seed)),
    );
    let (_encoder, vs) = crate::ssl::probe::calibrated_random_encoder(
        manifest.architecture,
        seed,
        &cells.images,
        &manifest.normalization,
    )?;
    checkpoint::save(path, &Manifest::Encoder(manifest), &vs)
}
