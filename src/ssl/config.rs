//! The configuration of a pre-training run (DESIGN.md §2): the method
//! ([`SslMethod`]), the run's settings and each method's section
//! ([`PretrainConfig`]), built from the `paper` or `cpu-small` preset plus JSON
//! or TOML overrides merged key by key, and validated with errors that name the
//! key.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::Normalization;
use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::model::EncoderArch;
use crate::ssl::augment::{MultiCropConfig, StainJitter, CELL_SIZE, CPU_SMALL_SIZE};
use crate::ssl::dino::DinoConfig;
use crate::ssl::method::{check_crop_sizes, Method, MethodConfig, RunSettings};
use crate::ssl::monitor::MonitorConfig;
use crate::ssl::optim::{AdamWConfig, SgdConfig};
use crate::ssl::schedule::scaled_learning_rate;
use crate::ssl::simclr::SimClrConfig;
use crate::ssl::supervised::SupervisedConfig;
use crate::ssl::swav::SwavConfig;

/// How the encoder is pre-trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SslMethod {
    SimClr,
    Swav,
    Dino,
    Supervised,
}

impl SslMethod {
    pub fn name(self) -> &'static str {
        match self {
            SslMethod::SimClr => "simclr",
            SslMethod::Swav => "swav",
            SslMethod::Dino => "dino",
            SslMethod::Supervised => "supervised",
        }
    }
}

impl std::str::FromStr for SslMethod {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "simclr" => Ok(SslMethod::SimClr),
            "swav" => Ok(SslMethod::Swav),
            "dino" => Ok(SslMethod::Dino),
            "supervised" => Ok(SslMethod::Supervised),
            _ => Err(Error::invalid(
                "method",
                format!("`{s}` is not a pre-training method (simclr, swav, dino, supervised)"),
            )),
        }
    }
}

/// Everything a pre-training run needs. Build it with [`PretrainConfig::from_value`]
/// (a preset plus overrides) so unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainConfig {
    /// The method and its section, named after it (`"swav": {…}`).
    #[serde(flatten)]
    pub method: MethodConfig,
    /// `paper` or `cpu-small`.
    pub preset: String,
    /// Data set root (DESIGN.md §3); all patients' cells are used.
    pub dataset: PathBuf,
    /// Output directory of `encoder.safetensors`, `state.safetensors`, `epoch_<k>/`.
    pub output: PathBuf,
    pub architecture: EncoderArch,
    /// Cells are resized to this side, which is the exported encoder's input size.
    pub image_size: i64,
    /// Applied to the views and written to the encoder's manifest.
    pub normalization: Normalization,
    pub epochs: u64,
    pub batch_size: usize,
    /// `null`: ⌊cells / batch⌋.
    pub steps_per_epoch: Option<u64>,
    /// Use a seeded subset of at most this many cells (`null`: all).
    pub max_cells: Option<usize>,
    /// Learning rate per 256 images (linear scaling rule).
    pub base_learning_rate: f64,
    /// Where the cosine ends (absolute).
    pub final_learning_rate: f64,
    pub warmup_epochs: u64,
    /// Weight decay at step 0; a cosine leads to `weight_decay_end` (DINO).
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    pub seed: u64,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    pub device: DeviceSpec,
    /// Continue from `<output>/state.safetensors` if it exists.
    pub resume: bool,
    /// Keep `epoch_<k>/encoder.safetensors` every this many epochs (0: never).
    pub keep_every: u64,
    /// Threads decoding images (0: available cores, at most 8).
    pub decode_threads: usize,
    /// Pre-train on the cells of these patients only (`null`: every patient);
    /// the per-fold protocol gives a fold's training patients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patients: Option<Vec<String>>,
    /// What is measured while the method learns ([`crate::ssl::monitor`]).
    #[serde(default)]
    pub monitor: MonitorConfig,
    /// fp16 autocast of the forward passes with dynamic loss scaling, on CUDA
    /// (ignored, with a warning, on the CPU).
    #[serde(default)]
    pub mixed_precision: bool,
    /// Activation checkpointing of the encoder ([`crate::model::recompute`]):
    /// keeps only each block's input through the forward pass and recomputes
    /// the rest during the backward pass; the same gradients for about a third
    /// more compute and a fraction of the activation memory (large batches on
    /// one GPU).
    #[serde(default)]
    pub activation_checkpointing: bool,
    /// Under a distributed launch, normalise batches with the global batch's
    /// statistics (`SyncBatchNorm`); `false`: each rank's own (per replica, as
    /// `DistributedDataParallel` without conversion). Ignored in one process.
    #[serde(default)]
    pub sync_batch_norm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgd: Option<SgdConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adamw: Option<AdamWConfig>,
}

