//! Running the Python side (`python -m amlmil.tool`, in `bindings/python`).
//!
//! The interpreter is the caller's choice, else `$AMLMIL_PYTHON` (which
//! `scripts/env.sh` sets to the set-up environment's Python with torch), else
//! `python3`. The package is found where `pip install ./bindings/python` put it,
//! or through `$AMLMIL_PYTHONPATH`, or in the source tree this library was built
//! from.
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::SourceTensors;
use crate::checkpoint;
use crate::error::{Error, Result};

/// The interpreter used when none is given.
pub fn interpreter(python: Option<&Path>) -> PathBuf {
    python
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("AMLMIL_PYTHON").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

fn package_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AMLMIL_PYTHONPATH") {
        return Some(PathBuf::from(p));
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("bindings/python");
    built_from
        .join("amlmil/tool.py")
        .exists()
        .then_some(built_from)
}

/// Runs `python -m amlmil.tool <args>`; returns its stdout. `subject` names the
/// file in errors.
pub fn run_tool(python: Option<&Path>, args: &[&OsStr], subject: &Path) -> Result<String> {
    let exe = interpreter(python);
    let mut cmd = Command::new(&exe);
    cmd.arg("-m").arg("amlmil.tool").args(args);
    if let Some(dir) = package_dir() {
        let mut paths = vec![dir];
        if let Some(old) = std::env::var_os("PYTHONPATH") {
            paths.extend(std::env::split_paths(&old));
        }
        if let Ok(joined) = std::env::join_paths(paths) {
            cmd.env("PYTHONPATH", joined);
        }
    }
    let out = cmd.output().map_err(|e| {
        Error::invalid(
            "python",
            format!(
                "cannot start `{}` ({e}); pickled PyTorch files need a Python with torch: set AMLMIL_PYTHON (scripts/setup-env.sh installs one)",
                exe.display()
            ),
        )
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("amlmil.tool: "))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let last = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            format!(
                "`{} -m amlmil.tool` failed ({}): {last}",
                exe.display(),
                out.status
            )
        });
    Err(Error::checkpoint(subject, line))
}

/// Reads a pickled PyTorch file's tensors through `amlmil.tool flatten`.
pub fn flatten(src: &Path, python: Option<&Path>) -> Result<SourceTensors> {
    let tmp = tempfile::Builder::new()
        .prefix("amlmil-import-")
        .suffix(".safetensors")
        .tempfile()
        .map_err(|e| Error::io("cannot create a temporary file for", src, e))?;
    run_tool(
        python,
        &[
            OsStr::new("flatten"),
            src.as_os_str(),
            tmp.path().as_os_str(),
        ],
        src,
    )?;
    let bytes = std::fs::read(tmp.path()).map_err(|e| Error::io("cannot read", tmp.path(), e))?;
    let (meta, named) = checkpoint::decode_tensors(&bytes, src)?;
    let attributes = meta
        .get("amlmil.attributes")
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    Ok(SourceTensors {
        tensors: named.into_iter().collect(),
        attributes,
    })
}
