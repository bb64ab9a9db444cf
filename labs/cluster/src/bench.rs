//! kube-proxy against the mesh, on the same cluster build and kernel: for each number of
//! Services, the latency of connect + first round trip to a ClusterIP, and the time from
//! `kubectl scale` to the new pod answering through its Service.
//!
//! - One datapath at a time: a cluster with kube-proxy (iptables mode), then one with the mesh
//!   in its place; each starts empty and is taken down after.
//! - Pods are started with `enableServiceLinks: false`: with 10,000 Services in the namespace
//!   the kubelet's `<SERVICE>_SERVICE_HOST` variables (seven per Service) make `execve` fail
//!   with E2BIG ("argument list too long") in every pod started after them.
//! - The workload: `rr` (two rr-servers) behind every filler Service `svc-N` (port 80), a
//!   `scaled` Deployment (one rr-server) behind its own Service, and a long-running `client`
//!   pod that every measurement runs in (`kubectl exec`: the process is in the pod's cgroup).
//! - Services are added up to each count (`kubectl create`, 500 per call); a count is measured
//!   once its newest Service answers from both rr pods.
//! - Latency: `workload connect-rate` (connect, 64-byte request and response, close), one
//!   repetition per filler Service picked evenly across the range (iptables matches a
//!   ClusterIP by walking `KUBE-SERVICES` in order, so which Service matters).
//! - Scale: `lb-probe --until-backends 2` runs in the client against `scaled`; `kubectl scale`
//!   to 2 replicas; the time is from just before `scale` to the moment the probe saw the second
//!   pod answer (both clocks are this machine's). It includes starting the pod, which both
//!   datapaths share. Scaled back to 1 between repetitions.
use std::{
    io::Write as _,
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{
    Cluster, ClusterError,
    daemons::{LAB_IMAGE, Options, UpEvent},
    run,
    source::Build,
};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Numbers of filler Services, measured in this order (ascending).
    pub services: Vec<usize>,
    /// Connections per latency repetition.
    pub connections: u32,
    pub repetitions: usize,
    pub scale_repetitions: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Datapath {
    KubeProxy,
    Mesh,
}

impl Datapath {
    pub fn name(self) -> &'static str {
        match self {
            Datapath::KubeProxy => "kube-proxy",
            Datapath::Mesh => "mesh",
        }
    }
}

/// One datapath at one number of Services: the raw samples (the UI summarizes them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    pub datapath: Datapath,
    pub services: usize,
    /// Seconds to create the Services added for this count.
    pub create_s: f64,
    /// Seconds from the last create to the newest Service answering.
    pub programmed_s: f64,
    /// Per repetition: median and 99th percentile of connect + round trip + close, µs.
    pub p50_us: Vec<f64>,
    pub p99_us: Vec<f64>,
    /// Per repetition: ms from `kubectl scale` to the new pod answering through the Service.
    pub scale_ms: Vec<f64>,
}

#[derive(Debug, Clone)]
pub enum BenchEvent {
    Up(UpEvent),
    Stage(String),
    Cell(Cell),
}

/// A Deployment of `replicas` rr-servers labelled `app: NAME`, each answering with its pod's name.
fn rr_deployment(name: &str, replicas: u32) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{ name: {name} }}
spec:
  replicas: {replicas}
  selector: {{ matchLabels: {{ app: {name} }} }}
  template:
    metadata: {{ labels: {{ app: {name} }} }}
    spec:
      enableServiceLinks: false
      terminationGracePeriodSeconds: 1
      containers:
      - name: rr
        image: {LAB_IMAGE}
        imagePullPolicy: Never
        command: ["/workload", "rr-server", "--listen", "0.0.0.0:7000", "--name", "$(POD_NAME)"]
        env:
        - name: POD_NAME
          valueFrom: {{ fieldRef: {{ fieldPath: metadata.name }} }}
"#
    )
}

/// rr (behind every filler Service), scaled behind its own Service, and the client pod.
fn workload() -> String {
    let rest = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{ name: scaled }}
spec:
  selector: {{ app: scaled }}
  ports: [{{ port: 80, targetPort: 7000, protocol: TCP }}]
---
apiVersion: v1
kind: Pod
metadata: {{ name: client }}
spec:
  enableServiceLinks: false
  containers:
  - name: main
    image: {LAB_IMAGE}
    imagePullPolicy: Never
    command: ["/workload", "rr-server", "--listen", "0.0.0.0:7000", "--name", "client"]
