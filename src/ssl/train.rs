//! The pre-training loop of the cell encoder (DESIGN.md §2): SimCLR, SwAV, DINO
//! or the supervised cell-type baseline on all cells of a data set, with
//! per-epoch checkpoints and exact resumption.
//!
//! **Data.** The cells of every patient are pooled, resized to `image_size` and
//! decoded once (in `decode_threads` threads) into an 8-bit tensor held in
//! memory (`N·3·S²` bytes: 6.3 GB for 102k cells at 144 px). Every step draws a
//! batch, makes the method's views with [`MultiCropConfig::views`] (SimCLR: 2,
//! SwAV: 2 + 6, DINO: 2 + 8 crops) and normalises them with the checkpoint's
//! normalisation (ImageNet by default). Views of one size go through the
//! encoder together, as SwAV's and DINO's multi-crop wrappers do. An epoch is
//! `⌊N / batch⌋` steps (the references' `drop_last`) unless `steps_per_epoch`
//! is set.
//!
//! **Methods.** SimCLR (Chen et al. 2020): projection head + NT-Xent, SGD with
//! momentum and LARC. SwAV (Caron et al. 2020): head, prototypes normalised at
//! the start of every step and frozen for the first iterations, Sinkhorn codes,
//! swapped prediction, optional queue from `queue_start_epoch`, SGD + LARC.
//! DINO (Caron et al. 2021): student and EMA teacher (a copy of the student at
//! step 0, no gradient, batch norm in training mode as in DINO's code), centring,
//! teacher-temperature warm-up, last layer frozen during the first epoch(s),
//! per-parameter gradient clipping, teacher momentum on a cosine to 1, AdamW
//! with a weight-decay schedule and DINO's parameter groups. Supervised: the
//! encoder and a linear classifier on its pooled 512-d features, cross-entropy
//! on `cells.csv` cell types, rare types oversampled (draws with replacement,
//! weight ∝ 1/type frequency). Learning rates follow the linear scaling rule
//! (`base_learning_rate · batch / 256`) with a linear warm-up and a cosine to
//! `final_learning_rate` (absolute), per step ([`crate::ssl::schedule`]).
//!
//! **Deviations**, stated once: SwAV's and SimCLR's LARC here uses apex's *clip*
//! mode and leaves biases and 1-D parameters out of weight decay and adaptation
//! (SimCLR's LARS does; SwAV's reference clips nothing and adapts all; both are
//! [`SgdConfig`] switches). DINO exports the **teacher** encoder (DINO evaluates
//! the teacher); the others the student. Mixed precision (`mixed_precision`,
//! CUDA only) autocasts the forward passes to fp16 with dynamic loss scaling
//! ([`GradScaler`]); losses and Sinkhorn codes see fp32 where autocast's op
//! lists put them. No activation checkpointing. Epoch counts of the `paper`
//! preset (500 for the self-supervised methods, 100 for supervised) follow
//! SwAV's 500 of DESIGN.md §2; the paper gives no others.
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
//!
//! **Randomness and exact resumption.** Nothing reads a running random stream:
//! the initial weights come from ChaCha8 streams seeded by `(seed, variable
//! name)`, each epoch's order from `(seed, epoch)`, each step's views from
//! `(seed, epoch, step)`. libtorch's global generator is never seeded or used
//! for values that matter (other threads share it). Stopping after epoch k and
//! resuming therefore gives bit-identical parameters on the CPU
//! (`tests/ssl_training.rs` checks it); on CUDA, non-deterministic kernels can
//! make runs differ by rounding.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tch::nn::{self, Module, ModuleT, VarStore};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{self, EncoderManifest, Manifest, Normalization, Provenance};
use crate::dataset::{Dataset, OpenOptions};
use crate::error::{Error, Result};
use crate::inference::DeviceSpec;
use crate::model::{Encoder, EncoderArch};
use crate::ssl::augment::{
    random_resized_crop, CropSpec, MultiCropConfig, ViewAugment, CELL_SIZE, CPU_SMALL_SIZE,
    GLOBAL_REFERENCE_SIDE,
};
use crate::ssl::dino::{clip_gradients, ema_update, DinoConfig, DinoHead, DinoLoss};
use crate::ssl::optim::{AdamW, AdamWConfig, GradScaler, Param, Sgd, SgdConfig};
use crate::ssl::schedule::{self, scaled_learning_rate};
use crate::ssl::simclr::{nt_xent_loss, ProjectionHead, SimClrConfig};
use crate::ssl::swav::{swav_loss, Prototypes, SwavConfig, SwavHead};

/// File name of the exported encoder in the output directory.
pub const ENCODER_FILE: &str = "encoder.safetensors";
/// File name of the resumable training state in the output directory.
pub const STATE_FILE: &str = "state.safetensors";
/// `__metadata__` key of the state's JSON.
pub const STATE_KEY: &str = "amlmil_pretrain_state";
const STATE_FORMAT_VERSION: u32 = 1;

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

/// The supervised baseline's view and sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisedConfig {
    /// The one training view (`count` must be 1).
    pub crop: CropSpec,
    pub ratio: (f64, f64),
    /// Draw cells with replacement, weight ∝ 1 / frequency of their type.
    pub oversample: bool,
}

