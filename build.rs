//! Link flags that tch's own build script cannot pass to our cdylib and binaries,
//! and the ABI version from Cargo.toml's `[package.metadata.amlmil]`.
//!
//! * `libtorch_cuda.so` is only ever reached through static initialisers, so a plain
//!   `-ltorch_cuda` is dropped by `--as-needed` linkers and CUDA silently disappears.
//!   We force it into DT_NEEDED when the libtorch in use has it (DESIGN §5).
//! * A RUNPATH of `$ORIGIN` lets a vendor ship libtorch beside `libamlmil.so`; for
//!   development builds the libtorch lib dir is added too, so nothing needs
//!   `LD_LIBRARY_PATH`. Set `AMLMIL_NO_DEV_RPATH=1` for redistributable builds.
//! * The cdylib's soname is `libamlmil.so.<ABI>`, so programs record the ABI they were
//!   linked against (`NEEDED libamlmil.so.1`) and an incompatible library is never
//!   picked up. Programs linked against the build directory then look for that name
//!   there, so a `libamlmil.so.<ABI> -> libamlmil.so` symlink is made beside it.
//! * `csrc/c10d/shim.cpp`, the C++ side of `src/distributed/` (c10d's TCPStore and
//!   ProcessGroupGloo), is compiled against the headers of the same libtorch.
use std::path::{Path, PathBuf};

fn main() {
    let abi = abi_version();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libamlmil.so.{abi}");
    soname_link(abi);
    println!("cargo:rerun-if-env-changed=AMLMIL_NO_DEV_RPATH");
    println!("cargo:rerun-if-changed=build.rs");
    // torch-sys (`links = "tch"`) publishes the lib dir it linked against.
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .expect("torch-sys did not report DEP_TCH_LIBTORCH_LIB; is LIBTORCH set?");

    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags");
    println!("cargo:rustc-link-arg=-Wl,-rpath,$ORIGIN");
    if std::env::var_os("AMLMIL_NO_DEV_RPATH").is_none() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    }
    if lib_dir.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib_dir.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
        println!("cargo:rustc-cfg=amlmil_cuda_linked");
    }
    println!("cargo::rustc-check-cfg=cfg(amlmil_cuda_linked)");
    compile_c10d_shim(&lib_dir);
    println!("cargo:rustc-env=AMLMIL_LIBTORCH_LIB={}", lib_dir.display());
    // The Python wheel records its version beside lib/ (`__version__ = '2.11.0+cu130'`),
    // a libtorch zip in `build-version`.
    let root = lib_dir.parent().unwrap_or(&lib_dir);
    let version = std::fs::read_to_string(root.join("version.py"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("__version__ = ")
                    .map(|v| v.trim_matches(['\'', '"']).to_owned())
            })
        })
        .or_else(|| {
            std::fs::read_to_string(root.join("build-version"))
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=AMLMIL_LIBTORCH_VERSION={version}");
}

/// Hands `package.metadata.amlmil.abi-version` of Cargo.toml to the crate as
/// `AMLMIL_ABI_VERSION` (the one place the ABI number is defined).
fn abi_version() -> i64 {
    println!("cargo:rerun-if-changed=Cargo.toml");
    let text = std::fs::read_to_string("Cargo.toml").expect("read Cargo.toml");
    let manifest: toml::Table = text.parse().expect("Cargo.toml is TOML");
    let abi = manifest
        .get("package")
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("amlmil"))
        .and_then(|a| a.get("abi-version"))
        .and_then(|v| v.as_integer())
        .filter(|v| (1..=i64::from(u32::MAX)).contains(v))
        .expect("Cargo.toml needs [package.metadata.amlmil] abi-version = <positive integer>");
    println!("cargo:rustc-env=AMLMIL_ABI_VERSION={abi}");
    abi
}

/// `<target>/<profile>/libamlmil.so.<ABI> -> libamlmil.so`, made before the library is
/// linked (OUT_DIR is `<target>/<profile>/build/amlmil-<hash>/out`).
fn soname_link(abi: i64) {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    let link = profile_dir.join(format!("libamlmil.so.{abi}"));
    if std::fs::read_link(&link).ok().as_deref() == Some(std::path::Path::new("libamlmil.so")) {
        return;
    }
    let _ = std::fs::remove_file(&link);
    #[cfg(unix)]
    if let Err(e) = std::os::unix::fs::symlink("libamlmil.so", &link) {
        println!("cargo:warning=cannot create {}: {e}", link.display());
    }
}

/// The c10d shim, with the libtorch headers beside `lib_dir` and the C++ ABI
/// torch-sys compiles its own wrapper with (`LIBTORCH_CXX11_ABI`, default 1).
fn compile_c10d_shim(lib_dir: &Path) {
    let root = lib_dir.parent().unwrap_or(lib_dir);
    let include = root.join("include");
    println!("cargo:rerun-if-changed=csrc/c10d");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    cc::Build::new()
        .cpp(true)
        .file("csrc/c10d/shim.cpp")
        .include("csrc/c10d")
        .flag("-isystem")
        .flag(include.display().to_string())
        .flag("-isystem")
        .flag(include.join("torch/csrc/api/include").display().to_string())
        .define("USE_C10D_GLOO", None)
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .warnings(false)
        .compile("amlmil_c10d");
}
