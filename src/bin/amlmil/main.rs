//! `amlmil`: command-line front end of the library, for vendor scripts and labs.
//!
//! `amlmil info` prints versions and devices; `amlmil predict` classifies folders
//! of cell images (one folder = one patient's bag) and prints JSON;
//! `amlmil init-checkpoint` writes seeded, randomly initialised checkpoints;
//! `amlmil synth` writes a synthetic cohort, `amlmil dataset check` validates one;
//! `amlmil pretrain`, `train-mil`, `cv` and `experiment` (the paper's whole
//! experiment and its report) are the training commands ([`train`]);
//! `amlmil import` / `amlmil export` move models from and to PyTorch ([`interop`]).
mod bench;
mod interop;
mod train;

use train::{CvArgs, ExperimentCmdArgs, ExtractArgs, PretrainArgs, ProbeArgs, TrainArgs};

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amlmil::checkpoint::{self, Checkpoint};
use amlmil::model::{CellNet, EncoderArch, MilConfig};
use amlmil::{Bag, CellImage, DeviceSpec, Precision, Session, SessionOptions};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "amlmil",
    version,
    about = "AML subtype classification from single-cell images (attention-MIL)"
)]
struct Cli {
    /// Log level: error, warn, info, debug or trace (default: RUST_LOG, else warn).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Library, ABI and libtorch versions, CUDA devices (JSON).
    Info,
    /// Classify bags: each PATH is a folder with one patient's cell images.
    Predict(PredictArgs),
    /// Classify every patient of a labelled data set and score the model:
    /// macro F1, accuracy, ROC AUC (JSON; one line per patient on standard error).
    Evaluate(EvaluateArgs),
    /// The diagnosis guard: classify bags at fp32 and at a reduced precision
    /// and check that class, probabilities and top-attention cells agree (JSON;
    /// exit status 1 when they do not).
    CheckPrecision(CheckPrecisionArgs),
    /// Write a seeded, randomly initialised checkpoint.
    InitCheckpoint(InitArgs),
    /// Print a checkpoint's manifest (JSON).
    Inspect {
        /// A `.safetensors` checkpoint.
        checkpoint: PathBuf,
    },
    /// Generate a synthetic blood-smear cohort in the data set layout.
    Synth(SynthArgs),
    /// Inspect a data set folder.
    #[command(subcommand)]
    Dataset(DatasetCommand),
    /// Pre-train a cell encoder (SimCLR, SwAV, DINO or supervised on cell types).
    Pretrain(PretrainArgs),
    /// k-NN cell-type probe of an encoder on a data set's typed cells, against a
    /// random encoder (JSON).
    Probe(ProbeArgs),
    /// Encode every cell of a data set once (with flip variants) into a feature cache.
    ExtractFeatures(ExtractArgs),
    /// Train one attention-MIL head (fold F of seed S: 60/20/20) and write its checkpoint.
    TrainMil(TrainArgs),
    /// Cross-validate the attention-MIL head: folds x seeds, metrics, plots, attention.
    Cv(CvArgs),
    /// Write a cross-validation's heads (folds x seeds) as one deployable MIL
    /// checkpoint: sessions average their probabilities and attention (JSON report).
    Ensemble(train::EnsembleArgs),
    /// The paper's experiment in one command: cohorts, pre-training of every encoder,
    /// k-NN probe, MIL cross-validation per encoder, and report.md/.html/.json.
    Experiment(ExperimentCmdArgs),
    /// Measure encoder throughput (cells/s) on this machine, per memory layout.
    Bench(bench::BenchArgs),
    /// Convert a PyTorch-trained model (torchvision, VISSL, DINO, SwAV, lightly
    /// encoders; SCEMILA's attention-MIL) to a libamlmil checkpoint.
    Import(interop::ImportArgs),
    /// Write a libamlmil checkpoint as a PyTorch state dict or (encoders) ONNX.
    Export(interop::ExportArgs),
    /// Write a montage PNG of synthetic cells per cell type and subtype.
    Montage {
        #[arg(long)]
        out: PathBuf,
        /// Side of each cell in the montage.
        #[arg(long, default_value_t = 64)]
        size: u32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Output folder (must not exist or be empty).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 20)]
    patients_per_class: usize,
    /// Cells per patient, `MIN..MAX`.
    #[arg(long, default_value = "100..300", value_parser = parse_range::<usize>)]
    cells: (usize, usize),
    /// Abnormal-cell fraction of a leukemic patient, `MIN..MAX`.
    #[arg(long, default_value = "0.05..0.6", value_parser = parse_range::<f64>)]
    abnormal: (f64, f64),
    /// Image side in pixels.
    #[arg(long, default_value_t = 144)]
    size: u32,
    /// Fraction of cells flagged as expert-annotated in cells.csv.
    #[arg(long, default_value_t = 0.02)]
    annotated: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

