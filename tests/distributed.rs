//! Data-parallel pre-training over c10d (Gloo over loopback), run as real
//! processes of the `amlmil` binary with the variables torchrun sets:
//!
//! * two ranks × batch 16 train as one process × batch 32, for every method,
//!   with synchronised batch norm — and, as the control that shows the
//!   comparison can fail, not with per-replica batch norm;
//! * `torchrun --nproc-per-node 2 --no-python amlmil pretrain …` writes one
//!   checkpoint that loads;
//! * a rank killed mid-epoch makes the other fail within the timeout naming
//!   it, and `--resume` (in one process) finishes the run.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;

const BIN: &str = env!("CARGO_BIN_EXE_amlmil");

struct Setup {
    _dir: tempfile::TempDir,
    cohort: PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cohort = dir.path().join("cohort");
        let cfg = amlmil::synth::CohortConfig {
            patients_per_class: 4,
            cells_min: 10,
            cells_max: 12,
            image_size: 32,
            annotated_fraction: 1.0,
            seed: 17,
            threads: 1,
            ..Default::default()
        };
        amlmil::synth::generate_cohort(&cfg, &cohort, &mut |_, _| {}).unwrap();
        Setup { _dir: dir, cohort }
    })
}

/// One launch at a time: ranks of two tests would share the 2 cores (and a
/// port picked as free could be taken in between).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A free TCP port on loopback for the store.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `world` ranks of `amlmil args…`; rank `r`'s output goes to `<log>.<r>`.
fn spawn_ranks(world: usize, args: &[String], log: &Path, timeout_s: u64) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            let out = std::fs::File::create(log.with_extension(format!("rank{r}"))).unwrap();
            Command::new(BIN)
                .args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("AMLMIL_DIST_TIMEOUT_S", timeout_s.to_string())
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(out)
                .spawn()
                .unwrap()
        })
        .collect()
}

fn log_of(log: &Path, rank: usize) -> String {
    std::fs::read_to_string(log.with_extension(format!("rank{rank}"))).unwrap_or_default()
}

