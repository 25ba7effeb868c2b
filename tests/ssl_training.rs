//! The self-supervised pre-training loop end to end on a tiny synthetic cohort
//! (5 patients per class × 12 cells at 64 px, trained at 32 px): every method
//! learns without collapsing, beats a random encoder on a k-NN cell-type probe
//! (SimCLR), resumes bit-exactly, exports a checkpoint a `Session` loads, and
//! refuses bad configurations naming the key.
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use amlmil::checkpoint::Normalization;
use amlmil::dataset::{Dataset, OpenOptions};
use amlmil::model::{CellNet, EncoderArch, MilConfig};
use amlmil::ssl::probe::{
    calibrated_random_encoder, embedding_std, knn_probe, labelled_cells, pooled_features, KnnConfig,
};
use amlmil::ssl::{pretrain, PretrainConfig, PretrainEvent, PretrainStage};
use amlmil::Error;
use serde_json::{json, Value};
use tch::Device;

/// Mean per-dimension std of L2-normalised encoder features that a run must
/// keep: a tenth of the isotropic value 1/√512 ≈ 0.044 (collapse gives 0).
const STD_FLOOR: f64 = 0.0044;

struct Cohort {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn cohort() -> &'static Cohort {
    static C: OnceLock<Cohort> = OnceLock::new();
    C.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cohort");
        let cfg = amlmil::synth::CohortConfig {
            patients_per_class: 5,
            cells_min: 12,
            cells_max: 12,
            image_size: 64,
            seed: 3,
            threads: 2,
            ..Default::default()
        };
        amlmil::synth::generate_cohort(&cfg, &root, &mut |_, _| {}).unwrap();
        Cohort { _dir: dir, root }
    })
}