#[derive(Subcommand)]
enum DatasetCommand {
    /// Validate the layout and print a per-class summary.
    Check {
        dir: PathBuf,
        /// Report problems and go on instead of stopping at the first.
        #[arg(long)]
        skip: bool,
        /// Also decode every image.
        #[arg(long)]
        images: bool,
    },
    /// Cross-validated macro F1 of a classifier that sees only bag colour statistics.
    ColourBaseline {
        dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn parse_range<T: std::str::FromStr + PartialOrd + Copy>(s: &str) -> Result<(T, T), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("`{s}` is not MIN..MAX"))?;
    let a: T = a
        .trim()
        .parse()
        .map_err(|_| format!("`{a}` is not a number"))?;
    let b: T = b
        .trim()
        .parse()
        .map_err(|_| format!("`{b}` is not a number"))?;
    if a > b {
        return Err(format!("`{s}`: MIN is larger than MAX"));
    }
    Ok((a, b))
}

/// The two checkpoints of a session and how it runs (`predict`, `check-precision`).
#[derive(clap::Args)]
struct SessionArgs {
    /// Encoder checkpoint (.safetensors).
    #[arg(long)]
    encoder: PathBuf,
    /// Attention-MIL checkpoint (.safetensors).
    #[arg(long)]
    mil: PathBuf,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Cells per encoder batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
}

impl SessionArgs {
    fn options(&self, precision: &str) -> amlmil::Result<SessionOptions> {
        Ok(SessionOptions {
            device: self.device.parse::<DeviceSpec>()?,
            precision: precision.parse::<Precision>()?,
            batch_size: self.batch_size,
            ..Default::default()
        })
    }
}

#[derive(clap::Args)]
struct EvaluateArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// A labelled data set (`metadata.csv` + `data/<label>/<patient>/`).
    #[arg(long)]
    dataset: PathBuf,
    /// `fp32`, `fp16` or `bf16`, as for `predict`.
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `amlmil evaluate`: one line per patient and the metrics on standard error,
/// the JSON report on standard output (or `--out`).
fn evaluate(args: EvaluateArgs) -> amlmil::Result<()> {
    use amlmil::dataset::{Dataset, OpenOptions};
    let session = Session::new(
        &args.session.encoder,
        &args.session.mil,
        &args.session.options(&args.precision)?,
    )?;
    let (dataset, _) = Dataset::open(&args.dataset, &OpenOptions::fail())?;
    let bar = progress_bar(dataset.patients().len(), "patients");
    let e = amlmil::evaluation::evaluate(&session, &dataset, &mut |done, _| {
        bar.set_position(done as u64);
        true
    })?;
    bar.finish_and_clear();
    for p in &e.patients {
        let best = p.probabilities.iter().cloned().fold(0f32, f32::max);
        eprintln!(
            "{:<12} {:<14} -> {:<14} p={best:.2}{}",
            p.patient,
            p.label,
            p.predicted,
            if p.label == p.predicted {
                ""
            } else {
                "  (wrong)"
            }
        );
    }
    let cross_validated = session
        .mil_manifest()
        .provenance
        .details
        .get("mean_test_macro_f1")
        .and_then(|v| v.as_f64());
    eprintln!(
        "{} patients: macro F1 {:.3}, accuracy {:.3}{} ({} head{}){}",
        e.patients.len(),
        e.macro_f1,
        e.accuracy,
        e.roc_auc
            .map_or(String::new(), |a| format!(", ROC AUC {a:.3}")),
        e.heads,
        if e.heads == 1 { "" } else { "s" },
        cross_validated.map_or(String::new(), |f| format!(
            "; its heads' cross-validated macro F1 was {f:.3}"
        ))
    );
    let json = serde_json::to_string_pretty(&e).unwrap_or_default();
    match &args.out {
        Some(path) => amlmil::io::write_atomic(path, json.as_bytes())?,
        None => emit(&json),
    }
    Ok(())
}

