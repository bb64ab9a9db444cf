//! Runs a [`Scenario`]: builds the lab, runs the steps in order (each kind's code is in
//! [`super::steps`]), keeps named results, and tears everything down (also on error and on
//! cancel). What every step kind shares lives here: the report, named results, figures; where
//! the pods are, and how the steps run programs in them and read the mesh, is in [`super::site`].
use std::{collections::BTreeMap, net::SocketAddrV4, time::Duration};

use mesh_agent::meshfile::Resolved;
use workloads::{
    Workload,
    connect_rate::{self, ConnectReport},
    cpu::CpuTimes,
    defaults, http, rr,
};

use super::{
    Context, Outcome,
    report::{Machine, Report, interval},
    requirements,
    spec::{Scenario, WorkloadDef},
    stats::{self, Spread},
    steps::{Kind, Ran, Results, Step, load::Running},
};
use crate::site::{Kube, Site};
use lab_sandbox::{Event, Lab, LabError, PodSpec, preflight::kernel_release, sidecar::Sidecars};

/// Upper bound for one workload run (generous: emulated VMs are slow).
pub const RUN_TIMEOUT: Duration = Duration::from_mins(15);

/// The state of one scenario run, lent to each step in turn.
pub struct Engine<'a> {
    pub(crate) ctx: &'a Context,
    /// Where the pods are: the lab's sandbox, or a Kubernetes cluster.
    pub(crate) site: Site,
    pub(crate) report: Report,
    pub(crate) failures: Vec<String>,
    pub(crate) sidecars: Sidecars,
    /// Ports each pod's workload listens on (what a per-node proxy routes to).
    pub(crate) ports: BTreeMap<String, Vec<u16>>,
    /// The services of the mesh file applied last, with who is behind each backend slot.
    pub(crate) services: Vec<Resolved>,
    /// Background loads by name, until an `await` step collects them.
    pub(crate) loads: BTreeMap<String, Running>,
    /// What the policy maps hold after the mesh file applied last.
    pub(crate) policy: mesh_agent::policy::Wanted,
    /// Results of steps skipped (a kernel without what they need), with the reason: steps
    /// that read them are skipped too.
    pub(crate) skipped: BTreeMap<String, String>,
    /// The scenario's `[files]`, written into the run folder: name and path.
    pub(crate) files: Vec<(String, std::path::PathBuf)>,
    /// Mesh files named by path, read with the scenario.
    pub(crate) mesh_files: BTreeMap<String, String>,
}

