//! `amlmil`: command-line front end of the library, for vendor scripts and labs.
//!
//! `amlmil info` prints versions and devices; `amlmil predict` classifies folders
//! of cell images (one folder = one patient's bag) and prints JSON;
//! `amlmil init-checkpoint` writes seeded, randomly initialised checkpoints.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use amlmil::checkpoint::Checkpoint;
use amlmil::model::{init, CellNet, EncoderArch, MilConfig};
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Library, ABI and libtorch versions, CUDA devices (JSON).
    Info,
    /// Classify bags: each PATH is a folder with one patient's cell images.
    Predict(PredictArgs),
    /// Write a seeded, randomly initialised checkpoint.
    InitCheckpoint(InitArgs),
    /// Print a checkpoint's manifest (JSON).
    Inspect {
        /// A `.safetensors` checkpoint.
        checkpoint: PathBuf,
    },
}

#[derive(clap::Args)]
struct PredictArgs {
    /// Encoder checkpoint (.safetensors).
    #[arg(long)]
    encoder: PathBuf,
    /// Attention-MIL checkpoint (.safetensors).
    #[arg(long)]
    mil: PathBuf,
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "auto")]
    device: String,
    /// `fp32`, `fp16` or `bf16` (reduced precision needs CUDA).
    #[arg(long, default_value = "fp32")]
    precision: String,
    /// Cells per encoder batch.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Cells listed per class in the ranking.
    #[arg(long, default_value_t = 5)]
    top_k: usize,
    /// Include every cell's attention for every class.
    #[arg(long)]
    full_attention: bool,
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
    /// Encoder architecture (resnet18, resnet34).
    #[arg(long, default_value = "resnet18")]
    arch: String,
    /// Input size in pixels.
    #[arg(long, default_value_t = 144)]
    input_size: i64,
    /// MIL cell network g.
    #[arg(long, value_enum, default_value = "four-conv")]
    g: GVariant,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Info => {
            println!("{:#}", amlmil::runtime_info());
            Ok(())
        }
        Command::Predict(args) => predict(args),
        Command::InitCheckpoint(args) => init_checkpoint(args),
        Command::Inspect { checkpoint } => Checkpoint::read(&checkpoint).map(|ck| {
            println!(
                "{}",
                serde_json::to_string_pretty(&ck.manifest).unwrap_or_default()
            );
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_checkpoint(args: InitArgs) -> amlmil::Result<()> {
    let arch: EncoderArch = args.arch.parse()?;
    match args.kind {
        InitKind::Encoder => {
            init::write_random_encoder(&args.out, arch, args.input_size, args.seed)?;
        }
        InitKind::Mil => {
            let side = arch.feature_side(args.input_size);
            let config = MilConfig {
                cell_net: match args.g {
                    GVariant::FourConv => CellNet::default(),
                    GVariant::Scemila => CellNet::Scemila,
                    GVariant::Pooled => CellNet::Pooled,
                },
                in_side: side,
                ..MilConfig::default()
            };
            let classes = amlmil::classes::BAG_LABELS
                .iter()
                .map(|s| s.to_string())
                .collect();
            init::write_random_mil(&args.out, &config, classes, args.input_size, args.seed)?;
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

fn predict(args: PredictArgs) -> amlmil::Result<()> {
    let options = SessionOptions {
        device: args.device.parse::<DeviceSpec>()?,
        precision: args.precision.parse::<Precision>()?,
        batch_size: args.batch_size,
        num_threads: None,
        channels_last: true,
    };
    let session = Session::new(&args.encoder, &args.mil, &options)?;
    let mut reports = Vec::new();
    for dir in &args.bags {
        let files = cell_files(dir)?;
        let mut bag = Bag::new();
        for (i, f) in files.iter().enumerate() {
            bag.add(i as u64, CellImage::open(f)?)?;
        }
        let bar = ProgressBar::new(bag.len() as u64).with_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} cells ({per_sec})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(dir.display().to_string());
        let pred = session.classify(&bag, &mut |_, done, _| {
            bar.set_position(done as u64);
            true
        })?;
        bar.finish_and_clear();
        let name = |i: usize| {
            files[i]
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
                    .map(|t| serde_json::json!({"file": name(t.index), "cell_id": t.cell_id, "attention": t.attention}))
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
                serde_json::json!((0..pred.num_cells()).map(name).collect::<Vec<_>>());
            report["attention"] = serde_json::json!(pred.attention);
            report["attention_raw"] = serde_json::json!(pred.attention_raw);
        }
        reports.push(report);
    }
    let json = serde_json::to_string_pretty(&reports).unwrap_or_default();
    match args.out {
        Some(path) => amlmil::checkpoint::write_atomic(&path, json.as_bytes())?,
        None => println!("{json}"),
    }
    Ok(())
}
