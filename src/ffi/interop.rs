//! Importing PyTorch-trained models (`amlmil import` in the CLI).
use std::ffi::c_char;
use std::path::Path;

use super::boundary::{arg_str, guard, out_ptr, to_json};
use super::status::amlmil_status;
use crate::error::Error;
use crate::interop::{import, ImportOptions};

/// Converts a PyTorch-trained model to a libamlmil checkpoint: a ResNet18/34
/// encoder from torchvision, VISSL, DINO, SwAV or lightly layouts, a ViT from
/// DINOv2's or timm's (DinoBloom), or SCEMILA's attention-MIL head. Safetensors files are read directly; pickled files
/// (`.pth`, `.pt`, `.ckpt`, …) need the Python side (`bindings/python`, a
/// Python with torch in `options.python` or `$AMLMIL_PYTHON`).
///
/// @param source_path the file to import.
/// @param out_path the checkpoint to write; written only when the whole model
///   checks out (nothing is left behind on failure).
/// @param options_json NULL for the defaults, or a JSON object: `source`
///   ("auto" | "torchvision" | "vissl" | "dino" | "swav" | "lightly" |
///   "scemila" | "dinov2" | "timm"), `branch` ("teacher" | "student"),
///   `prefix`, `input_size` (144 for a ResNet; a ViT's learnt grid × patch),
///   `vit_features` ("cls" | "cls_mean"),
///   `normalization` ({"mean": [r,g,b], "std": [r,g,b]}, ImageNet's), `classes`
///   or `class_conversion` (SCEMILA), `python`. Unknown keys are errors.
/// @param[out] out_report_json what was written: kind, source, prefix,
///   architecture, tensor counts (library-owned; `amlmil_string_free`).
///   Untouched on failure.
/// Thread safety: any thread; imports to different `out_path`s may run at once.
#[no_mangle]
pub unsafe extern "C" fn amlmil_import(
    source_path: *const c_char,
    out_path: *const c_char,
    options_json: *const c_char,
    out_report_json: *mut *mut c_char,
) -> amlmil_status {
    guard(|| {
        let out = out_ptr(out_report_json, "out_report_json")?;
        // SAFETY: the caller passes NULL or NUL-terminated strings.
        let (src, dst) = unsafe {
            (
                arg_str(source_path, "source_path")?,
                arg_str(out_path, "out_path")?,
            )
        };
        let options: ImportOptions = if options_json.is_null() {
            ImportOptions::default()
        } else {
            // SAFETY: as above.
            let text = unsafe { arg_str(options_json, "options_json") }?;
            serde_json::from_str(text).map_err(|e| Error::invalid("options_json", e.to_string()))?
        };
        let report = import(Path::new(src), Path::new(dst), &options)?;
        *out = to_json(&report)?;
        Ok(())
    })
}
