//! `do = "balance"`: new connections to a service address, one after another: which backend
//! each reached, against the service's slots.
use std::{collections::BTreeMap, net::SocketAddr};

use serde::Deserialize;
use workloads::{
    Workload, defaults,
    lb_probe::{self, ProbeReport},
};

use super::{Checker, Kind, Ran, Results, results};
use crate::engine::{Client, Engine, common_errno};
use lab_sandbox::LabError;

// ANCHOR: def
/// New connections from a pod to a service address, one after another (`workload lb-probe`):
/// which backend each reached, and what getpeername() said.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balance {
    pub name: String,
    pub from: String,
    /// The service address, `10.96.0.10:80` or `[fd96::10]:80`.
    pub address: SocketAddr,
    /// `udp`: each connection is a new unconnected UDP socket sending two datagrams.
    #[serde(default)]
    pub protocol: mesh_agent::meshfile::Protocol,
    #[serde(default = "super::thousand")]
    pub connections: u32,
    /// Run the client in `from`'s network namespace but outside the lab's cgroup: a process
    /// the mesh never sees connect (no connect4, no sock_ops, no load balancing).
    #[serde(default)]
    pub outside_mesh: bool,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

results! {
    /// What a balance step stores under its name. The mesh counters are all the lab's
    /// connections', not only the step's.
    pub struct Balanced {
        /// Connections made.
        connections,
        /// Connections that failed.
        errors,
        /// Backends reached.
        backends,
        /// The least loaded backend's share against its fair share (1.0 = exactly fair; weights
        /// count).
        min_ratio ["x"],
        /// The most loaded backend's share against its fair share.
        max_ratio ["x"],
        /// Connections that reached no backend the service has now.
        outside,
        /// The share of connections whose getpeername() (UDP: the replies' source) was the
        /// service address.
        peer_is_service ["x"],
        /// Messages sk_msg redirected meanwhile.
        msg_redirected,
        /// Messages sk_msg saw at all (redirected + passed).
        msg_seen,
        /// Sockets sock_ops inserted into the sockmap.
        inserted,
        /// UDP: the share of sockets whose two datagrams reached one backend.
        sticky ["x"],
        /// The error number every failed connection got (0 when none failed or they differ).
        errno,
        /// Packets the ingress policy dropped meanwhile.
        ingress_denied,
    }
}

impl Kind for Balance {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.from)?;
        super::at_least_one("connections", self.connections.into())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Balanced::keys())]
    }
    texts!(name, explain, try);
    fn on_kubernetes(&self) -> Result<(), String> {
        if self.outside_mesh {
            return Err(
                "outside_mesh needs the lab's sandbox (a process in a pod's namespace but not its cgroup)"
                    .into(),
            );
        }
        Ok(())
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let udp = self.protocol == mesh_agent::meshfile::Protocol::Udp;
        let from = Client { pod: &self.from, outside_mesh: self.outside_mesh };
        let (address, connections) = (self.address, self.connections);
        let args =
            lb_probe::Args { connections, udp, json: true, ..defaults(&[("connect", address.to_string())]) };
        let what = if udp { "UDP sockets, two datagrams each" } else { "connections" };
        e.out(label, format!("{connections} {what} {from} -> {address}, one after another ({})", e.config()));
        let c0 = e.counters()?;
        let r: ProbeReport = e.run_json_as(from, &Workload::LbProbe(args))?;
        let c = e.counters()?.since(&c0);
        let ok: u32 = r.reached.values().sum();
        let errors: u32 = r.errors.values().sum();
        for (who, n) in &r.reached {
            e.out(label, format!("{who}: {n} connections"));
        }
        for (err, n) in &r.errors {
            e.out(label, format!("failed: {n} x {err}"));
        }
        if !r.other_peers.is_empty() {
            e.out(label, format!("getpeername() also said: {}", r.other_peers.join(", ")));
        }
        // Each backend's fair share is its slots' share of the service's slots.
        let slots = e.service_slots(address)?;
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
        let b = Balanced {
            connections: f64::from(ok),
            errors: f64::from(errors),
            backends: r.reached.len() as f64,
            min_ratio: ratios.iter().copied().fold(f64::NAN, f64::min),
            max_ratio: ratios.iter().copied().fold(f64::NAN, f64::max),
            outside: f64::from(outside),
            peer_is_service: f64::from(r.peer_is_target) / f64::from(ok.max(1)),
            msg_redirected: c.msg_redirected as f64,
            msg_seen: (c.msg_redirected + c.msg_passed) as f64,
            inserted: c.sockets_inserted as f64,
            sticky: if udp { f64::from(r.sticky) / f64::from(ok.max(1)) } else { 0.0 },
            errno: f64::from(common_errno(r.errors.keys())),
            ingress_denied: c.ingress_denied as f64,
        };
        e.out(
            label,
            format!("mesh: {} connections balanced, {} refused", c.connect_balanced, c.connect_refused),
        );
        e.record(label, &self.name, &b);
        Ok(Ran::Passed)
    }
}
