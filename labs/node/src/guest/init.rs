//! PID 1 of the lab VM: mounts the kernel's file systems, loads the lab's modules, starts the
//! agent and a shell on the virtio console, and reaps every orphan. When the agent exits, the VM
//! powers off.
use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::Write as _,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

/// Modules to load, in dependency order, relative to /lib/modules/<release>/ (written by the
/// image builder).
pub const MODULE_LIST: &str = "/lib/modules/load.list";
/// The interactive console (`-device virtconsole`).
const SHELL_TTY: &str = "/dev/hvc0";
pub const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Never returns: the VM powers off when the agent ends.
pub fn run() -> ! {
    // SAFETY: setting an environment variable before any thread exists.
    unsafe { std::env::set_var("PATH", PATH) };
    mount_all();
    load_modules();
    if let Err(e) = lab_sandbox::process::ip(&["link", "set", "lo", "up"]) {
        log(&format!("lo: {e}"));
    }
    let agent = spawn_agent();
    let mut shell = spawn_shell();
    loop {
        let mut status = 0;
        // SAFETY: plain wait on any child.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, 0) };
        if pid < 0 {
            thread::sleep(Duration::from_millis(200));
            continue;
        }
        if Some(pid) == agent {
            log("agent exited; powering off");
            poweroff();
        }
        if Some(pid) == shell {
            thread::sleep(Duration::from_millis(200));
            shell = spawn_shell();
        }
    }
}

/// Writes to the serial console (the host keeps it in the VM's console log).
pub fn log(msg: &str) {
    if let Ok(mut f) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(f, "lab-node: {msg}");
    }
}

pub fn poweroff() -> ! {
    // SAFETY: sync and reboot have no memory-safety preconditions.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        thread::sleep(Duration::from_secs(1));
    }
}

fn mount_all() {
    let mounts: [(&str, &str, &str); 9] = [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("devpts", "/dev/pts", "devpts"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
        ("bpf", "/sys/fs/bpf", "bpf"),
        ("tracefs", "/sys/kernel/tracing", "tracefs"),
    ];
    for (src, dir, fstype) in mounts {
        let _ = fs::create_dir_all(dir);
        let (s, d, t) = (cstr(src), cstr(dir), cstr(fstype));
        // SAFETY: valid C strings; no data argument.
        if unsafe { libc::mount(s.as_ptr(), d.as_ptr(), t.as_ptr(), 0, std::ptr::null()) } != 0 {
            log(&format!("mount {fstype} on {dir}: {}", std::io::Error::last_os_error()));
        }
    }
}

fn load_modules() {
    let Ok(list) = fs::read_to_string(MODULE_LIST) else {
        return;
    };
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let base = Path::new("/lib/modules").join(release.trim());
    for rel in list.lines().filter(|l| !l.trim().is_empty()) {
        let path = base.join(rel);
        let Ok(f) = File::open(&path) else {
            log(&format!("module {} missing", path.display()));
            continue;
        };
        let empty = cstr("");
        // SAFETY: finit_module on an open fd with empty parameters.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), empty.as_ptr(), 0) };
        let err = std::io::Error::last_os_error();
        if r != 0 && err.raw_os_error() != Some(libc::EEXIST) {
            log(&format!("insmod {rel}: {err}"));
        }
    }
}

fn spawn_agent() -> Option<i32> {
    match Command::new("/proc/self/exe").arg("guest-agent").spawn() {
        Ok(c) => Some(c.id() as i32),
        Err(e) => {
            log(&format!("cannot start the agent: {e}"));
            None
        }
    }
}

fn spawn_shell() -> Option<i32> {
    let tty = OpenOptions::new().read(true).write(true).open(SHELL_TTY).ok()?;
    let (i, o, e) = (tty.try_clone().ok()?, tty.try_clone().ok()?, tty);
    let mut cmd = Command::new("/bin/busybox");
    cmd.args(["setsid", "-c", "/bin/sh", "-l"])
        .env("HOME", "/root")
        .env("TERM", "linux")
        .env("PS1", "lab-vm:\\w# ")
        .current_dir("/root")
        .stdin(Stdio::from(i))
        .stdout(Stdio::from(o))
        .stderr(Stdio::from(e));
    // SAFETY: only a signal-safe call between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    cmd.spawn().ok().map(|c| c.id() as i32)
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in static strings")
}
