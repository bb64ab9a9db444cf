//! Pods -> the pods file: each pod's addresses, its identity's labels and, on this node, its
//! containers' cgroups (who is connecting, for the connect hooks).
//!
//! A pod's identity is its namespace and labels, as in Cilium: pods that share both share an
//! identity. The label set gets two more labels: the namespace (`io.kubernetes.pod.namespace`)
//! and the whole identity spelled out (`sidecarless.io/identity`, `default:app=web`), which the
//! rendered rules select so that a rule reaches exactly the identities its NetworkPolicy
//! selector matched (a subset of labels would also take pods with more labels).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    path::Path,
};

use k8s_openapi::api::core::v1::Pod;

use crate::meshfile::PodAddrs;

pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
pub const IDENTITY_LABEL: &str = "sidecarless.io/identity";

/// `namespace:key=value,...` (keys in order).
pub fn identity(namespace: &str, labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{namespace}:{}", parts.join(","))
}

// ANCHOR: pods
/// The pods the mesh serves (on the pod network, with an address, not finished), named
/// `namespace/name`. `cgroups`: the folder holding one cgroup per container, named by container
/// ID, as the agent sees it; only pods on `node` have their cgroups there.
pub fn render(pods: &BTreeMap<String, Pod>, node: Option<&str>, cgroups: Option<&Path>) -> Vec<PodAddrs> {
    let mut out = Vec::new();
    for p in pods.values() {
        let (Some(spec), Some(status)) = (&p.spec, &p.status) else { continue };
        if spec.host_network == Some(true) || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            continue;
        }
        let ips: Vec<IpAddr> = status
            .pod_ips
            .iter()
            .flatten()
            .map(|a| a.ip.as_str())
            .chain(status.pod_ip.as_deref())
            .filter_map(|a| a.parse().ok())
            .collect();
        let Some(ipv4) = ips.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }) else {
            continue;
        };
        let ipv6: Option<Ipv6Addr> = ips.iter().find_map(|a| match a {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        });
        let namespace = p.metadata.namespace.as_deref().unwrap_or("default");
        let mut labels = p.metadata.labels.clone().unwrap_or_default();
        let id = identity(namespace, &labels);
        labels.insert(NAMESPACE_LABEL.into(), namespace.into());
        labels.insert(IDENTITY_LABEL.into(), id);
        let here = node.is_some() && spec.node_name.as_deref() == node;
        let cgroups = match cgroups {
            Some(dir) if here => [&status.container_statuses, &status.init_container_statuses]
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|c| c.container_id.as_deref())
                .filter_map(|id| id.split_once("://").map(|(_, id)| dir.join(id)))
                .collect(),
            _ => Vec::new(),
        };
        out.push(PodAddrs {
            name: format!("{namespace}/{}", p.metadata.name.as_deref().unwrap_or("")),
            labels,
            ipv4,
            ipv6,
            cgroups,
        });
    }
    out
}
// ANCHOR_END: pods
