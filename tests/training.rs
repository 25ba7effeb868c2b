//! MIL training and cross-validation: the loop is faithful (accumulation, early
//! stopping restores the best state), `cv` writes every artefact and its loss
//! falls, results are reproducible, and bad input is refused clearly — through
//! the Rust API and the C ABI.
mod common;

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use amlmil::model::{CellNet, EncoderArch};
use amlmil::training::{cross_validate, train_mil, CvConfig, MilTrainConfig, TrainBag};
use amlmil::Error;
use tch::{Device, Kind, Tensor};

/// A 25-patient synthetic cohort at 64 px, a random 64 px encoder, and their
/// feature cache, made once.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    cohort: PathBuf,
    encoder: PathBuf,
    features: PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let cohort = root.join("cohort");
        let encoder = root.join("encoder64.safetensors");
        common::write_encoder(&encoder, EncoderArch::ResNet18, 64, 5);
        let features = root.join("features");
        common::cohort_with_features(&cohort, 5, 21, &encoder, &features);
        Setup {
            _dir: dir,
            root,
            cohort,
            encoder,
            features,
        }
    })
}

fn small_training() -> serde_json::Value {
    serde_json::json!({"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 4, "patience": 4, "accumulate": 5})
}

fn cv_config(output: &Path, training: serde_json::Value) -> CvConfig {
    let s = setup();
    let json = serde_json::json!({
        "dataset": s.cohort, "encoder": s.encoder, "features": s.features, "output": output,
        "seeds": [0], "device": "cpu", "gallery_cells": 4, "training": training,
    });
    CvConfig::parse(&json.to_string(), false).unwrap()
}

#[test]
fn cv_runs_all_folds_and_writes_every_artefact() {
    let out = setup().root.join("cv-artefacts");
    let report = cross_validate(&cv_config(&out, small_training()), &mut |_| true).unwrap();
    assert!(report.complete);
    assert_eq!(report.runs.len(), 5);
    for run in &report.runs {
        for f in [
            "mil.safetensors",
            "predictions.csv",
            "attention.csv",
            "learning_curve.csv",
            "metrics.json",
            "run.json",
        ] {
            assert!(
                run.dir.join(f).is_file(),
                "{} missing in {}",
                f,
                run.dir.display()
            );
        }
        // The checkpoint is a normal MIL checkpoint that a session loads with the encoder.
        let session = amlmil::Session::new(
            &setup().encoder,
            &run.dir.join("mil.safetensors"),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(session.classes().len(), 5);
        // 5 test patients, and per-cell attention rows for all their cells.
        let preds = std::fs::read_to_string(run.dir.join("predictions.csv")).unwrap();
        assert_eq!(preds.lines().count(), 1 + 5);
        let att = std::fs::read_to_string(run.dir.join("attention.csv")).unwrap();
        assert!(
            att.lines().nth(1).unwrap().split(',').count() == 4 + 10,
            "5 softmax + 5 raw attention columns"
        );
    }
    // Training loss falls: over the runs on average, and in most runs (an epoch's
    // loss is measured on 15 randomly drawn, flipped bags, so single epochs are noisy).
    let mean = |f: fn(&amlmil::training::cv::RunSummary) -> f64| {
        report.runs.iter().map(f).sum::<f64>() / 5.0
    };
    let (first, best) = (mean(|r| r.first_train_loss), mean(|r| r.best_train_loss));
    let falling = report
        .runs
        .iter()
        .filter(|r| r.best_train_loss < r.first_train_loss)
        .count();
    assert!(
        best < first && falling >= 3,
        "training loss did not fall: first {first}, best {best}, {falling} of 5 runs: {:?}",
        report.runs
    );
    for f in [
        "summary.json",
        "summary.md",
        "roc.png",
        "confusion.png",
        "attention.json",
        "report.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let md = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        md.contains("ROC AUC") && md.contains("average_precision_score"),
        "{md}"
    );
    let galleries = std::fs::read_dir(out.join("gallery")).unwrap().count();
    assert_eq!(
        galleries, 25,
        "one gallery per test patient of the first seed"
    );
    let attention: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("attention.json")).unwrap())
            .unwrap();
    assert!(
        attention["abnormal_vs_normal_roc_auc"].is_number(),
        "{attention}"
    );
}

#[test]
fn same_seed_gives_identical_metrics() {
    let a = cross_validate(
        &cv_config(&setup().root.join("repro-a"), small_training()),
        &mut |_| true,
    )
    .unwrap();
    let b = cross_validate(
        &cv_config(&setup().root.join("repro-b"), small_training()),
        &mut |_| true,
    )
    .unwrap();
    let metrics = |r: &amlmil::training::CvReport| {
        r.runs
            .iter()
            .map(|x| (x.macro_f1, x.roc_auc, x.pr_auc, x.first_train_loss))
            .collect::<Vec<_>>()
    };
    assert_eq!(metrics(&a), metrics(&b));
}

/// Uniform [0, 1) values from a private stream (libtorch's global generator is
/// shared by the tests running in parallel, so it would make them flaky).
fn uniform(shape: &[i64], rng: &mut rand_chacha::ChaCha8Rng) -> Tensor {
    use rand::Rng;
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random::<f32>()).collect();
    Tensor::from_slice(&values).view(shape)
}

