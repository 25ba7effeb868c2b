//! Bring your own weights: models trained in PyTorch become libamlmil checkpoints
//! (`amlmil import`), and libamlmil checkpoints go back to PyTorch and ONNX
//! (`amlmil export`).
//!
//! Rooms: [`python`] runs the Python side (`bindings/python/amlmil`) that reads
//! pickled PyTorch files without running their code and writes `.pth` / ONNX;
//! [`encoder`] finds a ResNet trunk in a file's tensors under the layouts of
//! torchvision, VISSL, DINO, SwAV and lightly; [`vit`] a vision transformer in
//! DINOv2's or timm's layout (DinoBloom); [`scemila`] maps SCEMILA's
//! attention-MIL `AMiL`; [`export`] writes the other direction. Every file is
//! checked against the architecture before anything is written, errors name the
//! tensor as the source file spells it, and outputs go through a temporary file
//! and a rename, so a failed import leaves nothing behind.
pub mod encoder;
pub mod export;
pub mod python;
pub mod scemila;
pub mod vit;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::checkpoint::{self, Normalization};
use crate::error::{Error, Result};
use crate::model::VitFeatures;

pub use export::{export, ExportFormat, ExportReport};

/// Where a file to import comes from: which names its tensors carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportSource {
    /// Decide from the tensor names (refuses when two layouts match).
    #[default]
    Auto,
    /// A torchvision ResNet18/34 `state_dict` (with or without `fc`, `module.` allowed),
    /// `.pth`/`.pt` or `.safetensors`.
    Torchvision,
    /// A VISSL checkpoint: `classy_state_dict.base_model.model.trunk._feature_blocks.*`.
    Vissl,
    /// The official DINO checkpoint: `teacher` / `student`, `module.backbone.*`.
    Dino,
    /// SwAV's checkpoint: `state_dict`, `module.*`.
    Swav,
    /// A lightly backbone: `nn.Sequential(*resnet.children()[:-1])`, `backbone.0.weight`, ….
    Lightly,
    /// SCEMILA's attention-MIL `AMiL` (whole pickled module or its `state_dict`).
    Scemila,
    /// A DINOv2-layout ViT: a hub backbone, or a training checkpoint's
    /// `teacher`/`student` `backbone.` (DinoBloom's files).
    Dinov2,
    /// A timm `vit_*_patch14_dinov2` (`reg_token`, packed SwiGLU `mlp.fc1`).
    Timm,
}

impl ImportSource {
    pub const ALL: [ImportSource; 9] = [
        ImportSource::Auto,
        ImportSource::Torchvision,
        ImportSource::Vissl,
        ImportSource::Dino,
        ImportSource::Swav,
        ImportSource::Lightly,
        ImportSource::Scemila,
        ImportSource::Dinov2,
        ImportSource::Timm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ImportSource::Auto => "auto",
            ImportSource::Torchvision => "torchvision",
            ImportSource::Vissl => "vissl",
            ImportSource::Dino => "dino",
            ImportSource::Swav => "swav",
            ImportSource::Lightly => "lightly",
            ImportSource::Scemila => "scemila",
            ImportSource::Dinov2 => "dinov2",
            ImportSource::Timm => "timm",
        }
    }
}

impl FromStr for ImportSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ImportSource::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = ImportSource::ALL.iter().map(|x| x.name()).collect();
                Error::invalid(
                    "source",
                    format!("`{s}` is not one of {}", names.join(", ")),
                )
            })
    }
}

/// Which of DINO's two networks to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DinoBranch {
    /// The momentum teacher, the network DINO evaluates.
    #[default]
    Teacher,
    Student,
}

impl DinoBranch {
    pub fn name(self) -> &'static str {
        match self {
            DinoBranch::Teacher => "teacher",
            DinoBranch::Student => "student",
        }
    }
}

/// What a file cannot tell: supplied by the user (CLI flags, or the C ABI's JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportOptions {
    pub source: ImportSource,
    /// DINO only: `teacher` (default) or `student`.
    pub branch: DinoBranch,
    /// Take the model from under this name prefix (e.g. `model.encoder.`) instead of
    /// the source's known prefixes.
    pub prefix: Option<String>,
    /// Side of the square input the encoder sees: by default 144 px (the AML
    /// cells) for a ResNet, and for a ViT the size its position embeddings
    /// were learnt at (224 for DinoBloom; DINOv2's hub models: 518).
    pub input_size: Option<i64>,
    /// ViT only: what the MIL head is fed, the class token (`cls`, default) or
    /// the class token and the mean patch token (`cls_mean`).
    pub vit_features: VitFeatures,
    /// Input normalisation the encoder was trained with (ImageNet's by default).
    pub normalization: Normalization,
    /// SCEMILA only: class names in output order.
    pub classes: Vec<String>,
    /// SCEMILA only: its `class_conversion.csv` (columns `art_lbl`, `true_lbl`), instead of `classes`.
    pub class_conversion: Option<PathBuf>,
    /// Python interpreter with torch for pickled files (default `$AMLMIL_PYTHON`, then `python3`).
    pub python: Option<PathBuf>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            source: ImportSource::Auto,
            branch: DinoBranch::Teacher,
            prefix: None,
            input_size: None,
            vit_features: VitFeatures::Cls,
            normalization: Normalization::default(),
            classes: Vec::new(),
            class_conversion: None,
            python: None,
        }
    }
}

