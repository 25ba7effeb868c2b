//! Installing and packaging (scripts/install.sh, scripts/package.sh): the
//! installed tree builds the C++ examples with CMake (`find_package(amlmil)`)
//! and the C programs with pkg-config; the CPU-only relocatable tree, moved
//! elsewhere, runs a C program with no LD_LIBRARY_PATH and no libtorch from the
//! development environment. The scripts install the library `cargo build` made
//! (`--no-build`: cargo holds the build lock while tests run).
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::programs::{self, root};

fn abi() -> u32 {
    amlmil::ABI_VERSION
}

fn install(prefix: &Path) {
    programs::checked(
        Command::new("bash")
            .arg(root().join("scripts/install.sh"))
            .arg("--prefix")
            .arg(prefix)
            .arg("--no-build")
            .arg("--lib-dir")
            .arg(common::lib_dir()),
    );
}

fn readelf_dynamic(lib: &Path) -> String {
    programs::checked(Command::new("readelf").arg("-d").arg(lib))
}

/// The C example on a bag: reports a class and names the top cells' files.
fn assert_c_example_classifies(exe: &Path) {
    let f = common::fixture();
    let mut cmd = Command::new(exe);
    cmd.arg(&f.encoder)
        .arg(&f.mil)
        .arg(&programs::bags().1[0])
        .args(["cpu", "2"])
        .env_remove("LD_LIBRARY_PATH");
    let out = programs::checked(&mut cmd);
    programs::assert_reports_a_class(&out);
    assert!(
        out.contains("top 2 cells") && out.contains("image_"),
        "{out}"
    );
}

#[test]
fn install_layout_cmake_and_pkg_config() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    install(&prefix);
    let lib = prefix.join(format!("lib/libamlmil.so.{}", abi()));
    for p in [
        lib.clone(),
        prefix.join("include/amlmil.h"),
        prefix.join("include/amlmil.hpp"),
        prefix.join("lib/pkgconfig/amlmil.pc"),
        prefix.join("lib/cmake/amlmil/amlmilConfig.cmake"),
        prefix.join("lib/cmake/amlmil/amlmilConfigVersion.cmake"),
    ] {
        assert!(p.is_file(), "{} was not installed", p.display());
    }
    assert_eq!(
        std::fs::read_link(prefix.join("lib/libamlmil.so")).unwrap(),
        PathBuf::from(format!("libamlmil.so.{}", abi()))
    );
    assert!(
        readelf_dynamic(&lib).contains(&format!("[libamlmil.so.{}]", abi())),
        "soname"
    );

    // pkg-config: version from Cargo.toml; the minimal C program and the full C example.
    let pc = prefix.join("lib/pkgconfig");
    let pkg = |args: &[&str]| {
        programs::checked(
            Command::new("pkg-config")
                .args(args)
                .arg("amlmil")
                .env("PKG_CONFIG_PATH", &pc),
        )
    };
    assert_eq!(pkg(&["--modversion"]).trim(), env!("CARGO_PKG_VERSION"));
    let mut flags: Vec<String> = pkg(&["--cflags", "--libs"])
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    flags.push(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    let minimal = dir.path().join("minimal_c");
    programs::compile(
        "cc",
        "-std=c11",
        &root().join("examples/c/minimal.c"),
        &minimal,
        &flags,
    );
    let f = common::fixture();
    let images = programs::images(&programs::bags().1[0]);
    let out = programs::checked(
        Command::new(&minimal)
            .arg(&f.encoder)
            .arg(&f.mil)
            .args(&images),
    );
    programs::assert_reports_a_class(&out);
    programs::assert_fails_naming(
        Command::new(&minimal)
            .arg("/nonexistent/enc.safetensors")
            .arg(&f.mil)
            .arg(&images[0]),
        "AMLMIL_STATUS_IO",
        "/nonexistent/enc.safetensors",
    );
    let classify_bag = dir.path().join("classify_bag");
    programs::compile(
        "cc",
        "-std=c11",
        &root().join("examples/c/classify_bag.c"),
        &classify_bag,
        &flags,
    );
    assert_c_example_classifies(&classify_bag);

    // CMake, out of tree: find_package(amlmil) and amlmil::amlmil.
    let build = dir.path().join("build");
    programs::checked(
        Command::new("cmake")
            .arg("-S")
            .arg(root().join("examples/cpp"))
            .arg("-B")
            .arg(&build)
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg("-DCMAKE_BUILD_TYPE=Release"),
    );
    programs::checked(
        Command::new("cmake")
            .arg("--build")
            .arg(&build)
            .args(["--parallel", "2"]),
    );
    let b = &programs::bags().1;
    let out = programs::checked(
        Command::new(build.join("classify_bags"))
            .arg(&f.encoder)
            .arg(&f.mil)
            .arg(&b[0])
            .arg(&b[1]),
    );
    assert_eq!(out.matches("predicted").count(), 2, "{out}");
    programs::assert_reports_a_class(&out);
    let out = programs::checked(
        Command::new(build.join("minimal"))
            .arg(&f.encoder)
            .arg(&f.mil)
            .args(&images),
    );
    programs::assert_reports_a_class(&out);
    // The program is linked against the installed copy, not the build directory's.
    let dynamic = readelf_dynamic(&build.join("minimal"));
    assert!(
        dynamic.contains(&format!("[libamlmil.so.{}]", abi())),
        "{dynamic}"
    );
}

