//! `amlmil import` / `amlmil export` against PyTorch: models built with random
//! weights by tests/reference/interop.py in the key layouts of torchvision,
//! VISSL, DINO, SwAV, lightly and SCEMILA are imported and must give the
//! features (≤ 1e-4) and logits and attention (≤ 1e-5) PyTorch gives; exported
//! files run in PyTorch (≤ 1e-5) and ONNX Runtime (≤ 1e-4) must give ours; wrong,
//! truncated and mislabelled files are refused naming the key and shape, with
//! nothing written.
mod common;

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use amlmil::checkpoint::{Checkpoint, Manifest};
use amlmil::frozen::{load_encoder, load_mil};
use amlmil::interop::{self, DinoBranch, ExportFormat, ImportOptions, ImportSource};
use tch::{Device, Kind, Tensor};

fn options(source: ImportSource) -> ImportOptions {
    ImportOptions {
        source,
        python: Some(common::python()),
        ..Default::default()
    }
}

fn features(ckpt: &Path, x: &Tensor) -> Tensor {
    let (encoder, _, _vs) = load_encoder(ckpt, Device::Cpu).unwrap();
    tch::no_grad(|| encoder.feature_map(x, false))
}

/// Files in `dir` whose names start with a dot: temporaries a failed write left behind.
fn leftovers(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect()
}

struct Made {
    _dir: tempfile::TempDir,
    path: PathBuf,
    inputs: HashMap<String, Tensor>,
    refs: HashMap<String, Tensor>,
}

fn make() -> Made {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    common::run_reference("interop.py", &[Path::new("make"), &path]);
    Made {
        inputs: common::read_tensors(&path.join("inputs.safetensors")),
        refs: common::read_tensors(&path.join("refs.safetensors")),
        _dir: dir,
        path,
    }
}

