//! The C, C++ and Rust examples build against the installed header and library
//! and classify real (synthetic) bags; `libamlmil.so` exports every function the
//! header declares.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::programs::{self, assert_reports_a_class, bags, root};

fn run(program: &Path, args: &[&Path]) -> String {
    programs::checked(Command::new(program).args(args))
}

#[test]
fn c_example_classifies_a_bag() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("classify_bag");
    programs::compile(
        "cc",
        "-std=c11",
        &root().join("examples/c/classify_bag.c"),
        &exe,
        &programs::dev_flags(),
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
    programs::assert_fails_naming(
        Command::new(&exe).args([Path::new("/nonexistent.safetensors"), &f.mil, bag]),
        "AMLMIL_STATUS_IO",
        "/nonexistent.safetensors",
    );
}

#[test]
fn c_preprocessing_callback_example_normalises_and_drops_blank_cells() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("preprocess_callback");
    let mut flags = programs::dev_flags();
    flags.push("-lm".into());
    programs::compile(
        "cc",
        "-std=c11",
        &root().join("examples/c/preprocess_callback.c"),
        &exe,
        &flags,
    );
    let mut images = programs::images(&bags().1[0]);
    let blank = dir.path().join("blank.png");
    image::RgbImage::from_pixel(144, 144, image::Rgb([230, 225, 235]))
        .save(&blank)
        .unwrap();
    images.push(blank);
    let out = programs::checked(Command::new(&exe).arg(&f.encoder).arg(&f.mil).args(&images));
    assert_reports_a_class(&out);
    let n = images.len();
    assert!(
        out.contains(&format!("callback: {n} cells in 1 batches, 1 dropped")),
        "{out}"
    );
    let classified = out
        .lines()
        .find(|l| l.starts_with("cells classified:"))
        .unwrap();
    assert_eq!(classified.split_whitespace().count(), 2 + n - 1, "{out}");
    assert!(!classified.contains("blank.png"), "{out}");
}

#[test]
fn cpp_example_classifies_bags_in_parallel() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("classify_bags");
    // The example uses the header-only wrapper (bindings/cpp/amlmil.hpp).
    let mut flags = programs::dev_flags();
    flags.push("-pthread".into());
    programs::compile(
        "c++",
        "-std=c++17",
        &root().join("examples/cpp/classify_bags.cpp"),
        &exe,
        &flags,
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
