//! Crash-safe training (issue 14, part 6): each training command of the CLI
//! (`pretrain`, `train-mil`, `cv`, `experiment`) is run once uninterrupted,
//! then again in a fresh output directory where the child process is killed
//! with SIGKILL at several moments, each chosen by an event (a file or a
//! temporary file appearing, the k-th progress line), and rerun as the
//! command documents resuming (`--resume` for `pretrain`, the same command
//! for the others). The last rerun must end with the uninterrupted run's
//! results: every file present in both and nothing else (no temporary file
//! left), tensors bit for bit, JSON, CSV and figures equal once timings and
//! the output path are set aside. After every kill, every file a reader can
//! see must be whole (JSON parses, safetensors and images decode).
//!
//! Moments per command (one output directory, killed again on each rerun):
//! - `pretrain` (SimCLR, 4 epochs): the first encoder checkpoint half-written;
//!   the first state half-written (its encoder complete); after epoch 2's
//!   checkpoint line; the last state half-written;
//! - `train-mil`: after 3 patients' features; at the second epoch's log line;
//!   when the run's `mil.safetensors` appears (before `run.json` says
//!   complete); when its `metrics.json` appears;
//! - `cv` (3 folds): when `features/cache.json` appears; when fold 0's
//!   `metrics.json` appears; mid-training of fold 1 (its third epoch line);
//!   when `summary.json` appears (before `report.json`);
//! - `experiment` (SimCLR and the random encoder): when the MIL cohort's
//!   `metadata.csv` appears (before its marker); after SimCLR's first epoch
//!   state; mid-training of SimCLR's second CV run; when `report.md`
//!   appears (before `report.json`).
//!
//! Run with `--nocapture` to see each kill and the time of every test.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use amlmil::model::EncoderArch;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_amlmil");
/// No single process of these tiny runs may take longer.
const PROCESS_LIMIT: Duration = Duration::from_secs(300);

/// A 15-patient cohort of 32 px cells, a random 32 px encoder and a private
/// copy of the CLI, made once.
struct Setup {
    _dir: tempfile::TempDir,
    cohort: PathBuf,
    encoder: PathBuf,
    /// The binary under test, copied so that a rebuild of the target
    /// directory during the test cannot make two runs compare two builds.
    bin: PathBuf,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cohort = dir.path().join("cohort");
        let cfg = amlmil::synth::CohortConfig {
            patients_per_class: 3,
            cells_min: 6,
            cells_max: 8,
            image_size: 32,
            annotated_fraction: 1.0,
            seed: 41,
            threads: 1,
            ..Default::default()
        };
        amlmil::synth::generate_cohort(&cfg, &cohort, &mut |_, _| {}).unwrap();
        let encoder = dir.path().join("encoder32.safetensors");
        common::write_encoder(&encoder, EncoderArch::ResNet18, 32, 5);
        let bin = dir.path().join("amlmil");
        std::fs::copy(BIN, &bin).unwrap();
        Setup {
            _dir: dir,
            cohort,
            encoder,
            bin,
        }
    })
}

