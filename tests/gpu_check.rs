//! The GPU check's bundle and its CPU rehearsal (scripts/gpu-bundle.sh,
//! scripts/gpu-check.sh): the bundle of the test profile's build stays under
//! 40 MB, depends on no path of this machine, and starts `amlmil info` given
//! only a libtorch folder; the check, run from the bundle with `--device cpu
//! --tiny`, passes every section and writes each into results.json — so the
//! script a GPU loan runs cannot rot between loans.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::programs::{self, root};

const MAX_BUNDLE_BYTES: u64 = 40 << 20;

/// The libtorch library folder of the set-up environment.
fn libtorch_lib() -> PathBuf {
    let dir = programs::checked(Command::new(common::python()).args([
        "-c",
        "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
    ]));
    PathBuf::from(dir.trim())
}

/// One bundle for the tests of this file (cargo holds the build lock while
/// tests run: `--no-build` packs what `cargo build` made).
fn bundle() -> &'static (tempfile::TempDir, PathBuf) {
    static B: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("bundle");
        let profile = match common::lib_dir().file_name().and_then(|n| n.to_str()) {
            Some("release") => "release",
            _ => "dev",
        };
        programs::checked(
            Command::new("bash")
                .arg(root().join("scripts/gpu-bundle.sh"))
                .args(["--no-build", "--profile", profile, "--out"])
                .arg(&out),
        );
        (dir, out)
    })
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn the_bundle_is_small_self_contained_and_starts_with_only_a_libtorch_folder() {
    let (_, b) = bundle();
    let all = files(b);
    let total: u64 = all.iter().map(|p| p.metadata().unwrap().len()).sum();
    assert!(total < MAX_BUNDLE_BYTES, "bundle is {} MiB", total >> 20);
    for p in [
        "bin/amlmil",
        "bin/bag_bench",
        "bin/minimal",
        "gpu-check.sh",
        "gpu_check.py",
    ] {
        assert!(b.join(p).exists(), "{p} missing from the bundle");
    }
    assert!(b.join("python/amlmil/__init__.py").exists());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.join("BUNDLE.json")).unwrap()).unwrap();
    assert_eq!(manifest["libtorch_version"], amlmil::LIBTORCH_VERSION);
    let listed: u64 = manifest["files"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(manifest["total_bytes"].as_u64(), Some(listed));
    // No ELF in it names a folder of this machine, and the library links CUDA.
    let home = std::env::var("HOME").unwrap_or_default();
    for p in all.iter().filter(|p| {
        std::fs::read(p)
            .map(|b| b.starts_with(b"\x7fELF"))
            .unwrap_or(false)
    }) {
        let dynamic = programs::checked(Command::new("readelf").arg("-d").arg(p));
        for line in dynamic
            .lines()
            .filter(|l| l.contains("RUNPATH") || l.contains("RPATH"))
        {
            let paths = line.split('[').nth(1).unwrap_or("").trim_end_matches(']');
            for path in paths.split(':') {
                assert!(
                    path.starts_with("$ORIGIN"),
                    "{}: RUNPATH {path}",
                    p.display()
                );
            }
        }
        assert!(!dynamic.contains(&home) || home.is_empty());
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("libamlmil")
        {
            assert!(
                dynamic.contains("[libtorch_cuda.so]"),
                "not CUDA-linked:\n{dynamic}"
            );
        }
    }
    // Only a libtorch folder given: starts and reports the versions.
    let info = |lib: Option<&Path>| {
        let mut cmd = Command::new(b.join("bin/amlmil"));
        cmd.arg("info").env_clear().env("PATH", "/usr/bin:/bin");
        if let Some(lib) = lib {
            cmd.env("LD_LIBRARY_PATH", lib);
        }
        cmd.output().unwrap()
    };
    let out = info(Some(&libtorch_lib()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["libtorch_version"], amlmil::LIBTORCH_VERSION);
    assert!(v["cuda_driver"].is_object(), "{v}");
    // Without it the loader finds no libtorch: nothing points at this machine's.
    let out = info(None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error while loading shared libraries"),
        "{err}"
    );
}

#[test]
fn the_cpu_rehearsal_passes_every_section() {
    let (_, b) = bundle();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("check");
    let run = Command::new("bash")
        .arg(b.join("gpu-check.sh"))
        .args(["--device", "cpu", "--tiny", "--budget-s", "400", "--out"])
        .arg(&out)
        .arg("--python")
        .arg(common::python())
        .output()
        .unwrap();
    let results = std::fs::read_to_string(out.join("results.json")).unwrap_or_default();
    let log = std::fs::read_to_string(out.join("gpu-check.log")).unwrap_or_default();
    assert!(
        run.status.success(),
        "gpu-check failed:\n{}\n{results}\n--- log tail ---\n{}",
        String::from_utf8_lossy(&run.stderr),
        &log[log.len().saturating_sub(4000)..]
    );
    let r: serde_json::Value = serde_json::from_str(&results).unwrap();
    assert_eq!(r["passed"], true);
    for section in ["info", "training", "parity", "speed", "experiment"] {
        let s = &r["sections"][section];
        assert_eq!(s["status"], "ok", "{section}: {s}");
        assert_eq!(s["passed"], true, "{section}: {s}");
    }
    let s = &r["sections"];
    assert_eq!(s["training"]["runs"].as_array().unwrap().len(), 4);
    assert!(s["training"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|run| run["finite"] == true && run["steps_per_s"].as_f64().unwrap() > 0.0));
    let fp32 = &s["parity"]["precisions"]["fp32"];
    assert_eq!(fp32["same_class"], fp32["bags"]);
    assert!(
        fp32["four_threads_vs_serial"]["max_probability_diff"]
            .as_f64()
            .unwrap()
            <= 1e-4
    );
    assert!(
        s["speed"]["best_cells_per_s"]["resnet18_fp32"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(!s["speed"]["bag"].as_array().unwrap().is_empty());
    let table = s["experiment"]["table1"].as_array().unwrap();
    let names: Vec<&str> = table
        .iter()
        .map(|e| e["encoder"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["supervised", "simclr", "swav", "dino", "random"]);
    assert!(out.join("experiment-report.md").exists());
}
