//! Configuration of MIL training and cross-validation, with the paper's and
//! SCEMILA's presets. Every value can be overridden from JSON or TOML; unknown
//! keys and impossible values are errors that name the key.
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::model::{CellNet, MilHeadConfig};

/// How the gradients of the `accumulate` bags of one optimiser step combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accumulation {
    /// The mean of the bags' gradients: the step does not grow with `accumulate`,
    /// so a learning rate means the same for any group size.
    Mean,
    /// The sum, as SCEMILA's loop (`backward` per bag, `step` every N bags):
    /// the step is `accumulate` times a single bag's.
    Sum,
}

/// Learning-rate schedule over epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    /// PyTorch's `CosineAnnealingLR(T_max = epochs, eta_min = min_learning_rate)`, stepped per epoch.
    Cosine,
    Constant,
}

/// How the attention-MIL head is trained (DESIGN §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilTrainConfig {
    /// Name of the preset these values started from (`paper`, `scemila`).
    pub preset: String,
    /// The head's design: `cell_net` (the per-cell network g), `instance_dim`,
    /// `attention_dim`, `classifier_dim` (keys beside the others in JSON).
    #[serde(flatten)]
    pub head: MilHeadConfig,
    /// SGD learning rate (at epoch 0 for the cosine schedule).
    pub learning_rate: f64,
    pub min_learning_rate: f64,
    pub schedule: LrSchedule,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
    /// At most this many epochs.
    pub epochs: usize,
    /// Stop after this many epochs without a lower validation loss; the best state is kept.
    pub patience: usize,
    /// Bags whose gradients make one optimiser step.
    pub accumulate: usize,
    /// Whether those gradients are averaged (`mean`) or summed (`sum`).
    pub accumulation: Accumulation,
    /// Clip the global L2 norm of each step's gradient to this (`null`: no clipping).
    pub max_grad_norm: Option<f64>,
    /// Larger bags are trained on a random subset of this many cells (per draw).
    pub max_cells: usize,
    /// Random horizontal/vertical flips of each cell (served from the feature cache).
    pub flips: bool,
    /// Draw training bags with replacement, weight ∝ 1 / class frequency; else a shuffled pass.
    pub balanced_sampling: bool,
    /// Bags drawn per epoch; `null` = number of training bags.
    pub bags_per_epoch: Option<usize>,
    /// Standardise every feature channel with the training cells' mean and
    /// standard deviation while training, then fold that affine map into the
    /// head's first layer, so the saved head takes raw features.
    #[serde(default)]
    pub standardize_features: bool,
    /// libtorch intra-op threads while training on the CPU (restored after).
    /// The head's operations are too small to split: on the 2-core machine with
    /// another process running, 2 threads took 315 ms per bag, 1 thread 10.9 ms.
    #[serde(default = "one")]
    pub cpu_threads: usize,
}

fn one() -> usize {
    1
}

impl MilTrainConfig {
    /// Kazeminia et al.: SGD Nesterov 0.9, lr 0.015, cosine annealing, ≤ 50 epochs,
    /// patience 20, accumulation over 10 bags, ≤ 500 cells, flips, balanced sampling.
    ///
    /// The 10 bags' gradients are averaged and each step's gradient norm is
    /// clipped to 5. Summed as in SCEMILA's loop (preset `paper-sum`), a step at
    /// lr 0.015 is that of lr 0.15 on one bag, and with Nesterov momentum 0.9 a
    /// small cohort (24 training bags: ~3 steps an epoch) diverged in one fold of
    /// five (validation loss 7.4, then 99.6 at epoch 11).
    pub fn paper() -> Self {
        MilTrainConfig {
            preset: "paper".into(),
            head: MilHeadConfig::default(),
            learning_rate: 0.015,
            min_learning_rate: 0.0,
            schedule: LrSchedule::Cosine,
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.0,
            epochs: 50,
            patience: 20,
            accumulate: 10,
            accumulation: Accumulation::Mean,
            max_grad_norm: Some(5.0),
            max_cells: 500,
            flips: true,
            balanced_sampling: true,
            bags_per_epoch: None,
            standardize_features: false,
            cpu_threads: 1,
        }
    }

    /// The paper's values with SCEMILA's accumulation rule: the 10 bags'
    /// gradients summed, no clipping (this crate's `paper` preset before the
    /// mean; unstable on small cohorts, see [`MilTrainConfig::paper`]).
    pub fn paper_sum() -> Self {
        MilTrainConfig {
            preset: "paper-sum".into(),
            accumulation: Accumulation::Sum,
            max_grad_norm: None,
            ..Self::paper()
        }
    }

