//! `do = "service-scale"`: the cost of one connection against the number of services, socket
//! load balancing beside kube-proxy's iptables rules.
//!
//! The one step besides `policy-scale` that writes the pinned maps itself rather than through the
//! agent's apply path: it measures the maps at sizes no mesh file in the lab describes (VIPs in
//! 10.98/16 whose backends are the selected pods), through the same `Pinned::set_services` the
//! agent's apply calls, and puts the applied services back whatever happens, so the agent's
//! view of what it applied holds again when the step ends.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddrV4},
};

use mesh_common::{AF_INET, Backend, IPPROTO_TCP, ServiceKey};
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::{engine::Engine, spec::SidecarMode};
use lab_sandbox::LabError;

// ANCHOR: def
/// The cost of one connection (connect() plus the first round trip) to a service against how
/// many services exist: socket load balancing (services in the mesh's maps) beside
/// kube-proxy's iptables mode (rules built the way kube-proxy builds them, in `from`'s
/// namespace). Every count in turn; at each, the repetitions alternate the two. Stores
/// `mesh_<count>` and `iptables_<count>` (microseconds, the median connection).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceScale {
    pub name: String,
    pub from: String,
    /// The backends: pods with these labels, their rr-server on `port`.
    pub pods: BTreeMap<String, String>,
    pub port: u16,
    #[serde(default = "scale_counts")]
    pub counts: Vec<u32>,
    /// Connections per run.
    #[serde(default = "super::thousand")]
    pub connections: u32,
    /// Runs per count and mode (default: the `--repetitions` option).
    #[serde(default)]
    pub repetitions: Option<u32>,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn scale_counts() -> Vec<u32> {
    vec![1, 100, 1_000, 10_000]
}

/// Most services a `service-scale` step may install (the mesh's map holds 16,384).
pub const MAX_SCALE_SERVICES: u32 = 10_000;

/// The two ways a service is reached, as they name the stored keys.
const MODES: [&str; 2] = ["mesh", "iptables"];

/// The key a count's median is stored under: `mesh_100`, `iptables_100`.
fn key(mode: &str, count: u32) -> String {
    format!("{mode}_{count}")
}

impl Kind for ServiceScale {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.from)?;
        super::port(self.port)?;
        if self.counts.is_empty() || self.counts.iter().any(|c| *c == 0 || *c > MAX_SCALE_SERVICES) {
            return Err(format!("counts must be 1 to {MAX_SCALE_SERVICES} services each"));
        }
        super::at_least_one("connections", self.connections.into())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        let keys = self.counts.iter().flat_map(|c| MODES.map(|m| key(m, *c))).collect();
        vec![(self.name.clone(), keys)]
    }
    texts!(name, explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        self.service_scale(e, label)?;
        Ok(Ran::Passed)
    }
}

/// What every count's runs share.
struct Setup<'a> {
    /// The client's network namespace.
    ns: &'a str,
    restore: &'a std::path::Path,
    endpoints: &'a [SocketAddrV4],
    slots: &'a [Backend],
    /// The services of the mesh file applied last.
    base: &'a BTreeMap<ServiceKey, Vec<Backend>>,
}

