//! Vision-transformer encoders (DINOv2 layout, DinoBloom): imported from every
//! layout and size, with timm's `vit_*_patch14_dinov2` and DINOv2's forward as
//! references (tests/reference/vit.py, random weights): features within 1e-4
//! of the feature scale at 224 px and at 140 px (position embeddings resized,
//! each layout its own way); wrong files refused naming the tensor; a MIL head
//! trained on ViT features classifies, through Rust and the C ABI.
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::ptr;

use amlmil::ffi::*;
use amlmil::frozen::load_encoder;
use amlmil::interop::{self, ImportOptions, ImportSource};
use amlmil::model::{EncoderArch, VitFeatures};
use tch::{Device, Tensor};

use common::ffi::{c, cpu_options, last_error};

struct Made {
    dir: tempfile::TempDir,
    inputs: HashMap<String, Tensor>,
    refs: HashMap<String, Tensor>,
}

fn make() -> Made {
    let dir = tempfile::tempdir().unwrap();
    common::run_reference("vit.py", &[Path::new("make"), dir.path()]);
    Made {
        inputs: common::read_tensors(&dir.path().join("inputs.safetensors")),
        refs: common::read_tensors(&dir.path().join("refs.safetensors")),
        dir,
    }
}

fn options(source: ImportSource, features: VitFeatures) -> ImportOptions {
    ImportOptions {
        source,
        input_size: Some(224),
        vit_features: features,
        python: Some(common::python()),
        ..Default::default()
    }
}

/// Features `[N, D′]` of the checkpoint at `ckpt` for normalised input `x`.
fn features(ckpt: &Path, x: &Tensor) -> Tensor {
    let (encoder, _, _vs) = load_encoder(ckpt, Device::Cpu).unwrap();
    tch::no_grad(|| encoder.feature_map(x, false)).flatten(1, -1)
}