impl SupervisedConfig {
    fn for_size(size: i64) -> Self {
        SupervisedConfig {
            crop: CropSpec {
                count: 1,
                size,
                scale: (0.5, 1.0),
                augment: vec![ViewAugment {
                    p_horizontal_flip: 0.5,
                    p_vertical_flip: 0.5,
                    rotation: Some((-180.0, 180.0)),
                    ..ViewAugment::identity()
                }],
            },
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            oversample: true,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.crop.count != 1 {
            return Err(Error::invalid(
                "crop.count",
                "the supervised view is one crop",
            ));
        }
        // Reuse the multi-crop checks on a two-view set of this crop.
        let mut spec = self.crop.clone();
        spec.count = 2;
        MultiCropConfig {
            global: spec,
            local: CropSpec {
                count: 0,
                ..self.crop.clone()
            },
            ratio: self.ratio,
        }
        .validate()
    }
}

/// Everything a pre-training run needs. Build it with [`PretrainConfig::from_value`]
/// (a preset plus overrides) so unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub method: SslMethod,
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
    pub device: String,
    /// Continue from `<output>/state.safetensors` if it exists.
    pub resume: bool,
    /// Keep `epoch_<k>/encoder.safetensors` every this many epochs (0: never).
    pub keep_every: u64,
    /// Threads decoding images (0: available cores, at most 8).
    pub decode_threads: usize,
    /// fp16 autocast of the forward passes with dynamic loss scaling, on CUDA
    /// (ignored, with a warning, on the CPU).
    #[serde(default)]
    pub mixed_precision: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sgd: Option<SgdConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adamw: Option<AdamWConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simclr: Option<SimClrConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swav: Option<SwavConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dino: Option<DinoConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervised: Option<SupervisedConfig>,
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
            method,
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
            device: "auto".into(),
            resume: false,
            keep_every: if small { 0 } else { 50 },
            decode_threads: 0,
            mixed_precision: false,
            sgd: None,
            adamw: None,
            simclr: None,
            swav: None,
            dino: None,
            supervised: None,
        };
        match method {
            SslMethod::SimClr => {
                // SimCLR: LARS lr 0.3 × B/256, wd 1e-6, 10 warm-up epochs.
                c.sgd = Some(SgdConfig::default());
                c.simclr = Some(SimClrConfig {
                    crops: MultiCropConfig::simclr(size),
                    ..Default::default()
                });
            }
            SslMethod::Swav => {
                // SwAV: base 4.8 at batch 4096 (0.3 per 256), final lr base/1000.
                c.sgd = Some(SgdConfig::default());
                c.final_learning_rate = scaled_learning_rate(0.3, c.batch_size) / 1000.0;
                let mut swav = SwavConfig {
                    crops: MultiCropConfig::swav(size),
                    ..Default::default()
                };
                if small {
                    swav.hidden_dim = 512;
                    swav.num_prototypes = 30;
                    swav.freeze_prototypes_iterations = 20;
                }
                c.swav = Some(swav);
            }
            SslMethod::Dino => {
                // DINO: AdamW lr 5e-4 × B/256 → 1e-6, wd 0.04 → 0.4.
                c.base_learning_rate = 0.0005;
                c.final_learning_rate = 1e-6;
                c.weight_decay = 0.04;
                c.weight_decay_end = 0.4;
                c.adamw = Some(AdamWConfig::default());
                let mut dino = DinoConfig {
                    crops: MultiCropConfig::dino(size),
                    ..Default::default()
                };
                if small {
                    // Measured on the synthetic cohort (README, "Self-supervised
                    // pre-training of the encoder"):
                    // with the paper's settings at this scale (batch 16–32, a
                    // few hundred steps, 32–64 px) the head drifts to uniform
                    // outputs and the encoder learns nothing a random one lacks.
                    // What learns: DINO's ResNet head (batch norm), K = 256, τ_t
                    // 0.04 without warm-up, a teacher that follows faster
                    // (λ 0.98 → 1), lr 1e-2 × B/256, and no colour jitter or
                    // greyscale (crops, flips, rotation, blur, solarisation stay).
                    // It beats a random encoder's k-NN at 32 px; at 64 px it
                    // learns, but in 306 steps not the cell types (README).
                    c.base_learning_rate = 0.01;
                    dino.hidden_dim = 512;
                    dino.bottleneck_dim = 128;
                    dino.out_dim = 256;
                    dino.use_bn_in_head = true;
                    dino.warmup_teacher_temperature = 0.04;
                    dino.teacher_temperature = 0.04;
                    dino.warmup_teacher_temperature_epochs = 0;
                    dino.teacher_momentum = 0.98;
                    dino.crops.without_colour_changes();
                }
                c.dino = Some(dino);
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
                c.supervised = Some(SupervisedConfig::for_size(size));
            }
        }
        Ok(c)
    }

    /// Builds a configuration from a JSON object: `method` (required), `preset`
    /// (default `paper`), and any other keys overriding the preset's values,
    /// objects merged key by key (`{"swav": {"num_prototypes": 30}}`). A key the
    /// preset does not have is an error naming its path.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(overrides) = value else {
            return Err(Error::invalid("config", "must be a JSON object"));
        };
        let method: SslMethod = match overrides.get("method") {
            Some(Value::String(m)) => m.parse()?,
            Some(other) => {
                return Err(Error::invalid(
                    "method",
                    format!("{other} is not a method name (simclr, swav, dino, supervised)"),
                ))
            }
            None => {
                return Err(Error::invalid(
                    "method",
                    "required: simclr, swav, dino or supervised",
                ))
            }
        };
        let preset = match overrides.get("preset") {
            None => "paper",
            Some(Value::String(p)) => p.as_str(),
            Some(other) => return Err(Error::invalid("preset", format!("{other} is not a name"))),
        };
        let mut merged = serde_json::to_value(Self::preset(method, preset)?)
            .map_err(|e| Error::invalid("config", e.to_string()))?;
        merge(&mut merged, Value::Object(overrides), "", method)?;
        let config: Self =
            serde_json::from_value(merged).map_err(|e| Error::invalid("config", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses JSON (or TOML when `is_toml`) with [`PretrainConfig::from_value`].
    pub fn parse(text: &str, is_toml: bool) -> Result<Self> {
        let value: Value = if is_toml {
            toml::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?
        } else {
            serde_json::from_str(text).map_err(|e| Error::invalid("config", e.to_string()))?
        };
        Self::from_value(value)
    }

    /// The multi-crop views of a self-supervised method (`None`: supervised).
    pub fn multi_crop(&self) -> Option<&MultiCropConfig> {
        match self.method {
            SslMethod::SimClr => self.simclr.as_ref().map(|c| &c.crops),
            SslMethod::Swav => self.swav.as_ref().map(|c| &c.crops),
            SslMethod::Dino => self.dino.as_ref().map(|c| &c.crops),
            SslMethod::Supervised => None,
        }
    }

    /// Learning rate at step 0 of the cosine: `base_learning_rate · batch / 256`.
    pub fn peak_learning_rate(&self) -> f64 {
        scaled_learning_rate(self.base_learning_rate, self.batch_size)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.dataset.as_os_str().is_empty() {
            return Err(Error::invalid("dataset", "required: the data set root"));
        }
        if self.output.as_os_str().is_empty() {
            return Err(Error::invalid("output", "required: the output directory"));
        }
        if self.batch_size < 2 {
            let why = match self.method {
                SslMethod::Supervised => "batch norm needs at least 2 images per batch",
                _ => "the contrastive loss is undefined without another image in the batch",
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
        self.device.parse::<DeviceSpec>()?;
        let method = self.method.name();
        // DINO trains with AdamW or, as its reference does for ResNets, SGD;
        // the others with SGD (+ LARC). Exactly one optimiser section is set.
        match (self.method, self.sgd.is_some(), self.adamw.is_some()) {
            (_, true, false) | (SslMethod::Dino, false, true) => {}
            (SslMethod::Dino, ..) => {
                return Err(Error::invalid(
                    "adamw",
                    "dino trains with exactly one of the `adamw` and `sgd` optimisers \
                     (set the other to null)",
                ))
            }
            _ => {
                return Err(Error::invalid(
                    "sgd",
                    format!("{method} trains with exactly the `sgd` optimiser"),
                ))
            }
        }
        if let Some(s) = &self.sgd {
            s.validate()?;
        }
        if let Some(a) = &self.adamw {
            a.validate()?;
        }
        let present = [
            (SslMethod::SimClr, self.simclr.is_some()),
            (SslMethod::Swav, self.swav.is_some()),
            (SslMethod::Dino, self.dino.is_some()),
            (SslMethod::Supervised, self.supervised.is_some()),
        ];
        for (m, is_set) in present {
            if is_set != (m == self.method) {
                return Err(Error::invalid(
                    m.name(),
                    if is_set {
                        format!("section given, but the method is {method}")
                    } else {
                        format!("section missing for method {method}")
                    },
                ));
            }
        }
        let prefixed = |e: Error| match e {
            Error::InvalidArgument { arg, reason } => {
                Error::invalid(format!("{method}.{arg}"), reason)
            }
            other => other,
        };
        let feature_dim = self.architecture.feature_dim();
        let in_dim = match (&self.simclr, &self.swav, &self.dino, &self.supervised) {
            (Some(c), ..) => c.validate().map_err(prefixed).map(|()| c.in_dim)?,
            (_, Some(c), ..) => {
                c.validate().map_err(prefixed)?;
                c.check_batch_size(self.batch_size)?;
                c.in_dim
            }
            (_, _, Some(c), _) => c.validate().map_err(prefixed).map(|()| c.in_dim)?,
            (_, _, _, Some(c)) => c.validate().map_err(prefixed).map(|()| feature_dim)?,
            _ => unreachable!("exactly one method section was checked above"),
        };
        let crops = match (self.multi_crop(), &self.supervised) {
            (Some(c), _) => vec![("crops.global", &c.global), ("crops.local", &c.local)],
            (None, Some(c)) => vec![("crop", &c.crop)],
            (None, None) => unreachable!("exactly one method section was checked above"),
        };
        if in_dim != feature_dim {
            return Err(Error::invalid(
                format!("{method}.in_dim"),
                format!(
                    "{in_dim}, but {} gives {feature_dim}-d features",
                    self.architecture.name()
                ),
            ));
        }
        for (key, spec) in crops {
            if spec.count > 0 && spec.size > self.image_size {
                return Err(Error::invalid(
                    format!("{method}.{key}.size"),
                    format!(
                        "{} px crops are larger than the {} px images (image_size)",
                        spec.size, self.image_size
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Merges `over` into `base` key by key; keys absent from `base` are errors.
fn merge(base: &mut Value, over: Value, path: &str, method: SslMethod) -> Result<()> {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                let key = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if path.is_empty() && k == "sgd" && method == SslMethod::Dino && !b.contains_key(&k)
                {
                    // DINO's SGD alternative starts from plain momentum SGD.
                    let plain = SgdConfig {
                        larc_trust: None,
                        ..SgdConfig::default()
                    };
                    b.insert(
                        k.clone(),
                        serde_json::to_value(plain).unwrap_or(Value::Null),
                    );
                }
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v, &key, method)?,
                    None => {
                        return Err(Error::invalid(
                            key,
                            format!(
                                "unknown key (not a setting of {} pre-training)",
                                method.name()
                            ),
                        ))
                    }
                }
            }
            Ok(())
        }
        (slot, v) => {
            *slot = v;
            Ok(())
        }
    }
}

/// Where a run is, reported after every step and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PretrainStage {
    /// Decoding images: `done` of `total` cells.
    Decode,
    /// A training step: `done` of `total` steps of the epoch.
    Step,
    /// An epoch ended and its checkpoint is written: `done` of `total` epochs.
    Epoch,
}

impl PretrainStage {
    pub fn name(self) -> &'static str {
        match self {
            PretrainStage::Decode => "decode",
            PretrainStage::Step => "pretrain",
            PretrainStage::Epoch => "pretrain-epoch",
        }
    }
}

/// A progress report; the callback returns `false` to cancel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PretrainEvent {
    pub stage: PretrainStage,
    /// 0-based epoch.
    pub epoch: u64,
    pub epochs: u64,
    pub done: u64,
    pub total: u64,
    /// Mean loss of the epoch so far (NaN while decoding).
    pub loss: f64,
    /// Training images per second in this epoch (0 while decoding).
    pub images_per_second: f64,
}

/// One epoch of the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: u64,
    pub mean_loss: f64,
    /// Learning rate of the epoch's last step.
    pub learning_rate: f64,
    pub seconds: f64,
    pub images_per_second: f64,
}

/// The result of [`pretrain`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainReport {
    pub method: SslMethod,
    pub preset: String,
    pub architecture: EncoderArch,
    pub image_size: i64,
    pub cells: usize,
    pub steps_per_epoch: u64,
    pub epochs_completed: u64,
    pub steps_completed: u64,
    /// Epochs that were already done in the state this run resumed from.
    pub resumed_at_epoch: Option<u64>,
    pub encoder: PathBuf,
    pub state: PathBuf,
    /// Every epoch of the run, resumed ones included.
    pub history: Vec<EpochRecord>,
    /// The loss of every step, resumed ones included.
    pub step_losses: Vec<f64>,
    /// Cell types in classifier order (supervised only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell_types: Option<Vec<String>>,
}

