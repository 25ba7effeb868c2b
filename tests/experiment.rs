//! The paper's experiment end to end at toy scale: cohorts, pre-training,
//! probe, cross-validation per encoder and the report; a cancelled run resumes
//! without redoing finished stages, and every artefact is present and
//! well-formed (tables parse, PNGs decode, the HTML references existing files).
use std::collections::BTreeSet;
use std::path::Path;

use amlmil::experiment::{run_experiment, ExperimentConfig, Stage};
use amlmil::Error;

fn tiny(output: &Path) -> ExperimentConfig {
    ExperimentConfig::from_value(serde_json::json!({
        "preset": "quick",
        "output": output,
        "cohort": {"patients_per_class": 3, "cells_min": 8, "cells_max": 12, "image_size": 32, "annotated_fraction": 0.5},
        "pretrain_cohort": {"patients_per_class": 2, "cells_min": 10, "cells_max": 12, "image_size": 32},
        "encoders": ["supervised", "simclr", "random"],
        "pretrain": {
            "all": {"image_size": 32, "batch_size": 8, "steps_per_epoch": 2, "decode_threads": 1},
            "supervised": {"epochs": 1, "supervised": {"crop": {"size": 32}}},
            "simclr": {"epochs": 1, "simclr": {"crops": {"global": {"size": 32}, "local": {"size": 16}}}},
        },
        "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 2, "patience": 2},
        "folds": 3,
        "seeds": [0],
        "gallery_cells": 3,
        "probe_cells": 60,
        "umap_cells": 60,
    }))
    .unwrap()
}