#[test]
fn every_layout_and_size_imports_with_the_reference_features() {
    let m = make();
    use ImportSource::{Auto, Dinov2, Timm};
    use VitFeatures::{Cls, ClsMean};
    // file, --source, features, layout found, architecture, prefix, reference case
    let cases = [
        ("s_hub.pth", Auto, Cls, Dinov2, "vit_s14", "", "s_hub"),
        (
            "s_dinobloom.pth",
            Auto,
            ClsMean,
            Dinov2,
            "vit_s14",
            "teacher.backbone.",
            "s_dinobloom",
        ),
        (
            "s_reg_timm.safetensors",
            Auto,
            Cls,
            Timm,
            "vit_s14",
            "",
            "s_reg_timm",
        ),
        (
            "s_reg_dinov2.safetensors",
            Auto,
            Cls,
            Dinov2,
            "vit_s14",
            "",
            "s_reg_dinov2",
        ),
        (
            "b_timm.safetensors",
            Timm,
            ClsMean,
            Timm,
            "vit_b14",
            "",
            "b_timm",
        ),
        (
            "l_chunked.pth",
            Dinov2,
            Cls,
            Dinov2,
            "vit_l14",
            "teacher.backbone.",
            "l_chunked",
        ),
        (
            "g_timm.safetensors",
            Timm,
            Cls,
            Timm,
            "vit_g14",
            "",
            "g_timm",
        ),
        (
            "g_dinov2.safetensors",
            Auto,
            Cls,
            Dinov2,
            "vit_g14",
            "",
            "g_dinov2",
        ),
    ];
    for (file, source, kind, found, arch, prefix, case) in cases {
        let out = m.dir.path().join(format!("{case}.amlmil.safetensors"));
        let report = interop::import(&m.dir.path().join(file), &out, &options(source, kind))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(report.source, found, "{file}");
        assert_eq!(report.architecture, arch, "{file}");
        assert_eq!(report.prefix, prefix, "{file}");
        if file == "s_dinobloom.pth" {
            // The student (174 tensors), both networks' DINO and iBOT heads and
            // masked-modelling tokens: left out.
            assert_eq!(report.ignored_count, 174 + 2 * 3, "{report:?}");
            assert!(report.ignored[0].starts_with("student."), "{report:?}");
        }
        for size in ["224", "140"] {
            let ours = features(&out, &m.inputs[&format!("x{size}")]);
            let reference = &m.refs[&format!("{case}_{size}")];
            let scale = f64::try_from(reference.abs().max()).unwrap();
            let diff = common::max_abs(&ours, reference);
            println!(
                "{case} at {size} px: max |ours - reference| {diff:.2e} (feature scale {scale:.1})"
            );
            assert!(
                diff <= 1e-4 * scale,
                "{case} at {size} px: features differ by {diff} (scale {scale})"
            );
        }
    }
    // Exported back: amlmil.models.VitEncoder in PyTorch (the `.pth` state
    // dict's names are the checkpoint's) and the ONNX model in ONNX Runtime give
    // our features, at 224 px and with the position embeddings resized for 140.
    let at140 = m.dir.path().join("s_reg_timm_140.safetensors");
    interop::import(
        &m.dir.path().join("s_reg_timm.safetensors"),
        &at140,
        &ImportOptions {
            input_size: Some(140),
            ..options(Auto, Cls)
        },
    )
    .unwrap();
    let names = ["s_dinobloom.amlmil", "s_reg_timm_140", "g_dinov2.amlmil"];
    for name in names {
        let ckpt = m.dir.path().join(format!("{name}.safetensors"));
        let onnx = m.dir.path().join(format!("{name}.onnx"));
        interop::export(
            &ckpt,
            &onnx,
            interop::ExportFormat::Onnx,
            Some(&common::python()),
        )
        .unwrap();
    }
    let pth = m.dir.path().join("s.pth");
    interop::export(
        &m.dir.path().join("s_hub.amlmil.safetensors"),
        &pth,
        interop::ExportFormat::Pth,
        Some(&common::python()),
    )
    .unwrap();
    let mut args: Vec<&Path> = vec![Path::new("exported"), m.dir.path()];
    args.extend(names.iter().map(Path::new));
    common::run_reference("vit.py", &args);
    let exported = common::read_tensors(&m.dir.path().join("exported.safetensors"));
    for name in names {
        let ckpt = m.dir.path().join(format!("{name}.safetensors"));
        let size = if name.ends_with("140") { "140" } else { "224" };
        let ours = features(&ckpt, &m.inputs[&format!("x{size}")]);
        let scale = f64::try_from(ours.abs().max()).unwrap();
        for (runtime, tol) in [("torch", 1e-5), ("onnx", 1e-4)] {
            let diff = common::max_abs(&ours, &exported[&format!("{name}_{runtime}")]);
            assert!(
                diff <= tol * scale,
                "{name} in {runtime}: {diff} (scale {scale})"
            );
        }
    }
    // The `.pth` holds the checkpoint's tensors by DINOv2's names (no mask_token).
    let reread = interop::read_source(&pth, Some(&common::python())).unwrap();
    assert!(reread.tensors.contains_key("blocks.11.attn.qkv.weight"));
    assert_eq!(reread.tensors.len(), 174);

    // The student branch of DinoBloom's file is another network.
    let student = m.dir.path().join("student.safetensors");
    let report = interop::import(
        &m.dir.path().join("s_dinobloom.pth"),
        &student,
        &ImportOptions {
            branch: interop::DinoBranch::Student,
            ..options(Auto, ClsMean)
        },
    )
    .unwrap();
    assert_eq!(report.prefix, "student.backbone.");
    let x = &m.inputs["x224"];
    assert!(common::max_abs(&features(&student, x), &m.refs["s_dinobloom_224"]) > 1e-3);
}

