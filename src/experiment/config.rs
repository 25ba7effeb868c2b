//! Configuration of the paper's experiment and its four presets: `quick` (the
//! main job's, minutes on two cores), `cpu-small` (all five encoders, 5 folds ×
//! 3 seeds on a CPU), `gpu-short` (the paper's resolution and recipe shrunk to
//! minutes on one large GPU) and `paper` (the paper's schedule, GPU scale).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::device::DeviceSpec;
use crate::error::{Error, Result};
use crate::ssl::SslMethod;
use crate::synth::CohortConfig;
use crate::training::MilTrainConfig;

/// The experiment's presets ([`ExperimentConfig::preset`]).
pub const PRESETS: [&str; 4] = ["quick", "cpu-small", "gpu-short", "paper"];

/// The encoders an experiment compares, in report order.
pub const ENCODERS: [&str; 5] = ["supervised", "simclr", "swav", "dino", "random"];

/// Where the self-supervised encoders (SimCLR, SwAV, DINO) are pre-trained.
/// The supervised encoder and the random floor are always made once from the
/// pre-training cells (the paper's supervised encoder comes from an external
/// annotated data set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PretrainProtocol {
    /// Once, on the cells of the disjoint pre-training cohort: leak-free for
    /// every fold at the cost of one pre-training.
    #[default]
    Disjoint,
    /// The paper's: inside every run (fold × seed), on the cells of that
    /// run's training patients of the MIL data set only; the run's features
    /// and MIL head use that encoder.
    PerFold,
}

impl PretrainProtocol {
    pub fn name(self) -> &'static str {
        match self {
            PretrainProtocol::Disjoint => "disjoint",
            PretrainProtocol::PerFold => "per-fold",
        }
    }
}

/// Overrides of the pre-training configurations, one object per method plus
/// `all` for every method (`{"all": {"epochs": 4}, "dino": {"dino": {…}}}`),
/// each merged over the pre-training preset key by key
/// ([`crate::settings::merge`]); a key no method has is an error naming it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainOverrides {
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub all: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub supervised: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub simclr: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub swav: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub dino: Map<String, Value>,
}

impl PretrainOverrides {
    /// `method`'s own overrides (not `all`'s).
    pub fn of(&self, method: SslMethod) -> &Map<String, Value> {
        match method {
            SslMethod::Supervised => &self.supervised,
            SslMethod::SimClr => &self.simclr,
            SslMethod::Swav => &self.swav,
            SslMethod::Dino => &self.dino,
        }
    }

    /// The methods with overrides of their own.
    pub fn methods(&self) -> impl Iterator<Item = SslMethod> + '_ {
        [
            SslMethod::Supervised,
            SslMethod::SimClr,
            SslMethod::Swav,
            SslMethod::Dino,
        ]
        .into_iter()
        .filter(|m| !self.of(*m).is_empty())
    }

    fn from_json(v: Value) -> Self {
        serde_json::from_value(v).expect("preset overrides name methods")
    }
}

/// What the experiment runs. Build it with [`ExperimentConfig::from_value`] (a
/// preset plus overrides) so unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentConfig {
    /// `quick`, `cpu-small`, `gpu-short` or `paper`.
    pub preset: String,
    /// Output directory; every stage's results live under it and resume from it.
    pub output: PathBuf,
    /// The patient-labelled data set of the MIL cross-validation; `null`: the
    /// synthetic `cohort` is generated into `<output>/cohort`.
    pub dataset: Option<PathBuf>,
    /// The synthetic MIL cohort (when `dataset` is `null`).
    pub cohort: CohortConfig,
    /// Cells the encoders are pre-trained on, disjoint from the MIL patients
    /// (the supervised encoder needs `cells.csv` types); `null`: the synthetic
    /// `pretrain_cohort` is generated into `<output>/pretrain-cohort`.
    pub pretrain_dataset: Option<PathBuf>,
    /// The synthetic pre-training cohort: another seed than `cohort`, so no
    /// cell of a MIL patient is seen in pre-training.
    pub pretrain_cohort: CohortConfig,
    /// Encoders to compare, a subset of `supervised`, `simclr`, `swav`, `dino`,
    /// `random` (the floor: seeded weights, batch-norm statistics of the data),
    /// and names of `imported`.
    pub encoders: Vec<String>,
    /// Encoders a lab brings, by name: libamlmil encoder checkpoints (a
    /// DinoBloom ViT from `amlmil import`, a ResNet trained elsewhere),
    /// compared beside the pre-trained ones without being trained here. A
    /// name `encoders` does not list is compared after the listed ones.
    #[serde(default)]
    pub imported: std::collections::BTreeMap<String, PathBuf>,
    /// Preset of the pre-training runs (`cpu-small` or `paper`).
    pub pretrain_preset: String,
    /// Where the self-supervised encoders are pre-trained.
    #[serde(default)]
    pub pretrain_protocol: PretrainProtocol,
    /// Overrides of the pre-training configurations, per method and for
    /// `all`. The experiment's `device` and the MIL data set as the monitors'
    /// probe set apply unless these set them.
    #[serde(default)]
    pub pretrain: PretrainOverrides,
    /// MIL training: a preset name plus overrides (as `amlmil cv`).
    pub training: Value,
    pub folds: usize,
    pub seeds: Vec<u64>,
    /// `auto`, `cpu`, `cuda`, `cuda:N`: every stage's device (pre-training's
    /// unless `pretrain` overrides it).
    pub device: DeviceSpec,
    /// Cells per test patient in the top-attention galleries.
    pub gallery_cells: usize,
    /// At most this many typed cells of the MIL data set in the k-NN probe.
    pub probe_cells: usize,
    /// At most this many annotated cells (else typed cells) in the UMAP figure.
    pub umap_cells: usize,
    /// Seed of the random encoder and of the probe's cell subset.
    pub seed: u64,
}

