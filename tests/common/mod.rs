//! Fixtures shared by the integration tests: seeded checkpoints, cells, the
//! Python reference environment and the built `libamlmil.so`; [`ffi`] has
//! the helpers of the C ABI tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use amlmil::checkpoint::{self, EncoderManifest, Manifest, Provenance};
use amlmil::model::{EncoderArch, MilConfig};
use amlmil::CellImage;
use rand::{Rng, SeedableRng};
use tch::nn::VarStore;
use tch::Tensor;

pub mod ffi;
pub mod programs;

/// A seeded random encoder that looks trained: random batch-norm affine
/// parameters, and running statistics calibrated on a batch of cells (so
/// activations have the O(1) scale of a real network rather than growing with
/// depth), which parity tests then exercise term by term. Every number comes
/// from a private ChaCha stream, never from libtorch's global generator, which
/// tests running in parallel threads share.
pub fn write_encoder(
    path: &Path,
    arch: EncoderArch,
    input_size: i64,
    seed: u64,
) -> EncoderManifest {
    let vs = VarStore::new(tch::Device::Cpu);
    let encoder = amlmil::model::Encoder::with_batch_norm_momentum(&vs.root(), arch, 1.0);
    init_encoder(&vs, seed);
    let batch: Vec<CellImage> = cells(16, input_size as u32, seed);
    let refs: Vec<&CellImage> = batch.iter().collect();
    let norm = amlmil::checkpoint::Normalization::default();
    let x = amlmil::preprocess::to_input_batch(
        &refs,
        input_size as u32,
        &norm,
        tch::Device::Cpu,
        tch::Kind::Float,
    )
    .unwrap();
    // Momentum 1: one training-mode pass sets every running statistic to this batch's.
    let _ = tch::no_grad(|| encoder.feature_map(&x, true));
    let manifest =
        EncoderManifest::new(arch, input_size, Provenance::new("test-random", Some(seed)));
    checkpoint::save(path, &Manifest::Encoder(manifest.clone()), &vs).unwrap();
    manifest
}

/// Convolutions: uniform with He's variance (fan-in); batch-norm weights in
/// [0.5, 1.5], biases in [-0.1, 0.1].
fn init_encoder(vs: &VarStore, seed: u64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    tch::no_grad(|| {
        for name in names {
            let t = &vars[name];
            let size = t.size();
            let n = t.numel();
            let values: Vec<f32> = if size.len() == 4 {
                let fan_in = (size[1] * size[2] * size[3]) as f32;
                let bound = (6.0 / fan_in).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            } else if name.ends_with("weight") {
                (0..n).map(|_| rng.random_range(0.5..1.5)).collect()
            } else if name.ends_with("bias") {
                (0..n).map(|_| rng.random_range(-0.1..0.1)).collect()
            } else {
                continue; // running statistics: calibrated afterwards
            };
            t.shallow_clone()
                .copy_(&Tensor::from_slice(&values).view(size.as_slice()));
        }
    });
}

pub fn classes() -> Vec<String> {
    amlmil::classes::BAG_LABELS
        .iter()
        .map(|s| s.to_string())
        .collect()
}

pub fn write_mil(path: &Path, config: &MilConfig, input_size: i64, seed: u64) {
    let classes = classes()
        .into_iter()
        .take(config.num_classes as usize)
        .collect();
    checkpoint::write_random_mil(path, config, classes, input_size, seed).unwrap();
}

/// Encoder + paper-default MIL head for 144 px cells, written once per test binary.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub dir: PathBuf,
    pub encoder: PathBuf,
    pub mil: PathBuf,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let encoder = dir.path().join("encoder.safetensors");
        let mil = dir.path().join("mil.safetensors");
        write_encoder(&encoder, EncoderArch::ResNet18, 144, 7);
        write_mil(&mil, &MilConfig::default(), 144, 8);
        Fixture {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            encoder,
            mil,
        }
    })
}

