//! Core model tests: shapes, attention normalisation, order invariance, checkpoint
//! round-trips and checkpoint validation.
mod common;

use amlmil::checkpoint::{self, Checkpoint, Manifest};
use amlmil::model::{init, CellNet, Encoder, EncoderArch, MilConfig};
use amlmil::{Bag, Error, Session, SessionOptions};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn cpu() -> SessionOptions {
    SessionOptions {
        device: amlmil::DeviceSpec::Cpu,
        ..Default::default()
    }
}

#[test]
fn encoders_give_512x5x5_maps_and_512_vectors_at_144px() {
    for arch in [EncoderArch::ResNet18, EncoderArch::ResNet34] {
        let vs = VarStore::new(Device::Cpu);
        let enc = Encoder::new(&vs.root(), arch);
        let x = Tensor::randn([2, 3, 144, 144], (Kind::Float, Device::Cpu));
        let map = tch::no_grad(|| enc.feature_map(&x, false));
        assert_eq!(map.size(), [2, 512, 5, 5], "{arch:?}");
        let pooled = tch::no_grad(|| tch::nn::ModuleT::forward_t(&enc, &x, false));
        assert_eq!(pooled.size(), [2, 512]);
        assert_eq!(arch.feature_side(144), 5);
        assert_eq!(arch.feature_side(64), 2);
    }
}

#[test]
fn resnet_parameter_names_follow_torchvision() {
    let vs = VarStore::new(Device::Cpu);
    let _ = Encoder::new(&vs.root(), EncoderArch::ResNet18);
    let vars = vs.variables();
    for name in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer4.1.bn2.bias",
    ] {
        assert!(vars.contains_key(name), "missing {name}");
    }
    // torchvision resnet18 without fc: 20 convs/bn weights... exact count of tensors (no num_batches_tracked)
    assert_eq!(vars.len(), 100);
}

fn mil_variants() -> Vec<MilConfig> {
    vec![
        MilConfig::default(),
        MilConfig {
            head: CellNet::Scemila.into(),
            ..Default::default()
        },
        MilConfig {
            head: CellNet::Pooled.into(),
            ..Default::default()
        },
    ]
}

#[test]
fn mil_outputs_have_their_shapes_and_attention_rows_sum_to_one() {
    for config in mil_variants() {
        let (mil, _vs) = init::random_mil(&config, 3).unwrap();
        let maps = Tensor::randn([7, 512, 5, 5], (Kind::Float, Device::Cpu));
        let out = tch::no_grad(|| mil.forward_bag(&maps, false));
        assert_eq!(out.logits.size(), [5], "{config:?}");
        assert_eq!(out.probabilities.size(), [5]);
        assert_eq!(out.attention_raw.size(), [5, 7]);
        assert_eq!(out.attention.size(), [5, 7]);
        let row_sums = out
            .attention
            .sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
        let max_dev = f64::try_from((row_sums - 1.0).abs().max()).unwrap();
        assert!(max_dev < 1e-6, "attention rows deviate from 1 by {max_dev}");
        let p = f64::try_from(out.probabilities.sum(Kind::Float)).unwrap();
        assert!((p - 1.0).abs() < 1e-6);
    }
}

#[test]
fn mil_is_invariant_to_cell_order() {
    for config in mil_variants() {
        let (mil, _vs) = init::random_mil(&config, 4).unwrap();
        let maps = Tensor::randn([9, 512, 5, 5], (Kind::Float, Device::Cpu));
        let perm = Tensor::from_slice(&[3i64, 8, 0, 5, 1, 7, 2, 6, 4]);
        let a = tch::no_grad(|| mil.forward_bag(&maps, false));
        let b = tch::no_grad(|| mil.forward_bag(&maps.index_select(0, &perm), false));
        let dp = f64::try_from((&a.probabilities - &b.probabilities).abs().max()).unwrap();
        assert!(dp < 1e-5, "probabilities change with cell order by {dp}");
        let da = f64::try_from(
            (a.attention.index_select(1, &perm) - &b.attention)
                .abs()
                .max(),
        )
        .unwrap();
        assert!(da < 1e-6, "attention does not follow the cells: {da}");
    }
}