    /// Hehr et al.'s SCEMILA: lr 5e-5, no schedule, gradients of 20 bags summed, 150 epochs.
    pub fn scemila() -> Self {
        MilTrainConfig {
            preset: "scemila".into(),
            head: CellNet::Scemila.into(),
            learning_rate: 5e-5,
            schedule: LrSchedule::Constant,
            accumulate: 20,
            accumulation: Accumulation::Sum,
            max_grad_norm: None,
            epochs: 150,
            ..Self::paper()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "paper" => Ok(Self::paper()),
            "paper-sum" => Ok(Self::paper_sum()),
            "scemila" => Ok(Self::scemila()),
            other => Err(Error::invalid(
                "preset",
                format!("`{other}` is not a preset (paper, paper-sum, scemila)"),
            )),
        }
    }

    /// Builds a config from a JSON object: the preset named by its `preset` key
    /// (default `paper`) with the object's other keys merged over it key by key
    /// ([`crate::settings::merge`]: `{"cell_net": {"dropout": 0.1}}` keeps the
    /// preset's other `cell_net` settings; a key the preset lacks is an error
    /// naming `training.<path>`).
    pub fn from_value(value: serde_json::Value) -> Result<Self> {
        let serde_json::Value::Object(overrides) = value else {
            return Err(Error::invalid("training", "must be a JSON object"));
        };
        let preset = overrides
            .get("preset")
            .and_then(|p| p.as_str())
            .unwrap_or("paper");
        let mut merged = serde_json::to_value(Self::preset(preset)?)
            .map_err(|e| Error::invalid("training", e.to_string()))?;
        let in_training = |e: Error| {
            e.map_arg(|arg| match arg {
                "config" => "training".to_owned(),
                key => format!("training.{key}"),
            })
        };
        let over = serde_json::Value::Object(overrides);
        crate::settings::merge(&mut merged, over, Some("MIL training")).map_err(in_training)?;
        let config: Self = crate::settings::deserialize_strict(merged).map_err(in_training)?;
        config.validate()?;
        Ok(config)
    }

    /// The learning rate of `epoch` (0-based).
    pub fn learning_rate_at(&self, epoch: usize) -> f64 {
        match self.schedule {
            LrSchedule::Constant => self.learning_rate,
            LrSchedule::Cosine => {
                let t = epoch as f64 / self.epochs.max(1) as f64;
                self.min_learning_rate
                    + 0.5
                        * (self.learning_rate - self.min_learning_rate)
                        * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<()> {
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::invalid(
                    format!("training.{name}"),
                    format!("must be a positive number, got {v}"),
                ))
            }
        };
        positive("learning_rate", self.learning_rate)?;
        if !(self.min_learning_rate >= 0.0 && self.min_learning_rate <= self.learning_rate) {
            return Err(Error::invalid(
                "training.min_learning_rate",
                "must be in [0, learning_rate]",
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(Error::invalid(
                "training.momentum",
                format!("must be in [0, 1), got {}", self.momentum),
            ));
        }
        if self.nesterov && self.momentum == 0.0 {
            return Err(Error::invalid(
                "training.nesterov",
                "Nesterov momentum needs momentum > 0",
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::invalid("training.weight_decay", "must be >= 0"));
        }
        for (name, v) in [
            ("epochs", self.epochs),
            ("patience", self.patience),
            ("accumulate", self.accumulate),
            ("max_cells", self.max_cells),
            ("cpu_threads", self.cpu_threads),
        ] {
            if v == 0 {
                return Err(Error::invalid(
                    format!("training.{name}"),
                    "must be at least 1",
                ));
            }
        }
        if let Some(n) = self.max_grad_norm {
            positive("max_grad_norm", n)?;
        }
        if self.bags_per_epoch == Some(0) {
            return Err(Error::invalid(
                "training.bags_per_epoch",
                "must be at least 1 (or null)",
            ));
        }
        for (name, v) in [
            ("instance_dim", self.head.instance_dim),
            ("attention_dim", self.head.attention_dim),
            ("classifier_dim", self.head.classifier_dim),
        ] {
            if v <= 0 {
                return Err(Error::invalid(
                    format!("training.{name}"),
                    "must be positive",
                ));
            }
        }
        Ok(())
    }
}

impl Default for MilTrainConfig {
    fn default() -> Self {
        Self::paper()
    }
}

/// A cross-validation experiment: data, encoder, where to write, and how to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CvConfig {
    /// Data set root (DESIGN §3 layout).
    pub dataset: PathBuf,
    /// Frozen encoder checkpoint.
    pub encoder: PathBuf,
    /// Feature cache made with `encoder`; `null` = `<output>/features` (extracted if missing).
    #[serde(default)]
    pub features: Option<PathBuf>,
    /// Output directory of checkpoints, predictions and reports.
    pub output: PathBuf,
    /// Stratified folds (60/20/20 rotation for 5).
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// One full cross-validation per seed (paper: 3 seeds → 15 runs).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// `auto`, `cpu`, `cuda`, `cuda:N` — for feature extraction and training.
    #[serde(default)]
    pub device: DeviceSpec,
    /// Cells in each ranked gallery row (per test patient).
    #[serde(default = "default_gallery")]
    pub gallery_cells: usize,
    /// Training settings: a preset name plus overrides.
    #[serde(default = "default_training", deserialize_with = "training_from_value")]
    pub training: MilTrainConfig,
    /// An encoder of its own for some runs (`seed{S}_fold{F}` → checkpoint):
    /// the per-fold protocol, each pre-trained on its fold's training patients
    /// only. Their features are cached in `<output>/fold-features/<run>`; runs
    /// not listed use `encoder`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub fold_encoders: std::collections::BTreeMap<String, PathBuf>,
}

fn default_folds() -> usize {
    5
}
fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}
fn default_gallery() -> usize {
    8
}
fn default_training() -> MilTrainConfig {
    MilTrainConfig::paper()
}
fn training_from_value<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<MilTrainConfig, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    MilTrainConfig::from_value(v).map_err(serde::de::Error::custom)
}