#[test]
fn wrong_vits_are_refused_naming_what_is_wrong() {
    let m = make();
    let d = m.dir.path();
    let err = |file: &Path, opts: &ImportOptions, out: &Path| {
        let e = interop::import(file, out, opts).unwrap_err().to_string();
        assert!(!out.exists(), "{} written despite: {e}", out.display());
        e
    };
    let out = d.join("never.safetensors");
    let e = err(
        &d.join("tiny.safetensors"),
        &options(ImportSource::Auto, VitFeatures::Cls),
        &out,
    );
    assert!(
        e.contains("`cls_token`") && e.contains("192 wide") && e.contains("ViT-S (384)"),
        "{e}"
    );

    // A block tensor missing: named as the file spells it.
    let mut t = common::read_tensors(&d.join("s_reg_timm.safetensors"));
    t.remove("blocks.3.attn.qkv.bias");
    let named: Vec<(&str, Tensor)> = t
        .iter()
        .map(|(k, v)| (k.as_str(), v.shallow_clone()))
        .collect();
    let broken = d.join("broken.safetensors");
    Tensor::write_safetensors(&named, &broken).unwrap();
    let e = err(
        &broken,
        &options(ImportSource::Auto, VitFeatures::Cls),
        &out,
    );
    assert!(
        e.contains("`blocks.3.attn.qkv.bias`") && e.contains("missing"),
        "{e}"
    );

    // An input that is not a multiple of the 14 px patch.
    let e = err(
        &d.join("s_reg_timm.safetensors"),
        &ImportOptions {
            input_size: Some(144),
            ..options(ImportSource::Auto, VitFeatures::Cls)
        },
        &out,
    );
    assert!(
        e.contains("144 px is not a multiple of the 14 px patch") && e.contains("140"),
        "{e}"
    );

    // A ViT at 4,088 px would need a 300 GB attention matrix per cell: refused
    // before any allocation, naming the limit.
    let huge = d.join("huge.safetensors");
    interop::import(
        &d.join("s_reg_timm.safetensors"),
        &huge,
        &ImportOptions {
            input_size: Some(4088),
            ..options(ImportSource::Auto, VitFeatures::Cls)
        },
    )
    .unwrap();
    let Err(e) = amlmil::Session::new(
        &huge,
        &huge,
        &amlmil::SessionOptions {
            device: amlmil::DeviceSpec::Cpu,
            batch_size: 1,
            ..Default::default()
        },
    ) else {
        panic!("a 4,088 px ViT session was made");
    };
    let e = e.to_string();
    assert!(e.contains("max_batch_bytes"), "{e}");

    // A ViT is not pre-trained here.
    let config = serde_json::json!({"method": "dino", "preset": "cpu-small", "dataset": "d",
        "output": "o", "architecture": "vit_s14"});
    let e = amlmil::ssl::config::PretrainConfig::parse(&config.to_string(), false)
        .and_then(|c| c.validate())
        .unwrap_err()
        .to_string();
    assert!(e.contains("architecture") && e.contains("imported"), "{e}");
}

struct Trained {
    _dir: tempfile::TempDir,
    cohort: PathBuf,
    encoder: PathBuf,
    mil: PathBuf,
}

/// A random ViT-S/14 at 56 px over a small synthetic cohort, and a MIL head
/// (pooled `g`) cross-validated on its class-token features.
fn trained() -> Trained {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cohort = root.join("cohort");
    let encoder = root.join("vit.safetensors");
    let manifest =
        amlmil::checkpoint::write_random_encoder(&encoder, EncoderArch::VitS14, 56, 3).unwrap();
    assert_eq!(manifest.feature_map, [384, 1, 1]);
    let features = root.join("features");
    common::cohort_with_features(&cohort, 5, 31, &encoder, &features);
    let json = serde_json::json!({
        "dataset": cohort, "encoder": encoder, "features": features,
        "output": root.join("cv"), "seeds": [0], "folds": 5, "device": "cpu", "gallery_cells": 2,
        "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 8,
                     "patience": 8, "accumulate": 2, "standardize_features": true,
                     "learning_rate": 0.05},
    });
    let config = amlmil::training::CvConfig::parse(&json.to_string(), false).unwrap();
    let report = amlmil::training::cross_validate(&config, &mut |_| true).unwrap();
    assert!(report.complete);
    assert_eq!(report.runs.len(), 5);
    for run in &report.runs {
        assert!(
            run.best_train_loss < run.first_train_loss,
            "fold {}: training loss {} -> {}",
            run.fold,
            run.first_train_loss,
            run.best_train_loss
        );
    }
    let mil = report.runs[0].dir.join("mil.safetensors");
    assert!(mil.is_file());
    Trained {
        cohort,
        encoder,
        mil,
        _dir: dir,
    }
}

