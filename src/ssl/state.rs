//! Checkpoints and the resumable state of pre-training: the exported encoder,
//! its per-epoch copies and `state.safetensors`, written after every epoch and
//! read back to resume.
//!
//! **Checkpoints.** After every epoch: the encoder as a standard encoder
//! checkpoint `<output>/encoder.safetensors` (provenance: the method, the seed,
//! the configuration, epoch and loss), a copy in `<output>/epoch_<k>/` every
//! `keep_every` epochs (k = epochs completed), then the resumable state
//! `<output>/state.safetensors`: every model, head, teacher, prototype and
//! optimiser tensor, the DINO centre and the SwAV queue, with JSON metadata
//! (method, architecture, epochs and steps completed, history, configuration).
//! Both files are written atomically; the state is written last, so it never
//! runs ahead of the encoder. A cancelled or failed run (non-finite loss) keeps
//! the files of its last completed epoch.
use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::{Device, Tensor};

use crate::checkpoint::{self, EncoderManifest, Manifest, Provenance};
use crate::error::{Error, Result};
use crate::model::EncoderArch;
use crate::ssl::config::PretrainConfig;
use crate::ssl::monitor::{ProbeMonitor, StepMonitor};
use crate::ssl::step::{Model, Optimizer};
use crate::ssl::train::EpochRecord;

/// File name of the exported encoder in the output directory.
pub const ENCODER_FILE: &str = "encoder.safetensors";
/// File name of the resumable training state in the output directory.
pub const STATE_FILE: &str = "state.safetensors";
/// `__metadata__` key of the state's JSON.
pub const STATE_KEY: &str = "amlmil_pretrain_state";
pub(super) const STATE_FORMAT_VERSION: u32 = 1;

/// Metadata of `state.safetensors`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StateMeta {
    pub(super) format_version: u32,
    /// The method's name (`simclr`).
    pub(super) method: String,
    pub(super) architecture: EncoderArch,
    pub(super) epochs_completed: u64,
    pub(super) steps_completed: u64,
    pub(super) steps_per_epoch: u64,
    pub(super) cells: usize,
    /// How randomness is derived (there is no generator state to save).
    pub(super) rng: String,
    pub(super) history: Vec<EpochRecord>,
    pub(super) step_losses: Vec<f64>,
    #[serde(default)]
    pub(super) monitors: Vec<StepMonitor>,
    #[serde(default)]
    pub(super) probes: Vec<ProbeMonitor>,
    pub(super) config: PretrainConfig,
}

/// Reads a safetensors file's tensors and one `__metadata__` entry.
fn read_safetensors(path: &Path, key: &str) -> Result<(BTreeMap<String, Tensor>, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    let (meta, tensors) = crate::checkpoint::decode_tensors(&bytes, path)?;
    let json = meta.get(key).cloned().ok_or_else(|| {
        Error::checkpoint(
            path,
            format!("no `{key}` metadata: not a pre-training state"),
        )
    })?;
    Ok((tensors.into_iter().collect(), json))
}

pub(super) fn read_state(
    path: &Path,
    config: &PretrainConfig,
    method: &str,
) -> Result<(StateMeta, BTreeMap<String, Tensor>)> {
    let (tensors, json) = read_safetensors(path, STATE_KEY)?;
    let meta: StateMeta = serde_json::from_str(&json)
        .map_err(|e| Error::checkpoint(path, format!("state metadata is not valid: {e}")))?;
    if meta.method != method {
        return Err(Error::invalid(
            "method",
            format!(
                "cannot resume: {} holds a {} run, this configuration is {method}",
                path.display(),
                meta.method,
            ),
        ));
    }
    if meta.architecture != config.architecture {
        return Err(Error::invalid(
            "architecture",
            format!(
                "cannot resume: {} holds a {} encoder, this configuration is {}",
                path.display(),
                meta.architecture.name(),
                config.architecture.name()
            ),
        ));
    }
    let differing = differing_keys(&meta.config, config);
    if !differing.is_empty() {
        log::warn!(
            "resuming {} with changed settings: {}",
            path.display(),
            differing.join(", ")
        );
    }
    Ok((meta, tensors))
}

/// Top-level keys whose values differ (besides `resume`).
fn differing_keys(a: &PretrainConfig, b: &PretrainConfig) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Vec::new();
    };
    a.iter()
        .filter(|(k, v)| k.as_str() != "resume" && b.get(k.as_str()) != Some(v))
        .map(|(k, _)| k.clone())
        .collect()
}

fn provenance(config: &PretrainConfig, meta: &StateMeta, exported: &str) -> Provenance {
    let mut p = Provenance::new(&meta.method, Some(config.seed));
    let d = &mut p.details;
    d.insert(
        "config".into(),
        serde_json::to_value(config).unwrap_or(Value::Null),
    );
    d.insert("epochs_completed".into(), meta.epochs_completed.into());
    d.insert("steps_completed".into(), meta.steps_completed.into());
    d.insert("cells".into(), meta.cells.into());
    if let Some(last) = meta.history.last() {
        d.insert("last_epoch_loss".into(), last.mean_loss.into());
    }
    d.insert("exported".into(), exported.into());
    p
}

pub(super) fn save_epoch(
    config: &PretrainConfig,
    model: &Model,
    optimizer: &Optimizer,
    meta: &StateMeta,
    cell_types: Option<&[String]>,
) -> Result<()> {
    let mut prov = provenance(config, meta, model.learner().exported_name());
    if let Some(types) = cell_types {
        prov.details.insert("cell_types".into(), types.into());
    }
    let mut manifest = EncoderManifest::new(config.architecture, config.image_size, prov);
    manifest.normalization = config.normalization;
    let manifest = Manifest::Encoder(manifest);
    checkpoint::save(
        &config.output.join(ENCODER_FILE),
        &manifest,
        model.export_store(),
    )?;
    let k = meta.epochs_completed;
    if config.keep_every > 0 && k % config.keep_every == 0 {
        let dir = config.output.join(format!("epoch_{k}"));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        checkpoint::save(&dir.join(ENCODER_FILE), &manifest, model.export_store())?;
    }
    let mut named: Vec<(String, Tensor)> = Vec::new();
    for (prefix, vs) in model.stores() {
        for (name, t) in vs.variables() {
            named.push((format!("{prefix}.{name}"), t.detach()));
        }
    }
    for (k, t) in optimizer.state() {
        named.push((format!("optimizer.{k}"), t));
    }
    named.extend(model.extra_state());
    let cpu: Vec<(String, Tensor)> = named
        .into_iter()
        .map(|(k, t)| (k, t.to_device(Device::Cpu)))
        .collect();
    let refs: Vec<(&str, &Tensor)> = cpu.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let json = serde_json::to_string(meta)
        .map_err(|e| Error::invalid("state", format!("cannot serialise metadata: {e}")))?;
    let metadata = std::collections::HashMap::from([(STATE_KEY.to_owned(), json)]);
    checkpoint::write_tensors(&config.output.join(STATE_FILE), &refs, Some(metadata))
}