/// One condition of a kill moment; a moment is a sequence of them, each
/// watched only once the one before it held.
#[derive(Debug, Clone)]
enum When {
    /// The `k`-th stderr line (1-based) containing the text, counted from the
    /// moment the previous condition held.
    Line(&'static str, usize),
    /// A file at this path under the output directory exists.
    File(&'static str),
    /// A temporary file of `write_atomic` for this path (`dir/.name.tmp-<pid>`) exists.
    Temp(&'static str),
    /// At least `k` files ending with the suffix in this directory.
    Count(&'static str, &'static str, usize),
}

impl When {
    fn holds(&self, out: &Path, lines: &[String], since: usize) -> bool {
        match *self {
            When::Line(text, k) => lines[since..].iter().filter(|l| l.contains(text)).count() >= k,
            When::File(rel) => out.join(rel).exists(),
            When::Temp(rel) => {
                let path = out.join(rel);
                let (dir, name) = (path.parent().unwrap(), path.file_name().unwrap());
                let prefix = format!(".{}.tmp-", name.to_string_lossy());
                std::fs::read_dir(dir).is_ok_and(|d| {
                    d.flatten()
                        .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                })
            }
            When::Count(rel, suffix, k) => std::fs::read_dir(out.join(rel)).is_ok_and(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
                    .count()
                    >= k
            }),
        }
    }
}

/// Runs `amlmil args` to completion (`moment` = None) or until `moment` holds,
/// then SIGKILLs it. Panics when it fails, or ends before the moment.
fn run(args: &[String], out: &Path, moment: Option<&[When]>) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(&setup().bin)
        .args(args)
        .env("RUST_LOG", "amlmil=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let (mut step, mut since) = (0, 0);
    let conditions = moment.unwrap_or(&[]);
    let status = loop {
        lines.extend(rx.try_iter());
        while moment.is_some() && step < conditions.len() {
            if !conditions[step].holds(out, &lines, since) {
                break;
            }
            step += 1;
            since = lines.len();
        }
        if moment.is_some() && step == conditions.len() {
            child.kill().unwrap(); // SIGKILL
            break child.wait().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < PROCESS_LIMIT,
            "amlmil {args:?} ran past {PROCESS_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    };
    reader.join().unwrap();
    lines.extend(rx.try_iter());
    let tail = lines[lines.len().saturating_sub(30)..].join("\n");
    match moment {
        None => assert!(status.success(), "amlmil {args:?} failed: {status}\n{tail}"),
        Some(m) => assert_eq!(
            status.signal(),
            Some(9),
            "amlmil {args:?} ended ({status}) before the moment {m:?} (reached step {step})\n{tail}"
        ),
    }
    started.elapsed()
}

/// Every regular file under `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, acc: &mut BTreeSet<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, acc);
            } else {
                acc.insert(p.strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    let mut acc = BTreeSet::new();
    if dir.exists() {
        walk(dir, dir, &mut acc);
    }
    acc
}

fn is_temp(rel: &Path) -> bool {
    let name = rel.file_name().unwrap().to_string_lossy();
    name.starts_with('.') && name.contains(".tmp-")
}

/// After a kill: every file but the temporary ones is whole. Returns the
/// number of temporary files the kill left.
fn assert_whole(out: &Path) -> usize {
    let mut temps = 0;
    for rel in files(out) {
        let path = out.join(&rel);
        if is_temp(&rel) {
            temps += 1;
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "json" => {
                serde_json::from_slice::<Value>(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not whole JSON: {e}", path.display()));
            }
            "safetensors" => {
                safetensors::SafeTensors::deserialize(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not whole: {e}", path.display()));
            }
            "png" | "tif" => {
                image::load_from_memory(&bytes)
                    .unwrap_or_else(|e| panic!("{} is not a whole image: {e}", path.display()));
            }
            "csv" => assert!(
                bytes.ends_with(b"\n"),
                "{} does not end with a full line",
                path.display()
            ),
            _ => {}
        }
    }
    temps
}

/// Keys whose values are wall times or say how this run came about, not
/// what it computed; and the checkpoint checksum, which covers the metadata
/// and so the output path (the tensors are compared directly), as do the
/// feature cache's encoder hashes (checked against the encoder file instead)
/// and an ensemble's record of each run's checkpoint checksum.
const VOLATILE: [&str; 11] = [
    "amlmil.sha256",
    "mil_sha256",
    "encoder_file_sha256",
    "key",
    "seconds",
    "images_per_second",
    "timings",
    "computed_now",
    "runs_reloaded",
    "resume",
    "resumed_at_epoch",
];

/// `v` with the volatile keys dropped and `out` written as `<OUT>`.
fn normalise(v: Value, out: &str) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.into_iter()
                .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
                .map(|(k, v)| (k, normalise(v, out)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(|v| normalise(v, out)).collect()),
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            // JSON inside a string (safetensors metadata).
            Ok(inner @ (Value::Object(_) | Value::Array(_))) => normalise(inner, out),
            _ => Value::String(s.replace(out, "<OUT>")),
        },
        other => other,
    }
}

/// Where two JSON values differ, as `path: a != b` lines (at most 10).
fn json_diff(a: &Value, b: &Value) -> String {
    fn walk(a: &Value, b: &Value, at: &str, acc: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let (va, vb) = (
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                    );
                    walk(va, vb, &format!("{at}.{k}"), acc);
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                    walk(va, vb, &format!("{at}[{i}]"), acc);
                }
            }
            _ if a != b => acc.push(format!("{at}: {a} != {b}")),
            _ => {}
        }
    }
    let mut acc = Vec::new();
    walk(a, b, "", &mut acc);
    acc.truncate(10);
    acc.join("\n")
}

/// An experiment report's text without its "Wall time" section (the lines
/// from that heading to the next, "Configuration"): seconds, and whether this
/// process or an earlier one did each stage.
fn without_wall_time(text: &str) -> String {
    let mut inside = false;
    let mut kept = Vec::new();
    for line in text.lines() {
        if line.contains("Wall time") {
            inside = true;
        } else if inside && line.contains("Configuration") {
            inside = false;
        }
        if !inside {
            kept.push(line);
        }
    }
    kept.join("\n")
}

/// A safetensors file as (tensor name → bytes, normalised metadata).
fn safetensors_content(path: &Path, out: &str) -> (BTreeMap<String, Vec<u8>>, Value) {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = serde_json::to_value(meta.metadata()).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().to_vec()))
        .collect();
    (tensors, normalise(meta, out))
}

