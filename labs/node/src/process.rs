//! Running helper commands (iproute2) and waiting on pod processes with a deadline and a cancel
//! flag.
use std::{
    path::Path,
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::LabError;

/// Set from a signal handler (Ctrl-C, SIGTERM); every wait in the lab gives up when it is set.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), LabError> {
        if self.is_cancelled() { Err(LabError::Cancelled) } else { Ok(()) }
    }
}

/// The iproute2 `ip` binary. Absolute, because busybox (in the VM image) shadows `ip` with an
/// applet that lacks netns and veth support.
pub fn ip_binary() -> &'static str {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip")
}

/// A program on PATH or in the sbin folders (which a non-root PATH may lack).
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<Output, LabError> {
    let mut cmd = Command::new(ip_binary());
    cmd.args(args);
    run(cmd)
}

/// Runs a command to completion, failing with its stderr when it exits non-zero.
pub fn run(mut cmd: Command) -> Result<Output, LabError> {
    let command = describe(&cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// `program arg arg ...`, for messages.
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits for `child` to exit, polling so that a cancel or the deadline can interrupt it; in that
/// case the child is killed and reaped before returning the error.
pub fn wait_output(
    mut child: Child,
    what: &str,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<Output, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => {
                return child
                    .wait_with_output()
                    .map_err(LabError::io("cannot collect output of", what.to_owned()));
            }
            Ok(None) => {}
            Err(source) => {
                return Err(LabError::Io { what: "cannot wait for", path: what.into(), source });
            }
        }
        let err = if cancel.is_cancelled() {
            Some(LabError::Cancelled)
        } else if Instant::now() >= deadline {
            Some(LabError::Timeout { what: what.to_owned(), seconds: timeout.as_secs() })
        } else {
            None
        };
        if let Some(err) = err {
            let _ = child.kill();
            let _ = child.wait();
            return Err(err);
        }
        thread::sleep(Duration::from_millis(5));
    }
}
