//! Randomly initialised (seeded) models, for tests, the demo and as the "random
//! frozen encoder" baseline of the paper's comparisons; their checkpoints are
//! written by [`crate::checkpoint::write_random_encoder`] and
//! [`crate::checkpoint::write_random_mil`].
use tch::nn::VarStore;
use tch::Device;

use crate::error::Result;
use crate::model::{AttentionMil, Encoder, EncoderArch, MilConfig, Vit, VitConfig};

/// A freshly initialised encoder (torchvision's initialisation) on the CPU.
pub fn random_encoder(arch: EncoderArch, seed: u64) -> (Encoder, VarStore) {
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let encoder = Encoder::new(&vs.root(), arch);
    (encoder, vs)
}

/// A freshly initialised ViT (truncated-normal-like σ 0.02 weights, as timm's)
/// on the CPU. Call [`VitConfig::validate`] first.
pub fn random_vit(config: &VitConfig, seed: u64) -> (Vit, VarStore) {
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let vit = Vit::new(&vs.root(), config.clone());
    (vit, vs)
}

/// A freshly initialised attention-MIL head on the CPU.
pub fn random_mil(config: &MilConfig, seed: u64) -> Result<(AttentionMil, VarStore)> {
    config.validate()?;
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let mil = AttentionMil::new(&vs.root(), config.clone());
    Ok((mil, vs))
}