/// The resumed run's output equals the uninterrupted one's: the same files,
/// each with the same content (see the module docs). `skip`: files whose
/// text holds timings (compared through their JSON counterpart).
fn assert_same(reference: &Path, resumed: &Path, skip: &[&str]) {
    let (a, b) = (files(reference), files(resumed));
    let leftovers: Vec<_> = b.iter().filter(|p| is_temp(p)).collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert_eq!(
        a.symmetric_difference(&b).collect::<Vec<_>>(),
        Vec::<&PathBuf>::new(),
        "files present in only one of {} and {}",
        reference.display(),
        resumed.display()
    );
    let (ra, rb) = (
        reference.to_string_lossy().into_owned(),
        resumed.to_string_lossy().into_owned(),
    );
    for rel in &a {
        let name = rel.file_name().unwrap().to_string_lossy();
        if skip.contains(&name.as_ref()) {
            continue;
        }
        let (pa, pb) = (reference.join(rel), resumed.join(rel));
        let what = rel.display();
        match rel.extension().and_then(|e| e.to_str()).unwrap_or("") {
            "safetensors" => {
                let (ta, ma) = safetensors_content(&pa, &ra);
                let (tb, mb) = safetensors_content(&pb, &rb);
                assert_eq!(
                    ta.keys().collect::<Vec<_>>(),
                    tb.keys().collect::<Vec<_>>(),
                    "{what}: tensor names"
                );
                for (name, bytes) in &ta {
                    assert!(bytes == &tb[name], "{what}: tensor `{name}` differs");
                }
                assert!(
                    ma == mb,
                    "{what}: metadata differs:\n{}",
                    json_diff(&ma, &mb)
                );
            }
            "json" => {
                let read = |p: &Path, out: &str| {
                    normalise(
                        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap(),
                        out,
                    )
                };
                let (ja, jb) = (read(&pa, &ra), read(&pb, &rb));
                assert!(ja == jb, "{what} differs:\n{}", json_diff(&ja, &jb));
            }
            "csv" | "md" | "html" | "txt" => {
                let read = |p: &Path, out: &str| {
                    without_wall_time(&std::fs::read_to_string(p).unwrap().replace(out, "<OUT>"))
                };
                let (ta, tb) = (read(&pa, &ra), read(&pb, &rb));
                let differing: Vec<_> = ta
                    .lines()
                    .zip(tb.lines())
                    .filter(|(x, y)| x != y)
                    .take(6)
                    .collect();
                assert!(ta == tb, "{what} differs: {differing:#?}");
            }
            _ => assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "{what} differs"
            ),
        }
    }
}

/// Runs `args(out)` uninterrupted into one directory, then into another with
/// a SIGKILL at each moment (rerunning with `resume_args(out)`), and compares.
/// Returns the directory holding both (`straight/`, `killed/`).
fn crash_and_resume(
    name: &str,
    args: impl Fn(&Path) -> Vec<String>,
    resume_args: impl Fn(&Path) -> Vec<String>,
    moments: &[&[When]],
    skip: &[&str],
) -> tempfile::TempDir {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (reference, crashed) = (dir.path().join("straight"), dir.path().join("killed"));
    let straight = run(&args(&reference), &reference, None);
    let mut temps_left = 0;
    for (k, moment) in moments.iter().enumerate() {
        let a = if k == 0 {
            args(&crashed)
        } else {
            resume_args(&crashed)
        };
        let t = run(&a, &crashed, Some(moment));
        let temps = assert_whole(&crashed);
        temps_left += temps;
        eprintln!(
            "{name}: kill {} at {moment:?} after {:.1} s, {temps} temporary file(s) left",
            k + 1,
            t.as_secs_f64()
        );
    }
    let last = run(&resume_args(&crashed), &crashed, None);
    assert_same(&reference, &crashed, skip);
    eprintln!(
        "{name}: uninterrupted {:.1} s, final resume {:.1} s; {} kills survived \
         ({temps_left} temporary files swept); test {:.1} s",
        straight.as_secs_f64(),
        last.as_secs_f64(),
        moments.len(),
        started.elapsed().as_secs_f64()
    );
    dir
}

