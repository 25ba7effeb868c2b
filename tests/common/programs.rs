//! Building and running the C and C++ programs of the example, wrapper and
//! packaging tests.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Small synthetic patients (bag folders of 6–8 cells at 144 px), made once per test binary.
pub fn bags() -> &'static (tempfile::TempDir, Vec<PathBuf>) {
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

/// The cell images of a bag folder, sorted.
pub fn images(bag: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(bag)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tif"))
        .collect();
    files.sort();
    files
}

/// Runs a command (compiler, cmake, a script); panics with its output on failure.
pub fn checked(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Compiles `source` with `compiler` and the warning flags every example must pass.
pub fn compile(compiler: &str, std: &str, source: &Path, out: &Path, extra: &[String]) {
    checked(
        Command::new(compiler)
            .args([std, "-Wall", "-Wextra", "-Werror", "-pedantic"])
            .arg(source)
            .arg("-o")
            .arg(out)
            .args(extra),
    );
}

/// Flags to build against the development tree: headers from include/ and
/// bindings/cpp/, `libamlmil.so` from the build directory.
pub fn dev_flags() -> Vec<String> {
    let lib = super::lib_dir();
    vec![
        format!("-I{}", root().join("include").display()),
        format!("-I{}", root().join("bindings/cpp").display()),
        format!("-L{}", lib.display()),
        "-lamlmil".to_owned(),
        format!("-Wl,-rpath,{}", lib.display()),
    ]
}

pub fn assert_reports_a_class(output: &str) {
    assert!(
        amlmil::classes::BAG_LABELS
            .iter()
            .any(|l| output.contains(&format!("predicted: {l}"))
                || output.contains(&format!("predicted {l}"))),
        "no prediction in:\n{output}"
    );
}

/// Runs a program that must fail with `status` (its name, e.g.
/// `AMLMIL_STATUS_IO`) and a message naming `needle` on stderr.
pub fn assert_fails_naming(cmd: &mut Command, status: &str, needle: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(status) && err.contains(needle),
        "{cmd:?} should fail with {status} naming {needle}:\n{err}"
    );
}
