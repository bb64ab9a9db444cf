//! The `mesh-agent` command line: the per-node daemon of the sidecarless mesh, and the commands that talk to the
//! mesh it pinned.
//!
//! - `run`: serve a cgroup until SIGINT, SIGTERM or SIGHUP (then uninstall); adopts the pins of
//!   an agent that died; prints the counters and each policy denial as JSON lines; writes the flow
//!   log (closed connections and denials) and, with `--metrics`, serves Prometheus metrics.
//! - `observe`: the flow log, filtered, as a table or JSON lines (`--follow`).
//! - `apply FILE`: bring services and policy to FILE's, by difference: through the running
//!   agent's control socket (`--control`; the agent then knows the file and its pods), or
//!   straight into the pinned maps when no agent runs (`--pin-dir`).
//! - `status`: what is loaded, attached and pinned, and how full each map is.
//! - `uninstall`: detach everything and remove the pins (also after an agent was killed).
use std::{
    collections::BTreeMap,
    os::fd::{AsFd as _, BorrowedFd},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags, poll},
    sys::{
        signal::{SigSet, Signal},
        signalfd::{SfdFlags, SignalFd},
    },
};

use crate::{
    Engine, Mesh, MeshError, Pinned, Started, control,
    denials::{DenialRecord, Denials, Events},
    flows::{self, Flow, FlowLog, Names},
    meshfile,
    metrics::{self, Metrics},
    observe, pins, status,
};
use mesh_common::FlowRecord;

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
    Run(RunArgs),
    /// Watch a Kubernetes cluster's Services and Endpoints and keep the running agent's services
    /// in step with them, through its control socket (in-cluster credentials).
    #[cfg(feature = "kubernetes")]
    Kubernetes(crate::kubernetes::KubernetesArgs),
    /// Load the redirect's sock_ops and sk_msg programs with each engine (aya: the Rust
    /// programs; libbpf: their C twin) without attaching them, and print what each cost: object
    /// size, load time (median of the runs), translated and JIT-ed sizes, verified instructions.
    Engines {
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
        runs: u32,
        #[arg(long)]
        json: bool,
    },
    /// Print the flow log (closed connections and denials), as a table or JSON lines.
    Observe {
        #[arg(long, default_value = flows::DEFAULT_FLOW_LOG)]
        flow_log: PathBuf,
        /// Keep printing new events as the agent writes them.
        #[arg(long, short)]
        follow: bool,
        /// Only events with this pod at either end.
        #[arg(long)]
        pod: Option<String>,
        /// Only events with this port at either end.
        #[arg(long)]
        port: Option<u16>,
        /// Only `allowed` or `denied` events.
        #[arg(long, value_parser = ["allowed", "denied"])]
        verdict: Option<String>,
        #[arg(long, short, value_enum, default_value_t = observe::Output::Table)]
        output: observe::Output,
    },
    /// Bring the running mesh's services and policy to FILE's: added, changed and removed
    /// entries only.
    Apply {
        file: PathBuf,
        /// The running agent's control socket (its `run --control`): the agent applies the file
        /// with `--pods` if given (and names flows by them from then on), else with its own.
        #[arg(long, conflicts_with = "pin_dir", required_unless_present = "pin_dir")]
        control: Option<PathBuf>,
        /// With no agent running: write the pinned maps under this directory directly.
        #[arg(long)]
        pin_dir: Option<PathBuf>,
        /// Pods file (JSON list of {name, labels, ipv4, ipv6, cgroups}) for backends and rules chosen by label.
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

/// `mesh-agent run`'s arguments: what the lab builds (typed) to start an agent; [`RunArgs::argv`]
/// turns them into the command line clap parses back (a test holds the two to each other).
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct RunArgs {
    /// cgroup v2 directory whose sockets the mesh serves (the whole lab).
    #[arg(long)]
    pub cgroup: PathBuf,
    /// bpffs directory for the pins (maps and links, under layout-N/).
    #[arg(long)]
    pub pin_dir: PathBuf,
    /// Mesh file to apply once serving (also after adopting).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Pods file (JSON list of {name, labels, ipv4, ipv6, cgroups}) for backends and rules chosen by
    /// label, and the pod names in the flow log.
    #[arg(long)]
    pub pods: Option<PathBuf>,
    /// Milliseconds between counter reports.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// The flow log: one JSON line per closed connection and per denial (read it with
    /// `mesh-agent observe`).
    #[arg(long, default_value = flows::DEFAULT_FLOW_LOG)]
    pub flow_log: PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics: Option<std::net::SocketAddr>,
    /// Who loads the redirect's sock_ops and sk_msg programs when installing: the Rust
    /// programs through aya, or their C twin (CO-RE) through libbpf. An adopted mesh keeps
    /// the engine it was installed with.
    #[arg(long, value_enum, default_value_t = Engine::Aya)]
    pub engine: Engine,
    /// Listen for `mesh-agent apply --control` requests on this unix socket: every change
    /// to the mesh then goes through this agent, which knows the pods each identity stands
    /// for (its denial events name them).
    #[arg(long)]
    pub control: Option<PathBuf>,
}

impl RunArgs {
    /// The agent for `cgroup` with its pins in `pin_dir`, every other argument at its default.
    pub fn new(cgroup: PathBuf, pin_dir: PathBuf) -> RunArgs {
        RunArgs {
            cgroup,
            pin_dir,
            file: None,
            pods: None,
            interval_ms: 1000,
            flow_log: flows::DEFAULT_FLOW_LOG.into(),
            metrics: None,
            engine: Engine::Aya,
            control: None,
        }
    }

    /// `run --flag value ...`, every field spelled (destructured: a new field must be added here).
    pub fn argv(&self) -> Vec<String> {
        let RunArgs { cgroup, pin_dir, file, pods, interval_ms, flow_log, metrics, engine, control } = self;
        let path = |flag: &str, p: &Path| [format!("--{flag}"), p.display().to_string()];
        let mut argv = vec!["run".to_owned()];
        argv.extend(path("cgroup", cgroup));
        argv.extend(path("pin-dir", pin_dir));
        argv.extend(file.iter().flat_map(|f| path("file", f)));
        argv.extend(pods.iter().flat_map(|p| path("pods", p)));
        argv.extend(["--interval-ms".to_owned(), interval_ms.to_string()]);
        argv.extend(path("flow-log", flow_log));
        argv.extend(metrics.iter().flat_map(|m| ["--metrics".to_owned(), m.to_string()]));
        argv.extend(["--engine".to_owned(), engine.name().to_owned()]);
        argv.extend(control.iter().flat_map(|c| path("control", c)));
        argv
    }
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
        Command::Run(RunArgs {
            cgroup,
            pin_dir,
            file,
            pods,
            interval_ms,
            flow_log,
            metrics,
            engine,
            control,
        }) => {
            let outputs =
                Outputs { interval: Duration::from_millis(interval_ms), flow_log, metrics, control };
            serve(&cgroup, &pin_dir, engine, file.as_deref(), pods.as_deref(), &outputs)
        }
        Command::Engines { runs, json } => {
            let loaded = crate::engines::measure(runs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&loaded)?);
            } else {
                print!("{}", crate::engines::render(&loaded));
            }
            Ok(())
        }
        Command::Observe { flow_log, follow, pod, port, verdict, output } => {
            let filter = observe::Filter { pod, port, verdict };
            observe::run(&flow_log, &filter, output, follow, &mut std::io::stdout().lock())
        }
        Command::Apply { file, control: Some(socket), pods, .. } => {
            // The agent reads the files: their paths as this process sees them.
            let file = std::path::absolute(&file)?;
            let pods = pods.map(std::path::absolute).transpose()?;
            match control::request(&socket, &control::Request::Apply { file, pods })
                .map_err(anyhow::Error::msg)?
            {
                control::Response::Applied(a) => {
                    say_applied(&a);
                    Ok(())
                }
                control::Response::Error(e) => anyhow::bail!("the agent refused: {e}"),
                control::Response::Done => anyhow::bail!("the agent answered an apply with no result"),
            }
        }
        Command::Apply { file, pin_dir, pods, control: None } => {
            let pin_dir = pin_dir.context("--pin-dir or --control")?;
            // A rejected file is refused before the maps are touched.
            let loaded = meshfile::load(&file, pods.as_deref()).map_err(anyhow::Error::msg)?;
            let mut pinned = Pinned::open(&pin_dir)?;
            apply(&mut pinned, &file, &loaded).map(|(a, _)| say_applied(&a))
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
        #[cfg(feature = "kubernetes")]
        Command::Kubernetes(a) => crate::kubernetes::run(&a),
        Command::Uninstall { pin_dir } => {
            let removed = pins::uninstall(&pin_dir)?;
            println!("removed {} pins from {}", removed.len(), pin_dir.display());
            Ok(())
        }
    }
}

