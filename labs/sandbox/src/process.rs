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

pub use lab_protocol::Cancel;

/// How to start one of them: `program prefix.. ARGS`.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub program: std::path::PathBuf,
    pub prefix: Vec<String>,
}

impl Cmd {
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.prefix).args(args.iter().map(AsRef::as_ref));
        cmd
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

/// The iproute2 `tc` binary (absolute, like [`ip_binary`]: busybox has a `tc` applet too).
pub fn tc_binary() -> &'static str {
    ["/usr/sbin/tc", "/sbin/tc", "/usr/bin/tc", "/bin/tc"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("tc")
}

/// An executable program on PATH or in the sbin folders (which a non-root PATH may lack).
pub fn tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    which::which_in(name, Some(format!("{path}:{SYSTEM_DIRS}")), "/").ok()
}

/// Whether process `pid` is gone, or a zombie waiting to be reaped: not running either way.
pub fn exited(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else { return true };
    procfs::process::Process::new(pid).and_then(|p| p.stat()).map_or(true, |s| s.state == 'Z')
}

/// Every running process (zombies left out) with its command line.
pub fn running() -> Vec<(i32, Vec<String>)> {
    let Ok(all) = procfs::process::all_processes() else { return Vec::new() };
    all.flatten()
        .filter(|p| p.stat().is_ok_and(|s| s.state != 'Z'))
        .filter_map(|p| Some((p.pid, p.cmdline().ok()?)))
        .collect()
}

/// Where Debian keeps system programs, searched after PATH.
pub const SYSTEM_DIRS: &str = "/usr/sbin:/sbin:/usr/bin:/bin";

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
    succeeded(command, out)
}

/// `out` when its command exited 0; otherwise the error naming `command`, with its stderr.
pub fn succeeded(command: String, out: Output) -> Result<Output, LabError> {
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// Like [`run`], with `input` on the command's stdin.
pub fn run_with_input(mut cmd: Command, input: &[u8]) -> Result<Output, LabError> {
    use std::io::Write as _;
    let command = describe(&cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    let mut stdin = child.stdin.take().expect("piped");
    // Written from a thread: a big input must not dead-lock against a full stdout pipe.
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out =
        child.wait_with_output().map_err(|source| LabError::Spawn { command: command.clone(), source })?;
    let _ = writer.join();
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
/// case the child is killed and reaped before returning the error. Its stdout and stderr are read
/// while it runs (a child that prints more than a pipe holds must not block on it); output that a
/// background grandchild keeps open is taken as far as it got shortly after the child exits.
pub fn wait_output(
    mut child: Child,
    what: &str,
    timeout: Duration,
    cancel: &Cancel,
) -> Result<Output, LabError> {
    let deadline = Instant::now() + timeout;
    let stdout = Drain::start(child.stdout.take());
    let stderr = Drain::start(child.stderr.take());
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                let grace = Instant::now() + Duration::from_secs(2);
                return Ok(Output { status, stdout: stdout.finish(grace), stderr: stderr.finish(grace) });
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
            kill_tree(&mut child);
            let _ = child.wait();
            return Err(err);
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Kills `child` and, when it leads a process group of its own (the lab starts every pod
/// process so), everything it started that stayed in that group.
pub fn kill_tree(child: &mut Child) {
    // SAFETY: signalling the process group whose leader is our own unreaped child (a pid that
    // leads no group names none: ESRCH).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.kill();
}

/// A pipe read to its end by a thread of its own.
struct Drain {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    done: Arc<AtomicBool>,
}

impl Drain {
    fn start(pipe: Option<impl std::io::Read + Send + 'static>) -> Drain {
        let (buf, done) =
            (Arc::new(std::sync::Mutex::new(Vec::new())), Arc::new(AtomicBool::new(pipe.is_none())));
        if let Some(mut pipe) = pipe {
            let (b, d) = (buf.clone(), done.clone());
            thread::spawn(move || {
                let mut chunk = [0u8; 16 * 1024];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    b.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend_from_slice(&chunk[..n]);
                }
                d.store(true, Ordering::SeqCst);
            });
        }
        Drain { buf, done }
    }

    /// What was read, once the pipe ended or at `until`, whichever comes first.
    fn finish(self, until: Instant) -> Vec<u8> {
        while !self.done.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        std::mem::take(&mut *self.buf.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// A background process that is killed (and reaped) when the guard goes, whatever ends the
/// step that started it: success, an error, a cancel. It dies with the lab's owner thread too.
pub struct Guard(Child);

impl Guard {
    pub fn spawn(mut cmd: Command) -> Result<Guard, LabError> {
        use std::os::unix::process::CommandExt as _;
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let command = describe(&cmd);
        cmd.spawn().map(Guard).map_err(|source| LabError::Spawn { command, source })
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_child_printing_a_mebibyte_completes() {
        let t0 = Instant::now();
        let child = sh("head -c 1048576 /dev/zero; head -c 200000 /dev/zero >&2");
        let out = wait_output(child, "sh", Duration::from_secs(20), &Cancel::new()).unwrap();
        assert_eq!((out.stdout.len(), out.stderr.len()), (1_048_576, 200_000));
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_grandchild_holding_the_pipe_does_not_hold_the_wait() {
        let t0 = Instant::now();
        let child = sh("echo started; sleep 30 & echo done");
        let out = wait_output(child, "sh", Duration::from_secs(20), &Cancel::new()).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "started\ndone\n");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn the_deadline_kills_the_child() {
        let err =
            wait_output(sh("sleep 30"), "sleep", Duration::from_millis(100), &Cancel::new()).unwrap_err();
        assert!(matches!(err, LabError::Timeout { .. }), "{err}");
    }

    #[test]
    fn a_cancel_kills_the_whole_process_group() {
        use std::os::unix::process::CommandExt as _;
        let pidfile = std::env::temp_dir().join(format!("slab-tree-{}", std::process::id()));
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let child = Command::new("sh").args(["-c", &script]).process_group(0).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let grandchild = loop {
            if let Some(pid) = fs_pid(&pidfile) {
                break pid;
            }
            assert!(Instant::now() < deadline, "the shell never started its sleep");
            thread::sleep(Duration::from_millis(10));
        };
        let cancel = Cancel::new();
        cancel.cancel();
        let err = wait_output(child, "sh", Duration::from_secs(20), &cancel).unwrap_err();
        assert!(matches!(err, LabError::Cancelled), "{err}");
        let _ = std::fs::remove_file(&pidfile);
        // Gone, or a zombie waiting for init to reap it: not running either way.
        let gone = || exited(grandchild as u32);
        let deadline = Instant::now() + Duration::from_secs(2);
        while !gone() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(gone(), "the grandchild {grandchild} survived");
    }

    fn fs_pid(path: &std::path::Path) -> Option<i32> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }
}
