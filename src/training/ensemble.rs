//! One deployable MIL checkpoint from a cross-validation: the heads of its
//! runs (folds × seeds) as one ensemble ([`crate::model::MilHeads`]), as
//! medical-imaging toolkits such as nnU-Net ship their folds. The runs must
//! share the encoder (the file each was trained on), the classes and the head's
//! design; the manifest lists the run of every head with its validation and
//! test scores.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::checkpoint::{self, Checkpoint, Ensemble, EnsembleMember, Manifest, Provenance};
use crate::error::{Error, Result};
use crate::model::MilHeads;

/// What to ensemble, as the C entry point and configuration files give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleConfig {
    /// An `amlmil cv` output folder (its `runs/`).
    pub cv_dir: PathBuf,
    /// The checkpoint to write.
    pub out: PathBuf,
    /// Only these seeds' runs (`null`: every finished run).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
}

impl EnsembleConfig {
    /// Parses a JSON object; unknown keys are errors naming the key.
    pub fn parse(text: &str) -> Result<Self> {
        crate::settings::deserialize(crate::settings::parse_value(text, false)?)
    }

    /// [`ensemble`] with these settings.
    pub fn run(&self) -> Result<EnsembleReport> {
        ensemble(&self.cv_dir, self.seeds.as_deref(), &self.out)
    }
}

/// What [`ensemble`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnsembleReport {
    pub out: PathBuf,
    pub heads: usize,
    /// SHA-256 of the encoder file every run was trained on.
    pub encoder_file_sha256: String,
    /// The run of every head, in head order.
    pub members: Vec<EnsembleMember>,
    /// Mean of the runs' held-out macro F1 (the cross-validated estimate).
    pub mean_test_macro_f1: f64,
}

/// A finished run of a cross-validation folder.
struct Run {
    name: String,
    dir: PathBuf,
    json: serde_json::Value,
}

fn finished_runs(cv_dir: &Path, seeds: Option<&[u64]>) -> Result<Vec<Run>> {
    let runs_dir = cv_dir.join("runs");
    let entries = std::fs::read_dir(&runs_dir)
        .map_err(|e| Error::io("cannot list the cross-validation runs in", &runs_dir, e))?;
    let mut runs = Vec::new();
    for entry in entries {
        let dir = entry
            .map_err(|e| Error::io("cannot list", &runs_dir, e))?
            .path();
        let file = dir.join("run.json");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue; // not a run folder, or a run that never wrote its record
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::invalid("cv_dir", format!("{}: {e}", file.display())))?;
        if json["status"] != "complete" || !dir.join("mil.safetensors").exists() {
            continue;
        }
        let seed = json["run"]["seed"].as_u64();
        if let (Some(wanted), Some(seed)) = (seeds, seed) {
            if !wanted.contains(&seed) {
                continue;
            }
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        runs.push(Run { name, dir, json });
    }
    // Seed, then fold: the order `amlmil cv` trains them in.
    runs.sort_by_key(|r| {
        (
            r.json["run"]["seed"].as_u64(),
            r.json["run"]["fold"].as_u64(),
        )
    });
    if runs.is_empty() {
        return Err(Error::invalid(
            "cv_dir",
            format!(
                "{} has no finished runs{} (run `amlmil cv` first)",
                runs_dir.display(),
                seeds.map_or(String::new(), |s| format!(" of seeds {s:?}"))
            ),
        ));
    }
    if runs.len() > crate::frozen::MAX_HEADS {
        return Err(Error::limit(
            "seeds",
            format!(
                "{} runs, at most {} heads in one checkpoint; pick fewer seeds",
                runs.len(),
                crate::frozen::MAX_HEADS
            ),
        ));
    }
    Ok(runs)
}

/// Writes the heads of `cv_dir`'s finished runs (those of `seeds` only, when
/// given) to `out` as one MIL checkpoint (atomically; one run gives an
/// ordinary single-head checkpoint).
pub fn ensemble(cv_dir: &Path, seeds: Option<&[u64]>, out: &Path) -> Result<EnsembleReport> {
    let runs = finished_runs(cv_dir, seeds)?;
    let encoder_sha = |r: &Run| r.json["encoder_file_sha256"].as_str().map(str::to_owned);
    let encoder_file_sha256 = encoder_sha(&runs[0]).unwrap_or_default();
    let mut first: Option<crate::checkpoint::MilManifest> = None;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut members = Vec::with_capacity(runs.len());
    let count = runs.len();
    for (k, run) in runs.iter().enumerate() {
        if encoder_sha(run).unwrap_or_default() != encoder_file_sha256 {
            return Err(Error::Mismatch(format!(
                "run {} was trained on another encoder file than run {} (encoder_file_sha256 differs): an ensemble shares one encoder",
                run.name, runs[0].name
            )));
        }
        let path = run.dir.join("mil.safetensors");
        let (manifest, heads) = Checkpoint::read_mil(&path)?;
        if manifest.ensemble.is_some() {
            return Err(Error::invalid(
                "cv_dir",
                format!("{} is itself an ensemble", path.display()),
            ));
        }
        if let Some(f) = &first {
            let what = if f.classes != manifest.classes {
                Some("classes")
            } else if f.config != manifest.config {
                Some("head design (config)")
            } else if (f.input_size, f.feature_map) != (manifest.input_size, manifest.feature_map) {
                Some("input size or feature map")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Error::Mismatch(format!(
                    "run {} differs from run {} in its {what}: the heads of an ensemble must match",
                    run.name, runs[0].name
                )));
            }
        }
        let r = &run.json["run"];
        members.push(EnsembleMember {
            run: run.name.clone(),
            seed: r["seed"].as_u64().unwrap_or(0),
            fold: r["fold"].as_u64().unwrap_or(0) as usize,
            best_validation_loss: run.json["best_validation_loss"]
                .as_f64()
                .unwrap_or(f64::NAN),
            test_macro_f1: r["macro_f1"].as_f64().unwrap_or(f64::NAN),
            mil_sha256: checkpoint::stored_checksum(&path)?,
        });
        let prefix = MilHeads::prefix(k, count);
        let mut named: Vec<(String, Tensor)> = heads
            .into_iter()
            .map(|(name, t)| (format!("{prefix}{name}"), t))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        tensors.extend(named);
        first.get_or_insert(manifest);
    }
    let mut manifest = first.expect("at least one run");
    let mean_test_macro_f1 =
        members.iter().map(|m| m.test_macro_f1).sum::<f64>() / members.len() as f64;
    if count > 1 {
        let mut provenance = Provenance::new("mil-ensemble", None);
        provenance
            .details
            .insert("cv_dir".into(), cv_dir.display().to_string().into());
        provenance.details.insert(
            "encoder_file_sha256".into(),
            encoder_file_sha256.clone().into(),
        );
        provenance
            .details
            .insert("mean_test_macro_f1".into(), mean_test_macro_f1.into());
        manifest.provenance = provenance;
        manifest.ensemble = Some(Ensemble {
            heads: count,
            members: members.clone(),
        });
    }
    let json = serde_json::to_string(&Manifest::Mil(manifest))
        .map_err(|e| Error::checkpoint(out, e.to_string()))?;
    let metadata = HashMap::from([(checkpoint::MANIFEST_KEY.to_owned(), json)]);
    let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    checkpoint::write_tensors(out, &refs, Some(metadata))?;
    Ok(EnsembleReport {
        out: out.to_path_buf(),
        heads: count,
        encoder_file_sha256,
        members,
        mean_test_macro_f1,
    })
}
