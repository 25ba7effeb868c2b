//! The Doxygen API reference (docs/Doxyfile over include/amlmil.h and
//! bindings/cpp/amlmil.hpp) builds without a single warning, documents the C
//! functions and the C++ classes, and the configuration really fails on a
//! documentation error.
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn api_reference_builds_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(root().join("scripts/docs.sh"))
        .arg(dir.path())
        .output()
        .expect("cannot run scripts/docs.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stdout
        .lines()
        .chain(stderr.lines())
        .filter(|l| l.contains("warning") || l.contains("error"))
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "doxygen failed or warned ({}):\n{}\n{stdout}\n{stderr}",
        out.status,
        complaints.join("\n")
    );
    let html = dir.path().join("html");
    for page in [
        "index.html",
        "amlmil_8h.html",
        "amlmil_8hpp.html",
        "classamlmil_1_1Session.html",
        "classamlmil_1_1Bag.html",
        "classamlmil_1_1Result.html",
        "classamlmil_1_1Error.html",
        "classamlmil_1_1span.html",
    ] {
        assert!(html.join(page).is_file(), "{page} was not generated");
    }
    let c = std::fs::read_to_string(html.join("amlmil_8h.html")).unwrap();
    for f in [
        "amlmil_session_classify",
        "amlmil_last_error",
        "amlmil_experiment",
    ] {
        assert!(c.contains(f), "{f} is not in the C reference");
    }
    // Placeholders of the C header's prose survive as text (docs/doxygen-filter.sh).
    assert!(c.contains("with &lt;stage&gt; one of"), "placeholder lost");
    // The wrapper's internals (amlmil::detail) stay out of the reference.
    assert!(!html.join("namespaceamlmil_1_1detail.html").exists());
}

#[test]
fn doxyfile_fails_on_a_documentation_error() {
    let dir = tempfile::tempdir().unwrap();
    let header = dir.path().join("broken.h");
    std::fs::write(
        &header,
        "/** @file broken.h\n * @brief x */\n/** f.\n * @param nosuch no such parameter\n */\nint f(int a);\n",
    )
    .unwrap();
    let mut config = std::fs::read_to_string(root().join("docs/Doxyfile")).unwrap();
    config.push_str(&format!(
        "\nINPUT = {}\nOUTPUT_DIRECTORY = {}\n",
        header.display(),
        dir.path().join("out").display()
    ));
    let mut child = Command::new("doxygen")
        .arg("-")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("doxygen is needed (scripts/setup-tools.sh)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("nosuch"),
        "a wrong @param passed:\n{stderr}"
    );
}