fn random_bags(n: usize, seed: u64) -> Vec<TrainBag> {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| TrainBag {
            patient_id: format!("p{i}"),
            label: i % 5,
            cell_ids: (0..6).collect(),
            maps: uniform(&[4, 6, 512, 1, 1], &mut rng) + (i % 5) as f64 * 0.05,
        })
        .collect()
}

fn head() -> amlmil::model::MilConfig {
    amlmil::model::MilConfig {
        head: CellNet::Pooled.into(),
        in_side: 1,
        ..Default::default()
    }
}

#[test]
fn one_optimiser_step_per_accumulated_group_of_bags() {
    let bags = random_bags(30, 1);
    let train: Vec<&TrainBag> = bags[..25].iter().collect();
    let val: Vec<&TrainBag> = bags[25..].iter().collect();
    let config = MilTrainConfig {
        epochs: 3,
        patience: 10,
        accumulate: 10,
        bags_per_epoch: Some(25),
        ..MilTrainConfig::paper()
    };
    let t = train_mil(&config, &head(), &train, &val, 3, Device::Cpu, &mut |_| {
        true
    })
    .unwrap();
    // 25 bags per epoch in groups of 10: steps after 10, 20 and the last 5.
    let steps: Vec<usize> = t.curve.iter().map(|r| r.optimizer_steps).collect();
    assert_eq!(steps, vec![3, 6, 9]);
    let config = MilTrainConfig {
        accumulate: 1,
        ..config
    };
    let t = train_mil(&config, &head(), &train, &val, 3, Device::Cpu, &mut |_| {
        true
    })
    .unwrap();
    assert_eq!(t.curve.last().unwrap().optimizer_steps, 75);
}

