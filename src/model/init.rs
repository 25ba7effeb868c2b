//! Randomly initialised (seeded) models and their checkpoints, for tests, the demo
//! and as the "random frozen encoder" baseline of the paper's comparisons.
use std::path::Path;

use tch::nn::VarStore;
use tch::Device;

use crate::checkpoint::{self, EncoderManifest, Manifest, MilManifest, Provenance};
use crate::error::Result;
use crate::model::{AttentionMil, Encoder, EncoderArch, MilConfig};

/// A freshly initialised encoder (torchvision's initialisation) on the CPU.
pub fn random_encoder(arch: EncoderArch, seed: u64) -> (Encoder, VarStore) {
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let encoder = Encoder::new(&vs.root(), arch);
    (encoder, vs)
}

/// A freshly initialised attention-MIL head on the CPU.
pub fn random_mil(config: &MilConfig, seed: u64) -> Result<(AttentionMil, VarStore)> {
    config.validate()?;
    tch::manual_seed(seed as i64);
    let vs = VarStore::new(Device::Cpu);
    let mil = AttentionMil::new(&vs.root(), config.clone());
    Ok((mil, vs))
}

/// Writes a seeded random encoder checkpoint for `input_size` px cells.
pub fn write_random_encoder(
    path: &Path,
    arch: EncoderArch,
    input_size: i64,
    seed: u64,
) -> Result<EncoderManifest> {
    if input_size < 32 {
        return Err(crate::Error::invalid(
            "input_size",
            format!("{input_size} px is below the 32 px minimum"),
        ));
    }
    let (_, vs) = random_encoder(arch, seed);
    let manifest =
        EncoderManifest::new(arch, input_size, Provenance::new("random-init", Some(seed)));
    checkpoint::save(path, &Manifest::Encoder(manifest.clone()), &vs)?;
    Ok(manifest)
}

/// Writes a seeded random MIL checkpoint for the given classes and encoder geometry.
pub fn write_random_mil(
    path: &Path,
    config: &MilConfig,
    classes: Vec<String>,
    input_size: i64,
    seed: u64,
) -> Result<MilManifest> {
    if classes.len() as i64 != config.num_classes {
        return Err(crate::Error::invalid(
            "classes",
            format!(
                "{} names for num_classes = {}",
                classes.len(),
                config.num_classes
            ),
        ));
    }
    let (_, vs) = random_mil(config, seed)?;
    let manifest = MilManifest::new(
        config.clone(),
        classes,
        input_size,
        Provenance::new("random-init", Some(seed)),
    );
    checkpoint::save(path, &Manifest::Mil(manifest.clone()), &vs)?;
    Ok(manifest)
}