/// The stain jitter of the `cpu-small` SwAV and DINO views: each colour
/// channel's optical density scaled by 1 ± 0.35 and shifted by ± 0.08 (p 0.8),
/// about the dye-uptake and white-balance spread of one cohort's slides; it
/// keeps two views of one cell from agreeing on the patient's stain.
fn cpu_stain_jitter() -> StainJitter {
    StainJitter::per_channel(0.8, 0.35, 0.08)
}

impl PretrainConfig {
    /// A preset of `method`: `paper` (144 px, batch 512, the references'
    /// schedules) or `cpu-small` (64 px, batch 32, small heads, 10 epochs).
    /// `dataset` and `output` are left empty.
    pub fn preset(method: SslMethod, preset: &str) -> Result<Self> {
        let small = match preset {
            "paper" => false,
            "cpu-small" => true,
            other => {
                return Err(Error::invalid(
                    "preset",
                    format!("`{other}` is not a preset (paper, cpu-small)"),
                ))
            }
        };
        let size = if small { CPU_SMALL_SIZE } else { CELL_SIZE };
        let mut c = PretrainConfig {
            method: MethodConfig::Supervised(SupervisedConfig::for_size(size)),
            preset: preset.to_owned(),
            dataset: PathBuf::new(),
            output: PathBuf::new(),
            architecture: EncoderArch::ResNet18,
            image_size: size,
            normalization: Normalization::default(),
            epochs: if small { 10 } else { 500 },
            batch_size: if small { 32 } else { 512 },
            steps_per_epoch: None,
            max_cells: None,
            base_learning_rate: 0.3,
            final_learning_rate: 0.0,
            warmup_epochs: if small { 1 } else { 10 },
            weight_decay: 1e-6,
            weight_decay_end: 1e-6,
            seed: 0,
            device: DeviceSpec::Auto,
            resume: false,
            keep_every: if small { 0 } else { 50 },
            decode_threads: 0,
            mixed_precision: false,
            activation_checkpointing: false,
            sync_batch_norm: false,
            patients: None,
            monitor: MonitorConfig::default(),
            sgd: Some(SgdConfig::default()),
            adamw: None,
        };
        c.method = match method {
            SslMethod::SimClr => {
                // SimCLR: LARS lr 0.3 × B/256, wd 1e-6, 10 warm-up epochs.
                MethodConfig::SimClr(SimClrConfig {
                    crops: MultiCropConfig::simclr(size),
                    ..Default::default()
                })
            }
            SslMethod::Swav => {
                // SwAV: base 4.8 at batch 4096 (0.3 per 256), final lr base/1000.
                c.final_learning_rate = scaled_learning_rate(0.3, c.batch_size) / 1000.0;
                let mut swav = SwavConfig {
                    crops: MultiCropConfig::swav(size),
                    ..Default::default()
                };
                if small {
                    swav.hidden_dim = 512;
                    swav.num_prototypes = 30;
                    swav.freeze_prototypes_iterations = 20;
                    swav.crops.set_stain_jitter(cpu_stain_jitter());
                }
                MethodConfig::Swav(swav)
            }
            SslMethod::Dino => {
                // DINO: AdamW lr 5e-4 × B/256 → 1e-6, wd 0.04 → 0.4.
                c.base_learning_rate = 0.0005;
                c.final_learning_rate = 1e-6;
                c.weight_decay = 0.04;
                c.weight_decay_end = 0.4;
                c.sgd = None;
                c.adamw = Some(AdamWConfig::default());
                let mut dino = DinoConfig {
                    crops: MultiCropConfig::dino(size),
                    ..Default::default()
                };
                if small {
                    // Measured on the synthetic cohort (docs/training.md, "Self-supervised
                    // pre-training of the encoder"):
                    // with the paper's settings at this scale (batch 16–32, a
                    // few hundred steps, 32–64 px) the head drifts to uniform
                    // outputs and the encoder learns nothing a random one lacks.
                    // What moved it off uniform: DINO's ResNet head (batch
                    // norm), K = 256, τ_t 0.04 without warm-up, a teacher
                    // that follows faster (λ 0.98 → 1), lr 1e-2 × B/256.
                    // Colour views stay on and a stain jitter is added: with
                    // colour and greyscale off, both views share the patient's
                    // stain and DINO learnt to tell patients apart (patient
                    // probe 0.43, effective rank 16 of 512), docs/training.md.
                    c.base_learning_rate = 0.01;
                    dino.hidden_dim = 512;
                    dino.bottleneck_dim = 128;
                    dino.out_dim = 256;
                    dino.use_bn_in_head = true;
                    dino.warmup_teacher_temperature = 0.04;
                    dino.teacher_temperature = 0.04;
                    dino.warmup_teacher_temperature_epochs = 0;
                    dino.teacher_momentum = 0.98;
                    dino.crops.set_stain_jitter(cpu_stain_jitter());
                }
                MethodConfig::Dino(dino)
            }
            SslMethod::Supervised => {
                c.base_learning_rate = 0.1;
                c.weight_decay = 1e-4;
                c.weight_decay_end = 1e-4;
                c.epochs = if small { 10 } else { 100 };
                c.warmup_epochs = if small { 0 } else { 5 };
                c.sgd = Some(SgdConfig {
                    larc_trust: None,
                    ..SgdConfig::default()
                });
                MethodConfig::Supervised(SupervisedConfig::for_size(size))
            }
        };
        Ok(c)
    }