/// Applies `loaded`; returns what changed and which pods each identity stands for.
fn apply(
    pinned: &mut Pinned,
    file: &Path,
    loaded: &meshfile::Loaded,
) -> anyhow::Result<(control::Applied, BTreeMap<u32, Vec<String>>)> {
    let resolved = &loaded.services;
    let services = pinned.set_services(&meshfile::wanted(resolved))?;
    let policy = crate::policy::resolve(&loaded.file, &loaded.pods);
    let p = pinned.set_policy(&policy)?;
    for r in resolved {
        let behind = if r.slot_names.is_empty() { "no backend".into() } else { r.slot_names.join(", ") };
        eprintln!("mesh-agent: service {}: {behind}", r.name);
    }
    let applied = control::Applied {
        file: file.to_owned(),
        services: control::Changes {
            added: services.added,
            changed: services.changed,
            removed: services.removed,
            unchanged: services.unchanged,
        },
        rules: loaded.file.policy.len(),
        http_rules: policy.http.len(),
        allow_entries: policy.allow.len(),
        policed: policy.policed.len(),
        policy_added: p.added,
        policy_removed: p.removed,
    };
    Ok((applied, policy.members))
}

/// What applying changed, as the agent says it (`applied FILE: ...` last: the lab reads it).
fn say_applied(a: &control::Applied) {
    eprintln!(
        "mesh-agent: policy: {} rules ({} with HTTP matches), {} allow entries, {} policed identities ({} entries added, {} removed)",
        a.rules, a.http_rules, a.allow_entries, a.policed, a.policy_added, a.policy_removed
    );
    let c = a.services;
    eprintln!(
        "mesh-agent: applied {}: {} added, {} changed, {} removed, {} unchanged",
        a.file.display(),
        c.added,
        c.changed,
        c.removed,
        c.unchanged
    );
}

