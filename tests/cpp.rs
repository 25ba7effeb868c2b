//! The header-only C++ wrapper (bindings/cpp/amlmil.hpp): its test program
//! (bindings/cpp/tests/wrapper_test.cpp) checks errors, moves, callbacks that
//! throw and results against the C API's; the minimal C++ program of the README
//! runs. Both compile with `-Wall -Wextra -Werror -pedantic`.
mod common;

use std::process::Command;

use common::programs::{self, root};

#[test]
fn wrapper_test_program_passes() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("wrapper_test");
    let mut flags = programs::dev_flags();
    flags.push("-pthread".into());
    programs::compile(
        "c++",
        "-std=c++17",
        &root().join("bindings/cpp/tests/wrapper_test.cpp"),
        &exe,
        &flags,
    );
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let out = Command::new(&exe)
        .arg(&f.encoder)
        .arg(&f.mil)
        .arg(&programs::bags().1[0])
        .arg(&scratch)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("all checks passed"),
        "wrapper_test failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The program really ran its checks (not just printed the last line).
    assert!(stdout.matches("ok: ").count() >= 50, "{stdout}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn minimal_cpp_program_classifies_a_bag() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("minimal");
    programs::compile(
        "c++",
        "-std=c++17",
        &root().join("examples/cpp/minimal.cpp"),
        &exe,
        &programs::dev_flags(),
    );
    let images = programs::images(&programs::bags().1[0]);
    let out = programs::checked(Command::new(&exe).arg(&f.encoder).arg(&f.mil).args(&images));
    programs::assert_reports_a_class(&out);
    assert_eq!(out.matches(" attention ").count(), 3, "{out}");
    programs::assert_fails_naming(
        Command::new(&exe)
            .arg(&f.encoder)
            .arg(&f.mil)
            .arg("/nonexistent/cell.tif"),
        "AMLMIL_STATUS_IO",
        "/nonexistent/cell.tif",
    );
    // A ViT-S/14 encoder (class-token features) with a pooled head.
    let vit = dir.path().join("vit.safetensors");
    let vit_mil = dir.path().join("vit_mil.safetensors");
    amlmil::checkpoint::write_random_encoder(&vit, amlmil::model::EncoderArch::VitS14, 56, 1)
        .unwrap();
    let config = amlmil::model::MilConfig {
        in_channels: 384,
        in_side: 1,
        head: amlmil::model::CellNet::Pooled.into(),
        ..Default::default()
    };
    common::write_mil(&vit_mil, &config, 56, 2);
    let out = programs::checked(Command::new(&exe).arg(&vit).arg(&vit_mil).args(&images));
    programs::assert_reports_a_class(&out);
}

#[test]
fn wrapper_rejects_cpp14() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("old.cpp");
    std::fs::write(&src, "#include \"amlmil.hpp\"\nint main() { return 0; }\n").unwrap();
    let out = Command::new("c++")
        .args(["-std=c++14", "-fsyntax-only"])
        .args(&programs::dev_flags()[..2])
        .arg(&src)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs C++17"),
        "{err}"
    );
}

/// Every function amlmil.h declares is called by the wrapper: a new C function
/// fails this test until amlmil.hpp wraps it.
#[test]
fn wrapper_calls_every_c_function() {
    let header = std::fs::read_to_string(root().join("include/amlmil.h")).unwrap();
    let wrapper = std::fs::read_to_string(root().join("bindings/cpp/amlmil.hpp")).unwrap();
    // Every `amlmil_<name>(` in the header: declarations and calls in comments.
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut declared: Vec<&str> = header
        .match_indices("amlmil_")
        .filter(|(at, _)| !header[..*at].ends_with(ident))
        .filter_map(|(at, _)| {
            let name_len = header[at..].find(|c: char| !ident(c))?;
            let name = &header[at..at + name_len];
            header[at + name_len..].starts_with('(').then_some(name)
        })
        .collect();
    declared.sort();
    declared.dedup();
    assert!(declared.len() > 25, "found only {declared:?}");
    let missing: Vec<&&str> = declared
        .iter()
        .filter(|f| !wrapper.contains(&format!("{f}(")))
        .collect();
    assert!(missing.is_empty(), "amlmil.hpp does not wrap {missing:?}");
}
