//! The QEMU command line, as a pure function of [`Spec`] (printed by `--print-qemu`, tested).
use std::{
    fmt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slower, works everywhere. Single-threaded: multi-threaded TCG
    /// was seen to panic guests on these machines.
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Everything the command line depends on.
#[derive(Debug, Clone)]
pub struct Spec {
    pub qemu: PathBuf,
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Unix socket for the agent's virtio-serial port.
    pub control: PathBuf,
    /// Unix socket for the agent's second port (`lab-runner exec` while a scenario runs).
    pub exec: PathBuf,
    /// Unix socket for the interactive console (`lab-runner shell`).
    pub console: PathBuf,
    /// The serial console (kernel messages, lab-node's log) goes to this file.
    pub serial_log: PathBuf,
}

/// Defaults: 2 vCPUs, 1 GiB.
pub const DEFAULT_MEMORY_MB: u32 = 1024;
pub const DEFAULT_CPUS: u32 = 2;

// ANCHOR: command_line
/// The arguments after the QEMU binary.
pub fn command_line(s: &Spec) -> Vec<String> {
    let p = |p: &Path| p.display().to_string();
    let mut a: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(std::string::ToString::to_string));
    match s.accel {
        Accel::Kvm => push(&["-M", "q35", "-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-M", "q35", "-accel", "tcg,thread=single", "-cpu", "max"]),
    }
    push(&["-smp", &s.cpus.to_string(), "-m", &format!("{}M", s.memory_mb)]);
    // No display, no default devices, no reboot: a guest panic or poweroff ends QEMU.
    push(&["-display", "none", "-vga", "none", "-monitor", "none", "-nodefaults", "-no-reboot"]);
    push(&["-serial", &format!("file:{}", p(&s.serial_log))]);
    push(&["-kernel", &p(&s.kernel), "-initrd", &p(&s.initrd)]);
    push(&["-append", "console=ttyS0 panic=-1 loglevel=4 quiet"]);
    push(&["-device", "virtio-serial-pci,id=vser"]);
    push(&["-chardev", &format!("socket,id=ctl,path={},server=on,wait=off", p(&s.control))]);
    push(&["-device", "virtserialport,bus=vser.0,chardev=ctl,name=lab.control"]);
    push(&["-chardev", &format!("socket,id=exe,path={},server=on,wait=off", p(&s.exec))]);
    push(&["-device", "virtserialport,bus=vser.0,chardev=exe,name=lab.exec"]);
    push(&["-chardev", &format!("socket,id=con,path={},server=on,wait=off", p(&s.console))]);
    push(&["-device", "virtconsole,bus=vser.0,chardev=con"]);
    a
}
// ANCHOR_END: command_line

/// `qemu-system-x86_64` on PATH.
pub fn find_qemu() -> Option<PathBuf> {
    crate::image::which("qemu-system-x86_64")
}

/// Whether /dev/kvm can even be opened. Necessary, not sufficient: on some hosts it opens and
/// guests still hang, which only a boot can tell (see `machine::probe_accel`).
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok()
}

/// The command line as one shell-quoted string, for `--print-qemu`.
pub fn shell_line(s: &Spec) -> String {
    std::iter::once(s.qemu.display().to_string())
        .chain(command_line(s))
        .map(|a| if a.contains([' ', ',', '=']) && !a.starts_with('-') { format!("'{a}'") } else { a })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> Spec {
        Spec {
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            accel,
            kernel: "/c/vmlinuz".into(),
            initrd: "/c/img.cpio.gz".into(),
            memory_mb: 512,
            cpus: 2,
            control: "/s/control.sock".into(),
            exec: "/s/exec.sock".into(),
            console: "/s/console.sock".into(),
            serial_log: "/s/serial.log".into(),
        }
    }

    #[test]
    fn tcg_is_single_threaded_q35() {
        let a = command_line(&spec(Accel::Tcg));
        let joined = a.join(" ");
        assert!(joined.starts_with("-M q35 -accel tcg,thread=single -cpu max -smp 2 -m 512M"), "{joined}");
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains("-kernel /c/vmlinuz -initrd /c/img.cpio.gz"));
        assert!(joined.contains("socket,id=ctl,path=/s/control.sock,server=on,wait=off"));
        assert!(joined.contains("virtserialport,bus=vser.0,chardev=ctl,name=lab.control"));
        assert!(joined.contains("virtserialport,bus=vser.0,chardev=exe,name=lab.exec"));
        assert!(joined.contains("-serial file:/s/serial.log"));
        assert!(a.contains(&"console=ttyS0 panic=-1 loglevel=4 quiet".to_owned()));
    }

    #[test]
    fn kvm_uses_the_host_cpu() {
        let joined = command_line(&spec(Accel::Kvm)).join(" ");
        assert!(joined.starts_with("-M q35 -accel kvm -cpu host"), "{joined}");
        assert!(shell_line(&spec(Accel::Kvm)).contains("'console=ttyS0 panic=-1 loglevel=4 quiet'"));
    }
}