/// How often the running agent drains the flow records whether or not the kernel woke it.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// Where a running agent reports.
struct Outputs {
    /// Between counter reports on stdout.
    interval: Duration,
    flow_log: PathBuf,
    metrics: Option<std::net::SocketAddr>,
    /// Where `mesh-agent apply --control` reaches this agent.
    control: Option<PathBuf>,
}

fn serve(
    cgroup: &Path,
    pin_dir: &Path,
    engine: Engine,
    file: Option<&Path>,
    pods: Option<&Path>,
    outputs: &Outputs,
) -> anyhow::Result<()> {
    // Block the stop signals first so they wait for sigtimedwait below instead of killing us
    // half-way through installing.
    let signals = stop_signals();
    signals.thread_block().context("blocking the stop signals")?;
    // A bad file is refused before anything is installed or adopted.
    let loaded = file.map(|f| meshfile::load(f, pods).map_err(anyhow::Error::msg)).transpose()?;
    // The pods name the flow log's addresses, with or without a mesh file.
    let pod_list = match (&loaded, pods) {
        (Some(l), _) => l.pods.clone(),
        (None, Some(p)) => meshfile::load_pods(p).map_err(anyhow::Error::msg)?,
        (None, None) => Vec::new(),
    };

    let mut mesh = Mesh::start(cgroup, pin_dir, engine)?;
    match mesh.started() {
        Started::Installed { replaced_partial } => eprintln!(
            "mesh-agent: installed in {} (redirect loaded by {}){}",
            pins::layout_dir(pin_dir).display(),
            engine.name(),
            if *replaced_partial { " (removed an incomplete install first)" } else { "" }
        ),
        Started::Adopted { links, services, engine: installed } => eprintln!(
            "mesh-agent: adopted {links} pinned links and {services} services from {} (nothing attached again; redirect loaded by {})",
            pins::layout_dir(pin_dir).display(),
            installed.name()
        ),
    }
    match mesh.reads_estimated() {
        None => eprintln!(
            "mesh-agent: flow control: a connection takes TCP once its peer has {} redirected bytes unread ({} counts reads)",
            mesh_common::REDIRECT_BUDGET,
            pins::UNREAD_PROGRAM
        ),
        Some(why) => eprintln!(
            "mesh-agent: flow control: a connection takes TCP once it redirected {} bytes its peer did not answer (reads estimated: {why})",
            mesh_common::REDIRECT_BUDGET
        ),
    }
    match mesh.pressure_unwatched() {
        None => eprintln!(
            "mesh-agent: flow control: under TCP memory pressure the budget is {} bytes ({} watches it)",
            mesh_common::PRESSURE_BUDGET,
            pins::PRESSURE_PROGRAM
        ),
        Some(why) => eprintln!("mesh-agent: flow control: TCP memory pressure not watched: {why}"),
    }
    // The retransmit tracepoint lives with this process; the datapath does not need it.
    let (tracepoint, tracepoint_error) = match crate::tracepoint::attach(pin_dir) {
        Ok(t) => {
            eprintln!("mesh-agent: tracepoint tcp:tcp_retransmit_skb attached (mesh_retransmit)");
            (Some(t), None)
        }
        Err(why) => {
            eprintln!("mesh-agent: tracepoint tcp:tcp_retransmit_skb not attached: {why}");
            (None, Some(why))
        }
    };
    let mut members = BTreeMap::new();
    let mut applied = None;
    if let (Some(f), Some(l)) = (file, &loaded) {
        let (a, m) = apply(mesh.pins_mut(), f, l)?;
        say_applied(&a);
        (applied, members) = (Some(a), m);
    }
    let mut events = Reporter {
        denials: mesh
            .pins_mut()
            .take_denials()
            .map(|m| Denials::new(m, mesh_common::DENIALS_MAP))
            .transpose()?,
        flows: mesh
            .pins_mut()
            .take_flow_events()
            .map(|m| Events::<FlowRecord>::new(m, mesh_common::FLOW_EVENTS_MAP))
            .transpose()?,
        log: FlowLog::open(&outputs.flow_log)
            .with_context(|| format!("cannot open the flow log {}", outputs.flow_log.display()))?,
        names: Names::new(&pod_list),
        members,
        metrics: None,
    };
    let mut metrics_at = None;
    if let Some(addr) = outputs.metrics {
        let (metrics, registry) = Metrics::new();
        let bound = metrics::serve(addr, pin_dir.to_owned(), metrics.clone(), registry)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        eprintln!("mesh-agent: metrics at http://{bound}/metrics");
        events.metrics = Some(metrics);
        metrics_at = Some(bound);
    }
    let socket = match &outputs.control {
        Some(path) => {
            let server = control::Server::bind(path)
                .with_context(|| format!("cannot listen on the control socket {}", path.display()))?;
            eprintln!("mesh-agent: control socket {}", server.path().display());
            Some(server)
        }
        None => None,
    };
    eprintln!("mesh-agent: flow log {}", events.log.path().display());
    let ready = control::Ready {
        cgroup: cgroup.to_owned(),
        pin_dir: pin_dir.to_owned(),
        started: mesh.started().clone(),
        tracepoint_error,
        reads_estimated: mesh.reads_estimated().map(str::to_owned),
        pressure_unwatched: mesh.pressure_unwatched().map(str::to_owned),
        applied,
        flow_log: events.log.path().to_owned(),
        metrics: metrics_at,
        control: socket.as_ref().map(|s| s.path().to_owned()),
    };
    eprintln!("{}", ready.line());
    eprintln!("mesh-agent: serving {}", cgroup.display());
    // One wait for everything: a stop signal (through a signalfd), an event in a ring buffer
    // (handled at once), or the next counter report.
    let sigfd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC).context("signalfd")?;
    let mut next_report = Instant::now();
    loop {
        if Instant::now() >= next_report {
            println!("{}", serde_json::to_string(&mesh.counters()?)?);
            next_report = Instant::now() + outputs.interval;
        }
        events.drain()?;
        let others: Vec<std::os::fd::RawFd> =
            events.fds().into_iter().chain(socket.as_ref().map(control::Server::as_raw_fd)).collect();
        // SAFETY: the ring buffers' and the control socket's descriptors, owned by `events` and
        // `socket`, which outlive this poll.
        let others = others.iter().map(|fd| unsafe { BorrowedFd::borrow_raw(*fd) });
        let mut fds: Vec<PollFd<'_>> = std::iter::once(sigfd.as_fd())
            .chain(others)
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        // Flow records do not wake us one by one (see telemetry.rs): look every DRAIN_TICK.
        let wait = next_report.saturating_duration_since(Instant::now()).min(DRAIN_TICK).as_millis() as u16;
        match poll(&mut fds, wait) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => anyhow::bail!("poll: {e}"),
        }
        let stop = fds[0].revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        drop(fds);
        if let Some(server) = &socket {
            // Every change to the mesh while it runs comes through here, with this agent's pods.
            server.serve(|request| {
                let done = |r: Result<(), MeshError>| match r {
                    Ok(()) => control::Response::Done,
                    Err(e) => control::Response::Error(e.to_string()),
                };
                match request {
                    control::Request::Apply { file, pods: given } => {
                        let loaded =
                            meshfile::load(&file, given.as_deref().or(pods)).map_err(anyhow::Error::msg);
                        let applied = loaded.and_then(|l| Ok((apply(mesh.pins_mut(), &file, &l)?, l.pods)));
                        match applied {
                            Ok(((a, m), applied_pods)) => {
                                say_applied(&a);
                                events.members = m;
                                if given.is_some() {
                                    events.names = Names::new(&applied_pods);
                                }
                                control::Response::Applied(a)
                            }
                            Err(e) => {
                                eprintln!("mesh-agent: apply {}: {e:#}", file.display());
                                control::Response::Error(format!("{e:#}"))
                            }
                        }
                    }
                    control::Request::Telemetry { on } => done(mesh.pins_mut().set_telemetry(on)),
                    control::Request::FlowControl { on } => done(mesh.pins_mut().set_flow_budget(if on {
                        mesh_common::REDIRECT_BUDGET
                    } else {
                        0
                    })),
                    control::Request::SidecarPort { port } => done(mesh.pins_mut().set_sidecar_port(port)),
                }
            })?;
        }
        if stop {
            println!("{}", serde_json::to_string(&mesh.counters()?)?);
            events.drain()?;
            drop(events);
            // Its map descriptors would keep the maps alive past their unpinning.
            drop(tracepoint);
            mesh.stop().context("clean shutdown")?;
            eprintln!("mesh-agent: detached and unpinned");
            return Ok(());
        }
    }
}