#[test]
fn invalid_mil_configs_are_rejected_by_name() {
    let bad = MilConfig {
        in_side: 2,
        ..Default::default()
    };
    assert!(
        matches!(bad.validate(), Err(Error::InvalidArgument { ref arg, .. }) if arg == "in_side")
    );
    let bad = MilConfig {
        head: amlmil::model::MilHeadConfig {
            instance_dim: 0,
            ..amlmil::model::MilHeadConfig::default()
        },
        ..Default::default()
    };
    assert!(
        matches!(bad.validate(), Err(Error::InvalidArgument { ref arg, .. }) if arg == "instance_dim")
    );
    let ok = MilConfig {
        head: CellNet::Pooled.into(),
        in_side: 2,
        ..Default::default()
    };
    ok.validate().unwrap();
}

#[test]
fn checkpoint_round_trip_gives_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let config = MilConfig::default();
    let (mil, vs) = init::random_mil(&config, 11).unwrap();
    let path = dir.path().join("mil.safetensors");
    let manifest = amlmil::checkpoint::MilManifest::new(
        config.clone(),
        common::classes(),
        144,
        Default::default(),
    );
    checkpoint::save(&path, &Manifest::Mil(manifest.clone()), &vs).unwrap();
    let (loaded, loaded_manifest, _vs2) = amlmil::frozen::load_mil(&path, Device::Cpu).unwrap();
    assert_eq!(loaded_manifest, manifest);
    let maps = Tensor::randn([6, 512, 5, 5], (Kind::Float, Device::Cpu));
    let a = tch::no_grad(|| mil.forward_bag(&maps, false));
    let b = tch::no_grad(|| loaded.forward_bag(&maps, false));
    assert!(
        a.logits.equal(&b.logits) && a.attention_raw.equal(&b.attention_raw),
        "outputs differ after reload"
    );

    // Through a whole session: two loads of the same files classify identically.
    let f = common::fixture();
    let cells = common::cells(5, 144, 1);
    let mut bag = Bag::new();
    for (i, c) in cells.into_iter().enumerate() {
        bag.add(100 + i as u64, c).unwrap();
    }
    let s1 = Session::new(&f.encoder, &f.mil, &cpu()).unwrap();
    let s2 = Session::new(&f.encoder, &f.mil, &cpu()).unwrap();
    let p1 = s1.classify(&bag, &mut |_, _, _| true).unwrap();
    let p2 = s2.classify(&bag, &mut |_, _, _| true).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(p1.cell_ids, vec![100, 101, 102, 103, 104]);
}

#[test]
fn session_classification_is_invariant_to_cell_order() {
    let f = common::fixture();
    let s = Session::new(&f.encoder, &f.mil, &cpu()).unwrap();
    let cells = common::cells(6, 144, 2);
    let order = [4usize, 0, 5, 2, 1, 3];
    let (mut a, mut b) = (Bag::new(), Bag::new());
    for (i, c) in cells.iter().enumerate() {
        a.add(i as u64, c.clone()).unwrap();
    }
    for &i in &order {
        b.add(i as u64, cells[i].clone()).unwrap();
    }
    let pa = s.classify(&a, &mut |_, _, _| true).unwrap();
    let pb = s.classify(&b, &mut |_, _, _| true).unwrap();
    for (x, y) in pa.probabilities.iter().zip(&pb.probabilities) {
        assert!(
            (x - y).abs() < 1e-5,
            "{:?} vs {:?}",
            pa.probabilities,
            pb.probabilities
        );
    }
    // The ranking names the same cells whatever the order they were added in.
    let ta: Vec<u64> = pa
        .top_cells(0, 6)
        .unwrap()
        .iter()
        .map(|c| c.cell_id)
        .collect();
    let tb: Vec<u64> = pb
        .top_cells(0, 6)
        .unwrap()
        .iter()
        .map(|c| c.cell_id)
        .collect();
    assert_eq!(ta, tb);
}

