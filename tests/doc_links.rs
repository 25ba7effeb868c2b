//! Every link of the README and of `docs/` leads somewhere: a relative link
//! names a file or folder of the repository (never one outside it), and a
//! `#fragment` names a heading of its target page, with the anchors GitHub
//! gives headings. Links to the web are not fetched (the test machines reach
//! no web site).
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// GitHub's anchor of a heading's text: lower case, every character that is
/// not a letter, digit, space, `-` or `_` dropped, spaces turned into `-`.
fn slug(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// A page's headings' anchors (repeats numbered `-1`, `-2`, … as GitHub does)
/// and its links' destinations.
struct Page {
    anchors: Vec<String>,
    links: Vec<String>,
}

fn parse(markdown: &str) -> Page {
    let mut anchors = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    for event in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) => {
                if let Some(h) = heading.as_mut() {
                    h.push_str(&t);
                }
            }
            Event::End(TagEnd::Heading(_)) => {
                let base = slug(&heading.take().unwrap_or_default());
                let n = seen.entry(base.clone()).or_insert(0);
                anchors.push(if *n == 0 { base } else { format!("{base}-{n}") });
                *n += 1;
            }
            Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                links.push(dest_url.to_string())
            }
            _ => {}
        }
    }
    Page { anchors, links }
}

/// `path` with `.` and `..` resolved lexically; `None` when it climbs above
/// the first component.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// The broken links of the page at `page` (relative to `repo`), one message each.
fn broken_links(repo: &Path, page: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(repo.join(page)).unwrap();
    let parsed = parse(&text);
    let mut out = Vec::new();
    for link in &parsed.links {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (file, fragment) = match link.split_once('#') {
            Some((f, frag)) => (f, Some(frag)),
            None => (link.as_str(), None),
        };
        let target = if file.is_empty() {
            Some(page.to_path_buf())
        } else {
            normalise(&page.parent().unwrap_or(Path::new("")).join(file))
        };
        let Some(target) = target else {
            out.push(format!(
                "{}: `{link}` leads outside the repository",
                page.display()
            ));
            continue;
        };
        if !repo.join(&target).exists() {
            out.push(format!(
                "{}: `{link}`: {} does not exist",
                page.display(),
                target.display()
            ));
            continue;
        }
        if let Some(fragment) = fragment {
            let anchors = if target.extension().is_some_and(|e| e == "md") {
                parse(&std::fs::read_to_string(repo.join(&target)).unwrap()).anchors
            } else {
                Vec::new()
            };
            if !anchors.iter().any(|a| a == fragment) {
                out.push(format!(
                    "{}: `{link}`: {} has no heading with the anchor #{fragment}",
                    page.display(),
                    target.display()
                ));
            }
        }
    }
    out
}

/// README.md and every Markdown file under docs/, relative to the repository.
fn pages(repo: &Path) -> Vec<PathBuf> {
    fn walk(repo: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(repo.join(dir)).unwrap() {
            let path = dir.join(entry.unwrap().file_name());
            if repo.join(&path).is_dir() {
                walk(repo, &path, out);
            } else if path.extension().is_some_and(|e| e == "md") {
                out.push(path);
            }
        }
    }
    let mut out = vec![PathBuf::from("README.md")];
    walk(repo, Path::new("docs"), &mut out);
    out.sort();
    out
}

#[test]
fn every_link_of_the_readme_and_docs_leads_somewhere() {
    let repo = root();
    let pages = pages(&repo);
    assert!(
        pages.len() >= 8,
        "README and docs/ pages expected, found {pages:?}"
    );
    let broken: Vec<String> = pages.iter().flat_map(|p| broken_links(&repo, p)).collect();
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_page_of_docs_is_linked_from_the_readme() {
    let repo = root();
    let readme = parse(&std::fs::read_to_string(repo.join("README.md")).unwrap());
    for page in std::fs::read_dir(repo.join("docs")).unwrap() {
        let name = page.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            let link = format!("docs/{name}");
            assert!(
                readme
                    .links
                    .iter()
                    .any(|l| l.split('#').next() == Some(&link)),
                "README does not link {link}"
            );
        }
    }
}

#[test]
fn the_check_finds_each_kind_of_broken_link() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path();
    std::fs::create_dir(repo.join("docs")).unwrap();
    std::fs::write(
        repo.join("docs/a.md"),
        "# Page A\n\n## Two `words` here: (too)\n\n## Two words here: too\n\n\
         [ok](../README.md#the-top) [self](#two-words-here-too-1) [code](#two-words-here-too)\n\
         [gone](missing.md) [bad anchor](../README.md#nowhere) [out](../../x.md)\n\
         [web](https://example.org/#x) `[not a link](nowhere.md)`\n\n\
         ```\n[in code](nowhere.md)\n```\n",
    )
    .unwrap();
    std::fs::write(repo.join("README.md"), "# The top\n").unwrap();
    let broken = broken_links(repo, Path::new("docs/a.md"));
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].contains("`missing.md`") && broken[0].contains("does not exist"));
    assert!(broken[1].contains("#nowhere"));
    assert!(broken[2].contains("outside the repository"));
    assert_eq!(slug("On a GPU: the GPU check"), "on-a-gpu-the-gpu-check");
    assert_eq!(
        slug("What the monitors show about SwAV and DINO at 64 px (2026-12-07)"),
        "what-the-monitors-show-about-swav-and-dino-at-64-px-2026-12-07"
    );
}