#[derive(clap::Args)]
struct PredictArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// `fp32`, `fp16` or `bf16` (fp16 needs CUDA; bf16 runs on CUDA and on CPUs
    /// with native bf16, avx512_bf16 or AMX).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Cells listed per class in the ranking.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Include every cell's attention for every class.
    #[arg(long)]
    full_attention: bool,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write one self-contained HTML page for the cytologist: per bag the
    /// subtype, probability bars, top-attention cell tiles per class, the
    /// whole bag sorted by attention (a toggle per class) and the model's provenance.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Preprocessing plugin (a shared library built against `amlmil-plugin`,
    /// e.g. target/debug/libamlmil_grey_world.so) run on the cells before encoding.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Configuration string for --plugin (JSON by convention).
    #[arg(long, default_value = "", requires = "plugin")]
    plugin_config: String,
    /// Bag folders.
    #[arg(required = true)]
    bags: Vec<PathBuf>,
}

#[derive(clap::Args)]
struct CheckPrecisionArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// The reduced precision to check against fp32: `bf16` or `fp16` (CUDA).
    #[arg(long, default_value = "bf16")]
    precision: String,
    /// Largest allowed difference of any class probability.
    #[arg(long, default_value_t = amlmil::guard::GuardBounds::default().max_probability_diff)]
    max_probability_diff: f32,
    /// Cells compared per class ranking.
    #[arg(long, default_value_t = amlmil::guard::GuardBounds::default().top_k)]
    top_k: usize,
    /// Of the top-k cells, how many must be among fp32's.
    #[arg(long, default_value_t = amlmil::guard::GuardBounds::default().min_overlap)]
    min_overlap: usize,
    /// Write the JSON here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Bag folders.
    #[arg(required = true)]
    bags: Vec<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum InitKind {
    Encoder,
    Mil,
}

#[derive(Clone, Copy, ValueEnum)]
enum GVariant {
    FourConv,
    Scemila,
    Pooled,
}