#[test]
fn encoders_import_from_every_layout_and_export_to_pytorch_and_onnx() {
    let m = make();
    let x = &m.inputs["x"];
    let cases: [(&str, ImportSource, DinoBranch, &str, &str, &str); 8] = [
        (
            "tv18_fc.pth",
            ImportSource::Auto,
            DinoBranch::Teacher,
            "tv18",
            "torchvision",
            "",
        ),
        (
            "tv34_nofc.pth",
            ImportSource::Torchvision,
            DinoBranch::Teacher,
            "tv34",
            "torchvision",
            "",
        ),
        (
            "tv18.safetensors",
            ImportSource::Auto,
            DinoBranch::Teacher,
            "tv18",
            "torchvision",
            "",
        ),
        (
            "vissl.torch",
            ImportSource::Auto,
            DinoBranch::Teacher,
            "tv18",
            "vissl",
            "classy_state_dict.base_model.model.trunk._feature_blocks.",
        ),
        (
            "dino.pth",
            ImportSource::Dino,
            DinoBranch::Teacher,
            "teacher",
            "dino",
            "teacher.module.backbone.",
        ),
        (
            "dino.pth",
            ImportSource::Dino,
            DinoBranch::Student,
            "student",
            "dino",
            "student.module.backbone.",
        ),
        (
            "swav.pth.tar",
            ImportSource::Swav,
            DinoBranch::Teacher,
            "swav",
            "swav",
            "state_dict.module.",
        ),
        (
            "lightly.ckpt",
            ImportSource::Auto,
            DinoBranch::Teacher,
            "lightly",
            "lightly",
            "state_dict.backbone.",
        ),
    ];
    for (file, source, branch, reference, resolved, prefix) in cases {
        let out = m
            .path
            .join(format!("{reference}-{}.safetensors", source.name()));
        let mut o = options(source);
        o.branch = branch;
        let report =
            interop::import(&m.path.join(file), &out, &o).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (report.source.name(), report.prefix.as_str()),
            (resolved, prefix),
            "{file}"
        );
        assert_eq!(
            report.architecture,
            if reference == "tv34" {
                "resnet34"
            } else {
                "resnet18"
            }
        );
        let d = common::max_abs(&features(&out, x), &m.refs[reference]);
        assert!(
            d <= 1e-4,
            "{file} ({}): features differ from PyTorch's by {d}",
            source.name()
        );
        let Manifest::Encoder(manifest) = Checkpoint::read(&out).unwrap().manifest else {
            panic!("{file}: not an encoder checkpoint")
        };
        assert_eq!(manifest.provenance.method, "imported");
        assert_eq!(manifest.input_size, 144);
    }
    // The file holds both DINO networks: `auto` must not guess.
    let err = interop::import(
        &m.path.join("dino.pth"),
        &m.path.join("x.safetensors"),
        &options(ImportSource::Auto),
    )
    .unwrap_err();
    assert!(err.to_string().contains("several prefixes"), "{err}");

    // Ours → PyTorch (.pth) and ONNX Runtime (.onnx), with a MIL head beside.
    let enc = m.path.join("tv18-auto.safetensors");
    let mil = m.path.join("mil.safetensors");
    let mut o = options(ImportSource::Scemila);
    o.class_conversion = Some(m.path.join("class_conversion.csv"));
    interop::import(&m.path.join("scemila_model.pt"), &mil, &o).unwrap();
    let py = common::python();
    for (src, out, format) in [
        (&enc, "enc.pth", ExportFormat::Pth),
        (&mil, "mil.pth", ExportFormat::Pth),
        (&enc, "enc.onnx", ExportFormat::Onnx),
    ] {
        let r = interop::export(src, &m.path.join(out), format, Some(&py)).unwrap();
        assert_eq!(r.format, format);
    }
    let err = interop::export(
        &mil,
        &m.path.join("mil.onnx"),
        ExportFormat::Onnx,
        Some(&py),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("ONNX export is for encoders"),
        "{err}"
    );
    assert!(!m.path.join("mil.onnx").exists());

    common::run_reference("interop.py", &[Path::new("exported"), &m.path]);
    let exported = common::read_tensors(&m.path.join("exported.safetensors"));
    let ours = features(&enc, x);
    let d = common::max_abs(&ours, &exported["feature_map"]);
    assert!(
        d <= 1e-5,
        "exported encoder in PyTorch differs from ours by {d}"
    );
    let d = common::max_abs(&ours, &exported["onnx_feature_map"]);
    assert!(
        d <= 1e-4,
        "ONNX Runtime on the exported encoder differs from ours by {d}"
    );
    let (head, _, _vs) = load_mil(&mil, Device::Cpu).unwrap();
    let out = tch::no_grad(|| head.forward_bag(&m.inputs["maps"], false));
    for (name, t) in [
        ("logits", &out.logits),
        ("probabilities", &out.probabilities),
        ("attention_raw", &out.attention_raw),
        ("attention", &out.attention),
    ] {
        let d = common::max_abs(t, &exported[name]);
        assert!(
            d <= 1e-5,
            "exported MIL head in PyTorch: {name} differs from ours by {d}"
        );
    }
    assert!(leftovers(&m.path).is_empty(), "{:?}", leftovers(&m.path));
}

#[test]
fn scemila_imports_with_identical_logits_and_attention() {
    let m = make();
    let maps = &m.inputs["maps"];
    for (file, classes) in [
        ("scemila_model.pt", None),
        ("scemila_state.pth", Some(["a", "b", "c", "d", "e"])),
    ] {
        let out = m.path.join(format!("{file}.safetensors"));
        let mut o = options(ImportSource::Auto);
        match classes {
            Some(c) => o.classes = c.iter().map(|s| s.to_string()).collect(),
            None => o.class_conversion = Some(m.path.join("class_conversion.csv")),
        }
        let report =
            interop::import(&m.path.join(file), &out, &o).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            (report.kind.as_str(), report.source),
            ("mil", ImportSource::Scemila)
        );
        let (head, manifest, _vs) = load_mil(&out, Device::Cpu).unwrap();
        if classes.is_none() {
            // class_conversion.csv lists the rows out of order; art_lbl decides.
            assert_eq!(
                manifest.classes,
                ["PML_RARA", "NPM1", "CBFB_MYH11", "RUNX1_RUNX1T1", "control"]
            );
        }
        let out = tch::no_grad(|| head.forward_bag(maps, false));
        for (ours, reference) in [
            (&out.logits, "scemila_logits"),
            (&out.attention_raw, "scemila_att_raw"),
            (&out.attention, "scemila_att"),
        ] {
            let d = common::max_abs(ours, &m.refs[reference]);
            assert!(
                d <= 1e-5,
                "{file}: {reference} differs from SCEMILA's by {d}"
            );
        }
    }
}

