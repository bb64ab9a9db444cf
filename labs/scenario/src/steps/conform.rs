//! `do = "conform"`: the TCP conformance suite from one pod to another, once per family, each
//! case's transcript compared with a reference run's.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use serde::Deserialize;
use workloads::conform::{ConformReport, HoldReport};

use super::{Checker, Kind, Ran, Results, results};
use crate::{
    engine::{Engine, Role},
    kernel_bugs,
    report::{CaseVerdict, ConformRun},
    spec::Family,
};
use lab_sandbox::LabError;

// ANCHOR: def
/// The TCP conformance suite (`workload conform`) from one pod to another, once per family.
/// With `compare`, every case's transcript must equal the one the step named there recorded
/// for the same case and family; `across_mesh` also holds one connection open while the mesh
/// starts and stops (the mesh must be off at this step).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conform {
    pub name: String,
    pub from: String,
    pub to: String,
    pub port: u16,
    #[serde(default = "both_families")]
    pub families: Vec<Family>,
    #[serde(default)]
    pub compare: Option<String>,
    /// A second acceptable reference: a case that differs from `compare` but equals this
    /// run's transcript is `same` (the proxies' own timing can go either way; plain TCP's
    /// behaviour is never the mesh's fault).
    #[serde(default)]
    pub also_accept: Option<String>,
    /// Only these cases (default: all).
    #[serde(default)]
    pub cases: Vec<String>,
    /// Connections in the `short-lived` case (default 10,000).
    #[serde(default)]
    pub short_lived: Option<u32>,
    #[serde(default)]
    pub across_mesh: bool,
    /// Connect through this service of the mesh file applied last (its virtual address for
    /// each family) instead of to `to`'s own address: socket load balancing in the path.
    #[serde(default)]
    pub via: Option<String>,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn both_families() -> Vec<Family> {
    vec![Family::Ipv4, Family::Ipv6]
}

results! {
    /// What a conform step stores under its name, over its families.
    pub struct Conformance {
        /// Cases run.
        cases,
        /// Transcripts that differ from the `compare` run without a known kernel cause.
        differences,
        /// Transcripts that differ by a known kernel bug.
        kernel_bugs,
        /// Messages sk_msg redirected meanwhile.
        msg_redirected,
        /// Connections sk_msg handed to TCP because their reader fell behind (flow control).
        flow_fallback,
        /// Connections handed to TCP because the node's TCP memory was under pressure.
        pressure_fallback,
        /// 1 when the connection held across the mesh's start and stop stayed intact (or none
        /// was held).
        held_ok,
    }
}

impl Kind for Conform {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        super::port(self.port)?;
        cx.pod(&self.from)?;
        cx.pod(&self.to)?;
        for (key, c) in [("compare", &self.compare), ("also_accept", &self.also_accept)] {
            if let Some(c) = c
                && !cx.conform_runs.contains(c)
            {
                return Err(format!("{key} = {c:?}: no earlier conform step is named so"));
            }
        }
        if let Some(bad) = self.cases.iter().find(|c| !workloads::conform::CASES.contains(&c.as_str())) {
            return Err(format!("unknown case \"{bad}\" (cases: {})", workloads::conform::CASES.join(", ")));
        }
        if self.families.is_empty() {
            return Err("families must name ipv4 and/or ipv6".into());
        }
        cx.conform_runs.insert(self.name.clone());
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Conformance::keys())]
    }
    texts!(name, explain, try);
    fn on_kubernetes(&self) -> Result<(), String> {
        if self.across_mesh {
            return Err("across_mesh needs the lab's sandbox (a mesh started under a held connection)".into());
        }
        Ok(())
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let c = self.conform(e, label)?;
        e.record(label, &self.name, &c);
        Ok(Ran::Passed)
    }
}

