//! The training commands: `amlmil pretrain`, `probe`, `extract-features`,
//! `train-mil`, `cv` and `experiment`, with their progress bars. Configuration
//! comes from `--config` files (JSON or TOML) with flags overriding them.
use std::path::PathBuf;

use amlmil::SessionOptions;
use indicatif::{ProgressBar, ProgressStyle};

use super::{cell_net, emit, note, progress_bar, GVariant};

#[derive(clap::Args)]
pub(crate) struct PretrainArgs {
    #[arg(long, value_parser = ["simclr", "swav", "dino", "supervised"])]
    method: String,
    #[arg(long, default_value = "paper", value_parser = ["paper", "cpu-small"])]
    preset: String,
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    epochs: Option<u64>,
    /// Continue from OUTPUT/state.safetensors.
    #[arg(long)]
    resume: bool,
    /// JSON object of further overrides, e.g. '{"batch_size": 64}'.
    #[arg(long)]
    set: Option<String>,
    /// Pre-train on these patients' cells only (comma-separated patient ids).
    #[arg(long, value_delimiter = ',', conflicts_with = "fold")]
    patients: Option<Vec<String>>,
    /// Pre-train on the training patients of this fold of DATASET only (the
    /// paper's per-fold protocol; the 60/20/20 rotation of `amlmil cv`).
    #[arg(long)]
    fold: Option<usize>,
    /// Folds of the split `--fold` picks from.
    #[arg(long, default_value_t = 5, requires = "fold")]
    folds: usize,
    /// Seed of the split `--fold` picks from (as `amlmil cv --seeds`).
    #[arg(long, default_value_t = 0, requires = "fold")]
    fold_seed: u64,
}

/// The patients `--patients` names, or the training patients of `--fold`.
fn pretrain_patients(args: &PretrainArgs) -> amlmil::Result<Option<Vec<String>>> {
    use amlmil::dataset::{Dataset, OpenOptions};
    let Some(fold) = args.fold else {
        return Ok(args.patients.clone());
    };
    let (ds, _) = Dataset::open(&args.dataset, &OpenOptions::fail())?;
    let split = ds
        .folds(args.folds, args.fold_seed)?
        .into_iter()
        .nth(fold)
        .ok_or_else(|| {
            amlmil::Error::invalid(
                "--fold",
                format!("{fold} is not below --folds {}", args.folds),
            )
        })?;
    Ok(Some(
        split
            .train
            .iter()
            .map(|&i| ds.patients()[i].id.clone())
            .collect(),
    ))
}