/// What the running agent does with the kernel's events.
struct Reporter {
    denials: Option<Denials>,
    flows: Option<Events<FlowRecord>>,
    log: FlowLog,
    names: Names,
    /// Identity -> pods, for denials.
    members: BTreeMap<u32, Vec<String>>,
    metrics: Option<Metrics>,
}

impl Reporter {
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        self.denials.iter().map(Events::as_raw_fd).chain(self.flows.iter().map(Events::as_raw_fd)).collect()
    }

    /// Every waiting event: denials printed (stdout) and logged, flows logged; both counted in
    /// the metrics.
    fn drain(&mut self) -> anyhow::Result<()> {
        for d in self.denials.as_mut().map(Events::drain).unwrap_or_default() {
            let record = DenialRecord::new(&d, &self.members);
            let event = serde_json::json!({ "denial": record });
            println!("{event}");
            self.log.write(&event)?;
            if let Some(m) = &self.metrics {
                m.denial(&record);
            }
        }
        let now = SystemTime::now();
        for r in self.flows.as_mut().map(Events::drain).unwrap_or_default() {
            let flow = Flow::new(&r, &self.names, now);
            self.log.write(&serde_json::json!({ "flow": flow }))?;
            if let Some(m) = &self.metrics {
                m.flow(&flow);
            }
        }
        self.log.flush()?;
        Ok(())
    }
}

fn stop_signals() -> SigSet {
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP].into_iter().collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// What the lab builds survives the trip through `argv()` and clap, every field set.
    #[test]
    fn run_args_parse_back_from_their_argv() {
        let plain = RunArgs::new("/sys/fs/cgroup/lab".into(), "/sys/fs/bpf/lab".into());
        let full = RunArgs {
            file: Some("/tmp/mesh.toml".into()),
            pods: Some("/tmp/pods.json".into()),
            interval_ms: 3_600_000,
            flow_log: "/tmp/flows.jsonl".into(),
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            engine: Engine::Libbpf,
            control: Some("/tmp/control.sock".into()),
            ..plain.clone()
        };
        for args in [plain, full] {
            let argv = std::iter::once("mesh-agent".to_owned()).chain(args.argv());
            match Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}")).command {
                Command::Run(back) => assert_eq!(back, args),
                other => panic!("parsed as {other:?}"),
            }
        }
    }
}