impl CvConfig {
    /// Parses JSON (or TOML when `is_toml`) and validates it.
    pub fn parse(text: &str, is_toml: bool) -> Result<Self> {
        let value = crate::settings::parse_value(text, is_toml)?;
        let config: CvConfig = crate::settings::deserialize(value)?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a `.json` or `.toml` file.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let value = crate::settings::read_value(path)?;
        let config: CvConfig =
            crate::settings::deserialize(value).map_err(|e| crate::settings::in_file(path, e))?;
        config
            .validate()
            .map_err(|e| crate::settings::in_file(path, e))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.folds < 3 {
            return Err(Error::invalid(
                "folds",
                format!(
                    "{} folds: need at least 3 (train, validation, test)",
                    self.folds
                ),
            ));
        }
        if self.seeds.is_empty() {
            return Err(Error::invalid("seeds", "give at least one seed"));
        }
        self.training.validate()
    }
}

/// Values that replace those of a [`CvConfig`]: the command line's flags over a
/// configuration file (`amlmil cv`, `amlmil train-mil`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CvOverrides {
    pub dataset: Option<PathBuf>,
    pub encoder: Option<PathBuf>,
    pub features: Option<PathBuf>,
    pub output: Option<PathBuf>,
    /// A preset replaces the base's training values (overrides below still apply).
    pub preset: Option<String>,
    pub epochs: Option<usize>,
    pub cell_net: Option<CellNet>,
    pub device: Option<DeviceSpec>,
}

