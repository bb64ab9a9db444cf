//! The Kubernetes backend end to end on the running kernel: a cluster built from Debian's source
//! package (cached after the first build), a Deployment and a Service of the lab's own image, the
//! Service's ClusterIP reached from the host, and nothing left after `cluster down`.
//!
//! Needs root. One test binary, one test: a cluster owns the machine's kubelet ports.
use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Command, Output},
    time::Duration,
};

mod common;
use common::root_or_skip;

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lab-runner")
}

fn lab(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().expect("lab-runner runs")
}

fn kubectl(args: &[&str]) -> Output {
    let mut all = vec!["cluster", "kubectl", "--"];
    all.extend_from_slice(args);
    lab(&all)
}

fn ok(what: &str, o: &Output) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Takes the cluster down when the test ends, passed or not.
struct Down;
impl Drop for Down {
    fn drop(&mut self) {
        let o = lab(&["cluster", "down"]);
        if !o.status.success() {
            eprintln!("cluster down: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
}

/// Two replicas of the lab image's HTTP server, each naming its pod in every answer, behind a
/// ClusterIP Service.
const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: web, labels: { app: web } }
spec:
  replicas: 2
  selector: { matchLabels: { app: web } }
  template:
    metadata: { labels: { app: web } }
    spec:
      containers:
      - name: web
        image: docker.io/local/sidecarless-lab:dev
        imagePullPolicy: Never
        command: ["/workload", "http-server", "--listen", "0.0.0.0:8080", "--name", "$(POD_NAME)"]
        env:
        - name: POD_NAME
          valueFrom: { fieldRef: { fieldPath: metadata.name } }
        ports: [{ containerPort: 8080 }]
---
apiVersion: v1
kind: Service
metadata: { name: web }
spec:
  selector: { app: web }
  ports: [{ port: 80, targetPort: 8080, protocol: TCP }]
"#;

fn nix_kill(pid: u32, sig: i32) {
    // SAFETY: kill has no memory preconditions.
    assert_eq!(unsafe { libc::kill(pid as i32, sig) }, 0);
}

fn get(addr: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(3))
        .expect("connects to the ClusterIP");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n").unwrap();
    // One response: headers, then Content-Length bytes (the server may keep the connection).
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse::<usize>().unwrap())
            });
            if len.is_some_and(|n| body.len() >= n) {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return text,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[test]
fn a_real_cluster_runs_pods_behind_a_service_and_leaves_nothing() {
    if !root_or_skip("a_real_cluster_runs_pods_behind_a_service_and_leaves_nothing") {
        return;
    }
    let _ = lab(&["cluster", "down"]);
    let down = Down;

    // Ctrl-C while the node comes up: what was started is stopped and removed.
    let mut up = Command::new(bin())
        .args(["cluster", "up", "--kube-proxy"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(up.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("started kubelet") {
        let mut line = String::new();
        assert!(std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0, "up ended early:\n{said}");
        said.push_str(&line);
    }
    nix_kill(up.id(), libc::SIGINT);
    let _ = stderr.read_to_string(&mut said);
    let status = up.wait().unwrap();
    assert_eq!(status.code(), Some(130), "an interrupted up exits 130:\n{said}");
    let left = ok("clean --dry-run", &lab(&["clean", "--dry-run", "--json"]));
    assert!(left.contains(r#""found":[]"#), "an interrupted up left: {left}\n{said}");

    ok("cluster up", &lab(&["cluster", "up", "--kube-proxy"]));
    let status = ok("cluster status --json", &lab(&["cluster", "status", "--json"]));
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    let daemons: Vec<&str> =
        s["daemons"].as_array().unwrap().iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        daemons,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "containerd",
            "kubelet",
            "kube-proxy"
        ]
    );

    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.yaml");
    std::fs::write(&manifest, WEB).unwrap();
    ok("kubectl apply", &kubectl(&["apply", "-f", manifest.to_str().unwrap()]));
    ok("rollout", &kubectl(&["rollout", "status", "deployment/web", "--timeout=180s"]));
    let pods = ok(
        "get pods",
        &kubectl(&["get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}"]),
    );
    let pods: Vec<&str> = pods.split_whitespace().collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    let ip = ok("get svc", &kubectl(&["get", "service", "web", "-o", "jsonpath={.spec.clusterIP}"]));
    assert!(ip.starts_with("10.96."), "ClusterIP {ip} is in the service range");

    // kube-proxy's rules reach both pods from the host; every answer names a pod of the
    // Deployment. kube-proxy writes a pod's rule once the pod is ready and in the Endpoints, which
    // may follow the rollout by a sync: connections go on until both answered, for up to 30 s.
    let mut seen = std::collections::BTreeSet::new();
    let t0 = std::time::Instant::now();
    let mut tries = 0;
    while seen.len() < 2 && t0.elapsed() < Duration::from_secs(30) {
        tries += 1;
        if tries > 1 {
            std::thread::sleep(Duration::from_millis(100));
        }
        let body = get(&format!("{ip}:80"));
        let pod = pods
            .iter()
            .find(|p| body.contains(**p))
            .unwrap_or_else(|| panic!("answer names no pod of web: {body}"));
        seen.insert(pod.to_string());
    }
    assert_eq!(seen.len(), 2, "{tries} connections in 30 s through the ClusterIP reached only {seen:?}");
    // The API server reaches the kubelet (with its client certificate): `kubectl logs` works.
    ok("kubectl logs", &kubectl(&["logs", &format!("pod/{}", pods[0])]));

    ok("cluster down", &lab(&["cluster", "down"]));

    // The mesh in kube-proxy's place: no kube-proxy, no KUBE-* rules; the agent (a DaemonSet)
    // balances the ClusterIP at connect() over the Endpoints its watcher reads.
    ok("cluster up --mesh", &lab(&["cluster", "up", "--mesh"]));
    let rr = dir.path().join("rr.yaml");
    std::fs::write(&rr, RR).unwrap();
    ok("kubectl apply", &kubectl(&["apply", "-f", rr.to_str().unwrap()]));
    ok("rollout", &kubectl(&["rollout", "status", "deployment/rr", "--timeout=180s"]));
    let pods = ok(
        "get pods",
        &kubectl(&["get", "pods", "-l", "app=rr", "-o", "jsonpath={.items[*].metadata.name}"]),
    );
    let mut pods: Vec<String> = pods.split_whitespace().map(str::to_owned).collect();
    pods.sort();
    let ip = ok("get svc", &kubectl(&["get", "service", "rr", "-o", "jsonpath={.spec.clusterIP}"]));
    let nat = Command::new("iptables-save").args(["-t", "nat"]).output().unwrap();
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(!nat.contains("KUBE-"), "kube-proxy's rules are not there:\n{nat}");
    // The watcher applies within a second of the Endpoints changing; a probe that ran before
    // that is run again (up to 5 times).
    let mut last = String::new();
    let report = (0..5).find_map(|_| {
        let _ = kubectl(&["delete", "job", "probe", "--ignore-not-found", "--wait=true"]);
        let job = dir.path().join("probe.yaml");
        std::fs::write(&job, PROBE.replace("SERVICE", &format!("{ip}:80"))).unwrap();
        ok("kubectl apply", &kubectl(&["apply", "-f", job.to_str().unwrap()]));
        let _ = kubectl(&["wait", "--for=condition=complete", "job/probe", "--timeout=60s"]);
        last = String::from_utf8_lossy(&kubectl(&["logs", "job/probe"]).stdout).into_owned();
        let v: serde_json::Value = serde_json::from_str(last.trim()).ok()?;
        let reached: Vec<String> = v["reached"].as_object()?.keys().cloned().collect();
        (reached == pods).then_some(v)
    });
    let v =
        report.unwrap_or_else(|| panic!("the probe never reached both pods {pods:?}; last report: {last}"));
    let total: u64 = v["reached"].as_object().unwrap().values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(total, 100, "{v}");
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    assert_eq!(v["peer_is_target"], 100, "getpeername() says the ClusterIP: {v}");

    // The same Service over UDP (its second port): 20 sockets, two datagrams each.
    let job = dir.path().join("probe-udp.yaml");
    let udp = PROBE
        .replace("name: probe", "name: probe-udp")
        .replace(
            "\"SERVICE\", \"--connections\", \"100\"",
            "\"SERVICE\", \"--udp\", \"--connections\", \"20\"",
        )
        .replace("SERVICE", &format!("{ip}:80"));
    std::fs::write(&job, udp).unwrap();
    ok("kubectl apply", &kubectl(&["apply", "-f", job.to_str().unwrap()]));
    let _ = kubectl(&["wait", "--for=condition=complete", "job/probe-udp", "--timeout=60s"]);
    let out = ok("udp probe", &kubectl(&["logs", "job/probe-udp"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["errors"], serde_json::json!({}), "{v}");
    let reached: Vec<String> = v["reached"].as_object().unwrap().keys().cloned().collect();
    assert_eq!(reached, pods, "UDP balanced over both pods: {v}");
    assert_eq!(v["sticky"], 20, "each socket's second datagram went where its first did: {v}");
    assert_eq!(v["peer_is_target"], 20, "the replies come from the ClusterIP: {v}");

    network_policy(dir.path(), &ip, &pods);

    drop(down);
    let left = ok("clean --dry-run", &lab(&["clean", "--dry-run", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&left).unwrap();
    assert_eq!(v["found"], serde_json::json!([]), "the cluster left: {left}");

    // The kubernetes scenario, on a cluster started for the run and stopped after it.
    let results = dir.path().join("results");
    let o = lab(&["scenario", "kubernetes", "--json", "--results", results.to_str().unwrap()]);
    let said = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "scenario kubernetes: {}\n{said}", o.status);
    let run = std::fs::read_dir(results.join("kubernetes")).unwrap().next().unwrap().unwrap().path();
    let outcome: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("outcome.json")).unwrap()).unwrap();
    assert_eq!(outcome["passed"], true, "{outcome}");
    let results = &outcome["report"]["results"];
    assert_eq!(results["mesh"]["cases"], results["direct"]["cases"], "{results}");
    assert_eq!(results["mesh"]["differences"], 0.0, "conformance pod to pod: {results}");
    assert!(results["mesh"]["msg_redirected"].as_f64().unwrap() > 0.0, "{results}");
    // Denials name the pods as the API does.
    let denials = outcome["report"]["denials"].as_array().unwrap();
    assert!(
        denials.iter().any(|d| d["from"]["pods"] == serde_json::json!(["default/stranger"])),
        "{denials:?}"
    );
    let status = ok("cluster status", &lab(&["cluster", "status", "--json"]));
    assert_eq!(status.trim(), "null", "the run's cluster went down");
    let left = ok("clean --dry-run", &lab(&["clean", "--dry-run", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&left).unwrap();
    assert_eq!(v["found"], serde_json::json!([]), "the scenario left: {left}");
}

/// Two rr-servers (the lab's benchmark server, which names its pod to `lb-probe`) behind a
/// ClusterIP Service.
const RR: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: { name: rr, labels: { app: rr } }
spec:
  replicas: 2
  selector: { matchLabels: { app: rr } }
  template:
    metadata: { labels: { app: rr } }
    spec:
      containers:
      - name: rr
        image: docker.io/local/sidecarless-lab:dev
        imagePullPolicy: Never
        command: ["/workload", "rr-server", "--listen", "0.0.0.0:7000", "--name", "$(POD_NAME)"]
        env:
        - name: POD_NAME
          valueFrom: { fieldRef: { fieldPath: metadata.name } }
---
apiVersion: v1
kind: Service
metadata: { name: rr }
spec:
  selector: { app: rr }
  ports:
  - { name: tcp, port: 80, targetPort: 7000, protocol: TCP }
  - { name: udp, port: 80, targetPort: 7000, protocol: UDP }
"#;

/// 100 connections to the Service from a pod: which pod each reached, what getpeername() said.
const PROBE: &str = r#"
apiVersion: batch/v1
kind: Job
metadata: { name: probe }
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: probe
        image: docker.io/local/sidecarless-lab:dev
        imagePullPolicy: Never
        command: ["/workload", "lb-probe", "--connect", "SERVICE", "--connections", "100", "--json"]
"#;

/// Two long-running pods, a client and a stranger (each an rr-server naming itself), and two
/// NetworkPolicies: rr takes TCP 7000 from clients only; clients may reach rr on 7000 and
/// nothing else.
const POLICY: &str = r#"
apiVersion: v1
kind: Pod
metadata: { name: client, labels: { role: client } }
spec:
  containers:
  - name: main
    image: docker.io/local/sidecarless-lab:dev
    imagePullPolicy: Never
    command: ["/workload", "rr-server", "--listen", "0.0.0.0:7000", "--name", "client"]
---
apiVersion: v1
kind: Pod
metadata: { name: stranger, labels: { role: other } }
spec:
  containers:
  - name: main
    image: docker.io/local/sidecarless-lab:dev
    imagePullPolicy: Never
    command: ["/workload", "rr-server", "--listen", "0.0.0.0:7000", "--name", "stranger"]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: rr-from-clients }
spec:
  podSelector: { matchLabels: { app: rr } }
  ingress:
  - from: [{ podSelector: { matchLabels: { role: client } } }]
    ports: [{ port: 7000, protocol: TCP }]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: clients-to-rr }
spec:
  podSelector: { matchLabels: { role: client } }
  policyTypes: [Egress]
  egress:
  - to: [{ podSelector: { matchLabels: { app: rr } } }]
    ports: [{ port: 7000 }]
"#;

/// `lb-probe` run inside `pod` (kubectl exec: the process is in the pod's container cgroup),
/// 20 connections to `target`.
fn probe_from(pod: &str, target: &str) -> serde_json::Value {
    let o = kubectl(&[
        "exec",
        pod,
        "--",
        "/workload",
        "lb-probe",
        "--connect",
        target,
        "--connections",
        "20",
        "--json",
    ]);
    let out = ok(&format!("lb-probe in {pod}"), &o);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// NetworkPolicy by the mesh's identities: what the policies allow passes, what they do not is
/// refused at connect() (EPERM), and nothing else is touched.
fn network_policy(dir: &std::path::Path, rr_ip: &str, rr_pods: &[String]) {
    let manifest = dir.join("policy.yaml");
    std::fs::write(&manifest, POLICY).unwrap();
    ok("kubectl apply", &kubectl(&["apply", "-f", manifest.to_str().unwrap()]));
    ok(
        "pods ready",
        &kubectl(&["wait", "--for=condition=ready", "pod/client", "pod/stranger", "--timeout=120s"]),
    );
    let ip_of = |pod: &str| ok("pod ip", &kubectl(&["get", "pod", pod, "-o", "jsonpath={.status.podIP}"]));
    let (client_ip, stranger_ip) = (ip_of("client"), ip_of("stranger"));
    let service = format!("{rr_ip}:80");
    // The agent learns the pods and policies within a second or so of the API: the client's
    // allowed probe is the sign (up to 10 s).
    let mut allowed = serde_json::Value::Null;
    for _ in 0..20 {
        allowed = probe_from("client", &service);
        if allowed["errors"] == serde_json::json!({}) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let reached: Vec<&String> =
        allowed["reached"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert_eq!(allowed["errors"], serde_json::json!({}), "client -> rr is allowed: {allowed}");
    assert!(reached.iter().all(|p| rr_pods.contains(p)), "{allowed}");

    let eperm = serde_json::json!({ "Operation not permitted (os error 1)": 20 });
    let v = probe_from("stranger", &service);
    assert_eq!(v["errors"], eperm, "rr's ingress refuses the stranger: {v}");
    let v = probe_from("client", &format!("{stranger_ip}:7000"));
    assert_eq!(v["errors"], eperm, "the client's egress reaches rr only: {v}");
    let o = kubectl(&[
        "exec",
        "client",
        "--",
        "/workload",
        "lb-probe",
        "--udp",
        "--connect",
        &service,
        "--connections",
        "20",
        "--json",
    ]);
    let out = ok("udp probe in client", &o);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(v["errors"], eperm, "the client's egress lets TCP 7000 only, not UDP: {v}");
    // Nothing else: the stranger reaches the client (not isolated for ingress).
    let v = probe_from("stranger", &format!("{client_ip}:7000"));
    assert_eq!(v["reached"], serde_json::json!({ "client": 20 }), "{v}");

    // The agent's denial events name the pods, as the API does.
    let log =
        ok("agent log", &kubectl(&["logs", "-n", "sidecarless-mesh", "daemonset/mesh-agent", "-c", "agent"]));
    let denial = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["denial"]["from"]["pods"] == serde_json::json!(["default/stranger"]))
        .unwrap_or_else(|| panic!("no denial from default/stranger in the agent's log:\n{log}"));
    let to: Vec<String> = serde_json::from_value(denial["denial"]["to"]["pods"].clone()).unwrap();
    let expected: Vec<String> = rr_pods.iter().map(|p| format!("default/{p}")).collect();
    assert_eq!(to, expected, "{denial}");
}
