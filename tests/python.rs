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

/// The two tests run one at a time: the wheel's venvs and pip installs load
/// the two cores enough to upset the pytest suite's timed Ctrl-C test.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn python_bindings_pass_their_tests() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
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

/// `scripts/wheel.sh`'s wheel in a fresh virtual environment: pip installs it
/// with no build and no network, and `import amlmil` classifies a bag with no
/// environment variable (no `AMLMIL_LIBRARY`, no `LD_LIBRARY_PATH`). The
/// set-up environment's packages (torch, numpy) are made visible in the new
/// environment's site-packages by symbolic links, as pip would have put them
/// there; the bundled library then finds libtorch through its RUNPATH
/// (`$ORIGIN/../torch/lib`). With torch elsewhere on `sys.path` only, the
/// bindings load torch's libraries themselves.
#[test]
fn the_wheel_installs_into_a_fresh_venv_and_classifies_a_bag() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let python = common::python();
    let work = tempfile::tempdir().unwrap();
    let dist = work.path().join("dist");
    let run = common::run_ok;
    run(
        Command::new("bash")
            .arg(root().join("scripts/wheel.sh"))
            .arg("--lib-dir")
            .arg(common::lib_dir())
            .arg("--out")
            .arg(&dist),
        "scripts/wheel.sh",
    );
    let wheels: Vec<PathBuf> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(wheels.len(), 1, "{wheels:?}");
    let name = wheels[0]
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&format!("amlmil-{}-", env!("CARGO_PKG_VERSION")))
            && name.ends_with("-linux_x86_64.whl"),
        "{name}"
    );

    let site = |py: &std::path::Path| {
        let code = "import sysconfig; print(sysconfig.get_paths()['purelib'])";
        PathBuf::from(run(Command::new(py).args(["-c", code]), "python").trim())
    };
    let setup_site = site(&python);
    let venv = |dir: &str, with_setup_packages: bool| -> PathBuf {
        let venv = work.path().join(dir);
        run(
            Command::new(&python).args(["-m", "venv"]).arg(&venv),
            "python -m venv",
        );
        let py = venv.join("bin/python");
        let venv_site = site(&py);
        for entry in std::fs::read_dir(&setup_site).unwrap() {
            let entry = entry.unwrap();
            let n = entry.file_name().to_string_lossy().into_owned();
            let keep = if with_setup_packages {
                !(n.starts_with("amlmil")
                    || n.starts_with("pip")
                    || n.starts_with("setuptools")
                    || n.starts_with("_distutils_hack")
                    || n.starts_with("pkg_resources")
                    || n.ends_with(".pth"))
            } else {
                n.starts_with("numpy")
            };
            if keep && !venv_site.join(&n).exists() {
                std::os::unix::fs::symlink(entry.path(), venv_site.join(&n)).unwrap();
            }
        }
        run(
            Command::new(&py)
                .args(["-m", "pip", "install", "--quiet", "--no-deps", "--no-index"])
                .arg(&wheels[0]),
            "pip install the wheel",
        );
        let lib = venv_site.join("amlmil/libamlmil.so");
        let dynamic = run(Command::new("readelf").arg("-d").arg(&lib), "readelf");
        assert!(
            dynamic.contains("[$ORIGIN:$ORIGIN/../torch/lib]"),
            "RUNPATH of {}:\n{dynamic}",
            lib.display()
        );
        py
    };

    // Checkpoints from the CLI, a bag from the synthetic generator, both
    // through the installed package; the library and plugin it loads are the
    // wheel's.
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_amlmil"));
    let (enc, mil) = (
        work.path().join("e.safetensors"),
        work.path().join("m.safetensors"),
    );
    for (kind, out, extra) in [
        ("encoder", &enc, &[][..]),
        ("mil", &mil, &["--g", "pooled"][..]),
    ] {
        run(
            Command::new(&cli)
                .args(["init-checkpoint", kind, "--input-size", "64", "--seed", "1"])
                .args(extra)
                .arg("--out")
                .arg(out),
            "amlmil init-checkpoint",
        );
    }
    let script = format!(
        r#"
import pathlib, sys, amlmil
lib = pathlib.Path(amlmil.library_path())
assert lib.parent == pathlib.Path(amlmil.__file__).parent, lib
out = pathlib.Path(sys.argv[1]) / "cohort"
amlmil.synth_cohort(out, {{"patients_per_class": 1, "cells_min": 3, "cells_max": 4, "image_size": 64, "seed": 2}})
cells = sorted(next(p for p in (out / "data").glob("*/*") if p.is_dir()).glob("*.tif"))
opts = amlmil.SessionOptions(batch_size=2, plugin_path=lib.parent / "libamlmil_grey_world.so")
with amlmil.Session(r"{}", r"{}", options=opts) as s, amlmil.Bag() as bag:
    for i, f in enumerate(cells):
        bag.add_file(i, f)
    r = s.classify(bag)
    assert len(r.probabilities) == 5 and abs(float(r.probabilities.sum()) - 1) < 1e-5
    print("classified", len(cells), "cells:", r.predicted_class, "from", lib)
"#,
        enc.display(),
        mil.display()
    );
    let classify = |py: &PathBuf, pythonpath: Option<&std::path::Path>, dir: &str| {
        let scratch = work.path().join(dir);
        std::fs::create_dir_all(&scratch).unwrap();
        let mut cmd = Command::new(py);
        cmd.args(["-c", &script])
            .arg(&scratch)
            .current_dir(&scratch)
            .env_remove("AMLMIL_LIBRARY")
            .env_remove("LD_LIBRARY_PATH")
            .env_remove("PYTHONPATH");
        if let Some(p) = pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        run(&mut cmd, "python classifying with the installed wheel")
    };
    let beside = venv("venv", true);
    let out = classify(&beside, None, "run-beside");
    assert!(out.contains("classified"), "{out}");

    // torch (and the nvidia libraries it links) in another directory on sys.path.
    let elsewhere = venv("venv-numpy-only", false);
    let torch_dir = work.path().join("torch-elsewhere");
    std::fs::create_dir_all(&torch_dir).unwrap();
    for n in ["torch", "nvidia"] {
        if setup_site.join(n).exists() {
            std::os::unix::fs::symlink(setup_site.join(n), torch_dir.join(n)).unwrap();
        }
    }
    let out = classify(&elsewhere, Some(&torch_dir), "run-elsewhere");
    assert!(out.contains("classified"), "{out}");
}