/// Metadata of `state.safetensors`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateMeta {
    format_version: u32,
    method: SslMethod,
    architecture: EncoderArch,
    epochs_completed: u64,
    steps_completed: u64,
    steps_per_epoch: u64,
    cells: usize,
    /// How randomness is derived (there is no generator state to save).
    rng: String,
    queue_filled: i64,
    history: Vec<EpochRecord>,
    step_losses: Vec<f64>,
    config: PretrainConfig,
}

// ----------------------------------------------------------------- randomness

const STREAM_INIT: u64 = 1;
const STREAM_ORDER: u64 = 2;
const STREAM_VIEWS: u64 = 3;
const STREAM_SUBSET: u64 = 4;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The seed of an independent stream for `(seed, stream, a, b)`.
pub fn stream_seed(seed: u64, stream: u64, a: u64, b: u64) -> u64 {
    [stream, a, b]
        .iter()
        .fold(splitmix(seed), |h, &x| splitmix(h ^ splitmix(x)))
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// How one variable is drawn.
enum Draw {
    Keep,
    Normal(f64),
    Uniform(f64),
}

/// The references' initialisation for our variable names: convolutions Kaiming
/// normal (fan-out, ReLU; torchvision), linear layers U(±1/√fan_in) (PyTorch),
/// DINO's MLP N(0, 0.02) with zero biases; batch norm and DINO's `weight_g`
/// keep their constants.
fn draw_for(name: &str, shape: &[i64], vars: &std::collections::HashMap<String, Tensor>) -> Draw {
    let prefix = name.rsplit_once('.').map_or("", |(p, _)| p);
    let is_norm = vars.contains_key(&format!("{prefix}.running_mean"));
    if is_norm || name.ends_with("weight_g") {
        return Draw::Keep;
    }
    let is_bias = name.ends_with(".bias");
    if name.starts_with("mlp.") {
        return if is_bias {
            Draw::Keep
        } else {
            Draw::Normal(0.02)
        };
    }
    if shape.len() == 4 {
        let fan_out = shape[0] * shape[2] * shape[3];
        return Draw::Normal((2.0 / fan_out as f64).sqrt());
    }
    let fan_in = if is_bias {
        vars.get(&format!("{prefix}.weight"))
            .map_or(shape[0], |w| w.size().iter().skip(1).product())
    } else {
        shape.iter().skip(1).product()
    };
    Draw::Uniform(1.0 / (fan_in.max(1) as f64).sqrt())
}

/// Re-draws every variable of `vs` from ChaCha8 streams seeded by `(seed, name)`.
pub fn init_seeded(vs: &VarStore, seed: u64) -> Result<()> {
    let vars = vs.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, var) in &vars {
            let shape = var.size();
            let n = var.numel();
            let mut rng =
                ChaCha8Rng::seed_from_u64(stream_seed(seed, STREAM_INIT, name_hash(name), 0));
            let values: Vec<f32> = match draw_for(name, &shape, &vars) {
                Draw::Keep => continue,
                Draw::Uniform(b) => (0..n).map(|_| rng.random_range(-b..b) as f32).collect(),
                Draw::Normal(std) => (0..n)
                    .map(|_| {
                        // Box–Muller; 1 − u keeps the logarithm finite.
                        let u: f64 = 1.0 - rng.random::<f64>();
                        let v: f64 = rng.random();
                        (std * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
                    })
                    .collect(),
            };
            let t = Tensor::f_from_slice(&values)?.f_view(shape.as_slice())?;
            var.shallow_clone().f_copy_(&t)?;
        }
        Ok(())
    })
}