    /// Builds a configuration from a JSON object: `method` (required), `preset`
    /// (default `paper`), and any other keys overriding the preset's values,
    /// objects merged key by key (`{"swav": {"num_prototypes": 30}}`). A key the
    /// preset does not have is an error naming its path.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(mut overrides) = value else {
            return Err(Error::invalid("config", "must be a JSON object"));
        };
        let method: SslMethod = match overrides.remove("method") {
            Some(Value::String(m)) => m.parse()?,
            Some(other) => {
                return Err(Error::invalid(
                    "method",
                    format!("{other} is not a method name (simclr, swav, dino, supervised)"),
                ))
            }
            // A serialised configuration names its method by its one section.
            None => {
                let sections: Vec<SslMethod> = ["simclr", "swav", "dino", "supervised"]
                    .into_iter()
                    .filter(|k| overrides.get(*k).is_some_and(Value::is_object))
                    .filter_map(|k| k.parse().ok())
                    .collect();
                match sections[..] {
                    [one] => one,
                    _ => {
                        return Err(Error::invalid(
                            "method",
                            "required: simclr, swav, dino or supervised",
                        ))
                    }
                }
            }
        };
        let preset = match overrides.get("preset") {
            None => "paper",
            Some(Value::String(p)) => p.as_str(),
            Some(other) => return Err(Error::invalid("preset", format!("{other} is not a name"))),
        };
        let mut merged = serde_json::to_value(Self::preset(method, preset)?)
            .map_err(|e| Error::invalid("config", e.to_string()))?;
        if overrides.get("sgd").is_some_and(Value::is_object) && merged.get("sgd").is_none() {
            // The SGD alternative of an AdamW preset (DINO's) starts from
            // plain momentum SGD.
            let plain = SgdConfig {
                larc_trust: None,
                ..SgdConfig::default()
            };
            merged["sgd"] = serde_json::to_value(plain).unwrap_or(Value::Null);
        }
        let what = format!("{} pre-training", method.name());
        crate::settings::merge(&mut merged, Value::Object(overrides), Some(&what))?;
        let config: Self = crate::settings::deserialize(merged)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses JSON (or TOML when `is_toml`) with [`PretrainConfig::from_value`].
    pub fn parse(text: &str, is_toml: bool) -> Result<Self> {
        Self::from_value(crate::settings::parse_value(text, is_toml)?)
    }

    /// The method as the training loop sees it.
    pub fn method(&self) -> &dyn Method {
        self.method.method()
    }

    /// The method's name (`simclr`).
    pub fn method_name(&self) -> &'static str {
        self.method.name()
    }

    /// The multi-crop views of a self-supervised method (`None`: supervised).
    pub fn multi_crop(&self) -> Option<&MultiCropConfig> {
        self.method.multi_crop()
    }

    /// What a method checks itself against.
    pub fn run_settings(&self) -> RunSettings {
        RunSettings {
            architecture: self.architecture,
            batch_size: self.batch_size,
            image_size: self.image_size,
            adamw: self.adamw.is_some(),
        }
    }

    /// Learning rate at step 0 of the cosine: `base_learning_rate · batch / 256`.
    pub fn peak_learning_rate(&self) -> f64 {
        scaled_learning_rate(self.base_learning_rate, self.batch_size)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.architecture.is_vit() {
            return Err(Error::invalid(
                "architecture",
                format!(
                    "{} encoders are imported (`amlmil import --source dinov2|timm`), not pre-trained here; pre-train resnet18 or resnet34",
                    self.architecture.name()
                ),
            ));
        }
        if self.dataset.as_os_str().is_empty() {
            return Err(Error::invalid("dataset", "required: the data set root"));
        }
        if self.output.as_os_str().is_empty() {
            return Err(Error::invalid("output", "required: the output directory"));
        }
        if self.batch_size < 2 {
            let why = if self.method().needs_cell_types() {
                "batch norm needs at least 2 images per batch"
            } else {
                "the contrastive loss is undefined without another image in the batch"
            };
            return Err(Error::invalid(
                "batch_size",
                format!("{} image(s): {why}", self.batch_size),
            ));
        }
        if !(32..=1024).contains(&self.image_size) {
            return Err(Error::invalid(
                "image_size",
                format!("{} px; must be between 32 and 1024", self.image_size),
            ));
        }
        if self.epochs == 0 {
            return Err(Error::invalid("epochs", "must be at least 1"));
        }
        if self.warmup_epochs > self.epochs {
            return Err(Error::invalid(
                "warmup_epochs",
                format!("{} exceeds epochs {}", self.warmup_epochs, self.epochs),
            ));
        }
        if self.steps_per_epoch == Some(0) {
            return Err(Error::invalid("steps_per_epoch", "must be ≥ 1 (or null)"));
        }
        if self.max_cells.is_some_and(|m| m < self.batch_size) {
            return Err(Error::invalid(
                "max_cells",
                "must be at least batch_size (or null)",
            ));
        }
        if !(self.base_learning_rate.is_finite() && self.base_learning_rate > 0.0) {
            return Err(Error::invalid("base_learning_rate", "must be > 0"));
        }
        if !(self.final_learning_rate.is_finite() && self.final_learning_rate >= 0.0) {
            return Err(Error::invalid("final_learning_rate", "must be ≥ 0"));
        }
        for (key, v) in [
            ("weight_decay", self.weight_decay),
            ("weight_decay_end", self.weight_decay_end),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::invalid(key, format!("{v} must be ≥ 0")));
            }
        }
        for (key, n) in [
            ("mean", &self.normalization.mean),
            ("std", &self.normalization.std),
        ] {
            if n.iter()
                .any(|v| !v.is_finite() || (key == "std" && *v <= 0.0))
            {
                return Err(Error::invalid(
                    format!("normalization.{key}"),
                    format!("{n:?}: finite values (std > 0) expected"),
                ));
            }
        }
        // Exactly one optimiser section is set; the method says which it takes.
        match (&self.sgd, &self.adamw) {
            (Some(s), None) => s.validate()?,
            (None, Some(a)) => a.validate()?,
            _ => {
                return Err(Error::invalid(
                    "sgd",
                    format!(
                        "{} trains with exactly one optimiser section, `sgd` or `adamw` \
                         (set the other to null)",
                        self.method_name()
                    ),
                ))
            }
        }
        if self.patients.as_ref().is_some_and(Vec::is_empty) {
            return Err(Error::invalid(
                "patients",
                "an empty list (null: every patient)",
            ));
        }
        self.monitor.validate()?;
        let method = self.method();
        method.check(&self.run_settings())?;
        check_crop_sizes(method, self.image_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(method: &str, extra: Value) -> Result<PretrainConfig> {
        let mut v = serde_json::json!({"method": method, "preset": "cpu-small",
            "dataset": "d", "output": "o"});
        if let (Value::Object(a), Value::Object(b)) = (&mut v, extra) {
            a.extend(b);
        }
        PretrainConfig::from_value(v)
    }

    #[test]
    fn presets_validate_and_overrides_merge() {
        for m in ["simclr", "swav", "dino", "supervised"] {
            with(m, serde_json::json!({})).unwrap();
            let paper = PretrainConfig::preset(m.parse().unwrap(), "paper").unwrap();
            assert_eq!((paper.image_size, paper.batch_size), (144, 512));
        }
        let c = with("swav", serde_json::json!({"swav": {"num_prototypes": 20}})).unwrap();
        let MethodConfig::Swav(swav) = c.method else {
            panic!("not swav: {:?}", c.method)
        };
        assert_eq!((swav.num_prototypes, swav.hidden_dim), (20, 512));
    }

    #[test]
    fn a_serialised_configuration_parses_back_to_itself() {
        for m in ["simclr", "swav", "dino", "supervised"] {
            let c = with(m, serde_json::json!({"epochs": 3})).unwrap();
            let back = PretrainConfig::from_value(serde_json::to_value(&c).unwrap()).unwrap();
            assert_eq!(back, c, "{m}");
        }
    }

    #[test]
    fn bad_configs_name_the_key() {
        let e = |m: &str, v: Value| with(m, v).unwrap_err().to_string();
        assert!(e("simclr", serde_json::json!({"batch_size": 1})).contains("batch_size"));
        assert!(with("byol", serde_json::json!({}))
            .unwrap_err()
            .to_string()
            .contains("byol"));
        let msg = e(
            "dino",
            serde_json::json!({"dino": {"crops": {"global": {"size": 65}}}}),
        );
        assert!(msg.contains("dino.crops.global.size"), "{msg}");
        let msg = e("swav", serde_json::json!({"swav": {"num_prototypes": 64}}));
        assert!(msg.contains("prototypes"), "{msg}");
        let msg = e("simclr", serde_json::json!({"simclr": {"temperatur": 0.2}}));
        assert!(msg.contains("simclr.temperatur"), "{msg}");
        let msg = e("simclr", serde_json::json!({"swav": {}}));
        assert!(msg.contains("swav"), "{msg}");
    }
}
