//! Kubernetes as a source of desired state: `mesh-agent kubernetes` watches Services and
//! Endpoints in every namespace (kube-rs watchers) and hands the running agent a mesh file
//! rendered from them through its control socket, the same request `mesh-agent apply --control`
//! sends. The agent then balances each ClusterIP port over its ready endpoints at connect(): the
//! job kube-proxy does with iptables rules.
//!
//! It runs beside the agent (a second container of the DaemonSet, sharing the socket's folder):
//! it needs the API, the agent needs the kernel, and neither needs what the other has.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::{Endpoints, Service};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Serialize;

use crate::control;

/// `mesh-agent kubernetes`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct KubernetesArgs {
    /// The running agent's control socket (its `run --control`).
    #[arg(long)]
    pub control: PathBuf,
    /// Folder for the rendered mesh file, shared with the agent (same path on both sides).
    #[arg(long)]
    pub dir: PathBuf,
}

/// A mesh file as the agent reads it (the part this source writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct MeshOut {
    services: Vec<ServiceOut>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct ServiceOut {
    name: String,
    address: Ipv4Addr,
    port: u16,
    protocol: &'static str,
    backends: Vec<BackendOut>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct BackendOut {
    address: String,
}

fn key(meta: &kube::api::ObjectMeta) -> String {
    format!("{}/{}", meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or(""))
}

// ANCHOR: render
/// The mesh file for these Services and Endpoints: one service per ClusterIP port (TCP and UDP;
/// headless Services and IPv6 ClusterIPs left out), its backends the ready addresses of the
/// Endpoints of the same name, on the endpoint port that matches the Service port by name.
fn render(services: &BTreeMap<String, Service>, endpoints: &BTreeMap<String, Endpoints>) -> String {
    let mut out = MeshOut { services: Vec::new() };
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
            out.services.push(ServiceOut {
                name: format!("{name}{suffix}"),
                address: vip,
                port,
                protocol,
                backends,
            });
        }
    }
    toml::to_string(&out).expect("a mesh file serializes")
}
// ANCHOR_END: render