fn strings(v: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<String> {
    v.iter()
        .map(|s| s.as_ref().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn pretrain_survives_sigkill() {
    let s = setup();
    let set = json!({
        "image_size": 32, "batch_size": 16, "steps_per_epoch": 3, "warmup_epochs": 0,
        "device": "cpu", "decode_threads": 1, "seed": 11, "keep_every": 2,
        "simclr": {"crops": {"global": {"size": 32}, "local": {"size": 16}}},
    })
    .to_string();
    let args = |out: &Path| {
        strings(&[
            &"pretrain",
            &"--method",
            &"simclr",
            &"--preset",
            &"cpu-small",
            &"--epochs",
            &"4",
            &"--dataset",
            &s.cohort,
            &"--output",
            &out,
            &"--set",
            &set,
        ])
    };
    let resume = |out: &Path| {
        let mut a = args(out);
        a.push("--resume".into());
        a
    };
    let _ = crash_and_resume(
        "pretrain",
        args,
        resume,
        &[
            &[When::Temp("encoder.safetensors")],
            &[When::Temp("state.safetensors")],
            &[When::Line("epoch 2/4", 1)],
            &[When::Line("epoch 3/4", 1), When::Temp("state.safetensors")],
        ],
        &[],
    );
}

/// A CV configuration file for the setup's encoder, written into `out`'s parent.
fn cv_config_file(out: &Path, folds: usize) -> PathBuf {
    let s = setup();
    let config = json!({
        "dataset": s.cohort, "encoder": s.encoder, "output": out, "folds": folds,
        "seeds": [0], "device": "cpu", "gallery_cells": 3,
        "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 6,
            "patience": 6, "accumulate": 3},
    });
    let path = out.with_extension("json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

#[test]
fn train_mil_survives_sigkill() {
    let args = |out: &Path| {
        let config = cv_config_file(out, 3);
        strings(&[&"train-mil", &"--config", &config, &"--fold", &"1"])
    };
    let _ = crash_and_resume(
        "train-mil",
        args,
        args,
        &[
            &[When::Count("features/patients", ".safetensors", 3)],
            &[When::Line("epoch 1:", 1)],
            &[When::File("runs/seed0_fold1/mil.safetensors")],
            &[When::File("runs/seed0_fold1/metrics.json")],
        ],
        &[],
    );
}

#[test]
fn cv_survives_sigkill() {
    let args = |out: &Path| {
        let config = cv_config_file(out, 3);
        strings(&[&"cv", &"--config", &config])
    };
    let _ = crash_and_resume(
        "cv",
        args,
        args,
        &[
            &[When::File("features/cache.json")],
            &[When::File("runs/seed0_fold0/metrics.json")],
            &[
                When::File("runs/seed0_fold1/run.json"),
                When::Line("epoch 2:", 1),
            ],
            &[When::File("summary.json")],
        ],
        &[],
    );
}

#[test]
fn experiment_survives_sigkill() {
    let args = |out: &Path| {
        let config = json!({
            "preset": "quick",
            "output": out,
            "cohort": {"patients_per_class": 3, "cells_min": 8, "cells_max": 10, "image_size": 32,
                "annotated_fraction": 0.5, "threads": 1},
            "pretrain_cohort": {"patients_per_class": 2, "cells_min": 10, "cells_max": 12,
                "image_size": 32, "threads": 1},
            "encoders": ["simclr", "random"],
            "pretrain": {
                "all": {"image_size": 32, "batch_size": 8, "steps_per_epoch": 2, "decode_threads": 1},
                "simclr": {"epochs": 2, "simclr": {"crops": {"global": {"size": 32}, "local": {"size": 16}}}},
                // Not trained here, but the preset's section is validated.
                "supervised": {"supervised": {"crop": {"size": 32}}},
            },
            "training": {"preset": "paper", "cell_net": {"type": "pooled"}, "epochs": 4, "patience": 4},
            "folds": 3,
            "seeds": [0],
            "gallery_cells": 3,
            "probe_cells": 40,
            "umap_cells": 40,
        });
        let path = out.with_extension("json");
        std::fs::write(&path, config.to_string()).unwrap();
        strings(&[&"experiment", &"--config", &path])
    };
    let dir = crash_and_resume(
        "experiment",
        args,
        args,
        &[
            &[When::File("cohort/metadata.csv")],
            &[When::File("encoders/simclr/state.safetensors")],
            &[
                When::File("cv/simclr/runs/seed0_fold1/run.json"),
                When::Line("epoch 1:", 1),
            ],
            &[When::File("report.md")],
        ],
        // Only wall times, in the order this run's stages ran.
        &["timings.json"],
    );
    for out in ["straight", "killed"] {
        assert_caches_match_encoders(&dir.path().join(out));
    }
}

/// The feature cache of each encoder holds that encoder's features: its
/// recorded SHA-256 is the one of the final encoder file.
fn assert_caches_match_encoders(out: &Path) {
    for name in ["simclr", "random"] {
        let cache: Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("cv/{name}/features/cache.json"))).unwrap(),
        )
        .unwrap();
        let encoder = out.join(format!("encoders/{name}/encoder.safetensors"));
        let digest = amlmil::features::file_sha256(&encoder).unwrap();
        assert_eq!(cache["encoder_file_sha256"], json!(digest), "{name}");
    }
}
