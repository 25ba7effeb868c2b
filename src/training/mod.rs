//! Training of the attention-MIL head on a frozen encoder's cached features:
//! configuration and presets ([`config`]), the training loop ([`mil`]),
//! cross-validation with its artefacts ([`cv`]) and its runs spread over a
//! distributed launch's ranks (`ranks.rs`), the deployable ensemble of a
//! cross-validation's heads ([`ensemble`]) and the attention analysis
//! ([`attention`]).
pub mod attention;
pub mod config;
pub mod cv;
pub mod ensemble;
pub mod mil;
mod ranks;

pub use attention::AttentionAnalysis;
pub use config::{Accumulation, CvConfig, CvOverrides, LrSchedule, MilTrainConfig};
pub use cv::{cross_validate, run_name, CvEvent, CvReport};
pub use ensemble::{ensemble, EnsembleReport};
pub use mil::{train_mil, BagSampler, EpochRecord, TrainBag, TrainEvent, TrainedMil};