/// Writes `text` to `dir/kubernetes.toml` (atomically) and asks the agent to apply it.
fn apply(dir: &Path, socket: &Path, text: &str) -> anyhow::Result<control::Applied> {
    let file = dir.join("kubernetes.toml");
    let tmp = dir.join(".kubernetes.toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)?;
    match control::request(socket, &control::Request::Apply { file }).map_err(anyhow::Error::msg)? {
        control::Response::Applied(a) => Ok(a),
        control::Response::Error(e) => anyhow::bail!("the agent refused: {e}"),
        control::Response::Done => anyhow::bail!("the agent answered an apply with no result"),
    }
}

enum Change {
    Service(Box<watcher::Event<Service>>),
    Endpoints(Box<watcher::Event<Endpoints>>),
}

fn update<K: kube::Resource>(
    map: &mut BTreeMap<String, K>,
    init: &mut BTreeMap<String, K>,
    e: watcher::Event<K>,
) -> bool {
    match e {
        watcher::Event::Apply(o) => {
            map.insert(key(o.meta()), o);
            true
        }
        watcher::Event::Delete(o) => {
            map.remove(&key(o.meta()));
            true
        }
        watcher::Event::Init => {
            init.clear();
            false
        }
        watcher::Event::InitApply(o) => {
            init.insert(key(o.meta()), o);
            false
        }
        watcher::Event::InitDone => {
            std::mem::swap(map, init);
            init.clear();
            true
        }
    }
}

/// Watches until the process is stopped; every change that alters the rendered file is applied.
pub fn run(args: &KubernetesArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = Client::try_default().await?;
        eprintln!("mesh-agent: kubernetes: watching Services and Endpoints");
        let cfg = watcher::Config::default();
        let svc = watcher(Api::<Service>::all(client.clone()), cfg.clone())
            .default_backoff()
            .map(|e| e.map(|e| Change::Service(Box::new(e))));
        let eps = watcher(Api::<Endpoints>::all(client), cfg)
            .default_backoff()
            .map(|e| e.map(|e| Change::Endpoints(Box::new(e))));
        let mut changes = std::pin::pin!(stream::select(svc, eps));
        let (mut services, mut services_init) = (BTreeMap::new(), BTreeMap::new());
        let (mut endpoints, mut endpoints_init) = (BTreeMap::new(), BTreeMap::new());
        let mut applied = String::new();
        let mut pending = false;
        let mut last = std::time::Instant::now();
        loop {
            // Changes come in bursts (a rollout touches many objects): apply once it has been
            // quiet for 200 ms, or at least once a second while changes keep coming.
            let mut quiet = false;
            match tokio::time::timeout(Duration::from_millis(200), changes.next()).await {
                Ok(Some(Ok(Change::Service(e)))) => pending |= update(&mut services, &mut services_init, *e),
                Ok(Some(Ok(Change::Endpoints(e)))) => {
                    pending |= update(&mut endpoints, &mut endpoints_init, *e)
                }
                Ok(Some(Err(e))) => {
                    eprintln!("mesh-agent: kubernetes: watch: {e}");
                    continue;
                }
                Ok(None) => anyhow::bail!("the watches ended"),
                Err(_elapsed) => quiet = true,
            }
            if !pending || !(quiet || last.elapsed() >= Duration::from_secs(1)) {
                continue;
            }
            last = std::time::Instant::now();
            let text = render(&services, &endpoints);
            if text == applied {
                pending = false;
                continue;
            }
            match apply(&args.dir, &args.control, &text) {
                Ok(a) => {
                    let c = a.services;
                    eprintln!(
                        "mesh-agent: kubernetes: applied {} services: {} added, {} changed, {} removed",
                        text.matches("[[services]]").count(),
                        c.added,
                        c.changed,
                        c.removed
                    );
                    applied = text;
                    pending = false;
                }
                // The agent may not be serving yet (it starts beside us): try again shortly.
                Err(e) => {
                    eprintln!("mesh-agent: kubernetes: apply: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{
        EndpointAddress, EndpointPort, EndpointSubset, ServicePort, ServiceSpec,
    };

    use super::*;

    fn meta(name: &str) -> kube::api::ObjectMeta {
        kube::api::ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_cluster_ip_port_becomes_a_service_over_the_ready_endpoints() {
        let mut services = BTreeMap::new();
        services.insert(
            "default/web".into(),
            Service {
                metadata: meta("web"),
                spec: Some(ServiceSpec {
                    cluster_ip: Some("10.96.0.10".into()),
                    ports: Some(vec![ServicePort {
                        port: 80,
                        protocol: Some("TCP".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        services.insert(
            "default/headless".into(),
            Service {
                metadata: meta("headless"),
                spec: Some(ServiceSpec { cluster_ip: Some("None".into()), ..Default::default() }),
                ..Default::default()
            },
        );
        let mut endpoints = BTreeMap::new();
        let addr = |ip: &str| EndpointAddress { ip: ip.into(), ..Default::default() };
        endpoints.insert(
            "default/web".into(),
            Endpoints {
                metadata: meta("web"),
                subsets: Some(vec![EndpointSubset {
                    addresses: Some(vec![addr("10.244.0.3"), addr("10.244.0.2")]),
                    not_ready_addresses: Some(vec![addr("10.244.0.9")]),
                    ports: Some(vec![EndpointPort { port: 8080, ..Default::default() }]),
                }]),
            },
        );
        let text = render(&services, &endpoints);
        assert_eq!(
            text,
            "[[services]]\nname = \"default/web\"\naddress = \"10.96.0.10\"\nport = 80\nprotocol = \"tcp\"\n\n\
             [[services.backends]]\naddress = \"10.244.0.2:8080\"\n\n[[services.backends]]\naddress = \"10.244.0.3:8080\"\n"
        );
        // What the agent reads back.
        let mf: crate::meshfile::MeshFile = toml::from_str(&text).unwrap();
        assert_eq!(mf.services.len(), 1);
    }
}