/// The head's parameters after one epoch of `config` on `bags` (best state = epoch 0).
fn parameters_after_one_epoch(
    config: &MilTrainConfig,
    bags: &[&TrainBag],
) -> Vec<(String, Tensor)> {
    let t = train_mil(
        config,
        &head(),
        bags,
        &bags[..1],
        9,
        Device::Cpu,
        &mut |_| true,
    )
    .unwrap();
    let mut vars: Vec<(String, Tensor)> = t.vars.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

#[test]
fn accumulated_gradients_are_averaged_so_the_step_does_not_grow_with_the_group() {
    // One step over 10 copies of a bag must move the head as one step over the
    // bag alone: summing (the rule that diverged on small cohorts) moves it 10×.
    let bags = random_bags(1, 11);
    let one = MilTrainConfig {
        epochs: 1,
        accumulate: 1,
        bags_per_epoch: Some(1),
        momentum: 0.0,
        nesterov: false,
        max_grad_norm: None,
        flips: false,
        balanced_sampling: false,
        ..MilTrainConfig::paper()
    };
    let ten = MilTrainConfig {
        accumulate: 10,
        bags_per_epoch: Some(10),
        ..one.clone()
    };
    let copies: Vec<&TrainBag> = std::iter::repeat_n(&bags[0], 10).collect();
    let start = parameters_after_one_epoch(
        &MilTrainConfig {
            learning_rate: 1e-30,
            ..one.clone()
        },
        &copies[..1],
    );
    let single = parameters_after_one_epoch(&one, &copies[..1]);
    let grouped = parameters_after_one_epoch(&ten, &copies);
    let summed = parameters_after_one_epoch(
        &MilTrainConfig {
            accumulation: amlmil::training::config::Accumulation::Sum,
            ..ten.clone()
        },
        &copies,
    );
    let mut moved = 0.0f64;
    for (((name, s0), s1), (g, s10)) in start.iter().zip(&single).zip(grouped.iter().zip(&summed)) {
        let step1 = &s1.1 - s0;
        let diff = f64::try_from((&g.1 - &s1.1).abs().max()).unwrap();
        let scale = f64::try_from(step1.abs().max()).unwrap();
        assert!(
            diff <= 1e-6 + 1e-4 * scale,
            "{name}: mean of 10 copies differs by {diff} (step {scale})"
        );
        let sum_step = f64::try_from((&s10.1 - s0).abs().max()).unwrap();
        if scale > 1e-6 {
            assert!(
                (sum_step / scale - 10.0).abs() < 0.01,
                "{name}: summed step {sum_step} vs {scale}"
            );
        }
        moved = moved.max(scale);
    }
    assert!(moved > 1e-4, "the step moved nothing ({moved})");
}

#[test]
fn gradient_clipping_bounds_the_step() {
    // Plain SGD, one bag, one step: the update is lr · g with ‖g‖ ≤ max_grad_norm.
    let bags = random_bags(1, 12);
    let base = MilTrainConfig {
        epochs: 1,
        accumulate: 1,
        bags_per_epoch: Some(1),
        momentum: 0.0,
        nesterov: false,
        flips: false,
        balanced_sampling: false,
        learning_rate: 1.0,
        ..MilTrainConfig::paper()
    };
    let b: Vec<&TrainBag> = bags.iter().collect();
    let start = parameters_after_one_epoch(
        &MilTrainConfig {
            learning_rate: 1e-30,
            ..base.clone()
        },
        &b,
    );
    let clipped = parameters_after_one_epoch(
        &MilTrainConfig {
            max_grad_norm: Some(1e-3),
            ..base.clone()
        },
        &b,
    );
    let norm: f64 = start
        .iter()
        .zip(&clipped)
        .map(|(a, c)| f64::try_from((&c.1 - &a.1).square().sum(Kind::Double)).unwrap())
        .sum::<f64>()
        .sqrt();
    assert!(
        norm > 0.5e-3 && norm <= 1.0001e-3,
        "clipped step norm {norm}"
    );
}

#[test]
fn early_stopping_keeps_and_restores_the_best_state() {
    // Labels carry little signal in these bags: the head overfits and validation loss rises.
    let bags = random_bags(30, 2);
    let train: Vec<&TrainBag> = bags[..20].iter().collect();
    let val: Vec<&TrainBag> = bags[20..].iter().collect();
    let config = MilTrainConfig {
        epochs: 40,
        patience: 3,
        accumulate: 1,
        learning_rate: 0.05,
        ..MilTrainConfig::paper()
    };
    let t = train_mil(&config, &head(), &train, &val, 4, Device::Cpu, &mut |_| {
        true
    })
    .unwrap();
    let best = t
        .curve
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.validation_loss.total_cmp(&b.1.validation_loss))
        .unwrap()
        .0;
    assert_eq!(t.best_epoch, best);
    assert!(
        t.stopped_early && t.curve.len() == best + 1 + 3,
        "stops `patience` epochs after the best: {} epochs, best {best}",
        t.curve.len()
    );
    let (restored, _) = amlmil::training::mil::evaluate(&t.mil, &val, Device::Cpu).unwrap();
    assert!(
        (restored - t.best_validation_loss).abs() < 1e-9,
        "restored {restored} vs best {}",
        t.best_validation_loss
    );
    assert!(t.curve.last().unwrap().validation_loss > restored);
}

