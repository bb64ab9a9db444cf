//! Runs a [`Scenario`]: builds the lab, executes the steps in order, keeps named results, checks
//! expectations, and tears everything down (also on error and on cancel).
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use mesh_agent::Counters;
use serde::Serialize;
use workloads::{
    conform::{CaseResult, ConformReport, HoldReport},
    rr::RrReport,
};

use super::{
    Context, Outcome, kernel_bugs, kernel_release, requirements,
    spec::{Family, OnOff, Scenario, Severity, SidecarMode, Step, WorkloadDef},
};
use crate::{
    Event, Lab, LabError, PodSpec,
    sidecar::{self, OUTBOUND_PORT, Sidecars},
};

/// Upper bound for one rr run (generous: emulated VMs are slow).
const RUN_TIMEOUT: Duration = Duration::from_secs(900);

/// One bench run and what the kernel saw during it.
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
    pub passed: bool,
    pub severity: Severity,
}

/// The scenario's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub lab: String,
    /// `name -> key -> value` for every named result.
    pub results: BTreeMap<String, BTreeMap<String, f64>>,
    pub runs: Vec<Run>,
    pub conform: Vec<ConformRun>,
    pub checks: Vec<Check>,
}

struct Engine<'a> {
    ctx: &'a Context,
    lab: Lab,
    report: Report,
    failures: Vec<String>,
    sidecars: Sidecars,
    /// Ports each pod's workload listens on (what a per-node proxy routes to).
    ports: BTreeMap<String, Vec<u16>>,
}

