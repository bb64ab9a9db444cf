//! Where the lab keeps downloads (cache) and running VMs (state). Both are per user, so the
//! VM path needs no root.
use std::{env, path::PathBuf};

pub use lab_protocol::cache_dir;

/// `$XDG_RUNTIME_DIR/sidecarless-lab`, else `/tmp/sidecarless-lab-<uid>`. Kept short: it holds
/// unix sockets, whose paths may not exceed 107 bytes.
pub fn state_root() -> PathBuf {
    match env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d).join("sidecarless-lab"),
        // SAFETY: getuid has no preconditions.
        None => PathBuf::from(format!("/tmp/sidecarless-lab-{}", unsafe { libc::getuid() })),
    }
}