impl ExperimentConfig {
    /// This configuration with every `imported` encoder in `encoders` (the
    /// ones it does not list appended, by name).
    pub fn with_imported_listed(&self) -> Self {
        let mut c = self.clone();
        for name in self.imported.keys() {
            if !c.encoders.contains(name) {
                c.encoders.push(name.clone());
            }
        }
        c
    }

    /// The named preset with `output` set.
    pub fn preset(name: &str) -> Result<Self> {
        let cohort = |ppc, cells: (usize, usize), size, annotated, seed| CohortConfig {
            patients_per_class: ppc,
            cells_min: cells.0,
            cells_max: cells.1,
            image_size: size,
            annotated_fraction: annotated,
            seed,
            ..CohortConfig::default()
        };
        let mut c = match name {
            // The main job: one SSL method beside the supervised encoder and the
            // floor, one seed; measured under 15 minutes on two cores.
            "quick" => ExperimentConfig {
                preset: name.into(),
                output: PathBuf::new(),
                dataset: None,
                cohort: cohort(8, (30, 60), 64, 0.1, 0),
                pretrain_dataset: None,
                pretrain_cohort: cohort(6, (40, 60), 64, 0.1, 1000),
                encoders: vec!["supervised".into(), "simclr".into(), "random".into()],
                pretrain_preset: "cpu-small".into(),
                pretrain_protocol: PretrainProtocol::Disjoint,
                pretrain: PretrainOverrides::from_json(json!({
                    "all": {"monitor": {"probe_every_epochs": 4}},
                    "supervised": {"epochs": 4},
                    // 12 epochs ≈ 550 steps on this cohort: with 8 (~370)
                    // SimCLR's features stayed below the random floor in MIL
                    // (macro F1 0.09 vs 0.19), with 12 they reach 0.70.
                    "simclr": cpu_simclr(12),
                })),
                training: cpu_training(),
                folds: 5,
                seeds: vec![0],
                device: DeviceSpec::Cpu,
                gallery_cells: 8,
                probe_cells: 600,
                umap_cells: 600,
                seed: 0,
                imported: Default::default(),
            },
            // All five encoders, 5 folds × 3 seeds, on the CPU.
            "cpu-small" => ExperimentConfig {
                preset: name.into(),
                output: PathBuf::new(),
                dataset: None,
                // Cohort seeds other than `quick`'s, on which the settings
                // below were chosen: the committed report is on unseen patients.
                cohort: cohort(12, (30, 60), 64, 0.1, 1),
                pretrain_dataset: None,
                pretrain_cohort: cohort(8, (40, 60), 64, 0.1, 1001),
                encoders: ENCODERS.iter().map(|s| s.to_string()).collect(),
                pretrain_preset: "cpu-small".into(),
                pretrain_protocol: PretrainProtocol::Disjoint,
                pretrain: PretrainOverrides::from_json(json!({
                    "all": {"monitor": {"probe_every_epochs": 2}},
                    "supervised": {"epochs": 6},
                    "simclr": cpu_simclr(10),
                    "swav": {"epochs": 10, "swav": {"crops": {"global": {"scale": [0.4, 1.0]}}}},
                    "dino": {"epochs": 10},
                })),
                training: cpu_training(),
                folds: 5,
                seeds: vec![0, 1, 2],
                device: DeviceSpec::Cpu,
                gallery_cells: 8,
                probe_cells: 1000,
                umap_cells: 1000,
                seed: 0,
                imported: Default::default(),
            },
            // The paper's resolution and recipes (144 px, the `paper` pre-training
            // presets, the four-convolution g) shrunk to about six minutes on one
            // H100: fewer and smaller patients, batch 256 in mixed precision, a
            // few epochs, one seed. The epochs are an estimate from FLOPs;
            // scripts/gpu-check.sh re-sizes them from the step costs it measures
            // on the card it runs on.
            "gpu-short" => ExperimentConfig {
                preset: name.into(),
                output: PathBuf::new(),
                dataset: None,
                cohort: cohort(20, (100, 200), 144, 0.05, 2),
                pretrain_dataset: None,
                pretrain_cohort: cohort(12, (150, 250), 144, 0.1, 1002),
                encoders: ENCODERS.iter().map(|s| s.to_string()).collect(),
                pretrain_preset: "paper".into(),
                pretrain_protocol: PretrainProtocol::Disjoint,
                pretrain: PretrainOverrides::from_json(json!({
                    "all": {"batch_size": 256, "mixed_precision": true, "warmup_epochs": 1,
                            "keep_every": 0, "monitor": {"probe_every_epochs": 0}},
                    "supervised": {"epochs": 4},
                    "simclr": {"epochs": 8},
                    "swav": {"epochs": 8, "swav": {"queue_length": 512, "queue_start_epoch": 2}},
                    "dino": {"epochs": 5, "dino": {"warmup_teacher_temperature_epochs": 1,
                                                   "freeze_last_layer_epochs": 1}},
                })),
                training: json!({"preset": "paper", "standardize_features": true, "epochs": 30}),
                folds: 5,
                seeds: vec![0],
                device: DeviceSpec::Auto,
                gallery_cells: 8,
                probe_cells: 2000,
                umap_cells: 2000,
                seed: 0,
                imported: Default::default(),
            },
            // The paper's schedule: 144 px, batch 512, the references' epochs,
            // the four-convolution g; GPU scale.
            "paper" => ExperimentConfig {
                preset: name.into(),
                output: PathBuf::new(),
                dataset: None,
                cohort: cohort(38, (100, 800), 144, 0.02, 0),
                pretrain_dataset: None,
                pretrain_cohort: cohort(20, (200, 600), 144, 0.1, 1000),
                encoders: ENCODERS.iter().map(|s| s.to_string()).collect(),
                pretrain_preset: "paper".into(),
                pretrain_protocol: PretrainProtocol::Disjoint,
                pretrain: PretrainOverrides::default(),
                training: json!({"preset": "paper", "standardize_features": true}),
                folds: 5,
                seeds: vec![0, 1, 2],
                device: DeviceSpec::Auto,
                gallery_cells: 8,
                probe_cells: 2000,
                umap_cells: 2000,
                seed: 0,
                imported: Default::default(),
            },
            other => {
                return Err(Error::invalid(
                    "preset",
                    format!(
                        "`{other}` is not an experiment preset ({})",
                        PRESETS.join(", ")
                    ),
                ))
            }
        };
        c.output = PathBuf::new();
        Ok(c)
    }

