//! Kubernetes as a source of desired state: `mesh-agent kubernetes` watches (kube-rs watchers)
//! Services, Endpoints, Pods, Namespaces and NetworkPolicies in every namespace, renders a mesh
//! file and a pods file from them, and hands both to the running agent through its control
//! socket: the same request `mesh-agent apply --control --pods` sends, so Kubernetes goes
//! through the one code path every mesh change takes. The agent then balances each ClusterIP
//! port over its ready endpoints at connect() (kube-proxy's job) and enforces the policies on
//! pod identities (namespace + labels).
//!
//! It runs beside the agent (a second container of the DaemonSet, sharing the socket's folder):
//! it needs the API, the agent needs the kernel, and neither needs what the other has.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use futures::{StreamExt as _, stream};
use k8s_openapi::api::{
    core::v1::{Endpoints, Namespace, Pod, Service},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt as _, watcher},
};
use serde::Serialize;

use crate::control;

mod network_policy;
mod pods;
mod services;

/// `mesh-agent kubernetes`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct KubernetesArgs {
    /// The running agent's control socket (its `run --control`).
    #[arg(long)]
    pub control: PathBuf,
    /// Folder for the rendered mesh and pods files, shared with the agent (same path on both
    /// sides).
    #[arg(long)]
    pub dir: PathBuf,
    /// This node's name: its pods' containers are who connects from this node.
    #[arg(long)]
    pub node: Option<String>,
    /// The folder holding one cgroup v2 directory per container, named by container ID, as the
    /// agent sees it (containerd with the cgroupfs driver: the agent's `--cgroup`).
    #[arg(long, requires = "node")]
    pub container_cgroups: Option<PathBuf>,
}

/// A mesh file as the agent reads it (the parts this source writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct MeshOut {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    services: Vec<services::ServiceOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    policy: Vec<network_policy::RuleOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    isolate: Vec<network_policy::IsolateOut>,
}

/// The objects watched, by `namespace/name` (Namespaces by name).
#[derive(Default)]
struct Watched {
    services: Store<Service>,
    endpoints: Store<Endpoints>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    policies: Store<NetworkPolicy>,
}

/// What the objects render to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rendered {
    mesh: String,
    pods: String,
    warnings: BTreeSet<String>,
}

// ANCHOR: render
fn render(w: &Watched, node: Option<&str>, cgroups: Option<&Path>) -> Rendered {
    let pods = pods::render(&w.pods.now, node, cgroups);
    let policy = network_policy::render(&w.policies.now, &pods, &w.namespaces.now);
    let mesh = MeshOut {
        services: services::render(&w.services.now, &w.endpoints.now),
        policy: policy.rules,
        isolate: policy.isolate,
    };
    Rendered {
        mesh: toml::to_string(&mesh).expect("a mesh file serializes"),
        pods: serde_json::to_string_pretty(&pods).expect("pods serialize"),
        warnings: policy.warnings,
    }
}
// ANCHOR_END: render

fn key(meta: &kube::api::ObjectMeta) -> String {
    let name = meta.name.as_deref().unwrap_or("");
    match &meta.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// Writes `text` to `dir/name` atomically; returns its path.
fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let file = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &file)?;
    Ok(file)
}

/// Writes the files and asks the agent to apply them.
fn apply(dir: &Path, socket: &Path, r: &Rendered) -> anyhow::Result<control::Applied> {
    let file = write(dir, "kubernetes.toml", &r.mesh)?;
    let pods = Some(write(dir, "pods.json", &r.pods)?);
    match control::request(socket, &control::Request::Apply { file, pods }).map_err(anyhow::Error::msg)? {
        control::Response::Applied(a) => Ok(a),
        control::Response::Error(e) => anyhow::bail!("the agent refused: {e}"),
        control::Response::Done => anyhow::bail!("the agent answered an apply with no result"),
    }
}

/// One kind of object as last listed and watched.
struct Store<K> {
    now: BTreeMap<String, K>,
    /// A relist in progress.
    init: BTreeMap<String, K>,
}

impl<K> Default for Store<K> {
    fn default() -> Self {
        Store { now: BTreeMap::new(), init: BTreeMap::new() }
    }
}

impl<K: kube::Resource> Store<K> {
    /// Takes one watch event; whether the objects changed.
    fn update(&mut self, e: watcher::Event<K>) -> bool {
        match e {
            watcher::Event::Apply(o) => {
                self.now.insert(key(o.meta()), o);
                true
            }
            watcher::Event::Delete(o) => {
                self.now.remove(&key(o.meta()));
                true
            }
            watcher::Event::Init => {
                self.init.clear();
                false
            }
            watcher::Event::InitApply(o) => {
                self.init.insert(key(o.meta()), o);
                false
            }
            watcher::Event::InitDone => {
                std::mem::swap(&mut self.now, &mut self.init);
                self.init.clear();
                true
            }
        }
    }
}

/// One watch event, boxed: the kinds differ a lot in size.
enum Change {
    Service(Box<watcher::Event<Service>>),
    Endpoints(Box<watcher::Event<Endpoints>>),
    Pod(Box<watcher::Event<Pod>>),
    Namespace(Box<watcher::Event<Namespace>>),
    Policy(Box<watcher::Event<NetworkPolicy>>),
}

