//! The lab's cgroup v2 subtree: `<cgroup2>/sidecarless-lab/<lab id>/<pod>`.
//!
//! sock_ops attaches to the lab directory and so sees every TCP socket made by pod processes.
use std::{
    fs, io,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use crate::LabError;

/// Directory under the cgroup v2 root that holds every lab's subtree.
pub const LABS_DIR: &str = "sidecarless-lab";

/// Creates `path` (and missing parents).
pub fn create(path: &Path) -> Result<(), LabError> {
    fs::create_dir_all(path).map_err(LabError::io("cannot create cgroup", path))
}

/// Pids currently in `path` (not its children).
pub fn pids(path: &Path) -> Vec<i32> {
    fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in `path` and below, then removes the directories bottom-up. A missing
/// directory is not an error. Gives up after `timeout` if processes refuse to die.
pub fn remove_tree(path: &Path, timeout: Duration) -> Result<(), LabError> {
    if !path.exists() {
        return Ok(());
    }
    let dirs = subtree(path);
    let deadline = Instant::now() + timeout;
    loop {
        kill_all(path, &dirs);
        // Deepest first: a cgroup with children cannot be removed.
        let mut busy = false;
        for dir in dirs.iter().rev() {
            match fs::remove_dir(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(_) => busy = true,
            }
        }
        if !busy {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout {
                what: format!("removing cgroup {}", path.display()),
                seconds: timeout.as_secs(),
            });
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// `path` and every directory below it, parents before children.
fn subtree(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(rd) = fs::read_dir(&out[i]) {
            out.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        i += 1;
    }
    out
}

fn kill_all(root: &Path, dirs: &[PathBuf]) {
    // cgroup.kill (>= 5.14) kills the whole subtree atomically, forks included.
    if fs::write(root.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for dir in dirs {
        for pid in pids(dir) {
            // SAFETY: sending a signal has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