/// A 64 px encoder and pooled-cell head: fast enough for the thousands of
/// classifications of the concurrency and resident-memory tests.
pub fn small_fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let encoder = dir.path().join("enc.safetensors");
        let mil = dir.path().join("mil.safetensors");
        write_encoder(&encoder, EncoderArch::ResNet18, 64, 3);
        let config = MilConfig {
            in_side: 2,
            head: amlmil::model::CellNet::Pooled.into(),
            ..Default::default()
        };
        write_mil(&mil, &config, 64, 4);
        Fixture {
            dir: dir.path().to_path_buf(),
            _dir: dir,
            encoder,
            mil,
        }
    })
}

/// Random-textured cells of `size` px with a dark blob whose place and size vary,
/// so that different cells give clearly different features.
pub fn cells(n: usize, size: u32, seed: u64) -> Vec<CellImage> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let cx = rng.random_range(0.3..0.7) * size as f32;
            let cy = rng.random_range(0.3..0.7) * size as f32;
            let r = rng.random_range(0.1..0.3) * size as f32;
            let tint: [f32; 3] = [
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
                rng.random_range(0.0..1.0),
            ];
            let mut rgb = Vec::with_capacity((size * size * 3) as usize);
            for y in 0..size {
                for x in 0..size {
                    let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
                    let inside = d < r;
                    for t in tint {
                        let base = if inside {
                            60.0 + 80.0 * t
                        } else {
                            200.0 + 40.0 * t
                        };
                        let v = base + rng.random_range(-20.0..20.0);
                        rgb.push(v.clamp(0.0, 255.0) as u8);
                    }
                }
            }
            CellImage::from_rgb(size, size, rgb).unwrap()
        })
        .collect()
}

/// The Python interpreter of the set-up environment (scripts/setup-env.sh).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("AMLMIL_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let p = home.join(".cache/amlmil/venv-torch-2.11.0/bin/python");
    assert!(
        p.exists(),
        "the Python reference environment is missing: run `bash scripts/setup-env.sh` or set AMLMIL_PYTHON"
    );
    p
}

/// Runs a reference script from tests/reference with arguments; panics with its output on failure.
pub fn run_reference(script: &str, args: &[&Path]) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    run_ok(
        std::process::Command::new(python())
            .arg(root.join("tests/reference").join(script))
            .args(args),
        script,
    )
}

/// Runs `cmd` and returns its stdout; panics naming `what`, with both outputs,
/// when it cannot start or fails.
pub fn run_ok(cmd: &mut std::process::Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Directory holding the freshly built `libamlmil.so` (`target/<profile>/`).
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(
        dir.join("libamlmil.so").exists(),
        "libamlmil.so not found in {}; build with `cargo build` first",
        dir.display()
    );
    dir
}

/// Tensors of a safetensors file by name.
pub fn read_tensors(path: &Path) -> std::collections::HashMap<String, tch::Tensor> {
    tch::Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// Largest absolute difference of two tensors of the same shape (in f64).
pub fn max_abs(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let d = (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max();
    f64::try_from(d).unwrap()
}

/// A small synthetic cohort (`patients_per_class` per class, 6–10 cells of
/// 64 px, every cell typed) at `dir`, and the feature cache of `encoder` over
/// it (four flips, CPU) at `features`.
pub fn cohort_with_features(
    dir: &Path,
    patients_per_class: usize,
    seed: u64,
    encoder: &Path,
    features: &Path,
) {
    let cfg = amlmil::synth::CohortConfig {
        patients_per_class,
        cells_min: 6,
        cells_max: 10,
        image_size: 64,
        annotated_fraction: 1.0,
        seed,
        ..Default::default()
    };
    amlmil::synth::generate_cohort(&cfg, dir, &mut |_, _| {}).unwrap();
    let (ds, _) = amlmil::dataset::Dataset::open(dir, &Default::default()).unwrap();
    let options = amlmil::features::ExtractOptions {
        flips: true,
        encoder: amlmil::SessionOptions {
            device: amlmil::DeviceSpec::Cpu,
            ..Default::default()
        },
    };
    amlmil::features::extract_features(&ds, encoder, features, &options, &mut |_, _, _| true)
        .unwrap();
}