#[derive(clap::Args)]
struct InitArgs {
    kind: InitKind,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Encoder architecture (resnet18, resnet34; vit_s14, vit_b14, vit_l14, vit_g14
    /// with `--g pooled` for the head).
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// Input size in pixels (default 144 for a ResNet, 224 for a ViT: a
    /// multiple of its 14 px patch).
    #[arg(long)]
    input_size: Option<i64>,
    /// MIL cell network g.
    #[arg(long, value_enum, default_value = "four-conv")]
    g: GVariant,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    if let Some(level) = &cli.log_level {
        logger.parse_filters(level);
    }
    logger.init();
    let result = match cli.command {
        Command::Info => {
            emit(&format!("{:#}", amlmil::runtime_info()));
            Ok(())
        }
        Command::Predict(args) => predict(args),
        Command::Evaluate(args) => evaluate(args),
        Command::CheckPrecision(args) => check_precision(args),
        Command::InitCheckpoint(args) => init_checkpoint(args),
        Command::Inspect { checkpoint } => Checkpoint::read(&checkpoint)
            .map(|ck| emit(&serde_json::to_string_pretty(&ck.manifest).unwrap_or_default())),
        Command::Synth(args) => synth(args),
        Command::Bench(args) => bench::bench(args),
        Command::ExtractFeatures(args) => train::extract(args),
        Command::Pretrain(args) => train::pretrain_cmd(args),
        Command::Probe(args) => train::probe(args),
        Command::TrainMil(args) => train::train_mil(args),
        Command::Ensemble(args) => train::ensemble(args),
        Command::Cv(args) => train::cv(args),
        Command::Experiment(args) => train::experiment_cmd(args),
        Command::Dataset(cmd) => dataset(cmd),
        Command::Import(args) => interop::import(args),
        Command::Export(args) => interop::export(args),
        Command::Montage { out, size, seed } => amlmil::synth::write_montage(&out, size, seed)
            .map(|()| eprintln!("wrote {}", out.display())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A line above the bar, or on its own when the bar is hidden (standard error
/// is not a terminal, e.g. a vendor script's log file), so logs still show progress.
fn note(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

fn progress_bar(len: usize, unit: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{{msg}} [{{bar:30}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

fn synth(args: SynthArgs) -> amlmil::Result<()> {
    let cfg = amlmil::synth::CohortConfig {
        patients_per_class: args.patients_per_class,
        cells_min: args.cells.0,
        cells_max: args.cells.1,
        abnormal_fraction_min: args.abnormal.0,
        abnormal_fraction_max: args.abnormal.1,
        image_size: args.size,
        annotated_fraction: args.annotated,
        seed: args.seed,
        threads: 0,
    };
    let bar = progress_bar(0, "cells");
    bar.set_message("rendering");
    let summary = amlmil::synth::generate_cohort(&cfg, &args.out, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish_and_clear();
    eprintln!(
        "wrote {} patients, {} cells ({} annotated) to {}",
        summary.patients.len(),
        summary.n_cells,
        summary.n_annotated,
        summary.out.display()
    );
    Ok(())
}

fn dataset(cmd: DatasetCommand) -> amlmil::Result<()> {
    use amlmil::dataset::{Dataset, OpenOptions};
    match cmd {
        DatasetCommand::Check { dir, skip, images } => {
            let options = if skip {
                OpenOptions::skip()
            } else {
                OpenOptions::fail()
            }
            .with_image_check(images);
            let (ds, issues) = Dataset::open(&dir, &options)?;
            for issue in &issues {
                eprintln!("{issue}");
            }
            emit(&ds.summary().to_string());
            Ok(())
        }
        DatasetCommand::ColourBaseline { dir, folds, seed } => {
            let report = amlmil::synth::colour_baseline(&dir, folds, seed)?;
            emit(&format!(
                "colour-only nearest-centroid baseline, {folds}-fold stratified CV (seed {seed}): \
                 macro F1 {:.3} (per fold {:?}; pooled {:.3}; chance 0.2)",
                report.mean_macro_f1,
                report
                    .fold_macro_f1
                    .iter()
                    .map(|f| (f * 1000.0).round() / 1000.0)
                    .collect::<Vec<_>>(),
                report.pooled_macro_f1
            ));
            Ok(())
        }
    }
}

fn cell_net(g: GVariant) -> CellNet {
    match g {
        GVariant::FourConv => CellNet::default(),
        GVariant::Scemila => CellNet::Scemila,
        GVariant::Pooled => CellNet::Pooled,
    }
}

/// Prints to standard output; a closed pipe (`| head`) is not an error.
fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out
        .write_all(text.as_bytes())
        .and_then(|()| out.write_all(b"\n"));
}

fn init_checkpoint(args: InitArgs) -> amlmil::Result<()> {
    let arch: EncoderArch = args.arch.parse()?;
    let input_size = args
        .input_size
        .unwrap_or(if arch.is_vit() { 224 } else { 144 });
    match args.kind {
        InitKind::Encoder => {
            checkpoint::write_random_encoder(&args.out, arch, input_size, args.seed)?;
        }
        InitKind::Mil => {
            let side = arch.feature_side(input_size);
            let config = MilConfig {
                head: cell_net(args.g).into(),
                in_channels: arch.feature_dim(),
                in_side: side,
                ..MilConfig::default()
            };
            let classes = amlmil::classes::BAG_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect();
            checkpoint::write_random_mil(&args.out, &config, classes, input_size, args.seed)?;
        }
    }
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// Image files of a bag folder, sorted by name with numbers compared numerically.
fn cell_files(dir: &Path) -> amlmil::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| amlmil::Error::io("cannot list", dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                matches!(
                    e.to_ascii_lowercase().as_str(),
                    "tif" | "tiff" | "png" | "jpg" | "jpeg"
                )
            })
        })
        .collect();
    let key = |p: &PathBuf| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let digits: String = name.chars().filter(|c| c.is_ascii_digit()).collect();
        (digits.parse::<u64>().unwrap_or(u64::MAX), name)
    };
    files.sort_by_key(key);
    Ok(files)
}

/// A bag folder's image files (sorted) and the bag of their cells, ids = positions.
fn load_bag(dir: &Path) -> amlmil::Result<(Vec<PathBuf>, Bag)> {
    let files = cell_files(dir)?;
    let mut bag = Bag::new();
    for (i, f) in files.iter().enumerate() {
        bag.add(i as u64, CellImage::open(f)?)?;
    }
    Ok((files, bag))
}

fn check_precision(args: CheckPrecisionArgs) -> amlmil::Result<()> {
    use amlmil::guard::{check, GuardBounds};
    let options = args.session.options(&args.precision)?;
    let bounds = GuardBounds {
        max_probability_diff: args.max_probability_diff,
        top_k: args.top_k,
        min_overlap: args.min_overlap,
    };
    let bags = args
        .bags
        .iter()
        .map(|dir| Ok((dir.display().to_string(), load_bag(dir)?.1)))
        .collect::<amlmil::Result<Vec<_>>>()?;
    let (encoder, mil) = (&args.session.encoder, &args.session.mil);
    let report = check(encoder, mil, &options, &bags, &bounds)?;
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    match &args.out {
        Some(path) => amlmil::io::write_atomic(path, json.as_bytes())?,
        None => emit(&json),
    }
    if report.holds {
        Ok(())
    } else {
        Err(amlmil::Error::Mismatch(format!(
            "the diagnosis guard fails at {}: {} of {} bags keep their class, probabilities differ by up to {:.4} (bound {}), top-{} overlap down to {} (bound {})",
            report.precision.name(),
            report.same_class,
            report.bags.len(),
            report.max_probability_diff,
            bounds.max_probability_diff,
            bounds.top_k,
            report.min_overlap,
            bounds.min_overlap
        )))
    }
}

fn predict(args: PredictArgs) -> amlmil::Result<()> {
    let options = args.session.options(&args.precision)?;
    let plugin = match &args.plugin {
        Some(path) => Some(amlmil::plugin::RustPlugin::load(path, &args.plugin_config)?),
        None => None,
    };
    let mut session = Session::new(&args.session.encoder, &args.session.mil, &options)?;
    if let Some(p) = plugin {
        session = session.with_preprocessor(std::sync::Arc::new(p));
    }
    let mut reports = Vec::new();
    let mut for_page = Vec::new();
    for dir in &args.bags {
        let (files, bag) = load_bag(dir)?;
        let bar = progress_bar(bag.len(), "cells");
        bar.set_message(dir.display().to_string());
        let pred = session.classify(&bag, &mut |_, done, _| {
            bar.set_position(done as u64);
            true
        })?;
        bar.finish_and_clear();
        // Cell ids are file positions; a plugin may have dropped some cells.
        let name = |id: u64| {
            files[id as usize]
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        };
        let ranking: serde_json::Map<String, serde_json::Value> = pred
            .classes
            .iter()
            .enumerate()
            .map(|(c, class)| {
                let top = pred.top_cells(c, args.top_k).unwrap_or_default();
                let cells = top
                    .iter()
                    .map(|t| serde_json::json!({"file": name(t.cell_id), "cell_id": t.cell_id, "attention": t.attention}))
                    .collect();
                (class.clone(), serde_json::Value::Array(cells))
            })
            .collect();
        let probabilities: serde_json::Map<String, serde_json::Value> = pred
            .classes
            .iter()
            .zip(&pred.probabilities)
            .map(|(c, p)| (c.clone(), serde_json::json!(p)))
            .collect();
        let mut report = serde_json::json!({
            "bag": dir.display().to_string(),
            "num_cells": pred.num_cells(),
            "predicted": pred.classes[pred.predicted],
            "predicted_display": amlmil::classes::display_name(&pred.classes[pred.predicted]),
            "probabilities": probabilities,
            "top_cells": ranking,
        });
        if args.full_attention {
            report["files"] =
                serde_json::json!(pred.cell_ids.iter().map(|&id| name(id)).collect::<Vec<_>>());
            report["attention"] = serde_json::json!(pred.attention);
            report["attention_raw"] = serde_json::json!(pred.attention_raw);
        }
        reports.push(report);
        if args.html.is_some() {
            let name = dir.file_name().map_or_else(
                || dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            for_page.push((name, bag, pred));
        }
    }
    if let Some(path) = &args.html {
        let bags: Vec<amlmil::html::PageBag> = for_page
            .iter()
            .map(|(name, bag, prediction)| amlmil::html::PageBag {
                name: name.clone(),
                bag,
                prediction,
            })
            .collect();
        let page = amlmil::html::page(&session, &bags, args.top_k)?;
        amlmil::io::write_atomic(path, page.as_bytes())?;
        eprintln!("wrote {}", path.display());
    }
    let json = serde_json::to_string_pretty(&reports).unwrap_or_default();
    match args.out {
        Some(path) => amlmil::io::write_atomic(&path, json.as_bytes())?,
        None => emit(&json),
    }
    Ok(())
}
