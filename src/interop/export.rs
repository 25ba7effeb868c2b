//! libamlmil checkpoints back to the PyTorch world.
//!
//! `pth`: the tensors as a `torch.save`d state dict: for an encoder torchvision's
//! names (`torchvision.models.resnet18()` with `fc = nn.Identity()` loads it with
//! `strict=True`), for a MIL head the names of `amlmil.models.AttentionMil`,
//! which reads its configuration off the shapes. `onnx`: the encoder as an ONNX
//! model from normalised pixels `[N, 3, S, S]` to the feature map, for ONNX
//! Runtime. Both are written by the Python side; the checkpoint is fully loaded
//! and checked here first.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::python;
use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::frozen::{load_encoder, load_mil};

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    /// A `torch.save`d state dict.
    #[default]
    Pth,
    /// An ONNX model of the encoder (opset 18).
    Onnx,
}

impl FromStr for ExportFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pth" => Ok(ExportFormat::Pth),
            "onnx" => Ok(ExportFormat::Onnx),
            _ => Err(Error::invalid(
                "format",
                format!("`{s}` is not one of pth, onnx"),
            )),
        }
    }
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportReport {
    /// `encoder` or `mil`.
    pub kind: String,
    pub format: ExportFormat,
    pub output: PathBuf,
}

/// Writes the checkpoint `src` to `out` in `format` (see the module docs).
pub fn export(
    src: &Path,
    out: &Path,
    format: ExportFormat,
    python_exe: Option<&Path>,
) -> Result<ExportReport> {
    if out.is_dir() {
        return Err(Error::invalid(
            "out",
            format!("{} is a directory", out.display()),
        ));
    }
    let kind = Checkpoint::read(src)?.manifest.kind();
    // The same checks a session makes, so a broken checkpoint is refused here, not in PyTorch.
    match kind {
        "encoder" => drop(load_encoder(src, Device::Cpu)?),
        _ => {
            let (heads, _, _) = load_mil(src, Device::Cpu)?;
            if heads.len() > 1 {
                return Err(Error::invalid(
                    "src",
                    format!(
                        "{} is an ensemble of {} MIL heads; PyTorch's AttentionMil holds one: export the checkpoints of the runs it lists",
                        src.display(),
                        heads.len()
                    ),
                ));
            }
        }
    }
    let command = match (format, kind) {
        (ExportFormat::Pth, _) => "to-pth",
        (ExportFormat::Onnx, "encoder") => "onnx",
        (ExportFormat::Onnx, other) => {
            return Err(Error::invalid(
                "format",
                format!(
                    "ONNX export is for encoders; {} is a `{other}` checkpoint",
                    src.display()
                ),
            ))
        }
    };
    python::run_tool(
        python_exe,
        &[OsStr::new(command), src.as_os_str(), out.as_os_str()],
        src,
    )?;
    Ok(ExportReport {
        kind: kind.to_owned(),
        format,
        output: out.to_path_buf(),
    })
}