/// The image paths an HTML file references.
fn img_sources(html: &str) -> Vec<String> {
    html.split("<img src=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next().map(str::to_owned))
        .collect()
}

#[test]
fn tiny_experiment_runs_resumes_after_cancellation_and_writes_every_artefact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let config = tiny(&out);

    // First run: cancelled when the second encoder's cross-validation starts training.
    let mut stages = BTreeSet::new();
    let err = run_experiment(&config, &mut |e| {
        stages.insert(e.stage);
        !(e.stage == Stage::Cv && e.encoder == Some("simclr") && e.detail.starts_with("run"))
    })
    .unwrap_err();
    assert!(matches!(err, Error::Cancelled(_)), "{err}");
    assert!(stages.contains(&Stage::Pretrain) && stages.contains(&Stage::Probe));
    assert!(
        !out.join("report.json").exists(),
        "no report for an unfinished experiment"
    );
    let supervised_encoder = out.join("encoders/supervised/encoder.safetensors");
    let modified = |p: &Path| std::fs::metadata(p).unwrap().modified().unwrap();
    let before = modified(&supervised_encoder);
    let supervised_run = out.join("cv/supervised/runs/seed0_fold0/mil.safetensors");
    let run_before = modified(&supervised_run);

    // Second run: resumes.
    let mut pretrained_again = BTreeSet::new();
    let report = run_experiment(&config, &mut |e| {
        if e.stage == Stage::Pretrain && e.total > 1 {
            pretrained_again.insert(e.encoder.unwrap_or("").to_owned());
        }
        true
    })
    .unwrap();
    assert!(report.complete);
    assert!(
        pretrained_again.is_empty(),
        "finished encoders were pre-trained again: {pretrained_again:?}"
    );
    assert_eq!(modified(&supervised_encoder), before);
    assert_eq!(
        modified(&supervised_run),
        run_before,
        "a finished MIL run was retrained"
    );
    let sup = &report.encoders[0];
    assert_eq!(
        (sup.name.as_str(), sup.cv.runs_reloaded, sup.cv.runs.len()),
        ("supervised", 3, 3)
    );
    let reused: Vec<_> = report
        .timings
        .iter()
        .filter(|t| !t.computed_now)
        .map(|t| (t.stage, t.encoder.clone().unwrap_or_default()))
        .collect();
    assert!(
        reused.contains(&(Stage::Cohort, "cohort".into())),
        "{reused:?}"
    );
    assert!(
        reused.contains(&(Stage::Pretrain, "supervised".into())),
        "{reused:?}"
    );
    assert!(
        reused.contains(&(Stage::Cv, "supervised".into())),
        "{reused:?}"
    );

    // report.json parses, is complete, and has a summary for every encoder.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(json["complete"], true);
    let names: Vec<&str> = json["encoders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["supervised", "simclr", "random"]);
    for e in json["encoders"].as_array().unwrap() {
        let f1 = e["cv"]["summary"]["macro_f1"]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1));
        assert!(e["probe"]["encoder"]["accuracy"].as_f64().is_some());
        // The deployable model: the encoder and the ensemble of every run's head.
        let runs = e["cv"]["runs"].as_array().unwrap().len();
        assert_eq!(
            e["deploy"]["heads"].as_u64(),
            Some(runs as u64),
            "{}",
            e["deploy"]
        );
        let name = e["name"].as_str().unwrap();
        let dir = out.join("deploy").join(name);
        let session = amlmil::Session::new(
            &dir.join("encoder.safetensors"),
            &dir.join("mil.safetensors"),
            &amlmil::SessionOptions {
                device: amlmil::DeviceSpec::Cpu,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(session.mil_manifest().head_count(), runs);
    }

    // report.md: Table 1 has a row per encoder whose cells parse as "m ± s".
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let table: Vec<&str> = md
        .lines()
        .skip_while(|l| !l.starts_with("| encoder | macro F1"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert_eq!(table.len(), 2 + 3, "{table:?}");
    for row in &table[2..] {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        for cell in &cells[1..4] {
            let (m, s) = cell
                .split_once(" ± ")
                .unwrap_or_else(|| panic!("{cell} in {row}"));
            let (m, s): (f64, f64) = (m.parse().unwrap(), s.parse().unwrap());
            assert!((0.0..=1.0).contains(&m) && s >= 0.0, "{row}");
        }
    }
    assert!(md.contains("average_precision_score"), "PR AUC is defined");
    assert!(md.contains("Per class") && md.contains("k-NN"));
    assert!(md.contains("While pre-training") && md.contains("patient-probe macro F1"));
    assert!(md.contains("protocol `disjoint`"));
    // The SSL encoder's monitors reach the report's JSON.
    let simclr = &json["encoders"][1];
    let monitors = simclr["pretraining"]["monitors"].as_array().unwrap();
    assert!(!monitors.is_empty());
    assert!(monitors[0]["effective_rank"].as_f64().unwrap() >= 1.0);
    assert!(simclr["probe"]["patient"]["macro_f1"].as_f64().is_some());

    // Every image the HTML references exists and decodes; the figures are all there.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let sources = img_sources(&html);
    for f in [
        "figures/roc.png",
        "figures/attention.png",
        "figures/embedding.png",
        "figures/confusion_supervised.png",
    ] {
        assert!(sources.iter().any(|s| s == f), "{f} not in the HTML");
    }
    assert!(sources.iter().any(|s| s.starts_with("figures/gallery/")));
    for src in &sources {
        let path = out.join(src);
        image::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    // Markdown references the same files.
    for src in &sources {
        assert!(
            md.contains(&format!("]({src})")),
            "{src} missing from report.md"
        );
    }
}

#[test]
fn bad_experiment_configurations_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("never");
    let err =
        ExperimentConfig::from_value(serde_json::json!({"output": out, "encoders": ["byol"]}))
            .unwrap_err();
    assert!(err.to_string().contains("byol"), "{err}");
    let err = ExperimentConfig::from_value(
        serde_json::json!({"output": out, "dataset": dir.path().join("d")}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("pretrain_dataset"), "{err}");
    assert!(!out.exists(), "nothing written");
}

unsafe extern "C" fn record_and_cancel_at_pretrain(
    user_data: *mut std::ffi::c_void,
    p: *const amlmil::ffi::amlmil_progress,
) -> i32 {
    let seen = &mut *(user_data as *mut Vec<String>);
    let stage = std::ffi::CStr::from_ptr((*p).stage)
        .to_string_lossy()
        .into_owned();
    let cancel = stage.starts_with("experiment/pretrain/");
    seen.push(stage);
    cancel as i32
}

#[test]
fn c_abi_runs_cancels_and_refuses_bad_configurations() {
    use amlmil::ffi::*;
    use std::ffi::{c_char, CStr, CString};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c-exp");
    let json = CString::new(serde_json::to_string(&tiny(&out)).unwrap()).unwrap();
    unsafe {
        let last_error = || {
            CStr::from_ptr(amlmil_last_error())
                .to_string_lossy()
                .into_owned()
        };
        let mut seen: Vec<String> = Vec::new();
        let mut untouched = 0x42 as *mut c_char;
        let st = amlmil_experiment(
            json.as_ptr(),
            Some(record_and_cancel_at_pretrain),
            &mut seen as *mut _ as *mut std::ffi::c_void,
            &mut untouched,
        );
        assert_eq!(st, amlmil_status::Cancelled, "{}", last_error());
        assert_eq!(untouched, 0x42 as *mut c_char);
        assert!(seen.iter().any(|s| s == "experiment/cohort"), "{seen:?}");
        assert_eq!(
            seen.last().map(String::as_str),
            Some("experiment/pretrain/supervised")
        );

        let mut report: *mut c_char = std::ptr::null_mut();
        let st = amlmil_experiment(json.as_ptr(), None, std::ptr::null_mut(), &mut report);
        assert_eq!(st, amlmil_status::Ok, "{}", last_error());
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(report).to_str().unwrap()).unwrap();
        amlmil_string_free(report);
        assert_eq!(v["complete"], true);
        assert_eq!(v["encoders"].as_array().unwrap().len(), 3);
        assert!(out.join("report.html").is_file());

        let bad = CString::new(r#"{"output": "x", "folds": 2}"#).unwrap();
        let mut report: *mut c_char = std::ptr::null_mut();
        let st = amlmil_experiment(bad.as_ptr(), None, std::ptr::null_mut(), &mut report);
        assert_eq!(st, amlmil_status::InvalidArgument);
        assert!(last_error().contains("folds"), "{}", last_error());
        assert!(report.is_null());
        assert_eq!(
            amlmil_experiment(std::ptr::null(), None, std::ptr::null_mut(), &mut report),
            amlmil_status::NullArgument
        );
    }
}

/// The paper's protocol: each SSL encoder is pre-trained inside every run on the
/// cells of that run's training patients, and no cell of the run's validation
/// or test patients reaches its pre-training; the run's MIL head uses it.
#[test]
fn per_fold_pretraining_sees_only_the_runs_training_patients() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let mut v = serde_json::to_value(tiny(&out)).unwrap();
    v["encoders"] = serde_json::json!(["simclr"]);
    v["pretrain_protocol"] = serde_json::json!("per-fold");
    let config = ExperimentConfig::from_value(v).unwrap();
    let report = run_experiment(&config, &mut |_| true).unwrap();
    let (cohort, _) =
        amlmil::dataset::Dataset::open(&report.dataset, &amlmil::dataset::OpenOptions::fail())
            .unwrap();
    let ids = |idx: &[usize]| -> BTreeSet<String> {
        idx.iter()
            .map(|&i| cohort.patients()[i].id.clone())
            .collect()
    };
    let simclr = &report.encoders[0];
    assert_eq!(simclr.fold_checkpoints.len(), 3);
    let mut hashes = BTreeSet::new();
    for split in cohort.folds(3, 0).unwrap() {
        let run = format!("seed0_fold{}", split.fold);
        let done: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("encoders/simclr").join(&run).join("done.json"))
                .unwrap(),
        )
        .unwrap();
        let seen: BTreeSet<String> = done["summary"]["patients_seen"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(seen, ids(&split.train), "{run}");
        assert!(seen.is_disjoint(&ids(&split.validation)), "{run}");
        assert!(seen.is_disjoint(&ids(&split.test)), "{run}");
        // The run's features come from its own encoder.
        let run_json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join("cv/simclr/runs").join(&run).join("run.json"))
                .unwrap(),
        )
        .unwrap();
        hashes.insert(run_json["encoder_file_sha256"].as_str().unwrap().to_owned());
        assert_eq!(
            simclr.fold_checkpoints[&run],
            out.join("encoders/simclr")
                .join(&run)
                .join("encoder.safetensors")
        );
    }
    assert_eq!(hashes.len(), 3, "each run used its own encoder");
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("protocol `per-fold`"));
}

