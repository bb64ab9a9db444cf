//! The book shows code from the compiled sources by `{{#include path:anchor}}`. mdbook only warns
//! when an anchor is missing, so a renamed function would silently empty a chapter: this test
//! makes that a failure.
use std::{
    fs,
    path::{Path, PathBuf},
};

fn book_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src")
}

/// Every file under `dir` whose name ends in `.ext`.
fn files_ending(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_ending(&p, ext, out);
        } else if p.extension().is_some_and(|x| x == ext) {
            out.push(p);
        }
    }
}

fn markdown_files(dir: &Path, out: &mut Vec<PathBuf>) {
    files_ending(dir, "md", out);
}

#[test]
fn every_include_resolves_to_a_file_and_anchor() {
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    let mut checked = 0;
    for md in files {
        let text = fs::read_to_string(&md).unwrap();
        for (i, line) in text.lines().enumerate() {
            let Some(rest) = line.trim().strip_prefix("{{#include ") else {
                continue;
            };
            let spec = rest
                .strip_suffix("}}")
                .unwrap_or_else(|| panic!("{}:{}: unclosed include", md.display(), i + 1));
            let (path, anchor) = match spec.split_once(':') {
                Some((p, a)) => (p, Some(a)),
                None => (spec, None),
            };
            let target = md.parent().unwrap().join(path);
            let src = fs::read_to_string(&target).unwrap_or_else(|e| {
                panic!("{}:{}: cannot read {}: {e}", md.display(), i + 1, target.display())
            });
            // `path:N:M` / `path:N:` are line ranges, not anchors.
            let anchor = anchor
                .filter(|a| !a.split(':').all(|p| p.is_empty() || p.bytes().all(|b| b.is_ascii_digit())));
            if let Some(a) = anchor {
                assert!(
                    src.contains(&format!("ANCHOR: {a}")) && src.contains(&format!("ANCHOR_END: {a}")),
                    "{}:{}: anchor {a} not found in {}",
                    md.display(),
                    i + 1,
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} includes found");
}

#[test]
fn every_chapter_in_the_summary_exists() {
    let summary = fs::read_to_string(book_src().join("SUMMARY.md")).unwrap();
    for link in summary.split("](").skip(1) {
        let target = &link[..link.find(')').unwrap()];
        if !target.is_empty() {
            assert!(book_src().join(target).exists(), "SUMMARY.md links to missing {target}");
        }
    }
}

/// mdbook's id for a heading: lower case, spaces to `-`, only letters, digits, `-` and `_` kept.
fn heading_id(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The markdown outside fenced code blocks.
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn every_link_and_image_resolves() {
    assert_eq!(
        heading_id("Where it breaks: no flow control on the redirected queue"),
        "where-it-breaks-no-flow-control-on-the-redirected-queue"
    );
    let mut files = Vec::new();
    markdown_files(&book_src(), &mut files);
    let mut checked = 0;
    for md in &files {
        let text = prose(&fs::read_to_string(md).unwrap());
        for (i, piece) in text.split("](").enumerate().skip(1) {
            let Some(end) = piece.find(')') else { continue };
            let link = &piece[..end];
            if link.is_empty() || link.contains("://") || link.starts_with("mailto:") || link.contains(' ') {
                continue;
            }
            let (path, fragment) = link.split_once('#').unwrap_or((link, ""));
            let target = if path.is_empty() { md.clone() } else { md.parent().unwrap().join(path) };
            assert!(target.exists(), "{}: link #{i} to {link}: no {}", md.display(), target.display());
            if !fragment.is_empty() && target.extension().is_some_and(|x| x == "md") {
                let ids: Vec<String> = prose(&fs::read_to_string(&target).unwrap())
                    .lines()
                    .filter_map(|l| l.strip_prefix('#').map(|h| heading_id(h.trim_start_matches('#'))))
                    .collect();
                assert!(
                    ids.iter().any(|id| id == fragment),
                    "{}: link to {link}: no heading #{fragment} in {}",
                    md.display(),
                    target.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} links found");
}

/// The values of `attr="..."` in an HTML page.
fn attribute_values<'a>(html: &'a str, attr: &str) -> Vec<&'a str> {
    let key = format!(" {attr}=\"");
    html.match_indices(&key)
        .filter_map(|(i, _)| {
            let rest = &html[i + key.len()..];
            rest.find('"').map(|end| &rest[..end])
        })
        .collect()
}

/// The rendered book, as a reader gets it: every link and image of every page resolves to a
/// file of the build, and every `#fragment` to an id on the target page. Checking the markdown
/// is not enough: an included file's links are resolved relative to the chapter that includes
/// it, which is how both latency charts once went missing from the rendered book.
#[test]
fn the_built_book_has_no_broken_link_and_no_missing_image() {
    let out = std::env::temp_dir().join(format!("slab-book-{}", std::process::id()));
    let book = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book");
    let status = std::process::Command::new("mdbook")
        .arg("build")
        .arg(&book)
        .arg("--dest-dir")
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("mdbook: {e} (scripts/setup.sh installs it)"));
    assert!(status.success(), "mdbook build failed");
    let mut pages = Vec::new();
    files_ending(&out, "html", &mut pages);
    let mut broken = Vec::new();
    let (mut links, mut images) = (0, 0);
    for page in &pages {
        let name = page.file_name().unwrap().to_string_lossy();
        // print.html rewrites every chapter onto one page; 404.html and toc.html are mdbook's own.
        if ["print.html", "404.html", "toc.html"].contains(&name.as_ref()) {
            continue;
        }
        let html = fs::read_to_string(page).unwrap();
        for (attr, value) in attribute_values(&html, "href")
            .into_iter()
            .map(|v| ("href", v))
            .chain(attribute_values(&html, "src").into_iter().map(|v| ("src", v)))
        {
            if value.contains("://") || value.starts_with("mailto:") || value.starts_with("javascript:") {
                continue;
            }
            let value = value.split('?').next().unwrap();
            let (path, fragment) = value.split_once('#').unwrap_or((value, ""));
            let target = if path.is_empty() { page.clone() } else { page.parent().unwrap().join(path) };
            let shown = page.strip_prefix(&out).unwrap().display().to_string();
            if !target.is_file() {
                broken.push(format!("{shown}: {attr}=\"{value}\": no such file"));
                continue;
            }
            if !fragment.is_empty() && target.extension().is_some_and(|x| x == "html") {
                let text = fs::read_to_string(&target).unwrap();
                if !text.contains(&format!("id=\"{fragment}\"")) {
                    broken.push(format!("{shown}: {attr}=\"{value}\": no id {fragment} there"));
                }
            }
            if attr == "src" && std::path::Path::new(path).extension().is_some_and(|e| e == "svg") {
                images += 1;
            } else {
                links += 1;
            }
        }
    }
    let _ = fs::remove_dir_all(&out);
    assert!(broken.is_empty(), "{} broken:\n{}", broken.len(), broken.join("\n"));
    assert!(links >= 100 && images >= 5, "only {links} links and {images} images checked");
}
