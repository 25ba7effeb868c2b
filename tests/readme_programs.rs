//! Every program the README or a page of `docs/` shows in full is a file the
//! tests build and run: a line `<!-- program: PATH -->` (PATH relative to the
//! repository) must be followed by a fenced code block whose content is
//! byte-identical to PATH.
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `(path, block)` for each marker in `text`.
fn programs(text: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(path) = line
            .trim()
            .strip_prefix("<!-- program:")
            .and_then(|r| r.strip_suffix("-->"))
        else {
            continue;
        };
        let block = match lines.next() {
            Some(fence) if fence.starts_with("```") => {
                let mut body = String::new();
                let mut closed = false;
                for l in lines.by_ref() {
                    if l.starts_with("```") {
                        closed = true;
                        break;
                    }
                    body.push_str(l);
                    body.push('\n');
                }
                closed.then_some(body)
            }
            _ => None,
        };
        out.push((path.trim().to_owned(), block));
    }
    out
}

#[test]
fn readme_programs_are_the_files_the_tests_run() {
    let mut pages = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(root().join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            pages.push(format!("docs/{name}"));
        }
    }
    let mut shown = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(root().join(page)).unwrap();
        for (path, block) in programs(&text) {
            let block = block.unwrap_or_else(|| {
                panic!("{page}: `<!-- program: {path} -->` is not followed by a closed ``` block")
            });
            let file = std::fs::read_to_string(root().join(&path))
                .unwrap_or_else(|e| panic!("{page} shows {path}, which cannot be read: {e}"));
            assert!(
                block == file,
                "{page}'s copy of {path} differs from the file; paste the file into the block"
            );
            shown.push(path);
        }
    }
    // The README's front door shows one program per language in full.
    for path in [
        "examples/c/minimal.c",
        "examples/cpp/minimal.cpp",
        "examples/python/classify.py",
    ] {
        assert!(shown.iter().any(|p| p == path), "no page shows {path}");
    }
}

#[test]
fn markers_are_parsed() {
    let text =
        "a\n<!-- program: x.c -->\n```c\nint main(){}\n```\n<!-- program: y.c -->\nno block\n";
    let p = programs(text);
    assert_eq!(p.len(), 2);
    assert_eq!(p[0], ("x.c".to_owned(), Some("int main(){}\n".to_owned())));
    assert_eq!(p[1].1, None);
}
