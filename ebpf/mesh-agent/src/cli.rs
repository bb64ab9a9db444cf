//! The `mesh-agent` command line: the per-node daemon of the sidecarless mesh, and the commands that talk to the
//! mesh it pinned.
//!
//! - `run`: serve a cgroup until SIGINT, SIGTERM or SIGHUP (then uninstall); adopts the pins of
//!   an agent that died; prints the counters and each policy denial as JSON lines.
//! - `apply FILE`: bring the services in the running maps to FILE's, by difference.
//! - `status`: what is loaded, attached and pinned, and how full each map is.
//! - `uninstall`: detach everything and remove the pins (also after an agent was killed).
use std::{
    collections::BTreeMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::{
    Mesh, MeshError, Pinned, Started,
    denials::{DenialRecord, Denials},
    meshfile, pins, status,
};

#[derive(Parser)]
#[command(
    name = "mesh-agent",
    version,
    about = "The per-node sidecarless mesh: socket redirection and load balancing in the kernel"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve a cgroup: install the mesh (or adopt the one an earlier agent pinned), report
    /// counters until SIGINT/SIGTERM/SIGHUP, then uninstall.
    Run {
        /// cgroup v2 directory whose sockets the mesh serves (the whole lab).
        #[arg(long)]
        cgroup: PathBuf,
        /// bpffs directory for the pins (maps and links, under layout-N/).
        #[arg(long)]
        pin_dir: PathBuf,
        /// Mesh file to apply once serving (also after adopting).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Pods file (JSON list of {name, labels, ipv4, ipv6, cgroup}) for backends and rules chosen by label.
        #[arg(long)]
        pods: Option<PathBuf>,
        /// Milliseconds between counter reports.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Bring the running mesh's services to FILE's: added, changed and removed entries only.
    Apply {
        file: PathBuf,
        #[arg(long)]
        pin_dir: PathBuf,
        /// Pods file (JSON list of {name, labels, ipv4, ipv6, cgroup}) for backends and rules chosen by label.
        #[arg(long)]
        pods: Option<PathBuf>,
    },
    /// What is loaded, attached and pinned, and how full each map is.
    Status {
        #[arg(long)]
        pin_dir: PathBuf,
        /// Also list what this cgroup runs at each of the mesh's hooks.
        #[arg(long)]
        cgroup: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Detach every program and remove the pins (any layout).
    Uninstall {
        #[arg(long)]
        pin_dir: PathBuf,
    },
}

/// Exit code when the kernel or the build lacks something the mesh needs (no bpffs, a stub
/// build, a program the kernel refused), as opposed to a fault (1) or a usage error (2).
pub const EXIT_UNMET: i32 = 3;

/// The `mesh-agent` binary.
pub fn main() -> ExitCode {
    exit(run(Cli::parse().command))
}

/// Prints the error, if any, as one `mesh-agent: ...` line; the exit code says which.
pub fn exit(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-agent: {e:#}");
            ExitCode::from(code(&e) as u8)
        }
    }
}

/// The exit code for an error: [`EXIT_UNMET`] or 1.
pub fn code(e: &anyhow::Error) -> i32 {
    let unmet = matches!(
        e.downcast_ref::<MeshError>(),
        Some(MeshError::NoBpffs { .. } | MeshError::StubObject | MeshError::Refused { .. })
    );
    if unmet { EXIT_UNMET } else { 1 }
}

/// Runs one command.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Run { cgroup, pin_dir, file, pods, interval_ms } => {
            serve(&cgroup, &pin_dir, file.as_deref(), pods.as_deref(), interval_ms)
        }
        Command::Apply { file, pin_dir, pods } => {
            // A rejected file is refused before the maps are touched.
            let loaded = meshfile::load(&file, pods.as_deref()).map_err(anyhow::Error::msg)?;
            let mut pinned = Pinned::open(&pin_dir)?;
            apply(&mut pinned, &file, &loaded).map(drop)
        }
        Command::Status { pin_dir, cgroup, json } => {
            let s = status::read(&pin_dir, cgroup.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.render());
            }
            if !s.attach_problems().is_empty() {
                anyhow::bail!("not healthy: {}", s.attach_problems().join("; "));
            }
            Ok(())
        }
        Command::Uninstall { pin_dir } => {
            let removed = pins::uninstall(&pin_dir)?;
            println!("removed {} pins from {}", removed.len(), pin_dir.display());
            Ok(())
        }
    }
}

