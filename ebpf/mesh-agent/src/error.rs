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
