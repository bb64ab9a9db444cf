//! The Debian mirror: taken from the user (flag or environment) or from the machine's own apt
//! configuration. No host name is written in this repository.
use std::{fs, path::Path};

use crate::VmError;

/// Environment variable naming a mirror (e.g. a snapshot or a local proxy).
pub const MIRROR_ENV: &str = "SIDECARLESS_DEBIAN_MIRROR";

/// `flag`, else `$SIDECARLESS_DEBIAN_MIRROR`, else the first Debian archive in apt's sources.
pub fn resolve(flag: Option<&str>) -> Result<String, VmError> {
    if let Some(m) = flag.filter(|m| !m.is_empty()) {
        return Ok(m.trim_end_matches('/').to_owned());
    }
    if let Ok(m) = std::env::var(MIRROR_ENV)
        && !m.is_empty()
    {
        return Ok(m.trim_end_matches('/').to_owned());
    }
    from_apt(Path::new("/etc/apt")).ok_or(VmError::NoMirror)
}

/// The first `deb` URI in sources.list, sources.list.d/*.list and *.sources that serves the
/// main archive (not security updates, not a third-party repository).
pub fn from_apt(apt: &Path) -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(t) = fs::read_to_string(apt.join("sources.list")) {
        texts.push((false, t));
    }
    if let Ok(rd) = fs::read_dir(apt.join("sources.list.d")) {
        let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            let deb822 = f.extension().is_some_and(|e| e == "sources");
            if (deb822 || f.extension().is_some_and(|e| e == "list"))
                && let Ok(t) = fs::read_to_string(&f)
            {
                texts.push((deb822, t));
            }
        }
    }
    texts
        .iter()
        .flat_map(|(deb822, t)| if *deb822 { deb822_uris(t) } else { one_line_uris(t) })
        .find(|u| is_archive(u))
}

fn is_archive(uri: &str) -> bool {
    let u = uri.trim_end_matches('/');
    (u.starts_with("http://") || u.starts_with("https://")) && u.ends_with("/debian")
}

fn one_line_uris(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.split('#').next()?.trim();
            let rest = l.strip_prefix("deb ")?.trim_start();
            // Skip `[ options ]`.
            let rest = if rest.starts_with('[') { rest.split_once(']')?.1.trim_start() } else { rest };
            Some(rest.split_whitespace().next()?.trim_end_matches('/').to_owned())
        })
        .collect()
}

fn deb822_uris(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(':')).map(str::trim))
        };
        let is_deb = field("Types").is_none_or(|t| t.split_whitespace().any(|t| t == "deb"));
        let enabled = field("Enabled").is_none_or(|e| e != "no");
        if is_deb
            && enabled
            && let Some(uris) = field("URIs")
        {
            out.extend(uris.split_whitespace().map(|u| u.trim_end_matches('/').to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apt_dir(tag: &str, files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sidecarless-apt-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sources.list.d")).unwrap();
        for (name, text) in files {
            fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn reads_deb822_and_skips_security() {
        let dir = apt_dir(
            "deb822",
            &[(
                "sources.list.d/debian.sources",
                "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n\
             Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n",
            )],
        );
        assert_eq!(from_apt(&dir).as_deref(), Some("http://mirror.example/debian"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_one_line_format_with_options() {
        let dir = apt_dir(
            "oneline",
            &[(
                "sources.list",
                "# comment\ndeb [arch=amd64 signed-by=/k.gpg] https://other.example/debian bookworm main\n",
            )],
        );
        assert_eq!(from_apt(&dir).as_deref(), Some("https://other.example/debian"));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn nothing_usable_is_none() {
        let dir = apt_dir("none", &[("sources.list", "deb http://ppa.example/ubuntu jammy main\n")]);
        assert_eq!(from_apt(&dir), None);
        fs::remove_dir_all(dir).unwrap();
    }
}