#[derive(clap::Args)]
pub(crate) struct ExperimentCmdArgs {
    /// quick (minutes), cpu-small (all five encoders, 5 folds x 3 seeds) or paper (GPU scale).
    #[arg(long, value_parser = ["quick", "cpu-small", "paper"])]
    preset: Option<String>,
    /// JSON or TOML file of settings (a preset plus overrides); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Patient-labelled data set; without it a synthetic cohort is generated.
    #[arg(long)]
    dataset: Option<PathBuf>,
    /// Cells to pre-train the encoders on, disjoint from --dataset's patients.
    #[arg(long)]
    pretrain_dataset: Option<PathBuf>,
    #[arg(long)]
    output: Option<PathBuf>,
    /// JSON object of further overrides, e.g. '{"seeds": [0]}'.
    #[arg(long)]
    set: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct ProbeArgs {
    /// Encoder checkpoint.
    #[arg(long)]
    encoder: PathBuf,
    /// Data set root whose cells.csv gives cell types.
    #[arg(long)]
    dataset: PathBuf,
    /// Neighbours.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// Probe a seeded subset of at most this many typed cells.
    #[arg(long)]
    max_cells: Option<usize>,
    /// Seed of the random-encoder baseline.
    #[arg(long, default_value_t = 0)]
    random_seed: u64,
    /// Skip the random-encoder baseline.
    #[arg(long)]
    no_baseline: bool,
}

#[derive(clap::Args)]
pub(crate) struct ExtractArgs {
    /// Data set root.
    #[arg(long)]
    dataset: PathBuf,
    /// Encoder checkpoint.
    #[arg(long)]
    encoder: PathBuf,
    /// Cache directory (created; resumed when it holds this encoder's features).
    #[arg(long)]
    out: PathBuf,
    /// Store only the unflipped cells.
    #[arg(long)]
    no_flips: bool,
    #[arg(long, default_value = "auto")]
    device: String,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

/// Where an experiment is described: a config file, flags overriding it.
#[derive(clap::Args)]
pub(crate) struct ExperimentArgs {
    /// JSON or TOML file with `dataset`, `encoder`, `output`, `features`, `folds`,
    /// `seeds`, `device`, `training` (see docs/training.md); flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    dataset: Option<PathBuf>,
    #[arg(long)]
    encoder: Option<PathBuf>,
    /// Existing feature cache of this encoder.
    #[arg(long)]
    features: Option<PathBuf>,
    #[arg(long)]
    output: Option<PathBuf>,
    /// Training preset: paper or scemila.
    #[arg(long)]
    preset: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    /// The per-cell network g: four-conv (paper; needs 144 px / 5x5 maps), scemila or pooled.
    #[arg(long, value_enum)]
    cell_net: Option<GVariant>,
    #[arg(long)]
    device: Option<String>,
}

#[derive(clap::Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    experiment: ExperimentArgs,
    /// Which fold's 60/20/20 split to train on.
    #[arg(long, default_value_t = 0)]
    fold: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(clap::Args)]
pub(crate) struct EnsembleArgs {
    /// The cross-validation's output folder (`amlmil cv --output`, or an
    /// experiment's `cv/<encoder>`).
    #[arg(long = "from")]
    from: PathBuf,
    /// The MIL checkpoint to write.
    #[arg(long)]
    out: PathBuf,
    /// Only these seeds' runs, comma-separated (default: every finished run).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
}

/// `amlmil ensemble`: the cross-validation's heads as one checkpoint; prints the report.
pub(crate) fn ensemble(args: EnsembleArgs) -> amlmil::Result<()> {
    let report = amlmil::training::ensemble(&args.from, args.seeds.as_deref(), &args.out)?;
    emit(&serde_json::to_string_pretty(&report).unwrap_or_default());
    eprintln!(
        "wrote {} ({} heads; their held-out macro F1 averages {:.3})",
        report.out.display(),
        report.heads,
        report.mean_test_macro_f1
    );
    Ok(())
}

#[derive(clap::Args)]
pub(crate) struct CvArgs {
    #[command(flatten)]
    experiment: ExperimentArgs,
    /// Seeds, comma-separated (one cross-validation each).
    #[arg(long, value_delimiter = ',')]
    seeds: Option<Vec<u64>>,
    #[arg(long)]
    folds: Option<usize>,
}

pub(crate) fn pretrain_cmd(args: PretrainArgs) -> amlmil::Result<()> {
    use amlmil::ssl::{pretrain, PretrainConfig, PretrainStage};
    let mut v = serde_json::json!({
        "method": args.method, "preset": args.preset,
        "dataset": args.dataset, "output": args.output, "resume": args.resume,
    });
    if let Some(e) = args.epochs {
        v["epochs"] = e.into();
    }
    if let Some(ids) = pretrain_patients(&args)? {
        v["patients"] = ids.into();
    }
    if let Some(extra) = &args.set {
        let extra: serde_json::Value = serde_json::from_str(extra)
            .map_err(|e| amlmil::Error::invalid("--set", e.to_string()))?;
        if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(x.clone());
        }
    }
    let config = PretrainConfig::from_value(v)?;
    let bar = progress_bar(0, "steps");
    let report = pretrain(&config, &mut |e| {
        match e.stage {
            PretrainStage::Decode => {
                bar.set_message("decoding cells");
                bar.set_length(e.total);
                bar.set_position(e.done);
            }
            PretrainStage::Step => {
                bar.set_message(format!(
                    "{} epoch {}/{} loss {:.4} {:.0} img/s",
                    config.method_name(),
                    e.epoch + 1,
                    e.epochs,
                    e.loss,
                    e.images_per_second
                ));
                bar.set_length(e.total);
                bar.set_position(e.done);
            }
            PretrainStage::Epoch => note(
                &bar,
                format!(
                    "epoch {}/{}: loss {:.4}, {:.1} images/s, {}",
                    e.done,
                    e.total,
                    e.loss,
                    e.images_per_second,
                    match amlmil::distributed::current() {
                        Some(g) if !g.is_writer() => format!("rank {} (rank 0 writes)", g.rank()),
                        _ => "checkpoint written".to_owned(),
                    }
                ),
            ),
        }
        true
    })?;
    bar.finish_and_clear();
    super::emit(&format!(
        "{} encoder: {} ({} epochs, {} steps)",
        report.method,
        report.encoder.display(),
        report.epochs_completed,
        report.steps_completed
    ));
    if let Some(m) = report.monitors.last() {
        let own: Vec<String> = m
            .method
            .iter()
            .map(|(k, v)| format!(", {k} {v:.3}"))
            .collect();
        super::emit(&format!(
            "step {}: loss {:.4}, effective rank {:.1}, embedding std {:.4}{}",
            m.step,
            m.loss,
            m.effective_rank,
            m.embedding_std,
            own.concat()
        ));
    }
    for p in &report.probes {
        super::emit(&format!(
            "after epoch {}: k-NN cell type macro F1 {:.3}, patient macro F1 {:.3}, rank {:.1}",
            p.epochs, p.cell_type.macro_f1, p.patient.macro_f1, p.effective_rank
        ));
    }
    Ok(())
}

