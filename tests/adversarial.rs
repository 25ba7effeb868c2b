//! The adversarial C ABI suite (tests/adversarial/adversarial.c): every
//! exported function with NULLs, zero and huge sizes, overflowing strides and
//! dimensions, decompression bombs, bad checkpoints and options, bags of 0, 1
//! and 100,000 cells, and misbehaving callbacks, each checked for its
//! documented status. Built with AddressSanitizer against `libamlmil.so`, and
//! run again (its quick part) under valgrind's memcheck, which also sees
//! inside the library and libtorch where ASan's instrumentation does not.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use amlmil::model::{CellNet, EncoderArch, MilConfig};
use common::programs::{self, root};

/// A 64 px encoder and head, in `dir`.
fn models(dir: &Path) -> (PathBuf, PathBuf) {
    let (enc, mil) = (dir.join("enc.safetensors"), dir.join("mil.safetensors"));
    common::write_encoder(&enc, EncoderArch::ResNet18, 64, 5);
    let config = MilConfig {
        in_side: 2,
        head: CellNet::Pooled.into(),
        ..Default::default()
    };
    common::write_mil(&mil, &config, 64, 6);
    (enc, mil)
}

/// Compiles the suite with `extra` flags (warnings are errors).
fn build(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let exe = dir.join(name);
    let mut flags: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    flags.extend(programs::dev_flags());
    flags.push("-lm".into());
    programs::compile(
        "cc",
        "-std=c11",
        &root().join("tests/adversarial/adversarial.c"),
        &exe,
        &flags,
    );
    exe
}

/// Runs the suite; returns how many calls it checked.
fn run(cmd: &mut Command) -> usize {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("adversarial: "))
        .unwrap_or_else(|| panic!("no summary in:\n{stdout}\n{stderr}"));
    assert!(line.ends_with(", 0 failed"), "{line}");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn every_bad_call_returns_its_status_under_address_sanitizer() {
    let dir = tempfile::tempdir().unwrap();
    let (enc, mil) = models(dir.path());
    let exe = build(
        dir.path(),
        "adversarial_asan",
        &["-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    );
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // libtorch's own allocations at exit are not ours to report (detect_leaks
    // would flag its static caches); every other ASan check stays on, and an
    // ASan error fails the run.
    let calls = run(Command::new(&exe).args([&enc, &mil, &scratch]).env(
        "ASAN_OPTIONS",
        "detect_leaks=0:abort_on_error=0:exitcode=86",
    ));
    assert!(calls >= 250, "only {calls} calls checked");
    eprintln!("adversarial suite: {calls} calls under AddressSanitizer");
}

#[test]
fn quick_bad_calls_are_clean_under_valgrind() {
    // About 5 minutes on 2 cores (libtorch under memcheck); `AMLMIL_VALGRIND=0`
    // skips it for a quick local run.
    if std::env::var_os("AMLMIL_VALGRIND").is_some_and(|v| v == "0") {
        eprintln!("skipped: AMLMIL_VALGRIND=0");
        return;
    }
    if Command::new("valgrind").arg("--version").output().is_err() {
        panic!("valgrind is not installed (scripts/setup-tools.sh installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (enc, mil) = models(dir.path());
    let exe = build(dir.path(), "adversarial", &["-g"]);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    // Invalid reads and writes, bad frees and overlaps are errors; leaks at
    // exit (libtorch's static caches) and undefined-value tracking (too slow
    // through libtorch's vectorised kernels) are off. The suppressions name
    // the dynamic loader's own false positive, nothing of ours.
    let calls = run(Command::new("valgrind")
        .args([
            "--tool=memcheck",
            "--error-exitcode=87",
            "--errors-for-leak-kinds=none",
            "--undef-value-errors=no",
            "-q",
        ])
        .arg(format!(
            "--suppressions={}",
            root().join("tests/adversarial/valgrind.supp").display()
        ))
        .arg(&exe)
        .args([&enc, &mil, &scratch])
        .arg("quick"));
    assert!(calls >= 150, "only {calls} calls checked");
    eprintln!("adversarial suite: {calls} calls under valgrind");
}