/// Runs the scenario in a fresh lab; a scenario whose requirements are missing is skipped.
pub fn run(sc: &Scenario, ctx: &Context) -> Result<Outcome, LabError> {
    let outcome = |passed, failures, skipped, error, report| Outcome {
        scenario: sc.name.clone(),
        kernel: kernel_release(),
        passed,
        failures,
        skipped,
        error,
        report,
    };
    let missing = requirements::unmet(&sc.requires, &mut |line| {
        ctx.emit(Event::Output { step: "requirements".into(), line })
    })?;
    if !missing.is_empty() {
        let reason = missing.join("; ");
        ctx.emit(Event::StepSkipped { step: "requirements".into(), reason: reason.clone() });
        return Ok(outcome(false, Vec::new(), Some(reason), None, Report::default()));
    }
    // The kernel log from here on is the run's: a splat in it fails the run.
    let klog = crate::splat::KernelLog::mark();
    let site = if sc.kubernetes.is_some() {
        Site::Kubernetes(Kube::open(sc, &ctx.cancel)?)
    } else {
        let specs: Vec<PodSpec> =
            sc.pods.iter().map(|p| PodSpec { name: p.name.clone(), labels: p.labels.clone() }).collect();
        Site::Sandbox(Lab::create(&ctx.host, &specs)?)
    };
    ctx.emit(Event::LabUp { id: site.id(), pods: site.pods().to_vec() });
    let cpu0 = CpuTimes::now();
    let machine = Machine {
        cpus: std::thread::available_parallelism().map_or(1, usize::from),
        load_start: Machine::load(),
        pinned: ctx.options.pin,
        ..Machine::default()
    };
    let mut e = Engine {
        ctx,
        report: Report { lab: site.id(), machine, ..Report::default() },
        site,
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
    // A step that broke (not a cancel, not something this machine lacks) or a failed check: the
    // failure bundle, while the lab is still there.
    let broke = matches!(&result, Err(err) if !matches!(err, LabError::Cancelled) && !err.is_unmet());
    let splatted = klog.as_ref().ok().and_then(|k| k.splats_since().ok()).is_some_and(|s| !s.is_empty());
    if broke || splatted || !e.failures.is_empty() {
        e.report.failure = e.failure_bundle(klog.as_ref().ok());
    }
    // What the agent denied, naming pods (it applied every mesh file itself; on Kubernetes its
    // watcher gave it the pods, and it logs each denial).
    let log = match &e.site {
        Site::Sandbox(lab) => {
            std::fs::read_to_string(lab.id().run_dir().join(lab_sandbox::lab::FLOW_LOG)).unwrap_or_default()
        }
        Site::Kubernetes(k) => k.session.mesh_log("agent"),
    };
    (e.report.denials, e.report.denials_total) = super::report::denials(&log);
    // Teardown errors matter (a leak is a bug) but must not hide the scenario's own error.
    let Engine { site, mut report, failures, loads, .. } = e;
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
    let teardown = site.teardown(&ctx.cancel);
    // Read after the teardown: closing the lab's sockets and detaching its programs are part
    // of the run.
    let mut failures = failures;
    match klog.and_then(|k| k.splats_since()) {
        Ok(splats) => {
            for s in &splats {
                failures.push(format!("kernel splat: {}", s.lines().next().unwrap_or_default()));
            }
            report.kernel_splats = splats;
        }
        Err(e) => {
            report.skipped_steps.insert("kernel log".into(), format!("cannot read /dev/kmsg: {e}"));
        }
    }
    // A step that broke ends the run as failed, with its report and bundle (the CLI exits as
    // for a backend failure); a cancel or an unmet requirement is still an error.
    let error = match result {
        Ok(()) => None,
        Err(err) if broke => Some(lab_sandbox::error::chain(&err)),
        Err(err) => return Err(err),
    };
    match (teardown, &error) {
        (Err(t), Some(_)) => failures.push(format!("teardown: {}", lab_sandbox::error::chain(&t))),
        (Err(t), None) => return Err(t),
        (Ok(()), _) => {}
    }
    if let Some(err) = &error {
        failures.push(err.clone());
    }
    Ok(outcome(failures.is_empty(), failures, None, error, report))
}

impl Engine<'_> {
    fn steps(&mut self, sc: &Scenario) -> Result<(), LabError> {
        self.start_workloads(sc)?;
        for (i, step) in sc.steps.iter().enumerate() {
            self.ctx.cancel.check()?;
            let kind = step.get_ref().get();
            let label = format!("{}. {}", i + 1, kind.label());
            self.ctx.emit(Event::StepStarted { step: label.clone(), explain: kind.explain().to_owned() });
            match self.step(&label, kind, step.get_ref()) {
                Ok(()) => {}
                Err(e) => {
                    self.ctx.emit(Event::StepFailed { step: label, reason: lab_sandbox::error::chain(&e) });
                    return Err(e);
                }
            }
            let try_: Vec<String> = kind.try_().iter().map(|t| self.fill(t)).collect();
            self.ctx.pause(&label, &try_)?;
        }
        Ok(())
    }

    /// Runs one step: skipped when a result it reads was skipped; a passed step must have
    /// stored exactly the keys it declares (a lab bug otherwise, never a silent NaN later).
    fn step(&mut self, label: &str, kind: &dyn Kind, step: &Step) -> Result<(), LabError> {
        let stores = kind.stores();
        let names: Vec<&str> = stores.iter().map(|(n, _)| n.as_str()).collect();
        if let Some((needs, why)) = self.skipped_input(&kind.reads()) {
            self.skip(label, &names, format!("reads {needs}, skipped: {why}"));
            return Ok(());
        }
        match kind.run(self, label)? {
            Ran::Passed => {
                for (name, declared) in &stores {
                    if let Some(why) = drift(name, declared, self.report.results.get(name)) {
                        return Err(LabError::Bug(format!("step {label:?} ({}) {why}", step.kind())));
                    }
                }
                self.ctx.emit(Event::StepPassed { step: label.into() });
            }
            Ran::Failed(reason) => {
                self.failures.push(reason.clone());
                // Shown as failed on its own line, not only in the summary.
                self.ctx.emit(Event::StepFailed { step: label.into(), reason });
            }
            Ran::Skipped(reason) => self.skip(label, &names, reason),
        }
        Ok(())
    }

    pub(crate) fn start_workloads(&mut self, sc: &Scenario) -> Result<(), LabError> {
        for (name, contents) in &sc.files {
            // On Kubernetes the files are the manifests (and stay on the host).
            if let Site::Sandbox(lab) = &self.site {
                let path = lab.write_file(name, contents.as_bytes())?;
                self.files.push((name.clone(), path));
            }
        }
        for p in &sc.pods {
            let listen = |port: u16| -> Vec<(&str, String)> { vec![("listen", format!("[::]:{port}"))] };
            let w = match &p.workload {
                None => continue,
                Some(WorkloadDef::RrServer { port }) => {
                    Workload::RrServer(rr::ServerArgs { name: p.name.clone(), ..defaults(&listen(*port)) })
                }
                Some(WorkloadDef::Echo { port }) => Workload::Echo(defaults(&listen(*port))),
                Some(WorkloadDef::ConformServer { port }) => {
                    Workload::ConformServer(defaults(&listen(*port)))
                }
                Some(WorkloadDef::TransferServer { port }) => {
                    Workload::TransferServer(defaults(&listen(*port)))
                }
                Some(WorkloadDef::HttpServer { port }) => Workload::HttpServer(http::ServerArgs {
                    name: p.name.clone(),
                    ..defaults(&listen(*port))
                }),
                Some(WorkloadDef::Command { port, command }) => {
                    let words: Vec<String> = command.iter().map(|w| self.fill(w)).collect();
                    let cmd = command_of(&words)?;
                    let cmd = self.pinned(cmd, Role::Server);
                    let pid = self.site.lab_mut()?.spawn(&p.name, cmd)?;
                    self.ports.entry(p.name.clone()).or_default().push(*port);
                    self.out("lab", format!("pod {}: {} (pid {pid})", p.name, words.join(" ")));
                    wait_listening(pid, *port, &self.ctx.cancel).map_err(|e| match e {
                        LabError::Command { command, stderr } => LabError::Command {
                            command,
                            stderr: format!(
                                "{stderr}; its log ({}):\n{}",
                                self.site.lab().map(|l| l.log_path(&p.name)).unwrap_or_default().display(),
                                self.site.lab().map(|l| l.log_tail(&p.name, 15)).unwrap_or_default()
                            ),
                        },
                        e => e,
                    })?;
                    continue;
                }
            };
            let Some(port) = p.workload.as_ref().map(WorkloadDef::port) else { continue };
            self.ports.entry(p.name.clone()).or_default().push(port);
            let args = w.argv();
            let line = format!("pod {}: workload {}", p.name, args.join(" "));
            let cmd = self.pinned(self.ctx.workload.command(&args), Role::Server);
            self.site.lab_mut()?.spawn(&p.name, cmd)?;
            self.ctx.emit(Event::Output { step: "lab".into(), line });
        }
        Ok(())
    }

    pub(crate) fn out(&self, step: &str, line: String) {
        self.ctx.emit(Event::Output { step: step.into(), line });
    }

    pub(crate) fn metric(&self, step: &str, name: &str, value: f64, unit: &str) {
        self.ctx.emit(Event::Metric { step: step.into(), name: name.into(), value, unit: unit.into() });
    }

    pub(crate) fn value(&self, path: &str) -> f64 {
        let (name, key) = path.rsplit_once('.').expect("checked at parse time");
        self.report.results.get(name).and_then(|r| r.get(key)).copied().unwrap_or(f64::NAN)
    }

    /// Stores a step's typed results under `name` and shows each as a figure of step `label`.
    pub(crate) fn record(&mut self, label: &str, name: &str, results: &impl Results) {
        let values = results.values();
        let r = self.report.results.entry(name.to_owned()).or_default();
        for (k, v, _) in &values {
            r.insert((*k).into(), *v);
        }
        for (k, v, unit) in values {
            self.metric(label, k, v, unit);
        }
    }

    /// Stores figures whose keys depend on the step's settings (`exec` figures, scale counts).
    pub(crate) fn store(&mut self, label: &str, name: &str, values: &[(&str, f64)]) {
        let r = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in values {
            r.insert((*k).into(), *v);
        }
        for (k, v) in values {
            self.metric(label, k, *v, "");
        }
    }

    /// Skips the step `label` (whose results would be `names`) for `reason`: steps reading
    /// its results are skipped too.
    fn skip(&mut self, label: &str, names: &[&str], reason: String) {
        for name in names {
            self.skipped.insert((*name).to_owned(), reason.clone());
        }
        self.report.skipped_steps.insert(label.to_owned(), reason.clone());
        self.ctx.emit(Event::StepSkipped { step: label.into(), reason });
    }

    /// The first of `metrics` that a skipped step was to store, with the reason.
    fn skipped_input(&self, metrics: &[&str]) -> Option<(String, String)> {
        metrics.iter().find_map(|m| {
            let name = m.rsplit_once('.').map_or(*m, |(n, _)| n);
            self.skipped.get(name).map(|why| (name.to_owned(), why.clone()))
        })
    }

    /// Stores `name.key` as the median of `samples` (microseconds), its spread for the report.
    pub(crate) fn store_spread(&mut self, label: &str, name: &str, key: &str, samples: &[f64]) {
        let Some(s) = Spread::of(samples) else { return };
        self.out(label, format!("{key:<16} {}", interval(&s, "us")));
        self.report.results.entry(name.to_owned()).or_default().insert(key.to_owned(), s.median);
        self.metric(label, key, s.median, "us");
        self.report.stats.insert(format!("{name}.{key}"), s);
    }

    /// The median connection (connect() to the response's last byte) of one connect-rate run.
    pub(crate) fn connect_p50(
        &self,
        from: &str,
        to: SocketAddrV4,
        connections: u32,
    ) -> Result<f64, LabError> {
        let args = connect_rate::Args { connections, json: true, ..defaults(&[("connect", to.to_string())]) };
        let r: ConnectReport = self.run_json(from, &Workload::ConnectRate(args))?;
        Ok(r.latency_us.p50)
    }

    pub(crate) fn spread(&self, metric: &str) -> Option<&Spread> {
        self.report.stats.get(metric)
    }

    /// Per-repetition `a / (factor * b)` when both were measured in the same repetitions.
    pub(crate) fn paired(&self, a: &str, b: &str, factor: f64) -> Option<Spread> {
        stats::paired_ratio(&self.spread(a)?.samples, &self.spread(b)?.samples, factor)
    }
}

