//! Neural network models of the method: the cell encoder and the attention-MIL head.
pub mod encoder;
pub mod ensemble;
pub mod fused;
pub mod mil;
pub mod recompute;
pub mod vit;

pub use encoder::{pool_features, Encoder, EncoderArch, EncoderNet};
pub use ensemble::MilHeads;
pub use fused::{FusedCellNet, FusedEncoder};
pub use mil::{AttentionMil, CellNet, MilConfig, MilHeadConfig, MilOutput};
pub use recompute::Recompute;
pub use vit::{Vit, VitConfig, VitFeatures};
pub mod init;
