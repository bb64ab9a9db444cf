//! `do = "transfer"`: byte-exact transfers, each connection's flow records checked against what
//! the client counted.
use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use mesh_agent::flows::Flow;
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::{
    engine::{Client, Engine},
    report::FlowRtt,
    spec::Family,
};
use lab_sandbox::LabError;

// ANCHOR: def
/// Byte-exact transfers from a pod to a `transfer-server` pod (`workload transfer`), one
/// connection after another, each checked against the mesh's flow log: every flow record of
/// those connections (the client's, the server's) must carry exactly the bytes the
/// client wrote and read, each way.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub name: String,
    pub from: String,
    pub to: String,
    pub port: u16,
    /// Payload bytes each connection sends to the server (plus an 8-byte hello).
    #[serde(default = "million")]
    pub send: u64,
    /// Bytes the server answers with on each connection.
    #[serde(default = "hundred_thousand")]
    pub receive: u64,
    #[serde(default = "super::four")]
    pub connections: u32,
    /// As for `balance`: the client outside the lab's cgroup. Its socket is not in the
    /// mesh, so nothing is redirected: the flows take TCP, and only the server reports them.
    #[serde(default)]
    pub outside_mesh: bool,
    /// `tc ... netem` parameters for `to`'s eth0 during the step (`"delay 20ms"`,
    /// `"loss 5%"`). On a kernel without sch_netem the step is skipped with the reason, and
    /// so is every later step that reads its results.
    #[serde(default)]
    pub netem: Option<String>,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn million() -> u64 {
    1_000_000
}

fn hundred_thousand() -> u64 {
    100_000
}

results! {
    /// What a transfer step stores under its name.
    pub struct Transferred {
        /// Connections done.
        connections,
        /// Flow records found.
        records,
        /// Flow records expected (the server's, and the client's when it is in the mesh).
        expected_records,
        /// Records whose bytes equal the client's count both ways.
        exact,
        /// Bytes the client counted, both ways.
        bytes,
        /// Bytes the records say sk_msg redirected (summed over connections, one record each).
        redirected_bytes,
        /// Bytes the records say TCP carried.
        tcp_bytes,
        /// The median smoothed RTT (µs).
        srtt_us ["us"],
        /// The largest RTT sample (µs).
        rtt_max_us ["us"],
        /// RTT samples, over all records.
        rtt_samples,
        /// Retransmitted segments, the kernel's count.
        retransmits,
        /// Retransmissions the sock_ops callback saw.
        retransmits_seen,
        /// Retransmissions the tracepoint recorded.
        retransmits_traced,
    }
}

impl Kind for Transfer {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.from)?;
        cx.pod(&self.to)?;
        super::at_least_one("connections", self.connections.into())?;
        if self.netem.as_ref().is_some_and(|n| n.split_whitespace().next().is_none()) {
            return Err("`netem` needs tc netem parameters, like \"delay 20ms\"".into());
        }
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Transferred::keys())]
    }
    texts!(name, explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        if let Some(params) = &self.netem
            && let Err(reason) = netem(e, &self.to, Some(params))
        {
            return Ok(Ran::Skipped(reason));
        }
        let done = self.transfer(e, label);
        if self.netem.is_some() {
            netem(e, &self.to, None)
                .map_err(|stderr| LabError::Command { command: "tc qdisc del".into(), stderr })?;
        }
        let t = done?;
        e.record(label, &self.name, &t);
        Ok(Ran::Passed)
    }
}