#[test]
fn batching_does_not_change_results() {
    let f = common::fixture();
    let cells = common::cells(5, 144, 3);
    let mut bag = Bag::new();
    for (i, c) in cells.into_iter().enumerate() {
        bag.add(i as u64, c).unwrap();
    }
    let one = Session::new(
        &f.encoder,
        &f.mil,
        &SessionOptions {
            batch_size: 1,
            ..cpu()
        },
    )
    .unwrap();
    let all = Session::new(
        &f.encoder,
        &f.mil,
        &SessionOptions {
            batch_size: 64,
            ..cpu()
        },
    )
    .unwrap();
    let a = one.classify(&bag, &mut |_, _, _| true).unwrap();
    let b = all.classify(&bag, &mut |_, _, _| true).unwrap();
    for (x, y) in a.attention.iter().zip(&b.attention) {
        assert!((x - y).abs() < 1e-5);
    }
}

#[test]
fn checkpoint_loading_names_what_is_wrong() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    // Wrong kind.
    let e = Checkpoint::read_encoder(&f.mil).unwrap_err();
    assert!(e.to_string().contains("expected an `encoder`"), "{e}");
    // Truncated.
    let bytes = std::fs::read(&f.encoder).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let e = Checkpoint::read(&truncated).unwrap_err();
    assert!(
        matches!(e, Error::Checkpoint { .. }) && e.to_string().contains("truncated.safetensors"),
        "{e}"
    );
    // No manifest: a plain safetensors file as PyTorch would write it.
    let plain = dir.path().join("plain.safetensors");
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("x", &t)], &plain).unwrap();
    let e = Checkpoint::read(&plain).unwrap_err();
    assert!(e.to_string().contains("manifest"), "{e}");
    // Manifest claims resnet34 while the tensors are resnet18: first missing tensor is named.
    let ck = Checkpoint::read(&f.encoder).unwrap();
    let Manifest::Encoder(mut m) = ck.manifest else {
        panic!()
    };
    m.architecture = EncoderArch::ResNet34;
    let (_e, vs) = init::random_encoder(EncoderArch::ResNet18, 1);
    let lying = dir.path().join("lying.safetensors");
    checkpoint::save(&lying, &Manifest::Encoder(m), &vs).unwrap();
    let e = amlmil::frozen::load_encoder(&lying, Device::Cpu).unwrap_err();
    assert!(
        e.to_string().contains("layer1.2.bn1.bias") && e.to_string().contains("missing"),
        "{e}"
    );
    // NaN weights are refused with the tensor's name.
    let (_m, vs) = init::random_mil(&MilConfig::default(), 1).unwrap();
    let _ = tch::no_grad(|| {
        vs.variables()["attention.0.weight"]
            .shallow_clone()
            .fill_(f64::NAN)
    });
    let nan = dir.path().join("nan.safetensors");
    let manifest = amlmil::checkpoint::MilManifest::new(
        MilConfig::default(),
        common::classes(),
        144,
        Default::default(),
    );
    checkpoint::save(&nan, &Manifest::Mil(manifest), &vs).unwrap();
    let e = amlmil::frozen::load_mil(&nan, Device::Cpu).unwrap_err();
    assert!(
        matches!(e, Error::NonFinite(_)) && e.to_string().contains("attention.0.weight"),
        "{e}"
    );
}

#[test]
fn encoder_checkpoints_carry_num_batches_tracked_for_pytorch() {
    let ck = Checkpoint::read(&common::fixture().encoder).unwrap();
    assert!(ck
        .tensors
        .contains_key("layer3.0.downsample.1.num_batches_tracked"));
    assert_eq!(ck.tensors.len(), 100 + 20);
}

