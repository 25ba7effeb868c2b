//! ABI guard: the symbols `libamlmil.so` exports are exactly the committed list
//! `include/amlmil.symbols`, and the loaded library reports the version and ABI
//! number that `Cargo.toml` defines.
//!
//! After an intended change to the exported API (new functions only ever get
//! appended; removing one needs a new ABI number), refresh the list with
//! `AMLMIL_BLESS=1 cargo test --test abi`.
mod common;

use std::collections::BTreeSet;
use std::ffi::{c_char, CStr};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `amlmil_*` functions the built library defines in its dynamic symbol table.
fn exported() -> BTreeSet<String> {
    let lib = common::lib_dir().join("libamlmil.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("nm (binutils) is needed for the ABI guard");
    assert!(out.status.success(), "nm failed on {}", lib.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let (_addr, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
            (kind == "T" && name.starts_with("amlmil_")).then(|| name.to_owned())
        })
        .collect()
}

fn committed() -> (PathBuf, BTreeSet<String>) {
    let path = root().join("include/amlmil.symbols");
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let set = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    (path, set)
}

#[test]
fn exported_symbols_match_the_committed_list() {
    let exported = exported();
    let (path, committed) = committed();
    if std::env::var_os("AMLMIL_BLESS").is_some() {
        let mut text = String::from(
            "# Functions libamlmil.so exports (checked by tests/abi.rs; refresh with\n\
             # `AMLMIL_BLESS=1 cargo test --test abi` after an intended ABI change).\n",
        );
        for s in &exported {
            text.push_str(s);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        return;
    }
    let added: Vec<_> = exported.difference(&committed).collect();
    let removed: Vec<_> = committed.difference(&exported).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "exported C API changed: added {added:?}, removed {removed:?}; if intended, \
         refresh {} with `AMLMIL_BLESS=1 cargo test --test abi` (a removal needs a new \
         abi-version in Cargo.toml)",
        path.display()
    );
    assert!(committed.len() > 40, "symbol list suspiciously short");
}

fn cargo_toml() -> toml::Table {
    std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn loaded_library_reports_the_versions_of_cargo_toml() {
    let manifest = cargo_toml();
    let package = manifest["package"].as_table().unwrap();
    let version = package["version"].as_str().unwrap();
    let abi = package["metadata"]["amlmil"]["abi-version"]
        .as_integer()
        .unwrap();
    // SAFETY: loading our own library; the two functions take no arguments.
    unsafe {
        let lib = libloading::Library::new(common::lib_dir().join("libamlmil.so")).unwrap();
        let v: libloading::Symbol<unsafe extern "C" fn() -> *const c_char> =
            lib.get(b"amlmil_version").unwrap();
        let a: libloading::Symbol<unsafe extern "C" fn() -> u32> =
            lib.get(b"amlmil_abi_version").unwrap();
        assert_eq!(CStr::from_ptr(v()).to_str().unwrap(), version);
        assert_eq!(i64::from(a()), abi);
        // libtorch's static destructors crash on dlclose (see the header).
        std::mem::forget(lib);
    }
    let header = std::fs::read_to_string(root().join("include/amlmil.h")).unwrap();
    assert!(header.contains(&format!("#define AMLMIL_VERSION \"{version}\"")));
    assert!(header.contains(&format!("#define AMLMIL_ABI_VERSION {abi}\n")));
}
