//! The lab's mesh agent: one `mesh-agent run` process serving the lab's whole cgroup, as a node
//! runs it, and the lab's own handle on the maps it pinned ([`Pinned`]: counters, services,
//! the sidecar port). The datapath lives in the pins, not in the process: a scenario can kill the
//! agent (the mesh keeps working) and start it again (it adopts the pins).
use std::{
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use mesh_agent::{
    Engine, Pinned,
    cli::EXIT_UNMET,
    control::{Ready, Request, Response},
    pins,
};

use crate::{LabError, process::Cmd};

/// How long an agent may take to install (loading 13 programs under TCG takes seconds).
const START_TIMEOUT: Duration = Duration::from_mins(2);
/// How long a stopping agent may take to detach and unpin before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The files an agent works with, in the lab's run folder.
pub struct Files {
    /// Where the agent writes its flow log.
    pub flow_log: PathBuf,
    /// The lab's pods (for backends, rules and the flow log's names).
    pub pods: PathBuf,
    /// Where the running agent takes mesh files (`mesh-agent apply --control`).
    pub control: PathBuf,
    /// What the agent said on stderr, every line.
    pub log: PathBuf,
    /// The mesh file the agent applies when it starts (after adopting too), once one was
    /// applied.
    pub mesh_file: Option<PathBuf>,
}

pub struct Agent {
    cmd: Cmd,
    /// Who loads the redirect when this agent installs the mesh.
    engine: Engine,
    cgroup: PathBuf,
    pin_dir: PathBuf,
    files: Files,
    child: Option<Child>,
    pinned: Option<Pinned>,
    /// What the running agent (or the last one) said once it served.
    ready: Option<Ready>,
}

impl Agent {
    /// Starts the agent (with the lab's pods, applying the mesh file once it serves) and waits
    /// until it serves; returns it with what it said.
    pub fn start(
        cmd: &Cmd,
        engine: Engine,
        cgroup: &Path,
        pin_dir: &Path,
        files: Files,
    ) -> Result<(Agent, Vec<String>), LabError> {
        let mut agent = Agent {
            cmd: cmd.clone(),
            engine,
            cgroup: cgroup.to_owned(),
            pin_dir: pin_dir.to_owned(),
            files,
            child: None,
            pinned: None,
            ready: None,
        };
        let said = agent.spawn()?;
        Ok((agent, said))
    }

    /// The maps, opened from the pins.
    pub fn pins(&self) -> &Pinned {
        self.pinned.as_ref().expect("opened at start")
    }

    pub fn pins_mut(&mut self) -> &mut Pinned {
        self.pinned.as_mut().expect("opened at start")
    }

    /// Where the running agent serves Prometheus metrics.
    pub fn metrics(&self) -> Option<std::net::SocketAddr> {
        self.child.as_ref().and(self.ready.as_ref()?.metrics)
    }

    /// What the agent said once it served: how it started, what it applied, where it listens.
    pub fn ready(&self) -> Option<&Ready> {
        self.ready.as_ref()
    }

    /// What the running agent costs: its resident memory and the kernel memory of the BPF maps
    /// it holds (each map once, by id, from `memlock` in `/proc/<pid>/fdinfo`), in KiB.
    pub fn memory_kb(&self) -> Option<(u64, u64)> {
        let pid = self.pid()?;
        let rss = crate::sidecar::rss_kb(pid)?;
        let mut maps = std::collections::BTreeMap::new();
        for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?.flatten() {
            let info = std::fs::read_to_string(fd.path()).unwrap_or_default();
            let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok());
            if let (Some(id), Some(bytes)) = (field("map_id:"), field("memlock:")) {
                maps.insert(id, bytes);
            }
        }
        Some((rss, maps.values().sum::<u64>() / 1024))
    }

    /// The agent process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Has the running agent apply `mesh` (through its control socket); a restarted agent
    /// applies it too.
    pub fn apply(&mut self, mesh: &Path) -> Result<mesh_agent::control::Applied, LabError> {
        let answer = self.ask(&Request::Apply { file: mesh.to_owned(), pods: None })?;
        self.files.mesh_file = Some(mesh.to_owned());
        match answer {
            Response::Applied(a) => Ok(a),
            other => {
                Err(LabError::Agent { message: format!("apply: the agent answered {other:?}"), unmet: false })
            }
        }
    }

    /// Has the running agent switch flow records on or off (new connections).
    pub fn set_telemetry(&mut self, on: bool) -> Result<(), LabError> {
        self.ask(&Request::Telemetry { on }).map(drop)
    }

    /// Has the running agent apply flow control through the redirect, or not.
    pub fn set_flow_control(&mut self, on: bool) -> Result<(), LabError> {
        self.ask(&Request::FlowControl { on }).map(drop)
    }

    /// Has the running agent route app <-> proxy hops through the redirect (0: no proxies).
    pub fn set_sidecar_port(&mut self, port: u16) -> Result<(), LabError> {
        self.ask(&Request::SidecarPort { port }).map(drop)
    }

    /// One request to the running agent; its refusal is an error that says what it was.
    fn ask(&self, r: &Request) -> Result<Response, LabError> {
        let failed = |message: String| LabError::Agent { message, unmet: false };
        if self.child.is_none() {
            return Err(failed(format!(
                "{r:?}: the mesh agent is not running (an `agent` step killed it: start it again first)"
            )));
        }
        match mesh_agent::control::request(&self.files.control, r).map_err(failed)? {
            Response::Error(e) => Err(failed(format!("{r:?}: {e}"))),
            ok => Ok(ok),
        }
    }

    fn spawn(&mut self) -> Result<Vec<String>, LabError> {
        let args = mesh_agent::cli::RunArgs {
            // The lab reads counters from the pins; the agent's own reports are not needed.
            interval_ms: 3_600_000,
            flow_log: self.files.flow_log.clone(),
            control: Some(self.files.control.clone()),
            // In the node's namespace, on a port the kernel picks: the agent says which.
            metrics: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            engine: self.engine,
            pods: Some(self.files.pods.clone()),
            file: self.files.mesh_file.clone(),
            ..mesh_agent::cli::RunArgs::new(self.cgroup.clone(), self.pin_dir.clone())
        }
        .argv();
        let mut cmd = self.cmd.command(&args);
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // SAFETY: prctl is async-signal-safe. The agent dies with the lab's owner thread, even
        // when that is killed outright (the pins then go with `lab-runner clean`).
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let what = crate::process::describe(&cmd);
        let mut child = cmd.spawn().map_err(|source| LabError::Spawn { command: what.clone(), source })?;
        let (tx, lines) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped");
        // Everything the agent says goes to its log, for as long as it runs: a reader that
        // stopped reading would turn the agent's next line into EPIPE (and its eprintln into a
        // panic). The first lines also come here, until it serves.
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.files.log)
            .map_err(LabError::io("cannot open", &self.files.log))?;
        std::thread::spawn(move || {
            use std::io::Write as _;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut said = Vec::new();
        // What it says for programs: one JSON line once it serves.
        let ready = loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => match Ready::parse(&line) {
                    Some(Ok(ready)) => break ready,
                    Some(Err(e)) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(LabError::Parse { command: what.clone(), detail: e });
                    }
                    None => said.push(line.trim_start_matches("mesh-agent: ").to_owned()),
                },
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Exited before serving: its last words say why.
                    let status = child.wait().ok();
                    let unmet = status.and_then(|s| s.code()) == Some(EXIT_UNMET);
                    return Err(LabError::Agent { message: said.join("\n"), unmet });
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(LabError::Timeout {
                        what: format!("{what} (starting)"),
                        seconds: START_TIMEOUT.as_secs(),
                    });
                }
            }
        };
        self.child = Some(child);
        self.ready = Some(ready);
        if self.pinned.is_none() {
            self.pinned = Some(Pinned::open(&self.pin_dir)?);
        }
        Ok(said)
    }

    /// SIGKILL: the agent gets no chance to clean up; the datapath stays in the pins.
    pub fn kill(&mut self) -> Option<u32> {
        let mut child = self.child.take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        Some(pid)
    }

    /// Starts a new agent process (after [`Agent::kill`]); it adopts the pins.
    pub fn restart(&mut self) -> Result<Vec<String>, LabError> {
        self.kill();
        self.spawn()
    }

    /// Stops the agent (SIGTERM: it detaches and unpins) and makes sure nothing is left: a dead
    /// or stuck agent's pins are removed here.
    pub fn stop(mut self) -> Result<(), LabError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), LabError> {
        // Our map descriptors first: held, they would keep the maps alive after the unpin.
        drop(self.pinned.take());
        let mut failure = None;
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_TIMEOUT;
            loop {
                match child.try_wait() {
                    Ok(Some(s)) if s.success() => break,
                    Ok(Some(s)) => {
                        failure = Some(format!("the mesh agent exited with {s} when stopped"));
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        failure =
                            Some(format!("the mesh agent did not stop within {} s", STOP_TIMEOUT.as_secs()));
                        break;
                    }
                }
            }
        }
        // Whatever the agent did or could not do: no pin survives the lab's mesh.
        pins::uninstall(&self.pin_dir)?;
        match failure {
            Some(message) => Err(LabError::Agent { message, unmet: false }),
            None => Ok(()),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