impl CvConfig {
    /// `base` (a configuration file's values; `None` for the defaults) with
    /// `overrides` applied, validated. `dataset`, `encoder` and `output` must come
    /// from one of the two; the error names the missing one.
    pub fn with_overrides(base: Option<CvConfig>, overrides: &CvOverrides) -> Result<CvConfig> {
        let o = overrides.clone();
        let required = |key: &str, v: Option<PathBuf>| {
            v.ok_or_else(|| {
                Error::invalid(key, format!("missing: give --{key} or set it in --config"))
            })
        };
        let mut config = match base {
            Some(mut c) => {
                c.dataset = o.dataset.unwrap_or(c.dataset);
                c.encoder = o.encoder.unwrap_or(c.encoder);
                c.output = o.output.unwrap_or(c.output);
                c
            }
            None => CvConfig {
                dataset: required("dataset", o.dataset)?,
                encoder: required("encoder", o.encoder)?,
                output: required("output", o.output)?,
                features: None,
                folds: default_folds(),
                seeds: default_seeds(),
                device: DeviceSpec::default(),
                gallery_cells: default_gallery(),
                training: default_training(),
                fold_encoders: Default::default(),
            },
        };
        if o.features.is_some() {
            config.features = o.features;
        }
        if let Some(device) = o.device {
            config.device = device;
        }
        if let Some(preset) = &o.preset {
            config.training = MilTrainConfig::preset(preset)?;
        }
        if let Some(epochs) = o.epochs {
            config.training.epochs = epochs;
        }
        if let Some(net) = o.cell_net {
            config.training.head.cell_net = net;
        }
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_papers() {
        let p = MilTrainConfig::paper();
        assert_eq!(
            (
                p.learning_rate,
                p.momentum,
                p.nesterov,
                p.epochs,
                p.patience,
                p.accumulate,
                p.max_cells
            ),
            (0.015, 0.9, true, 50, 20, 10, 500)
        );
        assert_eq!(p.schedule, LrSchedule::Cosine);
        let s = MilTrainConfig::scemila();
        assert_eq!(
            (s.learning_rate, s.accumulate, s.epochs, s.schedule),
            (5e-5, 20, 150, LrSchedule::Constant)
        );
    }

    #[test]
    fn cosine_follows_pytorch() {
        let c = MilTrainConfig {
            epochs: 4,
            ..MilTrainConfig::paper()
        };
        // CosineAnnealingLR(T_max=4): 0.015, 0.0128033, 0.0075, 0.0021967
        let want = [0.015, 0.012803300858899106, 0.0075, 0.0021966991411008934];
        for (e, w) in want.iter().enumerate() {
            assert!((c.learning_rate_at(e) - w).abs() < 1e-12);
        }
    }

    #[test]
    fn overrides_unknown_keys_and_bad_values() {
        let c = MilTrainConfig::from_value(serde_json::json!({"preset": "scemila", "epochs": 3}))
            .unwrap();
        assert_eq!((c.epochs, c.accumulate), (3, 20));
        let e = MilTrainConfig::from_value(serde_json::json!({"learning_rat": 0.1})).unwrap_err();
        assert!(e.to_string().contains("training.learning_rat"), "{e}");
        // Nested settings merge key by key; another `type` replaces the section.
        let c =
            MilTrainConfig::from_value(serde_json::json!({"cell_net": {"channels": [8, 8, 8]}}))
                .unwrap();
        assert_eq!(
            c.head.cell_net,
            CellNet::FourConv {
                channels: [8, 8, 8]
            }
        );
        let c = MilTrainConfig::from_value(serde_json::json!({"cell_net": {"type": "pooled"}}))
            .unwrap();
        assert_eq!(c.head.cell_net, CellNet::Pooled);
        let e = MilTrainConfig::from_value(serde_json::json!({"cell_net": {"chanels": [8, 8, 8]}}))
            .unwrap_err();
        assert!(e.to_string().contains("training.cell_net.chanels"), "{e}");
        // A key beside the tag of a variant without fields, which serde drops.
        let e = MilTrainConfig::from_value(
            serde_json::json!({"cell_net": {"type": "pooled", "chanels": 4}}),
        )
        .unwrap_err();
        assert!(e.to_string().contains("training.cell_net.chanels"), "{e}");
        let e = MilTrainConfig::from_value(serde_json::json!({"learning_rate": -0.1})).unwrap_err();
        assert!(e.to_string().contains("learning_rate"), "{e}");
        let e = MilTrainConfig::from_value(serde_json::json!({"patience": 0})).unwrap_err();
        assert!(e.to_string().contains("patience"), "{e}");
        let e = MilTrainConfig::from_value(serde_json::json!({"preset": "fast"})).unwrap_err();
        assert!(e.to_string().contains("preset"), "{e}");
    }

    #[test]
    fn cv_config_from_json_and_toml() {
        let json = r#"{"dataset": "d", "encoder": "e.safetensors", "output": "o", "training": {"epochs": 2}}"#;
        let c = CvConfig::parse(json, false).unwrap();
        assert_eq!(
            (
                c.folds,
                c.seeds.len(),
                c.training.epochs,
                c.training.accumulate
            ),
            (5, 3, 2, 10)
        );
        let toml = "dataset = \"d\"\nencoder = \"e\"\noutput = \"o\"\nseeds = [7]\n[training]\npreset = \"scemila\"\n";
        let c = CvConfig::parse(toml, true).unwrap();
        assert_eq!(
            (c.seeds.clone(), c.training.preset.as_str()),
            (vec![7], "scemila")
        );
        let e = CvConfig::parse(
            r#"{"dataset": "d", "encoder": "e", "output": "o", "fold": 5}"#,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("fold"), "{e}");
        let e = CvConfig::parse(
            r#"{"dataset": "d", "encoder": "e", "output": "o", "folds": 2}"#,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("folds"), "{e}");
    }
}