#[test]
fn a_mil_head_trains_on_vit_features_and_classifies_through_rust_and_c() {
    let t = trained();
    // A four-convolution g cannot read a vector: the error says what to use.
    let config = amlmil::model::MilConfig {
        in_channels: 384,
        in_side: 1,
        ..Default::default()
    };
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("pooled"), "{e}");

    let bag_dir = t.cohort.join("data/NPM1");
    let bag_dir = std::fs::read_dir(&bag_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let files: Vec<PathBuf> = common::programs::images(&bag_dir);
    let session = amlmil::Session::new(
        &t.encoder,
        &t.mil,
        &amlmil::SessionOptions {
            device: amlmil::DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let mut bag = amlmil::Bag::new();
    for (i, f) in files.iter().enumerate() {
        bag.add(i as u64, amlmil::CellImage::open(f).unwrap())
            .unwrap();
    }
    let r = session.classify(&bag, &mut |_, _, _| true).unwrap();
    let sum: f32 = r.probabilities.iter().sum();
    assert!((sum - 1.0).abs() < 1e-5 && r.cell_ids.len() == files.len());
    // Cached features round-trip: feature maps are the 384 class-token values.
    assert_eq!(session.feature_dim(), 384);

    // bf16 on a CPU that has it: the same diagnosis, probabilities within 0.02.
    if amlmil::device::cpu_bf16().is_ok() {
        let bf16 = amlmil::Session::new(
            &t.encoder,
            &t.mil,
            &amlmil::SessionOptions {
                device: amlmil::DeviceSpec::Cpu,
                precision: amlmil::Precision::Bf16,
                ..Default::default()
            },
        )
        .unwrap();
        let b = bf16.classify(&bag, &mut |_, _, _| true).unwrap();
        assert_eq!(b.predicted, r.predicted);
        for (x, y) in b.probabilities.iter().zip(&r.probabilities) {
            assert!(
                (x - y).abs() < 0.02,
                "bf16 {:?} vs fp32 {:?}",
                b.probabilities,
                r.probabilities
            );
        }
    }

    // The same bag through the C ABI.
    let (o, _device) = cpu_options();
    let (enc, mil) = (c(t.encoder.to_str().unwrap()), c(t.mil.to_str().unwrap()));
    unsafe {
        let mut s = ptr::null_mut();
        assert_eq!(
            amlmil_session_new(enc.as_ptr(), mil.as_ptr(), &o, &mut s),
            amlmil_status::Ok,
            "{}",
            last_error()
        );
        let mut info = std::mem::zeroed::<amlmil_model_info>();
        assert_eq!(
            amlmil_session_model_info(s, &mut info, std::mem::size_of_val(&info)),
            amlmil_status::Ok
        );
        assert_eq!(
            (
                info.feature_map_channels,
                info.feature_map_height,
                info.feature_map_width
            ),
            (384, 1, 1)
        );
        assert_eq!(info.input_size, 56);
        let arch = std::ffi::CStr::from_ptr(info.encoder_architecture)
            .to_str()
            .unwrap();
        assert_eq!(arch, "vit_s14");
        let mut bag = ptr::null_mut();
        assert_eq!(amlmil_bag_new(&mut bag), amlmil_status::Ok);
        for (i, f) in files.iter().enumerate() {
            let p = c(f.to_str().unwrap());
            assert_eq!(
                amlmil_bag_add_file(bag, i as u64, p.as_ptr()),
                amlmil_status::Ok
            );
        }
        let mut result = ptr::null_mut();
        assert_eq!(
            amlmil_session_classify(s, bag, None, ptr::null_mut(), &mut result),
            amlmil_status::Ok,
            "{}",
            last_error()
        );
        let mut probs = vec![0f32; 5];
        assert_eq!(
            amlmil_result_probabilities(result, probs.as_mut_ptr(), 5),
            amlmil_status::Ok
        );
        for (a, b) in probs.iter().zip(&r.probabilities) {
            assert!(
                (a - b).abs() < 1e-6,
                "C {probs:?} vs Rust {:?}",
                r.probabilities
            );
        }
        amlmil_result_free(result);
        amlmil_bag_free(bag);
        amlmil_session_free(s);
    }
}
