//! `lab-runner shell`: the VM's console (a busybox shell on /dev/hvc0), in raw terminal mode.
//! Ctrl-] leaves; the guest starts a fresh shell for the next visit.
use std::{
    io::{Read, Write},
    os::{fd::AsRawFd, unix::net::UnixStream},
    thread,
};

use lab_vm::{
    VmError,
    machine::{DEFAULT_NAME, Machine},
};

use crate::{exit, ui};

/// Ctrl-]
const ESCAPE: u8 = 0x1d;

pub fn run() -> i32 {
    let m = match Machine::find(DEFAULT_NAME) {
        Ok(Some(m)) => m,
        Ok(None) => return ui::fail_vm(&VmError::NotUp),
        Err(e) => return ui::fail_vm(&e),
    };
    let mut sock = match UnixStream::connect(m.console_socket()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab-runner: cannot connect to the VM console {}: {e}", m.console_socket().display());
            return exit::BACKEND;
        }
    };
    eprintln!("VM console, kernel {} ({}). Ctrl-] leaves.\r", m.state.kernel, m.state.release);
    let _raw = RawTerminal::enter();
    let mut from_vm = sock.try_clone().expect("clone socket");
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        while let Ok(n) = from_vm.read(&mut buf) {
            if n == 0 || out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                break;
            }
        }
    });
    let _ = sock.write_all(b"\n");
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 1024];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(i) = buf[..n].iter().position(|b| *b == ESCAPE) {
            let _ = sock.write_all(&buf[..i]);
            break;
        }
        if sock.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    eprintln!("\r");
    exit::OK
}

/// Puts stdin in raw mode while alive (if it is a terminal) and restores it on drop.
struct RawTerminal(Option<libc::termios>);

impl RawTerminal {
    fn enter() -> RawTerminal {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: termios calls on our own stdin with structs we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &raw mut t) != 0 {
                return RawTerminal(None);
            }
            let saved = t;
            libc::cfmakeraw(&raw mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &raw const t);
            RawTerminal(Some(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some(t) = self.0 {
            // SAFETY: restoring the settings read in enter().
            unsafe { libc::tcsetattr(std::io::stdin().as_raw_fd(), libc::TCSANOW, &raw const t) };
        }
    }
}