/// The fused CPU path (batch norm folded, oneDNN layout, fused `g`) classifies
/// as the plain modules do, for every `g`, and both warm up without changing results.
#[test]
fn fused_sessions_equal_plain_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let enc = dir.path().join("enc.safetensors");
    common::write_encoder(&enc, EncoderArch::ResNet18, 144, 31);
    let cells = common::cells(11, 144, 32);
    let mut bag = Bag::new();
    for (i, c) in cells.into_iter().enumerate() {
        bag.add(i as u64, c).unwrap();
    }
    // The three `g`s, then an ensemble of three four-convolution heads (the
    // fused path runs them as one network with grouped convolutions).
    for (i, (cell_net, heads)) in [
        (CellNet::default(), 1),
        (CellNet::Scemila, 1),
        (CellNet::Pooled, 1),
        (CellNet::default(), 3),
    ]
    .into_iter()
    .enumerate()
    {
        let mil = dir.path().join(format!("mil{i}.safetensors"));
        let config = MilConfig {
            head: amlmil::model::MilHeadConfig {
                cell_net,
                ..amlmil::model::MilHeadConfig::default()
            },
            ..MilConfig::default()
        };
        match heads {
            1 => common::write_mil(&mil, &config, 144, 33 + i as u64),
            k => write_ensemble(&mil, &config, k, 40),
        }
        let run = |fused: bool, warm_up: bool| {
            let o = SessionOptions {
                fused,
                warm_up,
                batch_size: 4,
                ..cpu()
            };
            Session::new(&enc, &mil, &o)
                .unwrap()
                .classify(&bag, &mut |_, _, _| true)
                .unwrap()
        };
        let (plain, fused) = (run(false, false), run(true, true));
        for (name, a, b) in [
            ("logits", &plain.logits, &fused.logits),
            ("attention", &plain.attention, &fused.attention),
            ("probabilities", &plain.probabilities, &fused.probabilities),
        ] {
            let d = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                d <= 1e-4,
                "{:?}: fused {name} differ from the plain path by {d}",
                config.head.cell_net
            );
        }
        assert_eq!(run(true, false), fused, "warm-up changed a result");
    }
}

/// A MIL checkpoint of `k` seeded heads of `config` (an ensemble, as
/// `amlmil ensemble` writes one) for 144 px cells.
fn write_ensemble(path: &std::path::Path, config: &MilConfig, k: usize, seed: u64) {
    let vs = VarStore::new(Device::Cpu);
    let _heads = amlmil::model::MilHeads::new(&vs.root(), config, k);
    tch::manual_seed(seed as i64);
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            let _ = v.uniform_(-0.05, 0.05);
        }
    });
    let mut manifest = checkpoint::MilManifest::new(
        config.clone(),
        common::classes(),
        144,
        checkpoint::Provenance::new("mil-ensemble", None),
    );
    manifest.ensemble = Some(checkpoint::Ensemble {
        heads: k,
        members: (0..k)
            .map(|f| checkpoint::EnsembleMember {
                run: format!("seed0_fold{f}"),
                seed: 0,
                fold: f,
                best_validation_loss: 1.0,
                test_macro_f1: 0.5,
                mil_sha256: None,
            })
            .collect(),
    });
    checkpoint::save(path, &Manifest::Mil(manifest), &vs).unwrap();
}

/// An ensemble checkpoint whose manifest disagrees with itself is refused,
/// naming the file: heads without one member each, or a missing head.
#[test]
fn inconsistent_ensemble_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let enc = &common::fixture().encoder;
    let config = MilConfig::default();
    let path = dir.path().join("ensemble.safetensors");
    write_ensemble(&path, &config, 2, 3);
    let (mut manifest, tensors) = Checkpoint::read_mil(&path).unwrap();
    let o = SessionOptions {
        batch_size: 4,
        ..cpu()
    };
    assert!(Session::new(enc, &path, &o).is_ok());
    let write = |m: &checkpoint::MilManifest, skip: &str| {
        let bad = dir.path().join("bad.safetensors");
        let json = serde_json::to_string(&Manifest::Mil(m.clone())).unwrap();
        let meta = std::collections::HashMap::from([("amlmil".to_owned(), json)]);
        let refs: Vec<(&str, &Tensor)> = tensors
            .iter()
            .filter(|(k, _)| !k.starts_with(skip))
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        checkpoint::write_tensors(&bad, &refs, Some(meta)).unwrap();
        Session::new(enc, &bad, &o).unwrap_err().to_string()
    };
    let e = write(&manifest, "heads.1.");
    assert!(e.contains("heads.1.") && e.contains("missing"), "{e}");
    manifest.ensemble.as_mut().unwrap().members.pop();
    let e = write(&manifest, "none");
    assert!(
        e.contains("2 heads with 1 members") && e.contains("bad.safetensors"),
        "{e}"
    );
}

