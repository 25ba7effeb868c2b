//! `amlmil import` and `amlmil export`: PyTorch-trained models in, libamlmil
//! models out (the library's `interop` module; pickled files go through the
//! Python side in `bindings/python`).
use std::path::PathBuf;

use amlmil::checkpoint::Normalization;
use amlmil::interop::{self, DinoBranch, ExportFormat, ImportOptions, ImportSource};
use amlmil::model::VitFeatures;

#[derive(clap::Args)]
pub struct ImportArgs {
    /// The PyTorch file: `.pth`/`.pt`/`.pth.tar`/`.torch`/`.ckpt` (read by the Python
    /// side, without running its code) or `.safetensors`.
    pub src: PathBuf,
    /// The libamlmil checkpoint to write (`.safetensors`).
    #[arg(long)]
    pub out: PathBuf,
    /// Layout of the file's names: auto, torchvision, vissl, dino, swav, lightly,
    /// scemila (ResNets and SCEMILA's head); dinov2, timm (ViTs such as DinoBloom).
    #[arg(long, default_value = "auto")]
    pub source: String,
    /// DINO: which network to take (teacher or student).
    #[arg(long, default_value = "teacher", value_parser = ["teacher", "student"])]
    pub branch: String,
    /// Take the model from under this name prefix (ends with `.`) instead of the
    /// source's known ones.
    #[arg(long)]
    pub prefix: Option<String>,
    /// Side of the square cell image the encoder sees, in pixels (default: 144 for
    /// a ResNet; for a ViT the size its position embeddings were learnt at,
    /// 224 for DinoBloom).
    #[arg(long)]
    pub input_size: Option<i64>,
    /// ViT: what the MIL head is fed, the class token (`cls`) or the class token
    /// and the mean patch token concatenated (`cls_mean`).
    #[arg(long, default_value = "cls", value_parser = ["cls", "cls_mean"])]
    pub vit_features: String,
    /// Per-channel input mean (of pixels in [0, 1]) the encoder was trained with,
    /// `r,g,b` (default ImageNet's).
    #[arg(long, value_parser = parse_triple)]
    pub mean: Option<[f32; 3]>,
    /// Per-channel input standard deviation, `r,g,b` (default ImageNet's).
    #[arg(long, value_parser = parse_triple)]
    pub std: Option<[f32; 3]>,
    /// SCEMILA: class names in output order, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub classes: Vec<String>,
    /// SCEMILA: its `class_conversion.csv`, for the class order.
    #[arg(long)]
    pub class_conversion: Option<PathBuf>,
    /// Python with torch for pickled files (default $AMLMIL_PYTHON, then python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A libamlmil checkpoint (`.safetensors`).
    pub src: PathBuf,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// `pth`: a torch.save'd state dict (torchvision names for encoders,
    /// amlmil.models.AttentionMil's for MIL heads); `onnx`: the encoder for ONNX Runtime.
    #[arg(long, default_value = "pth", value_parser = ["pth", "onnx"])]
    pub format: String,
    /// Python with torch (default $AMLMIL_PYTHON, then python3).
    #[arg(long)]
    pub python: Option<PathBuf>,
}

fn parse_triple(s: &str) -> Result<[f32; 3], String> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| x.trim().parse::<f32>().map_err(|e| format!("`{x}`: {e}")))
        .collect::<Result<_, _>>()?;
    v.try_into()
        .map_err(|v: Vec<f32>| format!("expected three comma-separated numbers, got {}", v.len()))
}

pub fn import(args: ImportArgs) -> amlmil::Result<()> {
    let defaults = Normalization::default();
    let options = ImportOptions {
        source: args.source.parse::<ImportSource>()?,
        branch: match args.branch.as_str() {
            "student" => DinoBranch::Student,
            _ => DinoBranch::Teacher,
        },
        prefix: args.prefix,
        input_size: args.input_size,
        vit_features: match args.vit_features.as_str() {
            "cls_mean" => VitFeatures::ClsMean,
            _ => VitFeatures::Cls,
        },
        normalization: Normalization {
            mean: args.mean.unwrap_or(defaults.mean),
            std: args.std.unwrap_or(defaults.std),
        },
        classes: args.classes,
        class_conversion: args.class_conversion,
        python: args.python,
    };
    let report = interop::import(&args.src, &args.out, &options)?;
    super::emit(&serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}

pub fn export(args: ExportArgs) -> amlmil::Result<()> {
    let format: ExportFormat = args.format.parse()?;
    let report = interop::export(&args.src, &args.out, format, args.python.as_deref())?;
    super::emit(&serde_json::to_string_pretty(&report).unwrap_or_default());
    Ok(())
}
