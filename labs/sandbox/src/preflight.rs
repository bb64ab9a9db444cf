//! Checks made before a lab touches the kernel, each failing with an error that says what to do.
use std::path::PathBuf;

use mesh_agent::mounts;

use crate::LabError;

/// What the host backend needs, found on this machine.
#[derive(Debug, Clone)]
pub struct Host {
    /// Where cgroup v2 is mounted.
    pub cgroup2: PathBuf,
}

/// Root, cgroup v2 and bpffs, in that order.
pub fn check() -> Result<Host, LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    let cgroup2 = mounts::cgroup2_root().ok_or(LabError::NoCgroup2)?;
    if !mounts::is_on_bpffs(std::path::Path::new(mounts::BPFFS)) {
        return Err(mesh_agent::MeshError::NoBpffs { path: PathBuf::from(mounts::BPFFS) }.into());
    }
    Ok(Host { cgroup2 })
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}