"#
    );
    [rr_deployment("rr", 2), rr_deployment("scaled", 1), rest].join("---\n")
}

/// `count` filler Services from `first` (svc-1, svc-2, ...), all in front of rr.
fn services_yaml(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{ name: svc-{i} }}\nspec:\n  selector: {{ app: rr }}\n  \
                 ports: [{{ port: 80, targetPort: 7000, protocol: TCP }}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Runs `kubectl` with `input` on stdin.
fn kubectl_in(c: &Cluster, args: &[&str], input: &str) -> Result<String, ClusterError> {
    let mut cmd = c.kubectl();
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let shown = crate::describe(&cmd);
    let fail = |detail: String| ClusterError::Command { cmd: shown.clone(), detail };
    let mut child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes()).map_err(|e| fail(e.to_string()))?;
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(format!("{}\n{}", out.status, String::from_utf8_lossy(&out.stderr))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn kubectl(c: &Cluster, args: &[&str]) -> Result<String, ClusterError> {
    let mut cmd = c.kubectl();
    cmd.args(args);
    Ok(String::from_utf8_lossy(&run(&mut cmd)?.stdout).into_owned())
}

/// A workload command in the client pod; its JSON report.
fn in_client(c: &Cluster, args: &[&str]) -> Result<serde_json::Value, ClusterError> {
    let mut all = vec!["exec", "client", "--", "/workload"];
    all.extend_from_slice(args);
    let out = kubectl(c, &all)?;
    serde_json::from_str(out.trim())
        .map_err(|e| ClusterError::State(format!("{} said {out:?}: {e}", args.join(" "))))
}

fn cluster_ip(c: &Cluster, service: &str) -> Result<String, ClusterError> {
    kubectl(c, &["get", "service", service, "-o", "jsonpath={.spec.clusterIP}"])
}

/// How long a Service may take to answer (kube-proxy 1.20 at 10,000 Services: minutes).
const PATIENCE_MS: &str = "900000";

/// Until the Service at `ip` answers from `backends` pods (or [`PATIENCE_MS`] pass); seconds.
fn reachable(c: &Cluster, ip: &str, backends: usize) -> Result<f64, ClusterError> {
    let target = format!("{ip}:80");
    let k = backends.to_string();
    let v = in_client(
        c,
        &["lb-probe", "--connect", &target, "--until-backends", &k, "--within-ms", PATIENCE_MS, "--json"],
    )?;
    v["elapsed_ms"].as_f64().map(|ms| ms / 1e3).ok_or_else(|| {
        ClusterError::State(format!("{target} did not reach {backends} pods in {PATIENCE_MS} ms: {v}"))
    })
}

fn unix_ms() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// The whole comparison; each datapath's cluster is taken down even when a step fails.
pub fn run_bench(
    build: &Build,
    base: &Options,
    opts: &BenchOptions,
    events: &mut dyn FnMut(BenchEvent),
) -> Result<Vec<Cell>, ClusterError> {
    let mut cells = Vec::new();
    for dp in [Datapath::KubeProxy, Datapath::Mesh] {
        events(BenchEvent::Stage(format!("{}: cluster up", dp.name())));
        let o = Options { kube_proxy: dp == Datapath::KubeProxy, mesh: dp == Datapath::Mesh, ..base.clone() };
        let c = Cluster::up(build, &o, &mut |e| events(BenchEvent::Up(e)))?;
        let measured = measure(&c, dp, opts, base, events, &mut cells);
        let down = c.down(&mut |e| events(BenchEvent::Up(e)));
        // A Ctrl-C also stops the probes in the pods: their errors are its consequence.
        if base.cancel.is_cancelled() {
            return Err(ClusterError::Cancelled);
        }
        measured?;
        down?;
    }
    Ok(cells)
}

fn measure(
    c: &Cluster,
    dp: Datapath,
    opts: &BenchOptions,
    base: &Options,
    events: &mut dyn FnMut(BenchEvent),
    cells: &mut Vec<Cell>,
) -> Result<(), ClusterError> {
    let cancelled = || if base.cancel.is_cancelled() { Err(ClusterError::Cancelled) } else { Ok(()) };
    kubectl_in(c, &["apply", "-f", "-"], &workload())?;
    for d in ["deployment/rr", "deployment/scaled"] {
        kubectl(c, &["rollout", "status", d, "--timeout=180s"])?;
    }
    kubectl(c, &["wait", "--for=condition=ready", "pod/client", "--timeout=180s"])?;
    let scaled = cluster_ip(c, "scaled")?;
    reachable(c, &scaled, 1)?;
    let mut have = 0;
    for &n in &opts.services {
        cancelled()?;
        events(BenchEvent::Stage(format!("{}: {n} Services", dp.name())));
        let t0 = Instant::now();
        while have < n {
            let batch = (n - have).min(500);
            kubectl_in(c, &["create", "-f", "-"], &services_yaml(have + 1, batch))?;
            have += batch;
        }
        let create_s = t0.elapsed().as_secs_f64();
        let newest = cluster_ip(c, &format!("svc-{n}"))?;
        let t1 = Instant::now();
        reachable(c, &newest, 2)?;
        let programmed_s = t1.elapsed().as_secs_f64();
        let mut cell = Cell {
            datapath: dp,
            services: n,
            create_s,
            programmed_s,
            p50_us: Vec::new(),
            p99_us: Vec::new(),
            scale_ms: Vec::new(),
        };
        for r in 0..opts.repetitions {
            cancelled()?;
            // Services spread evenly over 1..=n.
            let svc = 1 + (r * n) / opts.repetitions.max(1);
            let ip = cluster_ip(c, &format!("svc-{svc}"))?;
            let target = format!("{ip}:80");
            let conns = opts.connections.to_string();
            let v = in_client(c, &["connect-rate", "--connect", &target, "--connections", &conns, "--json"])?;
            let lat = &v["latency_us"];
            match (lat["p50"].as_f64(), lat["p99"].as_f64()) {
                (Some(p50), Some(p99)) => {
                    cell.p50_us.push(p50);
                    cell.p99_us.push(p99);
                }
                _ => return Err(ClusterError::State(format!("connect-rate to {target} said {v}"))),
            }
        }
        for _ in 0..opts.scale_repetitions {
            cancelled()?;
            cell.scale_ms.push(scale_once(c, &scaled)?);
        }
        events(BenchEvent::Cell(cell.clone()));
        cells.push(cell);
    }
    Ok(())
}

/// `kubectl scale` 1 -> 2 with a probe already running in the client; back to 1 after.
fn scale_once(c: &Cluster, ip: &str) -> Result<f64, ClusterError> {
    let target = format!("{ip}:80");
    let mut probe = c.kubectl();
    probe
        .args(["exec", "client", "--", "/workload", "lb-probe", "--connect", &target])
        .args(["--until-backends", "2", "--within-ms", PATIENCE_MS, "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = probe
        .spawn()
        .map_err(|e| ClusterError::Command { cmd: "kubectl exec".into(), detail: e.to_string() })?;
    // The probe is connecting (to the one pod) before the scale.
    std::thread::sleep(Duration::from_millis(1500));
    let at = unix_ms();
    kubectl(c, &["scale", "deployment/scaled", "--replicas=2"])?;
    let out = child
        .wait_with_output()
        .map_err(|e| ClusterError::Command { cmd: "kubectl exec".into(), detail: e.to_string() })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| ClusterError::State(format!("lb-probe said {text:?}: {e}")))?;
    let reached = v["reached_unix_ms"]
        .as_f64()
        .ok_or_else(|| ClusterError::State(format!("the new pod never answered through {target}: {v}")))?;
    kubectl(c, &["scale", "deployment/scaled", "--replicas=1"])?;
    // Back to one pod in the Endpoints before the next repetition.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_mins(1) {
        let ips =
            kubectl(c, &["get", "endpoints", "scaled", "-o", "jsonpath={.subsets[*].addresses[*].ip}"])?;
        let pods = kubectl(c, &["get", "pods", "-l", "app=scaled", "-o", "name"])?;
        if ips.split_whitespace().count() == 1 && pods.lines().count() == 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(reached - at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_has_its_four_objects() {
        let w = workload();
        for name in ["name: rr }", "name: scaled }", "app: scaled }", "name: client }"] {
            assert!(w.contains(name), "{name}: {w}");
        }
        assert_eq!(w.matches("\n---\n").count(), 3, "{w}");
        assert_eq!(w.matches(LAB_IMAGE).count(), 3);
        let checked = crate::mesh::validate_1_33(&w).unwrap_or_else(|e| panic!("{e}\n{w}"));
        assert_eq!(checked.matches("passed for resource").count(), 4, "{checked}");
    }

    #[test]
    fn filler_services_are_numbered_on() {
        let y = services_yaml(3, 2);
        assert!(y.contains("name: svc-3 }") && y.contains("name: svc-4 }") && !y.contains("svc-5"));
        assert_eq!(y.matches("---").count(), 1);
    }
}