/// A flipped bit anywhere in a checkpoint is refused, naming the file; a file
/// written before checksums (no `amlmil.sha256`) still loads.
#[test]
fn a_flipped_bit_anywhere_in_a_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mil.safetensors");
    let config = MilConfig {
        head: amlmil::model::MilHeadConfig {
            cell_net: CellNet::Pooled,
            instance_dim: 4,
            attention_dim: 3,
            classifier_dim: 2,
        },
        in_channels: 8,
        ..MilConfig::default()
    };
    common::write_mil(&good, &config, 144, 5);
    let bytes = std::fs::read(&good).unwrap();
    let meta = safetensors::SafeTensors::read_metadata(&bytes).unwrap().1;
    assert!(meta
        .metadata()
        .as_ref()
        .unwrap()
        .contains_key(checkpoint::CHECKSUM_KEY));
    let bad = dir.path().join("flipped.safetensors");
    let data_start = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x01;
        std::fs::write(&bad, &b).unwrap();
        match amlmil::frozen::load_mil(&bad, Device::Cpu) {
            Ok(_) => panic!(
                "byte {i} of {} flipped ({:?} -> {:?}), and the checkpoint still loaded",
                bytes.len(),
                String::from_utf8_lossy(&bytes[i.saturating_sub(30)..(i + 10).min(bytes.len())]),
                String::from_utf8_lossy(&b[i.saturating_sub(30)..(i + 10).min(bytes.len())])
            ),
            Err(e) => {
                assert!(
                    e.to_string().contains("flipped.safetensors"),
                    "byte {i}: {e}"
                );
                // Tensor data parses whatever its bits: only the checksum can catch those.
                if i >= data_start {
                    assert!(e.to_string().contains("SHA-256"), "byte {i}: {e}");
                }
            }
        }
    }

    // The same file as an older version wrote it: no checksum, still loads.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut old_meta = meta.metadata().clone().unwrap();
    old_meta.remove(checkpoint::CHECKSUM_KEY);
    let old = dir.path().join("old.safetensors");
    std::fs::write(
        &old,
        safetensors::serialize(st.tensors(), Some(old_meta)).unwrap(),
    )
    .unwrap();
    let (a, _, _vs) = amlmil::frozen::load_mil(&old, Device::Cpu).unwrap();
    let (b, _, _vs2) = amlmil::frozen::load_mil(&good, Device::Cpu).unwrap();
    let maps = Tensor::randn([3, 8, 5, 5], (Kind::Float, Device::Cpu));
    let (oa, ob) = tch::no_grad(|| (a.forward_bag(&maps, false), b.forward_bag(&maps, false)));
    assert_eq!(oa.logits, ob.logits);
}

/// `read_manifest` reads a checkpoint's manifest from its header alone, and
/// names the file when the header is not one.
#[test]
fn the_manifest_is_read_from_the_header_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.safetensors");
    let written = amlmil::checkpoint::write_random_encoder(
        &path,
        amlmil::model::EncoderArch::ResNet18,
        64,
        1,
    )
    .unwrap();
    match amlmil::checkpoint::read_manifest(&path).unwrap() {
        amlmil::checkpoint::Manifest::Encoder(m) => assert_eq!(m, written),
        other => panic!("read a {} manifest", other.kind()),
    }
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, u64::MAX.to_le_bytes()).unwrap();
    let e = amlmil::checkpoint::read_manifest(&bad)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bad.safetensors") && e.contains("header"), "{e}");
}
