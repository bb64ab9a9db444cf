//! The Kubernetes backend: a real single-node cluster on this machine's kernel.
//!
//! - [`source`] builds the control plane, kubelet, kube-proxy and kubectl from Debian's
//!   `kubernetes` source package, once (cached by the package's version).
//! - [`image`] writes OCI archives (the pause container, the lab's own image) for containerd to
//!   import: no registry is involved.
//! - [`config`] renders what the daemons read: kubeconfig, token file, containerd's config, the
//!   CNI network.
//! - [`daemons`] starts etcd, the API server, controller manager, scheduler, containerd, the
//!   kubelet and (optionally) kube-proxy, and knows how to stop them.
//! - [`mesh`] renders `deploy/mesh.yaml` (the agent as a DaemonSet) and applies it.
//! - [`session`] runs a scenario on the cluster: its manifests applied, its pods found, programs
//!   run in them with `kubectl exec`, the mesh deployed and deleted, everything removed after.
//! - [`teardown`] finds and removes everything a cluster leaves on the machine: pods' network
//!   namespaces, mounts, the CNI bridge, iptables chains, containerd's shims, cgroups, logs.
use std::{
    io,
    path::{Path, PathBuf},
};

pub mod bench;
pub mod config;
pub mod daemons;
pub mod image;
pub mod mesh;
pub mod session;
pub mod source;
pub mod teardown;

pub use daemons::{Cluster, State};

/// Everything a running cluster keeps on the machine lives under here (root only).
pub const STATE_DIR: &str = "/run/sidecarless-cluster";
/// The node's name in the API.
pub const NODE_NAME: &str = "slab-node";
/// Pod addresses (the CNI bridge's host-local range).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// The bridge pods hang off.
pub const BRIDGE: &str = "slab-k8s0";
/// ClusterIP range; the API server's own Service takes the first address.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Ports of this cluster (away from the defaults, so a real cluster on the machine is not hit).
pub const ETCD_PORT: u16 = 23790;
pub const ETCD_PEER_PORT: u16 = 23800;
pub const APISERVER_PORT: u16 = 16443;
/// Where kubelet 1.20 writes pod logs: fixed in its source (`podLogsRootDirectory`).
pub const POD_LOGS: &str = "/var/log/pods";
pub const CONTAINER_LOGS: &str = "/var/log/containers";
/// Where the mesh's DaemonSet pins its maps and links (`deploy/mesh.yaml`).
pub const MESH_PINS: &str = "/sys/fs/bpf/sidecarless-mesh";

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: io::Error },
    #[error("`{cmd}` failed: {detail}")]
    Command { cmd: String, detail: String },
    #[error("{0}")]
    Unmet(String),
    #[error("{what} not ready after {secs} s; its log ends:\n{log_tail}")]
    NotReady { what: String, secs: u64, log_tail: String },
    #[error("{0}")]
    State(String),
    #[error("interrupted; what was started is stopped and removed")]
    Cancelled,
}

impl ClusterError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ClusterError {
        let path = path.into();
        move |source| ClusterError::Io { what, path, source }
    }

    /// Something this machine lacks (a package, root): the command cannot run here.
    pub fn is_unmet(&self) -> bool {
        matches!(self, ClusterError::Unmet(_))
    }
}

/// Runs a command to completion; its stderr (last lines) is the error when it fails.
pub fn run(cmd: &mut std::process::Command) -> Result<std::process::Output, ClusterError> {
    let shown = describe(cmd);
    let out =
        cmd.output().map_err(|e| ClusterError::Command { cmd: shown.clone(), detail: e.to_string() })?;
    if out.status.success() {
        Ok(out)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let mut tail: Vec<&str> = err.lines().rev().take(12).collect();
        tail.reverse();
        Err(ClusterError::Command { cmd: shown, detail: format!("{}\n{}", out.status, tail.join("\n")) })
    }
}

pub fn describe(cmd: &std::process::Command) -> String {
    std::iter::once(cmd.get_program().to_string_lossy().into_owned())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `n` lines of a log file (empty when it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub use lab_protocol::cache_dir;

/// Whether `tool` is an executable on PATH.
pub fn have(tool: &str) -> bool {
    which::which(tool).is_ok()
}
