//! `mesh-agent run --cgroup DIR --pin-dir DIR`: runs the mesh until SIGINT or SIGTERM, printing
//! the counters as JSON lines; then detaches the programs and removes the pins.
use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mesh_agent::Mesh;

#[derive(Parser)]
#[command(version, about = "The per-node sidecarless mesh: sock_ops + sk_msg socket redirection")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load and attach the mesh, report counters until SIGINT/SIGTERM, then clean up.
    Run {
        /// cgroup v2 directory whose sockets the mesh accelerates.
        #[arg(long)]
        cgroup: PathBuf,
        /// bpffs directory to pin the maps in (created; removed on exit).
        #[arg(long)]
        pin_dir: PathBuf,
        /// Milliseconds between counter reports.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let Command::Run { cgroup, pin_dir, interval_ms } = Cli::parse().command;
    // Block the stop signals first so they wait for sigtimedwait below instead of killing us
    // with the programs still attached.
    let signals = stop_signals();
    // SAFETY: plain libc call on a set we own.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let mesh = Mesh::start(&cgroup, &pin_dir)?;
    eprintln!("mesh-agent: attached to {}, maps pinned in {}", cgroup.display(), pin_dir.display());
    let interval = Duration::from_millis(interval_ms);
    let timeout = libc::timespec { tv_sec: interval.as_secs() as _, tv_nsec: interval.subsec_nanos() as _ };
    loop {
        println!("{}", serde_json::to_string(&mesh.counters()?)?);
        // SAFETY: waits on our own signal set; a null info pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&signals, std::ptr::null_mut(), &timeout) };
        if sig == libc::SIGINT || sig == libc::SIGTERM {
            println!("{}", serde_json::to_string(&mesh.counters()?)?);
            mesh.stop().context("clean shutdown")?;
            eprintln!("mesh-agent: detached and unpinned");
            return Ok(());
        }
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: initialises a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}
