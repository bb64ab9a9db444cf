//! Finding and removing what labs left behind when their owner died (SIGKILL, a crash, a
//! power cut): network namespaces, cgroup subtrees with their processes, bpffs pins.
use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use mesh_agent::mounts::{self, BPFFS};
use serde::Serialize;

use crate::{
    LabError, LabId, cgroup,
    lab::{NETNS_PREFIX, RUN_DIR},
    netns,
};

/// One thing a dead lab left behind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Leftover {
    Netns { name: String },
    Cgroup { path: PathBuf },
    Pins { path: PathBuf },
    Files { path: PathBuf },
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Leftover::Netns { name } => write!(f, "network namespace {name}"),
            Leftover::Cgroup { path } => write!(f, "cgroup {}", path.display()),
            Leftover::Pins { path } => write!(f, "bpffs pins {}", path.display()),
            Leftover::Files { path } => write!(f, "lab files {}", path.display()),
        }
    }
}

/// Everything of labs whose owner process is gone. Labs of live owners are left alone.
pub fn leftovers() -> Vec<Leftover> {
    let mut out = BTreeSet::new();
    for name in netns::list() {
        if let Some(id) = name.strip_prefix(NETNS_PREFIX).and_then(lab_id_of_netns)
            && !id.owner_alive()
        {
            out.insert(Leftover::Netns { name });
        }
    }
    if let Some(root) = mounts::cgroup2_root() {
        let shared = root.join(cgroup::LABS_DIR);
        for path in dead_lab_dirs(&shared) {
            out.insert(Leftover::Cgroup { path });
        }
        // The shared parent too, once no live lab uses it.
        if shared.exists() && live_lab_dirs(&shared) == 0 {
            out.insert(Leftover::Cgroup { path: shared });
        }
    }
    let files = Path::new(RUN_DIR);
    for path in dead_lab_dirs(files) {
        out.insert(Leftover::Files { path });
    }
    if files.exists() && live_lab_dirs(files) == 0 {
        out.insert(Leftover::Files { path: files.to_owned() });
    }
    let shared = Path::new(BPFFS).join(cgroup::LABS_DIR);
    for path in dead_lab_dirs(&shared) {
        out.insert(Leftover::Pins { path });
    }
    if shared.exists() && live_lab_dirs(&shared) == 0 {
        out.insert(Leftover::Pins { path: shared });
    }
    // A path sorts after its parent: reversed, children come before parents.
    out.into_iter().rev().collect()
}

/// Removes one leftover.
pub fn remove(l: &Leftover) -> Result<(), LabError> {
    match l {
        Leftover::Netns { name } => netns::delete(name),
        Leftover::Cgroup { path } => cgroup::remove_tree(path, Duration::from_secs(5)),
        Leftover::Pins { path } | Leftover::Files { path } => {
            fs::remove_dir_all(path).map_err(LabError::io("cannot remove", path))
        }
    }
}

/// `OWNER-SEQ-POD` → the lab id.
fn lab_id_of_netns(rest: &str) -> Option<LabId> {
    let mut parts = rest.splitn(3, '-');
    let (owner, seq) = (parts.next()?, parts.next()?);
    LabId::parse(&format!("{owner}-{seq}"))
}

fn live_lab_dirs(dir: &Path) -> usize {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .filter(|e| LabId::parse(&e.file_name().to_string_lossy()).is_some_and(|id| id.owner_alive()))
        .count()
}

fn dead_lab_dirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let id = LabId::parse(&e.file_name().to_string_lossy())?;
            (!id.owner_alive()).then(|| e.path())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lab_ids_from_netns_names() {
        assert_eq!(lab_id_of_netns("4242-3-client"), Some(LabId { owner: 4242, seq: 3 }));
        assert_eq!(lab_id_of_netns("4242-3-node"), Some(LabId { owner: 4242, seq: 3 }));
        assert_eq!(lab_id_of_netns("other"), None);
    }
}
