use std::{io, path::PathBuf};

/// Why a VM could not be prepared, booted, reached or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{file}:{line}: {message}")]
    Catalog { file: String, line: usize, message: String },
    #[error("unknown kernel {name:?} (known: {known})")]
    UnknownKernel { name: String, known: String },
    #[error(
        "no Debian mirror found in the apt configuration (/etc/apt/sources.list, \
         /etc/apt/sources.list.d/); pass --mirror URL or set SIDECARLESS_DEBIAN_MIRROR"
    )]
    NoMirror,
    #[error("download {url}")]
    Download {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("{url}: sha256 is {actual}, kernels.toml pins {expected}; refusing it")]
    Checksum { url: String, expected: String, actual: String },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{what}: {detail}")]
    Missing { what: String, detail: String },
    /// Something this program made or keeps is unusable (a corrupt state file, a cached package
    /// that does not decompress, a template that does not render): a failure, never a skip.
    #[error("{what} is broken: {detail}")]
    Broken { what: String, detail: String },
    /// The guest speaks another version of the protocol (a VM booted by another build).
    #[error(
        "the VM {name} runs a guest from another build (protocol {guest}, this lab-runner speaks \
         {host}): `lab-runner down`, then run again (a fresh VM gets this build's image)"
    )]
    Version { name: String, guest: u32, host: u32 },
    /// The guest sent a line that is not a reply.
    #[error("the guest sent a line that is not a protocol reply ({detail}): {line}")]
    Garbled { line: String, detail: String },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("a VM named {name} is already up (kernel {kernel}); `lab-runner down` first")]
    AlreadyUp { name: String, kernel: String },
    #[error("no VM is up (start one with `lab-runner up`)")]
    NotUp,
    #[error("QEMU exited while booting; it said:\n{log}")]
    QemuExited { log: String },
    #[error("the VM stopped (qemu exited) {during}; last console lines:\n{console}")]
    VmGone { during: String, console: String },
    #[error("the guest did not answer within {seconds} s {during}; last console lines:\n{console}")]
    GuestSilent { during: String, seconds: u64, console: String },
    #[error("guest: {message}")]
    Guest { message: String, unmet: bool },
    #[error("interrupted")]
    Cancelled,
}

impl VmError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VmError {
        let path = path.into();
        move |source| VmError::Io { what, path, source }
    }

    /// A missing requirement (tool not installed, program refused in the guest) rather than a
    /// fault.
    pub fn is_unmet(&self) -> bool {
        matches!(self, VmError::Guest { unmet: true, .. } | VmError::Missing { .. } | VmError::NoMirror)
    }
}
