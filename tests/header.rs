//! The committed C header is exactly what cbindgen generates from `src/ffi/`, and
//! it compiles as C and C++ with `-Wall -Wextra -pedantic -Werror`.
//!
//! Regenerate after changing the ABI: `AMLMIL_BLESS=1 cargo test --test header`.
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn generate() -> String {
    let mut config =
        cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    // Both numbers are defined once, in Cargo.toml (the ABI number through build.rs).
    config.after_includes = Some(format!(
        "\n/* Version of the library this header belongs to (compare with amlmil_version()). */\n\
         #define AMLMIL_VERSION \"{}\"\n\n\
         /* ABI version of this header (compare with amlmil_abi_version()). */\n\
         #define AMLMIL_ABI_VERSION {}\n",
        amlmil::VERSION,
        amlmil::ABI_VERSION
    ));
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(root())
        .with_config(config)
        .generate()
        .expect("cbindgen failed")
        .write(&mut out);
    String::from_utf8(out).expect("utf-8 header")
}

#[test]
fn header_is_fresh() {
    let generated = generate();
    let path = root().join("include/amlmil.h");
    if std::env::var_os("AMLMIL_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/amlmil.h");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/amlmil.h is stale; regenerate with `AMLMIL_BLESS=1 cargo test --test header`"
    );
}

#[test]
fn header_declares_versions_matching_the_crate() {
    let header = std::fs::read_to_string(root().join("include/amlmil.h")).unwrap();
    assert!(
        header.contains(&format!(
            "#define AMLMIL_VERSION \"{}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "AMLMIL_VERSION macro missing or stale"
    );
    assert!(header.contains(&format!(
        "#define AMLMIL_ABI_VERSION {}",
        amlmil::ffi::AMLMIL_ABI_VERSION
    )));
}

fn compile(compiler: &str, ext: &str, std: &str) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join(format!("include_only.{ext}"));
    // The options macro takes a struct's address and a null pointer alike
    // (C's NULL, C++'s nullptr), as the function it replaces did.
    let null = if ext == "cpp" { "nullptr" } else { "NULL" };
    std::fs::write(
        &src,
        format!(
            "#include <stddef.h>\n#include \"amlmil.h\"\n\
             int main(void) {{\n\
               amlmil_session_options o;\n\
               if (amlmil_session_options_init(&o) != AMLMIL_STATUS_OK) return 2;\n\
               if (amlmil_session_options_init({null}) == AMLMIL_STATUS_OK) return 3;\n\
               return amlmil_abi_version() == AMLMIL_ABI_VERSION ? 0 : 1;\n\
             }}\n"
        ),
    )
    .unwrap();
    let out = Command::new(compiler)
        .args([
            std,
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(root().join("include"))
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} {std} rejects the header:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn header_compiles_as_c99_c11_and_cpp() {
    assert!(Path::new(&root().join("include/amlmil.h")).exists());
    compile("cc", "c", "-std=c99");
    compile("cc", "c", "-std=c11");
    compile("c++", "cpp", "-std=c++11");
    compile("c++", "cpp", "-std=c++17");
}
