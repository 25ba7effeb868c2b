//! Numerical parity with PyTorch on the same weights and inputs: our ResNet18/34
//! feature maps against torchvision's (max abs ≤ 1e-4) and our attention-MIL head
//! against a PyTorch module of the same architecture (≤ 1e-5). The references are
//! in tests/reference/parity.py and run in the set-up environment's Python.
mod common;

use std::path::{Path, PathBuf};

use amlmil::checkpoint::Normalization;
use amlmil::model::{CellNet, EncoderArch, MilConfig};
use amlmil::preprocess::to_input_batch;
use amlmil::{Bag, CellImage, DeviceSpec, Session, SessionOptions};
use tch::{Device, Kind, Tensor};

/// The 144 px cells as the reference scripts take them: our preprocessing's
/// normalised NCHW batch, written to `dir/x.safetensors` (returned).
fn write_input_batch(dir: &Path, cells: &[CellImage]) -> PathBuf {
    let refs: Vec<_> = cells.iter().collect();
    let x = to_input_batch(
        &refs,
        144,
        &Normalization::default(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let inputs = dir.join("x.safetensors");
    Tensor::write_safetensors(&[("x", &x)], &inputs).unwrap();
    inputs
}

/// `channels_last` runs both sides with NHWC strides (PyTorch's `channels_last`),
/// `contiguous` both in NCHW; `fused` runs ours with batch norm folded on
/// oneDNN's layout (the CPU default) against PyTorch's NCHW.
fn encoder_parity(arch: EncoderArch, layout: &str) {
    let channels_last = layout == "channels_last";
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc.safetensors");
    let mil = dir.path().join("mil.safetensors");
    common::write_encoder(&enc, arch, 144, 21);
    common::write_mil(&mil, &MilConfig::default(), 144, 22);
    let cells = common::cells(4, 144, 5);
    let inputs = write_input_batch(dir.path(), &cells);

    // Ours: through the inference session (the layout's CPU path, batching).
    let options = SessionOptions {
        device: DeviceSpec::Cpu,
        batch_size: 3,
        channels_last,
        fused: layout == "fused",
        ..Default::default()
    };
    let session = Session::new(&enc, &mil, &options).unwrap();
    let ours = session.feature_maps(&cells, &mut |_, _, _| true).unwrap();
    let ours_pooled = session.embed(&cells, &mut |_, _, _| true).unwrap();

    let out = dir.path().join("ref.safetensors");
    let reference_layout = Path::new(if channels_last {
        "channels_last"
    } else {
        "contiguous"
    });
    common::run_reference(
        "parity.py",
        &[Path::new("encoder"), &enc, &inputs, &out, reference_layout],
    );
    let reference = common::read_tensors(&out);
    let scale = f64::try_from(reference["feature_map"].abs().max()).unwrap();
    let d = common::max_abs(&ours, &reference["feature_map"]);
    // Folding batch norm rounds the weights once more: the fused path is held to
    // 2e-5 of the feature scale (ResNet34's random-weight maps reach ~12, where it
    // differs by ~1.2e-4); the plain paths to 1e-4 absolute.
    let tolerance = if layout == "fused" {
        2e-5 * scale.max(1.0)
    } else {
        1e-4
    };
    assert!(
        d <= tolerance,
        "{arch:?} ({layout}) feature maps differ from torchvision by {d} (max |value| {scale})"
    );
    let d = common::max_abs(
        &Tensor::from_slice(&ours_pooled).view([4, 512]),
        &reference["pooled"],
    );
    assert!(
        d <= 1e-4,
        "{arch:?} pooled features differ from torchvision by {d}"
    );
    assert!(scale > 1e-2, "degenerate reference features (max {scale})");
}

#[test]
fn resnet18_matches_torchvision() {
    for layout in ["contiguous", "channels_last", "fused"] {
        encoder_parity(EncoderArch::ResNet18, layout);
    }
}

#[test]
fn resnet34_matches_torchvision() {
    for layout in ["contiguous", "channels_last", "fused"] {
        encoder_parity(EncoderArch::ResNet34, layout);
    }
}

#[test]
fn mil_head_matches_pytorch_for_every_cell_net() {
    for (i, cell_net) in [CellNet::default(), CellNet::Scemila, CellNet::Pooled]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        let config = MilConfig {
            head: cell_net.clone().into(),
            ..Default::default()
        };
        let ckpt = dir.path().join("mil.safetensors");
        common::write_mil(&ckpt, &config, 144, 30 + i as u64);
        tch::manual_seed(40 + i as i64);
        // Post-ReLU-like, non-negative maps as an encoder would give.
        let maps = Tensor::rand([11, 512, 5, 5], (Kind::Float, Device::Cpu)) * 2.0;
        let inputs = dir.path().join("maps.safetensors");
        Tensor::write_safetensors(&[("maps", &maps)], &inputs).unwrap();
        let (mil, _, _vs) = amlmil::frozen::load_mil(&ckpt, Device::Cpu).unwrap();
        let ours = tch::no_grad(|| mil.forward_bag(&maps, false));

        let out = dir.path().join("ref.safetensors");
        common::run_reference("parity.py", &[Path::new("mil"), &ckpt, &inputs, &out]);
        let r = common::read_tensors(&out);
        for (name, t) in [
            ("logits", &ours.logits),
            ("probabilities", &ours.probabilities),
            ("attention_raw", &ours.attention_raw),
            ("attention", &ours.attention),
        ] {
            let d = common::max_abs(t, &r[name]);
            assert!(
                d <= 1e-5,
                "{cell_net:?}: {name} differs from PyTorch by {d}"
            );
        }
    }
}

#[test]
fn session_classification_matches_pytorch_end_to_end() {
    // Encoder features from torchvision fed to the PyTorch head equal our session's output.
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let cells = common::cells(3, 144, 9);
    let inputs = write_input_batch(dir.path(), &cells);
    let feats = dir.path().join("feats.safetensors");
    common::run_reference(
        "parity.py",
        &[Path::new("encoder"), &f.encoder, &inputs, &feats],
    );
    let maps = common::read_tensors(&feats).remove("feature_map").unwrap();
    let maps_in = dir.path().join("maps.safetensors");
    Tensor::write_safetensors(&[("maps", &maps)], &maps_in).unwrap();
    let out = dir.path().join("out.safetensors");
    common::run_reference("parity.py", &[Path::new("mil"), &f.mil, &maps_in, &out]);
    let r = common::read_tensors(&out);

    let session = Session::new(
        &f.encoder,
        &f.mil,
        &SessionOptions {
            device: DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let mut bag = Bag::new();
    for (i, c) in cells.into_iter().enumerate() {
        bag.add(i as u64, c).unwrap();
    }
    let p = session.classify(&bag, &mut |_, _, _| true).unwrap();
    let d = common::max_abs(&Tensor::from_slice(&p.probabilities), &r["probabilities"]);
    assert!(d <= 1e-4, "probabilities differ from PyTorch by {d}");
    let d = common::max_abs(
        &Tensor::from_slice(&p.attention).view([5, 3]),
        &r["attention"],
    );
    assert!(d <= 1e-4, "attention differs from PyTorch by {d}");
}