/// A seeded encoder (torchvision's initialisation from private streams) on `device`.
pub fn seeded_encoder(arch: EncoderArch, seed: u64, device: Device) -> Result<(Encoder, VarStore)> {
    let vs = VarStore::new(device);
    let encoder = Encoder::new(&vs.root(), arch);
    init_seeded(&vs, seed)?;
    Ok((encoder, vs))
}

// ----------------------------------------------------------------------- data

/// Cells of a data set decoded at one size.
#[derive(Debug)]
pub struct CellCache {
    /// `[N, 3, S, S]` u8 on the CPU.
    pub images: Tensor,
    /// `cells.csv` type of each cell, if any.
    pub cell_types: Vec<Option<String>>,
    /// `(patient id, cell id)` of each cell.
    pub ids: Vec<(String, u64)>,
}

/// Decodes the cells of `dataset` (a seeded subset of at most `max_cells`, in
/// data-set order; only typed cells when `typed_only`) at `size` px.
pub fn decode_cells(
    dataset: &Dataset,
    size: i64,
    max_cells: Option<usize>,
    typed_only: bool,
    seed: u64,
    threads: usize,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<CellCache> {
    let mut cells: Vec<(&str, &crate::dataset::CellRecord)> = dataset
        .patients()
        .iter()
        .flat_map(|p| p.cells.iter().map(move |c| (p.id.as_str(), c)))
        .filter(|(_, c)| !typed_only || c.cell_type.is_some())
        .collect();
    if let Some(max) = max_cells.filter(|&m| m < cells.len()) {
        let mut order: Vec<usize> = (0..cells.len()).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(stream_seed(
            seed,
            STREAM_SUBSET,
            0,
            0,
        )));
        order.truncate(max);
        order.sort_unstable();
        cells = order.into_iter().map(|i| cells[i]).collect();
    }
    let n = cells.len();
    let plane = (size * size) as usize;
    let mut data = vec![0u8; n * 3 * plane];
    let threads = if threads == 0 {
        std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(8)
    } else {
        threads
    };
    let chunk = 256.min(n.div_ceil(threads).max(1));
    let mut done = 0;
    for (block, out) in cells
        .chunks(chunk * threads)
        .zip(data.chunks_mut(chunk * threads * 3 * plane))
    {
        std::thread::scope(|s| -> Result<()> {
            let handles: Vec<_> = block
                .chunks(chunk)
                .zip(out.chunks_mut(chunk * 3 * plane))
                .map(|(part, out)| {
                    s.spawn(move || -> Result<()> {
                        for ((_, cell), out) in part.iter().zip(out.chunks_exact_mut(3 * plane)) {
                            let img = cell.load()?;
                            let img = if img.width() as i64 == size && img.height() as i64 == size {
                                img
                            } else {
                                img.resized(size as u32)
                            };
                            for (i, px) in img.rgb().chunks_exact(3).enumerate() {
                                for c in 0..3 {
                                    out[c * plane + i] = px[c];
                                }
                            }
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| {
                    Error::invalid("dataset", "an image decoding thread panicked")
                })??;
            }
            Ok(())
        })?;
        done += block.len();
        if !progress(done, n) {
            return Err(Error::Cancelled(format!(
                "decoding after {done} of {n} cells"
            )));
        }
    }
    let images = Tensor::f_from_slice(&data)?.f_view([n as i64, 3, size, size])?;
    Ok(CellCache {
        images,
        cell_types: cells.iter().map(|(_, c)| c.cell_type.clone()).collect(),
        ids: cells.iter().map(|(p, c)| (p.to_string(), c.id)).collect(),
    })
}

/// `[N, 3, S, S]` u8 images → float in [0, 1] on `device`.
pub fn to_unit_float(images: &Tensor, device: Device) -> Result<Tensor> {
    Ok(images.f_to_device(device)?.f_to_kind(Kind::Float)? / 255.0)
}

/// `(x − mean) / std` per channel of `[N, 3, H, W]` images in [0, 1].
pub fn normalize_views(views: &[Tensor], norm: &Normalization) -> Result<Vec<Tensor>> {
    let Some(first) = views.first() else {
        return Ok(Vec::new());
    };
    let opts = (Kind::Float, first.device());
    let mean = Tensor::f_from_slice(&norm.mean)?
        .f_view([1, 3, 1, 1])?
        .f_to(opts.1)?;
    let std = Tensor::f_from_slice(&norm.std)?
        .f_view([1, 3, 1, 1])?
        .f_to(opts.1)?;
    views
        .iter()
        .map(|v| Ok(v.f_sub(&mean)?.f_div(&std)?))
        .collect()
}

// ---------------------------------------------------------------------- model

/// SwAV's queue of assignment-crop embeddings, newest first, with its fill
/// count as state (the `swav` module's queue keeps both private).
#[derive(Debug)]
struct EmbeddingQueue {
    /// `[A, L, D]`.
    embeddings: Tensor,
    filled: i64,
}

impl EmbeddingQueue {
    fn is_full(&self) -> bool {
        self.filled >= self.embeddings.size()[1]
    }

    fn scores(&self, prototypes: &Prototypes) -> Result<Option<Vec<Tensor>>> {
        if !self.is_full() {
            return Ok(None);
        }
        tch::no_grad(|| {
            (0..self.embeddings.size()[0])
                .map(|i| prototypes.scores(&self.embeddings.get(i)))
                .collect::<Result<Vec<_>>>()
                .map(Some)
        })
    }

    fn push(&mut self, embeddings: &[Tensor]) -> Result<()> {
        let l = self.embeddings.size()[1];
        let new = Tensor::f_stack(embeddings, 0)?
            .detach()
            .to_kind(Kind::Float);
        let b = new.size()[1];
        self.embeddings = if b >= l {
            new.narrow(1, 0, l)
        } else {
            Tensor::f_cat(&[new, self.embeddings.narrow(1, 0, l - b)], 1)?
        };
        self.filled = (self.filled + b).min(l);
        Ok(())
    }
}

struct Teacher {
    encoder: Encoder,
    encoder_vs: VarStore,
    head: DinoHead,
    head_vs: VarStore,
}

enum Head {
    SimClr(ProjectionHead),
    Swav {
        head: SwavHead,
        prototypes: Prototypes,
        queue: Option<EmbeddingQueue>,
    },
    Dino {
        head: DinoHead,
        loss: DinoLoss,
        teacher: Box<Teacher>,
    },
    Supervised {
        classifier: nn::Linear,
        /// Class index of each cached cell.
        labels: Tensor,
    },
}

struct Model {
    encoder: Encoder,
    encoder_vs: VarStore,
    head_vs: VarStore,
    head: Head,
}

/// Runs `f` on the pooled features of `views`, views of one size batched together.
fn embed_views(
    encoder: &Encoder,
    views: &[Tensor],
    train: bool,
    f: &dyn Fn(&Tensor) -> Tensor,
) -> Result<Vec<Tensor>> {
    let mut out = Vec::with_capacity(views.len());
    let mut start = 0;
    while start < views.len() {
        let size = views[start].size();
        let end = (start..views.len())
            .find(|&i| views[i].size() != size)
            .unwrap_or(views.len());
        let x = Tensor::f_cat(&views[start..end], 0)?;
        let y = f(&encoder.forward_t(&x, train));
        out.extend(y.f_chunk((end - start) as i64, 0)?);
        start = end;
    }
    Ok(out)
}

fn copy_vars(dst: &VarStore, src: &VarStore) -> Result<()> {
    let src = src.variables();
    tch::no_grad(|| -> Result<()> {
        for (name, t) in dst.variables() {
            let s = src
                .get(&name)
                .ok_or_else(|| Error::Mismatch(format!("no variable `{name}` to copy")))?;
            t.shallow_clone().f_copy_(s)?;
        }
        Ok(())
    })
}

impl Model {
    fn new(
        config: &PretrainConfig,
        device: Device,
        num_types: usize,
        labels: &[i64],
    ) -> Result<Self> {
        let seed = config.seed;
        let encoder_vs = VarStore::new(device);
        let encoder = Encoder::new(&encoder_vs.root(), config.architecture);
        init_seeded(&encoder_vs, seed)?;
        let head_vs = VarStore::new(device);
        let root = head_vs.root();
        let head = match config.method {
            SslMethod::SimClr => {
                let c = config.simclr.as_ref().expect("validated");
                let head = ProjectionHead::new(&root, c)?;
                init_seeded(&head_vs, seed)?;
                Head::SimClr(head)
            }
            SslMethod::Swav => {
                let c = config.swav.as_ref().expect("validated");
                let head = SwavHead::new(&root, c)?;
                let mut prototypes = Prototypes::new(&root, c.out_dim, c.num_prototypes)?;
                init_seeded(&head_vs, seed)?;
                prototypes.normalize_();
                let queue = (c.queue_length > 0).then(|| EmbeddingQueue {
                    embeddings: Tensor::zeros(
                        [c.assignment_crops.len() as i64, c.queue_length, c.out_dim],
                        (Kind::Float, device),
                    ),
                    filled: 0,
                });
                Head::Swav {
                    head,
                    prototypes,
                    queue,
                }
            }
            SslMethod::Dino => {
                let c = config.dino.as_ref().expect("validated");
                let head = DinoHead::new(&root, c)?;
                init_seeded(&head_vs, seed)?;
                let mut t_encoder_vs = VarStore::new(device);
                let t_encoder = Encoder::new(&t_encoder_vs.root(), config.architecture);
                let mut t_head_vs = VarStore::new(device);
                let t_head = DinoHead::new(&t_head_vs.root(), c)?;
                copy_vars(&t_encoder_vs, &encoder_vs)?;
                copy_vars(&t_head_vs, &head_vs)?;
                t_encoder_vs.freeze();
                t_head_vs.freeze();
                Head::Dino {
                    head,
                    loss: DinoLoss::new(c, device)?,
                    teacher: Box::new(Teacher {
                        encoder: t_encoder,
                        encoder_vs: t_encoder_vs,
                        head: t_head,
                        head_vs: t_head_vs,
                    }),
                }
            }
            SslMethod::Supervised => {
                let classifier = nn::linear(
                    &root / "classifier",
                    config.architecture.feature_dim(),
                    num_types as i64,
                    Default::default(),
                );
                init_seeded(&head_vs, seed)?;
                Head::Supervised {
                    classifier,
                    labels: Tensor::f_from_slice(labels)?,
                }
            }
        };
        Ok(Model {
            encoder,
            encoder_vs,
            head_vs,
            head,
        })
    }

    /// The optimiser's parameters: the trainable variables (before any freezing).
    fn params(&self) -> Vec<Param> {
        let mut out = Vec::new();
        for (prefix, vs) in [("encoder", &self.encoder_vs), ("head", &self.head_vs)] {
            let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, t) in vars {
                if t.requires_grad() {
                    out.push(Param::new(format!("{prefix}.{name}"), t));
                }
            }
        }
        out
    }

    /// Variable stores by state prefix.
    fn stores(&self) -> Vec<(&'static str, &VarStore)> {
        let mut out = vec![("encoder", &self.encoder_vs), ("head", &self.head_vs)];
        if let Head::Dino { teacher, .. } = &self.head {
            out.push(("teacher.encoder", &teacher.encoder_vs));
            out.push(("teacher.head", &teacher.head_vs));
        }
        out
    }

    /// The encoder to export (DINO: the teacher).
    fn export_store(&self) -> &VarStore {
        match &self.head {
            Head::Dino { teacher, .. } => &teacher.encoder_vs,
            _ => &self.encoder_vs,
        }
    }

    /// The loss of one batch (with gradient) from its normalised views
    /// ([`make_views`]), freezing what the step asks for.
    fn loss(
        &mut self,
        config: &PretrainConfig,
        views: &[Tensor],
        indices: &Tensor,
        epoch: u64,
        step: u64,
    ) -> Result<Tensor> {
        match &mut self.head {
            Head::SimClr(head) => {
                let c = config.simclr.as_ref().expect("validated");
                let z = embed_views(&self.encoder, views, true, &|x| head.forward(x))?;
                nt_xent_loss(&z[0], &z[1], c.temperature)
            }
            Head::Swav {
                head,
                prototypes,
                queue,
            } => {
                let c = config.swav.as_ref().expect("validated");
                prototypes.normalize_();
                prototypes.freeze_for_iterations(step, c.freeze_prototypes_iterations);
                let z = embed_views(&self.encoder, views, true, &|x| head.forward_t(x, true))?;
                let scores = z
                    .iter()
                    .map(|e| prototypes.scores(e))
                    .collect::<Result<Vec<_>>>()?;
                let active = queue.as_mut().filter(|_| epoch >= c.queue_start_epoch);
                let queue_scores = match &active {
                    Some(q) => q.scores(prototypes)?,
                    None => None,
                };
                let loss = swav_loss(
                    &scores,
                    &c.assignment_crops,
                    c.temperature,
                    c.epsilon,
                    c.sinkhorn_iterations,
                    queue_scores.as_deref(),
                )?;
                if let Some(q) = active {
                    let assigned: Vec<Tensor> =
                        c.assignment_crops.iter().map(|&a| z[a].detach()).collect();
                    q.push(&assigned)?;
                }
                Ok(loss)
            }
            Head::Dino {
                head,
                loss,
                teacher,
            } => {
                let c = config.dino.as_ref().expect("validated");
                head.freeze_last_layer(epoch, c.freeze_last_layer_epochs);
                let globals = c.crops.global.count;
                let t_out = tch::no_grad(|| {
                    embed_views(&teacher.encoder, &views[..globals], true, &|x| {
                        teacher.head.forward_t(x, true)
                    })
                })?;
                let s_out = embed_views(&self.encoder, views, true, &|x| head.forward_t(x, true))?;
                if log::log_enabled!(log::Level::Debug) {
                    let (h, kl) = loss.monitors(&s_out, &t_out, epoch)?;
                    log::debug!("dino step {step}: teacher entropy {h:.4}, KL {kl:.4}");
                }
                loss.forward(&s_out, &t_out, epoch)
            }
            Head::Supervised { classifier, labels } => {
                let logits = self.encoder.forward_t(&views[0], true).apply(classifier);
                let target = labels
                    .f_index_select(0, indices)?
                    .f_to_device(logits.device())?;
                Ok(logits.f_cross_entropy_loss::<Tensor>(
                    &target,
                    None,
                    tch::Reduction::Mean,
                    -100,
                    0.0,
                )?)
            }
        }
    }

    /// What follows the optimiser step: DINO's teacher EMA.
    fn after_step(&mut self, config: &PretrainConfig, step: u64, total_steps: u64) -> Result<()> {
        if let Head::Dino { teacher, .. } = &self.head {
            let c = config.dino.as_ref().expect("validated");
            let m = schedule::teacher_momentum(step, c.teacher_momentum, total_steps);
            ema_update(&teacher.encoder_vs, &self.encoder_vs, m)?;
            ema_update(&teacher.head_vs, &self.head_vs, m)?;
        }
        Ok(())
    }

    fn extra_state(&self) -> Vec<(String, Tensor)> {
        match &self.head {
            Head::Dino { loss, .. } => vec![("dino.center".into(), loss.center().shallow_clone())],
            Head::Swav { queue: Some(q), .. } => {
                vec![("swav.queue".into(), q.embeddings.shallow_clone())]
            }
            _ => Vec::new(),
        }
    }

    fn queue_filled(&self) -> i64 {
        match &self.head {
            Head::Swav { queue: Some(q), .. } => q.filled,
            _ => 0,
        }
    }

    /// Restores every tensor of the state; leftovers and gaps are errors.
    fn load(
        &mut self,
        tensors: &mut BTreeMap<String, Tensor>,
        queue_filled: i64,
        path: &Path,
    ) -> Result<()> {
        for (prefix, vs) in self.stores() {
            for (name, var) in vs.variables() {
                let key = format!("{prefix}.{name}");
                let t = tensors.remove(&key).ok_or_else(|| {
                    Error::checkpoint(path, format!("state lacks tensor `{key}`"))
                })?;
                if t.size() != var.size() {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "tensor `{key}` has shape {:?}, the model {:?}",
                            t.size(),
                            var.size()
                        ),
                    ));
                }
                tch::no_grad(|| var.shallow_clone().f_copy_(&t))?;
            }
        }
        match &mut self.head {
            Head::Dino { loss, .. } => {
                let c = tensors
                    .remove("dino.center")
                    .ok_or_else(|| Error::checkpoint(path, "state lacks `dino.center`"))?;
                loss.set_center(&c)?;
            }
            Head::Swav { queue: Some(q), .. } => {
                let e = tensors
                    .remove("swav.queue")
                    .ok_or_else(|| Error::checkpoint(path, "state lacks `swav.queue`"))?;
                if e.size() != q.embeddings.size() {
                    return Err(Error::checkpoint(
                        path,
                        format!(
                            "`swav.queue` has shape {:?}, expected {:?}",
                            e.size(),
                            q.embeddings.size()
                        ),
                    ));
                }
                q.embeddings = e.to_device(q.embeddings.device());
                q.filled = queue_filled;
            }
            _ => {}
        }
        Ok(())
    }
}

