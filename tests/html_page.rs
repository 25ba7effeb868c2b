//! The cytologist's page (`amlmil predict --html`, src/html.rs) opened in
//! headless Chromium (Debian's `chromium`, installed by scripts/setup-tools.sh):
//! every embedded cell image decodes, the page has a section per bag with the
//! warning and the provenance, the screenshot is not blank, and Chromium
//! reports no console message.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::programs::{self, bags};

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("AMLMIL_CHROMIUM") {
        return PathBuf::from(p);
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        for name in ["chromium", "chromium-browser", "google-chrome"] {
            let p = Path::new(dir).join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!("headless Chromium is needed: run `bash scripts/setup-tools.sh` (apt's chromium) or set AMLMIL_CHROMIUM");
}

/// Headless Chromium on `url` with `args`; (stdout, stderr).
fn headless(profile: &Path, url: &str, args: &[&str]) -> (String, String) {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_page_renders_in_chromium_with_every_cell_image_decoded() {
    let f = common::fixture();
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("page.html");
    let (_, bag_dirs) = bags();
    programs::checked(
        Command::new(env!("CARGO_BIN_EXE_amlmil"))
            .args(["predict", "--device", "cpu", "--top-k", "3", "--encoder"])
            .arg(&f.encoder)
            .arg("--mil")
            .arg(&f.mil)
            .arg("--html")
            .arg(&page)
            .arg("--out")
            .arg(dir.path().join("result.json"))
            .args(bag_dirs),
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Research software") && html.contains("libamlmil"));
    let cells: usize = bag_dirs.iter().map(|d| programs::images(d).len()).sum();
    // Per bag: every cell in the grid, top 3 for each of 5 classes.
    let expected_images = cells + bag_dirs.len() * 5 * 3;

    // The page inside a wrapper whose script counts decoded images (file://
    // pages share an origin with --allow-file-access-from-files).
    let wrapper = dir.path().join("wrapper.html");
    std::fs::write(
        &wrapper,
        r#"<!DOCTYPE html><html><body><iframe id="f" src="page.html" width="1200" height="2000"></iframe>
<pre id="out">pending</pre><script>
document.getElementById("f").onload = () => {
  const d = document.getElementById("f").contentDocument;
  const imgs = Array.from(d.images);
  document.getElementById("out").textContent = JSON.stringify({
    images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    bags: d.querySelectorAll("section.bag").length,
    warning: d.querySelector(".warn") !== null,
    provenance: d.querySelector(".prov") !== null,
  });
};
</script></body></html>"#,
    )
    .unwrap();
    let profile = dir.path().join("profile");
    let (dom, _) = headless(
        &profile,
        &format!("file://{}", wrapper.display()),
        &[
            "--allow-file-access-from-files",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ],
    );
    let json = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .unwrap_or_else(|| panic!("no result in the DOM:\n{dom}"));
    let r: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(r["images"], expected_images, "{r}");
    assert_eq!(r["decoded"], expected_images, "{r}");
    assert_eq!(r["bags"], bag_dirs.len(), "{r}");
    assert_eq!(
        (r["warning"].as_bool(), r["provenance"].as_bool()),
        (Some(true), Some(true))
    );

    // The page alone: a screenshot that is not blank, and no console message.
    let shot = dir.path().join("page.png");
    let (_, log) = headless(
        &profile,
        &format!("file://{}", page.display()),
        &[
            "--window-size=1200,1600",
            &format!("--screenshot={}", shot.display()),
        ],
    );
    assert!(!log.contains("CONSOLE"), "console output:\n{log}");
    let img = image::open(&shot).unwrap().to_rgb8();
    let total = (img.width() * img.height()) as usize;
    let inked = img
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    let colours: std::collections::HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(
        inked * 50 > total,
        "{inked} of {total} pixels are not near-white"
    );
    assert!(
        colours.len() > 500,
        "{} colours: the cell images did not render",
        colours.len()
    );
}