impl Transfer {
    // ANCHOR: transfer
    /// Byte-exact transfers from a pod, then the flow records of those connections from the
    /// agent's flow log, compared with what the client counted.
    fn transfer(&self, e: &mut Engine<'_>, label: &str) -> Result<Transferred, LabError> {
        let from = Client { pod: &self.from, outside_mesh: self.outside_mesh };
        let target = SocketAddr::new(e.pod_ip(&self.to, Family::Ipv4)?, self.port);
        let args = workloads::transfer::ClientArgs {
            send: self.send,
            receive: self.receive,
            connections: self.connections,
            json: true,
            ..workloads::defaults(&[("connect", target.to_string())])
        };
        e.out(
            label,
            format!(
                "{} connections {from} -> {target}, one after another: {} bytes to the server, {} back ({})",
                self.connections,
                self.send + 8,
                self.receive,
                e.config()
            ),
        );
        let since = std::time::SystemTime::now();
        let done: Vec<workloads::transfer::Transfer> =
            e.run_json_as(from, &workloads::Workload::Transfer(args))?;
        // Who reports: every socket of the mesh, i.e. the server's and, unless it runs outside
        // the mesh, the client's.
        let per_connection = match (e.site.lab()?.mesh().is_some(), self.outside_mesh) {
            (false, _) => 0,
            (true, true) => 1,
            (true, false) => 2,
        };
        let expected = per_connection * done.len();
        let by_port: BTreeMap<u64, &workloads::transfer::Transfer> =
            done.iter().map(|d| (u64::from(d.local_port), d)).collect();
        let log = e.site.lab()?.id().run_dir().join(lab_sandbox::lab::FLOW_LOG);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let records = loop {
            let r = flow_records(&log, since, self.port, &by_port)?;
            if r.len() >= expected || std::time::Instant::now() >= deadline {
                break r;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut exact = 0;
        for f in &records {
            e.out(label, mesh_agent::observe::row(&serde_json::json!({ "flow": f })));
            e.report.flows.push(FlowRtt {
                step: self.name.clone(),
                reporter: f.reporter.to_string(),
                port: u64::from(f.source.port),
                srtt_us: f64::from(f.srtt_us),
                rtt_min_us: f64::from(f.rtt_min_us),
                rtt_max_us: f64::from(f.rtt_max_us),
            });
            let d = by_port[&u64::from(f.source.port)];
            if f.bytes.to_server == d.sent && f.bytes.to_client == d.received {
                exact += 1;
            } else {
                e.out(label, format!("  bytes differ: the client wrote {} and read {}", d.sent, d.received));
            }
        }
        // One record per connection for the byte split (the client's when there is one).
        let mut one: BTreeMap<u16, &Flow> = BTreeMap::new();
        for f in &records {
            if f.reporter == "client" || !one.contains_key(&f.source.port) {
                one.insert(f.source.port, f);
            }
        }
        let redirected: u64 = one.values().map(|f| f.redirected.to_server + f.redirected.to_client).sum();
        let total: u64 = one.values().map(|f| f.bytes.to_server + f.bytes.to_client).sum();
        let srtt: Vec<f64> = records.iter().map(|f| f64::from(f.srtt_us)).collect();
        let sum = |k: fn(&Flow) -> u32| records.iter().map(|f| f64::from(k(f))).sum::<f64>();
        Ok(Transferred {
            connections: done.len() as f64,
            records: records.len() as f64,
            expected_records: expected as f64,
            exact: f64::from(exact),
            bytes: done.iter().map(|d| d.sent + d.received).sum::<u64>() as f64,
            redirected_bytes: redirected as f64,
            tcp_bytes: total.saturating_sub(redirected) as f64,
            srtt_us: crate::stats::median(&srtt),
            rtt_max_us: records.iter().map(|f| f64::from(f.rtt_max_us)).fold(f64::NAN, f64::max),
            rtt_samples: sum(|f| f.rtt_samples),
            retransmits: sum(|f| f.retransmits),
            retransmits_seen: sum(|f| f.retransmits_seen),
            retransmits_traced: sum(|f| f.retransmits_traced),
        })
    }
}

/// Puts a netem qdisc with `params` on `pod`'s eth0 (`None`: removes it). A kernel without
/// sch_netem is an `Err` with tc's words; any other failure too, marked as such.
fn netem(e: &Engine<'_>, pod: &str, params: Option<&str>) -> Result<(), String> {
    let mut cmd = std::process::Command::new(lab_sandbox::process::tc_binary());
    match params {
        Some(p) => cmd.args(["qdisc", "replace", "dev", "eth0", "root", "netem"]).args(p.split_whitespace()),
        None => cmd.args(["qdisc", "del", "dev", "eth0", "root"]),
    };
    let what = lab_sandbox::process::describe(&cmd);
    let out = e
        .site
        .lab()
        .and_then(|l| l.run_status(pod, cmd, Duration::from_secs(10), &e.ctx.cancel))
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

/// The flows of the flow log at `log` read after `since`, to `port`, from one of the client
/// ports in `ports`.
fn flow_records<T>(
    log: &std::path::Path,
    since: std::time::SystemTime,
    port: u16,
    ports: &BTreeMap<u64, T>,
) -> Result<Vec<Flow>, LabError> {
    let after = since.duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let flows = mesh_agent::flows::read_log(log).map_err(LabError::io("cannot read", log))?;
    Ok(flows
        .into_iter()
        .filter(|f| {
            f.time >= after && f.destination.port == port && ports.contains_key(&u64::from(f.source.port))
        })
        .collect())
}