#[test]
fn cmake_package_refuses_an_incompatible_version() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    install(&prefix);
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    let check = |request: &str| {
        std::fs::write(
            project.join("CMakeLists.txt"),
            format!(
                "cmake_minimum_required(VERSION 3.16)\nproject(v LANGUAGES NONE)\n\
                 find_package(amlmil {request} REQUIRED)\n\
                 message(STATUS \"amlmil ${{amlmil_VERSION}} ABI ${{amlmil_ABI_VERSION}}\")\n"
            ),
        )
        .unwrap();
        let _ = std::fs::remove_dir_all(dir.path().join("b"));
        Command::new("cmake")
            .arg("-S")
            .arg(&project)
            .arg("-B")
            .arg(dir.path().join("b"))
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .output()
            .unwrap()
    };
    let (major, minor) = {
        let mut v = env!("CARGO_PKG_VERSION").split('.');
        (v.next().unwrap().to_owned(), v.next().unwrap().to_owned())
    };
    let ok = check(&format!("{major}.{minor}"));
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success()
            && stdout.contains(&format!(
                "amlmil {} ABI {}",
                env!("CARGO_PKG_VERSION"),
                abi()
            )),
        "{stdout}\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let newer_major: u32 = major.parse::<u32>().unwrap() + 1;
    let bad = check(&format!("{newer_major}.0"));
    assert!(!bad.status.success(), "a newer major version was accepted");
}

#[test]
fn cpu_package_is_relocatable_and_ships_no_libtorch_cuda() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    programs::checked(
        Command::new("bash")
            .arg(root().join("scripts/package.sh"))
            .args(["--cpu", "--stage-only", "--no-build", "--out"])
            .arg(&out)
            .arg("--lib-dir")
            .arg(common::lib_dir()),
    );
    let name = format!(
        "amlmil-{}-linux-{}-cpu",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    let staged = out.join(&name);
    assert!(staged.is_dir(), "{} missing", staged.display());
    // Move the tree: nothing may point back at the staging path or the venv.
    let moved = dir.path().join("elsewhere/amlmil");
    std::fs::create_dir_all(moved.parent().unwrap()).unwrap();
    std::fs::rename(&staged, &moved).unwrap();
    let lib = moved.join("lib");

    let libtorch = PathBuf::from(env!("AMLMIL_LIBTORCH_LIB"));
    let mut names: Vec<String> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(
        names.contains(&"libtorch_cpu.so".to_owned()) && names.contains(&"libc10.so".to_owned()),
        "{names:?}"
    );
    for n in &names {
        assert!(
            !n.starts_with("libtorch_cuda")
                && !n.starts_with("libc10_cuda")
                && !n.starts_with("libcudnn")
                && !n.starts_with("libcublas")
                && !n.starts_with("libnccl"),
            "CUDA library {n} shipped in the CPU package: {names:?}"
        );
        let dynamic = readelf_dynamic(&lib.join(n));
        assert!(
            !dynamic.contains("[libtorch_cuda.so]"),
            "{n} still needs libtorch_cuda.so"
        );
        let paths: Vec<&str> = dynamic
            .lines()
            .filter(|l| l.contains("(RUNPATH)") || l.contains("(RPATH)"))
            .collect();
        assert!(
            paths.len() == 1 && paths[0].ends_with("[$ORIGIN]"),
            "{n}: RUNPATH is not $ORIGIN only: {paths:?}"
        );
    }
    let size: u64 = names
        .iter()
        .map(|n| std::fs::metadata(lib.join(n)).unwrap().len())
        .sum();
    assert!(
        size < 1 << 30,
        "the CPU package's libraries take {size} bytes (≥ 1 GiB)"
    );

    // A program linked only with -rpath to the moved tree, without LD_LIBRARY_PATH.
    let exe = dir.path().join("classify_bag");
    programs::compile(
        "cc",
        "-std=c11",
        &root().join("examples/c/classify_bag.c"),
        &exe,
        &[
            format!("-I{}", moved.join("include").display()),
            format!("-L{}", lib.display()),
            "-lamlmil".to_owned(),
            format!("-Wl,-rpath,{}", lib.display()),
        ],
    );
    let ldd = programs::checked(Command::new("ldd").arg(&exe).env_remove("LD_LIBRARY_PATH"));
    assert!(!ldd.contains("not found"), "{ldd}");
    // By the library's name (left of `=>`): a load address such as
    // 0x00007f1ee18c1000 contains "c10" too.
    for l in ldd.lines().filter(|l| {
        let name = l.split("=>").next().unwrap_or(l);
        name.contains("torch") || name.contains("amlmil") || name.contains("c10")
    }) {
        assert!(
            l.contains(&lib.display().to_string()),
            "resolved outside the package: {l}\n{ldd}"
        );
    }
    assert!(
        !ldd.contains(&libtorch.display().to_string()),
        "the venv's libtorch is used:\n{ldd}"
    );
    assert_c_example_classifies(&exe);
}