#[test]
fn cancellation_mid_epoch_leaves_an_incomplete_marked_run() {
    let out = setup().root.join("cancelled");
    let mut bags_seen = 0;
    let e = cross_validate(&cv_config(&out, small_training()), &mut |ev| {
        if let amlmil::training::CvEvent::Train { event, .. } = ev {
            bags_seen += 1;
            return !(event.epoch == 1 && event.bag == 3);
        }
        true
    })
    .unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)), "{e}");
    assert!(bags_seen > 3);
    let run: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/seed0_fold0/run.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(run["status"], "incomplete");
    assert!(!out.join("runs/seed0_fold0/mil.safetensors").exists());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["complete"], false);
}

#[test]
fn bad_experiments_are_refused_with_a_clear_error() {
    let s = setup();
    // Features of another encoder.
    let other = s.root.join("other-encoder.safetensors");
    common::write_encoder(&other, EncoderArch::ResNet18, 64, 99);
    let mut c = cv_config(&s.root.join("bad1"), small_training());
    c.encoder = other;
    let e = cross_validate(&c, &mut |_| true).unwrap_err();
    assert!(
        matches!(e, Error::Mismatch(_)) && e.to_string().contains("extracted with encoder"),
        "{e}"
    );
    // More folds than patients of a class.
    let mut c = cv_config(&s.root.join("bad2"), small_training());
    c.folds = 6;
    let e = cross_validate(&c, &mut |_| true).unwrap_err();
    assert!(
        e.to_string().contains("fewer") || e.to_string().contains("patients"),
        "{e}"
    );
    // Unwritable output: a regular file where the directory should be.
    let file = s.root.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let c = cv_config(&file.join("out"), small_training());
    let e = cross_validate(&c, &mut |_| true).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("a-file"),
        "{e}"
    );
    // A single-class data set.
    let one = s.root.join("one-class");
    std::fs::create_dir_all(one.join("data/control")).unwrap();
    let mut meta = String::from("patient_id,bag_label\n");
    for p in 0..5 {
        let d = one.join(format!("data/control/C{p}"));
        std::fs::create_dir_all(&d).unwrap();
        image::RgbImage::from_pixel(64, 64, image::Rgb([200, 150, 160]))
            .save(d.join("image_0.png"))
            .unwrap();
        meta.push_str(&format!("C{p},control\n"));
    }
    std::fs::write(one.join("metadata.csv"), meta).unwrap();
    let mut c = cv_config(&s.root.join("bad3"), small_training());
    c.dataset = one;
    c.features = None;
    let e = cross_validate(&c, &mut |_| true).unwrap_err();
    assert!(e.to_string().contains("only one class"), "{e}");
    // Unknown keys and impossible values.
    let e = CvConfig::parse(
        r#"{"dataset": "d", "encoder": "e", "output": "o", "training": {"lr": 0.1}}"#,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("lr"), "{e}");
    let e = CvConfig::parse(
        r#"{"dataset": "d", "encoder": "e", "output": "o", "training": {"learning_rate": -1}}"#,
        false,
    )
    .unwrap_err();
    assert!(e.to_string().contains("learning_rate"), "{e}");
}

unsafe extern "C" fn count_and_cancel(
    user_data: *mut c_void,
    p: *const amlmil::ffi::amlmil_progress,
) -> i32 {
    let seen = &mut *(user_data as *mut Vec<(String, i32, i32)>);
    let p = &*p;
    seen.push((
        CStr::from_ptr(p.stage).to_string_lossy().into_owned(),
        p.epoch,
        p.fold,
    ));
    (p.epoch == 2) as i32
}

