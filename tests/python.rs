//! The Python bindings (`bindings/python`): installs the package into the
//! set-up environment and runs its pytest suite from outside the source tree,
//! so the installed package is the one imported, against the freshly built
//! `libamlmil.so` and CLI.
mod common;

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn python_bindings_pass_their_tests() {
    let python = common::python();
    let package = root().join("bindings/python");
    let install = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--force-reinstall",
        ])
        .arg(&package)
        .output()
        .expect("cannot start pip");
    assert!(
        install.status.success(),
        "pip install {} failed:\n{}\n{}",
        package.display(),
        String::from_utf8_lossy(&install.stdout),
        String::from_utf8_lossy(&install.stderr)
    );

    let library = common::lib_dir().join("libamlmil.so");
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_amlmil"));
    let mut path = vec![cli.parent().unwrap().to_path_buf()];
    if let Some(old) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&old));
    }
    let work = tempfile::tempdir().unwrap();
    let out = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(package.join("tests"))
        .current_dir(work.path())
        .env("AMLMIL_LIBRARY", &library)
        .env("AMLMIL_CLI", &cli)
        .env("PATH", std::env::join_paths(path).unwrap())
        .env_remove("PYTHONPATH")
        .output()
        .expect("cannot start pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pytest bindings/python/tests failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" passed"), "{stdout}");
}
