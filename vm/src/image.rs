//! The initramfs: everything the guest runs, in one gzip'd cpio (newc), cached by content hash.
//!
//! | path | what |
//! | --- | --- |
//! | `/init` | lab-node (static musl): PID 1 and the guest agent |
//! | `/bin/workload`, `/bin/mesh-agent` | the workloads and the standalone agent (static musl) |
//! | `/bin/busybox` + applet links | a shell and the usual tools |
//! | `/usr/sbin/{ip,tc,ss,bpftool,iptables}` | the host's iproute2, bpftool and iptables-nft, with their shared libraries and iptables' extensions |
//! | `/usr/bin/<tool>` | the programs scenarios require (`[requires] tools`: redis-server, wrk, ...) found on this machine, with their shared libraries |
//! | `/boot/config-<release>` | the kernel config, for `[requires] config` |
//! | `/lib/modules/<release>/…` | the lab's modules, decompressed, and `load.list` in load order |
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use flate2::{Compression, write::GzEncoder};
use sha2::{Digest, Sha256};

use crate::{
    VmError,
    kernel::{self, KernelFiles, Module},
};

/// Static binaries built for x86_64-unknown-linux-musl that the image needs.
pub const GUEST_BINARIES: &[&str] = &["lab-node", "workload", "mesh-agent"];
/// Host tools copied in with their libraries, so `ip`, `tc`, `ss`, `bpftool` and `iptables`
/// (the nft flavour, one multi-call binary) work in the guest.
pub const HOST_TOOLS: &[&str] = &["ip", "tc", "ss", "bpftool", "xtables-nft-multi"];
/// Names under which the multi-call xtables binary answers.
const XTABLES_NAMES: &[&str] =
    &["iptables", "ip6tables", "iptables-nft", "ip6tables-nft", "iptables-restore", "iptables-nft-restore"];
/// iptables' extensions (matches, targets), loaded with dlopen, so invisible to ldd.
const XTABLES_PLUGINS: &str = "/usr/lib/x86_64-linux-gnu/xtables";

const PROFILE: &str = "export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nalias ip=/usr/sbin/ip tc=/usr/sbin/tc\n";

/// What goes into an image.
pub struct Inputs<'a> {
    /// Folder holding the static [`GUEST_BINARIES`].
    pub guest_bins: &'a Path,
    pub kernel: &'a KernelFiles,
    pub modules: &'a [Module],
    /// Programs scenarios need (`[requires] tools`), copied from this machine when it has them
    /// (a scenario whose tool is missing here skips in the guest and says which).
    pub tools: &'a [String],
}

/// A built (or cached) image.
#[derive(Debug, Clone)]
pub struct Image {
    pub path: PathBuf,
    pub hash: String,
    pub cached: bool,
}

enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

struct Entry {
    mode: u32,
    content: Content,
}

/// The tree being assembled, keyed by path without the leading `/`.
#[derive(Default)]
struct Tree(BTreeMap<String, Entry>);

impl Tree {
    fn dir(&mut self, path: &str) {
        let mut p = String::new();
        for part in path.trim_matches('/').split('/') {
            if !p.is_empty() {
                p.push('/');
            }
            p.push_str(part);
            self.0.entry(p.clone()).or_insert(Entry { mode: 0o755, content: Content::Dir });
        }
    }
    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.trim_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
    }
    fn file(&mut self, path: &str, mode: u32, bytes: Vec<u8>) {
        self.parent(path);
        self.0.insert(path.trim_matches('/').to_owned(), Entry { mode, content: Content::File(bytes) });
    }
    /// The host's program at `dest`, with the shared libraries it loads at their own paths.
    fn program(&mut self, dest: &str, host_path: &Path) -> Result<(), VmError> {
        self.file(dest, 0o755, read(host_path)?);
        for lib in shared_libraries(host_path)? {
            self.file(&lib.to_string_lossy(), 0o755, read(&lib)?);
        }
        Ok(())
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.0.insert(
            path.trim_matches('/').to_owned(),
            Entry { mode: 0o777, content: Content::Symlink(target.to_owned()) },
        );
    }
    fn hash(&self) -> String {
        let mut h = Sha256::new();
        for (path, e) in &self.0 {
            h.update(path.as_bytes());
            h.update(e.mode.to_le_bytes());
            match &e.content {
                Content::Dir => h.update(b"d"),
                Content::File(b) => {
                    h.update(b"f");
                    h.update((b.len() as u64).to_le_bytes());
                    h.update(b);
                }
                Content::Symlink(t) => {
                    h.update(b"l");
                    h.update(t.as_bytes());
                }
            }
        }
        hex::encode(h.finalize())
    }
}

