//! The feature cache: every cell of a data set encoded once by a frozen encoder,
//! so MIL training never runs the encoder (DESIGN §2: "cells are encoded once").
//!
//! On-disk format (version 1), one directory per cache:
//!
//! ```text
//! DIR/cache.json                       manifest (below)
//! DIR/patients/<patient_id>.safetensors
//!     features  f16 [V, N, C, h, w]    V flip variants (none, horizontal, vertical, both) or 1
//!     cell_ids  i64 [N]                the dataset layer's cell ids, in bag order
//! ```
//!
//! `cache.json` holds `key` = SHA-256 over the encoder checkpoint's bytes and the
//! preprocessing (input size, normalisation, flip variants, format version). A
//! cache is only ever read or extended by a run whose encoder and preprocessing
//! give the same key, so a changed encoder never reuses stale features.
//! Extraction is resumable, also after a kill: `cache.json` is written before
//! any patient, patient files are written atomically, a patient whose file
//! exists is skipped, and temporary files of killed runs are swept.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

use crate::checkpoint::{write_tensors, Normalization};
use crate::dataset::{Dataset, Patient};
use crate::error::{Error, Result};
use crate::frozen::{EncoderOptions, Flip, FrozenEncoder};
use crate::io::write_atomic;
use crate::Progress;

pub const CACHE_FORMAT_VERSION: u32 = 1;
const MANIFEST_FILE: &str = "cache.json";
const PATIENTS_DIR: &str = "patients";

/// `cache.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheManifest {
    pub format_version: u32,
    /// SHA-256 (hex) over the encoder bytes and the preprocessing.
    pub key: String,
    /// SHA-256 (hex) of the encoder checkpoint *file*, not the content hash
    /// `amlmil_model_info.encoder_sha256` reports (caches written under the
    /// older key `encoder_sha256` still load).
    #[serde(rename = "encoder_file_sha256", alias = "encoder_sha256")]
    pub encoder_file_sha256: String,
    /// The encoder checkpoint as it was named at extraction (informational).
    pub encoder: PathBuf,
    pub input_size: i64,
    pub normalization: Normalization,
    pub feature_map: [i64; 3],
    /// Flip variants stored, in order.
    pub flips: Vec<Flip>,
    /// The data set the features come from (informational).
    pub dataset: PathBuf,
}

/// Options of [`extract_features`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Store the four flip variants (true, for flip augmentation) or only the original.
    pub flips: bool,
    /// Device, batch size and threads of the encoder.
    pub encoder: EncoderOptions,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            flips: true,
            encoder: EncoderOptions::default(),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read", path, e))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn cache_key(
    encoder_sha256: &str,
    input_size: i64,
    norm: &Normalization,
    flips: &[Flip],
) -> String {
    let preprocessing = serde_json::json!({
        "format_version": CACHE_FORMAT_VERSION,
        "input_size": input_size,
        "normalization": norm,
        "flips": flips,
    });
    let mut h = Sha256::new();
    h.update(encoder_sha256.as_bytes());
    h.update(preprocessing.to_string().as_bytes());
    hex(&h.finalize())
}

/// One patient's cached features.
#[derive(Debug)]
pub struct PatientFeatures {
    pub cell_ids: Vec<u64>,
    /// `[V, N, C, h, w]`, f16 on the CPU.
    pub maps: Tensor,
}

/// An opened feature cache.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
    manifest: CacheManifest,
}