/// A lab's own encoder in Table 1: an imported ViT (DINOv2 layout) beside the
/// random floor, not trained here, its MIL head on the pooled `g` (a ViT's
/// features are a vector), deployed like the others; a bad entry is named.
#[test]
fn an_imported_vit_is_compared_beside_the_pretrained_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let vit = dir.path().join("dinobloom-like.safetensors");
    amlmil::checkpoint::write_random_encoder(&vit, amlmil::model::EncoderArch::VitS14, 42, 4)
        .unwrap();
    let mut v = serde_json::to_value(tiny(&out)).unwrap();
    v["encoders"] = serde_json::json!(["random"]);
    v["imported"] = serde_json::json!({"vit_s": vit});
    // The four-convolution g the ResNet keeps; the ViT's head switches to pooled.
    v["training"]["cell_net"] = serde_json::json!({"type": "scemila"});
    let config = ExperimentConfig::from_value(v.clone()).unwrap();
    let report = run_experiment(&config, &mut |_| true).unwrap();
    let names: Vec<&str> = report.encoders.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["random", "vit_s"]);
    let imported = &report.encoders[1];
    assert_eq!(imported.checkpoint, vit);
    assert_eq!(imported.pretraining["method"], "imported");
    assert_eq!(imported.pretraining["architecture"], "vit_s14");
    assert_eq!(imported.cv.runs.len(), 3);
    let run_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("cv/vit_s/runs/seed0_fold0/run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        run_json["training"]["cell_net"]["type"], "pooled",
        "{run_json}"
    );
    let deployed = out.join("deploy/vit_s");
    let session = amlmil::Session::new(
        &deployed.join("encoder.safetensors"),
        &deployed.join("mil.safetensors"),
        &amlmil::SessionOptions {
            device: amlmil::DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(session.feature_dim(), 384);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("vit_s"), "{md}");

    for (imported, needle) in [
        (serde_json::json!({"simclr": vit}), "imported.simclr"),
        (
            serde_json::json!({"lab": dir.path().join("missing.safetensors")}),
            "imported.lab",
        ),
    ] {
        let mut bad = v.clone();
        bad["imported"] = imported;
        let e = ExperimentConfig::from_value(bad)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{e}");
    }
}