/// Assembles the image's contents and writes it, unless an image with the same content hash is
/// already cached.
pub fn build(inputs: &Inputs, cache: &Path, cancel: &lab_protocol::Cancel) -> Result<Image, VmError> {
    let mut t = Tree::default();
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "run", "tmp", "root", "etc", "mnt"]
    {
        t.dir(d);
    }
    t.symlink("var/run", "/run");
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n".to_vec());
    t.file("etc/group", 0o644, b"root:x:0:\n".to_vec());
    // Debian's static busybox runs its own `ip`/`tc` applets before PATH inside sh; the login
    // shell gets the real iproute2 instead.
    t.file("etc/profile", 0o644, PROFILE.as_bytes().to_vec());

    for bin in GUEST_BINARIES {
        let src = inputs.guest_bins.join(bin);
        let bytes = fs::read(&src).map_err(|e| VmError::Missing {
            what: format!("guest binary {bin}"),
            detail: format!(
                "{}: {e} (build them: cargo build --release --target x86_64-unknown-linux-musl -p lab-node -p workloads -p mesh-agent)",
                src.display()
            ),
        })?;
        match *bin {
            "lab-node" => {
                t.file("init", 0o755, bytes);
                t.symlink("bin/lab-node", "/init");
            }
            _ => t.file(&format!("bin/{bin}"), 0o755, bytes),
        }
    }

    let busybox = which("busybox").ok_or_else(|| VmError::Missing {
        what: "busybox".into(),
        detail: "not found (install busybox-static)".into(),
    })?;
    t.file("bin/busybox", 0o755, read(&busybox)?);
    let extra: Vec<(&String, PathBuf)> = inputs
        .tools
        .iter()
        .filter(|t| !HOST_TOOLS.contains(&t.as_str()) && !XTABLES_NAMES.contains(&t.as_str()))
        .filter_map(|t| which(t).map(|p| (t, p)))
        .collect();
    for applet in busybox_applets(&busybox)? {
        if !HOST_TOOLS.contains(&applet.as_str())
            && !extra.iter().any(|(t, _)| **t == applet)
            && !XTABLES_NAMES.contains(&applet.as_str())
            && applet != "init"
            && applet != "busybox"
        {
            t.symlink(&format!("bin/{applet}"), "/bin/busybox");
        }
    }

    for tool in HOST_TOOLS {
        let path = which(tool).ok_or_else(|| VmError::Missing {
            what: (*tool).into(),
            detail: "not found on this machine (install iproute2 and bpftool)".into(),
        })?;
        t.program(&format!("usr/sbin/{tool}"), &path)?;
    }

    // Under the name asked for, whatever the host's file is called: Debian's redis-server is a
    // link to redis-check-rdb, and the program picks its role from argv[0].
    for (tool, path) in &extra {
        t.program(&format!("usr/bin/{tool}"), path)?;
    }

    for name in XTABLES_NAMES {
        t.symlink(&format!("usr/sbin/{name}"), "xtables-nft-multi");
    }
    if let Ok(rd) = fs::read_dir(XTABLES_PLUGINS) {
        for e in rd.flatten() {
            let p = e.path();
            t.file(&p.to_string_lossy(), 0o644, read(&p)?);
        }
    }
    // The config, so scenarios can check `[requires] config` in the guest.
    t.file(&format!("boot/config-{}", inputs.kernel.release), 0o644, read(&inputs.kernel.config)?);

    let base = format!("lib/modules/{}", inputs.kernel.release);
    let mut list = String::new();
    for m in inputs.modules {
        t.file(&format!("{base}/{}", m.rel.display()), 0o644, kernel::read_module(&m.source)?);
        list.push_str(&format!("{}\n", m.rel.display()));
    }
    t.file("lib/modules/load.list", 0o644, list.into_bytes());

    let hash = t.hash();
    let dir = cache.join("images");
    let path = dir.join(format!("{}.cpio.gz", &hash[..16]));
    if path.exists() {
        return Ok(Image { path, hash, cached: true });
    }
    fs::create_dir_all(&dir).map_err(VmError::io("cannot create", &dir))?;
    let part = path.with_extension("part");
    if let Err(e) = write_cpio(&t, &part, cancel) {
        let _ = fs::remove_file(&part);
        return Err(if cancel.is_cancelled() {
            VmError::Cancelled
        } else {
            VmError::io("cannot write image", &part)(e)
        });
    }
    fs::rename(&part, &path).map_err(VmError::io("cannot move into place", &path))?;
    Ok(Image { path, hash, cached: false })
}