    /// A preset (`preset` key, default `quick`) with the object's other keys
    /// merged over it key by key ([`crate::settings::merge`]: `{"training":
    /// {"epochs": 3}}` keeps the preset's other MIL settings); unknown keys are
    /// errors.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(overrides) = value else {
            return Err(Error::invalid("config", "must be a JSON object"));
        };
        let preset = match overrides.get("preset") {
            None => "quick",
            Some(Value::String(p)) => p.as_str(),
            Some(other) => return Err(Error::invalid("preset", format!("{other} is not a name"))),
        };
        let mut merged = serde_json::to_value(Self::preset(preset)?)
            .map_err(|e| Error::invalid("config", e.to_string()))?;
        crate::settings::merge(&mut merged, Value::Object(overrides), None)?;
        let config: Self = crate::settings::deserialize(merged)?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a JSON (or TOML when `is_toml`) object with [`Self::from_value`].
    pub fn parse(text: &str, is_toml: bool) -> Result<Self> {
        Self::from_value(crate::settings::parse_value(text, is_toml)?)
    }

    /// Checks every value; errors name the key.
    pub fn validate(&self) -> Result<()> {
        if self.output.as_os_str().is_empty() {
            return Err(Error::invalid("output", "required: the output directory"));
        }
        if self.encoders.is_empty() {
            return Err(Error::invalid("encoders", "give at least one encoder"));
        }
        for (name, path) in &self.imported {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid || ENCODERS.contains(&name.as_str()) {
                return Err(Error::invalid(
                    format!("imported.{name}"),
                    format!(
                        "an imported encoder's name is letters, digits, `-` and `_`, and not one of {}",
                        ENCODERS.join(", ")
                    ),
                ));
            }
            if !path.is_file() {
                return Err(Error::invalid(
                    format!("imported.{name}"),
                    format!("{} is not a file", path.display()),
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.encoders {
            if !ENCODERS.contains(&e.as_str()) && !self.imported.contains_key(e) {
                return Err(Error::invalid(
                    "encoders",
                    format!(
                        "`{e}` is not one of {} nor a name of `imported`",
                        ENCODERS.join(", ")
                    ),
                ));
            }
            if !seen.insert(e) {
                return Err(Error::invalid("encoders", format!("`{e}` is listed twice")));
            }
        }
        if !matches!(self.pretrain_preset.as_str(), "cpu-small" | "paper") {
            return Err(Error::invalid(
                "pretrain_preset",
                format!("`{}` is not cpu-small or paper", self.pretrain_preset),
            ));
        }
        if self.dataset.is_some() && self.pretrain_dataset.is_none() {
            return Err(Error::invalid(
                "pretrain_dataset",
                "required with `dataset`: cells disjoint from the MIL patients to pre-train \
                 the encoders on (with cells.csv types for the supervised one)",
            ));
        }
        if self.dataset.is_none() {
            self.cohort.validate()?;
        }
        if self.pretrain_dataset.is_none() {
            self.pretrain_cohort.validate()?;
            if self.dataset.is_none() && self.pretrain_cohort.seed == self.cohort.seed {
                return Err(Error::invalid(
                    "pretrain_cohort.seed",
                    "must differ from cohort.seed: the pre-training cells must not be the MIL patients'",
                ));
            }
        }
        let listed = self
            .encoders
            .iter()
            .filter(|e| *e != "random" && !self.imported.contains_key(*e));
        let mut methods: Vec<SslMethod> = listed.map(|e| e.parse()).collect::<Result<_>>()?;
        methods.extend(self.pretrain.methods());
        for method in methods {
            self.pretrain_config(method, "dataset".into(), "output".into(), "probe".into())?;
        }
        if self.probe_cells < 10 {
            return Err(Error::invalid("probe_cells", "must be at least 10"));
        }
        MilTrainConfig::from_value(self.training.clone())?;
        self.cv_config(PathBuf::new(), PathBuf::new(), PathBuf::new())?;
        Ok(())
    }

    /// The pre-training configuration of `method` on `dataset`, writing to
    /// `output`, its monitors probing the typed cells of `probe` (the MIL data
    /// set: cells pre-training does not see).
    pub fn pretrain_config(
        &self,
        method: SslMethod,
        dataset: PathBuf,
        output: PathBuf,
        probe: PathBuf,
    ) -> Result<crate::ssl::PretrainConfig> {
        let mut v = json!({
            "method": method.name(), "preset": self.pretrain_preset, "seed": self.seed,
            "device": self.device, "monitor": {"probe_dataset": probe},
            "dataset": dataset, "output": output, "resume": true,
        });
        for over in [&self.pretrain.all, self.pretrain.of(method)] {
            crate::settings::merge(&mut v, Value::Object(over.clone()), None)?;
        }
        crate::ssl::PretrainConfig::from_value(v)
            .map_err(|e| e.map_arg(|arg| format!("pretrain.{} ({arg})", method.name())))
    }

    /// The cross-validation of one encoder.
    pub fn cv_config(
        &self,
        dataset: PathBuf,
        encoder: PathBuf,
        output: PathBuf,
    ) -> Result<crate::training::CvConfig> {
        let config = crate::training::CvConfig {
            dataset,
            encoder,
            features: None,
            output,
            folds: self.folds,
            seeds: self.seeds.clone(),
            device: self.device,
            gallery_cells: self.gallery_cells,
            training: MilTrainConfig::from_value(self.training.clone())?,
            fold_encoders: Default::default(),
        };
        config.validate()?;
        Ok(config)
    }
}

/// SimCLR at CPU scale (measured on the `quick` cohorts, docs/training.md "The
/// experiment"): global crops of 40–100 % of the cell image (the leukocyte
/// stays in both views), τ 0.2 and base lr 1.2 × B/256; with 552 steps its
/// k-NN probe beat the random encoder, with 184 it did not.
fn cpu_simclr(epochs: u64) -> Value {
    json!({
        "epochs": epochs,
        "base_learning_rate": 1.2,
        "simclr": {"temperature": 0.2, "crops": {"global": {"scale": [0.4, 1.0]}}},
    })
}

/// The paper's MIL recipe with the pooled `g` (64 px cells give 2×2 maps),
/// standardised features and lr 0.05: without standardisation the heads on
/// self-supervised features never left a constant prediction (docs/training.md).
fn cpu_training() -> Value {
    json!({"preset": "paper", "cell_net": {"type": "pooled"}, "standardize_features": true, "learning_rate": 0.05})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_overrides_merge() {
        for p in PRESETS {
            let c = ExperimentConfig::from_value(json!({"preset": p, "output": "o"})).unwrap();
            assert_eq!(c.preset, p);
            assert_ne!(c.cohort.seed, c.pretrain_cohort.seed);
        }
        let c = ExperimentConfig::from_value(json!({
            "output": "o", "cohort": {"patients_per_class": 3},
            "pretrain": {"simclr": {"batch_size": 8}}, "seeds": [4],
        }))
        .unwrap();
        assert_eq!((c.cohort.patients_per_class, c.cohort.cells_min), (3, 30));
        assert_eq!(c.pretrain.simclr["epochs"], 12, "merged, not replaced");
        assert_eq!(c.pretrain.simclr["batch_size"], 8);
        let p = c
            .pretrain_config(SslMethod::SimClr, "d".into(), "e".into(), "p".into())
            .unwrap();
        assert_eq!((p.epochs, p.batch_size, p.resume), (12, 8, true));
        assert_eq!(p.monitor.probe_dataset, Some("p".into()));
        assert_eq!(c.seeds, vec![4]);
    }

    #[test]
    fn the_experiments_device_reaches_pre_training_unless_overridden() {
        let c = ExperimentConfig::from_value(json!({"output": "o", "device": "cuda"})).unwrap();
        let p = c
            .pretrain_config(SslMethod::SimClr, "d".into(), "e".into(), "p".into())
            .unwrap();
        assert_eq!(p.device, DeviceSpec::Cuda(0));
        assert_eq!(p.device.to_string(), "cuda:0");
        let c = ExperimentConfig::from_value(json!({
            "output": "o", "device": "cuda:1", "pretrain": {"dino": {"device": "cpu"}},
        }))
        .unwrap();
        let device = |m| {
            c.pretrain_config(m, "d".into(), "e".into(), "p".into())
                .unwrap()
                .device
        };
        assert_eq!(device(SslMethod::Swav), DeviceSpec::Cuda(1));
        assert_eq!(device(SslMethod::Dino), DeviceSpec::Cpu);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = |v: Value| ExperimentConfig::from_value(v).unwrap_err().to_string();
        assert!(err(json!({"output": "o", "encoder": ["x"]})).contains("encoder"));
        assert!(err(json!({"output": "o", "encoders": ["byol"]})).contains("byol"));
        assert!(err(json!({"output": "o", "encoders": []})).contains("encoders"));
        assert!(err(json!({"preset": "fast", "output": "o"})).contains("fast"));
        assert!(err(json!({"output": "o", "pretrain_cohort": {"seed": 0}}))
            .contains("pretrain_cohort.seed"));
        assert!(err(json!({"output": "o", "dataset": "d"})).contains("pretrain_dataset"));
        assert!(err(json!({"output": "o", "pretrain": {"byol": {}}})).contains("pretrain.byol"));
        assert!(err(json!({"output": "o", "pretrain": {"dino": {"epoch": 1}}})).contains("epoch"));
        assert!(err(json!({"output": "o", "training": {"lr": 1}})).contains("lr"));
        // The quick preset's `g` is `pooled`: a misspelt key beside it is named.
        assert!(
            err(json!({"output": "o", "training": {"cell_net": {"chanels": 1}}}))
                .contains("training.cell_net.chanels")
        );
        assert!(err(json!({"output": "o", "folds": 2})).contains("folds"));
        assert!(err(json!({})).contains("output"));
    }
}
