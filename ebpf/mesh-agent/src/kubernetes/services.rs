//! Services and Endpoints -> the mesh file's `[[services]]`: what kube-proxy would program.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use k8s_openapi::api::core::v1::{Endpoints, Service};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceOut {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub protocol: &'static str,
    pub backends: Vec<BackendOut>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendOut {
    pub address: String,
}

// ANCHOR: render
/// One service per ClusterIP port (TCP and UDP; headless Services and IPv6 ClusterIPs left out),
/// its backends the ready addresses of the Endpoints of the same name, on the endpoint port that
/// matches the Service port by name.
pub fn render(
    services: &BTreeMap<String, Service>,
    endpoints: &BTreeMap<String, Endpoints>,
) -> Vec<ServiceOut> {
    let mut out = Vec::new();
    for (name, s) in services {
        let Some(spec) = &s.spec else { continue };
        let Some(Ok(IpAddr::V4(vip))) = spec.cluster_ip.as_deref().map(str::parse::<IpAddr>) else {
            continue;
        };
        let subsets = endpoints.get(name).and_then(|e| e.subsets.as_ref());
        for p in spec.ports.iter().flatten() {
            let protocol = match p.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => "tcp",
                "UDP" => "udp",
                _ => continue,
            };
            let Ok(port) = u16::try_from(p.port) else { continue };
            let mut backends = Vec::new();
            for subset in subsets.into_iter().flatten() {
                let target = subset
                    .ports
                    .iter()
                    .flatten()
                    .find(|ep| ep.name == p.name || subset.ports.as_ref().is_some_and(|v| v.len() == 1));
                let Some(target) = target else { continue };
                for a in subset.addresses.iter().flatten() {
                    if let Ok(IpAddr::V4(ip)) = a.ip.parse::<IpAddr>() {
                        backends.push(BackendOut { address: format!("{ip}:{}", target.port) });
                    }
                }
            }
            backends.sort_by(|a, b| a.address.cmp(&b.address));
            let suffix = p.name.as_deref().map(|n| format!(":{n}")).unwrap_or_default();
            out.push(ServiceOut { name: format!("{name}{suffix}"), address: vip, port, protocol, backends });
        }
    }
    out
}
// ANCHOR_END: render