#[test]
fn wrong_truncated_and_mislabelled_files_are_refused_and_nothing_is_written() {
    let m = make();
    let csv = m.path.join("class_conversion.csv");
    let five: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
    let cases: Vec<(&str, ImportOptions, &[&str])> = vec![
        (
            "bottleneck.pth",
            options(ImportSource::Auto),
            &["`layer1.0.conv3.weight`", "[256, 64, 1, 1]", "Bottleneck"],
        ),
        (
            "missing.pth",
            options(ImportSource::Torchvision),
            &["`layer3.1.bn2.running_var`", "missing", "[256]"],
        ),
        (
            "wide.pth",
            options(ImportSource::Auto),
            &[
                "`layer2.0.conv1.weight`",
                "[256, 64, 3, 3]",
                "[128, 64, 3, 3]",
            ],
        ),
        (
            "truncated.pth",
            options(ImportSource::Auto),
            &["truncated.pth", "zip archive"],
        ),
        // A MIL model imported as an encoder, and an encoder as SCEMILA's model.
        (
            "scemila_state.pth",
            options(ImportSource::Torchvision),
            &[
                "no ResNet trunk",
                "`conv1.weight`",
                "`module.attention.0.bias`",
            ],
        ),
        (
            "tv18_fc.pth",
            ImportOptions {
                classes: five.clone(),
                ..options(ImportSource::Scemila)
            },
            &["no SCEMILA model", "`ftr_proc.0.weight`"],
        ),
        (
            "dino.pth",
            options(ImportSource::Vissl),
            &["no ResNet trunk", "vissl"],
        ),
        (
            "scemila_single.pt",
            ImportOptions {
                classes: five.clone(),
                ..options(ImportSource::Scemila)
            },
            &["`multicolumn` = False"],
        ),
        (
            "scemila_single_int.pt",
            ImportOptions {
                classes: five.clone(),
                ..options(ImportSource::Scemila)
            },
            &["`multicolumn` = 0"],
        ),
        (
            "scemila_model.pt",
            ImportOptions {
                classes: vec!["a".into(), "b".into()],
                ..options(ImportSource::Scemila)
            },
            &[
                "5 classes",
                "`attention_multi_column.2.weight`",
                "[5, 128]",
                "2 class names",
            ],
        ),
        (
            "scemila_model.pt",
            options(ImportSource::Scemila),
            &["class_conversion"],
        ),
        (
            "tv18_fc.pth",
            ImportOptions {
                prefix: Some("module".into()),
                ..options(ImportSource::Auto)
            },
            &["prefix", "must end with `.`"],
        ),
        (
            "tv18_fc.pth",
            ImportOptions {
                input_size: Some(0),
                ..options(ImportSource::Auto)
            },
            &["input_size"],
        ),
        (
            "no-such-file.pth",
            options(ImportSource::Auto),
            &["no-such-file.pth"],
        ),
        (
            "tv18_fc.pth",
            ImportOptions {
                python: Some("/nonexistent/python".into()),
                ..options(ImportSource::Auto)
            },
            &["/nonexistent/python", "AMLMIL_PYTHON"],
        ),
    ];
    let out = m.path.join("out.safetensors");
    for (file, o, needles) in cases {
        let err = interop::import(&m.path.join(file), &out, &o)
            .expect_err(file)
            .to_string();
        for n in needles {
            assert!(err.contains(n), "{file}: `{n}` not in: {err}");
        }
        assert!(
            !out.exists(),
            "{file}: a failed import wrote {}",
            out.display()
        );
    }
    // The CLI: the same refusal on standard error with a failing status; success prints the report.
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_amlmil"))
            .args(args)
            .env("AMLMIL_PYTHON", common::python())
            .output()
            .unwrap()
    };
    let (bottleneck, out_s) = (m.path.join("bottleneck.pth"), out.to_str().unwrap());
    let r = cli(&["import", bottleneck.to_str().unwrap(), "--out", out_s]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && stderr.contains("`layer1.0.conv3.weight`"),
        "{stderr}"
    );
    assert!(!out.exists());
    let tv = m.path.join("tv18_fc.pth");
    let r = cli(&[
        "import",
        tv.to_str().unwrap(),
        "--out",
        out_s,
        "--mean",
        "0.6,0.5,0.7",
        "--std",
        "0.2,0.2,0.3",
        "--input-size",
        "160",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let report: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(
        report["ignored"],
        serde_json::json!(["fc.bias", "fc.weight"])
    );
    let Manifest::Encoder(manifest) = Checkpoint::read(&out).unwrap().manifest else {
        panic!()
    };
    assert_eq!(
        (
            manifest.input_size,
            manifest.normalization.mean,
            manifest.feature_map
        ),
        (160, [0.6, 0.5, 0.7], [512, 5, 5])
    );
    std::fs::remove_file(&out).unwrap();
    let r = cli(&[
        "import",
        tv.to_str().unwrap(),
        "--out",
        out_s,
        "--mean",
        "0.6,0.5",
    ]);
    assert!(!r.status.success() && String::from_utf8_lossy(&r.stderr).contains("three"));

    // A class_conversion.csv with a gap in art_lbl names the file.
    std::fs::write(&csv, ",art_lbl,true_lbl\n0,0,A\n1,2,B\n").unwrap();
    let o = ImportOptions {
        class_conversion: Some(csv.clone()),
        ..options(ImportSource::Scemila)
    };
    let err = interop::import(&m.path.join("scemila_model.pt"), &out, &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("class_conversion.csv") && err.contains("art_lbl"),
        "{err}"
    );
    assert!(!out.exists());
    assert!(leftovers(&m.path).is_empty(), "{:?}", leftovers(&m.path));
}

#[test]
fn the_c_entry_point_imports_safetensors_and_reports_bad_options() {
    use amlmil::ffi::{amlmil_import, amlmil_last_error, amlmil_status, amlmil_string_free};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("plain.safetensors");
    let enc = dir.path().join("enc.safetensors");
    common::write_encoder(&enc, amlmil::model::EncoderArch::ResNet18, 144, 3);
    // A torchvision-named safetensors file without our manifest (as PyTorch users write them).
    let tensors: Vec<(String, Tensor)> = Checkpoint::read(&enc)
        .unwrap()
        .tensors
        .into_iter()
        .collect();
    Tensor::write_safetensors(&tensors, &src).unwrap();
    let out = dir.path().join("imported.safetensors");
    let c = |p: &Path| CString::new(p.to_str().unwrap()).unwrap();
    let (csrc, cout) = (c(&src), c(&out));
    let opts = CString::new(r#"{"source": "torchvision", "input_size": 144, "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}"#).unwrap();
    let mut report: *mut std::ffi::c_char = std::ptr::null_mut();
    // SAFETY: valid NUL-terminated strings and out pointer; the report is freed below.
    unsafe {
        assert_eq!(
            amlmil_import(csrc.as_ptr(), cout.as_ptr(), opts.as_ptr(), &mut report),
            amlmil_status::Ok
        );
        let json: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(report).to_str().unwrap()).unwrap();
        assert_eq!(json["architecture"], "resnet18");
        amlmil_string_free(report);
    }
    let Manifest::Encoder(manifest) = Checkpoint::read(&out).unwrap().manifest else {
        panic!()
    };
    assert_eq!(manifest.normalization.std, [0.25; 3]);
    let x = Tensor::randn([2, 3, 144, 144], (Kind::Float, Device::Cpu));
    assert_eq!(
        common::max_abs(&features(&out, &x), &features(&enc, &x)),
        0.0
    );

    let bad = CString::new(r#"{"sourse": "torchvision"}"#).unwrap();
    let out2 = dir.path().join("never.safetensors");
    let cout2 = c(&out2);
    report = std::ptr::null_mut();
    // SAFETY: as above; NULL arguments are part of the contract.
    unsafe {
        let st = amlmil_import(csrc.as_ptr(), cout2.as_ptr(), bad.as_ptr(), &mut report);
        assert_eq!(st, amlmil_status::InvalidArgument);
        let msg = CStr::from_ptr(amlmil_last_error()).to_str().unwrap();
        assert!(
            msg.contains("options_json") && msg.contains("sourse"),
            "{msg}"
        );
        assert!(report.is_null());
        let st = amlmil_import(
            std::ptr::null(),
            cout2.as_ptr(),
            std::ptr::null(),
            &mut report,
        );
        assert_eq!(st, amlmil_status::NullArgument);
        assert!(CStr::from_ptr(amlmil_last_error())
            .to_str()
            .unwrap()
            .contains("source_path"));
    }
    assert!(!out2.exists());
}
