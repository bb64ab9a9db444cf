//! Proxies in the data path, the way service meshes put them there.
//!
//! - **Per pod** (Istio's sidecar mode): each pod runs `workload proxy` as uid 1337, and
//!   iptables in the pod's namespace captures its traffic like Istio's init container does:
//!   `nat OUTPUT` REDIRECTs the application's outbound TCP to the proxy's outbound listener
//!   (15001), exempting the proxy's own traffic (uid 1337) and loopback; `nat PREROUTING`
//!   REDIRECTs inbound TCP to the inbound listener (15006), which hands it to the application on
//!   127.0.0.1. The outbound listener finds the real destination with `SO_ORIGINAL_DST`.
//! - **Per node** (ambient-style): one proxy in the node namespace; each pod DNATs its traffic to
//!   the pod workloads' ports to the node proxy, which forwards it on a fixed route.
use std::{fs, net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    Lab, LabError,
    process::{self, Cmd, run},
};

/// How pods get their proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SidecarMode {
    /// One proxy per pod, traffic captured by iptables REDIRECT (Istio's sidecar mode).
    PerPod,
    /// One proxy for the node, traffic DNAT'ed to it (ambient-style).
    PerNode,
    Off,
}

/// The proxy's transparent outbound listener (Istio: 15001).
pub const OUTBOUND_PORT: u16 = 15001;
/// The proxy's inbound listener (Istio: 15006).
pub const INBOUND_PORT: u16 = 15006;
/// The proxy's user, exempt from capture (Istio: 1337).
pub const PROXY_UID: u32 = 1337;
/// First node-proxy port; one per routed workload.
const NODE_PORT_BASE: u16 = 15100;

/// A running proxy.
#[derive(Debug, Clone, Serialize)]
pub struct Proxy {
    /// The pod it serves, or `node`.
    pub at: String,
    pub pid: u32,
}

/// Proxies currently in the data path.
#[derive(Debug, Clone, Default)]
pub struct Sidecars {
    pub proxies: Vec<Proxy>,
    pub mode: Option<SidecarMode>,
}

/// Runs `iptables ARGS` in a pod's network namespace.
pub fn iptables(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let ipt = process::tool("iptables").ok_or_else(|| LabError::Command {
        command: "iptables".into(),
        stderr: "not installed (the sidecar modes need it)".into(),
    })?;
    let mut cmd = std::process::Command::new(process::ip_binary());
    cmd.args(["netns", "exec", ns]).arg(ipt).arg("-w").args(args);
    run(cmd).map(drop)
}

// ANCHOR: capture
/// Istio-style capture in one pod: outbound TCP to the proxy's 15001 unless it comes from the
/// proxy itself (uid 1337) or stays on loopback; inbound TCP to 15006.
fn capture_per_pod(ns: &str) -> Result<(), LabError> {
    let rules = [
        "-t nat -N SLAB_OUTBOUND".to_owned(),
        format!("-t nat -A SLAB_OUTBOUND -m owner --uid-owner {PROXY_UID} -j RETURN"),
        "-t nat -A SLAB_OUTBOUND -d 127.0.0.0/8 -j RETURN".to_owned(),
        format!("-t nat -A SLAB_OUTBOUND -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"),
        "-t nat -A OUTPUT -p tcp -j SLAB_OUTBOUND".to_owned(),
        format!("-t nat -A PREROUTING -p tcp -j REDIRECT --to-ports {INBOUND_PORT}"),
    ];
    rules.iter().try_for_each(|r| iptables(ns, &r.split_whitespace().collect::<Vec<_>>()))
}
// ANCHOR_END: capture

/// Puts proxies in the data path. `routes` are the (address, port) of the pods' workloads, which
/// the per-node proxy forwards to.
pub fn enable(
    lab: &mut Lab,
    mode: SidecarMode,
    workload: &Cmd,
    routes: &[(String, Ipv4Addr, u16)],
) -> Result<Sidecars, LabError> {
    let mut s = Sidecars { proxies: Vec::new(), mode: Some(mode) };
    match mode {
        SidecarMode::Off => {}
        SidecarMode::PerPod => {
            let pods: Vec<(String, String)> =
                lab.pods().iter().map(|p| (p.name.clone(), p.netns.clone())).collect();
            for (pod, ns) in pods {
                capture_per_pod(&ns)?;
                let args = workloads::proxy::Args {
                    outbound: Some(OUTBOUND_PORT),
                    inbound: Some(INBOUND_PORT),
                    ..workloads::defaults(&[])
                };
                let cmd = workload.command(&workloads::Workload::Proxy(args).argv());
                let pid = lab.spawn_as(&pod, cmd, Some(PROXY_UID))?;
                s.proxies.push(Proxy { at: pod, pid });
            }
        }
        SidecarMode::PerNode => {
            let node_ip = lab.node()?.ipv4;
            let mut args: workloads::proxy::Args = workloads::defaults(&[]);
            let pods: Vec<(String, String)> =
                lab.pods().iter().map(|p| (p.name.clone(), p.netns.clone())).collect();
            for (i, (owner, ip, port)) in routes.iter().enumerate() {
                let node_port = NODE_PORT_BASE + i as u16;
                args.route.push((node_port, std::net::SocketAddr::new((*ip).into(), *port)));
                for (pod, ns) in &pods {
                    if pod == owner {
                        continue;
                    }
                    let (dst, dport, to) =
                        (ip.to_string(), port.to_string(), format!("{node_ip}:{node_port}"));
                    iptables(
                        ns,
                        &[
                            "-t",
                            "nat",
                            "-A",
                            "OUTPUT",
                            "-p",
                            "tcp",
                            "-d",
                            &dst,
                            "--dport",
                            &dport,
                            "-j",
                            "DNAT",
                            "--to-destination",
                            &to,
                        ],
                    )?;
                }
            }
            let pid = lab.spawn("node", workload.command(&workloads::Workload::Proxy(args).argv()))?;
            s.proxies.push(Proxy { at: "node".into(), pid });
        }
    }
    Ok(s)
}

/// Takes the proxies out: kills them and flushes the pods' nat rules.
pub fn disable(lab: &mut Lab, s: Sidecars) -> Result<(), LabError> {
    for p in &s.proxies {
        lab.stop(p.pid);
    }
    if s.mode.is_some_and(|m| m != SidecarMode::Off) {
        let nss: Vec<String> = lab.pods().iter().map(|p| p.netns.clone()).collect();
        for ns in nss {
            iptables(&ns, &["-t", "nat", "-F"])?;
            iptables(&ns, &["-t", "nat", "-X"])?;
        }
    }
    Ok(())
}

/// Resident memory of a process in KiB (`VmRSS`).
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_rss() {
        let kb = rss_kb(std::process::id()).unwrap();
        assert!(kb > 100, "{kb}");
    }
}
