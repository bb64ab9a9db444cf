//! `do = "isolation"`: the same loopback 4-tuple in several pods at once; bytes that reached
//! another pod's socket are counted.
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::engine::{Engine, RUN_TIMEOUT};
use lab_sandbox::LabError;

// ANCHOR: def
/// The same loopback 4-tuple in every listed pod at once (`workload loopback-isolation`):
/// counts bytes that reached another pod's socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Isolation {
    pub name: String,
    pub pods: Vec<String>,
    #[serde(default = "isolation_port")]
    pub port: u16,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn isolation_port() -> u16 {
    7300
}

results! {
    /// What an isolation step stores under its name, summed over its pods.
    pub struct Isolated {
        /// Bytes the pods' servers received.
        bytes,
        /// Bytes that came from another pod's client.
        foreign_bytes,
        /// Pods whose run failed.
        errors,
        /// Blocking reads woken with no data (EAGAIN; a kernel bug, see the conformance suite).
        early_eagain,
        /// Messages sk_msg redirected meanwhile.
        msg_redirected,
        /// Loopback connections the mesh left out of the sockmap.
        loopback_skipped,
    }
}

impl Kind for Isolation {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        super::port(self.port)?;
        if self.pods.len() < 2 {
            return Err("isolation needs at least two pods".into());
        }
        self.pods.iter().try_for_each(|p| cx.pod(p))
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Isolated::keys())]
    }
    texts!(name, explain, try);
    /// Runs `workload loopback-isolation` across the pods (from the first one).
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let (pods, port) = (&self.pods, self.port);
        let netns = pods
            .iter()
            .map(|p| {
                Ok(std::path::Path::new(lab_sandbox::netns::NETNS_DIR).join(&e.site.lab()?.pod(p)?.netns))
            })
            .collect::<Result<Vec<std::path::PathBuf>, LabError>>()?;
        let first = netns[0].display().to_string();
        let args = workloads::isolation::Args { netns, port, ..workloads::defaults(&[("netns", first)]) };
        let args = workloads::Workload::LoopbackIsolation(args).argv();
        e.out(
            label,
            format!("127.0.0.1:30300 -> 127.0.0.1:{port} in {} at once ({})", pods.join(", "), e.config()),
        );
        let c0 = e.counters()?;
        let out = e.site.lab()?.run(&pods[0], e.ctx.workload.command(&args), RUN_TIMEOUT, &e.ctx.cancel)?;
        let c = e.counters()?.since(&c0);
        let report: workloads::isolation::Report =
            serde_json::from_slice(&out.stdout).map_err(|err| LabError::Parse {
                command: "loopback-isolation".into(),
                detail: format!("{err}: {}", String::from_utf8_lossy(&out.stdout)),
            })?;
        for (p, r) in pods.iter().zip(&report.pods) {
            e.out(
                label,
                format!(
                    "pod {p}: {} bytes received, {} from another pod, {} reads woken early with no data{}",
                    r.bytes,
                    r.foreign_bytes,
                    r.early_eagain,
                    r.error.as_deref().map(|e| format!(", error: {e}")).unwrap_or_default()
                ),
            );
            if let Some(err) = &r.error {
                e.report.errors.entry(self.name.clone()).or_default().push(format!("pod {p}: {err}"));
            }
        }
        let sum =
            |f: fn(&workloads::isolation::PodResult) -> u64| report.pods.iter().map(f).sum::<u64>() as f64;
        let i = Isolated {
            bytes: sum(|p| p.bytes),
            foreign_bytes: sum(|p| p.foreign_bytes),
            errors: report.pods.iter().filter(|p| p.error.is_some()).count() as f64,
            early_eagain: sum(|p| u64::from(p.early_eagain)),
            msg_redirected: c.msg_redirected as f64,
            loopback_skipped: c.loopback_skipped as f64,
        };
        e.record(label, &self.name, &i);
        Ok(Ran::Passed)
    }
}