fn write_cpio(t: &Tree, out: &Path, cancel: &lab_protocol::Cancel) -> std::io::Result<()> {
    let mut gz = GzEncoder::new(File::create(out)?, Compression::fast());
    for (ino, (path, e)) in t.0.iter().enumerate() {
        if cancel.is_cancelled() {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "cancelled"));
        }
        let (kind, nlink, data): (u32, u32, &[u8]) = match &e.content {
            Content::Dir => (0o040000, 2, &[]),
            Content::File(b) => (0o100000, 1, b),
            Content::Symlink(target) => (0o120000, 1, target.as_bytes()),
        };
        let mut w = cpio::newc::Builder::new(path)
            .ino(ino as u32 + 1)
            .mode(kind | e.mode)
            .uid(0)
            .gid(0)
            .nlink(nlink)
            .write(gz, data.len() as u32);
        w.write_all(data)?;
        gz = w.finish()?;
    }
    gz = cpio::newc::trailer(gz)?;
    gz.finish()?.sync_all()
}

fn read(path: &Path) -> Result<Vec<u8>, VmError> {
    fs::read(path).map_err(VmError::io("cannot read", path))
}

/// Finds an executable program on PATH or in the sbin folders (a non-root PATH may lack them).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    which::which_in(name, Some(format!("{path}:/usr/sbin:/sbin:/usr/bin:/bin")), "/").ok()
}

fn busybox_applets(busybox: &Path) -> Result<Vec<String>, VmError> {
    let out = Command::new(busybox).arg("--list").output().map_err(VmError::io("cannot run", busybox))?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

/// The shared libraries `ldd` says `bin` loads, the dynamic loader included.
fn shared_libraries(bin: &Path) -> Result<Vec<PathBuf>, VmError> {
    // Without the caller's LD_LIBRARY_PATH: the guest has none, so its tools must find their
    // libraries where the system keeps them. (`cargo test` puts build scripts' output folders
    // on that path, where libbpf-sys leaves a libelf.so.1 of its own; `ip` resolved there once
    // and the image carried that copy at a path the guest never searches.)
    let out = Command::new("ldd")
        .arg(bin)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .map_err(|e| VmError::Missing { what: "ldd".into(), detail: e.to_string() })?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libbpf.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn tree_adds_parents_and_hashes_content() {
        let mut a = Tree::default();
        a.file("usr/sbin/ip", 0o755, b"x".to_vec());
        assert!(a.0.contains_key("usr") && a.0.contains_key("usr/sbin"));
        let mut b = Tree::default();
        b.file("usr/sbin/ip", 0o755, b"y".to_vec());
        assert_ne!(a.hash(), b.hash());
    }
}
