//! `do = "prometheus"`: a real Prometheus scrapes the agent; PromQL must find the flow log's
//! totals.
use std::{net::SocketAddr, time::Duration};

use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// A real Prometheus server (the `prometheus` binary, in the node's namespace, with a
/// generated config and its own storage in the lab's folder) scrapes the mesh agent's
/// metrics; a PromQL query over its HTTP API must find the byte and flow totals the flow
/// log holds. Skipped with the reason where no `prometheus` binary exists (the VM images).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    pub name: String,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

results! {
    /// What a prometheus step stores under its name.
    pub struct Scraped {
        /// `sum(mesh_tcp_bytes_total)` as Prometheus answered it.
        bytes,
        /// `sum(mesh_tcp_flows_total)` as Prometheus answered it.
        flows,
        /// The byte total of the flow log.
        flow_log_bytes,
        /// The flow log's records.
        flow_log_flows,
        /// Seconds until the two agreed (or the step gave up).
        seconds ["s"],
    }
}

impl Kind for Prometheus {
    fn check(&self, _: &mut Checker<'_>) -> Result<(), String> {
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Scraped::keys())]
    }
    texts!(name, explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        Ok(match prometheus(e, label)? {
            Ok(s) => {
                e.record(label, &self.name, &s);
                Ran::Passed
            }
            Err(reason) => Ran::Skipped(reason),
        })
    }
}

// ANCHOR: prometheus
/// Starts a Prometheus server that scrapes the agent every second, and asks it (PromQL over
/// its HTTP API) for the byte and flow totals until they equal the flow log's. `Ok(Err)`:
/// skipped, with the reason.
fn prometheus(e: &mut Engine<'_>, label: &str) -> Result<Result<Scraped, String>, LabError> {
    let Some(binary) = lab_sandbox::process::tool("prometheus") else {
        return Ok(Err(
            "no prometheus binary here (Debian's `prometheus` package has it; the VM images do not carry it)"
                .into(),
        ));
    };
    let Some(target) = e.site.lab()?.agent().and_then(lab_sandbox::agent::Agent::metrics) else {
        return Err(LabError::Command {
            command: "prometheus".into(),
            stderr: "the mesh agent is not running (turn the mesh on first)".into(),
        });
    };
    let dir = e.site.lab()?.id().run_dir().join("prometheus");
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
            std::fs::File::create(dir.join("prometheus.log")).map_err(LabError::io("cannot create", &dir))?,
        );
    let server = lab_sandbox::process::Guard::spawn(cmd)?;
    e.out(
        label,
        format!(
            "prometheus (pid {}) on http://{web}, scraping http://{target}/metrics every second",
            server.pid()
        ),
    );
    let log = e.site.lab()?.id().run_dir().join(lab_sandbox::lab::FLOW_LOG);
    let (log_bytes, log_flows) = flow_log_totals(&log)?;
    let queries = ["sum(mesh_tcp_bytes_total)", "sum(mesh_tcp_flows_total)"];
    let started = std::time::Instant::now();
    let mut got = (f64::NAN, f64::NAN);
    let mut last_error = None;
    while started.elapsed() < Duration::from_mins(1) {
        e.ctx.cancel.check()?;
        std::thread::sleep(Duration::from_millis(500));
        let mut ask = |q: &str| {
            promql(web, q).unwrap_or_else(|why| {
                last_error = Some(format!("{q}: {why}"));
                f64::NAN
            })
        };
        got = (ask(queries[0]), ask(queries[1]));
        if got == (log_bytes as f64, log_flows as f64) {
            last_error = None;
            break;
        }
    }
    drop(server);
    e.out(label, format!("{} = {} (flow log: {log_bytes})", queries[0], got.0));
    e.out(label, format!("{} = {} (flow log: {log_flows} records)", queries[1], got.1));
    if let Some(why) = last_error {
        e.out(label, format!("the last query failed: {why}"));
    }
    Ok(Ok(Scraped {
        bytes: got.0,
        flows: got.1,
        flow_log_bytes: log_bytes as f64,
        flow_log_flows: log_flows as f64,
        seconds: started.elapsed().as_secs_f64(),
    }))
}
// ANCHOR_END: prometheus

/// Every flow record's bytes (both ways) and the number of records, in the flow log at `log`.
fn flow_log_totals(log: &std::path::Path) -> Result<(u64, u64), LabError> {
    let flows = mesh_agent::flows::read_log(log).map_err(LabError::io("cannot read", log))?;
    let bytes = flows.iter().map(|f| f.bytes.to_server + f.bytes.to_client).sum();
    Ok((bytes, flows.len() as u64))
}

/// One instant PromQL query (`GET /api/v1/query`) whose answer is a single number; the error
/// says what went wrong (no answer, an error status, no sample yet).
fn promql(server: SocketAddr, query: &str) -> Result<f64, String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().into();
    let body = agent
        .get(format!("http://{server}/api/v1/query"))
        .query("query", query)
        .call()
        .map_err(|e| e.to_string())?
        .body_mut()
        .read_to_string()
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
    // {"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[t,"N"]}]}}
    let n = v["data"]["result"][0]["value"][1].as_str().ok_or_else(|| format!("no sample in {body}"))?;
    n.parse().map_err(|e| format!("{n:?}: {e}"))
}
