//! Building blocks of self-supervised pre-training of the cell encoder
//! (DESIGN.md §2): batched augmentations and multi-crop views, the methods'
//! heads and losses, and their schedules.
//!
//! - SimCLR — Chen, Kornblith, Norouzi, Hinton 2020, *A Simple Framework for
//!   Contrastive Learning of Visual Representations*: [`simclr`] (projection head,
//!   NT-Xent loss).
//! - SwAV — Caron, Misra, Mairal, Goyal, Bojanowski, Joulin 2020, *Unsupervised
//!   Learning of Visual Features by Contrasting Cluster Assignments*: [`swav`]
//!   (head, prototypes, Sinkhorn–Knopp codes, swapped prediction, queue).
//! - DINO — Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin 2021,
//!   *Emerging Properties in Self-Supervised Vision Transformers*: [`dino`] (head
//!   with weight-normalised last layer, centred and sharpened distillation loss,
//!   teacher EMA, gradient clipping).
//!
//! Heads take the encoder's pooled 512-d features
//! ([`crate::model::Encoder`]'s `forward_t`). The views come from
//! [`augment::MultiCropConfig::views`] on `[0, 1]` images; the training loop
//! normalises them as the encoder expects, and evaluates the [`schedule`]
//! functions each step. Losses are written from the papers' formulas and checked
//! against PyTorch in `tests/ssl_losses.rs`.
//!
//! A method is one [`method::Method`] (its configuration section) building one
//! [`method::Learner`] (its heads, teacher, queue or classifier), each in the
//! method's own file; [`supervised`] is the cell-type baseline. The
//! pre-training loop itself is [`train::pretrain`] (configuration
//! [`train::PretrainConfig`], presets `paper` and `cpu-small`, in [`config`];
//! any `Method` through [`train::pretrain_method`]), which names no method,
//! with its data and views in [`data`], the model and optimiser in [`step`],
//! its checkpoints and resumable state in [`state`], its seeded random streams
//! in [`seed`] and what it measures while it learns in [`monitor`]; the
//! optimisers it needs are in [`optim`] (SGD + LARC, AdamW with DINO's
//! parameter groups) and the k-NN probe that compares encoders in [`probe`].
pub mod augment;
pub mod config;
pub mod data;
pub mod dino;
pub mod head;
pub mod method;
pub mod monitor;
pub mod optim;
pub mod probe;
pub mod schedule;
pub mod seed;
pub mod simclr;
pub mod state;
pub mod step;
pub mod supervised;
pub mod swav;
pub mod train;

pub use augment::{
    ColorJitter, CropBox, CropSpec, GaussianBlur, MultiCropConfig, Padding, Solarize, ViewAugment,
    CELL_SIZE, CPU_SMALL_SIZE,
};
pub use dino::{clip_gradients, ema_update, ema_update_tensors, DinoConfig, DinoHead, DinoLoss};
pub use method::{Learner, Method, MethodConfig};
pub use optim::{AdamW, AdamWConfig, Param, Sgd, SgdConfig};
pub use probe::{knn_probe, KnnConfig, ProbeReport, ProbeSplit};
pub use schedule::CosineSchedule;
pub use simclr::{nt_xent_loss, ProjectionHead, SimClrConfig};
pub use supervised::SupervisedConfig;
pub use swav::{sinkhorn, swav_loss, Prototypes, SwavConfig, SwavHead, SwavQueue};
pub use train::{
    pretrain, PretrainConfig, PretrainEvent, PretrainReport, PretrainStage, SslMethod,
};