impl FeatureCache {
    /// Opens a cache; with `encoder`, fails unless the cache was made by exactly
    /// that checkpoint (same bytes) — features from another encoder are refused.
    pub fn open(dir: &Path, encoder: Option<&Path>) -> Result<FeatureCache> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io("cannot read feature cache manifest", &path, e))?;
        let manifest: CacheManifest = serde_json::from_str(&text).map_err(|e| Error::Dataset {
            path: path.clone(),
            reason: format!("not a feature cache manifest: {e}"),
        })?;
        if manifest.format_version != CACHE_FORMAT_VERSION {
            return Err(Error::Dataset {
                path,
                reason: format!(
                    "cache format {} is not supported (expected {CACHE_FORMAT_VERSION})",
                    manifest.format_version
                ),
            });
        }
        if let Some(encoder) = encoder {
            let sha = file_sha256(encoder)?;
            if sha != manifest.encoder_file_sha256 {
                return Err(Error::Mismatch(format!(
                    "features in {} were extracted with encoder {} (sha256 {}…), not with {} (sha256 {}…); extract them again",
                    dir.display(),
                    manifest.encoder.display(),
                    &manifest.encoder_file_sha256[..12],
                    encoder.display(),
                    &sha[..12]
                )));
            }
        }
        Ok(FeatureCache {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    pub fn manifest(&self) -> &CacheManifest {
        &self.manifest
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn patient_path(&self, patient_id: &str) -> PathBuf {
        self.dir
            .join(PATIENTS_DIR)
            .join(format!("{patient_id}.safetensors"))
    }

    /// Whether a patient's features are present.
    pub fn has(&self, patient_id: &str) -> bool {
        self.patient_path(patient_id).is_file()
    }

    /// Loads one patient's features.
    pub fn load(&self, patient_id: &str) -> Result<PatientFeatures> {
        let path = self.patient_path(patient_id);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io("cannot read cached features", &path, e))?;
        // Checks the file's checksum: a corrupted cache is refused, not trained on.
        let mut tensors: std::collections::HashMap<String, Tensor> =
            crate::checkpoint::decode_tensors(&bytes, &path)?
                .1
                .into_iter()
                .collect();
        let bad = |reason: String| Error::Dataset {
            path: path.clone(),
            reason,
        };
        let maps = tensors
            .remove("features")
            .ok_or_else(|| bad("no `features` tensor".into()))?;
        let ids = tensors
            .remove("cell_ids")
            .ok_or_else(|| bad("no `cell_ids` tensor".into()))?;
        let [c, h, w] = self.manifest.feature_map;
        let v = self.manifest.flips.len() as i64;
        let n = ids.size().first().copied().unwrap_or(0);
        if maps.size() != [v, n, c, h, w] {
            return Err(bad(format!(
                "features have shape {:?}, expected [{v}, {n}, {c}, {h}, {w}]",
                maps.size()
            )));
        }
        let cell_ids = Vec::<i64>::try_from(&ids)?
            .into_iter()
            .map(|i| i as u64)
            .collect();
        Ok(PatientFeatures { cell_ids, maps })
    }
}

/// Encodes every cell of `dataset` with the encoder checkpoint into `out`,
/// resuming where a previous run stopped. `progress("extract", patients_done, total)`.
pub fn extract_features(
    dataset: &Dataset,
    encoder_path: &Path,
    out: &Path,
    options: &ExtractOptions,
    progress: Progress,
) -> Result<FeatureCache> {
    let encoder = FrozenEncoder::load(encoder_path, &options.encoder)?;
    let em = encoder.manifest();
    let flips: Vec<Flip> = if options.flips {
        Flip::ALL.to_vec()
    } else {
        vec![Flip::None]
    };
    let encoder_file_sha256 = file_sha256(encoder_path)?;
    let manifest = CacheManifest {
        format_version: CACHE_FORMAT_VERSION,
        key: cache_key(
            &encoder_file_sha256,
            em.input_size,
            &em.normalization,
            &flips,
        ),
        encoder_file_sha256,
        encoder: encoder_path.to_path_buf(),
        input_size: em.input_size,
        normalization: em.normalization,
        feature_map: em.feature_map,
        flips,
        dataset: dataset.root().to_path_buf(),
    };
    let manifest_path = out.join(MANIFEST_FILE);
    // A run killed mid-write leaves a temporary file, which must not make the
    // directory look like something other than a cache.
    crate::io::remove_stale_temps(out)?;
    if manifest_path.exists() {
        let existing = FeatureCache::open(out, None)?;
        if existing.manifest.key != manifest.key {
            return Err(Error::Mismatch(format!(
                "{} holds features of another encoder or preprocessing (encoder {}); choose another output directory",
                out.display(),
                existing.manifest.encoder.display()
            )));
        }
    } else if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false)
    {
        return Err(Error::invalid(
            "out",
            format!(
                "{} exists, is not empty and is not a feature cache",
                out.display()
            ),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io("cannot create", out, e))?;
    let json = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::invalid("manifest", e.to_string()))?;
    // The manifest first: from then on a killed run leaves a cache to resume,
    // never a non-empty directory that is not one.
    write_atomic(&manifest_path, json.as_bytes())?;
    let patients_dir = out.join(PATIENTS_DIR);
    std::fs::create_dir_all(&patients_dir)
        .map_err(|e| Error::io("cannot create", &patients_dir, e))?;
    let cache = FeatureCache {
        dir: out.to_path_buf(),
        manifest,
    };

    let total = dataset.patients().len();
    for (i, patient) in dataset.patients().iter().enumerate() {
        if !progress("extract", i, total) {
            return Err(Error::Cancelled(format!(
                "feature extraction after {i} of {total} patients"
            )));
        }
        if cache.has(&patient.id) {
            continue;
        }
        encode_patient(&encoder, &cache, patient)?;
        log::debug!(
            "encoded patient {} ({} cells)",
            patient.id,
            patient.num_cells()
        );
    }
    progress("extract", total, total);
    Ok(cache)
}

fn encode_patient(encoder: &FrozenEncoder, cache: &FeatureCache, patient: &Patient) -> Result<()> {
    let cells = patient.load_cells()?;
    if cells.is_empty() {
        return Err(Error::EmptyBag(patient.id.clone()));
    }
    let (ids, images): (Vec<u64>, Vec<_>) = cells.into_iter().unzip();
    let variants = cache
        .manifest
        .flips
        .iter()
        .map(|&flip| {
            let maps = encoder.feature_maps(&images, flip, &mut |_, _, _| true)?;
            if !bool::try_from(maps.isfinite().all())? {
                return Err(Error::NonFinite(format!(
                    "encoder features of patient {}",
                    patient.id
                )));
            }
            Ok(maps.to_device(tch::Device::Cpu).to_kind(Kind::Half))
        })
        .collect::<Result<Vec<_>>>()?;
    let features = Tensor::stack(&variants, 0);
    let ids = Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>());
    write_tensors(
        &cache.patient_path(&patient.id),
        &[("features", &features), ("cell_ids", &ids)],
        None,
    )
}