/// Applies `loaded`; returns which pods each identity stands for.
fn apply(
    pinned: &mut Pinned,
    file: &Path,
    loaded: &meshfile::Loaded,
) -> anyhow::Result<BTreeMap<u32, Vec<String>>> {
    let resolved = &loaded.services;
    let applied = pinned.set_services(&meshfile::wanted(resolved))?;
    let policy = crate::policy::resolve(&loaded.file, &loaded.pods);
    let p = pinned.set_policy(&policy)?;
    eprintln!(
        "mesh-agent: policy: {} rules ({} with HTTP matches), {} allow entries, {} policed identities ({} entries added, {} removed)",
        loaded.file.policy.len(),
        policy.http.len(),
        policy.allow.len(),
        policy.policed.len(),
        p.added,
        p.removed
    );
    for r in resolved {
        let behind = if r.slot_names.is_empty() { "no backend".into() } else { r.slot_names.join(", ") };
        eprintln!("mesh-agent: service {}: {behind}", r.name);
    }
    eprintln!(
        "mesh-agent: applied {}: {} added, {} changed, {} removed, {} unchanged",
        file.display(),
        applied.added,
        applied.changed,
        applied.removed,
        applied.unchanged
    );
    Ok(policy.members)
}

fn serve(
    cgroup: &Path,
    pin_dir: &Path,
    file: Option<&Path>,
    pods: Option<&Path>,
    interval_ms: u64,
) -> anyhow::Result<()> {
    // Block the stop signals first so they wait for sigtimedwait below instead of killing us
    // half-way through installing.
    let signals = stop_signals();
    // SAFETY: plain libc call on a set we own.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };
    // A bad file is refused before anything is installed or adopted.
    let loaded = file.map(|f| meshfile::load(f, pods).map_err(anyhow::Error::msg)).transpose()?;

    let mut mesh = Mesh::start(cgroup, pin_dir)?;
    match mesh.started() {
        Started::Installed { replaced_partial } => eprintln!(
            "mesh-agent: installed in {}{}",
            pins::layout_dir(pin_dir).display(),
            if *replaced_partial { " (removed an incomplete install first)" } else { "" }
        ),
        Started::Adopted { links, services } => eprintln!(
            "mesh-agent: adopted {links} pinned links and {services} services from {} (nothing attached again)",
            pins::layout_dir(pin_dir).display()
        ),
    }
    let mut members = BTreeMap::new();
    if let (Some(f), Some(l)) = (file, &loaded) {
        members = apply(mesh.pins_mut(), f, l)?;
    }
    let mut denials = mesh.pins_mut().take_denials().map(Denials::new).transpose()?;
    eprintln!("mesh-agent: serving {}", cgroup.display());
    // One wait for everything: a stop signal (through a signalfd), a denial in the ring buffer
    // (printed at once), or the next counter report.
    // SAFETY: a new descriptor for our own (blocked) signal set.
    let sigfd = unsafe { libc::signalfd(-1, &signals, libc::SFD_CLOEXEC) };
    anyhow::ensure!(sigfd >= 0, "signalfd: {}", std::io::Error::last_os_error());
    // SAFETY: we own the new descriptor.
    let sigfd = unsafe { OwnedFd::from_raw_fd(sigfd) };
    let interval = Duration::from_millis(interval_ms);
    let mut next_report = Instant::now();
    loop {
        if Instant::now() >= next_report {
            println!("{}", serde_json::to_string(&mesh.counters()?)?);
            next_report = Instant::now() + interval;
        }
        print_denials(denials.as_mut(), &members);
        let mut fds = vec![libc::pollfd { fd: sigfd.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
        if let Some(d) = &denials {
            fds.push(libc::pollfd { fd: d.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let wait =
            next_report.saturating_duration_since(Instant::now()).as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: `fds` is a live array of the length given.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait) };
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            anyhow::bail!("poll: {}", std::io::Error::last_os_error());
        }
        if fds[0].revents & libc::POLLIN != 0 {
            println!("{}", serde_json::to_string(&mesh.counters()?)?);
            print_denials(denials.as_mut(), &members);
            drop(denials);
            mesh.stop().context("clean shutdown")?;
            eprintln!("mesh-agent: detached and unpinned");
            return Ok(());
        }
    }
}

/// Prints every waiting denial as a JSON line.
fn print_denials(denials: Option<&mut Denials>, members: &BTreeMap<u32, Vec<String>>) {
    for d in denials.map(Denials::drain).unwrap_or_default() {
        println!("{}", serde_json::json!({ "denial": DenialRecord::new(&d, members) }));
    }
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: initialises a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}
