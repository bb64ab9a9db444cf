//! A running VM: booted from a kernel and an image, tracked in a state directory
//! (`<state root>/<name>/`: state.json, sockets, serial log), stopped by `down`.
use std::{
    fs,
    os::unix::{fs::DirBuilderExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use lab_protocol::{Cancel, wire::RequestBody};
use serde::{Deserialize, Serialize};

use crate::{
    VmError,
    channel::{self, Channel},
    image::Image,
    kernel::KernelFiles,
    paths,
    qemu::{self, Accel, Spec},
};

/// Name of the VM `up`, `exec`, `shell` and `down` work on.
pub const DEFAULT_NAME: &str = "default";

/// What `state.json` records about a running VM.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    pub name: String,
    /// Catalog name (`6.1`) and `uname -r` as the guest reported it.
    pub kernel: String,
    pub release: String,
    pub accel: Accel,
    pub pid: u32,
    /// Seconds from starting QEMU to the agent's first answer.
    pub boot_s: f64,
}

/// How to boot.
pub struct BootOptions<'a> {
    pub name: &'a str,
    pub kernel_name: &'a str,
    pub files: &'a KernelFiles,
    pub image: &'a Image,
    pub accel: Accel,
    pub memory_mb: u32,
    pub cpus: u32,
    /// QEMU dies with this process (scenario VMs) instead of outliving it (`up`).
    pub tied: bool,
    /// Set by Ctrl-C: the boot stops waiting at once, QEMU is killed and its folder removed.
    pub cancel: &'a Cancel,
}

impl BootOptions<'_> {
    /// Waiting for the agent: emulation boots slower.
    pub fn boot_timeout(&self) -> Duration {
        match self.accel {
            Accel::Kvm => Duration::from_secs(30),
            Accel::Tcg => Duration::from_mins(2),
        }
    }
}

pub struct Machine {
    pub dir: PathBuf,
    pub state: State,
    /// Set when this process started QEMU (so it can reap it).
    child: Option<Child>,
}

fn control(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}
fn exec_socket(dir: &Path) -> PathBuf {
    dir.join("exec.sock")
}
fn console(dir: &Path) -> PathBuf {
    dir.join("console.sock")
}
fn serial(dir: &Path) -> PathBuf {
    dir.join("serial.log")
}

/// The QEMU spec for a VM living in `dir`.
pub fn spec(
    dir: &Path,
    qemu: PathBuf,
    files: &KernelFiles,
    image: &Image,
    accel: Accel,
    memory_mb: u32,
    cpus: u32,
) -> Spec {
    Spec {
        qemu,
        accel,
        kernel: files.vmlinuz.clone(),
        initrd: image.path.clone(),
        memory_mb,
        cpus,
        control: control(dir),
        exec: exec_socket(dir),
        console: console(dir),
        serial_log: serial(dir),
    }
}

impl Machine {
    pub fn dir_of(name: &str) -> PathBuf {
        paths::state_root().join(name)
    }