impl ServiceScale {
    // ANCHOR: service_scale
    /// Connection cost against the number of services, socket load balancing beside kube-proxy's
    /// iptables rules. The measured service is the last one installed: for iptables the end of
    /// KUBE-SERVICES, the longest walk (a service picked at random walks half of it).
    fn service_scale(&self, e: &mut Engine<'_>, label: &str) -> Result<(), LabError> {
        let failed = |why: &str| LabError::Command {
            command: format!("service-scale {}", self.name),
            stderr: why.into(),
        };
        if e.site.lab()?.mesh().is_none() {
            return Err(failed("the mesh must be on"));
        }
        if e.sidecars.mode.unwrap_or(SidecarMode::Off) != SidecarMode::Off {
            return Err(failed("sidecars must be off (the step replaces the client's nat table)"));
        }
        let backends: Vec<&lab_sandbox::lab::Pod> = e
            .site
            .lab()?
            .pods()
            .iter()
            .filter(|p| self.pods.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        if backends.is_empty() {
            return Err(failed("no pod carries the backend labels"));
        }
        let port = self.port;
        let endpoints: Vec<SocketAddrV4> = backends.iter().map(|p| SocketAddrV4::new(p.ipv4, port)).collect();
        let slots: Vec<Backend> = backends
            .iter()
            .map(|p| Backend { ip4: u32::from_ne_bytes(p.ipv4.octets()), ip6: [0; 4], port: u32::from(port) })
            .collect();
        let restore = lab_sandbox::process::tool("iptables-restore")
            .ok_or_else(|| failed("iptables-restore is not installed"))?;
        let ns = e.site.lab()?.pod(&self.from)?.netns.clone();
        // kube-proxy's addresses need a route to be connected to (the mesh's are rewritten first).
        lab_sandbox::process::ip(&["-n", &ns, "route", "add", "10.99.0.0/16", "dev", "eth0"])?;
        let base = mesh_agent::meshfile::wanted(&e.services);
        let setup = Setup { ns: &ns, restore: &restore, endpoints: &endpoints, slots: &slots, base: &base };
        let result = self.runs(e, label, &setup);
        // Whatever happened: the client's nat table, its route and the mesh's services as before.
        let _ = lab_sandbox::sidecar::iptables(&ns, &["-t", "nat", "-F"]);
        let _ = lab_sandbox::sidecar::iptables(&ns, &["-t", "nat", "-X"]);
        let _ = lab_sandbox::process::ip(&["-n", &ns, "route", "del", "10.99.0.0/16"]);
        if let Some(m) = e.site.lab_mut()?.mesh_mut() {
            m.set_services(&base)?;
        }
        result
    }

    fn runs(&self, e: &mut Engine<'_>, label: &str, s: &Setup<'_>) -> Result<(), LabError> {
        let reps = self.repetitions.unwrap_or(e.ctx.options.repetitions).max(1);
        let vip =
            |net: u8, i: u32| SocketAddrV4::new(Ipv4Addr::new(10, net, (i / 256) as u8, (i % 256) as u8), 80);
        let mut sorted = self.counts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        for n in sorted {
            e.ctx.cancel.check()?;
            // The mesh: n services in the maps, next to the scenario's own.
            let mut wanted = s.base.clone();
            for i in 0..n {
                let a = vip(98, i);
                let key = ServiceKey {
                    ip: [u32::from_ne_bytes(a.ip().octets()), 0, 0, 0],
                    port: u32::from(a.port()),
                    family: AF_INET,
                    protocol: IPPROTO_TCP,
                    pad: 0,
                };
                wanted.insert(key, s.slots.to_vec());
            }
            let t0 = std::time::Instant::now();
            e.site.lab_mut()?.mesh_mut().expect("checked").set_services(&wanted)?;
            let mesh_ms = t0.elapsed().as_secs_f64() * 1e3;
            // kube-proxy: the same n services as iptables rules (the nat table replaced whole).
            let vips: Vec<SocketAddrV4> = (0..n).map(|i| vip(99, i)).collect();
            let table = lab_sandbox::kube_proxy::nat_table(&vips, s.endpoints);
            let t0 = std::time::Instant::now();
            let mut cmd = std::process::Command::new(lab_sandbox::process::ip_binary());
            cmd.args(["netns", "exec", s.ns]).arg(s.restore).arg("-w");
            lab_sandbox::process::run_with_input(cmd, table.as_bytes())?;
            let ipt_ms = t0.elapsed().as_secs_f64() * 1e3;
            let rules = table.lines().filter(|l| l.starts_with("-A ")).count();
            e.out(
                label,
                format!(
                    "{n} service{}: mesh maps written in {mesh_ms:.0} ms; {rules} iptables rules restored in {ipt_ms:.0} ms",
                    if n == 1 { "" } else { "s" }
                ),
            );
            let (mut mesh, mut ipt) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                e.ctx.cancel.check()?;
                mesh.push(e.connect_p50(&self.from, vip(98, n - 1), self.connections)?);
                lab_sandbox::sidecar::iptables(s.ns, lab_sandbox::kube_proxy::OUTPUT_JUMP)?;
                let p50 = e.connect_p50(&self.from, vip(99, n - 1), self.connections);
                let mut delete = lab_sandbox::kube_proxy::OUTPUT_JUMP.to_vec();
                delete[2] = "-D";
                lab_sandbox::sidecar::iptables(s.ns, &delete)?;
                ipt.push(p50?);
            }
            for (mode, samples) in MODES.iter().zip([&mesh, &ipt]) {
                e.store_spread(label, &self.name, &key(mode, n), samples);
            }
        }
        Ok(())
    }
    // ANCHOR_END: service_scale
}
