//! `do = "http"`: HTTP/1.1 requests over one connection, and what each got.
use std::net::SocketAddr;

use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::engine::{Engine, common_errno};
use lab_sandbox::LabError;

// ANCHOR: def
/// HTTP/1.1 requests from a pod over one connection (`workload http-probe`): which were
/// answered, which failed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub name: String,
    pub from: String,
    pub address: SocketAddr,
    /// `METHOD /path` each, sent in order.
    pub requests: Vec<String>,
    /// `keep-alive` (one write per request), `split` (each request line in two writes),
    /// `split-headers` (request line, then headers) or `pipeline` (all in one write).
    #[serde(default)]
    pub mode: workloads::http::Mode,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

results! {
    /// What an http step stores under its name.
    pub struct Answered {
        /// Requests answered 200.
        ok,
        /// Requests that got no answer.
        failed,
        /// The error number that ended the connection (0 if none).
        errno,
        /// Requests sk_msg dropped meanwhile.
        http_denied,
    }
}

impl Kind for Http {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.from)?;
        if self.requests.is_empty() {
            return Err("`requests` must name at least one request".into());
        }
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Answered::keys())]
    }
    texts!(name, explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let args = workloads::http::ProbeArgs {
            requests: self.requests.clone(),
            mode: self.mode,
            json: true,
            ..workloads::defaults(&[("connect", self.address.to_string()), ("request", "GET /".into())])
        };
        let w = workloads::Workload::HttpProbe(args);
        let mode = w.argv().iter().skip_while(|a| *a != "--mode").nth(1).cloned().unwrap_or_default();
        e.out(
            label,
            format!(
                "{} -> {}: {} over one connection ({mode})",
                self.from,
                self.address,
                self.requests.join(", ")
            ),
        );
        let c0 = e.counters()?;
        let r: workloads::http::ProbeReport = e.run_json(&self.from, &w)?;
        let c = e.counters()?.since(&c0);
        for a in &r.answers {
            e.out(label, a.clone());
        }
        let answered = Answered {
            ok: f64::from(r.ok),
            failed: f64::from(r.failed),
            errno: f64::from(common_errno(r.answers.iter().filter(|a| a.contains("os error")))),
            http_denied: c.http_denied as f64,
        };
        e.record(label, &self.name, &answered);
        Ok(Ran::Passed)
    }
}