/// `cpu-small` at 32 px (crops 32 / 16), batch 16, on the CPU, plus `extra`.
fn config(method: &str, output: &Path, extra: Value) -> amlmil::Result<PretrainConfig> {
    let crops = json!({"crops": {"global": {"size": 32}, "local": {"size": 16}}});
    let mut v = json!({
        "method": method, "preset": "cpu-small",
        "dataset": cohort().root, "output": output,
        "image_size": 32, "batch_size": 16, "epochs": 2, "warmup_epochs": 0,
        "device": "cpu", "decode_threads": 2, "seed": 11,
    });
    let section = match method {
        "supervised" => json!({"crop": {"size": 32}}),
        "swav" => {
            let mut s = crops.clone();
            s["num_prototypes"] = json!(16);
            s["freeze_prototypes_iterations"] = json!(4);
            s
        }
        _ => crops,
    };
    if ["simclr", "swav", "dino", "supervised"].contains(&method) {
        v[method] = section;
    }
    merge(&mut v, extra);
    PretrainConfig::from_value(v)
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn quiet(_: &PretrainEvent) -> bool {
    true
}

/// Features of the first 96 typed cells with the checkpoint's encoder.
fn checkpoint_features(path: &Path) -> tch::Tensor {
    let (encoder, manifest, _vs) = amlmil::inference::load_encoder(path, Device::Cpu).unwrap();
    let (ds, _) = Dataset::open(&cohort().root, &OpenOptions::fail()).unwrap();
    let cells = labelled_cells(&ds, manifest.input_size, Some(96), 0).unwrap();
    pooled_features(
        &encoder,
        &cells.images,
        &manifest.normalization,
        32,
        Device::Cpu,
    )
    .unwrap()
}

/// Trains `method` for 2 epochs (36 steps): the loss falls, features do not
/// collapse, the manifest names the method.
fn learns(method: &str, extra: Value, loss_falls: bool) -> PathBuf {
    let dir = tempfile::tempdir().unwrap().keep();
    let cfg = config(method, &dir, extra).unwrap();
    let start = std::time::Instant::now();
    let report = pretrain(&cfg, &mut quiet).unwrap();
    let losses = &report.step_losses;
    assert_eq!(losses.len() as u64, report.steps_completed);
    let (first, last) = (mean(&losses[..5]), mean(&losses[losses.len() - 5..]));
    let std = embedding_std(&checkpoint_features(&report.encoder)).unwrap();
    eprintln!(
        "{method}: {} steps in {:.1} s, loss first 5 {first:.4} → last 5 {last:.4}, embedding std {std:.4}",
        losses.len(),
        start.elapsed().as_secs_f64()
    );
    eprintln!(
        "{method} losses: {:?}",
        losses
            .iter()
            .map(|l| (l * 1000.0).round() / 1000.0)
            .collect::<Vec<_>>()
    );
    assert!(losses.iter().all(|l| l.is_finite()));
    if loss_falls {
        assert!(last < first, "{method}: loss {first} → {last}");
    }
    assert!(std > STD_FLOOR, "{method}: collapsed, std {std}");
    let (m, _) = amlmil::checkpoint::Checkpoint::read_encoder(&report.encoder).unwrap();
    assert_eq!(m.provenance.method, method);
    assert_eq!(m.input_size, 32);
    assert_eq!(m.provenance.details["epochs_completed"], json!(2));
    assert!(dir.join("state.safetensors").exists());
    dir
}

#[test]
fn simclr_learns_and_beats_a_random_encoder_on_knn() {
    let dir = learns("simclr", json!({}), true);
    let encoder = dir.join("encoder.safetensors");
    // k-NN on the cell types (leave-one-out over all typed cells at 32 px).
    let (ds, _) = Dataset::open(&cohort().root, &OpenOptions::fail()).unwrap();
    let cells = labelled_cells(&ds, 32, None, 0).unwrap();
    let knn = KnnConfig::default();
    let trained = amlmil::ssl::probe::probe_checkpoint(&encoder, &ds, &knn, None).unwrap();
    let norm = Normalization::default();
    let (random, _vs) =
        calibrated_random_encoder(EncoderArch::ResNet18, 11, &cells.images, &norm).unwrap();
    let f = pooled_features(&random, &cells.images, &norm, 32, Device::Cpu).unwrap();
    let baseline = knn_probe(&f, &cells.labels, cells.classes.len(), &knn).unwrap();
    eprintln!(
        "k-NN (k={}, {} cells, {} types): simclr accuracy {:.3} / macro F1 {:.3}; random accuracy {:.3} / macro F1 {:.3}",
        trained.k,
        trained.queries,
        cells.classes.len(),
        trained.accuracy,
        trained.macro_f1,
        baseline.accuracy,
        baseline.macro_f1
    );
    assert!(
        trained.accuracy > baseline.accuracy,
        "trained {trained:?} vs random {baseline:?}"
    );

    // The checkpoint loads in a session with a 64-px-geometry MIL head.
    let mil = dir.join("mil.safetensors");
    let mil_config = MilConfig {
        cell_net: CellNet::Pooled,
        in_side: EncoderArch::ResNet18.feature_side(32),
        ..MilConfig::default()
    };
    common::write_mil(&mil, &mil_config, 32, 1);
    let options = amlmil::SessionOptions {
        device: amlmil::DeviceSpec::Cpu,
        ..Default::default()
    };
    let session = amlmil::Session::new(&encoder, &mil, &options).unwrap();
    assert_eq!(session.encoder_manifest().provenance.method, "simclr");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn swav_learns() {
    let _ = std::fs::remove_dir_all(learns("swav", json!({}), true));
}

#[test]
fn dino_learns() {
    // Not asserted for DINO: in 36 steps of 16 images its loss rises (here
    // 6.71 → 7.26 at the preset, towards ln K as the centre adapts and the
    // teacher temperature warms up; also with 10× the rate and a fixed τ_t). The
    // run is still checked for finite losses, no feature collapse, checkpoints.
    let _ = std::fs::remove_dir_all(learns("dino", json!({}), false));
}

#[test]
fn supervised_learns() {
    let _ = std::fs::remove_dir_all(learns("supervised", json!({}), true));
}

/// Every tensor of a safetensors file, as raw bytes by name.
fn tensor_bytes(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect()
}

/// 2 epochs straight vs 1 epoch, cancel, resume: identical tensors.
fn resumes_exactly(method: &str, extra: Value) {
    let base = json!({"steps_per_epoch": 3, "max_cells": 96});
    let mut extra_all = base;
    merge(&mut extra_all, extra);
    let straight = tempfile::tempdir().unwrap();
    let split = tempfile::tempdir().unwrap();
    let cfg = config(method, straight.path(), extra_all.clone()).unwrap();
    let full = pretrain(&cfg, &mut quiet).unwrap();

    let cfg = config(method, split.path(), extra_all.clone()).unwrap();
    let e = pretrain(&cfg, &mut |ev: &PretrainEvent| {
        !(ev.stage == PretrainStage::Step && ev.epoch == 1)
    })
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e}");
    let (m, _) =
        amlmil::checkpoint::Checkpoint::read_encoder(&split.path().join("encoder.safetensors"))
            .unwrap();
    assert_eq!(m.provenance.details["epochs_completed"], json!(1));
    let mut resume = extra_all;
    resume["resume"] = json!(true);
    let cfg = config(method, split.path(), resume).unwrap();
    let resumed = pretrain(&cfg, &mut quiet).unwrap();
    assert_eq!(resumed.resumed_at_epoch, Some(1));
    assert_eq!(resumed.step_losses, full.step_losses, "{method}");
    for file in ["state.safetensors", "encoder.safetensors"] {
        let (a, b) = (
            tensor_bytes(&straight.path().join(file)),
            tensor_bytes(&split.path().join(file)),
        );
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{method} {file}"
        );
        for (name, bytes) in &a {
            assert!(
                bytes == &b[name],
                "{method} {file}: `{name}` differs after resuming"
            );
        }
    }
}