enum Rule {
    Sgd(Sgd),
    AdamW(AdamW),
}

/// The update rule, with a loss scaler when training in fp16 mixed precision.
struct Optimizer {
    rule: Rule,
    scaler: Option<GradScaler>,
}

impl Optimizer {
    fn new(config: &PretrainConfig, params: Vec<Param>, mixed_precision: bool) -> Result<Self> {
        let rule = match (&config.sgd, &config.adamw) {
            (Some(s), _) => Rule::Sgd(Sgd::new(params, *s)?),
            (_, Some(a)) => Rule::AdamW(AdamW::new(params, *a)?),
            _ => return Err(Error::invalid("sgd", "no optimiser configured")),
        };
        Ok(Optimizer {
            rule,
            scaler: mixed_precision.then(GradScaler::default),
        })
    }

    fn params(&self) -> &[Param] {
        match &self.rule {
            Rule::Sgd(o) => o.params(),
            Rule::AdamW(o) => o.params(),
        }
    }

    /// Zeroes the gradients, back-propagates `loss` (scaled in mixed precision)
    /// and returns whether the gradients, unscaled, are finite, so that a step
    /// may follow (always true in fp32).
    fn backward(&mut self, loss: &Tensor) -> Result<bool> {
        match &mut self.rule {
            Rule::Sgd(o) => o.zero_grad(),
            Rule::AdamW(o) => o.zero_grad(),
        }
        match &self.scaler {
            Some(scaler) => {
                scaler.scale_loss(loss)?.f_backward()?;
                scaler.unscale(self.params())
            }
            None => {
                loss.f_backward()?;
                Ok(true)
            }
        }
    }