/// Waits for `child` at most `limit`; kills it and fails past that.
fn wait_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pretrain_args(method: &str, out: &Path, set: &Value, epochs: u64) -> Vec<String> {
    [
        "pretrain",
        "--method",
        method,
        "--preset",
        "cpu-small",
        "--epochs",
        &epochs.to_string(),
        "--dataset",
        setup().cohort.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--set",
        &set.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Runs to the end in `world` ranks (1: one plain process; 0: one process
/// on one thread).
fn pretrain(world: usize, method: &str, out: &Path, set: &Value) {
    let args = pretrain_args(method, out, set, 1);
    if world <= 1 {
        let mut cmd = Command::new(BIN);
        if world == 0 {
            cmd.env("OMP_NUM_THREADS", "1");
        }
        common::run_ok(cmd.args(&args), method);
        return;
    }
    let log = out.with_extension("log");
    for (r, mut child) in spawn_ranks(world, &args, &log, 120).into_iter().enumerate() {
        let status = wait_within(&mut child, Duration::from_secs(600), "a rank");
        assert!(
            status.success(),
            "rank {r} of {method}: {}",
            log_of(&log, r)
        );
    }
}

/// Step losses and trained tensors (encoder and head) of a run's state.
fn state(out: &Path) -> (Vec<f64>, BTreeMap<String, tch::Tensor>) {
    let path = out.join("state.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta: Value =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["amlmil_pretrain_state"]).unwrap();
    let losses = meta["step_losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let tensors = tch::Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| k.starts_with("encoder.") || k.starts_with("head."))
        .filter(|(k, _)| !k.ends_with("num_batches_tracked"))
        .collect();
    (losses, tensors)
}

/// The largest relative difference of the step losses, and the relative
/// difference of all trained weights as one vector, ‖a − b‖ / ‖b‖.
fn differences(a: &Path, b: &Path) -> (f64, f64) {
    let (la, ta) = state(a);
    let (lb, tb) = state(b);
    assert_eq!(la.len(), lb.len());
    let loss = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (x - y).abs() / y.abs())
        .fold(0.0, f64::max);
    let (mut num, mut den) = (0.0, 0.0);
    for (k, b) in &tb {
        let a = ta[k].to_kind(tch::Kind::Double);
        let b = b.to_kind(tch::Kind::Double);
        num += (&a - &b).square().sum(tch::Kind::Double).double_value(&[]);
        den += b.square().sum(tch::Kind::Double).double_value(&[]);
    }
    (loss, (num / den).sqrt())
}

fn settings(method: &str, sync: bool) -> Value {
    let mut set = json!({
        "image_size": 32, "batch_size": 32, "steps_per_epoch": 5, "warmup_epochs": 0,
        "device": "cpu", "decode_threads": 1, "seed": 3, "sync_batch_norm": sync,
        "base_learning_rate": 1e-5,
    });
    let crops = json!({"global": {"size": 32}, "local": {"size": 16}});
    match method {
        "supervised" => set["supervised"] = json!({"crop": {"size": 32}}),
        // As in tests/ssl_training.rs: Adam's default eps turns the rounding
        // noise of gradients that are 0 in exact arithmetic into full steps.
        "dino" => {
            set["dino"] = json!({"crops": crops});
            set["adamw"] = json!({"eps": 1e-4});
        }
        m => set[m] = json!({ "crops": crops }),
    }
    set
}

#[test]
fn two_ranks_of_16_train_as_one_process_of_32() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    for method in ["simclr", "swav", "dino", "supervised"] {
        let one = dir.path().join(format!("{method}-one"));
        let two = dir.path().join(format!("{method}-two"));
        pretrain(1, method, &one, &settings(method, true));
        pretrain(2, method, &two, &settings(method, true));
        let (loss, weights) = differences(&two, &one);
        eprintln!("{method}: 2 ranks x 16 vs 1 x 32: losses {loss:.2e}, weights {weights:.2e}");
        assert!(
            loss <= 1e-5 && weights <= 1e-5,
            "{method}: {loss:.2e}, {weights:.2e}"
        );
        {
            let replica = dir.path().join(format!("{method}-replica"));
            pretrain(2, method, &replica, &settings(method, false));
            let (loss, weights) = differences(&replica, &one);
            eprintln!("{method}: per-replica batch norm: losses {loss:.2e}, weights {weights:.2e}");
            // The comparison sees a change of statistics a thousand times over.
            assert!(weights >= 1e-3, "{method}: per-replica {weights:.2e}");
        }
    }
}

/// `torchrun --standalone --nproc-per-node 2 --no-python amlmil pretrain …`:
/// torchrun's agent hosts the store; rank 0 writes one encoder, which a
/// session loads and classifies with.
#[test]
fn torchrun_launches_two_ranks_that_write_one_checkpoint() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut set = settings("simclr", false);
    set["base_learning_rate"] = json!(0.3);
    let mut cmd = Command::new(common::python());
    cmd.args([
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ])
    .args(["--no-python", BIN])
    .args(pretrain_args("simclr", &out, &set, 2))
    .env("AMLMIL_DIST_TIMEOUT_S", "120")
    .env("OMP_NUM_THREADS", "1");
    let printed = common::run_ok(&mut cmd, "torchrun");
    assert!(printed.contains("simclr encoder:"), "{printed}");
    let files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(files.iter().all(|f| !f.contains(".tmp")), "{files:?}");
    let (losses, _) = state(&out);
    assert_eq!(losses.len(), 10, "2 epochs of 5 steps");
    let mil = dir.path().join("mil.safetensors");
    let head = amlmil::model::MilConfig {
        in_side: 1,
        head: amlmil::model::CellNet::Pooled.into(),
        ..Default::default()
    };
    common::write_mil(&mil, &head, 32, 1);
    let session = amlmil::Session::new(
        &out.join("encoder.safetensors"),
        &mil,
        &amlmil::SessionOptions {
            device: amlmil::DeviceSpec::Cpu,
            ..Default::default()
        },
    )
    .unwrap();
    let mut bag = amlmil::Bag::new();
    for (i, c) in common::cells(4, 32, 3).into_iter().enumerate() {
        bag.add(i as u64, c).unwrap();
    }
    let p = session.classify(&bag, &mut |_, _, _| true).unwrap();
    assert_eq!(p.cell_ids.len(), 4);
}

/// Rank 1 killed (SIGKILL) mid-epoch: rank 0 fails within the timeout naming
/// it, leaves no half-written file, and one process resuming from the state
/// of the last finished epoch completes the run.
#[test]
fn a_killed_rank_is_named_and_the_run_resumes_in_one_process() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut set = settings("simclr", false);
    set["steps_per_epoch"] = json!(6);
    let args = pretrain_args("simclr", &out, &set, 3);
    let log = dir.path().join("kill.log");
    let timeout_s = 30;
    let mut ranks = spawn_ranks(2, &args, &log, timeout_s);
    // Wait for the first epoch's checkpoint, then kill rank 1 in the second.
    let start = Instant::now();
    while !log_of(&log, 0).contains("epoch 1/3") {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "{}",
            log_of(&log, 0)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    ranks[1].kill().unwrap();
    let killed = Instant::now();
    let _ = ranks[1].wait();
    let status = wait_within(
        &mut ranks[0],
        Duration::from_secs(timeout_s + 30),
        "rank 0 after rank 1 was killed",
    );
    let waited = killed.elapsed();
    let said = log_of(&log, 0);
    assert!(!status.success(), "{said}");
    assert!(said.contains("lost rank 1"), "{said}");
    eprintln!(
        "rank 0 stopped {:.1} s after the kill: {}",
        waited.as_secs_f64(),
        said.lines().last().unwrap_or("")
    );
    assert!(waited < Duration::from_secs(timeout_s), "{waited:?}");
    let (losses, _) = state(&out);
    assert_eq!(losses.len(), 6, "the state is the first epoch's");
    let mut resume = args.clone();
    resume.push("--resume".into());
    common::run_ok(Command::new(BIN).args(&resume), "resume");
    let (losses, _) = state(&out);
    assert_eq!(losses.len(), 18, "three epochs of 6 steps");
}

/// `amlmil cv` under two ranks: rank 0 extracts the features, the folds are
/// split between the ranks, rank 0 writes the report — the same metrics as
/// one process's cross-validation.
#[test]
fn cross_validation_runs_are_spread_over_the_ranks() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let encoder = dir.path().join("encoder.safetensors");
    common::write_encoder(&encoder, amlmil::model::EncoderArch::ResNet18, 32, 5);
    let config = |out: &Path| {
        let c = json!({
            "dataset": setup().cohort, "encoder": encoder, "output": out, "folds": 3,
            "seeds": [0], "device": "cpu", "gallery_cells": 2,
            "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 4,
                "patience": 4},
        });
        let path = out.with_extension("json");
        std::fs::write(&path, c.to_string()).unwrap();
        vec![
            "cv".to_string(),
            "--config".into(),
            path.to_string_lossy().into_owned(),
        ]
    };
    let one = dir.path().join("one");
    common::run_ok(Command::new(BIN).args(config(&one)), "cv");
    let two = dir.path().join("two");
    let log = dir.path().join("cv.log");
    for (r, mut child) in spawn_ranks(2, &config(&two), &log, 120)
        .into_iter()
        .enumerate()
    {
        let status = wait_within(&mut child, Duration::from_secs(600), "a cv rank");
        assert!(status.success(), "rank {r}: {}", log_of(&log, r));
    }
    assert!(
        log_of(&log, 1).contains("rank 1: 1 runs trained"),
        "{}",
        log_of(&log, 1)
    );
    let summary = |out: &Path| -> Value {
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap()
    };
    assert_eq!(summary(&one), summary(&two));
    for fold in 0..3 {
        let metrics = |out: &Path| {
            std::fs::read_to_string(out.join(format!("runs/seed0_fold{fold}/metrics.json")))
                .unwrap()
        };
        assert_eq!(metrics(&one), metrics(&two), "fold {fold}");
    }
}

