//! A scenario on the cluster: its manifests applied, its pods found (addresses, labels, container
//! cgroups, network namespaces, all as the API and containerd have them), programs run in them
//! with `kubectl exec`, the mesh's DaemonSet deployed and deleted, and what the scenario applied
//! deleted again at the end, leaving the mesh as it was found.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use lab_protocol::Pod;
use serde::Deserialize;

use crate::{Cluster, ClusterError, MESH_PINS, mesh, run};

/// The namespace a scenario's objects live in (its manifests may name no other).
pub const NAMESPACE: &str = "default";

/// How long pods may take to become ready (images are local; TCG VMs are not involved).
const READY_TIMEOUT: &str = "180s";

pub struct Session {
    cluster: Cluster,
    dir: PathBuf,
    /// Manifests applied, in order (deleted in reverse).
    applied: Vec<PathBuf>,
    pods: Vec<Pod>,
    /// Whether the mesh's DaemonSet was there when the scenario started.
    mesh_at_start: bool,
}

/// The parts of `kubectl get pods -o json` read here.
#[derive(Deserialize)]
struct PodList {
    items: Vec<ApiPod>,
}

#[derive(Deserialize)]
struct ApiPod {
    metadata: Meta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct Meta {
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<PodIp>,
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct PodIp {
    ip: IpAddr,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    #[serde(default, rename = "containerID")]
    container_id: Option<String>,
}

impl Session {
    /// Applies `manifests` (name, text) on the cluster that is up, waits for every pod of the
    /// namespace to be ready, and finds `pods` (each must be a pod of the manifests).
    pub fn open(
        dir: &Path,
        manifests: &[(String, String)],
        pods: &[String],
        cancel: &lab_protocol::Cancel,
    ) -> Result<Session, ClusterError> {
        let cluster = match Cluster::find()? {
            Some(c) if c.healthy() => c,
            Some(_) => {
                return Err(ClusterError::Unmet(
                    "the cluster recorded is not running: `lab-runner cluster down`, then `up`".into(),
                ));
            }
            None => {
                return Err(ClusterError::Unmet(
                    "no cluster is up: `lab-runner cluster up` (or run the scenario with `lab-runner scenario`, which starts one)"
                        .into(),
                ));
            }
        };
        std::fs::create_dir_all(dir).map_err(ClusterError::io("cannot create", dir))?;
        let mesh_at_start = Path::new(MESH_PINS).exists();
        let mut s =
            Session { cluster, dir: dir.to_owned(), applied: Vec::new(), pods: Vec::new(), mesh_at_start };
        for (name, text) in manifests {
            cancel.check().map_err(|_| ClusterError::Cancelled)?;
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(ClusterError::io("cannot write", &path))?;
            s.applied.push(path.clone());
            run(s.kubectl().arg("apply").arg("-f").arg(&path))?;
        }
        run(s.kubectl().args(["wait", "--for=condition=ready", "pod", "--all"]).arg(timeout_arg()))?;
        s.pods = s.read_pods(pods)?;
        Ok(s)
    }

    /// `kubectl` in the scenario's namespace.
    pub fn kubectl(&self) -> Command {
        let mut c = self.cluster.kubectl();
        c.args(["-n", NAMESPACE]);
        c
    }

    /// `kubectl` as a command line, for the reader's `try` lines.
    pub fn kubectl_line(&self) -> String {
        format!(
            "{} --kubeconfig {}",
            self.cluster.state.kubectl.display(),
            self.cluster.state.kubeconfig.display()
        )
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    pub fn pod(&self, name: &str) -> Option<&Pod> {
        self.pods.iter().find(|p| p.name == name)
    }

    // ANCHOR: exec
    /// `argv` run in `pod`'s first container (`kubectl exec`: a process of the container, in its
    /// cgroup and namespaces, started by the container runtime).
    pub fn exec(&self, pod: &str, argv: &[String]) -> Command {
        let mut c = self.kubectl();
        c.args(["exec", pod, "--"]).args(argv);
        c
    }
    // ANCHOR_END: exec

    /// A Service's ClusterIP and first port, by name.
    pub fn service_address(&self, name: &str) -> Result<SocketAddr, ClusterError> {
        let path = "jsonpath={.spec.clusterIP} {.spec.ports[0].port}";
        let out = run(self.kubectl().args(["get", "service", name, "-o", path]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let bad = |why: String| ClusterError::State(format!("service {name}: {text:?}: {why}"));
        let (ip, port) = text.trim().split_once(' ').ok_or_else(|| bad("no port".into()))?;
        let ip: IpAddr = ip.parse().map_err(|e| bad(format!("{e}")))?;
        Ok(SocketAddr::new(ip, port.parse().map_err(|e| bad(format!("{e}")))?))
    }

    /// The pods behind the Service at `addr` (its ClusterIP and a port of it), by name, from its
    /// Endpoints: one slot each. Empty when no Service has that address.
    pub fn backends(&self, addr: SocketAddr) -> Result<Vec<String>, ClusterError> {
        #[derive(Deserialize)]
        struct List<T> {
            items: Vec<T>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Service {
            metadata: Meta,
            spec: ServiceSpec,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct ServiceSpec {
            #[serde(default, rename = "clusterIP")]
            cluster_ip: String,
            #[serde(default)]
            ports: Vec<Port>,
        }
        #[derive(Deserialize)]
        struct Port {
            port: u16,
        }
        #[derive(Deserialize)]
        struct Endpoints {
            #[serde(default)]
            subsets: Vec<Subset>,
        }
        #[derive(Deserialize)]
        struct Subset {
            #[serde(default)]
            addresses: Vec<Address>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Address {
            target_ref: Option<Meta>,
        }
        let json = |what: &str| -> Result<Vec<u8>, ClusterError> {
            Ok(run(self.kubectl().args(["get", what, "-o", "json"]))?.stdout)
        };
        let parse = |what: &str, e: serde_json::Error| {
            ClusterError::State(format!("kubectl get {what} -o json: {e}"))
        };
        let services: List<Service> =
            serde_json::from_slice(&json("services")?).map_err(|e| parse("services", e))?;
        let Some(svc) = services.items.iter().find(|s| {
            s.spec.cluster_ip == addr.ip().to_string() && s.spec.ports.iter().any(|p| p.port == addr.port())
        }) else {
            return Ok(Vec::new());
        };
        let name = format!("endpoints/{}", svc.metadata.name);
        let ep: Endpoints = serde_json::from_slice(&json(&name)?).map_err(|e| parse(&name, e))?;
        let mut pods: Vec<String> = ep
            .subsets
            .iter()
            .flat_map(|s| &s.addresses)
            .filter_map(|a| a.target_ref.as_ref().map(|r| r.name.clone()))
            .collect();
        pods.sort();
        pods.dedup();
        Ok(pods)
    }

    /// Deploys the mesh's DaemonSet and waits until its watcher has applied what the API holds.
    /// What to tell the reader.
    pub fn start_mesh(&mut self, cancel: &lab_protocol::Cancel) -> Result<Vec<String>, ClusterError> {
        if mesh_on() {
            return Ok(vec!["the mesh's DaemonSet is already running".into()]);
        }
        // A pod of an earlier DaemonSet still terminating would answer for `logs` below.
        self.wait_no_mesh_pods(cancel)?;
        let t = Instant::now();
        let manifest = mesh::render(&mesh::Values::lab(&self.cluster.state.node_ip)?)?;
        let kubectl = || self.cluster.kubectl();
        mesh::deploy(&kubectl, &manifest, &self.dir)?;
        let mut said = vec![format!(
            "DaemonSet sidecarless-mesh/mesh-agent rolled out in {:.1} s",
            t.elapsed().as_secs_f64()
        )];
        // Ready when the install is complete (the agent writes its `cgroup-<id>` pin last) and
        // the watcher has applied what the API lists (its first "applied" line).
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            cancel.check().map_err(|_| ClusterError::Cancelled)?;
            let log = self.mesh_log("kubernetes");
            let applied = log.lines().find(|l| l.contains("kubernetes: applied"));
            if let Some(line) = applied.filter(|_| install_complete()) {
                said.push(line.trim_start_matches("mesh-agent: ").to_owned());
                break;
            }
            if Instant::now() > deadline {
                return Err(ClusterError::NotReady {
                    what: "the mesh (a complete install and the watcher's first apply)".into(),
                    secs: 60,
                    log_tail: log,
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        said.push(format!("mesh ready {:.1} s after the apply", t.elapsed().as_secs_f64()));
        Ok(said)
    }

    /// Deletes the mesh's DaemonSet and waits for its pod to go; its agent uninstalls on
    /// SIGTERM (the pins go).
    pub fn stop_mesh(&mut self, cancel: &lab_protocol::Cancel) -> Result<(), ClusterError> {
        let mut c = self.cluster.kubectl();
        c.args([
            "-n",
            "sidecarless-mesh",
            "delete",
            "daemonset",
            "mesh-agent",
            "--ignore-not-found",
            "--wait=true",
        ]);
        run(c.arg(timeout_arg()))?;
        self.wait_no_mesh_pods(cancel)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while mesh_on() {
            cancel.check().map_err(|_| ClusterError::Cancelled)?;
            if Instant::now() > deadline {
                return Err(ClusterError::State(format!(
                    "{MESH_PINS} is still there 30 s after the agent's pod was deleted"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Waits until no pod of the mesh's DaemonSet exists (deleting a DaemonSet leaves its pods
    /// to the garbage collector, which removes them after the call returns).
    fn wait_no_mesh_pods(&self, cancel: &lab_protocol::Cancel) -> Result<(), ClusterError> {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            cancel.check().map_err(|_| ClusterError::Cancelled)?;
            let mut c = self.cluster.kubectl();
            c.args(["-n", "sidecarless-mesh", "get", "pods", "-l", "app=mesh-agent", "-o", "name"]);
            let out = run(&mut c)?;
            if out.stdout.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError::State(format!(
                    "a pod of the mesh's DaemonSet is still there after 60 s: {}",
                    String::from_utf8_lossy(&out.stdout).trim()
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The log of one of the mesh pod's containers (`agent` or `kubernetes`); empty when there is
    /// none.
    pub fn mesh_log(&self, container: &str) -> String {
        let mut c = self.cluster.kubectl();
        c.args(["-n", "sidecarless-mesh", "logs", "daemonset/mesh-agent", "-c", container]);
        c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    }

    /// Deletes what the scenario applied (and waits for it to go), and leaves the mesh as it was
    /// found. Every step is tried; the first failure is returned.
    pub fn close(mut self, cancel: &lab_protocol::Cancel) -> Result<(), ClusterError> {
        let mut first = None;
        for path in std::mem::take(&mut self.applied).iter().rev() {
            let mut c = self.kubectl();
            c.args(["delete", "--ignore-not-found", "--wait=true", "--grace-period=1"]).arg(timeout_arg());
            if let Err(e) = run(c.arg("-f").arg(path)) {
                first.get_or_insert(e);
            }
        }
        let mesh = match (self.mesh_at_start, mesh_on()) {
            (true, false) => self.start_mesh(cancel).map(|_| ()),
            (false, true) => self.stop_mesh(cancel),
            _ => Ok(()),
        };
        if let Err(e) = mesh {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    fn read_pods(&self, names: &[String]) -> Result<Vec<Pod>, ClusterError> {
        let out = run(self.kubectl().args(["get", "pods", "-o", "json"]))?;
        pods_from(&out.stdout, names, &mesh::pods_cgroup())
    }
}

/// Whether the mesh's DaemonSet has its programs attached (its pins are there).
pub fn mesh_on() -> bool {
    Path::new(MESH_PINS).exists()
}

/// Whether the agent finished installing: the `cgroup-<id>` pin, which it writes last, is in its
/// layout folder (`<pins>/layout-<N>/`).
fn install_complete() -> bool {
    let entries = |dir: &Path| std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries(Path::new(MESH_PINS)).any(|layout| {
        layout.file_name().to_string_lossy().starts_with("layout-")
            && entries(&layout.path()).any(|e| e.file_name().to_string_lossy().starts_with("cgroup-"))
    })
}

/// `names` found in `kubectl get pods -o json`: addresses and labels from the API, the first
/// container's cgroup under `cgroups` (containerd's `/k8s.io/<container id>`), its network
/// namespace's name.
fn pods_from(json: &[u8], names: &[String], cgroups: &Path) -> Result<Vec<Pod>, ClusterError> {
    let list: PodList = serde_json::from_slice(json)
        .map_err(|e| ClusterError::State(format!("kubectl get pods -o json: {e}")))?;
    names
        .iter()
        .map(|name| {
            let p = list.items.iter().find(|p| p.metadata.name == *name).ok_or_else(|| {
                let known: Vec<&str> = list.items.iter().map(|p| p.metadata.name.as_str()).collect();
                ClusterError::State(format!(
                    "the scenario names pod {name:?}, which its manifests do not make (pods: {})",
                    known.join(", ")
                ))
            })?;
            let ipv4 = p.status.pod_ips.iter().find_map(|i| match i.ip {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            });
            let ipv4 = ipv4.ok_or_else(|| {
                ClusterError::State(format!("pod {name} has no IPv4 address in its status (status.podIPs)"))
            })?;
            let ipv6 = p.status.pod_ips.iter().find_map(|i| match i.ip {
                IpAddr::V6(a) => Some(a),
                IpAddr::V4(_) => None,
            });
            let cgroup = p
                .status
                .container_statuses
                .iter()
                .find_map(|c| c.container_id.as_deref()?.strip_prefix("containerd://"))
                .map(|id| cgroups.join(id))
                .unwrap_or_default();
            Ok(Pod {
                name: name.clone(),
                labels: p.metadata.labels.clone(),
                netns: netns_of(&cgroup).unwrap_or_default(),
                cgroup,
                interface: "eth0".into(),
                ipv4,
                ipv6: ipv6.unwrap_or(Ipv6Addr::UNSPECIFIED),
            })
        })
        .collect()
}

fn timeout_arg() -> String {
    format!("--timeout={READY_TIMEOUT}")
}

/// The named network namespace (CNI's `cni-...`) of a container's first process.
fn netns_of(cgroup: &Path) -> Option<String> {
    let procs = std::fs::read_to_string(cgroup.join("cgroup.procs")).ok()?;
    let pid = procs.lines().next()?;
    let out = Command::new("ip").args(["netns", "identify", pid]).output().ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fields as Kubernetes 1.20 spells them (`podIPs`, `containerID`).
    const PODS: &str = r#"{"items": [
      {"metadata": {"name": "client", "labels": {"role": "client"}},
       "status": {"podIP": "10.244.0.7", "podIPs": [{"ip": "10.244.0.7"}],
                  "containerStatuses": [{"name": "main", "containerID": "containerd://abc123"}]}},
      {"metadata": {"name": "pending"}, "status": {}}
    ]}"#;

    #[test]
    fn pods_are_read_as_the_api_spells_them() {
        let pods =
            pods_from(PODS.as_bytes(), &["client".into()], Path::new("/sys/fs/cgroup/k8s.io")).unwrap();
        assert_eq!(pods[0].ipv4, std::net::Ipv4Addr::new(10, 244, 0, 7));
        assert_eq!(pods[0].labels["role"], "client");
        assert_eq!(pods[0].cgroup, Path::new("/sys/fs/cgroup/k8s.io/abc123"));
        let err = pods_from(PODS.as_bytes(), &["pending".into()], Path::new("/x")).unwrap_err().to_string();
        assert!(err.contains("pod pending has no IPv4 address"), "{err}");
        let err = pods_from(PODS.as_bytes(), &["nope".into()], Path::new("/x")).unwrap_err().to_string();
        assert!(err.contains("pods: client, pending"), "{err}");
    }
}