pub(crate) fn probe(args: ProbeArgs) -> amlmil::Result<()> {
    use amlmil::dataset::{Dataset, OpenOptions};
    use amlmil::ssl::probe::{compare_with_random, KnnConfig};
    let (ds, _) = Dataset::open(&args.dataset, &OpenOptions::fail())?;
    let knn = KnnConfig {
        k: args.k,
        ..KnnConfig::default()
    };
    let seed = (!args.no_baseline).then_some(args.random_seed);
    let report = compare_with_random(&args.encoder, &ds, &knn, args.max_cells, seed)?;
    emit(&serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}

pub(crate) fn extract(args: ExtractArgs) -> amlmil::Result<()> {
    use amlmil::dataset::{Dataset, OpenOptions};
    use amlmil::features::{extract_features, ExtractOptions};
    let (ds, issues) = Dataset::open(&args.dataset, &OpenOptions::fail())?;
    for issue in issues {
        eprintln!("{issue}");
    }
    let options = ExtractOptions {
        flips: !args.no_flips,
        encoder: SessionOptions {
            device: args.device.parse()?,
            batch_size: args.batch_size,
            ..Default::default()
        },
    };
    let bar = progress_bar(ds.patients().len(), "patients");
    bar.set_message("encoding");
    let cache = extract_features(
        &ds,
        &args.encoder,
        &args.out,
        &options,
        &mut |_, done, _| {
            bar.set_position(done as u64);
            true
        },
    )?;
    bar.finish_and_clear();
    eprintln!(
        "features of {} patients in {} (key {})",
        ds.patients().len(),
        cache.dir().display(),
        &cache.manifest().key[..16]
    );
    Ok(())
}

/// The experiment from `--config` and flags.
fn experiment(args: &ExperimentArgs) -> amlmil::Result<amlmil::training::CvConfig> {
    let base = match &args.config {
        Some(path) => Some(amlmil::training::CvConfig::read(path)?),
        None => None,
    };
    let overrides = amlmil::training::CvOverrides {
        dataset: args.dataset.clone(),
        encoder: args.encoder.clone(),
        features: args.features.clone(),
        output: args.output.clone(),
        preset: args.preset.clone(),
        epochs: args.epochs,
        cell_net: args.cell_net.map(cell_net),
        device: args.device.as_deref().map(str::parse).transpose()?,
    };
    amlmil::training::CvConfig::with_overrides(base, &overrides)
}

fn training_bar() -> ProgressBar {
    let bar = progress_bar(0, "bags");
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn cv_progress(bar: &ProgressBar) -> impl FnMut(amlmil::training::CvEvent) -> bool + '_ {
    move |e| {
        let (done, total, detail, loss) = e.describe();
        let loss = if loss.is_finite() {
            format!(" loss {loss:.4}")
        } else {
            String::new()
        };
        bar.set_message(format!("{detail}{loss}"));
        bar.set_length(total);
        bar.set_position(done);
        true
    }
}

pub(crate) fn cv(args: CvArgs) -> amlmil::Result<()> {
    let mut config = experiment(&args.experiment)?;
    if let Some(seeds) = args.seeds {
        config.seeds = seeds;
    }
    if let Some(folds) = args.folds {
        config.folds = folds;
    }
    config.validate()?;
    let bar = training_bar();
    let report = amlmil::training::cross_validate(&config, &mut cv_progress(&bar))?;
    bar.finish_and_clear();
    if let Some(summary) = &report.summary {
        super::emit(&summary.to_markdown());
    }
    if let Some(auc) = report.attention.abnormal_vs_normal_roc_auc {
        super::emit(&format!(
            "attention ROC AUC, abnormal vs normal cells: {auc:.3}"
        ));
    }
    eprintln!("report: {}", config.output.join("report.json").display());
    Ok(())
}

pub(crate) fn experiment_cmd(args: ExperimentCmdArgs) -> amlmil::Result<()> {
    use amlmil::experiment::{run_experiment, ExperimentConfig};
    use indicatif::MultiProgress;
    let mut v = match &args.config {
        Some(path) => amlmil::settings::read_value(path)?,
        None => serde_json::json!({}),
    };
    let obj = v
        .as_object_mut()
        .ok_or_else(|| amlmil::Error::invalid("--config", "must hold an object"))?;
    let flags = [
        ("preset", args.preset.map(serde_json::Value::from)),
        (
            "dataset",
            args.dataset.map(|p| p.display().to_string().into()),
        ),
        (
            "pretrain_dataset",
            args.pretrain_dataset
                .map(|p| p.display().to_string().into()),
        ),
        (
            "output",
            args.output.map(|p| p.display().to_string().into()),
        ),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            obj.insert(key.into(), value);
        }
    }
    if let Some(extra) = &args.set {
        let extra: serde_json::Value = serde_json::from_str(extra)
            .map_err(|e| amlmil::Error::invalid("--set", e.to_string()))?;
        let extra = extra
            .as_object()
            .ok_or_else(|| amlmil::Error::invalid("--set", "must be a JSON object"))?;
        obj.extend(extra.clone());
    }
    if !obj.contains_key("output") {
        return Err(amlmil::Error::invalid(
            "--output",
            "missing: give --output DIR",
        ));
    }
    let config = ExperimentConfig::from_value(v)?;
    let bars = MultiProgress::new();
    let overall = bars.add(
        ProgressBar::new(1).with_style(
            ProgressStyle::with_template(
                "experiment [{bar:30}] {pos}/{len} items, {elapsed} elapsed, eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
    );
    let current = bars.add(
        ProgressBar::new(1).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} (eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
    );
    let mut last_stage = String::new();
    let report = run_experiment(&config, &mut |e| {
        overall.set_length(e.items_total as u64);
        overall.set_position(e.items_done as u64);
        let stage = format!("{} {}", e.stage.name(), e.encoder.unwrap_or(""));
        if stage != last_stage {
            current.reset();
            note(
                &overall,
                format!(
                    "[{}/{} items, {:.0} s] {stage}",
                    e.items_done,
                    e.items_total,
                    overall.elapsed().as_secs_f64()
                ),
            );
            last_stage = stage.clone();
        }
        let loss = if e.loss.is_finite() {
            format!(" loss {:.4}", e.loss)
        } else {
            String::new()
        };
        current.set_message(format!("{stage}: {}{loss}", e.detail));
        current.set_length(e.total.max(1));
        current.set_position(e.done);
        true
    })?;
    current.finish_and_clear();
    overall.finish_and_clear();
    for e in &report.encoders {
        if let Some(s) = &e.cv.summary {
            super::emit(&format!(
                "{:<11} macro F1 {:.3}  ROC AUC {:.3}  PR AUC {:.3}  attention AUC {}  k-NN macro F1 {:.3}",
                e.name,
                s.macro_f1,
                s.roc_auc,
                s.pr_auc,
                e.cv.attention
                    .abnormal_vs_normal_roc_auc
                    .map_or("-".into(), |a| format!("{a:.3}")),
                e.probe.encoder.macro_f1
            ));
        }
    }
    super::emit(&format!(
        "report: {}",
        config.output.join("report.html").display()
    ));
    Ok(())
}

pub(crate) fn train_mil(args: TrainArgs) -> amlmil::Result<()> {
    let mut config = experiment(&args.experiment)?;
    config.seeds = vec![args.seed];
    config.validate()?;
    let bar = training_bar();
    let report = amlmil::training::cv::train_single(&config, args.fold, &mut cv_progress(&bar))?;
    bar.finish_and_clear();
    super::emit(&serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}
