use std::{io, path::PathBuf};

/// Why the mesh could not start, report, or stop.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("this build carries no eBPF object (it was built with AYA_BUILD_SKIP=1); rebuild without it")]
    StubObject,
    #[error("bpffs is not mounted at {path} (mount it: mount -t bpf bpf {path})")]
    NoBpffs { path: PathBuf },
    #[error("cannot open cgroup directory {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot parse the embedded eBPF object")]
    Parse(#[source] aya::EbpfError),
    #[error("the eBPF object has no program or map named {name}")]
    Missing { name: &'static str },
    #[error("the kernel refused program {program}: {source}\n--- verifier log ---\n{verifier_log}")]
    Refused {
        program: &'static str,
        #[source]
        source: io::Error,
        verifier_log: String,
    },
    #[error("program {program}: {source}")]
    Program {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("cannot pin {path}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("no mesh is installed in {path}")]
    NotInstalled { path: PathBuf },
    #[error("{}: an incomplete install (an agent died while installing); remove it: mesh-agent uninstall --pin-dir {}", .pin_dir.join(format!("layout-{}", crate::pins::LAYOUT_VERSION)).display(), .pin_dir.display())]
    Partial { pin_dir: PathBuf },
    #[error("{}: pins of another layout than this agent's (layout-{}); they are never reused: remove them with the agent that made them, or with `mesh-agent uninstall --pin-dir {}` (this detaches that mesh)", .pin_dir.join(.found).display(), crate::pins::LAYOUT_VERSION, .pin_dir.display())]
    Layout { pin_dir: PathBuf, found: String },
    #[error("pinned map {} is {found}; this agent's layout needs {expected}: the pins come from another build (remove them: mesh-agent uninstall --pin-dir {})", .path.display(), .pin_dir.display())]
    MapMismatch { path: PathBuf, pin_dir: PathBuf, found: String, expected: String },
    #[error("the mesh pinned in {path} serves cgroup id {pinned}, not {cgroup} (id {wanted})")]
    OtherCgroup { path: PathBuf, pinned: u64, cgroup: PathBuf, wanted: u64 },
    #[error("cannot adopt pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("libbpf: {what}: {source}")]
    Libbpf {
        what: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl MeshError {
    /// Wraps a program error, keeping the verifier log in view when the kernel refused the load.
    pub(crate) fn program(program: &'static str, err: aya::programs::ProgramError) -> Self {
        match err {
            aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
                MeshError::Refused { program, source: io_error, verifier_log: verifier_log.to_string() }
            }
            source => MeshError::Program { program, source },
        }
    }
}