/// A scenario's command line as a process to start. The scenario's checks refuse an empty
/// one; this says so rather than panic if one ever gets here.
pub(crate) fn command_of(words: &[String]) -> Result<std::process::Command, LabError> {
    let (program, args) = words.split_first().ok_or_else(|| LabError::Command {
        command: "(empty command)".into(),
        stderr: "a scenario command needs at least a program".into(),
    })?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    Ok(cmd)
}

/// The `os error N` every message names, or 0 (none, or they differ).
pub(crate) fn common_errno<'a>(errors: impl Iterator<Item = &'a String>) -> i32 {
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

/// Waits until process `pid` has a socket listening on `port` in its network namespace (read
/// from `/proc/<pid>/net/tcp{,6}`: no probe connection, which some servers would log or count).
pub(crate) fn wait_listening(pid: u32, port: u16, cancel: &super::Cancel) -> Result<(), LabError> {
    use procfs::net::TcpState;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        cancel.check()?;
        let listening = procfs::process::Process::new(pid as i32).is_ok_and(|p| {
            let v4 = p.tcp().unwrap_or_default().into_iter();
            v4.chain(p.tcp6().unwrap_or_default())
                .any(|s| s.state == TcpState::Listen && s.local_address.port() == port)
        });
        if listening {
            return Ok(());
        }
        // Exited: gone, or a zombie until the lab reaps it at teardown.
        let exited = lab_sandbox::process::exited(pid);
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

/// What differs between the keys a step declares for result `name` and the keys it stored.
fn drift(name: &str, declared: &[String], stored: Option<&BTreeMap<String, f64>>) -> Option<String> {
    let declared: std::collections::BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    let stored: std::collections::BTreeSet<&str> =
        stored.map(|r| r.keys().map(String::as_str).collect()).unwrap_or_default();
    let missing: Vec<&&str> = declared.difference(&stored).collect();
    let extra: Vec<&&str> = stored.difference(&declared).collect();
    match (missing.is_empty(), extra.is_empty()) {
        (true, true) => None,
        _ => Some(format!(
            "declares {name}.{missing:?} but did not store them; stored undeclared {name}.{extra:?}"
        )),
    }
}

/// Where a client runs: in a pod, or in its network namespace outside the lab's cgroup.
#[derive(Clone, Copy)]
pub struct Client<'a> {
    pub pod: &'a str,
    pub outside_mesh: bool,
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
pub enum Role {
    Client,
    Server,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_that_stores_other_keys_than_it_declares_is_caught() {
        let declared = vec!["cases".to_owned(), "kernel_bugs".to_owned()];
        let mut stored = BTreeMap::from([("cases".to_owned(), 1.0), ("kernel_bugs".to_owned(), 0.0)]);
        assert_eq!(drift("c", &declared, Some(&stored)), None);
        stored.remove("kernel_bugs");
        stored.insert("early_eagain".into(), 0.0);
        let why = drift("c", &declared, Some(&stored)).unwrap();
        assert!(why.contains("\"kernel_bugs\"") && why.contains("\"early_eagain\""), "{why}");
        assert!(drift("c", &declared, None).is_some());
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
}