/// The C ABI runs one training call per process: tests that call it take turns.
static C_TRAINING: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn c_abi_trains_reports_progress_and_cancels() {
    use amlmil::ffi::*;
    let _turn = C_TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let json = |out: &str, epochs: u32| {
        CString::new(
            serde_json::json!({"dataset": s.cohort, "encoder": s.encoder, "features": s.features, "output": s.root.join(out),
                "seeds": [0], "device": "cpu", "training": {"cell_net": {"type": "pooled"}, "epochs": epochs}})
            .to_string(),
        )
        .unwrap()
    };
    unsafe {
        let mut report: *mut c_char = std::ptr::null_mut();
        let cfg = json("c-train", 2);
        assert_eq!(
            amlmil_train_mil(cfg.as_ptr(), 1, None, std::ptr::null_mut(), &mut report),
            amlmil_status::Ok,
            "{}",
            CStr::from_ptr(amlmil_last_error()).to_string_lossy()
        );
        let v: serde_json::Value =
            serde_json::from_str(CStr::from_ptr(report).to_str().unwrap()).unwrap();
        assert_eq!(v["fold"], 1);
        assert!(s
            .root
            .join("c-train/runs/seed0_fold1/mil.safetensors")
            .is_file());
        amlmil_string_free(report);

        let mut seen: Vec<(String, i32, i32)> = Vec::new();
        let mut untouched: *mut c_char = 0x42 as *mut c_char;
        let cfg = json("c-cancel", 5);
        let st = amlmil_cross_validate(
            cfg.as_ptr(),
            Some(count_and_cancel),
            &mut seen as *mut _ as *mut c_void,
            &mut untouched,
        );
        assert_eq!(st, amlmil_status::Cancelled);
        assert_eq!(untouched, 0x42 as *mut c_char);
        assert!(
            seen.iter()
                .any(|(stage, epoch, fold)| stage == "train" && *epoch == 1 && *fold == 0),
            "{seen:?}"
        );

        let bad = CString::new(r#"{"dataset": "x"}"#).unwrap();
        let st = amlmil_cross_validate(bad.as_ptr(), None, std::ptr::null_mut(), &mut report);
        assert_eq!(st, amlmil_status::InvalidArgument);
        assert!(CStr::from_ptr(amlmil_last_error())
            .to_string_lossy()
            .contains("encoder"));
        assert_eq!(
            amlmil_cross_validate(std::ptr::null(), None, std::ptr::null_mut(), &mut report),
            amlmil_status::NullArgument
        );
    }
}

#[test]
fn learns_a_task_carried_by_a_few_cells_and_attends_to_them() {
    // Each bag has 8 "normal" cells of pure noise; bags of class c also carry
    // 2 "abnormal" cells with a signal in channels 64c..64c+63 (class 4 = control: none).
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let make = |i: usize| {
        let label = i % 5;
        let maps = uniform(&[4, 10, 512, 1, 1], &mut rng);
        if label < 4 {
            let _ = maps
                .narrow(1, 8, 2)
                .narrow(2, label as i64 * 64, 64)
                .fill_(2.0);
        }
        TrainBag {
            patient_id: format!("p{i}"),
            label,
            cell_ids: (0..10).collect(),
            maps: maps.shallow_clone(),
        }
    };
    let bags: Vec<TrainBag> = (0..60).map(make).collect();
    let train: Vec<&TrainBag> = bags[..40].iter().collect();
    let val: Vec<&TrainBag> = bags[40..50].iter().collect();
    let test: Vec<&TrainBag> = bags[50..].iter().collect();
    let config = MilTrainConfig {
        epochs: 25,
        patience: 25,
        accumulate: 2,
        ..MilTrainConfig::paper()
    };
    for seed in [5, 6, 7] {
        let t = train_mil(
            &config,
            &head(),
            &train,
            &val,
            seed,
            Device::Cpu,
            &mut |_| true,
        )
        .unwrap();
        let (_, accuracy) = amlmil::training::mil::evaluate(&t.mil, &test, Device::Cpu).unwrap();

        assert_eq!(
            accuracy,
            1.0,
            "seed {seed}; curve: {:?}",
            t.curve
                .iter()
                .map(|r| r.validation_loss)
                .collect::<Vec<_>>()
        );
        for bag in test.iter().filter(|b| b.label < 4) {
            let out = tch::no_grad(|| t.mil.forward_bag(&bag.plain(Device::Cpu), false));
            let att = Vec::<f32>::try_from(out.attention.get(bag.label as i64)).unwrap();
            let abnormal: f32 = att[8..].iter().sum();
            assert!(
                abnormal > 0.5,
                "the two signal cells get {abnormal} of the attention in {}",
                bag.patient_id
            );
        }
    }
}

#[test]
fn feature_extraction_resumes_and_refuses_another_encoder() {
    let s = setup();
    let (ds, _) = amlmil::dataset::Dataset::open(&s.cohort, &Default::default()).unwrap();
    let dir = s.root.join("features-resume");
    let options = amlmil::features::ExtractOptions {
        flips: false,
        encoder: amlmil::SessionOptions {
            device: amlmil::DeviceSpec::Cpu,
            ..Default::default()
        },
    };
    let count = |dir: &Path| std::fs::read_dir(dir.join("patients")).unwrap().count();
    // Cancel after 3 patients, then resume: only the missing ones are encoded.
    let e =
        amlmil::features::extract_features(&ds, &s.encoder, &dir, &options, &mut |_, done, _| {
            done < 3
        })
        .unwrap_err();
    assert!(matches!(e, Error::Cancelled(_)));
    assert_eq!(count(&dir), 3);
    let first = ds.patients()[0].id.clone();
    let path = dir.join("patients").join(format!("{first}.safetensors"));
    let before = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut encoded = Vec::new();
    amlmil::features::extract_features(&ds, &s.encoder, &dir, &options, &mut |_, done, _| {
        encoded.push(done);
        true
    })
    .unwrap();
    assert_eq!(count(&dir), 25);
    assert_eq!(
        std::fs::metadata(&path).unwrap().modified().unwrap(),
        before,
        "a finished patient was encoded again"
    );
    // The cached maps equal a fresh encoding of the same cells.
    let cache = amlmil::features::FeatureCache::open(&dir, Some(&s.encoder)).unwrap();
    let f = cache.load(&first).unwrap();
    let enc = amlmil::frozen::FrozenEncoder::load(&s.encoder, &options.encoder).unwrap();
    let cells: Vec<_> = ds.patients()[0]
        .load_cells()
        .unwrap()
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    let fresh = enc
        .feature_maps(&cells, amlmil::frozen::Flip::None, &mut |_, _, _| true)
        .unwrap();
    let diff = f64::try_from((f.maps.get(0).to_kind(Kind::Float) - &fresh).abs().max()).unwrap();
    let scale = f64::try_from(fresh.abs().max()).unwrap();
    assert!(
        diff <= scale * 1e-3,
        "cached f16 maps differ by {diff} (scale {scale})"
    );
    // Another encoder may not extend or read this cache.
    let other = s.root.join("other-encoder-2.safetensors");
    common::write_encoder(&other, EncoderArch::ResNet18, 64, 77);
    let e = amlmil::features::extract_features(&ds, &other, &dir, &options, &mut |_, _, _| true)
        .unwrap_err();
    assert!(matches!(e, Error::Mismatch(_)), "{e}");
    let e = amlmil::features::FeatureCache::open(&dir, Some(&other)).unwrap_err();
    assert!(e.to_string().contains("extracted with encoder"), "{e}");
}

/// Signals the first training report, then holds the call until released.
unsafe extern "C" fn hold_training(
    user_data: *mut c_void,
    _: *const amlmil::ffi::amlmil_progress,
) -> i32 {
    use std::sync::atomic::{AtomicBool, Ordering};
    let flags = &*(user_data as *const [AtomicBool; 2]);
    if !flags[0].swap(true, Ordering::SeqCst) {
        let t = std::time::Instant::now();
        while !flags[1].load(Ordering::SeqCst) && t.elapsed().as_secs() < 60 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    0
}

#[test]
fn c_abi_refuses_a_second_training_call_and_cancels_from_another_thread() {
    use amlmil::ffi::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    let _turn = C_TRAINING.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let cfg = CString::new(
        serde_json::json!({"dataset": s.cohort, "encoder": s.encoder, "features": s.features,
            "output": s.root.join("c-busy"), "seeds": [0], "device": "cpu",
            "training": {"cell_net": {"type": "pooled"}, "epochs": 50}})
        .to_string(),
    )
    .unwrap();
    assert_eq!(amlmil_training_cancel(), 0, "nothing runs yet");
    let flags = [AtomicBool::new(false), AtomicBool::new(false)];
    let (status, second, message) = std::thread::scope(|scope| {
        let (cfg_ptr, flags_ptr) = (cfg.as_ptr() as usize, &flags as *const _ as usize);
        let first = scope.spawn(move || unsafe {
            let mut report = std::ptr::null_mut();
            let st = amlmil_cross_validate(
                cfg_ptr as *const c_char,
                Some(hold_training),
                flags_ptr as *mut c_void,
                &mut report,
            );
            (
                st,
                CStr::from_ptr(amlmil_last_error())
                    .to_string_lossy()
                    .into_owned(),
            )
        });
        let t = std::time::Instant::now();
        while !flags[0].load(Ordering::SeqCst) {
            assert!(
                t.elapsed().as_secs() < 120,
                "training never reported progress"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A second training call while the first runs: BUSY, naming the first.
        let mut report = std::ptr::null_mut();
        let second =
            unsafe { amlmil_train_mil(cfg.as_ptr(), 0, None, std::ptr::null_mut(), &mut report) };
        let message = unsafe {
            CStr::from_ptr(amlmil_last_error())
                .to_string_lossy()
                .into_owned()
        };
        assert!(report.is_null());
        assert_eq!(amlmil_training_cancel(), 1);
        flags[1].store(true, Ordering::SeqCst);
        let (st, first_message) = first.join().unwrap();
        assert!(first_message.contains("cancelled"), "{first_message}");
        (st, second, message)
    });
    assert_eq!(second, amlmil::ffi::amlmil_status::Busy, "{message}");
    assert!(
        message.contains("amlmil_cross_validate is running"),
        "{message}"
    );
    assert_eq!(status, amlmil::ffi::amlmil_status::Cancelled);
    assert_eq!(amlmil_training_cancel(), 0, "the slot is free again");
}

/// `amlmil ensemble` / `amlmil_ensemble`: the five heads of a cross-validation
/// as one checkpoint. A session with it gives the mean of the five sessions'
/// probabilities and attention; streaming bags and feature maps follow; the C
/// entry point and `model_info` report it; mismatched runs are refused.
#[test]
fn a_cross_validation_deploys_as_one_ensemble() {
    use amlmil::{Bag, DeviceSpec, Session, SessionOptions, StreamingBag};
    let s = setup();
    let out = s.root.join("cv-ensemble");
    let report = cross_validate(&cv_config(&out, small_training()), &mut |_| true).unwrap();
    let file = s.root.join("ensemble.safetensors");
    let r = amlmil::training::ensemble(&out, None, &file).unwrap();
    assert_eq!(r.heads, 5);
    let runs: Vec<String> = report
        .runs
        .iter()
        .map(|run| run.dir.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let members: Vec<&str> = r.members.iter().map(|m| m.run.as_str()).collect();
    assert_eq!(members, runs);
    let options = SessionOptions {
        device: DeviceSpec::Cpu,
        batch_size: 4,
        ..Default::default()
    };
    let ensemble = std::sync::Arc::new(Session::new(&s.encoder, &file, &options).unwrap());
    assert_eq!(ensemble.mil_manifest().head_count(), 5);
    let singles: Vec<Session> = report
        .runs
        .iter()
        .map(|run| Session::new(&s.encoder, &run.dir.join("mil.safetensors"), &options).unwrap())
        .collect();
    let cells = common::cells(9, 64, 5);
    let mut bag = Bag::new();
    for (i, c) in cells.iter().enumerate() {
        bag.add(i as u64, c.clone()).unwrap();
    }
    let e = ensemble.classify(&bag, &mut |_, _, _| true).unwrap();
    let each: Vec<_> = singles
        .iter()
        .map(|x| x.classify(&bag, &mut |_, _, _| true).unwrap())
        .collect();
    let mean = |f: &dyn Fn(&amlmil::BagPrediction) -> &Vec<f32>| -> Vec<f32> {
        (0..f(&each[0]).len())
            .map(|i| each.iter().map(|p| f(p)[i]).sum::<f32>() / 5.0)
            .collect()
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-5);
    assert!(close(&e.probabilities, &mean(&|p| &p.probabilities)));
    assert!(close(&e.attention, &mean(&|p| &p.attention)));
    assert!(close(&e.attention_raw, &mean(&|p| &p.attention_raw)));
    let softmax: Vec<f32> = {
        let z: f32 = e.logits.iter().map(|l| l.exp()).sum();
        e.logits.iter().map(|l| l.exp() / z).collect()
    };
    assert!(close(&softmax, &e.probabilities));
    // Heads that disagree: the ensemble is none of them.
    assert!(each
        .iter()
        .any(|p| !close(&p.probabilities, &e.probabilities)));
    // Streaming and feature maps go through the same K heads.
    let mut stream = StreamingBag::new(ensemble.clone()).unwrap();
    for (i, c) in cells.iter().enumerate() {
        stream.add(i as u64, c.clone()).unwrap();
    }
    let st = stream.classify(&mut |_, _, _| true).unwrap();
    assert!(close(&st.probabilities, &e.probabilities) && close(&st.attention, &e.attention));
    let maps = ensemble.feature_maps(&cells, &mut |_, _, _| true).unwrap();
    let ids: Vec<u64> = (0..9).collect();
    let f = ensemble.classify_feature_maps(&maps, &ids).unwrap();
    assert!(close(&f.probabilities, &e.probabilities));

    // The C entry point writes the same heads; bad input is named.
    let c_out = s.root.join("ensemble-c.safetensors");
    let config =
        CString::new(serde_json::json!({"cv_dir": out, "out": c_out, "seeds": [0]}).to_string())
            .unwrap();
    let mut json: *mut c_char = std::ptr::null_mut();
    let st = unsafe { amlmil::ffi::amlmil_ensemble(config.as_ptr(), &mut json) };
    assert_eq!(st, amlmil::ffi::amlmil_status::Ok);
    let text = unsafe { CStr::from_ptr(json) }.to_str().unwrap().to_owned();
    unsafe { amlmil::ffi::amlmil_string_free(json) };
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["heads"],
        5
    );
    let (_, a) = amlmil::checkpoint::Checkpoint::read_mil(&file).unwrap();
    let (_, b) = amlmil::checkpoint::Checkpoint::read_mil(&c_out).unwrap();
    assert_eq!(a.len(), b.len());
    assert_eq!(
        a.len(),
        5 * amlmil::model::MilConfig::default().num_classes as usize * 4 + 5 * 6
    );
    let bad =
        CString::new(serde_json::json!({"cv_dir": out, "out": c_out, "seed": [1]}).to_string())
            .unwrap();
    let st = unsafe { amlmil::ffi::amlmil_ensemble(bad.as_ptr(), &mut json) };
    assert_eq!(st, amlmil::ffi::amlmil_status::InvalidArgument);
    let e =
        amlmil::training::ensemble(&out, Some(&[7]), &s.root.join("none.safetensors")).unwrap_err();
    assert!(
        e.to_string().contains("no finished runs of seeds [7]"),
        "{e}"
    );

    // A run trained on another encoder file is refused, naming it.
    let other = s.root.join("cv-mixed");
    copy_dir(&out, &other);
    let record = other.join("runs/seed0_fold3/run.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    v["encoder_file_sha256"] = "0".repeat(64).into();
    std::fs::write(&record, v.to_string()).unwrap();
    let e =
        amlmil::training::ensemble(&other, None, &s.root.join("mixed.safetensors")).unwrap_err();
    assert!(
        matches!(e, Error::Mismatch(_)) && e.to_string().contains("seed0_fold3"),
        "{e}"
    );
    assert!(!s.root.join("mixed.safetensors").exists());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let p = entry.unwrap().path();
        let target = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &target);
        } else {
            std::fs::copy(&p, &target).unwrap();
        }
    }
}
