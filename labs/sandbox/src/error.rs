use std::{io, path::PathBuf};

/// Why a lab could not be built, used or torn down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the host backend needs root: it creates network namespaces and cgroups and loads eBPF \
         (run it with sudo, or use a VM backend)"
    )]
    NotRoot,
    #[error("no cgroup v2 hierarchy is mounted (looked for a cgroup2 entry in /proc/mounts)")]
    NoCgroup2,
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected output from `{command}`: {detail}")]
    Parse { command: String, detail: String },
    #[error("{what} did not finish within {seconds} s")]
    Timeout { what: String, seconds: u64 },
    #[error("interrupted")]
    Cancelled,
    /// A pod name the scenario's checks should have refused: a bug, reported, never a panic.
    #[error("no pod named {name:?} in this lab (pods: {known})")]
    NoPod { name: String, known: String },
    #[error(transparent)]
    Mesh(#[from] mesh_agent::MeshError),
    /// The lab broke its own rule (a step stored other keys than it declares): a bug to report.
    #[error("lab bug: {0}")]
    Bug(String),
    /// The mesh agent process failed; `unmet` when it said the kernel or build lacks something.
    #[error("mesh agent: {message}")]
    Agent { message: String, unmet: bool },
    /// The Kubernetes cluster a scenario runs on failed; `unmet` when none is up (or cannot be).
    #[error("kubernetes: {message}")]
    Kubernetes { message: String, unmet: bool },
}

impl LabError {
    /// A requirement of the machine or kernel is missing (as opposed to a fault): not root, no
    /// cgroup v2, no bpffs, a stub build, a program the kernel refused.
    pub fn is_unmet(&self) -> bool {
        use mesh_agent::MeshError;
        matches!(
            self,
            LabError::NotRoot
                | LabError::NoCgroup2
                | LabError::Mesh(
                    MeshError::NoBpffs { .. } | MeshError::StubObject | MeshError::Refused { .. }
                )
                | LabError::Agent { unmet: true, .. }
                | LabError::Kubernetes { unmet: true, .. }
        )
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> LabError {
        let path = path.into();
        move |source| LabError::Io { what, path, source }
    }
}

pub use lab_protocol::chain;

impl From<lab_protocol::Cancelled> for LabError {
    fn from(_: lab_protocol::Cancelled) -> Self {
        LabError::Cancelled
    }
}
