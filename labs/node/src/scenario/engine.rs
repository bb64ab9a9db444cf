//! Runs a [`Scenario`]: builds the lab, executes the steps in order, keeps named results, checks
//! expectations, and tears everything down (also on error and on cancel).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use mesh_agent::meshfile::{MeshFile, PodAddrs, Resolved};
use mesh_agent::{Counters, Pinned};
use mesh_common::{AF_INET, AF_INET6, Backend, IPPROTO_TCP, ServiceKey};
use serde::Serialize;
use workloads::{
    conform::{CaseResult, ConformReport, HoldReport},
    connect_rate::ConnectReport,
    cpu::CpuTimes,
    lb_probe::ProbeReport,
    rr::RrReport,
    stream::StreamReport,
};

use super::{
    Context, Outcome, kernel_bugs, kernel_release, requirements,
    spec::{
        AgentAction, Family, FigureDef, Measure, OnOff, Op, PathDef, Scenario, Severity, SidecarMode, Step,
        ToolDef, WorkloadDef,
    },
    stats::{self, Spread, Verdict},
};
use crate::{
    Event, Lab, LabError, PodSpec,
    sidecar::{self, OUTBOUND_PORT, Sidecars},
};

/// Upper bound for one rr run (generous: emulated VMs are slow).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// One data path of a bench step: its median latency run (the repetition whose p50 is closest
/// to the median), with packets and mesh counters totalled over all repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub name: String,
    /// What was in the data path: `direct`, `sidecars per-pod`, `mesh`, ...
    pub config: String,
    pub rr: RrReport,
    /// Packets through every pod's eth0, rx + tx.
    pub packets: u64,
    pub mesh: Counters,
    /// Resident memory of each proxy after the run, KiB.
    pub proxy_rss_kb: Vec<(String, u64)>,
}

/// One conformance run (one family) and each case's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct ConformRun {
    pub name: String,
    pub config: String,
    pub family: Family,
    /// The run these transcripts were compared with.
    pub compare: Option<String>,
    pub cases: Vec<CaseVerdict>,
    pub mesh: Counters,
    /// `across_mesh`: the connection held open while the mesh started and stopped.
    pub held: Option<HoldReport>,
}

/// A case's transcript and how it compared.
#[derive(Debug, Clone, Serialize)]
pub struct CaseVerdict {
    #[serde(flatten)]
    pub result: CaseResult,
    /// `same`, `differs`, `kernel bug` (a known kernel behaviour, see [`kernel_bugs`]) or
    /// `reference` (nothing to compare with).
    pub verdict: &'static str,
    /// For `kernel bug`: which one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_bug: Option<&'static str>,
    /// On a difference, the reference transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<CaseResult>,
}

/// One expectation as evaluated.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub text: String,
    /// The verdict is [`Verdict::Holds`].
    pub passed: bool,
    pub verdict: Verdict,
    pub severity: Severity,
}

/// The machine a scenario ran on, and how busy it was meanwhile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    /// 1-minute load average at the start and at the end.
    pub load_start: f64,
    pub load_end: f64,
    /// Share of all CPU time during the run: working, and stolen by a hypervisor.
    pub busy_pct: f64,
    pub steal_pct: f64,
    /// Benchmark clients on the first CPU, servers on the last.
    pub pinned: bool,
}

impl Machine {
    fn load() -> f64 {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN)
    }
}

/// The scenario's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub lab: String,
    /// `name -> key -> value` for every named result.
    pub results: BTreeMap<String, BTreeMap<String, f64>>,
    /// `name.key -> spread` for figures measured in repetitions and ratios derived from them.
    pub stats: BTreeMap<String, Spread>,
    pub runs: Vec<Run>,
    pub conform: Vec<ConformRun>,
    pub checks: Vec<Check>,
    /// Steps skipped for want of something on this kernel or machine: step -> why.
    pub skipped_steps: BTreeMap<String, String>,
    /// The RTT of every flow record `transfer` steps checked (the report plots them).
    pub flows: Vec<FlowRtt>,
    /// What a workload said when it failed, by step (the figures only count the failures).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, Vec<String>>,
    pub machine: Machine,
}

/// One flow record's RTT, as a `transfer` step read it from the flow log.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRtt {
    /// The step's result name.
    pub step: String,
    /// `client` or `server`.
    pub reporter: String,
    /// The client's port (which connection).
    pub port: u64,
    pub srtt_us: f64,
    pub rtt_min_us: f64,
    pub rtt_max_us: f64,
}

struct Engine<'a> {
    ctx: &'a Context,
    lab: Lab,
    report: Report,
    failures: Vec<String>,
    sidecars: Sidecars,
    /// Ports each pod's workload listens on (what a per-node proxy routes to).
    ports: BTreeMap<String, Vec<u16>>,
    /// The services of the mesh file applied last, with who is behind each backend slot.
    services: Vec<Resolved>,
    /// Background loads by name, until an `await` step collects them.
    loads: BTreeMap<String, Load>,
    /// What the policy maps hold after the mesh file applied last.
    policy: mesh_agent::policy::Wanted,
    /// Results of steps skipped (a kernel without what they need), with the reason: steps
    /// that read them are skipped too.
    skipped: BTreeMap<String, String>,
    /// The scenario's `[files]`, written into the run folder: name and path.
    files: Vec<(String, std::path::PathBuf)>,
    /// Mesh files named by path, read with the scenario.
    mesh_files: BTreeMap<String, String>,
}

/// A `load` step's process, running in the background.
struct Load {
    child: std::process::Child,
    label: String,
    /// Reads the report the load prints when it ends.
    report: std::thread::JoinHandle<String>,
    /// The mesh's counters when it started.
    counters: Counters,
}

/// The bench step's fields.
struct BenchArgs<'s> {
    from: &'s str,
    target: SocketAddr,
    paths: &'s [PathDef],
    measures: &'s [Measure],
    tools: &'s [ToolDef],
    repetitions: u32,
    round_trips: u64,
}

/// Round trips of the unmeasured visit each path gets before the repetitions.
const WARMUP_ROUND_TRIPS: u64 = 500;

/// Figures summed over repetitions rather than summarised by their median: events that must
/// not vanish in a median.
const TOTALS: &[&str] = &["write_errors", "write_errors_4"];

/// What one visit of a path measured.
#[derive(Default)]
struct Visit {
    figures: Vec<(String, f64)>,
    rr: Option<RrReport>,
    /// Packets on the client's interface and the mesh's counters, over the latency run (or,
    /// in a bench of tools only, over the tools' runs).
    packets: u64,
    mesh: Counters,
    counted: bool,
    /// Bulk streams started, and what the failed ones said (`N stream(s): message`).
    streams: u32,
    stream_errors: Vec<String>,
}

impl Visit {
    fn add<const N: usize>(&mut self, figures: [(&str, f64); N]) {
        self.figures.extend(figures.map(|(k, v)| (k.to_owned(), v)));
    }
}

// ANCHOR: read_figure
/// The figure in a program's output: the capture of the last matching line, times the factor.
fn read_figure(output: &str, f: &FigureDef) -> Option<f64> {
    let re = regex::Regex::new(&f.regex).ok()?;
    let number = output.lines().rev().find_map(|l| re.captures(l)?.get(1))?;
    Some(f.factor * number.as_str().parse::<f64>().ok()?)
}
// ANCHOR_END: read_figure

/// The conform step's fields.
struct ConformArgs<'s> {
    name: &'s str,
    from: &'s str,
    to: &'s str,
    port: u16,
    families: &'s [Family],
    compare: Option<&'s str>,
    also_accept: Option<&'s str>,
    cases: &'s [String],
    short_lived: Option<u32>,
    across_mesh: bool,
    via: Option<&'s str>,
}

/// Runs the scenario in a fresh lab; a scenario whose requirements are missing is skipped.
pub fn run(sc: &Scenario, ctx: &Context) -> Result<Outcome, LabError> {
    let outcome = |passed, failures, skipped, report| Outcome {
        scenario: sc.name.clone(),
        kernel: kernel_release(),
        passed,
        failures,
        skipped,
        report,
    };
    let missing = requirements::unmet(&sc.requires, &mut |line| {
        ctx.emit(Event::Output { step: "requirements".into(), line })
    });
    if !missing.is_empty() {
        let reason = missing.join("; ");
        ctx.emit(Event::StepSkipped { step: "requirements".into(), reason: reason.clone() });
        return Ok(outcome(false, Vec::new(), Some(reason), serde_json::Value::Null));
    }
    let specs: Vec<PodSpec> =
        sc.pods.iter().map(|p| PodSpec { name: p.name.clone(), labels: p.labels.clone() }).collect();
    let lab = Lab::create(&ctx.host, &specs)?;
    ctx.emit(Event::LabUp { id: lab.id().to_string(), pods: lab.pods().to_vec() });
    let cpu0 = CpuTimes::now();
    let machine = Machine {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        load_start: Machine::load(),
        pinned: ctx.options.pin,
        ..Machine::default()
    };
    let mut e = Engine {
        ctx,
        report: Report { lab: lab.id().to_string(), machine, ..Report::default() },
        lab,
        failures: Vec::new(),
        sidecars: Sidecars::default(),
        ports: BTreeMap::new(),
        services: Vec::new(),
        loads: BTreeMap::new(),
        policy: mesh_agent::policy::Wanted::default(),
        skipped: BTreeMap::new(),
        files: Vec::new(),
        mesh_files: sc.mesh_files.clone(),
    };
    let result = e.steps(sc);
    // Teardown errors matter (a leak is a bug) but must not hide the scenario's own error.
    let Engine { lab, mut report, failures, loads, .. } = e;
    // Loads a failed step left running: killed and reaped before their pods go.
    for (_, mut l) in loads {
        let _ = l.child.kill();
        let _ = l.child.wait();
    }
    let cpu = CpuTimes::now().since(&cpu0);
    let pct = |v: u64| 100.0 * v as f64 / cpu.total().max(1) as f64;
    report.machine.load_end = Machine::load();
    report.machine.busy_pct = pct(cpu.busy);
    report.machine.steal_pct = pct(cpu.steal);
    let teardown = lab.teardown();
    result?;
    teardown?;
    let report = serde_json::to_value(&report).expect("report serializes");
    Ok(outcome(failures.is_empty(), failures, None, report))
}

