//! bf16 on the CPU: on a trained encoder and head (trained here, small: 25
//! synthetic patients at 144 px, a supervised encoder and a MIL head), every
//! patient keeps its fp32 diagnosis — class, probabilities within the guard's
//! bound, top-10 attention cells (`amlmil check-precision`, [`amlmil::guard`])
//! — and bf16 is refused naming why where the CPU has no native bf16
//! (detection forced off with `AMLMIL_CPU_BF16=0`).
mod common;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_amlmil"))
}

/// Runs `amlmil` with `line`'s words and then `extra` in `dir`; its stdout.
fn run(line: &str, extra: &[&str], dir: &Path) -> String {
    let mut cmd = cli();
    cmd.args(line.split_whitespace())
        .args(extra)
        .current_dir(dir);
    common::run_ok(&mut cmd, line)
}

/// Bag folders of a synthetic cohort (`data/<class>/<patient>`), sorted.
fn bags(cohort: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for class in std::fs::read_dir(cohort.join("data")).unwrap() {
        for patient in std::fs::read_dir(class.unwrap().path()).unwrap() {
            out.push(patient.unwrap().path().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn bf16_keeps_every_patients_diagnosis_on_a_trained_model() {
    if let Err(why) = amlmil::device::cpu_bf16() {
        // The refusal is what this CPU must give.
        eprintln!("this CPU has no native bf16 ({why}): checking the refusal only");
        let err = amlmil::Session::new(
            Path::new("missing-encoder.safetensors"),
            Path::new("missing-mil.safetensors"),
            &amlmil::SessionOptions {
                device: amlmil::DeviceSpec::Cpu,
                precision: amlmil::Precision::Bf16,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, amlmil::Error::Unsupported { .. }), "{err}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let synth = "synth --out cohort --patients-per-class 5 --cells 12..12 --size 144 --seed 5";
    run(synth, &[], d);
    let pretrain = "pretrain --method supervised --preset cpu-small --dataset cohort \
                    --output encoder --epochs 2 --set";
    let at_144 = r#"{"batch_size": 16, "device": "cpu", "image_size": 144,
                     "supervised": {"crop": {"size": 128}}}"#;
    run(pretrain, &[at_144], d);
    // One bag a step: the head leaves the uniform output within seconds (its
    // probabilities reach 0.4–0.7), so the bound is tested on a head that classifies.
    std::fs::write(
        d.join("mil.json"),
        r#"{"dataset": "cohort", "encoder": "encoder/encoder.safetensors", "output": "mil",
            "device": "cpu", "training": {"accumulate": 1, "epochs": 30, "patience": 30,
            "standardize_features": true}}"#,
    )
    .unwrap();
    run("train-mil --config mil.json", &[], d);
    let models = "--encoder encoder/encoder.safetensors \
                  --mil mil/runs/seed0_fold0/mil.safetensors --device cpu";
    let all = bags(&d.join("cohort"));
    assert_eq!(all.len(), 25);
    let bag_args: Vec<&str> = all.iter().map(String::as_str).collect();
    let guard = format!("check-precision {models} --precision bf16 --batch-size 16");
    let report: Value = serde_json::from_str(&run(&guard, &bag_args, d)).unwrap();
    eprintln!(
        "bf16 vs fp32: {} of 25 same class, probabilities within {}, attention within {}, \
         top-10 overlap ≥ {}",
        report["same_class"],
        report["max_probability_diff"],
        report["max_attention_diff"],
        report["min_overlap"]
    );
    assert_eq!(report["holds"], true, "{report:#}");
    assert_eq!(report["same_class"], 25);
    assert!(report["min_overlap"].as_u64().unwrap() >= 9);
    assert!(report["max_probability_diff"].as_f64().unwrap() <= 0.02);
    let predicted: std::collections::BTreeSet<&str> = report["bags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["fp32_class"].as_str().unwrap())
        .collect();
    assert!(
        predicted.len() >= 3,
        "the head predicts {predicted:?} only: not trained"
    );
    // The bf16 path really ran: attention moved by rounding, not by nothing.
    assert!(
        report["max_attention_diff"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );

    // `predict --precision bf16` gives fp32's class.
    let predict = |precision: &str| -> Value {
        let line = format!("predict {models} --precision {precision}");
        serde_json::from_str(&run(&line, &[&all[0]], d)).unwrap()
    };
    assert_eq!(
        predict("bf16")[0]["predicted"],
        predict("fp32")[0]["predicted"]
    );
}

#[test]
fn bf16_is_refused_naming_why_where_the_cpu_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run(
        "init-checkpoint encoder --seed 1 --out e.safetensors",
        &[],
        d,
    );
    run("init-checkpoint mil --seed 2 --out m.safetensors", &[], d);
    std::fs::create_dir(d.join("bag")).unwrap();
    for (i, cell) in common::cells(2, 144, 3).iter().enumerate() {
        image::RgbImage::from_raw(cell.width(), cell.height(), cell.rgb().to_vec())
            .unwrap()
            .save(d.join(format!("bag/c{i}.png")))
            .unwrap();
    }
    let models = "--encoder e.safetensors --mil m.safetensors --device cpu";
    let refused = |line: String, bf16_off: bool| -> String {
        let mut cmd = cli();
        cmd.args(line.split_whitespace()).arg("bag").current_dir(d);
        if bf16_off {
            cmd.env(amlmil::device::CPU_BF16_ENV, "0");
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "`{line}` was accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = refused(format!("predict {models} --precision bf16"), true);
    assert!(
        err.contains("`precision` is not supported here") && err.contains("AMLMIL_CPU_BF16=0"),
        "{err}"
    );
    let err = refused(format!("predict {models} --precision fp16"), false);
    assert!(err.contains("fp16 needs a CUDA device"), "{err}");
    let err = refused(format!("check-precision {models} --precision fp32"), false);
    assert!(err.contains("fp32 was given"), "{err}");
}
