//! Kubernetes from Debian's source package, built once and cached.
//!
//! Debian 12 packages only kubectl from its `kubernetes` source package, but the package holds the
//! whole 1.20.2 tree with every dependency vendored, and it builds offline with Debian's Go 1.19.
//! `scripts/setup.sh` installs the tools and a deb-src entry derived from the machine's own apt
//! configuration; this module runs `apt-get source`, `make WHAT=cmd/...` for each component and
//! compiles the pause container from its C source, then keeps the binaries under
//! `~/.cache/sidecarless-lab/kubernetes/<debian version>/bin` and removes the tree.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use crate::{ClusterError, cache_dir, run};

/// What `make` builds, in build order (the API server first: it generates the code the others
/// reuse).
pub const COMPONENTS: &[&str] =
    &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"];
/// Debian's Go for this source (1.20 does not build with Go 1.20+'s stricter vet).
pub const GO_BIN: &str = "/usr/lib/go-1.19/bin";

/// A complete build.
#[derive(Debug, Clone)]
pub struct Build {
    /// Debian's version of the source package, e.g. `1.20.5+really1.20.2-1.1+deb12u1`.
    pub version: String,
    /// Upstream version the binaries report, e.g. `v1.20.2`.
    pub git_version: String,
    /// `kube-apiserver` ... `kubectl` and `pause`.
    pub bin: PathBuf,
}