impl ImportOptions {
    fn validate(&self) -> Result<()> {
        if let Some(s) = self.input_size.filter(|s| !(32..=4096).contains(s)) {
            return Err(Error::invalid(
                "input_size",
                format!("must be 32..=4096 px, got {s}"),
            ));
        }
        let n = &self.normalization;
        if n.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || n.mean.iter().any(|m| !m.is_finite())
        {
            return Err(Error::invalid(
                "normalization",
                "std must be positive and finite, mean finite",
            ));
        }
        if let Some(p) = &self.prefix {
            if !p.is_empty() && !p.ends_with('.') {
                return Err(Error::invalid(
                    "prefix",
                    format!("must end with `.` (e.g. `{p}.`), got `{p}`"),
                ));
            }
        }
        Ok(())
    }

    /// The input size of a ResNet or a SCEMILA head: the user's, else 144 px.
    fn resnet_input_size(&self) -> i64 {
        self.input_size.unwrap_or(144)
    }
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportReport {
    /// `encoder` or `mil`.
    pub kind: String,
    /// The layout that matched (the resolved `auto`).
    pub source: ImportSource,
    /// Name prefix the model was taken from.
    pub prefix: String,
    /// `resnet18` / `resnet34`, `vit_s14` … `vit_g14`, or `attention_mil`.
    pub architecture: String,
    /// Tensors written.
    pub tensors: usize,
    /// Tensors of the file that are not part of the model (heads, optimiser state), first few by name.
    pub ignored: Vec<String>,
    /// How many tensors were ignored in all.
    pub ignored_count: usize,
    pub output: PathBuf,
}

/// The tensors of a file, by name, read natively (safetensors) or by the Python side (pickles).
pub struct SourceTensors {
    pub tensors: HashMap<String, Tensor>,
    /// Scalar attributes of pickled modules (e.g. SCEMILA's `multicolumn`), as JSON.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Reads every tensor of `src`: a safetensors file directly, anything else as a
/// pickled PyTorch file through `python -m amlmil.tool flatten`.
pub fn read_source(src: &Path, python_exe: Option<&Path>) -> Result<SourceTensors> {
    use std::io::Read;
    let io = |e| Error::io("cannot read", src, e);
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(src).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let n = file.read(&mut head).map_err(io)?;
    if !looks_like_safetensors(&head[..n], len) {
        // A pickle: the Python side reads it (the file is not read here).
        return python::flatten(src, python_exe);
    }
    let bytes = std::fs::read(src).map_err(io)?;
    let (_, named) = checkpoint::decode_tensors(&bytes, src)?;
    Ok(SourceTensors {
        tensors: named.into_iter().collect(),
        attributes: Default::default(),
    })
}

/// A safetensors file starts with a little-endian u64 header length (within
/// the file's `len` bytes) and a JSON object.
fn looks_like_safetensors(head: &[u8], len: u64) -> bool {
    head.len() == 9
        && u64::from_le_bytes(head[..8].try_into().unwrap()) <= len.saturating_sub(8)
        && head[8] == b'{'
}

/// Converts the model in `src` to a libamlmil checkpoint at `out` (an encoder or,
/// for SCEMILA, a MIL head). Nothing is written unless the whole model checks out.
pub fn import(src: &Path, out: &Path, options: &ImportOptions) -> Result<ImportReport> {
    options.validate()?;
    if out.exists() && out.is_dir() {
        return Err(Error::invalid(
            "out",
            format!("{} is a directory", out.display()),
        ));
    }
    let source = read_source(src, options.python.as_deref())?;
    let (scemila, vit) = match options.source {
        ImportSource::Scemila => (true, false),
        ImportSource::Dinov2 | ImportSource::Timm => (false, true),
        ImportSource::Auto => (
            scemila::find_prefix(&source.tensors, options.prefix.as_deref()).is_some(),
            vit::is_vit(&source.tensors, options.prefix.as_deref()),
        ),
        _ => (false, false),
    };
    let report = if scemila {
        scemila::import(src, source, out, options)?
    } else if vit {
        vit::import(src, source, out, options)?
    } else {
        encoder::import(src, source, out, options)?
    };
    log::info!(
        "imported {} ({}) from {} under `{}`: {} tensors, {} ignored",
        report.architecture,
        report.source.name(),
        src.display(),
        report.prefix,
        report.tensors,
        report.ignored_count
    );
    Ok(report)
}

/// Provenance of an imported model: where it came from and under which prefix.
fn imported_provenance(src: &Path, source: ImportSource, prefix: &str) -> checkpoint::Provenance {
    let mut p = checkpoint::Provenance::new("imported", None);
    let file = src
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.details.insert("source".into(), source.name().into());
    p.details.insert("prefix".into(), prefix.into());
    p.details.insert("file".into(), file.into());
    p
}

/// Writes an imported encoder (`vs`, described by `manifest` without its
/// normalisation, which `options` gives) to `out` and reports it.
fn write_encoder(
    out: &Path,
    mut manifest: checkpoint::EncoderManifest,
    vs: &tch::nn::VarStore,
    options: &ImportOptions,
    (source, prefix): (ImportSource, String),
    ignored: Vec<String>,
) -> Result<ImportReport> {
    manifest.normalization = options.normalization;
    let architecture = manifest.architecture.name().to_owned();
    checkpoint::save(out, &checkpoint::Manifest::Encoder(manifest), vs)?;
    let (ignored, ignored_count) = ignored_names(ignored);
    Ok(ImportReport {
        kind: "encoder".into(),
        source,
        prefix,
        architecture,
        tensors: vs.variables().len(),
        ignored,
        ignored_count,
        output: out.to_path_buf(),
    })
}

/// Tensors of the file outside the model, sorted, for the report.
fn ignored_names(mut names: Vec<String>) -> (Vec<String>, usize) {
    names.sort();
    let n = names.len();
    names.truncate(8);
    (names, n)
}