impl Watched {
    fn update(&mut self, c: Change) -> bool {
        match c {
            Change::Service(e) => self.services.update(*e),
            Change::Endpoints(e) => self.endpoints.update(*e),
            Change::Pod(e) => self.pods.update(*e),
            Change::Namespace(e) => self.namespaces.update(*e),
            Change::Policy(e) => self.policies.update(*e),
        }
    }
}

/// Every object of kind `K` in the cluster, listed then watched, each event as a `Change`.
fn watch<K>(
    client: &Client,
    change: fn(Box<watcher::Event<K>>) -> Change,
) -> futures::stream::BoxStream<'static, Result<Change, watcher::Error>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    watcher(Api::<K>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .map(move |e| e.map(|e| change(Box::new(e))))
        .boxed()
}

/// Watches until the process is stopped; every change that alters the rendered files is applied.
pub fn run(args: &KubernetesArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let client = Client::try_default().await?;
        eprintln!("mesh-agent: kubernetes: watching Services, Endpoints, Pods, Namespaces and NetworkPolicies");
        let mut changes = stream::select_all([
            watch(&client, Change::Service),
            watch(&client, Change::Endpoints),
            watch(&client, Change::Pod),
            watch(&client, Change::Namespace),
            watch(&client, Change::Policy),
        ]);
        let mut watched = Watched::default();
        let mut applied: Option<Rendered> = None;
        let mut pending = false;
        let mut last = std::time::Instant::now();
        loop {
            // Changes come in bursts (a rollout touches many objects): apply once it has been
            // quiet for 200 ms, or at least once a second while changes keep coming.
            let mut quiet = false;
            match tokio::time::timeout(Duration::from_millis(200), changes.next()).await {
                Ok(Some(Ok(change))) => pending |= watched.update(change),
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
            let r = render(&watched, args.node.as_deref(), args.container_cgroups.as_deref());
            if applied.as_ref() == Some(&r) {
                pending = false;
                continue;
            }
            match apply(&args.dir, &args.control, &r) {
                Ok(a) => {
                    let c = a.services;
                    eprintln!(
                        "mesh-agent: kubernetes: applied {} services ({} added, {} changed, {} removed), {} policy rules ({} allow entries, {} isolated identities)",
                        r.mesh.matches("[[services]]").count(),
                        c.added,
                        c.changed,
                        c.removed,
                        a.rules,
                        a.allow_entries,
                        a.policed
                    );
                    let said = applied.as_ref().map(|a| &a.warnings);
                    for w in r.warnings.iter().filter(|w| !said.is_some_and(|s| s.contains(*w))) {
                        eprintln!("mesh-agent: kubernetes: {w}");
                    }
                    applied = Some(r);
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
    use k8s_openapi::{
        api::{
            core::v1::{
                ContainerStatus, EndpointAddress, EndpointPort, EndpointSubset, PodSpec, PodStatus,
                ServicePort, ServiceSpec,
            },
            networking::v1::{
                IPBlock, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
                NetworkPolicyPort, NetworkPolicySpec,
            },
        },
        apimachinery::pkg::{
            apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
            util::intstr::IntOrString,
        },
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
        let mut w = Watched::default();
        w.services.now.insert(
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
        w.services.now.insert(
            "default/headless".into(),
            Service {
                metadata: meta("headless"),
                spec: Some(ServiceSpec { cluster_ip: Some("None".into()), ..Default::default() }),
                ..Default::default()
            },
        );
        let addr = |ip: &str| EndpointAddress { ip: ip.into(), ..Default::default() };
        w.endpoints.now.insert(
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
        let r = render(&w, None, None);
        assert_eq!(
            r.mesh,
            "[[services]]\nname = \"default/web\"\naddress = \"10.96.0.10\"\nport = 80\nprotocol = \"tcp\"\n\n\
             [[services.backends]]\naddress = \"10.244.0.2:8080\"\n\n[[services.backends]]\naddress = \"10.244.0.3:8080\"\n"
        );
        // What the agent reads back.
        let mf = crate::meshfile::MeshFile::parse(&r.mesh, "kubernetes.toml").unwrap();
        assert_eq!(mf.services.len(), 1);
        assert_eq!(r.pods, "[]");
    }

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str) -> Pod {
        Pod {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            spec: Some(PodSpec { node_name: Some("n1".into()), ..Default::default() }),
            status: Some(PodStatus {
                pod_ip: Some(ip.into()),
                phase: Some("Running".into()),
                container_statuses: Some(vec![ContainerStatus {
                    container_id: Some(format!("containerd://{name}-id")),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn selector(labels: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    fn tcp(port: i32) -> NetworkPolicyPort {
        NetworkPolicyPort { port: Some(IntOrString::Int(port)), ..Default::default() }
    }

    /// Ingress to web from the clients and from a labelled namespace on 8080; the clients
    /// isolated for egress and let out to web only; an ipBlock peer (not enforced).
    #[test]
    fn network_policies_become_isolation_and_the_flows_both_ends_allow() {
        let mut w = Watched::default();
        for p in [
            pod("default", "web-1", &[("app", "web")], "10.244.0.2"),
            pod("default", "client", &[("role", "client")], "10.244.0.3"),
            pod("default", "stranger", &[("role", "other")], "10.244.0.4"),
            pod("other", "blue", &[("app", "x")], "10.244.0.5"),
        ] {
            w.pods.now.insert(key(&p.metadata), p);
        }
        let mut host = pod("default", "host", &[("app", "web")], "192.0.2.2");
        host.spec.as_mut().unwrap().host_network = Some(true);
        w.pods.now.insert("default/host".into(), host);
        let mut done = pod("default", "done", &[("app", "web")], "10.244.0.9");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        w.pods.now.insert("default/done".into(), done);
        let mut other = Namespace::default();
        other.metadata.name = Some("other".into());
        other.metadata.labels = Some([("team".to_owned(), "blue".to_owned())].into());
        w.namespaces.now.insert("other".into(), other);
        let np =
            |name: &str, spec: NetworkPolicySpec| NetworkPolicy { metadata: meta(name), spec: Some(spec) };
        w.policies.now.insert(
            "default/web".into(),
            np(
                "web",
                NetworkPolicySpec {
                    pod_selector: Some(selector(&[("app", "web")])),
                    ingress: Some(vec![NetworkPolicyIngressRule {
                        from: Some(vec![
                            NetworkPolicyPeer {
                                pod_selector: Some(selector(&[("role", "client")])),
                                ..Default::default()
                            },
                            NetworkPolicyPeer {
                                namespace_selector: Some(selector(&[("team", "blue")])),
                                ..Default::default()
                            },
                        ]),
                        ports: Some(vec![tcp(8080)]),
                    }]),
                    ..Default::default()
                },
            ),
        );
        w.policies.now.insert(
            "default/client".into(),
            np(
                "client",
                NetworkPolicySpec {
                    pod_selector: Some(selector(&[("role", "client")])),
                    policy_types: Some(vec!["Egress".into()]),
                    egress: Some(vec![
                        NetworkPolicyEgressRule {
                            to: Some(vec![NetworkPolicyPeer {
                                pod_selector: Some(LabelSelector {
                                    match_expressions: Some(vec![LabelSelectorRequirement {
                                        key: "app".into(),
                                        operator: "In".into(),
                                        values: Some(vec!["web".into(), "db".into()]),
                                    }]),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            }]),
                            ports: Some(vec![tcp(8080), tcp(9090)]),
                        },
                        NetworkPolicyEgressRule {
                            to: Some(vec![NetworkPolicyPeer {
                                ip_block: Some(IPBlock { cidr: "0.0.0.0/0".into(), except: None }),
                                ..Default::default()
                            }]),
                            ports: None,
                        },
                    ]),
                    ..Default::default()
                },
            ),
        );
        let r = render(&w, Some("n1"), Some(Path::new("/host/cgroup/k8s.io")));
        let pods: Vec<crate::meshfile::PodAddrs> = serde_json::from_str(&r.pods).unwrap();
        let names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default/client", "default/stranger", "default/web-1", "other/blue"]);
        assert_eq!(pods[2].cgroups, [PathBuf::from("/host/cgroup/k8s.io/web-1-id")]);
        assert_eq!(pods[2].labels["sidecarless.io/identity"], "default:app=web");
        assert_eq!(
            r.warnings.iter().collect::<Vec<_>>(),
            ["NetworkPolicy default/client: ipBlock peers are not enforced (nothing is let through by them)"]
        );
        // The agent reads it back and resolves it with the same code as any mesh file.
        let mf = crate::meshfile::MeshFile::parse(&r.mesh, "kubernetes.toml")
            .unwrap_or_else(|e| panic!("{e}\n{}", r.mesh));
        let wanted = crate::policy::resolve(&mf, &pods);
        let id = |n: &str| wanted.identity_of(n).unwrap();
        let (web, client, stranger, blue) =
            (id("default/web-1"), id("default/client"), id("other/blue"), id("default/stranger"));
        let (blue, stranger) = (stranger, blue);
        let world = mesh_common::WORLD_IDENTITY;
        let tcp = mesh_common::IPPROTO_TCP;
        let can = |from: u32, to: u32, port: u32| wanted.allows(from, to, port, tcp);
        assert!(can(client, web, 8080), "{}", r.mesh);
        assert!(!can(client, web, 9090), "web's ingress lets 8080 only");
        assert!(can(blue, web, 8080), "namespaceSelector team=blue");
        assert!(!can(stranger, web, 8080) && !can(world, web, 8080), "not a client, not outside");
        assert!(!can(client, stranger, 80) && !can(client, world, 443), "client's egress: web only");
        assert!(can(stranger, client, 80), "client is not isolated for ingress");
        assert!(can(web, stranger, 80) && can(web, world, 443), "web is not isolated for egress");
        assert!(!wanted.allows(client, web, 8080, mesh_common::IPPROTO_UDP), "TCP only");
    }
}
