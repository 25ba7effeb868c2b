//! Seeded randomness of pre-training: independent ChaCha8 streams derived
//! from `(seed, purpose, a, b)`, and the references' initialisation of every
//! variable drawn from them.
//!
//! **Randomness and exact resumption.** Nothing reads a running random stream:
//! the initial weights come from ChaCha8 streams seeded by `(seed, variable
//! name)`, each epoch's order from `(seed, epoch)`, each step's views from
//! `(seed, epoch, step)`. libtorch's global generator is never seeded or used
//! for values that matter (other threads share it). Stopping after epoch k and
//! resuming therefore gives bit-identical parameters on the CPU
//! (`tests/ssl_training.rs` checks it); on CUDA, non-deterministic kernels can
//! make runs differ by rounding.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::error::Result;
use crate::model::{Encoder, EncoderArch};

const STREAM_INIT: u64 = 1;
pub(super) const STREAM_ORDER: u64 = 2;
pub(super) const STREAM_VIEWS: u64 = 3;
pub(super) const STREAM_SUBSET: u64 = 4;

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

#[cfg(test)]
mod tests {
    use tch::Kind;

    use super::*;

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