#[test]
fn resume_is_exact_for_every_method() {
    resumes_exactly("simclr", json!({}));
    // SwAV with a queue that fills within the first epoch.
    resumes_exactly(
        "swav",
        json!({"swav": {"queue_length": 32, "queue_start_epoch": 0}}),
    );
    resumes_exactly("dino", json!({}));
    resumes_exactly("supervised", json!({}));
}

#[test]
fn bad_configurations_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let err =
        |method: &str, extra: Value| config(method, dir.path(), extra).unwrap_err().to_string();
    let e = err("simclr", json!({"batch_size": 1}));
    assert!(e.contains("batch_size") && e.contains("contrastive"), "{e}");
    let e = err("byol", json!({}));
    assert!(e.contains("method") && e.contains("byol"), "{e}");
    let e = err(
        "simclr",
        json!({"simclr": {"crops": {"global": {"size": 48}}}}),
    );
    assert!(e.contains("simclr.crops.global.size"), "{e}");
    let e = err("swav", json!({"swav": {"num_prototypes": 64}}));
    assert!(
        e.contains("batch_size") && e.contains("64 prototypes"),
        "{e}"
    );
    let e = err("dino", json!({"dino": {"out_dims": 8}}));
    assert!(e.contains("dino.out_dims"), "{e}");

    // A state of another method is refused before any work.
    let cfg = config(
        "simclr",
        dir.path(),
        json!({"epochs": 1, "steps_per_epoch": 1, "max_cells": 32}),
    )
    .unwrap();
    pretrain(&cfg, &mut quiet).unwrap();
    let cfg = config("swav", dir.path(), json!({"resume": true})).unwrap();
    let e = pretrain(&cfg, &mut quiet).unwrap_err().to_string();
    assert!(e.contains("method") && e.contains("simclr"), "{e}");
}

#[test]
fn diverging_loss_stops_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        "supervised",
        dir.path(),
        json!({"base_learning_rate": 1e30, "steps_per_epoch": 4, "max_cells": 64}),
    )
    .unwrap();
    let e = pretrain(&cfg, &mut quiet).unwrap_err();
    assert!(matches!(e, Error::NonFinite(_)), "{e}");
    assert!(e.to_string().contains("step"), "{e}");
}