impl Build {
    pub fn binary(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// The pause image's tag: the version in the source's build/pause/Makefile.
    pub fn pause_tag(&self) -> String {
        fs::read_to_string(self.bin.join("pause.tag")).map_or_else(|_| "3.4".into(), |t| t.trim().to_owned())
    }
}

/// Progress of a build, for the UI to draw.
#[derive(Debug, Clone)]
pub enum BuildEvent {
    Cached { version: String },
    Fetching { version: String },
    Component { name: String, n: usize, of: usize },
    ComponentDone { name: String, secs: f64 },
    Done { secs: f64 },
}

fn root() -> PathBuf {
    cache_dir().join("kubernetes")
}

/// The upstream version inside a Debian version: `1.20.5+really1.20.2-1.1+deb12u1` → `v1.20.2`.
pub fn git_version(debian: &str) -> String {
    let upstream = debian.split_once(':').map_or(debian, |(_, v)| v);
    let upstream = upstream.rsplit_once('-').map_or(upstream, |(u, _)| u);
    let upstream = upstream.split_once("really").map_or(upstream, |(_, u)| u);
    format!("v{upstream}")
}

fn complete(bin: &Path) -> bool {
    COMPONENTS.iter().chain(&["pause"]).all(|c| bin.join(c).is_file())
}

/// A cached build, if there is one (the newest Debian version wins).
pub fn cached() -> Option<Build> {
    let mut found: Vec<String> = fs::read_dir(root())
        .ok()?
        .flatten()
        .filter(|e| complete(&e.path().join("bin")))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let version = found.pop()?;
    Some(Build { git_version: git_version(&version), bin: root().join(&version).join("bin"), version })
}

/// The source version apt offers (the newest, when it lists several).
fn candidate() -> Result<String, ClusterError> {
    let out = Command::new("apt-cache").args(["showsrc", "kubernetes"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let mut versions: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("Version: ")).collect();
    versions.sort_by(|a, b| {
        let newer = Command::new("dpkg").args(["--compare-versions", a, "gt", b]).status();
        if newer.is_ok_and(|s| s.success()) { std::cmp::Ordering::Greater } else { std::cmp::Ordering::Less }
    });
    versions.pop().map(str::to_owned).ok_or_else(|| {
        ClusterError::Unmet(
            "apt knows no `kubernetes` source package: run scripts/setup.sh as root (it adds a deb-src entry \
             derived from this machine's apt configuration)"
                .into(),
        )
    })
}

/// The cached build, or a new one.
pub fn ensure(events: &mut dyn FnMut(BuildEvent)) -> Result<Build, ClusterError> {
    if let Some(b) = cached() {
        events(BuildEvent::Cached { version: b.version.clone() });
        return Ok(b);
    }
    for tool in ["make", "rsync", "jq", "gcc", "dpkg-source"] {
        if !crate::have(tool) {
            return Err(ClusterError::Unmet(format!("`{tool}` is missing: run scripts/setup.sh as root")));
        }
    }
    if !Path::new(GO_BIN).join("go").exists() {
        return Err(ClusterError::Unmet(format!(
            "{GO_BIN}/go is missing (golang-1.19-go): run scripts/setup.sh as root"
        )));
    }
    let t0 = Instant::now();
    let version = candidate()?;
    let dir = root().join(&version);
    let work = dir.join("work");
    let bin = dir.join("bin");
    fs::create_dir_all(&work).map_err(ClusterError::io("cannot create", &work))?;
    fs::create_dir_all(&bin).map_err(ClusterError::io("cannot create", &bin))?;
    let tree = source_tree(&work);
    if tree.is_none() {
        events(BuildEvent::Fetching { version: version.clone() });
        run(Command::new("apt-get")
            .args(["source", "-q", "--only-source", &format!("kubernetes={version}")])
            .current_dir(&work))?;
    }
    let tree = source_tree(&work).ok_or_else(|| {
        ClusterError::State(format!("apt-get source left no kubernetes-* folder in {}", work.display()))
    })?;
    let git = git_version(&version);
    let path = format!("{GO_BIN}:{}", std::env::var("PATH").unwrap_or_default());
    let log = dir.join("build.log");
    for (i, c) in COMPONENTS.iter().enumerate() {
        let out = tree.join("_output/bin").join(c);
        if bin.join(c).is_file() {
            continue;
        }
        events(BuildEvent::Component { name: (*c).to_owned(), n: i + 1, of: COMPONENTS.len() });
        let t = Instant::now();
        let logf = fs::File::create(&log).map_err(ClusterError::io("cannot create", &log))?;
        let status = Command::new("make")
            .arg(format!("WHAT=cmd/{c}"))
            .env("PATH", &path)
            .env("KUBE_GIT_VERSION", &git)
            .env("KUBE_GIT_TREE_STATE", "clean")
            .current_dir(&tree)
            .stdout(logf.try_clone().map_err(ClusterError::io("cannot write", &log))?)
            .stderr(logf)
            .status()
            .map_err(|e| ClusterError::Command {
                cmd: format!("make WHAT=cmd/{c}"),
                detail: e.to_string(),
            })?;
        if !status.success() || !out.is_file() {
            return Err(ClusterError::Command {
                cmd: format!("make WHAT=cmd/{c} (in {})", tree.display()),
                detail: format!("{status}; {} ends:\n{}", log.display(), crate::log_tail(&log, 15)),
            });
        }
        fs::copy(&out, bin.join(c)).map_err(ClusterError::io("cannot copy", &out))?;
        events(BuildEvent::ComponentDone { name: (*c).to_owned(), secs: t.elapsed().as_secs_f64() });
    }
    // The pause container: one static C program (what build/pause/Makefile compiles in Docker).
    let pause_dir = tree.join("build/pause");
    let tag = fs::read_to_string(pause_dir.join("Makefile"))
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("TAG = ").map(|t| t.trim().to_owned())))
        .unwrap_or_else(|| "3.4".into());
    run(Command::new("gcc")
        .args(["-Os", "-Wall", "-Werror", "-static", &format!("-DVERSION=v{tag}-{git}"), "-o"])
        .arg(bin.join("pause"))
        .arg(pause_dir.join("linux/pause.c")))?;
    fs::write(bin.join("pause.tag"), &tag).map_err(ClusterError::io("cannot write", &bin))?;
    // The tree (~4 GB with its build output) is not needed again; Go's build cache stays in
    // ~/.cache/go-build, which makes a rebuild of another version quicker.
    fs::remove_dir_all(&work).map_err(ClusterError::io("cannot remove", &work))?;
    events(BuildEvent::Done { secs: t0.elapsed().as_secs_f64() });
    Ok(Build { version, git_version: git, bin })
}

fn source_tree(work: &Path) -> Option<PathBuf> {
    fs::read_dir(work)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("kubernetes-") && e.path().is_dir())
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_version_of_a_debian_version() {
        assert_eq!(git_version("1.20.5+really1.20.2-1.1+deb12u1"), "v1.20.2");
        assert_eq!(git_version("1:1.28.1-2"), "v1.28.1");
        assert_eq!(git_version("1.20.2"), "v1.20.2");
    }
}