/// The experiment is not split over ranks: under a launch it says so, naming
/// `WORLD_SIZE`, before it writes anything.
#[test]
fn the_experiment_refuses_a_launch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exp");
    let o = Command::new(BIN)
        .args(["experiment", "--preset", "quick", "--output"])
        .arg(&out)
        .env("RANK", "0")
        .env("WORLD_SIZE", "2")
        .env("LOCAL_RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", free_port().to_string())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && said.contains("`WORLD_SIZE`"),
        "{said}"
    );
    assert!(!out.exists(), "{said}");
}

/// The C ABI joins the group too: `amlmil_pretrain` called from Python (ctypes)
/// in the two workers torchrun starts trains one run, written by rank 0.
#[test]
fn the_c_abi_trains_under_torchrun() {
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut config = settings("simclr", false);
    config["method"] = json!("simclr");
    config["preset"] = json!("cpu-small");
    config["dataset"] = json!(setup().cohort);
    config["output"] = json!(out);
    config["epochs"] = json!(1);
    let script = dir.path().join("train.py");
    std::fs::write(
        &script,
        format!(
            "import json, os, amlmil\n\
             report = amlmil.pretrain(json.loads({config:?}))\n\
             print('rank', os.environ['RANK'], 'steps', report['steps_completed'])\n",
            config = config.to_string()
        ),
    )
    .unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(common::python());
    cmd.args([
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ])
    .arg(&script)
    .env("PYTHONPATH", root.join("bindings/python"))
    .env("AMLMIL_LIBRARY", common::lib_dir().join("libamlmil.so"))
    .env("AMLMIL_DIST_TIMEOUT_S", "120")
    .env("OMP_NUM_THREADS", "1");
    let printed = common::run_ok(&mut cmd, "torchrun python");
    for rank in 0..2 {
        assert!(
            printed.contains(&format!("rank {rank} steps 5")),
            "{printed}"
        );
    }
    let (losses, _) = state(&out);
    assert_eq!(losses.len(), 5);
}
