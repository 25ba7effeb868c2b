//! The C, C++ and Rust examples build against the installed header and library
//! and classify real (synthetic) bags; `libamlmil.so` exports every function the
//! header declares.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Two small synthetic patients (bag folders), made once.
fn bags() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
    static B: OnceLock<(tempfile::TempDir, Vec<PathBuf>)> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let cfg = amlmil::synth::CohortConfig {
            patients_per_class: 1,
            cells_min: 6,
            cells_max: 8,
            image_size: 144,
            seed: 3,
            ..Default::default()
        };
        let out = dir.path().join("cohort");
        let summary = amlmil::synth::generate_cohort(&cfg, &out, &mut |_, _| {}).unwrap();
        let bags = summary
            .patients
            .iter()
            .take(2)
            .map(|p| out.join("data").join(p.bag_label).join(&p.patient_id))
            .collect();
        (dir, bags)
    })
}

fn build(compiler: &str, std: &str, source: &Path, out: &Path, extra: &[&str]) {
    let lib = common::lib_dir();
    let status = Command::new(compiler)
        .args([std, "-Wall", "-Wextra", "-Werror", "-I"])
        .arg(root().join("include"))
        .arg(source)
        .arg("-o")
        .arg(out)
        .arg(format!("-L{}", lib.display()))
        .arg("-lamlmil")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        status.status.success(),
        "{compiler} failed on {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&status.stderr)
    );
}

fn run(program: &Path, args: &[&Path]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}\n{}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn assert_reports_a_class(output: &str) {
    assert!(
        amlmil::classes::BAG_LABELS
            .iter()
            .any(|l| output.contains(&format!("predicted: {l}"))
                || output.contains(&format!("predicted {l}"))),
        "no prediction in:\n{output}"
    );
}

#[test]
fn c_example_classifies_a_bag() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("classify_bag");
    build(
        "cc",
        "-std=c11",
        &root().join("examples/c/classify_bag.c"),
        &exe,
        &["-pedantic"],
    );
    let bag = &bags().1[0];
    let out = run(
        &exe,
        &[&f.encoder, &f.mil, bag, Path::new("cpu"), Path::new("3")],
    );
    assert_reports_a_class(&out);
    assert!(out.contains("top 3 cells"), "{out}");
    assert!(
        out.contains("image_"),
        "ranked cells are named by file:\n{out}"
    );
    // Errors reach the user as a status name and a message naming the file.
    let bad = Command::new(&exe)
        .args([Path::new("/nonexistent.safetensors"), &f.mil, bag])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("AMLMIL_STATUS_IO") && err.contains("/nonexistent.safetensors"),
        "{err}"
    );
}

#[test]
fn cpp_example_classifies_bags_in_parallel() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("classify_bags");
    // The example uses the header-only wrapper (bindings/cpp/amlmil.hpp).
    let wrapper = format!("-I{}", root().join("bindings/cpp").display());
    build(
        "c++",
        "-std=c++17",
        &root().join("examples/cpp/classify_bags.cpp"),
        &exe,
        &["-pedantic", "-pthread", &wrapper],
    );
    let b = &bags().1;
    let out = run(&exe, &[&f.encoder, &f.mil, &b[0], &b[1]]);
    assert_eq!(out.matches("predicted").count(), 2, "{out}");
    assert_reports_a_class(&out);
}

#[test]
fn rust_example_classifies_a_bag() {
    let f = common::fixture();
    let exe = common::lib_dir().join("examples/classify");
    assert!(
        exe.exists(),
        "{} is missing: `cargo test` (all targets) or `cargo build --examples` builds it",
        exe.display()
    );
    let out = run(&exe, &[&f.encoder, &f.mil, &bags().1[0], Path::new("cpu")]);
    assert_reports_a_class(&out);
}

#[test]
fn library_exports_every_function_the_header_declares() {
    let header = std::fs::read_to_string(root().join("include/amlmil.h")).unwrap();
    let mut names: Vec<&str> = header
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("amlmil_"))
        .collect();
    names.sort();
    names.dedup();
    let functions: Vec<&str> = names
        .into_iter()
        .filter(|n| header.contains(&format!("{n}(")))
        .collect();
    assert!(functions.len() > 25, "found only {functions:?}");
    // SAFETY: loading our own library; it is never unloaded (libtorch must not be dlclose'd).
    let lib = unsafe { libloading::Library::new(common::lib_dir().join("libamlmil.so")) }.unwrap();
    for f in &functions {
        let sym: Result<libloading::Symbol<unsafe extern "C" fn()>, _> =
            unsafe { lib.get(f.as_bytes()) };
        assert!(
            sym.is_ok(),
            "libamlmil.so does not export `{f}` declared in amlmil.h"
        );
    }
    let version: libloading::Symbol<unsafe extern "C" fn() -> *const std::ffi::c_char> =
        unsafe { lib.get(b"amlmil_version") }.unwrap();
    let v = unsafe { std::ffi::CStr::from_ptr(version()) };
    assert_eq!(v.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    std::mem::forget(lib);
}

#[test]
fn library_links_libtorch_cuda_and_has_a_runpath() {
    let out = Command::new("readelf")
        .arg("-d")
        .arg(common::lib_dir().join("libamlmil.so"))
        .output();
    let Ok(out) = out else {
        panic!("readelf (binutils) is needed for this test");
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("RUNPATH") && text.contains("$ORIGIN"),
        "{text}"
    );
    let lib = PathBuf::from(env!("AMLMIL_LIBTORCH_LIB"));
    if lib.join("libtorch_cuda.so").exists() {
        assert!(
            text.contains("[libtorch_cuda.so]"),
            "libtorch_cuda.so is not NEEDED:\n{text}"
        );
    }
}