    /// Boots a VM and waits until its agent answers. On any failure QEMU is killed and the state
    /// directory removed.
    pub fn boot(o: &BootOptions) -> Result<Machine, VmError> {
        if let Some(m) = Machine::find(o.name)? {
            return Err(VmError::AlreadyUp { name: o.name.to_owned(), kernel: m.state.kernel });
        }
        let dir = Machine::dir_of(o.name);
        let _ = fs::remove_dir_all(&dir);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(VmError::io("cannot create", &dir))?;
        let qemu = qemu::find_qemu().ok_or_else(|| VmError::Missing {
            what: "qemu-system-x86_64".into(),
            detail: "not found (install qemu-system-x86)".into(),
        })?;
        let spec = spec(&dir, qemu, o.files, o.image, o.accel, o.memory_mb, o.cpus);
        let log = fs::File::create(dir.join("qemu.log"))
            .map_err(VmError::io("cannot create", dir.join("qemu.log")))?;
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(qemu::command_line(&spec))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(VmError::io("dup", &dir))?)
            .stderr(log);
        let tied = o.tied;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Its own session: a Ctrl-C in the terminal is ours to handle, not QEMU's.
                libc::setsid();
                if tied {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                }
                Ok(())
            });
        }
        let started = Instant::now();
        let child = cmd.spawn().map_err(VmError::io("cannot start", &spec.qemu))?;
        let mut m = Machine {
            dir: dir.clone(),
            state: State {
                name: o.name.to_owned(),
                kernel: o.kernel_name.to_owned(),
                release: String::new(),
                accel: o.accel,
                pid: child.id(),
                boot_s: 0.0,
            },
            child: Some(child),
        };
        let ready = Channel::connect(&control(&dir), &serial(&dir), Duration::from_secs(10))
            .and_then(|mut ch| ch.hello_or_cancel(o.name, o.boot_timeout(), "while booting", o.cancel));
        match ready {
            Ok(kernel) => {
                m.state.release = kernel;
                m.state.boot_s = started.elapsed().as_secs_f64();
                let json = serde_json::to_string_pretty(&m.state).expect("state serializes");
                fs::write(dir.join("state.json"), json)
                    .map_err(VmError::io("cannot write", dir.join("state.json")))?;
                Ok(m)
            }
            Err(e) => {
                // QEMU itself failing (no KVM, a bad option) says why on its stderr.
                let exited = m.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                let log = channel::tail(&dir.join("qemu.log"), 10);
                m.kill();
                Err(if exited { VmError::QemuExited { log } } else { e })
            }
        }
    }

    /// The VM `name`, if one is up. A state directory whose QEMU is gone is removed.
    pub fn find(name: &str) -> Result<Option<Machine>, VmError> {
        let dir = Machine::dir_of(name);
        let Ok(text) = fs::read_to_string(dir.join("state.json")) else {
            if dir.exists() && !dir.join("qemu.log").exists() {
                let _ = fs::remove_dir_all(&dir);
            }
            return Ok(None);
        };
        let state: State = serde_json::from_str(&text).map_err(|e| VmError::Broken {
            what: format!("the state of VM {name}"),
            detail: format!(
                "{}: {e} (if no QEMU of it runs, remove {} and run again)",
                dir.join("state.json").display(),
                dir.display()
            ),
        })?;
        let mut m = Machine { dir, state, child: None };
        if m.alive() {
            Ok(Some(m))
        } else {
            let _ = fs::remove_dir_all(&m.dir);
            Ok(None)
        }
    }

    /// Whether the QEMU process still runs.
    pub fn alive(&mut self) -> bool {
        if let Some(c) = &mut self.child {
            return matches!(c.try_wait(), Ok(None));
        }
        // Another process may have the pid by now: only a QEMU that is not a zombie counts.
        let Ok(p) = procfs::process::Process::new(self.state.pid as i32) else { return false };
        let qemu = p.cmdline().is_ok_and(|c| c.first().is_some_and(|a| a.contains("qemu")));
        qemu && p.stat().is_ok_and(|s| s.state != 'Z')
    }

    /// A channel to the guest, after checking (within `timeout`, at most 30 s) that it speaks
    /// this build's protocol.
    pub fn channel(&self, timeout: Duration) -> Result<Channel, VmError> {
        let mut ch = self.raw_channel()?;
        ch.hello(&self.state.name, timeout.min(Duration::from_secs(30)), "while saying hello")?;
        Ok(ch)
    }

    /// A channel on the guest's second port, free while a scenario holds the first: for
    /// commands run beside it (the `try` commands of a guided run).
    pub fn exec_channel(&self, timeout: Duration) -> Result<Channel, VmError> {
        let mut ch = Channel::connect(&exec_socket(&self.dir), &serial(&self.dir), Duration::from_secs(5))?;
        ch.hello(&self.state.name, timeout.min(Duration::from_secs(30)), "while saying hello")?;
        Ok(ch)
    }

    fn raw_channel(&self) -> Result<Channel, VmError> {
        Channel::connect(&control(&self.dir), &serial(&self.dir), Duration::from_secs(5))
    }

    pub fn console_socket(&self) -> PathBuf {
        console(&self.dir)
    }

    pub fn serial_log(&self) -> PathBuf {
        serial(&self.dir)
    }

    pub fn console_tail(&self, n: usize) -> String {
        channel::tail(&self.serial_log(), n)
    }

    /// Powers the guest off, waits for QEMU to exit (killing it after 10 s), removes the state.
    pub fn down(mut self) -> Result<(), VmError> {
        // The guest powers off without answering: the socket closes as QEMU exits. A guest that
        // stays silent instead (hung, stopped) is killed at once.
        let answered = self.raw_channel().map(|mut ch| {
            ch.request(RequestBody::Poweroff, Duration::from_secs(5), "while powering off", None, |_| None)
        });
        if let Ok(Err(VmError::VmGone { .. })) = answered {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.alive() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill();
        Ok(())
    }

    /// Kills QEMU (if still there), reaps it and removes the state directory.
    pub fn kill(&mut self) {
        if self.alive() {
            // SAFETY: signalling a pid we recorded as QEMU's.
            unsafe { libc::kill(self.state.pid as i32, libc::SIGKILL) };
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        } else {
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.alive() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
