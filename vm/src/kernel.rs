//! A fetched kernel on disk: vmlinuz, config and modules extracted from its .debs, and the
//! modules the lab needs resolved with their dependencies.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::Command,
};

use crate::{VmError, catalog::Kernel};

/// Modules the lab loads when they are not built in: the control channel and console
/// (virtio_pci, virtio_console), pods (veth, bridge), loss injection (sch_netem), and what
/// iptables-nft needs for sidecar capture (nat REDIRECT and DNAT, the owner match) and for
/// kube-proxy's rules (statistic, comment, MARK), and socket diagnostics for `ss` (without
/// tcp_diag, ss falls back to /proc/net/tcp and prints no byte or segment counters).
pub const LAB_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_console",
    "veth",
    "bridge",
    "sch_netem",
    "inet_diag",
    "tcp_diag",
    "nf_tables",
    // iptables-nft puts a counter in every rule; built in from 5.x on, a module in 5.10.
    "nft_counter",
    "nft_compat",
    "nft_chain_nat",
    "xt_nat",
    "xt_REDIRECT",
    "xt_owner",
    "xt_tcpudp",
    "xt_statistic",
    "xt_comment",
    "xt_mark",
];

/// The extracted kernel.
#[derive(Debug, Clone)]
pub struct KernelFiles {
    pub release: String,
    pub vmlinuz: PathBuf,
    pub config: PathBuf,
    /// `.../lib/modules/<release>`
    pub modules: PathBuf,
}

/// Extracts the .debs (once; a marker records which files made the tree) and finds the parts.
pub fn extract(kernel: &Kernel, debs: &[PathBuf], cache: &Path) -> Result<KernelFiles, VmError> {
    let dir = cache.join("kernels").join(format!("{}-{}", kernel.name, kernel.release));
    let marker = dir.join(".extracted");
    let want: String = kernel.packages.iter().map(|p| format!("{}\n", p.sha256)).collect();
    if fs::read_to_string(&marker).ok().as_deref() != Some(want.as_str()) {
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(VmError::io("cannot remove", &dir))?;
        }
        fs::create_dir_all(&dir).map_err(VmError::io("cannot create", &dir))?;
        for deb in debs {
            let out = Command::new("dpkg-deb").arg("-x").arg(deb).arg(&dir).output().map_err(|e| {
                VmError::Missing {
                    what: "dpkg-deb".into(),
                    detail: format!("{e} (install the dpkg package)"),
                }
            })?;
            if !out.status.success() {
                return Err(VmError::Command {
                    command: format!("dpkg-deb -x {}", deb.display()),
                    detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        fs::write(&marker, &want).map_err(VmError::io("cannot write", &marker))?;
    }
    let find = |candidates: &[String], what: &str| {
        candidates.iter().map(|c| dir.join(c)).find(|p| p.exists()).ok_or_else(|| VmError::Broken {
            what: format!("the extracted packages of kernel {}", kernel.name),
            detail: format!(
                "no {what}: none of {candidates:?} in {} (remove it to extract again)",
                dir.display()
            ),
        })
    };
    let r = &kernel.release;
    // Debian up to trixie ships vmlinuz and config in /boot; the split packages of 7.x put them
    // next to the modules.
    Ok(KernelFiles {
        release: r.clone(),
        vmlinuz: find(&[format!("boot/vmlinuz-{r}"), format!("usr/lib/modules/{r}/vmlinuz")], "vmlinuz")?,
        config: find(&[format!("boot/config-{r}"), format!("usr/lib/modules/{r}/config")], "config")?,
        modules: find(&[format!("lib/modules/{r}"), format!("usr/lib/modules/{r}")], "modules")?,
    })
}

/// A module to put in the image, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Path relative to the modules directory, without compression suffix (the image stores it
    /// decompressed).
    pub rel: PathBuf,
    /// Where the (maybe compressed) file is.
    pub source: PathBuf,
}

/// Resolves `wanted` (module names) with their dependencies into load order, skipping those
/// built into the kernel and those the kernel does not have (`missing`).
pub fn resolve(files: &KernelFiles, wanted: &[&str]) -> Result<(Vec<Module>, Vec<String>), VmError> {
    let builtin: BTreeSet<String> = fs::read_to_string(files.modules.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Some(norm(l.rsplit('/').next()?.split('.').next()?)))
        .collect();
    let mut index = BTreeMap::new();
    walk(&files.modules.join("kernel"), &files.modules, &mut index);
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    let mut missing = Vec::new();
    for w in wanted {
        let name = norm(w);
        if builtin.contains(&name) {
            continue;
        }
        if !index.contains_key(&name) {
            missing.push(name);
            continue;
        }
        visit(&name, &index, &builtin, &mut seen, &mut order)?;
    }
    Ok((order, missing))
}

fn visit(
    name: &str,
    index: &BTreeMap<String, (PathBuf, PathBuf)>,
    builtin: &BTreeSet<String>,
    seen: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
) -> Result<(), VmError> {
    if builtin.contains(name) || !seen.insert(name.to_owned()) {
        return Ok(());
    }
    let Some((rel, source)) = index.get(name) else {
        return Err(VmError::Broken {
            what: format!("the kernel package's module {name}"),
            detail: "a module depends on it, and the package does not hold it".into(),
        });
    };
    for dep in depends(&read_module(source)?) {
        visit(&dep, index, builtin, seen, order)?;
    }
    order.push(Module { name: name.to_owned(), rel: rel.clone(), source: source.clone() });
    Ok(())
}

/// Module names use `_` and `-` interchangeably.
fn norm(s: &str) -> String {
    s.replace('-', "_")
}

fn walk(dir: &Path, root: &Path, index: &mut BTreeMap<String, (PathBuf, PathBuf)>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, root, index);
            continue;
        }
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = fname.strip_suffix(".ko.xz").or_else(|| fname.strip_suffix(".ko")) else {
            continue;
        };
        let rel = p.strip_prefix(root).expect("under root").with_file_name(format!("{stem}.ko"));
        index.insert(norm(stem), (rel, p));
    }
}

/// The module's bytes, decompressed.
pub fn read_module(path: &Path) -> Result<Vec<u8>, VmError> {
    let raw = fs::read(path).map_err(VmError::io("cannot read", path))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut raw.as_slice(), &mut out).map_err(|e| VmError::Broken {
            what: format!("module {}", path.display()),
            detail: format!("cannot decompress: {e} (remove it to have the package extracted again)"),
        })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The `depends=` entry of a module's .modinfo (NUL-separated key=value strings).
fn depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(pos) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[pos + KEY.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let mut s = String::new();
    let _ = (&rest[..end]).read_to_string(&mut s);
    s.split(',').filter(|d| !d.is_empty()).map(norm).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=stp,llc\0intree=Y\0";
        assert_eq!(depends(ko), ["stp", "llc"]);
        assert!(depends(b"\0depends=\0name=veth\0").is_empty());
        assert!(depends(b"nothing here").is_empty());
    }
}