impl Conform {
    // ANCHOR: conform
    /// Runs the conformance suite once per family and compares each case's transcript with
    /// the reference run's.
    fn conform(&self, e: &mut Engine<'_>, label: &str) -> Result<Conformance, LabError> {
        let c0 = e.counters()?;
        let (mut total, mut differences, mut known, mut held_ok) = (0usize, 0usize, 0usize, 1.0);
        for family in &self.families {
            let target = match &self.via {
                None => SocketAddr::new(e.pod_ip(&self.to, *family)?, self.port),
                Some(service) => e.service_address(service, *family).ok_or_else(|| LabError::Command {
                    command: format!("conform {}", self.name),
                    stderr: format!(
                        "via = {service:?}: the mesh file applied last has no such service for {family:?}"
                    ),
                })?,
            };
            let args = workloads::conform::ClientArgs {
                cases: self.cases.clone(),
                short_lived: self.short_lived.unwrap_or(e.ctx.options.short_lived),
                json: true,
                ..workloads::defaults(&[("connect", target.to_string())])
            };
            let args = workloads::Workload::Conform(args).argv();
            e.out(label, format!("conform {} -> {target} ({})", self.from, e.config()));
            let f0 = e.counters()?;
            let out = e.run_workload(&self.from, &args, Role::Client)?;
            let mesh = e.counters()?.since(&f0);
            let report: ConformReport =
                serde_json::from_slice(&out.stdout).map_err(|err| LabError::Parse {
                    command: "conform --json".into(),
                    detail: format!("{err}: {}", String::from_utf8_lossy(&out.stdout)),
                })?;
            let recorded = |c: &str| {
                e.report
                    .conform
                    .iter()
                    .filter(|r| r.name == c && r.family == *family)
                    .flat_map(|r| r.cases.iter().map(|v| (v.result.case.clone(), v.result.clone())))
                    .collect::<BTreeMap<_, _>>()
            };
            let reference = self.compare.as_deref().map(recorded);
            let alternative = self.also_accept.as_deref().map(recorded).unwrap_or_default();
            let mut verdicts = Vec::new();
            for result in report.cases {
                total += 1;
                let expected = reference.as_ref().and_then(|r| r.get(&result.case)).cloned();
                let as_alternative = alternative.get(&result.case) == Some(&result);
                let kernel_bug = expected
                    .as_ref()
                    .filter(|x| **x != result && !as_alternative)
                    .and_then(|x| kernel_bugs::explain(&result, x));
                let verdict = match (&expected, kernel_bug) {
                    (None, _) => "reference",
                    (Some(x), _) if *x == result => "same",
                    (Some(_), _) if as_alternative => "same",
                    (Some(_), Some(_)) => "kernel bug",
                    (Some(_), None) => "differs",
                };
                if let Some(bug) = kernel_bug {
                    known += 1;
                    e.out(
                        label,
                        format!("{} ({family:?}): known kernel bug {}: {}", result.case, bug.id, bug.summary),
                    );
                } else if verdict == "differs" {
                    differences += 1;
                    let x = expected.as_ref().expect("differs has a reference");
                    let compare = self.compare.as_deref().unwrap_or("");
                    e.out(label, format!("{} ({family:?}): DIFFERS from {compare}", result.case));
                    for (side, got, want) in
                        [("client", &result.client, &x.client), ("server", &result.server, &x.server)]
                    {
                        if got != want {
                            e.out(label, format!("  {side} saw:      {}", got.join(" | ")));
                            e.out(label, format!("  {side} expected: {}", want.join(" | ")));
                        }
                    }
                } else {
                    e.out(label, format!("{} ({family:?}): {verdict}", result.case));
                }
                let expected = if verdict == "same" { None } else { expected };
                verdicts.push(CaseVerdict {
                    result,
                    verdict: verdict.into(),
                    kernel_bug: kernel_bug.map(|b| b.id.into()),
                    expected,
                });
            }
            let held =
                if self.across_mesh { Some(hold_across_mesh(e, label, &self.from, target)?) } else { None };
            if let Some(h) = &held {
                if h.error.is_some() || h.round_trips == 0 {
                    held_ok = 0.0;
                }
                e.out(
                    label,
                    format!(
                        "connection held across mesh start/stop: {} round trips, {}",
                        h.round_trips,
                        h.error.as_deref().unwrap_or("intact")
                    ),
                );
            }
            let config = e.config();
            e.report.conform.push(ConformRun {
                name: self.name.clone(),
                config,
                family: *family,
                compare: self.compare.clone(),
                cases: verdicts,
                mesh,
                held,
            });
        }
        let since = e.counters()?.since(&c0);
        Ok(Conformance {
            cases: total as f64,
            differences: differences as f64,
            kernel_bugs: known as f64,
            msg_redirected: since.msg_redirected as f64,
            flow_fallback: since.flow_fallback as f64,
            pressure_fallback: since.pressure_fallback as f64,
            held_ok,
        })
    }
    // ANCHOR_END: conform
}

/// Keeps one echo connection busy while the mesh starts and stops under it.
fn hold_across_mesh(
    e: &mut Engine<'_>,
    label: &str,
    from: &str,
    target: SocketAddr,
) -> Result<HoldReport, LabError> {
    if e.site.lab()?.mesh().is_some() {
        return Err(LabError::Command {
            command: "conform across_mesh".into(),
            stderr: "the mesh must be off at a step with across_mesh = true".into(),
        });
    }
    let base = std::env::temp_dir().join(format!("slab-{}-hold-{}", e.site.id(), target.port()));
    let (until, report) = (base.with_extension("until"), base.with_extension("json"));
    let _ = std::fs::remove_file(&until);
    let _ = std::fs::remove_file(&report);
    let args = workloads::conform::ClientArgs {
        hold_until: Some(until.clone()),
        report: Some(report.clone()),
        ..workloads::defaults(&[("connect", target.to_string())])
    };
    let args = workloads::Workload::Conform(args).argv();
    let cmd = e.ctx.workload.command(&args);
    let pid = e.site.lab_mut()?.spawn(from, cmd)?;
    let pause = Duration::from_millis(500);
    std::thread::sleep(pause);
    for line in e.mesh_on()? {
        e.out(label, line);
    }
    std::thread::sleep(pause);
    e.mesh_off()?;
    e.out(label, "mesh started and stopped under the held connection".into());
    std::thread::sleep(pause);
    let result = (|| {
        std::fs::write(&until, b"").map_err(LabError::io("cannot write", &until))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            e.ctx.cancel.check()?;
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
    if let Ok(lab) = e.site.lab_mut() {
        lab.stop(pid);
    }
    let _ = std::fs::remove_file(&until);
    let _ = std::fs::remove_file(&report);
    result
}