    /// The update with `lr` and `wd` when the gradients are `finite`, else a
    /// skipped step (the scaler backs off).
    fn step(&mut self, lr: f64, wd: f64, finite: bool) -> Result<()> {
        if finite {
            match &mut self.rule {
                Rule::Sgd(o) => o.step(lr, wd)?,
                Rule::AdamW(o) => o.step(lr, wd)?,
            }
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.update(finite);
        }
        Ok(())
    }

    fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = match &self.rule {
            Rule::Sgd(o) => o.state(),
            Rule::AdamW(o) => o.state(),
        };
        if let Some(scaler) = &self.scaler {
            out.extend(scaler.state());
        }
        out
    }

    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        let (scaler, rule): (BTreeMap<_, _>, BTreeMap<_, _>) = state
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .partition(|(k, _)| k.starts_with("grad_scaler."));
        if let Some(s) = &mut self.scaler {
            s.load_state(&scaler)?;
        }
        match &mut self.rule {
            Rule::Sgd(o) => o.load_state(&rule),
            Rule::AdamW(o) => o.load_state(&rule),
        }
    }
}

// ---------------------------------------------------------------- state files

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

fn read_state(
    path: &Path,
    config: &PretrainConfig,
) -> Result<(StateMeta, BTreeMap<String, Tensor>)> {
    let (tensors, json) = read_safetensors(path, STATE_KEY)?;
    let meta: StateMeta = serde_json::from_str(&json)
        .map_err(|e| Error::checkpoint(path, format!("state metadata is not valid: {e}")))?;
    if meta.method != config.method {
        return Err(Error::invalid(
            "method",
            format!(
                "cannot resume: {} holds a {} run, this configuration is {}",
                path.display(),
                meta.method.name(),
                config.method.name()
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

fn provenance(config: &PretrainConfig, meta: &StateMeta) -> Provenance {
    let mut p = Provenance::new(config.method.name(), Some(config.seed));
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
    let exported = if config.method == SslMethod::Dino {
        "teacher"
    } else {
        "student"
    };
    d.insert("exported".into(), exported.into());
    p
}

fn save_epoch(
    config: &PretrainConfig,
    model: &Model,
    optimizer: &Optimizer,
    meta: &StateMeta,
    cell_types: Option<&[String]>,
) -> Result<()> {
    let mut prov = provenance(config, meta);
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

// ----------------------------------------------------------------------- loop

/// The normalised views of one batch of `[B, 3, S, S]` images in [0, 1]: the
/// method's multi-crop views (global crops first), or the supervised one view.
fn make_views(
    config: &PretrainConfig,
    images: &Tensor,
    rng: &mut ChaCha8Rng,
) -> Result<Vec<Tensor>> {
    let views = match config.multi_crop() {
        Some(crops) => crops.views(images, rng)?,
        None => {
            let c = config.supervised.as_ref().expect("validated");
            let x = random_resized_crop(images, c.crop.size, c.crop.scale, c.ratio, rng)?;
            vec![c.crop.augment[0].apply(&x, rng, GLOBAL_REFERENCE_SIDE)?]
        }
    };
    normalize_views(&views, &config.normalization)
}

/// One step's input, made ahead of the step by the view thread.
struct Batch {
    step: u64,
    /// `[B]` cache indices of the batch's cells.
    indices: Tensor,
    views: Vec<Tensor>,
}

/// Batches prepared ahead of the training step.
const PREFETCH_BATCHES: usize = 2;

/// Makes the batches of epochs `first_epoch..` in order and sends them to
/// `tx` until the receiver hangs up or a batch fails (sent as the error). Each
/// step's views come from its own `(seed, epoch, step)` stream, so what this
/// thread makes does not depend on timing.
fn produce_batches(
    config: &PretrainConfig,
    images: &Tensor,
    labels: &[i64],
    first_epoch: u64,
    steps_per_epoch: u64,
    device: Device,
    tx: &std::sync::mpsc::SyncSender<Result<Batch>>,
) {
    let _guard = tch::no_grad_guard();
    for epoch in first_epoch..config.epochs {
        let order = epoch_order(
            config,
            images.size()[0] as usize,
            labels,
            epoch,
            steps_per_epoch,
        );
        for i in 0..steps_per_epoch {
            let step = epoch * steps_per_epoch + i;
            let batch = (|| -> Result<Batch> {
                let at = i as usize * config.batch_size;
                let indices = Tensor::f_from_slice(&order[at..at + config.batch_size])?;
                let x = to_unit_float(&images.f_index_select(0, &indices)?, device)?;
                let mut rng =
                    ChaCha8Rng::seed_from_u64(stream_seed(config.seed, STREAM_VIEWS, epoch, step));
                let views = make_views(config, &x, &mut rng)?;
                Ok(Batch {
                    step,
                    indices,
                    views,
                })
            })();
            let failed = batch.is_err();
            if tx.send(batch).is_err() || failed {
                return;
            }
        }
    }
}

/// The cell order of one epoch: `steps · batch` indices, from shuffled passes
/// or (supervised with oversampling) drawn with weight ∝ 1/type frequency.
fn epoch_order(
    config: &PretrainConfig,
    n: usize,
    labels: &[i64],
    epoch: u64,
    steps: u64,
) -> Vec<i64> {
    let count = steps as usize * config.batch_size;
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(config.seed, STREAM_ORDER, epoch, 0));
    let oversample = config.supervised.as_ref().is_some_and(|s| s.oversample);
    if oversample && !labels.is_empty() {
        let classes = labels.iter().max().map_or(0, |m| *m as usize + 1);
        let mut freq = vec![0usize; classes];
        for &l in labels {
            freq[l as usize] += 1;
        }
        let mut acc = 0.0;
        let cumulative: Vec<f64> = labels
            .iter()
            .map(|&l| {
                acc += 1.0 / freq[l as usize] as f64;
                acc
            })
            .collect();
        return (0..count)
            .map(|_| {
                let u = rng.random::<f64>() * acc;
                cumulative.partition_point(|&c| c <= u).min(n - 1) as i64
            })
            .collect();
    }
    let mut order = Vec::with_capacity(count + n);
    while order.len() < count {
        let mut pass: Vec<i64> = (0..n as i64).collect();
        pass.shuffle(&mut rng);
        order.extend(pass);
    }
    order.truncate(count);
    order
}

/// Pre-trains an encoder as `config` says (see the module docs). `progress` sees
/// decoding, every step and every finished epoch; returning `false` cancels with
/// [`Error::Cancelled`], keeping the checkpoint of the last finished epoch.
pub fn pretrain(
    config: &PretrainConfig,
    progress: &mut dyn FnMut(&PretrainEvent) -> bool,
) -> Result<PretrainReport> {
    config.validate()?;
    let device = config.device.parse::<DeviceSpec>()?.resolve()?;
    std::fs::create_dir_all(&config.output)
        .map_err(|e| Error::io("cannot create", &config.output, e))?;
    let state_path = config.output.join(STATE_FILE);
    let saved = if config.resume && state_path.exists() {
        Some(read_state(&state_path, config)?)
    } else {
        if state_path.exists() {
            log::warn!(
                "{} exists and `resume` is false: starting over and replacing it",
                state_path.display()
            );
        }
        None
    };

    let (dataset, _) = Dataset::open(&config.dataset, &OpenOptions::fail())?;
    let supervised = config.method == SslMethod::Supervised;
    if supervised && !dataset.has_cell_types() {
        return Err(Error::Dataset {
            path: config.dataset.clone(),
            reason: "supervised pre-training needs cell types in cells.csv".into(),
        });
    }
    let cache = decode_cells(
        &dataset,
        config.image_size,
        config.max_cells,
        supervised,
        config.seed,
        config.decode_threads,
        &mut |done, total| {
            progress(&PretrainEvent {
                stage: PretrainStage::Decode,
                epoch: 0,
                epochs: config.epochs,
                done: done as u64,
                total: total as u64,
                loss: f64::NAN,
                images_per_second: 0.0,
            })
        },
    )?;
    let n = cache.images.size()[0] as usize;
    if n < config.batch_size {
        return Err(Error::invalid(
            "batch_size",
            format!(
                "{} exceeds the {n} usable cells of the data set",
                config.batch_size
            ),
        ));
    }
    let (cell_types, labels): (Option<Vec<String>>, Vec<i64>) = if supervised {
        let mut types: Vec<String> = cache.cell_types.iter().flatten().cloned().collect();
        types.sort();
        types.dedup();
        let labels = cache
            .cell_types
            .iter()
            .map(|t| {
                let t = t.as_deref().unwrap_or_default();
                types.binary_search_by(|x| x.as_str().cmp(t)).unwrap_or(0) as i64
            })
            .collect();
        (Some(types), labels)
    } else {
        (None, Vec::new())
    };
    let steps_per_epoch = config
        .steps_per_epoch
        .unwrap_or((n / config.batch_size) as u64);
    let total_steps = steps_per_epoch * config.epochs;
    let num_types = cell_types.as_ref().map_or(0, Vec::len);
    let mut model = Model::new(config, device, num_types, &labels)?;
    let amp = config.mixed_precision && device.is_cuda();
    if config.mixed_precision && !amp {
        log::warn!("mixed_precision applies on CUDA only: training in fp32 on {device:?}");
    }
    let mut optimizer = Optimizer::new(config, model.params(), amp)?;
    let mut meta = StateMeta {
        format_version: STATE_FORMAT_VERSION,
        method: config.method,
        architecture: config.architecture,
        epochs_completed: 0,
        steps_completed: 0,
        steps_per_epoch,
        cells: n,
        rng: "ChaCha8 streams seeded per (seed, purpose, epoch, step) with splitmix64; \
              no generator state is carried between steps"
            .into(),
        queue_filled: 0,
        history: Vec::new(),
        step_losses: Vec::new(),
        config: config.clone(),
    };
    let mut resumed_at_epoch = None;
    if let Some((saved, mut tensors)) = saved {
        if saved.steps_per_epoch != steps_per_epoch || saved.cells != n {
            return Err(Error::invalid(
                "resume",
                format!(
                    "{} has {} steps per epoch over {} cells; this configuration gives {} over {}",
                    state_path.display(),
                    saved.steps_per_epoch,
                    saved.cells,
                    steps_per_epoch,
                    n
                ),
            ));
        }
        model.load(&mut tensors, saved.queue_filled, &state_path)?;
        let opt_state: BTreeMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, t)| match k.strip_prefix("optimizer.") {
                Some(rest) => Ok((rest.to_owned(), t)),
                None => Err(Error::checkpoint(
                    &state_path,
                    format!(
                        "tensor `{k}` belongs to no part of a {} run",
                        config.method.name()
                    ),
                )),
            })
            .collect::<Result<_>>()?;
        optimizer.load_state(&opt_state)?;
        resumed_at_epoch = Some(saved.epochs_completed);
        meta.epochs_completed = saved.epochs_completed;
        meta.steps_completed = saved.steps_completed;
        meta.history = saved.history;
        meta.step_losses = saved.step_losses;
        log::info!(
            "resuming {} at epoch {} (step {})",
            state_path.display(),
            meta.epochs_completed,
            meta.steps_completed
        );
    }

    let lr_peak = config.peak_learning_rate();
    let warmup_steps = config.warmup_epochs * steps_per_epoch;
    let clip = config.dino.as_ref().map_or(0.0, |d| d.clip_grad);
    let batch = config.batch_size as i64;
    let first_epoch = meta.epochs_completed;
    // Views are made one or two steps ahead by a thread of their own (on the
    // training device), so the model does not wait on augmentation.
    std::thread::scope(|scope| -> Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel(PREFETCH_BATCHES);
        let images = cache.images.shallow_clone();
        let labels = &labels;
        scope.spawn(move || {
            produce_batches(
                config,
                &images,
                labels,
                first_epoch,
                steps_per_epoch,
                device,
                &tx,
            )
        });
        for epoch in first_epoch..config.epochs {
            let started = Instant::now();
            let mut loss_sum = 0.0;
            let mut lr = 0.0;
            for i in 0..steps_per_epoch {
                let step = epoch * steps_per_epoch + i;
                lr = schedule::learning_rate(
                    step,
                    lr_peak,
                    config.final_learning_rate,
                    warmup_steps,
                    total_steps,
                );
                let wd = schedule::weight_decay(
                    step,
                    config.weight_decay,
                    config.weight_decay_end,
                    total_steps,
                );
                let Batch {
                    step: made_for,
                    indices,
                    views,
                } = rx.recv().map_err(|_| Error::Dataset {
                    path: config.dataset.clone(),
                    reason: format!("the view thread stopped before step {step}"),
                })??;
                debug_assert_eq!(made_for, step);
                let loss =
                    tch::autocast(amp, || model.loss(config, &views, &indices, epoch, step))?;
                let value = loss.f_double_value(&[])?;
                if !value.is_finite() {
                    return Err(Error::NonFinite(format!(
                        "{} loss at epoch {epoch}, step {step} ({value}); training stopped, the \
                     checkpoint of epoch {} is kept",
                        config.method.name(),
                        meta.epochs_completed
                    )));
                }
                let finite = optimizer.backward(&loss)?;
                if finite && clip > 0.0 {
                    let params: Vec<Tensor> = optimizer
                        .params()
                        .iter()
                        .map(|p| p.tensor.shallow_clone())
                        .collect();
                    clip_gradients(&params, clip)?;
                }
                optimizer.step(lr, wd, finite)?;
                model.after_step(config, step, total_steps)?;
                loss_sum += value;
                meta.step_losses.push(value);
                meta.steps_completed = step + 1;
                let secs = started.elapsed().as_secs_f64();
                let event = PretrainEvent {
                    stage: PretrainStage::Step,
                    epoch,
                    epochs: config.epochs,
                    done: i + 1,
                    total: steps_per_epoch,
                    loss: loss_sum / (i + 1) as f64,
                    images_per_second: ((i + 1) as f64 * batch as f64) / secs.max(1e-9),
                };
                if !progress(&event) {
                    return Err(Error::Cancelled(format!(
                    "pre-training at epoch {epoch}, step {} of {steps_per_epoch}; the checkpoint \
                     of epoch {} is kept",
                    i + 1,
                    meta.epochs_completed
                )));
                }
            }
            let seconds = started.elapsed().as_secs_f64();
            let record = EpochRecord {
                epoch,
                mean_loss: loss_sum / steps_per_epoch as f64,
                learning_rate: lr,
                seconds,
                images_per_second: (steps_per_epoch as f64 * batch as f64) / seconds.max(1e-9),
            };
            log::info!(
                "{} epoch {epoch}: loss {:.4}, lr {lr:.5}, {:.1} images/s",
                config.method.name(),
                record.mean_loss,
                record.images_per_second
            );
            meta.history.push(record.clone());
            meta.epochs_completed = epoch + 1;
            meta.queue_filled = model.queue_filled();
            save_epoch(config, &model, &optimizer, &meta, cell_types.as_deref())?;
            let event = PretrainEvent {
                stage: PretrainStage::Epoch,
                epoch,
                epochs: config.epochs,
                done: epoch + 1,
                total: config.epochs,
                loss: record.mean_loss,
                images_per_second: record.images_per_second,
            };
            if !progress(&event) && epoch + 1 < config.epochs {
                return Err(Error::Cancelled(format!(
                    "pre-training after epoch {epoch}; its checkpoint is kept"
                )));
            }
        }
        Ok(())
    })?;
    Ok(PretrainReport {
        method: config.method,
        preset: config.preset.clone(),
        architecture: config.architecture,
        image_size: config.image_size,
        cells: n,
        steps_per_epoch,
        epochs_completed: meta.epochs_completed,
        steps_completed: meta.steps_completed,
        resumed_at_epoch,
        encoder: config.output.join(ENCODER_FILE),
        state: state_path,
        history: meta.history,
        step_losses: meta.step_losses,
        cell_types,
    })
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
        let swav = c.swav.unwrap();
        assert_eq!((swav.num_prototypes, swav.hidden_dim), (20, 512));
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

    #[test]
    fn seeded_init_is_reproducible_and_scaled() {
        let (_, a) = seeded_encoder(EncoderArch::ResNet18, 5, Device::Cpu).unwrap();
        let (_, b) = seeded_encoder(EncoderArch::ResNet18, 5, Device::Cpu).unwrap();
        let (_, c) = seeded_encoder(EncoderArch::ResNet18, 6, Device::Cpu).unwrap();
        let w = |vs: &VarStore| vs.variables()["layer1.0.conv1.weight"].copy();
        assert_eq!(f64::try_from((w(&a) - w(&b)).abs().max()).unwrap(), 0.0);
        assert!(f64::try_from((w(&a) - w(&c)).abs().max()).unwrap() > 0.0);
        // Kaiming fan-out: std √(2 / (64·3·3)) ≈ 0.0589.
        let std = f64::try_from(w(&a).std(true)).unwrap();
        assert!((std - (2.0f64 / 576.0).sqrt()).abs() < 0.002, "{std}");
        assert_eq!(
            f64::try_from(a.variables()["bn1.weight"].mean(Kind::Float)).unwrap(),
            1.0
        );
    }
}