impl Engine<'_> {
    fn steps(&mut self, sc: &Scenario) -> Result<(), LabError> {
        self.start_workloads(sc)?;
        for (i, step) in sc.steps.iter().enumerate() {
            self.ctx.cancel.check()?;
            let step = step.get_ref();
            let label = format!("{}. {}", i + 1, label(step));
            let (explain, try_) = texts(step);
            self.ctx.emit(Event::StepStarted { step: label.clone(), explain: explain.to_owned() });
            match self.step(&label, step) {
                Ok(()) => {}
                Err(e) => {
                    self.ctx.emit(Event::StepFailed { step: label, reason: crate::error::chain(&e) });
                    return Err(e);
                }
            }
            let try_: Vec<String> = try_.iter().map(|t| self.fill(t)).collect();
            self.ctx.pause(&label, &try_)?;
        }
        Ok(())
    }

    fn start_workloads(&mut self, sc: &Scenario) -> Result<(), LabError> {
        for (name, contents) in &sc.files {
            let path = self.lab.write_file(name, contents.as_bytes())?;
            self.files.push((name.clone(), path));
        }
        for p in &sc.pods {
            let args: Vec<String> = match &p.workload {
                None => continue,
                Some(WorkloadDef::RrServer { port }) => {
                    vec![
                        "rr-server".into(),
                        "--listen".into(),
                        format!("[::]:{port}"),
                        "--name".into(),
                        p.name.clone(),
                    ]
                }
                Some(WorkloadDef::Echo { port }) => {
                    vec!["echo".into(), "--listen".into(), format!("[::]:{port}")]
                }
                Some(WorkloadDef::ConformServer { port }) => {
                    vec!["conform-server".into(), "--listen".into(), format!("[::]:{port}")]
                }
                Some(WorkloadDef::TransferServer { port }) => {
                    vec!["transfer-server".into(), "--listen".into(), format!("[::]:{port}")]
                }
                Some(WorkloadDef::HttpServer { port }) => {
                    vec![
                        "http-server".into(),
                        "--listen".into(),
                        format!("[::]:{port}"),
                        "--name".into(),
                        p.name.clone(),
                    ]
                }
                Some(WorkloadDef::Command { port, command }) => {
                    let words: Vec<String> = command.iter().map(|w| self.fill(w)).collect();
                    let cmd = command_of(&words)?;
                    let pid = self.lab.spawn(&p.name, self.pinned(cmd, Role::Server))?;
                    self.ports.entry(p.name.clone()).or_default().push(*port);
                    self.out("lab", format!("pod {}: {} (pid {pid})", p.name, words.join(" ")));
                    wait_listening(pid, *port, &self.ctx.cancel).map_err(|e| match e {
                        LabError::Command { command, stderr } => LabError::Command {
                            command,
                            stderr: format!(
                                "{stderr}; its log ({}):\n{}",
                                self.lab.log_path(&p.name).display(),
                                self.lab.log_tail(&p.name, 15)
                            ),
                        },
                        e => e,
                    })?;
                    continue;
                }
            };
            let Some(port) = p.workload.as_ref().map(WorkloadDef::port) else { continue };
            self.ports.entry(p.name.clone()).or_default().push(port);
            let line = format!("pod {}: workload {}", p.name, args.join(" "));
            let cmd = self.pinned(self.ctx.workload.command(&args), Role::Server);
            self.lab.spawn(&p.name, cmd)?;
            self.ctx.emit(Event::Output { step: "lab".into(), line });
        }
        Ok(())
    }

    /// Fills the placeholders of a `try` command: `<pins>` (the folder holding the mesh's
    /// pinned maps and links), `<pin-dir>` (the agent's `--pin-dir`, above it), `<cgroup>` (the
    /// lab's cgroup), `<flow-log>` (the agent's flow log), `<mesh-agent>` (the agent command),
    /// `<workload>` (the workload command), `<file:NAME>` (a file of the scenario's `[files]`),
    /// `<netns:POD>`, `<ip:POD>` and `<ip6:POD>`.
    fn fill(&self, t: &str) -> String {
        let pin_dir = self.lab.id().pin_dir();
        let mut s = t.replace("<pins>", &mesh_agent::pins::layout_dir(&pin_dir).display().to_string());
        s = s.replace("<pin-dir>", &pin_dir.display().to_string());
        s = s.replace("<cgroup>", &self.lab.cgroup().display().to_string());
        s = s
            .replace("<flow-log>", &self.lab.id().run_dir().join(crate::lab::FLOW_LOG).display().to_string());
        let agent = &self.ctx.agent;
        let agent = std::iter::once(agent.program.display().to_string()).chain(agent.prefix.iter().cloned());
        s = s.replace("<mesh-agent>", &agent.collect::<Vec<_>>().join(" "));
        let workload = &self.ctx.workload;
        let workload =
            std::iter::once(workload.program.display().to_string()).chain(workload.prefix.iter().cloned());
        s = s.replace("<workload>", &workload.collect::<Vec<_>>().join(" "));
        for (name, path) in &self.files {
            s = s.replace(&format!("<file:{name}>"), &path.display().to_string());
        }
        for p in self.lab.pods() {
            s = s.replace(&format!("<netns:{}>", p.name), &p.netns);
            s = s.replace(&format!("<ip:{}>", p.name), &p.ipv4.to_string());
            s = s.replace(&format!("<ip6:{}>", p.name), &p.ipv6.to_string());
        }
        s
    }

    fn out(&self, step: &str, line: String) {
        self.ctx.emit(Event::Output { step: step.into(), line });
    }

    fn metric(&self, step: &str, name: &str, value: f64, unit: &str) {
        self.ctx.emit(Event::Metric { step: step.into(), name: name.into(), value, unit: unit.into() });
    }

    fn value(&self, path: &str) -> f64 {
        let (name, key) = path.rsplit_once('.').expect("checked at parse time");
        self.report.results.get(name).and_then(|r| r.get(key)).copied().unwrap_or(f64::NAN)
    }

    fn step(&mut self, label: &str, step: &Step) -> Result<(), LabError> {
        match step {
            Step::Explain { .. } => {}
            Step::Bench {
                from, to, port, family, paths, measures, tools, repetitions, round_trips, ..
            } => {
                let args = BenchArgs {
                    from,
                    target: SocketAddr::new(self.pod_ip(to, *family)?, *port),
                    paths,
                    measures,
                    tools,
                    repetitions: repetitions.unwrap_or(self.ctx.options.repetitions),
                    round_trips: round_trips.unwrap_or(self.ctx.options.round_trips),
                };
                self.bench(label, &args)?;
            }
            Step::Conform {
                name,
                from,
                to,
                port,
                families,
                compare,
                also_accept,
                cases,
                short_lived,
                across_mesh,
                via,
                ..
            } => {
                let args = ConformArgs {
                    name,
                    from,
                    to,
                    port: *port,
                    families,
                    compare: compare.as_deref(),
                    also_accept: also_accept.as_deref(),
                    cases,
                    short_lived: *short_lived,
                    across_mesh: *across_mesh,
                    via: via.as_deref(),
                };
                self.conform(label, &args)?;
            }
            Step::Isolation { name, pods, port, .. } => self.isolation(label, name, pods, *port)?,
            Step::Apply { name, file, .. } => self.apply(label, name, file)?,
            Step::Balance { name, from, address, connections, protocol, outside_mesh, .. } => {
                let udp = *protocol == mesh_agent::meshfile::Protocol::Udp;
                let from = Client { pod: from, outside_mesh: *outside_mesh };
                self.balance(label, name, from, *address, *connections, udp)?;
            }
            Step::Load { name, from, address, connections, seconds, outside_mesh, .. } => {
                let from = Client { pod: from, outside_mesh: *outside_mesh };
                self.load(label, name, from, *address, *connections, *seconds)?;
            }
            Step::Await { load, .. } => self.await_load(label, load)?,
            Step::Http { name, from, address, requests, mode, .. } => {
                self.http(label, name, from, *address, requests, *mode)?;
            }
            Step::Transfer {
                name, from, to, port, send, receive, connections, outside_mesh, netem, ..
            } => {
                let from = Client { pod: from, outside_mesh: *outside_mesh };
                let t = TransferArgs {
                    name,
                    from,
                    to,
                    port: *port,
                    send: *send,
                    receive: *receive,
                    connections: *connections,
                };
                if let Some(params) = netem
                    && let Err(reason) = self.netem(to, Some(params))
                {
                    self.skip(label, name, reason);
                    return Ok(());
                }
                let done = self.transfer(label, &t);
                if netem.is_some() {
                    self.netem(to, None)
                        .map_err(|stderr| LabError::Command { command: "tc qdisc del".into(), stderr })?;
                }
                done?;
            }
            Step::Prometheus { name, .. } => {
                if let Err(reason) = self.prometheus(label, name)? {
                    self.skip(label, name, reason);
                    return Ok(());
                }
            }
            Step::Agent { name, action, .. } => self.agent(label, name, *action)?,
            Step::PolicyScale { name, from, address, counts, connections, repetitions, .. } => {
                let reps = repetitions.unwrap_or(self.ctx.options.repetitions).max(1);
                self.policy_scale(label, name, from, *address, counts, *connections, reps)?;
            }
            Step::ServiceScale { name, from, pods, port, counts, connections, repetitions, .. } => {
                let reps = repetitions.unwrap_or(self.ctx.options.repetitions).max(1);
                self.service_scale(label, name, from, pods, *port, counts, *connections, reps)?;
            }
            Step::Mesh { state: OnOff::On, .. } => {
                for line in self.mesh_on()? {
                    self.out(label, line);
                }
            }
            Step::Mesh { state: OnOff::Off, .. } => self.lab.stop_mesh()?,
            Step::Sidecars { mode, .. } => {
                for line in self.set_sidecars(*mode)? {
                    self.out(label, line);
                }
            }
            Step::Exec { name, pod, command, expect_exit, figures, .. } => {
                // `<mesh-agent>` and `<workload>` as a word of their own stand for several words
                // (`lab-runner mesh-agent` on the host); other words keep their spaces.
                let words: Vec<String> = command
                    .iter()
                    .flat_map(|w| match w.as_str() {
                        "<mesh-agent>" | "<workload>" => self.fill(w).split(' ').map(str::to_owned).collect(),
                        _ => vec![self.fill(w)],
                    })
                    .collect();
                let cmd = command_of(&words)?;
                let out = self.lab.run_status(pod, cmd, RUN_TIMEOUT, &self.ctx.cancel)?;
                for line in String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .chain(String::from_utf8_lossy(&out.stderr).lines())
                {
                    self.out(label, line.to_owned());
                }
                let code = out.status.code().unwrap_or(-1);
                self.report.results.entry(name.clone()).or_default().insert("exit".into(), f64::from(code));
                self.metric(label, "exit", f64::from(code), "");
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                for (figure, f) in figures {
                    let Some(v) = read_figure(&text, f) else {
                        let reason =
                            format!("{name}: no line of the output matches /{}/ ({figure})", f.regex);
                        self.failures.push(reason.clone());
                        self.ctx.emit(Event::StepFailed { step: label.into(), reason });
                        return Ok(());
                    };
                    self.report.results.entry(name.clone()).or_default().insert(figure.clone(), v);
                    self.metric(label, figure, v, "");
                }
                if let Some(want) = expect_exit
                    && *want != code
                {
                    let reason = format!("{name}: `{}` exited {code}, expected {want}", command.join(" "));
                    self.failures.push(reason.clone());
                    // Shown as failed on its own line, not only in the summary.
                    self.ctx.emit(Event::StepFailed { step: label.into(), reason });
                    return Ok(());
                }
            }
            Step::Compute { metric, of, .. } | Step::Expect { metric, of, .. }
                if let Some((needs, why)) = self.skipped_input(metric, of.as_deref()) =>
            {
                let reason = format!("reads {needs}, skipped: {why}");
                let name = if let Step::Compute { name, .. } = step { name.as_str() } else { "" };
                self.skip(label, name, reason);
                return Ok(());
            }
            Step::Compute { name, metric, of, factor, unit, .. } => {
                let spread = match of {
                    Some(o) => self.paired(metric, o, 1.0 / factor),
                    None => self
                        .spread(metric)
                        .and_then(|s| Spread::of(&s.samples.iter().map(|v| factor * v).collect::<Vec<_>>())),
                };
                let mut v = factor * self.value(metric);
                if let Some(o) = of {
                    v /= self.value(o);
                }
                if let Some(s) = spread {
                    // Over repetitions: the median of the per-repetition values.
                    v = s.median;
                    self.out(label, format!("{name} = {}", interval(&s, unit)));
                    self.report.stats.insert(format!("{name}.value"), s);
                }
                self.report.results.entry(name.clone()).or_default().insert("value".into(), v);
                self.metric(label, name, v, unit);
            }
            Step::Expect { metric, op, value, of, factor, severity, .. } => {
                let check = self.expect(metric, *op, *value, of.as_deref(), *factor, *severity);
                let shown = match (check.verdict, severity) {
                    (Verdict::Holds, _) => "ok",
                    (Verdict::Inconclusive, _) => "INCONCLUSIVE (the interval straddles the target)",
                    (Verdict::Fails, Severity::Check) => "FAILED",
                    (Verdict::Fails, Severity::Benchmark) => "target not met (benchmark, not a failure)",
                };
                self.out(label, format!("{}: {shown}", check.text));
                let failed = check.verdict == Verdict::Fails && *severity == Severity::Check;
                let text = check.text.clone();
                self.report.checks.push(check);
                if failed {
                    self.failures.push(text.clone());
                    self.ctx.emit(Event::StepFailed { step: label.into(), reason: text });
                    return Ok(());
                }
            }
        }
        self.ctx.emit(Event::StepPassed { step: label.into() });
        Ok(())
    }

    /// Starts the mesh; returns what to tell the reader.
    fn mesh_on(&mut self) -> Result<Vec<String>, LabError> {
        self.mesh_on_with(self.ctx.options.engine)
    }

    fn mesh_on_with(&mut self, engine: mesh_agent::Engine) -> Result<Vec<String>, LabError> {
        let port = self.sidecar_port();
        let said = self.lab.start_mesh(&self.ctx.agent, engine)?;
        let pid = self.lab.agent_mut().and_then(|a| a.pid()).unwrap_or_default();
        let mesh = self.lab.mesh_mut().expect("started");
        let mut lines = mesh.describe();
        lines.extend(said.into_iter().map(|l| format!("agent (pid {pid}): {l}")));
        mesh.set_sidecar_port(port)?;
        if port != 0 {
            lines.push(format!("sidecars present: app <-> proxy hops redirected via 127.0.0.1:{port}"));
        }
        Ok(lines)
    }

    /// Replaces the proxies with `mode`'s (none for `off`); returns what to tell the reader.
    fn set_sidecars(&mut self, mode: SidecarMode) -> Result<Vec<String>, LabError> {
        let old = std::mem::take(&mut self.sidecars);
        sidecar::disable(&mut self.lab, old)?;
        let routes: Vec<_> = self
            .lab
            .pods()
            .iter()
            .flat_map(|p| {
                self.workload_ports(&p.name).into_iter().map(move |port| (p.name.clone(), p.ipv4, port))
            })
            .collect();
        self.sidecars = sidecar::enable(&mut self.lab, mode, &self.ctx.workload, &routes)?;
        let lines = self
            .sidecars
            .proxies
            .iter()
            .map(|p| format!("proxy for {} running as pid {}", p.at, p.pid))
            .collect();
        let port = self.sidecar_port();
        if let Some(mesh) = self.lab.mesh_mut() {
            mesh.set_sidecar_port(port)?;
        }
        Ok(lines)
    }

    /// Puts proxies and mesh in the given state, changing only what differs.
    /// Proxies and mesh as a path wants them; `engine` (default: the run's) loads the redirect
    /// when the mesh is on: a mesh running with the other engine is stopped and started again.
    fn switch_to(
        &mut self,
        sidecars: SidecarMode,
        mesh: OnOff,
        engine: Option<mesh_agent::Engine>,
    ) -> Result<Vec<String>, LabError> {
        let mut lines = Vec::new();
        if self.sidecars.mode.unwrap_or(SidecarMode::Off) != sidecars {
            lines.extend(self.set_sidecars(sidecars)?);
        }
        let engine = engine.unwrap_or(self.ctx.options.engine);
        match (mesh, self.lab.mesh().map(Pinned::engine)) {
            (OnOff::On, None) => lines.extend(self.mesh_on_with(engine)?),
            (OnOff::On, Some(running)) if running != engine => {
                self.lab.stop_mesh()?;
                lines.extend(self.mesh_on_with(engine)?);
            }
            (OnOff::Off, Some(_)) => self.lab.stop_mesh()?,
            _ => {}
        }
        Ok(lines)
    }

    // ANCHOR: conform
    /// Runs the conformance suite once per family and compares each case's transcript with
    /// the reference run's.
    fn conform(&mut self, label: &str, a: &ConformArgs) -> Result<(), LabError> {
        let counters = |lab: &Lab| -> Result<Counters, LabError> {
            Ok(lab.mesh().map(|m| m.counters()).transpose()?.unwrap_or_default())
        };
        let c0 = counters(&self.lab)?;
        let (mut total, mut differences, mut known, mut held_ok) = (0usize, 0usize, 0usize, 1.0);
        for family in a.families {
            let target = match a.via {
                None => SocketAddr::new(self.pod_ip(a.to, *family)?, a.port),
                Some(service) => self.service_address(service, *family).ok_or_else(|| LabError::Command {
                    command: format!("conform {}", a.name),
                    stderr: format!(
                        "via = {service:?}: the mesh file applied last has no such service for {family:?}"
                    ),
                })?,
            };
            let mut args =
                vec!["conform".to_owned(), "--connect".into(), target.to_string(), "--json".into()];
            if !a.cases.is_empty() {
                args.extend(["--cases".into(), a.cases.join(",")]);
            }
            let n = a.short_lived.unwrap_or(self.ctx.options.short_lived);
            args.extend(["--short-lived".into(), n.to_string()]);
            self.out(label, format!("conform {} -> {target} ({})", a.from, self.config()));
            let f0 = counters(&self.lab)?;
            let out =
                self.lab.run(a.from, self.ctx.workload.command(&args), RUN_TIMEOUT, &self.ctx.cancel)?;
            let mesh = counters(&self.lab)?.since(&f0);
            let report: ConformReport = serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
                command: "conform --json".into(),
                detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
            })?;
            let recorded = |c: &str| {
                self.report
                    .conform
                    .iter()
                    .filter(|r| r.name == c && r.family == *family)
                    .flat_map(|r| r.cases.iter().map(|v| (v.result.case.clone(), v.result.clone())))
                    .collect::<BTreeMap<_, _>>()
            };
            let reference = a.compare.map(recorded);
            let alternative = a.also_accept.map(recorded).unwrap_or_default();
            let mut verdicts = Vec::new();
            for result in report.cases {
                total += 1;
                let expected = reference.as_ref().and_then(|r| r.get(&result.case)).cloned();
                let as_alternative = alternative.get(&result.case) == Some(&result);
                let kernel_bug = expected
                    .as_ref()
                    .filter(|e| **e != result && !as_alternative)
                    .and_then(|e| kernel_bugs::explain(&result, e));
                let verdict = match (&expected, kernel_bug) {
                    (None, _) => "reference",
                    (Some(e), _) if *e == result => "same",
                    (Some(_), _) if as_alternative => "same",
                    (Some(_), Some(_)) => "kernel bug",
                    (Some(_), None) => "differs",
                };
                if let Some(bug) = kernel_bug {
                    known += 1;
                    self.out(
                        label,
                        format!("{} ({family:?}): known kernel bug {}: {}", result.case, bug.id, bug.summary),
                    );
                } else if verdict == "differs" {
                    differences += 1;
                    let e = expected.as_ref().expect("differs has a reference");
                    self.out(
                        label,
                        format!("{} ({family:?}): DIFFERS from {}", result.case, a.compare.unwrap_or("")),
                    );
                    for (side, got, want) in
                        [("client", &result.client, &e.client), ("server", &result.server, &e.server)]
                    {
                        if got != want {
                            self.out(label, format!("  {side} saw:      {}", got.join(" | ")));
                            self.out(label, format!("  {side} expected: {}", want.join(" | ")));
                        }
                    }
                } else {
                    self.out(label, format!("{} ({family:?}): {verdict}", result.case));
                }
                let expected = if verdict == "same" { None } else { expected };
                verdicts.push(CaseVerdict {
                    result,
                    verdict,
                    kernel_bug: kernel_bug.map(|b| b.id),
                    expected,
                });
            }
            let held = if a.across_mesh { Some(self.hold_across_mesh(label, a.from, target)?) } else { None };
            if let Some(h) = &held {
                if h.error.is_some() || h.round_trips == 0 {
                    held_ok = 0.0;
                }
                self.out(
                    label,
                    format!(
                        "connection held across mesh start/stop: {} round trips, {}",
                        h.round_trips,
                        h.error.as_deref().unwrap_or("intact")
                    ),
                );
            }
            self.report.conform.push(ConformRun {
                name: a.name.to_owned(),
                config: self.config(),
                family: *family,
                compare: a.compare.map(str::to_owned),
                cases: verdicts,
                mesh,
                held,
            });
        }
        let redirected = counters(&self.lab)?.since(&c0).msg_redirected as f64;
        let r = self.report.results.entry(a.name.to_owned()).or_default();
        for (k, v) in [
            ("cases", total as f64),
            ("differences", differences as f64),
            ("kernel_bugs", known as f64),
            ("msg_redirected", redirected),
            ("held_ok", held_ok),
        ] {
            r.insert(k.into(), v);
        }
        self.metric(label, "cases", total as f64, "");
        self.metric(label, "differences", differences as f64, "");
        self.metric(label, "kernel_bugs", known as f64, "");
        if self.lab.mesh().is_some() {
            self.metric(label, "msg_redirected", redirected, "");
        }
        Ok(())
    }
    // ANCHOR_END: conform

    /// Runs `workload loopback-isolation` across `pods` (from the first one).
    fn isolation(&mut self, label: &str, name: &str, pods: &[String], port: u16) -> Result<(), LabError> {
        let netns = pods
            .iter()
            .map(|p| {
                let ns = std::path::Path::new(crate::netns::NETNS_DIR).join(&self.lab.pod(p)?.netns);
                Ok(ns.display().to_string())
            })
            .collect::<Result<Vec<String>, LabError>>()?;
        let args = [
            "loopback-isolation".to_owned(),
            "--netns".into(),
            netns.join(","),
            "--port".into(),
            port.to_string(),
        ];
        self.out(
            label,
            format!("127.0.0.1:30300 -> 127.0.0.1:{port} in {} at once ({})", pods.join(", "), self.config()),
        );
        let c0 = self.lab.mesh().map(|m| m.counters()).transpose()?.unwrap_or_default();
        let out = self.lab.run(&pods[0], self.ctx.workload.command(&args), RUN_TIMEOUT, &self.ctx.cancel)?;
        let c = self.lab.mesh().map(|m| m.counters()).transpose()?.unwrap_or_default().since(&c0);
        let report: workloads::isolation::Report =
            serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
                command: "loopback-isolation".into(),
                detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
            })?;
        for (p, r) in pods.iter().zip(&report.pods) {
            self.out(
                label,
                format!(
                    "pod {p}: {} bytes received, {} from another pod, {} reads woken early with no data{}",
                    r.bytes,
                    r.foreign_bytes,
                    r.early_eagain,
                    r.error.as_deref().map(|e| format!(", error: {e}")).unwrap_or_default()
                ),
            );
        }
        for (p, r) in pods.iter().zip(&report.pods) {
            if let Some(e) = &r.error {
                self.report.errors.entry(name.to_owned()).or_default().push(format!("pod {p}: {e}"));
            }
        }
        let values = [
            ("bytes", report.pods.iter().map(|p| p.bytes).sum::<u64>() as f64),
            ("foreign_bytes", report.pods.iter().map(|p| p.foreign_bytes).sum::<u64>() as f64),
            ("errors", report.pods.iter().filter(|p| p.error.is_some()).count() as f64),
            ("early_eagain", report.pods.iter().map(|p| u64::from(p.early_eagain)).sum::<u64>() as f64),
            ("msg_redirected", c.msg_redirected as f64),
            ("loopback_skipped", c.loopback_skipped as f64),
        ];
        self.store(label, name, &values);
        Ok(())
    }

    // ANCHOR: apply
    /// Applies a mesh file to the running mesh: pods selected by label, services written by
    /// difference.
    fn apply(&mut self, label: &str, name: &str, file: &str) -> Result<(), LabError> {
        let failed = |stderr: String| LabError::Command { command: format!("apply {file}"), stderr };
        let (shown, text) = super::mesh_file(&self.mesh_files, file)
            .ok_or_else(|| failed("not read with the scenario (scenario::load reads it)".into()))?;
        let text = text.to_owned();
        let mf = MeshFile::parse(&text, &shown).map_err(|e| failed(e.to_string()))?;
        let pods: Vec<PodAddrs> = self.lab.pod_addrs();
        let resolved = mf.resolve(&pods);
        let wanted = mesh_agent::meshfile::wanted(&resolved);
        let policy = mesh_agent::policy::resolve(&mf, &pods);
        let mesh =
            self.lab.mesh_mut().ok_or_else(|| failed("the mesh must be on to apply a mesh file".into()))?;
        let applied = mesh.set_services(&wanted)?;
        let p = mesh.set_policy(&policy)?;
        self.policy = policy.clone();
        if !mf.policy.is_empty() || p.removed > 0 {
            for id in &policy.policed {
                let who = policy.members.get(id).map(|m| m.join(", ")).unwrap_or_default();
                self.out(label, format!("policy: identity {id} ({who}) accepts only what the rules allow"));
            }
            self.out(
                label,
                format!(
                    "policy: {} rules -> {} allow entries, {} with HTTP matches ({} map entries added, {} removed)",
                    mf.policy.len(),
                    policy.allow.len(),
                    policy.http.len(),
                    p.added,
                    p.removed
                ),
            );
            if self.lab.mesh().map(Pinned::engine) == Some(mesh_agent::Engine::Libbpf) {
                self.out(
                    label,
                    "policy: the redirect is the C twin's (--engine libbpf), whose sk_msg neither judges \
                     established connections again nor HTTP requests: connect and ingress checks only"
                        .into(),
                );
            }
        }
        // What a restarted agent applies: this file (with the lab's pods).
        self.lab.keep_mesh_file(text.as_bytes())?;
        for r in &resolved {
            let behind = if r.slot_names.is_empty() {
                "no backend (connect() is refused)".into()
            } else {
                r.slot_names.join(", ")
            };
            self.out(label, format!("service {}: {behind}", r.name));
        }
        self.out(
            label,
            format!(
                "{shown}: {} added, {} changed, {} removed, {} unchanged",
                applied.added, applied.changed, applied.removed, applied.unchanged
            ),
        );
        let values = [
            ("added", applied.added),
            ("changed", applied.changed),
            ("removed", applied.removed),
            ("unchanged", applied.unchanged),
        ];
        let r = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in values {
            r.insert(k.into(), v as f64);
        }
        self.services = resolved;
        Ok(())
    }
    // ANCHOR_END: apply

    /// New connections to a service address from `from`: where they went, against where the
    /// service's slots say they should go.
    fn balance(
        &mut self,
        label: &str,
        name: &str,
        from: Client<'_>,
        address: SocketAddr,
        connections: u32,
        udp: bool,
    ) -> Result<(), LabError> {
        let mut args: Vec<String> = ["lb-probe", "--connect", &address.to_string(), "--connections"]
            .into_iter()
            .map(str::to_owned)
            .chain([connections.to_string(), "--json".into()])
            .collect();
        if udp {
            args.push("--udp".into());
        }
        let what = if udp { "UDP sockets, two datagrams each" } else { "connections" };
        self.out(
            label,
            format!("{connections} {what} {from} -> {address}, one after another ({})", self.config()),
        );
        let c0 = self.counters()?;
        let r: ProbeReport = self.run_json_as(from, &args)?;
        let c = self.counters()?.since(&c0);
        let ok: u32 = r.reached.values().sum();
        let errors: u32 = r.errors.values().sum();
        for (who, n) in &r.reached {
            self.out(label, format!("{who}: {n} connections"));
        }
        for (e, n) in &r.errors {
            self.out(label, format!("failed: {n} x {e}"));
        }
        if !r.other_peers.is_empty() {
            self.out(label, format!("getpeername() also said: {}", r.other_peers.join(", ")));
        }
        // Each backend's fair share is its slots' share of the service's slots.
        let slots: Vec<&String> = self
            .services
            .iter()
            .find(|s| s.serves(address))
            .map(|s| s.slot_names.iter().collect())
            .unwrap_or_default();
        let mut fair: BTreeMap<&str, f64> = BTreeMap::new();
        for n in &slots {
            *fair.entry(n.as_str()).or_default() += 1.0 / slots.len() as f64;
        }
        let ratio = |who: &str, share: f64| {
            let got = f64::from(r.reached.get(who).copied().unwrap_or(0)) / f64::from(ok.max(1));
            got / share
        };
        let ratios: Vec<f64> = fair.iter().map(|(who, share)| ratio(who, *share)).collect();
        let outside: u32 =
            r.reached.iter().filter(|(who, _)| !fair.contains_key(who.as_str())).map(|(_, n)| n).sum();
        let values = [
            ("connections", f64::from(ok)),
            ("errors", f64::from(errors)),
            ("backends", r.reached.len() as f64),
            ("min_ratio", ratios.iter().copied().fold(f64::NAN, f64::min)),
            ("max_ratio", ratios.iter().copied().fold(f64::NAN, f64::max)),
            ("outside", f64::from(outside)),
            ("peer_is_service", f64::from(r.peer_is_target) / f64::from(ok.max(1))),
            ("msg_redirected", c.msg_redirected as f64),
            ("msg_seen", (c.msg_redirected + c.msg_passed) as f64),
            ("inserted", c.sockets_inserted as f64),
            ("errno", f64::from(common_errno(r.errors.keys()))),
            ("ingress_denied", c.ingress_denied as f64),
            ("sticky", if udp { f64::from(r.sticky) / f64::from(ok.max(1)) } else { 0.0 }),
        ];
        self.out(
            label,
            format!("mesh: {} connections balanced, {} refused", c.connect_balanced, c.connect_refused),
        );
        let res = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in values {
            res.insert(k.into(), v);
        }
        for (k, v) in values {
            let unit =
                if matches!(k, "min_ratio" | "max_ratio" | "peer_is_service" | "sticky") { "x" } else { "" };
            if k == "errno" && v == 0.0 {
                continue;
            }
            self.metric(label, k, v, unit);
        }
        Ok(())
    }

    /// HTTP requests from `from` over one connection: what each got.
    fn http(
        &mut self,
        label: &str,
        name: &str,
        from: &str,
        address: SocketAddr,
        requests: &[String],
        mode: workloads::http::Mode,
    ) -> Result<(), LabError> {
        let mode_arg =
            serde_json::to_value(mode).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
        let mut args = vec![
            "http-probe".to_owned(),
            "--connect".into(),
            address.to_string(),
            "--mode".into(),
            mode_arg.clone(),
        ];
        for r in requests {
            args.extend(["--request".to_owned(), r.clone()]);
        }
        args.push("--json".into());
        self.out(
            label,
            format!("{from} -> {address}: {} over one connection ({mode_arg})", requests.join(", ")),
        );
        let c0 = self.counters()?;
        let r: workloads::http::ProbeReport = self.run_json(from, &args)?;
        let c = self.counters()?.since(&c0);
        for a in &r.answers {
            self.out(label, a.clone());
        }
        let values = [
            ("ok", f64::from(r.ok)),
            ("failed", f64::from(r.failed)),
            ("errno", f64::from(common_errno(r.answers.iter().filter(|a| a.contains("os error"))))),
            ("http_denied", c.http_denied as f64),
        ];
        self.store(label, name, &values);
        Ok(())
    }

    /// Skips the step `label` (whose results would be `name`'s) for `reason`: steps reading
    /// its results are skipped too.
    fn skip(&mut self, label: &str, name: &str, reason: String) {
        if !name.is_empty() {
            self.skipped.insert(name.to_owned(), reason.clone());
        }
        self.report.skipped_steps.insert(label.to_owned(), reason.clone());
        self.ctx.emit(Event::StepSkipped { step: label.into(), reason });
    }

    /// Stores `values` under `name` and shows each as a figure of step `label`.
    fn store(&mut self, label: &str, name: &str, values: &[(&str, f64)]) {
        let r = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in values {
            r.insert((*k).into(), *v);
        }
        for (k, v) in values {
            self.metric(label, k, *v, "");
        }
    }

    /// The first of `metric`, `of` that a skipped step was to store, with the reason.
    fn skipped_input(&self, metric: &str, of: Option<&str>) -> Option<(String, String)> {
        [Some(metric), of].into_iter().flatten().find_map(|m| {
            let name = m.rsplit_once('.').map_or(m, |(n, _)| n);
            self.skipped.get(name).map(|why| (name.to_owned(), why.clone()))
        })
    }

    // ANCHOR: transfer
    /// Byte-exact transfers from a pod, then the flow records of those connections from the
    /// agent's flow log, compared with what the client counted.
    fn transfer(&mut self, label: &str, t: &TransferArgs<'_>) -> Result<(), LabError> {
        let target = SocketAddr::new(self.pod_ip(t.to, Family::Ipv4)?, t.port);
        let args: Vec<String> = vec![
            "transfer".into(),
            "--connect".into(),
            target.to_string(),
            "--send".into(),
            t.send.to_string(),
            "--receive".into(),
            t.receive.to_string(),
            "--connections".into(),
            t.connections.to_string(),
            "--json".into(),
        ];
        self.out(
            label,
            format!(
                "{} connections {} -> {target}, one after another: {} bytes to the server, {} back ({})",
                t.connections,
                t.from,
                t.send + 8,
                t.receive,
                self.config()
            ),
        );
        let since = std::time::SystemTime::now();
        let done: Vec<workloads::transfer::Transfer> = self.run_json_as(t.from, &args)?;
        // Who reports: every socket of the mesh, i.e. the server's and, unless it runs outside
        // the mesh, the client's.
        let per_connection = match (self.lab.mesh().is_some(), t.from.outside_mesh) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        };
        let expected = per_connection * done.len();
        let by_port: BTreeMap<u64, &workloads::transfer::Transfer> =
            done.iter().map(|d| (u64::from(d.local_port), d)).collect();
        let log = self.lab.id().run_dir().join(crate::lab::FLOW_LOG);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let records = loop {
            let r = flow_records(&log, since, t.port, &by_port);
            if r.len() >= expected || std::time::Instant::now() >= deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let field = |f: &serde_json::Value, a: &str, b: &str| f[a][b].as_u64().unwrap_or(0);
        let mut exact = 0;
        for f in &records {
            self.out(label, mesh_agent::observe::row(&serde_json::json!({ "flow": f })));
            let num = |k: &str| f[k].as_f64().unwrap_or(0.0);
            self.report.flows.push(FlowRtt {
                step: t.name.to_owned(),
                reporter: f["reporter"].as_str().unwrap_or("?").to_owned(),
                port: f["source"]["port"].as_u64().unwrap_or(0),
                srtt_us: num("srtt_us"),
                rtt_min_us: num("rtt_min_us"),
                rtt_max_us: num("rtt_max_us"),
            });
            let d = by_port[&f["source"]["port"].as_u64().unwrap_or(0)];
            if field(f, "bytes", "to_server") == d.sent && field(f, "bytes", "to_client") == d.received {
                exact += 1;
            } else {
                self.out(
                    label,
                    format!("  bytes differ: the client wrote {} and read {}", d.sent, d.received),
                );
            }
        }
        // One record per connection for the byte split (the client's when there is one).
        let mut one: BTreeMap<u64, &serde_json::Value> = BTreeMap::new();
        for f in &records {
            let port = f["source"]["port"].as_u64().unwrap_or(0);
            if f["reporter"] == "client" || !one.contains_key(&port) {
                one.insert(port, f);
            }
        }
        let redirected: u64 = one
            .values()
            .map(|f| field(f, "redirected", "to_server") + field(f, "redirected", "to_client"))
            .sum();
        let total: u64 =
            one.values().map(|f| field(f, "bytes", "to_server") + field(f, "bytes", "to_client")).sum();
        let num = |f: &serde_json::Value, k: &str| f[k].as_f64().unwrap_or(0.0);
        let mut srtt: Vec<f64> = records.iter().map(|f| num(f, "srtt_us")).collect();
        srtt.sort_by(f64::total_cmp);
        let sum = |k: &str| records.iter().map(|f| num(f, k)).sum::<f64>();
        let values = [
            ("connections", done.len() as f64),
            ("records", records.len() as f64),
            ("expected_records", expected as f64),
            ("exact", f64::from(exact)),
            ("bytes", done.iter().map(|d| d.sent + d.received).sum::<u64>() as f64),
            ("redirected_bytes", redirected as f64),
            ("tcp_bytes", total.saturating_sub(redirected) as f64),
            ("srtt_us", srtt.get(srtt.len() / 2).copied().unwrap_or(f64::NAN)),
            ("rtt_max_us", records.iter().map(|f| num(f, "rtt_max_us")).fold(f64::NAN, f64::max)),
            ("rtt_samples", sum("rtt_samples")),
            ("retransmits", sum("retransmits")),
            ("retransmits_seen", sum("retransmits_seen")),
            ("retransmits_traced", sum("retransmits_traced")),
        ];
        self.store(label, t.name, &values);
        Ok(())
    }

    /// Puts a netem qdisc with `params` on `pod`'s eth0 (`None`: removes it). A kernel without
    /// sch_netem is an `Err` with tc's words; any other failure too, marked as such.
    fn netem(&self, pod: &str, params: Option<&str>) -> Result<(), String> {
        let mut cmd = std::process::Command::new(crate::process::tc_binary());
        match params {
            Some(p) => {
                cmd.args(["qdisc", "replace", "dev", "eth0", "root", "netem"]).args(p.split_whitespace())
            }
            None => cmd.args(["qdisc", "del", "dev", "eth0", "root"]),
        };
        let what = crate::process::describe(&cmd);
        let out = self
            .lab
            .run_status(pod, cmd, Duration::from_secs(10), &self.ctx.cancel)
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            return Ok(());
        }
        let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if said.contains("qdisc kind is unknown") {
            Err(format!("this kernel has no sch_netem (`{what}`: {said})"))
        } else {
            Err(format!("`{what}` failed: {said}"))
        }
    }
    // ANCHOR_END: transfer

    // ANCHOR: prometheus
    /// Starts a Prometheus server that scrapes the agent every second, and asks it (PromQL over
    /// its HTTP API) for the byte and flow totals until they equal the flow log's. `Ok(Err)`:
    /// skipped, with the reason.
    fn prometheus(&mut self, label: &str, name: &str) -> Result<Result<(), String>, LabError> {
        let Some(binary) = crate::process::tool("prometheus") else {
            return Ok(Err("no prometheus binary here (Debian's `prometheus` package has it; the VM images do not carry it)".into()));
        };
        let Some(target) = self.lab.agent().and_then(crate::agent::Agent::metrics) else {
            return Err(LabError::Command {
                command: "prometheus".into(),
                stderr: "the mesh agent is not running (turn the mesh on first)".into(),
            });
        };
        let dir = self.lab.id().run_dir().join("prometheus");
        std::fs::create_dir_all(&dir).map_err(LabError::io("cannot create", &dir))?;
        let config = dir.join("prometheus.yml");
        let yml = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: mesh-agent\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(&config, yml).map_err(LabError::io("cannot write", &config))?;
        // A free port for its web API (asked of the kernel, then handed over).
        let web = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(LabError::io("cannot bind", std::path::Path::new("127.0.0.1:0")))?;
        let mut cmd = std::process::Command::new(&binary);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={web}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("prometheus.log"))
                    .map_err(LabError::io("cannot create", &dir))?,
            );
        let server = crate::process::Guard::spawn(cmd)?;
        self.out(
            label,
            format!(
                "prometheus (pid {}) on http://{web}, scraping http://{target}/metrics every second",
                server.pid()
            ),
        );
        let log = self.lab.id().run_dir().join(crate::lab::FLOW_LOG);
        let (log_bytes, log_flows) = flow_log_totals(&log);
        let queries = ["sum(mesh_tcp_bytes_total)", "sum(mesh_tcp_flows_total)"];
        let started = std::time::Instant::now();
        let mut got = (f64::NAN, f64::NAN);
        while started.elapsed() < Duration::from_secs(60) {
            self.ctx.cancel.check()?;
            std::thread::sleep(Duration::from_millis(500));
            let ask = |q: &str| promql(web, q).unwrap_or(f64::NAN);
            got = (ask(queries[0]), ask(queries[1]));
            if got == (log_bytes as f64, log_flows as f64) {
                break;
            }
        }
        drop(server);
        self.out(label, format!("{} = {} (flow log: {log_bytes})", queries[0], got.0));
        self.out(label, format!("{} = {} (flow log: {log_flows} records)", queries[1], got.1));
        let values = [
            ("bytes", got.0),
            ("flows", got.1),
            ("flow_log_bytes", log_bytes as f64),
            ("flow_log_flows", log_flows as f64),
            ("seconds", started.elapsed().as_secs_f64()),
        ];
        self.store(label, name, &values);
        Ok(Ok(()))
    }
    // ANCHOR_END: prometheus

    // ANCHOR: load
    /// Starts `workload load` in `from` and returns once its connections are up.
    fn load(
        &mut self,
        label: &str,
        name: &str,
        from: Client<'_>,
        address: SocketAddr,
        connections: u32,
        seconds: f64,
    ) -> Result<(), LabError> {
        let args = [
            "load".to_owned(),
            "--connect".into(),
            address.to_string(),
            "--connections".into(),
            connections.to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ];
        let cmd = self.ctx.workload.command(&args);
        let mut child = if from.outside_mesh {
            self.lab.spawn_piped_outside(from.pod, cmd)?
        } else {
            self.lab.spawn_piped(from.pod, cmd)?
        };
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        use std::io::BufRead as _;
        if stdout.read_line(&mut line).map_err(LabError::io("cannot read from", "workload load"))? == 0
            || line.trim() != "ready"
        {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(LabError::io("cannot wait for", "workload load"))?;
            return Err(LabError::Command {
                command: format!("workload load --connect {address}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        // The rest of stdout (the report) is read at `await`.
        child.stdout = None;
        let rest = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
            s
        });
        self.out(
            label,
            format!("{connections} connections {from} -> {address} doing round trips for {seconds} s, in the background"),
        );
        let counters = self.counters()?;
        self.loads.insert(name.to_owned(), Load { child, label: label.to_owned(), report: rest, counters });
        Ok(())
    }

    /// Waits for a background load and stores its figures.
    fn await_load(&mut self, label: &str, name: &str) -> Result<(), LabError> {
        let Load { mut child, label: started, report, counters } =
            self.loads.remove(name).expect("checked at parse");
        let status = child.wait().map_err(LabError::io("cannot wait for", "workload load"))?;
        let text = report.join().unwrap_or_default();
        let r: workloads::load::LoadReport =
            serde_json::from_str(text.trim()).map_err(|e| LabError::Parse {
                command: format!("workload load ({started}, {status})"),
                detail: format!("{e}: {text}"),
            })?;
        self.out(
            label,
            format!(
                "{}: {} round trips, {} failed, longest {:.1} ms",
                r.target, r.round_trips, r.failed, r.max_round_trip_ms
            ),
        );
        for e in &r.errors {
            self.out(label, format!("error: {e}"));
        }
        // Messages dropped by policy in sk_msg while it ran (any connection's).
        let message_denied = self.counters()?.since(&counters).message_denied;
        let values = [
            ("round_trips", r.round_trips as f64),
            ("failed", r.failed as f64),
            ("message_denied", message_denied as f64),
            ("max_round_trip_ms", r.max_round_trip_ms),
            ("seconds", r.seconds),
        ];
        let res = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in values {
            res.insert(k.into(), v);
        }
        for (k, v) in values {
            self.metric(label, k, v, if k == "max_round_trip_ms" { "ms" } else { "" });
        }
        Ok(())
    }
    // ANCHOR_END: load

    // ANCHOR: agent
    /// Kills the mesh agent (SIGKILL) or starts it again.
    fn agent(&mut self, label: &str, name: &str, action: AgentAction) -> Result<(), LabError> {
        let failed =
            |stderr: &str| LabError::Command { command: format!("agent {name}"), stderr: stderr.into() };
        let cgroup = self.lab.cgroup().to_owned();
        let pin_dir = self.lab.id().pin_dir();
        let agent = self.lab.agent_mut().ok_or_else(|| failed("the mesh must be on"))?;
        let mut values = vec![];
        match action {
            AgentAction::Kill => {
                let pid = agent.kill().ok_or_else(|| failed("the agent is not running"))?;
                self.out(label, format!("agent pid {pid} killed (SIGKILL): no clean-up ran"));
                values.push(("killed", 1.0));
            }
            AgentAction::Start => {
                let said = agent.restart()?;
                let pid = agent.pid().unwrap_or_default();
                let adopted = said.iter().find_map(|l| adopted_counts(l));
                let reapplied = said.iter().find_map(|l| applied_counts(l));
                for l in said {
                    self.out(label, format!("agent (pid {pid}): {l}"));
                }
                // What the kernel says, not what the agent says: each mesh program once.
                let status = mesh_agent::status::read(&pin_dir, Some(&cgroup))?;
                let problems = status.attach_problems();
                self.out(
                    label,
                    if problems.is_empty() {
                        format!(
                            "cgroup: each of the {} mesh hooks runs one mesh program",
                            status.attached.len()
                        )
                    } else {
                        format!("cgroup: {}", problems.join("; "))
                    },
                );
                let (links, services) = adopted.unwrap_or((0, 0));
                values.extend([
                    ("adopted", f64::from(u8::from(adopted.is_some()))),
                    ("links", links as f64),
                    ("services", services as f64),
                    ("attached_once", f64::from(u8::from(problems.is_empty()))),
                    ("reapplied_changes", reapplied.map_or(0.0, |[a, c, r, _]| (a + c + r) as f64)),
                ]);
            }
        }
        let res = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in &values {
            res.insert((*k).into(), *v);
        }
        for (k, v) in values {
            self.metric(label, k, v, "");
        }
        Ok(())
    }
    // ANCHOR_END: agent

    // ANCHOR: service_scale
    /// Connection cost against the number of services, socket load balancing beside kube-proxy's
    /// iptables rules. The measured service is the last one installed: for iptables the end of
    /// KUBE-SERVICES, the longest walk (a service picked at random walks half of it).
    #[allow(clippy::too_many_arguments)]
    fn service_scale(
        &mut self,
        label: &str,
        name: &str,
        from: &str,
        labels: &BTreeMap<String, String>,
        port: u16,
        counts: &[u32],
        connections: u32,
        reps: u32,
    ) -> Result<(), LabError> {
        let failed =
            |why: &str| LabError::Command { command: format!("service-scale {name}"), stderr: why.into() };
        if self.lab.mesh().is_none() {
            return Err(failed("the mesh must be on"));
        }
        if self.sidecars.mode.unwrap_or(SidecarMode::Off) != SidecarMode::Off {
            return Err(failed("sidecars must be off (the step replaces the client's nat table)"));
        }
        let backends: Vec<&crate::lab::Pod> = self
            .lab
            .pods()
            .iter()
            .filter(|p| labels.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        if backends.is_empty() {
            return Err(failed("no pod carries the backend labels"));
        }
        let endpoints: Vec<SocketAddrV4> = backends.iter().map(|p| SocketAddrV4::new(p.ipv4, port)).collect();
        let slots: Vec<Backend> = backends
            .iter()
            .map(|p| Backend { ip4: u32::from_ne_bytes(p.ipv4.octets()), ip6: [0; 4], port: u32::from(port) })
            .collect();
        let restore = crate::process::tool("iptables-restore")
            .ok_or_else(|| failed("iptables-restore is not installed"))?;
        let ns = self.lab.pod(from)?.netns.clone();
        // kube-proxy's addresses need a route to be connected to (the mesh's are rewritten first).
        crate::process::ip(&["-n", &ns, "route", "add", "10.99.0.0/16", "dev", "eth0"])?;
        let base = mesh_agent::meshfile::wanted(&self.services);
        let result = self.service_scale_runs(
            label,
            name,
            from,
            &ns,
            &restore,
            &endpoints,
            &slots,
            &base,
            counts,
            connections,
            reps,
        );
        // Whatever happened: the client's nat table, its route and the mesh's services as before.
        let _ = crate::sidecar::iptables(&ns, &["-t", "nat", "-F"]);
        let _ = crate::sidecar::iptables(&ns, &["-t", "nat", "-X"]);
        let _ = crate::process::ip(&["-n", &ns, "route", "del", "10.99.0.0/16"]);
        if let Some(m) = self.lab.mesh_mut() {
            m.set_services(&base)?;
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn service_scale_runs(
        &mut self,
        label: &str,
        name: &str,
        from: &str,
        ns: &str,
        restore: &std::path::Path,
        endpoints: &[SocketAddrV4],
        slots: &[Backend],
        base: &BTreeMap<ServiceKey, Vec<Backend>>,
        counts: &[u32],
        connections: u32,
        reps: u32,
    ) -> Result<(), LabError> {
        let vip =
            |net: u8, i: u32| SocketAddrV4::new(Ipv4Addr::new(10, net, (i / 256) as u8, (i % 256) as u8), 80);
        let mut sorted = counts.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for n in sorted {
            self.ctx.cancel.check()?;
            // The mesh: n services in the maps, next to the scenario's own.
            let mut wanted = base.clone();
            for i in 0..n {
                let a = vip(98, i);
                let key = ServiceKey {
                    ip: [u32::from_ne_bytes(a.ip().octets()), 0, 0, 0],
                    port: u32::from(a.port()),
                    family: AF_INET,
                    protocol: IPPROTO_TCP,
                    pad: 0,
                };
                wanted.insert(key, slots.to_vec());
            }
            let t0 = std::time::Instant::now();
            self.lab.mesh_mut().expect("checked").set_services(&wanted)?;
            let mesh_ms = t0.elapsed().as_secs_f64() * 1e3;
            // kube-proxy: the same n services as iptables rules (the nat table replaced whole).
            let vips: Vec<SocketAddrV4> = (0..n).map(|i| vip(99, i)).collect();
            let table = crate::kube_proxy::nat_table(&vips, endpoints);
            let t0 = std::time::Instant::now();
            let mut cmd = std::process::Command::new(crate::process::ip_binary());
            cmd.args(["netns", "exec", ns]).arg(restore).arg("-w");
            crate::process::run_with_input(cmd, table.as_bytes())?;
            let ipt_ms = t0.elapsed().as_secs_f64() * 1e3;
            let rules = table.lines().filter(|l| l.starts_with("-A ")).count();
            self.out(
                label,
                format!(
                    "{n} service{}: mesh maps written in {mesh_ms:.0} ms; {rules} iptables rules restored in {ipt_ms:.0} ms",
                    if n == 1 { "" } else { "s" }
                ),
            );
            let (mut mesh, mut ipt) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                self.ctx.cancel.check()?;
                mesh.push(self.connect_p50(from, vip(98, n - 1), connections)?);
                crate::sidecar::iptables(ns, crate::kube_proxy::OUTPUT_JUMP)?;
                let p50 = self.connect_p50(from, vip(99, n - 1), connections);
                let mut delete = crate::kube_proxy::OUTPUT_JUMP.to_vec();
                delete[2] = "-D";
                crate::sidecar::iptables(ns, &delete)?;
                ipt.push(p50?);
            }
            for (mode, samples) in [("mesh", &mesh), ("iptables", &ipt)] {
                self.store_spread(label, name, &format!("{mode}_{n}"), samples);
            }
        }
        Ok(())
    }

    // ANCHOR: policy_scale
    /// Connection cost against the size of the allow-list: the applied rules plus `n` entries
    /// between identities no pod has (the policy maps are hashes: a connection's lookups do not
    /// depend on how many entries there are, and this measures that they do not).
    #[allow(clippy::too_many_arguments)]
    fn policy_scale(
        &mut self,
        label: &str,
        name: &str,
        from: &str,
        address: SocketAddr,
        counts: &[u32],
        connections: u32,
        reps: u32,
    ) -> Result<(), LabError> {
        let SocketAddr::V4(to) = address else {
            return Err(LabError::Command {
                command: format!("policy-scale {name}"),
                stderr: "address must be IPv4".into(),
            });
        };
        if self.lab.mesh().is_none() {
            return Err(LabError::Command {
                command: format!("policy-scale {name}"),
                stderr: "the mesh must be on".into(),
            });
        }
        let base = self.policy.clone();
        let mut sorted = counts.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut result: Result<(), LabError> = Ok(());
        for n in sorted {
            let mut wanted = base.clone();
            for i in 0..n {
                // Identities far above any pod's: entries that exist, and match nothing.
                let key = mesh_common::PolicyKey {
                    from: 1_000_000 + i,
                    to: 2_000_000 + i,
                    port: 7000,
                    protocol: IPPROTO_TCP,
                };
                wanted.allow.insert(key, 1);
            }
            let t0 = std::time::Instant::now();
            let written = self.lab.mesh_mut().expect("checked").set_policy(&wanted);
            if let Err(e) = written {
                result = Err(e.into());
                break;
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            self.out(label, format!("{} allow entries (+{n}): written in {ms:.0} ms", wanted.allow.len()));
            let mut samples = Vec::new();
            for _ in 0..reps {
                let sample = self.ctx.cancel.check().map_err(LabError::from);
                match sample.and_then(|()| self.connect_p50(from, to, connections)) {
                    Ok(v) => samples.push(v),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
            self.store_spread(label, name, &format!("rules_{n}"), &samples);
        }
        // The rules as the mesh file has them, whatever happened.
        if let Some(m) = self.lab.mesh_mut() {
            m.set_policy(&base)?;
        }
        result
    }
    // ANCHOR_END: policy_scale

    /// Stores `name.key` as the median of `samples` (microseconds), its spread for the report.
    fn store_spread(&mut self, label: &str, name: &str, key: &str, samples: &[f64]) {
        let Some(s) = Spread::of(samples) else { return };
        self.out(label, format!("{key:<16} {}", interval(&s, "us")));
        self.report.results.entry(name.to_owned()).or_default().insert(key.to_owned(), s.median);
        self.metric(label, key, s.median, "us");
        self.report.stats.insert(format!("{name}.{key}"), s);
    }

    /// The median connection (connect() to the response's last byte) of one connect-rate run.
    fn connect_p50(&self, from: &str, to: SocketAddrV4, connections: u32) -> Result<f64, LabError> {
        let args = [
            "connect-rate".to_owned(),
            "--connect".into(),
            to.to_string(),
            "--connections".into(),
            connections.to_string(),
            "--json".into(),
        ];
        let r: ConnectReport = self.run_json(from, &args)?;
        Ok(r.latency_us.p50)
    }
    // ANCHOR_END: service_scale

    /// A service's virtual address for `family`, from the mesh file applied last.
    fn service_address(&self, service: &str, family: Family) -> Option<SocketAddr> {
        let r = self.services.iter().find(|r| r.name == service)?;
        let k =
            r.keys.iter().find(|k| k.family == if family == Family::Ipv4 { AF_INET } else { AF_INET6 })?;
        let ip: std::net::IpAddr = if k.family == AF_INET {
            Ipv4Addr::from(k.ip[0].to_ne_bytes()).into()
        } else {
            let mut b = [0u8; 16];
            for (i, w) in k.ip.iter().enumerate() {
                b[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            std::net::Ipv6Addr::from(b).into()
        };
        Some(SocketAddr::new(ip, k.port as u16))
    }

    /// Keeps one echo connection busy while the mesh starts and stops under it.
    fn hold_across_mesh(
        &mut self,
        label: &str,
        from: &str,
        target: SocketAddr,
    ) -> Result<HoldReport, LabError> {
        if self.lab.mesh().is_some() {
            return Err(LabError::Command {
                command: "conform across_mesh".into(),
                stderr: "the mesh must be off at a step with across_mesh = true".into(),
            });
        }
        let base = std::env::temp_dir().join(format!("slab-{}-hold-{}", self.lab.id(), target.port()));
        let (until, report) = (base.with_extension("until"), base.with_extension("json"));
        let _ = std::fs::remove_file(&until);
        let _ = std::fs::remove_file(&report);
        let args = [
            "conform".to_owned(),
            "--connect".into(),
            target.to_string(),
            "--hold-until".into(),
            until.display().to_string(),
            "--report".into(),
            report.display().to_string(),
        ];
        let pid = self.lab.spawn(from, self.ctx.workload.command(&args))?;
        let pause = Duration::from_millis(500);
        std::thread::sleep(pause);
        for line in self.mesh_on()? {
            self.out(label, line);
        }
        std::thread::sleep(pause);
        self.lab.stop_mesh()?;
        self.out(label, "mesh started and stopped under the held connection".into());
        std::thread::sleep(pause);
        let result = (|| {
            std::fs::write(&until, b"").map_err(LabError::io("cannot write", &until))?;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                self.ctx.cancel.check()?;
                if let Ok(text) = std::fs::read_to_string(&report)
                    && let Ok(r) = serde_json::from_str::<HoldReport>(&text)
                {
                    return Ok(r);
                }
                if std::time::Instant::now() > deadline {
                    return Err(LabError::Command {
                        command: "conform --hold-until".into(),
                        stderr: "no report within 30 s".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })();
        self.lab.stop(pid);
        let _ = std::fs::remove_file(&until);
        let _ = std::fs::remove_file(&report);
        result
    }

    fn pod_ip(&self, pod: &str, family: Family) -> Result<std::net::IpAddr, LabError> {
        let pod = self.lab.pod(pod)?;
        Ok(match family {
            Family::Ipv4 => pod.ipv4.into(),
            Family::Ipv6 => pod.ipv6.into(),
        })
    }

    fn sidecar_port(&self) -> u16 {
        if self.sidecars.mode == Some(SidecarMode::PerPod) { OUTBOUND_PORT } else { 0 }
    }

    fn workload_ports(&self, pod: &str) -> Vec<u16> {
        self.ports.get(pod).cloned().unwrap_or_default()
    }

    fn config(&self) -> String {
        let mut parts = Vec::new();
        match self.sidecars.mode {
            Some(SidecarMode::PerPod) => parts.push("sidecars per pod"),
            Some(SidecarMode::PerNode) => parts.push("proxy per node"),
            _ => {}
        }
        match self.lab.mesh().map(|m| (m.telemetry().unwrap_or(true), m.engine())) {
            Some((true, mesh_agent::Engine::Aya)) => parts.push("eBPF mesh"),
            Some((false, mesh_agent::Engine::Aya)) => parts.push("eBPF mesh (telemetry off)"),
            Some((true, mesh_agent::Engine::Libbpf)) => {
                parts.push("eBPF mesh (redirect by the C twin, libbpf)")
            }
            Some((false, mesh_agent::Engine::Libbpf)) => {
                parts.push("eBPF mesh (redirect by the C twin, libbpf; telemetry off)")
            }
            None => {}
        }
        if parts.is_empty() { "direct".into() } else { parts.join(" + ") }
    }

    // ANCHOR: bench
    /// Measures every path in every repetition, in turn, and stores each figure's median and
    /// spread; afterwards proxies and mesh are as they were before the step.
    fn bench(&mut self, label: &str, a: &BenchArgs) -> Result<(), LabError> {
        let mesh = if self.lab.mesh().is_some() { OnOff::On } else { OnOff::Off };
        let before = (self.sidecars.mode.unwrap_or(SidecarMode::Off), mesh);
        let result = self.bench_paths(label, a);
        let engine = self.lab.mesh().map(Pinned::engine);
        let restored = self.switch_to(before.0, before.1, engine).and_then(|_| self.set_telemetry(OnOff::On));
        result.and(restored.map(drop))
    }

    /// Telemetry on or off for connections established from now on (nothing to do without the
    /// mesh).
    fn set_telemetry(&mut self, state: OnOff) -> Result<(), LabError> {
        if let Some(m) = self.lab.mesh_mut() {
            m.set_telemetry(state == OnOff::On)?;
        }
        Ok(())
    }

    fn bench_paths(&mut self, label: &str, a: &BenchArgs) -> Result<(), LabError> {
        let n = a.repetitions as usize;
        let mut visits: Vec<Vec<Visit>> = a.paths.iter().map(|_| Vec::new()).collect();
        let mut rss: Vec<Vec<(String, u64)>> = vec![Vec::new(); a.paths.len()];
        // With the mesh on: the agent's resident memory and its maps' kernel memory (KiB).
        let mut agent_mem: Vec<Option<(u64, u64)>> = vec![None; a.paths.len()];
        let mut configs = vec![String::new(); a.paths.len()];
        // Warm-up, unmeasured: each path's first connections, proxies and programs.
        for p in a.paths {
            self.ctx.cancel.check()?;
            self.switch_to(p.sidecars, p.mesh, p.engine)?;
            self.set_telemetry(p.telemetry)?;
            // The step's first measure, short: the server may speak only that protocol (HTTP).
            // A bench of tools only (a real server, no rr-server) warms up with its tools.
            match a.measures.first() {
                Some(m) => self.visit(a.from, a.target, &[*m], &[], a.round_trips.min(WARMUP_ROUND_TRIPS))?,
                None => self.visit(a.from, a.target, &[], a.tools, 0)?,
            };
        }
        self.out(
            label,
            format!(
                "{} -> {}: {n} repetitions, each visiting {} path(s) in turn ({} measure(s) per visit) after a warm-up",
                a.from,
                a.target,
                a.paths.len(),
                a.measures.len()
            ),
        );
        for rep in 0..n {
            for (i, p) in a.paths.iter().enumerate() {
                self.ctx.cancel.check()?;
                let lines = self.switch_to(p.sidecars, p.mesh, p.engine)?;
                self.set_telemetry(p.telemetry)?;
                let sub = p.name.clone();
                if rep == 0 {
                    self.ctx.emit(Event::StepStarted { step: sub.clone(), explain: p.explain.clone() });
                    for line in lines {
                        self.out(&sub, line);
                    }
                    self.out(&sub, format!("data path: {}", self.config()));
                }
                configs[i] = self.config();
                let v = self.visit(a.from, a.target, a.measures, a.tools, a.round_trips)?;
                rss[i] = self
                    .sidecars
                    .proxies
                    .iter()
                    .filter_map(|p| Some((p.at.clone(), sidecar::rss_kb(p.pid)?)))
                    .collect();
                agent_mem[i] = self.lab.agent().and_then(crate::agent::Agent::memory_kb);
                if rep == 0 {
                    for (k, x) in &v.figures {
                        self.out(&sub, format!("first repetition: {k} {}", round3(*x)));
                    }
                    self.ctx.emit(Event::StepPassed { step: sub.clone() });
                    let try_: Vec<String> = p.try_.iter().map(|t| self.fill(t)).collect();
                    self.ctx.pause(&sub, &try_)?;
                }
                visits[i].push(v);
            }
            let line: Vec<String> = a
                .paths
                .iter()
                .zip(&visits)
                .filter_map(|(p, v)| {
                    let (k, x) = v.last()?.figures.first()?;
                    Some(format!("{} {k} {}", p.name, round3(*x)))
                })
                .collect();
            self.out(label, format!("repetition {}/{n}: {}", rep + 1, line.join(", ")));
        }
        for (i, p) in a.paths.iter().enumerate() {
            self.store_path(&p.name, &p.name, &configs[i], &visits[i], &rss[i]);
            self.stream_errors(&p.name, &configs[i], &visits[i]);
            let r = self.report.results.entry(p.name.clone()).or_default();
            let (agent_rss, map_kb) = agent_mem[i].unwrap_or_default();
            r.insert("agent_rss_kb".into(), agent_rss as f64);
            r.insert("map_kb".into(), map_kb as f64);
            r.insert("agent_total_kb".into(), (agent_rss + map_kb) as f64);
            if let Some((rss, maps)) = agent_mem[i] {
                self.out(
                    &p.name,
                    format!("mesh agent: {rss} KiB resident, its maps {maps} KiB of kernel memory"),
                );
            }
        }
        Ok(())
    }
    // ANCHOR_END: bench

    /// Streams that ended early, said once per path and kind (a fast writer into a slow reader
    /// through the redirect fails write() again and again: a newcomer must not read that as the
    /// lab crashing); each message goes to the report, by path.
    fn stream_errors(&mut self, name: &str, config: &str, visits: &[Visit]) {
        let streams: u32 = visits.iter().map(|v| v.streams).sum();
        let errors: Vec<&String> = visits.iter().flat_map(|v| &v.stream_errors).collect();
        for line in summarize_stream_errors(streams, &errors) {
            self.out(name, line);
        }
        if !errors.is_empty() {
            let all = self.report.errors.entry(name.to_owned()).or_default();
            all.extend(errors.iter().map(|e| format!("{config}: {e}")));
        }
    }

    /// A path's figures: medians (with spreads in `stats`), counter totals, and its median
    /// latency run for the report's table and chart.
    fn store_path(&mut self, step: &str, name: &str, config: &str, visits: &[Visit], rss: &[(String, u64)]) {
        let mut values: Vec<(String, f64)> = Vec::new();
        for (k, _) in visits.first().map(|v| v.figures.as_slice()).unwrap_or_default() {
            let samples: Vec<f64> = visits
                .iter()
                .filter_map(|v| v.figures.iter().find(|(kk, _)| kk == k).map(|(_, x)| *x))
                .collect();
            if TOTALS.contains(&k.as_str()) {
                values.push((k.clone(), samples.iter().sum()));
            } else if let Some(s) = Spread::of(&samples) {
                values.push((k.clone(), s.median));
                self.out(step, format!("{k:<14} {}", interval(&s, "")));
                self.report.stats.insert(format!("{name}.{k}"), s);
            }
        }
        let mesh = visits.iter().fold(Counters::default(), |t, v| t.plus(&v.mesh));
        let packets: u64 = visits.iter().map(|v| v.packets).sum();
        let latency_runs: Vec<&RrReport> = visits.iter().filter_map(|v| v.rr.as_ref()).collect();
        if visits.iter().any(|v| v.counted) {
            values.extend(
                [
                    ("packets", packets as f64),
                    ("msg_redirected", mesh.msg_redirected as f64),
                    ("msg_passed", mesh.msg_passed as f64),
                    ("sockets_inserted", mesh.sockets_inserted as f64),
                ]
                .map(|(k, v)| (k.to_owned(), v)),
            );
        }
        let rss_mean = if rss.is_empty() {
            0.0
        } else {
            rss.iter().map(|(_, k)| *k as f64).fold(0.0, |a, b| a + b) / rss.len() as f64
        };
        let rss_total = rss.iter().map(|(_, k)| *k as f64).fold(0.0, |a, b| a + b); // not sum(): an empty f64 sum is -0.0
        values.extend([
            ("proxies".to_owned(), rss.len() as f64),
            ("proxy_rss_kb".to_owned(), rss_mean),
            ("proxy_rss_total_kb".to_owned(), rss_total),
        ]);
        let r = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in &values {
            r.insert(k.clone(), *v);
        }
        let shown = ["p50", "p99", "mb_s", "conn_s", "packets", "msg_redirected", "proxy_rss_kb"];
        for (k, v) in values {
            let k = k.as_str();
            let unit = match k {
                "p50" | "p99" | "conn_p50" => "us",
                "mb_s" => "MB/s",
                "conn_s" => "/s",
                "proxy_rss_kb" => "KiB",
                _ => "",
            };
            if shown.contains(&k) && (k != "proxy_rss_kb" || v > 0.0) && (k != "msg_redirected" || v > 0.0) {
                self.metric(step, k, v, unit);
            }
        }
        if let Some(p50) = self.report.stats.get(&format!("{name}.p50")).map(|s| s.median) {
            let median = latency_runs
                .iter()
                .min_by(|a, b| (a.latency_us.p50 - p50).abs().total_cmp(&(b.latency_us.p50 - p50).abs()));
            if let Some(rr) = median {
                self.report.runs.push(Run {
                    name: name.to_owned(),
                    config: config.to_owned(),
                    rr: (*rr).clone(),
                    packets,
                    mesh,
                    proxy_rss_kb: rss.to_vec(),
                });
            }
        }
    }

    /// One visit of a path: every measure once. Packets and mesh counters are taken around the
    /// latency measure only (the other measures would drown them).
    fn visit(
        &mut self,
        from: &str,
        target: SocketAddr,
        measures: &[Measure],
        tools: &[ToolDef],
        round_trips: u64,
    ) -> Result<Visit, LabError> {
        let mut v = Visit::default();
        let t = target.to_string();
        for m in measures {
            self.ctx.cancel.check()?;
            let rr = |size: usize| -> Vec<String> {
                let size = size.to_string();
                let n = if size == "65536" { round_trips.div_ceil(4) } else { round_trips };
                ["rr", "--connect", &t, "--round-trips", &n.to_string(), "--json"]
                    .into_iter()
                    .chain(["--request-size", &size, "--response-size", &size])
                    .map(str::to_owned)
                    .collect()
            };
            match m {
                Measure::Latency => {
                    let (p0, c0) = (self.packets()?, self.counters()?);
                    let r: RrReport = self.run_json(from, &rr(self.ctx.options.size))?;
                    let (p1, c1) = (self.packets()?, self.counters()?);
                    v.packets = p1.saturating_sub(p0);
                    v.mesh = c1.since(&c0);
                    v.counted = true;
                    let l = &r.latency_us;
                    v.add([
                        ("p50", l.p50),
                        ("p90", l.p90),
                        ("p99", l.p99),
                        ("p999", l.p999),
                        ("max", l.max),
                        ("mean", l.mean),
                        ("rps", r.round_trips_per_s),
                    ]);
                    v.rr = Some(r);
                }
                Measure::Latency4k | Measure::Latency64k => {
                    let big = *m == Measure::Latency64k;
                    let r: RrReport = self.run_json(from, &rr(if big { 65536 } else { 4096 }))?;
                    let (a, b) = if big { ("p50_64k", "p99_64k") } else { ("p50_4k", "p99_4k") };
                    v.add([(a, r.latency_us.p50), (b, r.latency_us.p99)]);
                }
                Measure::Throughput | Measure::Throughput4 => {
                    let four = *m == Measure::Throughput4;
                    let streams = if four { "4" } else { "1" };
                    let r: StreamReport =
                        self.run_json(from, &["stream", "--connect", &t, "--streams", streams, "--json"])?;
                    let (a, b, c) = if four {
                        ("mb_s_4", "cpu_s_per_gb_4", "write_errors_4")
                    } else {
                        ("mb_s", "cpu_s_per_gb", "write_errors")
                    };
                    v.streams += if four { 4 } else { 1 };
                    v.stream_errors.extend(r.errors.iter().map(|e| format!("{streams} stream(s): {e}")));
                    v.add([(a, r.mb_per_s), (b, r.cpu_s_per_gb), (c, r.errors.len() as f64)]);
                }
                Measure::HttpLatency => {
                    let n = round_trips.to_string();
                    let args =
                        ["http-rr", "--connect", &t, "--request", "GET /api", "--round-trips", &n, "--json"];
                    let r: RrReport = self.run_json(from, &args)?;
                    v.add([("http_p50", r.latency_us.p50), ("http_p99", r.latency_us.p99)]);
                }
                Measure::ConnectRate => {
                    let n = (round_trips / 4).clamp(50, 1000).to_string();
                    let args = ["connect-rate", "--connect", &t, "--connections", &n, "--json"];
                    let r: ConnectReport = self.run_json(from, &args)?;
                    v.add([("conn_s", r.per_s), ("conn_p50", r.latency_us.p50)]);
                }
            }
        }
        // A bench of tools only (a real application's client) counts over the tools instead.
        let count_tools = !v.counted && !tools.is_empty();
        let (p0, c0) = if count_tools { (self.packets()?, self.counters()?) } else { Default::default() };
        for t in tools {
            self.ctx.cancel.check()?;
            let words: Vec<String> = t.command.iter().map(|w| self.fill(w)).collect();
            let cmd = command_of(&words)?;
            let out = self.lab.run(from, self.pinned(cmd, Role::Client), RUN_TIMEOUT, &self.ctx.cancel)?;
            let text =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            for (name, f) in &t.figures {
                let value = read_figure(&text, f).ok_or_else(|| LabError::Parse {
                    command: words.join(" "),
                    detail: format!(
                        "no line matches /{}/ for figure {name:?} in its output:\n{text}",
                        f.regex
                    ),
                })?;
                v.figures.push((name.clone(), value));
            }
        }
        if count_tools {
            v.packets = self.packets()?.saturating_sub(p0);
            v.mesh = self.counters()?.since(&c0);
            v.counted = true;
        }
        Ok(v)
    }

    /// Runs a workload client in `from` and parses its one JSON line.
    fn run_json<T: serde::de::DeserializeOwned, S: AsRef<str>>(
        &self,
        from: &str,
        args: &[S],
    ) -> Result<T, LabError> {
        self.run_json_as(Client { pod: from, outside_mesh: false }, args)
    }

    /// [`Self::run_json`], in a pod or outside the mesh in its network namespace.
    fn run_json_as<T: serde::de::DeserializeOwned, S: AsRef<str>>(
        &self,
        from: Client<'_>,
        args: &[S],
    ) -> Result<T, LabError> {
        let cmd = self.pinned(self.ctx.workload.command(args), Role::Client);
        let out = if from.outside_mesh {
            self.lab.run_outside(from.pod, cmd, RUN_TIMEOUT, &self.ctx.cancel)?
        } else {
            self.lab.run(from.pod, cmd, RUN_TIMEOUT, &self.ctx.cancel)?
        };
        serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
            command: format!("workload {}", args.first().map_or("", AsRef::as_ref)),
            detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        })
    }

    /// Packets through every pod's eth0, rx + tx.
    fn packets(&self) -> Result<u64, LabError> {
        self.lab.pods().iter().map(|p| Ok(self.lab.packets(&p.name)?.total())).sum()
    }

    fn counters(&self) -> Result<Counters, LabError> {
        Ok(self.lab.mesh().map(|m| m.counters()).transpose()?.unwrap_or_default())
    }

    /// With `--pin`, the command runs on one CPU: clients on the first, servers on the last.
    fn pinned(&self, mut cmd: std::process::Command, role: Role) -> std::process::Command {
        if self.ctx.options.pin {
            use std::os::unix::process::CommandExt;
            let cpus = self.report.machine.cpus.max(1);
            let cpu = match role {
                Role::Client => 0,
                Role::Server => cpus - 1,
            };
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut set: libc::cpu_set_t = std::mem::zeroed();
                    libc::CPU_SET(cpu, &mut set);
                    if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }

    fn spread(&self, metric: &str) -> Option<&Spread> {
        self.report.stats.get(metric)
    }

    /// Per-repetition `a / (factor * b)` when both were measured in the same repetitions.
    fn paired(&self, a: &str, b: &str, factor: f64) -> Option<Spread> {
        stats::paired_ratio(&self.spread(a)?.samples, &self.spread(b)?.samples, factor)
    }

    // ANCHOR: expect
    /// `metric op value` or `metric op factor * of`. Figures measured in repetitions are judged
    /// on the confidence interval of the median (of the per-repetition ratio, for `of`): the
    /// whole interval on the right side holds, the whole interval on the wrong side fails, and
    /// anything else is inconclusive.
    fn expect(
        &self,
        metric: &str,
        op: Op,
        value: Option<f64>,
        of: Option<&str>,
        factor: f64,
        severity: Severity,
    ) -> Check {
        let lhs = self.value(metric);
        let f = if factor == 1.0 { String::new() } else { format!("{factor} x ") };
        let (rhs, rhs_text, spread) = match (value, of) {
            (Some(v), _) => (v, format!("{v}"), self.spread(metric).cloned().map(|s| (s, v))),
            (None, Some(o)) => {
                let r = factor * self.value(o);
                (r, format!("{f}{o} ({r:.3})"), self.paired(metric, o, 1.0).map(|s| (s, factor)))
            }
            (None, None) => unreachable!("checked at parse time"),
        };
        let mut text = format!("{metric} ({lhs:.3}) {} {rhs_text}", op.symbol());
        let verdict = match &spread {
            Some((s, target)) => {
                let what = match of {
                    Some(o) => format!("{metric} / {o} per repetition"),
                    None => "median".into(),
                };
                text.push_str(&format!(": {what} {}", interval(s, "")));
                s.verdict(op, *target)
            }
            None if op.holds(lhs, rhs) => Verdict::Holds,
            None => Verdict::Fails,
        };
        Check { text, passed: verdict == Verdict::Holds, verdict, severity }
    }
    // ANCHOR_END: expect
}

/// A scenario's command line as a process to start. The scenario's checks refuse an empty
/// one; this says so rather than panic if one ever gets here.
fn command_of(words: &[String]) -> Result<std::process::Command, LabError> {
    let (program, args) = words.split_first().ok_or_else(|| LabError::Command {
        command: "(empty command)".into(),
        stderr: "a scenario command needs at least a program".into(),
    })?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// One line per kind of stream failure: how many of the path's streams, the range of bytes
/// written before the failure where the kind says it, what it means, where to read more.
fn summarize_stream_errors(streams: u32, errors: &[&String]) -> Vec<String> {
    let mut kinds: BTreeMap<String, (u32, Vec<u64>)> = BTreeMap::new();
    for e in errors {
        let e = e.split_once(": ").map_or(e.as_str(), |(_, rest)| rest);
        let (kind, bytes) = match e.strip_prefix("write after ").and_then(|r| r.split_once(" bytes: ")) {
            Some((n, rest)) => (format!("write() failed: {rest}"), n.parse::<u64>().ok()),
            None => (e.to_owned(), None),
        };
        let k = kinds.entry(kind).or_default();
        k.0 += 1;
        k.1.extend(bytes);
    }
    kinds
        .into_iter()
        .map(|(kind, (n, bytes))| {
            let after = match (bytes.iter().min(), bytes.iter().max()) {
                (Some(lo), Some(hi)) => {
                    format!(" after {:.0}-{:.0} MB", *lo as f64 / 1e6, *hi as f64 / 1e6)
                }
                _ => String::new(),
            };
            let why = if kind.contains("(os error 12)") {
                ": the redirected queue has no flow control, so a writer faster than its reader gets \
                 ENOMEM where TCP would make it wait (book: Measuring on a noisy machine, where it breaks)"
            } else {
                ""
            };
            format!("{n} of {streams} bulk streams ended early, {kind}{after}{why}; each one is in report.md")
        })
        .collect()
}

/// The `os error N` every message names, or 0 (none, or they differ).
fn common_errno<'a>(errors: impl Iterator<Item = &'a String>) -> i32 {
    let mut found = None;
    for e in errors {
        let n = e
            .rsplit_once("os error ")
            .and_then(|(_, rest)| rest.trim_end_matches(')').parse::<i32>().ok())
            .unwrap_or(0);
        match found {
            None => found = Some(n),
            Some(m) if m == n => {}
            Some(_) => return 0,
        }
    }
    found.unwrap_or(0)
}

/// `adopted N pinned links and M services from ...` -> (N, M).
fn adopted_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("adopted ")?;
    let mut words = rest.split_whitespace();
    let links = words.next()?.parse().ok()?;
    let services = words.nth(3)?.parse().ok()?;
    Some((links, services))
}

/// `applied FILE: a added, c changed, r removed, u unchanged` -> [a, c, r, u].
fn applied_counts(line: &str) -> Option<[usize; 4]> {
    let (_, counts) = line.strip_prefix("applied ")?.rsplit_once(": ")?;
    let mut out = [0; 4];
    for (slot, part) in out.iter_mut().zip(counts.split(", ")) {
        *slot = part.split_whitespace().next()?.parse().ok()?;
    }
    Some(out)
}

/// How a step is named in events: its result name, or what it does.
fn label(step: &Step) -> String {
    match step {
        Step::Explain { title, .. } => title.clone(),
        Step::Bench { paths, .. } => {
            format!("bench {}", paths.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "))
        }
        Step::Conform { name, .. }
        | Step::Apply { name, .. }
        | Step::Balance { name, .. }
        | Step::Load { name, .. }
        | Step::Http { name, .. }
        | Step::Transfer { name, .. }
        | Step::Prometheus { name, .. }
        | Step::Agent { name, .. }
        | Step::ServiceScale { name, .. }
        | Step::PolicyScale { name, .. }
        | Step::Isolation { name, .. }
        | Step::Exec { name, .. }
        | Step::Compute { name, .. } => name.clone(),
        Step::Mesh { state: OnOff::On, .. } => "mesh on".into(),
        Step::Mesh { state: OnOff::Off, .. } => "mesh off".into(),
        Step::Sidecars { mode, .. } => match mode {
            SidecarMode::PerPod => "sidecars per pod".into(),
            SidecarMode::PerNode => "proxy per node".into(),
            SidecarMode::Off => "sidecars off".into(),
        },
        Step::Expect { metric, .. } => format!("expect {metric}"),
        Step::Await { load, .. } => format!("await {load}"),
    }
}

/// The step's explanation and the commands to try after it.
fn texts(step: &Step) -> (&str, &[String]) {
    match step {
        Step::Explain { text, .. } => (text, &[]),
        Step::Bench { explain, try_, .. }
        | Step::Conform { explain, try_, .. }
        | Step::Isolation { explain, try_, .. }
        | Step::Apply { explain, try_, .. }
        | Step::Balance { explain, try_, .. }
        | Step::Load { explain, try_, .. }
        | Step::Http { explain, try_, .. }
        | Step::Transfer { explain, try_, .. }
        | Step::Prometheus { explain, try_, .. }
        | Step::Agent { explain, try_, .. }
        | Step::ServiceScale { explain, try_, .. }
        | Step::PolicyScale { explain, try_, .. }
        | Step::Mesh { explain, try_, .. }
        | Step::Sidecars { explain, try_, .. } => (explain, try_),
        Step::Exec { explain, .. }
        | Step::Compute { explain, .. }
        | Step::Expect { explain, .. }
        | Step::Await { explain, .. } => (explain, &[]),
    }
}

/// A `transfer` step's arguments.
struct TransferArgs<'a> {
    name: &'a str,
    from: Client<'a>,
    to: &'a str,
    port: u16,
    send: u64,
    receive: u64,
    connections: u32,
}

/// The flows of the flow log at `log` read after `since`, to `port`, from one of the client
/// ports in `ports` (each a flow record's `flow` object).
fn flow_records<T>(
    log: &std::path::Path,
    since: std::time::SystemTime,
    port: u16,
    ports: &BTreeMap<u64, T>,
) -> Vec<serde_json::Value> {
    let after = since.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|mut e| e.get_mut("flow").map(serde_json::Value::take))
        .filter(|f| {
            f["time"].as_f64().unwrap_or(0.0) >= after
                && f["destination"]["port"].as_u64() == Some(u64::from(port))
                && f["source"]["port"].as_u64().is_some_and(|p| ports.contains_key(&p))
        })
        .collect()
}

/// Every flow record's bytes (both ways) and the number of records, in the flow log at `log`.
fn flow_log_totals(log: &std::path::Path) -> (u64, u64) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let flows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|mut e| e.get_mut("flow").map(serde_json::Value::take))
        .collect();
    let bytes = flows
        .iter()
        .map(|f| {
            f["bytes"]["to_server"].as_u64().unwrap_or(0) + f["bytes"]["to_client"].as_u64().unwrap_or(0)
        })
        .sum();
    (bytes, flows.len() as u64)
}

/// One instant PromQL query (`GET /api/v1/query`) whose answer is a single number.
fn promql(server: SocketAddr, query: &str) -> Option<f64> {
    use std::io::{Read as _, Write as _};
    let encoded: String = query
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    let mut s = std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET /api/v1/query?query={encoded} HTTP/1.0\r\nHost: {server}\r\n\r\n").ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    let body: serde_json::Value = serde_json::from_str(answer.split_once("\r\n\r\n")?.1).ok()?;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[t,"N"]}]}}
    body["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// Where a client runs: in a pod, or in its network namespace outside the lab's cgroup.
#[derive(Clone, Copy)]
struct Client<'a> {
    pod: &'a str,
    outside_mesh: bool,
}

impl std::fmt::Display for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.pod)?;
        if self.outside_mesh {
            f.write_str(" (a process outside the mesh)")?;
        }
        Ok(())
    }
}

/// Which side of a benchmark a command is (for `--pin`).
#[derive(Clone, Copy)]
enum Role {
    Client,
    Server,
}

/// `12.3 [11.9, 12.8] (97.9 %, n = 10; IQR 12.0-12.6, range 11.5-13.4)`.
fn interval(s: &Spread, unit: &str) -> String {
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    format!(
        "{}{unit} [{}, {}] ({:.1} %, n = {}; IQR {}-{}, range {}-{})",
        round3(s.median),
        round3(s.lo),
        round3(s.hi),
        100.0 * s.confidence,
        s.n,
        round3(s.q1),
        round3(s.q3),
        round3(s.min),
        round3(s.max)
    )
}

/// Three significant digits, enough for noisy figures.
fn round3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

/// Waits until process `pid` has a socket listening on `port` in its network namespace (read
/// from `/proc/<pid>/net/tcp{,6}`: no probe connection, which some servers would log or count).
fn wait_listening(pid: u32, port: u16, cancel: &super::Cancel) -> Result<(), LabError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let wanted = format!(":{port:04X} ");
    loop {
        cancel.check()?;
        let listening = ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default().lines().skip(1).any(
                |l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.len() > 3 && format!("{} ", cols[1]).ends_with(&wanted) && cols[3] == "0A"
                },
            )
        });
        if listening {
            return Ok(());
        }
        // Exited: gone, or a zombie until the lab reaps it at teardown.
        let exited =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "));
        if exited || std::time::Instant::now() > deadline {
            return Err(LabError::Command {
                command: format!("pod workload (pid {pid})"),
                stderr: if exited {
                    format!("the program exited before anything listened on port {port}")
                } else {
                    format!("nothing listens on port {port} after 20 s")
                },
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_agent_says_it_adopted_and_applied() {
        let adopted =
            "adopted 10 pinned links and 4 services from /sys/fs/bpf/x/layout-1 (nothing attached again)";
        assert_eq!(adopted_counts(adopted), Some((10, 4)));
        assert_eq!(adopted_counts("installed in /sys/fs/bpf/x/layout-1"), None);
        let applied = "applied /run/sidecarless-lab/1-0/web.toml: 0 added, 2 changed, 1 removed, 4 unchanged";
        assert_eq!(applied_counts(applied), Some([0, 2, 1, 4]));
    }

    #[test]
    fn stream_failures_are_one_counted_line_per_kind() {
        let errors: Vec<String> = [
            "4 stream(s): write after 12000000 bytes: Out of memory (os error 12)",
            "4 stream(s): write after 66400000 bytes: Out of memory (os error 12)",
            "1 stream(s): write after 30000000 bytes: Out of memory (os error 12)",
            "4 stream(s): no byte count from the server: stalled for 10000 ms",
        ]
        .map(str::to_owned)
        .to_vec();
        let lines = summarize_stream_errors(50, &errors.iter().collect::<Vec<_>>());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "1 of 50 bulk streams ended early, no byte count from the server: stalled for 10000 ms; \
             each one is in report.md"
        );
        assert!(
            lines[1].starts_with(
                "3 of 50 bulk streams ended early, write() failed: Out of memory (os error 12) after 12-66 MB: \
                 the redirected queue has no flow control"
            ),
            "{}",
            lines[1]
        );
        assert!(summarize_stream_errors(50, &[]).is_empty());
    }

    #[test]
    fn the_common_errno_of_failed_connections() {
        let refused = ["Connection refused (os error 111)".to_owned()];
        assert_eq!(common_errno(refused.iter()), 111);
        let mixed = [
            "Connection refused (os error 111)".to_owned(),
            "Operation not permitted (os error 1)".to_owned(),
        ];
        assert_eq!(common_errno(mixed.iter()), 0);
        assert_eq!(common_errno([].iter()), 0);
    }

    #[test]
    fn a_figure_is_the_last_matching_line_times_the_factor() {
        let out =
            "sockperf: ---> percentile 99.000 =   29.378\nsockperf: ---> percentile 50.000 =    5.988\n";
        let f = FigureDef { regex: r"percentile 50\.000 =\s*([0-9.]+)".into(), factor: 2.0 };
        assert_eq!(read_figure(out, &f), Some(11.976));
        let iperf = "\"bits_per_second\":\t8.0e9,\n\"sum_received\": {\n\"bits_per_second\":\t1.6e10,\n";
        let f = FigureDef { regex: r#""bits_per_second":\s*([0-9.eE+]+)"#.into(), factor: 1.25e-7 };
        assert_eq!(read_figure(iperf, &f), Some(2000.0));
        assert_eq!(read_figure("nothing here", &f), None);
    }

    #[test]
    fn three_significant_digits() {
        assert_eq!(round3(52.43), "52.4");
        assert_eq!(round3(0.80612), "0.806");
        assert_eq!(round3(15436.2), "15436");
    }
}
