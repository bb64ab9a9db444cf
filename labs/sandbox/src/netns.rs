//! Network namespaces and veth wiring, through iproute2.
//!
//! A lab has a node namespace holding bridge `br0`; each pod namespace has an `eth0` whose veth
//! peer `v-<pod>` sits on that bridge. Deleting the namespaces removes every interface with them.
use std::{fs, path::Path};

use serde::Deserialize;

use crate::{LabError, process::ip};

/// Where `ip netns` keeps its named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Names of the namespaces `ip netns` knows.
pub fn list() -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

pub fn add(name: &str) -> Result<(), LabError> {
    ip(&["netns", "add", name]).map(drop)
}

/// Deletes a namespace; a missing one is not an error.
pub fn delete(name: &str) -> Result<(), LabError> {
    if !exists(name) {
        return Ok(());
    }
    ip(&["netns", "delete", name]).map(drop)
}

/// Creates the node namespace's bridge.
pub fn add_bridge(node_ns: &str, bridge: &str) -> Result<(), LabError> {
    ip(&["-n", node_ns, "link", "set", "lo", "up"])?;
    ip(&["-n", node_ns, "link", "add", bridge, "type", "bridge"])?;
    ip(&["-n", node_ns, "link", "set", bridge, "up"]).map(drop)
}

/// Plugs pod namespace `pod_ns` into `bridge`: veth `node_if` on the bridge, `eth0` in the pod
/// with the given addresses (CIDR notation, IPv4 and IPv6).
pub fn plug(
    node_ns: &str,
    bridge: &str,
    node_if: &str,
    pod_ns: &str,
    addrs: &[String],
) -> Result<(), LabError> {
    ip(&["-n", node_ns, "link", "add", node_if, "type", "veth", "peer", "name", "eth0", "netns", pod_ns])?;
    ip(&["-n", node_ns, "link", "set", node_if, "master", bridge, "up"])?;
    ip(&["-n", pod_ns, "link", "set", "lo", "up"])?;
    for a in addrs {
        // nodad: an IPv6 address is usable at once instead of after duplicate detection.
        let mut args = vec!["-n", pod_ns, "addr", "add", a.as_str(), "dev", "eth0"];
        if a.contains(':') {
            args.push("nodad");
        }
        ip(&args)?;
    }
    ip(&["-n", pod_ns, "link", "set", "eth0", "up"]).map(drop)
}

/// Packets through one interface, both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Packets {
    pub rx: u64,
    pub tx: u64,
}

impl Packets {
    pub fn total(&self) -> u64 {
        self.rx + self.tx
    }
    #[must_use]
    pub fn since(&self, earlier: &Packets) -> Packets {
        Packets { rx: self.rx.saturating_sub(earlier.rx), tx: self.tx.saturating_sub(earlier.tx) }
    }
}

#[derive(Deserialize)]
struct Link {
    stats64: Stats64,
}
#[derive(Deserialize)]
struct Stats64 {
    rx: Dir,
    tx: Dir,
}
#[derive(Deserialize)]
struct Dir {
    packets: u64,
}

/// Packet counters of `dev` in namespace `ns` (`ip -s -j link show`).
pub fn packets(ns: &str, dev: &str) -> Result<Packets, LabError> {
    let out = ip(&["-n", ns, "-s", "-j", "link", "show", "dev", dev])?;
    parse_packets(&out.stdout).map_err(|detail| LabError::Parse {
        command: format!("ip -n {ns} -s -j link show dev {dev}"),
        detail,
    })
}

fn parse_packets(json: &[u8]) -> Result<Packets, String> {
    let links: Vec<Link> = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let l = links.first().ok_or("no interface in the output")?;
    Ok(Packets { rx: l.stats64.rx.packets, tx: l.stats64.tx.packets })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iproute2_json_stats() {
        let json = br#"[{"ifindex":2,"ifname":"eth0","stats64":{"rx":{"bytes":9,"packets":12},"tx":{"bytes":7,"packets":30}}}]"#;
        assert_eq!(parse_packets(json).unwrap(), Packets { rx: 12, tx: 30 });
        assert!(parse_packets(b"[]").is_err());
        assert!(parse_packets(b"garbage").is_err());
    }
}
