//! The kernel catalog: vm/kernels.toml, compiled into the binary.
use serde::Deserialize;

use crate::VmError;

/// The catalog shipped with this build.
pub const BUILTIN: &str = include_str!("../kernels.toml");
const BUILTIN_NAME: &str = "vm/kernels.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    #[serde(rename = "kernel")]
    pub kernels: Vec<Kernel>,
}

/// One pinned kernel.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// What users type: `6.1`.
    pub name: String,
    /// Debian suite the packages come from.
    pub suite: String,
    /// `uname -r` of the kernel; names /boot/vmlinuz-<release> and /lib/modules/<release>.
    pub release: String,
    pub packages: Vec<Package>,
}

/// One .deb, pinned by path on the mirror, size and sha256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// Path below the mirror root (`pool/main/...`).
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

impl Package {
    /// File name of the .deb.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

impl Catalog {
    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN, BUILTIN_NAME).expect("the built-in catalog parses (tested)")
    }

    /// Parses catalog text; errors name `file` and the line.
    pub fn parse(text: &str, file: &str) -> Result<Catalog, VmError> {
        let cat: Catalog = toml::from_str(text).map_err(|e| VmError::Catalog {
            file: file.to_owned(),
            line: e.span().map_or(0, |s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().to_owned(),
        })?;
        for k in &cat.kernels {
            for p in &k.packages {
                if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    let line = text.lines().position(|l| l.contains(&p.sha256)).map_or(0, |i| i + 1);
                    return Err(VmError::Catalog {
                        file: file.to_owned(),
                        line,
                        message: format!("package {}: sha256 must be 64 hex digits", p.name),
                    });
                }
            }
        }
        Ok(cat)
    }

    pub fn get(&self, name: &str) -> Result<&Kernel, VmError> {
        self.kernels
            .iter()
            .find(|k| k.name == name)
            .ok_or_else(|| VmError::UnknownKernel { name: name.to_owned(), known: self.names().join(", ") })
    }

    pub fn names(&self) -> Vec<&str> {
        self.kernels.iter().map(|k| k.name.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_pins_four_kernels() {
        let c = Catalog::builtin();
        assert_eq!(c.names(), ["5.10", "6.1", "6.12", "7.2"]);
        assert_eq!(c.get("6.1").unwrap().suite, "bookworm");
        assert!(c.get("7.2").unwrap().packages.len() >= 2);
        let e = c.get("4.19").unwrap_err().to_string();
        assert!(e.contains("4.19") && e.contains("6.12"), "{e}");
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = "[[kernel]]\nname = \"x\"\nsuite = \"s\"\nrelease = \"r\"\npackages = []\ncolour = 1\n";
        let e = Catalog::parse(text, "k.toml").unwrap_err().to_string();
        assert!(e.starts_with("k.toml:6: unknown field `colour`"), "{e}");
        let text = "[[kernel]]\nname = 6\n";
        let e = Catalog::parse(text, "k.toml").unwrap_err().to_string();
        assert!(e.starts_with("k.toml:2:"), "{e}");
        let text = "[[kernel]]\nname = \"x\"\nsuite = \"s\"\nrelease = \"r\"\npackages = [\n { name = \"p\", version = \"1\", path = \"a/p.deb\", size = 1, sha256 = \"abc\" },\n]\n";
        let e = Catalog::parse(text, "k.toml").unwrap_err().to_string();
        assert!(e.starts_with("k.toml:6: package p: sha256"), "{e}");
    }
}