/// The conform step's fields.
struct ConformArgs<'s> {
    name: &'s str,
    from: &'s str,
    to: &'s str,
    port: u16,
    families: &'s [Family],
    compare: Option<&'s str>,
    cases: &'s [String],
    short_lived: Option<u32>,
    across_mesh: bool,
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
    let mut e = Engine {
        ctx,
        report: Report { lab: lab.id().to_string(), ..Report::default() },
        lab,
        failures: Vec::new(),
        sidecars: Sidecars::default(),
        ports: BTreeMap::new(),
    };
    let result = e.steps(sc);
    // Teardown errors matter (a leak is a bug) but must not hide the scenario's own error.
    let Engine { lab, report, failures, .. } = e;
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
        let size = self.ctx.options.size.to_string();
        for p in &sc.pods {
            let args: Vec<String> = match &p.workload {
                None => continue,
                Some(WorkloadDef::RrServer { port }) => vec![
                    "rr-server".into(),
                    "--listen".into(),
                    format!("[::]:{port}"),
                    "--request-size".into(),
                    size.clone(),
                    "--response-size".into(),
                    size.clone(),
                ],
                Some(WorkloadDef::Echo { port }) => {
                    vec!["echo".into(), "--listen".into(), format!("[::]:{port}")]
                }
                Some(WorkloadDef::ConformServer { port }) => {
                    vec!["conform-server".into(), "--listen".into(), format!("[::]:{port}")]
                }
            };
            let Some(port) = p.workload.as_ref().map(WorkloadDef::port) else { continue };
            self.ports.entry(p.name.clone()).or_default().push(port);
            let line = format!("pod {}: workload {}", p.name, args.join(" "));
            self.lab.spawn(&p.name, self.ctx.workload.command(&args))?;
            self.ctx.emit(Event::Output { step: "lab".into(), line });
        }
        Ok(())
    }

    /// Fills the placeholders of a `try` command: `<pins>` (the mesh's bpffs folder),
    /// `<cgroup>` (the lab's cgroup) and `<netns:POD>`.
    fn fill(&self, t: &str) -> String {
        let mut s = t.replace("<pins>", &self.lab.id().pin_dir().display().to_string());
        s = s.replace("<cgroup>", &self.lab.cgroup().display().to_string());
        for p in self.lab.pods() {
            s = s.replace(&format!("<netns:{}>", p.name), &p.netns);
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
            Step::Bench { name, from, to, port, family, round_trips, .. } => {
                let ip = self.pod_ip(to, *family);
                let n = round_trips.unwrap_or(self.ctx.options.round_trips);
                let run = self.bench(label, name, from, SocketAddr::new(ip, *port), n)?;
                self.report.runs.push(run);
            }
            Step::Conform {
                name,
                from,
                to,
                port,
                families,
                compare,
                cases,
                short_lived,
                across_mesh,
                ..
            } => {
                let args = ConformArgs {
                    name,
                    from,
                    to,
                    port: *port,
                    families,
                    compare: compare.as_deref(),
                    cases,
                    short_lived: *short_lived,
                    across_mesh: *across_mesh,
                };
                self.conform(label, &args)?;
            }
            Step::Isolation { name, pods, port, .. } => self.isolation(label, name, pods, *port)?,
            Step::Mesh { state: OnOff::On, .. } => self.mesh_on(label)?,
            Step::Mesh { state: OnOff::Off, .. } => self.lab.stop_mesh()?,
            Step::Sidecars { mode, .. } => {
                let old = std::mem::take(&mut self.sidecars);
                sidecar::disable(&mut self.lab, old)?;
                let routes: Vec<_> = self
                    .lab
                    .pods()
                    .iter()
                    .flat_map(|p| {
                        self.workload_ports(&p.name)
                            .into_iter()
                            .map(move |port| (p.name.clone(), p.ipv4, port))
                    })
                    .collect();
                self.sidecars = sidecar::enable(&mut self.lab, *mode, &self.ctx.workload, &routes)?;
                for p in &self.sidecars.proxies {
                    self.out(label, format!("proxy for {} running as pid {}", p.at, p.pid));
                }
                let port = self.sidecar_port();
                if let Some(mesh) = self.lab.mesh_mut() {
                    mesh.set_sidecar_port(port)?;
                }
            }
            Step::Exec { name, pod, command, expect_exit, .. } => {
                let mut cmd = std::process::Command::new(&command[0]);
                cmd.args(&command[1..]);
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
            Step::Compute { name, metric, of, factor, unit, .. } => {
                let mut v = factor * self.value(metric);
                if let Some(o) = of {
                    v /= self.value(o);
                }
                self.report.results.entry(name.clone()).or_default().insert("value".into(), v);
                self.metric(label, name, v, unit);
            }
            Step::Expect { metric, op, value, of, factor, severity, .. } => {
                let lhs = self.value(metric);
                let (rhs, rhs_text) = match (value, of) {
                    (Some(v), _) => (*v, format!("{v}")),
                    (None, Some(o)) => {
                        let r = factor * self.value(o);
                        let f = if *factor == 1.0 { String::new() } else { format!("{factor} x ") };
                        (r, format!("{f}{o} ({r:.3})"))
                    }
                    (None, None) => unreachable!("checked at parse time"),
                };
                let passed = op.holds(lhs, rhs);
                let text = format!("{metric} ({lhs:.3}) {} {rhs_text}", op.symbol());
                let verdict = match (passed, severity) {
                    (true, _) => "ok",
                    (false, Severity::Check) => "FAILED",
                    (false, Severity::Benchmark) => "target not met (benchmark, not a failure)",
                };
                self.out(label, format!("{text}: {verdict}"));
                if !passed && *severity == Severity::Check {
                    self.failures.push(text.clone());
                    self.report.checks.push(Check { text: text.clone(), passed, severity: *severity });
                    self.ctx.emit(Event::StepFailed { step: label.into(), reason: text });
                    return Ok(());
                }
                self.report.checks.push(Check { text, passed, severity: *severity });
            }
        }
        self.ctx.emit(Event::StepPassed { step: label.into() });
        Ok(())
    }

    fn mesh_on(&mut self, label: &str) -> Result<(), LabError> {
        let port = self.sidecar_port();
        let mesh = self.lab.start_mesh()?;
        let pins = mesh.pin_dir().display().to_string();
        for line in mesh.describe() {
            self.out(label, line);
        }
        self.out(label, format!("maps pinned in {pins}"));
        self.lab.mesh_mut().expect("started").set_sidecar_port(port)?;
        if port != 0 {
            self.out(label, format!("sidecars present: app <-> proxy hops redirected via 127.0.0.1:{port}"));
        }
        Ok(())
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
            let target = SocketAddr::new(self.pod_ip(a.to, *family), a.port);
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
            let reference = a.compare.map(|c| {
                self.report
                    .conform
                    .iter()
                    .filter(|r| r.name == c && r.family == *family)
                    .flat_map(|r| r.cases.iter().map(|v| (v.result.case.clone(), v.result.clone())))
                    .collect::<BTreeMap<_, _>>()
            });
            let mut verdicts = Vec::new();
            for result in report.cases {
                total += 1;
                let expected = reference.as_ref().and_then(|r| r.get(&result.case)).cloned();
                let kernel_bug = expected
                    .as_ref()
                    .filter(|e| **e != result)
                    .and_then(|e| kernel_bugs::explain(&result, e));
                let verdict = match (&expected, kernel_bug) {
                    (None, _) => "reference",
                    (Some(e), _) if *e == result => "same",
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
        let netns: Vec<String> = pods
            .iter()
            .map(|p| {
                std::path::Path::new(crate::netns::NETNS_DIR)
                    .join(&self.lab.pod(p).netns)
                    .display()
                    .to_string()
            })
            .collect();
        let args = [
            "loopback-isolation".to_owned(),
            "--netns".into(),
            netns.join(","),
            "--port".into(),
            port.to_string(),
        ];
        self.out(
            label,
            format!("127.0.0.1:40300 -> 127.0.0.1:{port} in {} at once ({})", pods.join(", "), self.config()),
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
                    "pod {p}: {} bytes received, {} from another pod{}",
                    r.bytes,
                    r.foreign_bytes,
                    r.error.as_deref().map(|e| format!(", error: {e}")).unwrap_or_default()
                ),
            );
        }
        let values = [
            ("bytes", report.pods.iter().map(|p| p.bytes).sum::<u64>() as f64),
            ("foreign_bytes", report.pods.iter().map(|p| p.foreign_bytes).sum::<u64>() as f64),
            ("errors", report.pods.iter().filter(|p| p.error.is_some()).count() as f64),
            ("msg_redirected", c.msg_redirected as f64),
            ("loopback_skipped", c.loopback_skipped as f64),
        ];
        let r = self.report.results.entry(name.to_owned()).or_default();
        for (k, v) in values {
            r.insert(k.into(), v);
        }
        for (k, v) in values {
            self.metric(label, k, v, "");
        }
        Ok(())
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
        self.mesh_on(label)?;
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

    fn pod_ip(&self, pod: &str, family: Family) -> std::net::IpAddr {
        let pod = self.lab.pod(pod);
        match family {
            Family::Ipv4 => pod.ipv4.into(),
            Family::Ipv6 => pod.ipv6.into(),
        }
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
        if self.lab.mesh().is_some() {
            parts.push("eBPF mesh");
        }
        if parts.is_empty() { "direct".into() } else { parts.join(" + ") }
    }

    /// One rr run from `from` to `target`, with the packets and mesh counters around it.
    fn bench(
        &mut self,
        label: &str,
        name: &str,
        from: &str,
        target: SocketAddr,
        round_trips: u64,
    ) -> Result<Run, LabError> {
        let lab = &self.lab;
        let pods: Vec<String> = lab.pods().iter().map(|p| p.name.clone()).collect();
        let packets = || -> Result<u64, LabError> { pods.iter().map(|p| Ok(lab.packets(p)?.total())).sum() };
        let counters = || -> Result<Counters, LabError> {
            Ok(lab.mesh().map(|m| m.counters()).transpose()?.unwrap_or_default())
        };
        let size = self.ctx.options.size.to_string();
        let cmd = self.ctx.workload.command(&[
            "rr",
            "--connect",
            &target.to_string(),
            "--round-trips",
            &round_trips.to_string(),
            "--request-size",
            &size,
            "--response-size",
            &size,
            "--json",
        ]);
        self.out(
            label,
            format!("rr {from} -> {target}: {round_trips} round trips of {size} bytes ({})", self.config()),
        );
        let (p0, c0) = (packets()?, counters()?);
        let out = lab.run(from, cmd, RUN_TIMEOUT, &self.ctx.cancel)?;
        let (p1, c1) = (packets()?, counters()?);
        let rr: RrReport = serde_json::from_slice(&out.stdout).map_err(|e| LabError::Parse {
            command: "rr --json".into(),
            detail: format!("{e}: {}", String::from_utf8_lossy(&out.stdout)),
        })?;
        let proxy_rss_kb: Vec<(String, u64)> = self
            .sidecars
            .proxies
            .iter()
            .filter_map(|p| Some((p.at.clone(), sidecar::rss_kb(p.pid)?)))
            .collect();
        let run = Run {
            name: name.into(),
            config: self.config(),
            rr,
            packets: p1.saturating_sub(p0),
            mesh: c1.since(&c0),
            proxy_rss_kb,
        };
        let l = &run.rr.latency_us;
        let rss_mean = if run.proxy_rss_kb.is_empty() {
            0.0
        } else {
            run.proxy_rss_kb.iter().map(|(_, k)| *k as f64).sum::<f64>() / run.proxy_rss_kb.len() as f64
        };
        let values = [
            ("p50", l.p50, "us"),
            ("p90", l.p90, "us"),
            ("p99", l.p99, "us"),
            ("p999", l.p999, "us"),
            ("max", l.max, "us"),
            ("mean", l.mean, "us"),
            ("rps", run.rr.round_trips_per_s, "/s"),
            ("packets", run.packets as f64, ""),
            ("msg_redirected", run.mesh.msg_redirected as f64, ""),
            ("msg_passed", run.mesh.msg_passed as f64, ""),
            ("sockets_inserted", run.mesh.sockets_inserted as f64, ""),
            ("proxies", run.proxy_rss_kb.len() as f64, ""),
            ("proxy_rss_kb", rss_mean, "KiB"),
        ];
        let shown = ["p50", "p99", "packets", "msg_redirected", "proxy_rss_kb"];
        let r = self.report.results.entry(name.into()).or_default();
        for (k, v, _) in values {
            r.insert(k.into(), v);
        }
        for (k, v, unit) in values {
            if shown.contains(&k)
                && (k != "proxy_rss_kb" || v > 0.0)
                && (k != "msg_redirected" || self.lab.mesh().is_some())
            {
                self.metric(label, k, v, unit);
            }
        }
        Ok(run)
    }
}

/// How a step is named in events: its result name, or what it does.
fn label(step: &Step) -> String {
    match step {
        Step::Explain { title, .. } => title.clone(),
        Step::Bench { name, .. }
        | Step::Conform { name, .. }
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
    }
}

/// The step's explanation and the commands to try after it.
fn texts(step: &Step) -> (&str, &[String]) {
    match step {
        Step::Explain { text, .. } => (text, &[]),
        Step::Bench { explain, try_, .. }
        | Step::Conform { explain, try_, .. }
        | Step::Isolation { explain, try_, .. }
        | Step::Mesh { explain, try_, .. }
        | Step::Sidecars { explain, try_, .. } => (explain, try_),
        Step::Exec { explain, .. } | Step::Compute { explain, .. } | Step::Expect { explain, .. } => {
            (explain, &[])
        }
    }
}
