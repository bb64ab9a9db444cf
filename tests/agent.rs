//! The `mesh-agent` binary on the running kernel: attach to a cgroup, count a connection that
//! has no local peer (its message must pass, intact), then detach and unpin on SIGTERM.
//!
//! Needs root; without it each test fails, or prints SKIPPED and passes where
//! SIDECARLESS_ALLOW_SKIP=1 (tests/common).
use std::{
    fs,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

mod common;

use serde_json::Value;

/// Tests that touch the kernel run one at a time.
static KERNEL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Removes the test's cgroup and pins and kills the agent, even when an assertion fails.
struct Sandbox {
    cgroup: PathBuf,
    pins: PathBuf,
    agent: Option<Child>,
}

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        Sandbox { cgroup: cgroup2_root().join(tag), pins: Path::new("/sys/fs/bpf").join(tag), agent: None }
    }

    /// The agent's flow log (in the temp folder, removed with the sandbox).
    fn flow_log(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}.flows.jsonl", self.pins.file_name().unwrap().to_string_lossy()))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = fs::remove_dir_all(&self.pins);
        let _ = fs::remove_dir(&self.cgroup);
        let _ = fs::remove_file(self.flow_log());
    }
}

fn cgroup2_root() -> PathBuf {
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        })
        .expect("cgroup2 mounted")
}

#[test]
fn agent_counts_passes_and_cleans_up_on_sigterm() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !common::root_or_skip("agent_counts_passes_and_cleans_up_on_sigterm") {
        return;
    }
    let tag = format!("sidecarless-agent-test-{}", std::process::id());
    let mut sb = Sandbox::new(&tag);
    fs::create_dir(&sb.cgroup).unwrap();

    // The agent knows the pods (127.0.0.1 is pod "b" here) and takes mesh files on its
    // control socket: it applies them itself, so its denial events can name the pods.
    let pods = std::env::temp_dir().join(format!("{tag}.json"));
    let control = std::env::temp_dir().join(format!("{tag}.sock"));
    let pod = |name: &str, v4: &str, v6: &str| serde_json::json!({ "name": name, "labels": { "app": name }, "ipv4": v4, "ipv6": v6 });
    fs::write(
        &pods,
        serde_json::to_string(&[pod("a", "10.255.0.1", "fd00::1"), pod("b", "127.0.0.1", "::1")]).unwrap(),
    )
    .unwrap();
    let mut agent = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .arg("run")
        .arg("--cgroup")
        .arg(&sb.cgroup)
        .arg("--pin-dir")
        .arg(&sb.pins)
        .arg("--flow-log")
        .arg(sb.flow_log())
        .arg("--pods")
        .arg(&pods)
        .arg("--control")
        .arg(&control)
        .args(["--interval-ms", "50"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = agent.stdout.take().unwrap();
    sb.agent = Some(agent);
    let (tx, counters) = mpsc::channel::<Value>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let first = counters.recv_timeout(Duration::from_secs(30)).expect("agent reports counters once attached");
    assert_eq!(first["msg_redirected"], 0);
    for map in ["SOCKETS", "COUNTERS"] {
        let layout = format!("layout-{}", mesh_agent::pins::LAYOUT_VERSION);
        assert!(sb.pins.join(layout).join(map).exists(), "{map} pinned");
    }

    // A client inside the cgroup talks to a server outside it: only the client's socket is in
    // the sockhash, there is no local peer to redirect to, so sk_msg must let the bytes pass.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "echo 0 > {}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/{port} && printf hello >&3 && sleep 0.2",
        sb.cgroup.display()
    );
    let mut client = Command::new("bash").args(["-c", &script]).spawn().unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = [0u8; 5];
    conn.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");
    assert!(client.wait().unwrap().success());

    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let v = counters.recv_timeout(Duration::from_secs(10)).expect("counter report");
        if v["msg_passed"].as_u64() >= Some(1) || Instant::now() > deadline {
            break v;
        }
    };
    assert!(seen["sockets_inserted"].as_u64() >= Some(1), "{seen}");
    assert!(seen["msg_passed"].as_u64() >= Some(1), "{seen}");
    assert_eq!(seen["msg_redirected"], 0, "{seen}");

    // Police 127.0.0.1 (pod "b"), allowing only pod "a" on port 1: the next connect() from
    // this cgroup (no pod's: world) fails with EPERM, and the agent prints the kernel's event.
    let mesh = std::env::temp_dir().join(format!("{tag}.toml"));
    fs::write(&mesh, "[[policy]]\nfrom = { app = \"a\" }\nto = { app = \"b\" }\nports = [1]\n").unwrap();
    let applied = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .arg("apply")
        .arg(&mesh)
        .arg("--control")
        .arg(&control)
        .output()
        .unwrap();
    let _ = (fs::remove_file(&mesh), fs::remove_file(&pods));
    let said = String::from_utf8_lossy(&applied.stderr);
    assert!(applied.status.success(), "apply: {said}");
    assert!(said.contains("1 policed identities"), "{said}");
    let script =
        format!("echo 0 > {}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/{port}", sb.cgroup.display());
    let denied = Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(!denied.status.success(), "connect() to a policed address must fail");
    assert!(String::from_utf8_lossy(&denied.stderr).contains("not permitted"), "{denied:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let event = loop {
        let v = counters.recv_timeout(Duration::from_secs(10)).expect("agent output");
        if v.get("denial").is_some() || Instant::now() > deadline {
            break v;
        }
    };
    eprintln!("denial event: {event}");
    let d = &event["denial"];
    assert_eq!(d["hook"], "connect", "{event}");
    assert_eq!(d["from"]["pods"], serde_json::json!(["world"]), "{event}");
    // The agent applied the rules itself: it names the pod behind the policed identity.
    assert_eq!(d["to"]["pods"], serde_json::json!(["b"]), "{event}");
    assert_eq!(d["dst"], "127.0.0.1", "{event}");
    assert_eq!(d["port"], port, "{event}");

    // SIGTERM: detach, unpin, exit 0.
    let mut agent = sb.agent.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let mut err = String::new();
    agent.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "agent exit {status}: {err}");
    assert!(err.contains("detached and unpinned"), "{err}");
    assert!(!sb.pins.exists(), "pins removed");
    assert!(!control.exists(), "control socket removed");
    let attached =
        Command::new("bpftool").arg("-j").arg("cgroup").arg("show").arg(&sb.cgroup).output().unwrap();
    assert!(attached.status.success(), "bpftool: {}", String::from_utf8_lossy(&attached.stderr));
    // bpftool prints nothing at all for a cgroup without programs.
    let text = String::from_utf8_lossy(&attached.stdout);
    let attached: Value =
        if text.trim().is_empty() { Value::Array(vec![]) } else { serde_json::from_str(&text).unwrap() };
    assert_eq!(attached, Value::Array(vec![]), "no program left on the cgroup");
}

fn agent(sb: &Sandbox, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
    c.args(args);
    for (flag, path) in [("--cgroup", &sb.cgroup), ("--pin-dir", &sb.pins), ("--flow-log", &sb.flow_log())] {
        if args[0] == "run" || flag == "--pin-dir" {
            c.arg(flag).arg(path);
        }
    }
    c
}

/// Starts `mesh-agent run` and returns it with what it said up to "serving".
fn serve(sb: &Sandbox) -> (Child, String) {
    serve_with(sb, &[])
}

fn serve_with(sb: &Sandbox, extra: &[&str]) -> (Child, String) {
    let mut child = agent(sb, &["run", "--interval-ms", "100000"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = String::new();
    loop {
        let Ok(line) = rx.recv_timeout(Duration::from_mins(1)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("agent did not serve; it said: {said}");
        };
        said.push_str(&line);
        said.push('\n');
        if line.contains("serving") {
            return (child, said);
        }
    }
}

/// The programs bpftool lists on the cgroup, by name.
fn attached(cgroup: &Path) -> Vec<String> {
    let out = Command::new("bpftool").arg("-j").arg("cgroup").arg("show").arg(cgroup).output().unwrap();
    assert!(out.status.success(), "bpftool: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    if text.trim().is_empty() {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&text).unwrap();
    let mut names: Vec<String> =
        v.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap_or("?").to_owned()).collect();
    names.sort();
    names
}

fn output(mut c: Command) -> (bool, String) {
    let out = c.output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn a_killed_agent_leaves_the_datapath_and_the_next_one_adopts_it() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !common::root_or_skip("a_killed_agent_leaves_the_datapath_and_the_next_one_adopts_it") {
        return;
    }
    let tag = format!("sidecarless-restart-test-{}", std::process::id());
    let mut sb = Sandbox::new(&tag);
    fs::create_dir(&sb.cgroup).unwrap();
    let files = std::env::temp_dir().join(&tag);
    fs::create_dir_all(&files).unwrap();
    let good = files.join("mesh.toml");
    fs::write(&good, "[[services]]\nname = \"s\"\naddress = \"10.96.7.7\"\nport = 80\nbackends = [{ address = \"127.0.0.1:9\" }]\n").unwrap();
    let bad = files.join("bad.toml");
    fs::write(&bad, "[[services]]\nname = \"s\"\nadress = \"10.96.7.7\"\nport = 80\n").unwrap();

    let (first, said) = serve(&sb);
    sb.agent = Some(first);
    assert!(said.contains("installed in"), "{said}");
    let programs = attached(&sb.cgroup);
    // One program per hook, two at sock_ops (the redirect's and telemetry's): one per pinned link.
    assert_eq!(
        programs.len(),
        mesh_agent::pins::linked_programs(mesh_agent::Variant::Netns).len(),
        "{programs:?}"
    );

    // apply: by difference, idempotent; a rejected file changes nothing.
    let (ok, out) = output(agent(&sb, &["apply", good.to_str().unwrap()]));
    assert!(ok && out.contains("1 added, 0 changed, 0 removed, 0 unchanged"), "{out}");
    let (ok, out) = output(agent(&sb, &["apply", good.to_str().unwrap()]));
    assert!(ok && out.contains("0 added, 0 changed, 0 removed, 1 unchanged"), "{out}");
    let (ok, out) = output(agent(&sb, &["apply", bad.to_str().unwrap()]));
    assert!(!ok && out.contains(&format!("{}:3: unknown field `adress`", bad.display())), "{out}");
    let (ok, out) = output(agent(&sb, &["status", "--json"]));
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    let services = status["maps"].as_array().unwrap().iter().find(|m| m["name"] == "SERVICES").unwrap();
    assert_eq!(services["entries"], 1, "the rejected file left the service as it was: {status}");

    // SIGKILL: no clean-up runs; the links keep every program attached.
    let mut first = sb.agent.take().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(attached(&sb.cgroup), programs, "still attached with the agent dead");

    // The next agent adopts: nothing attached twice.
    let (second, said) = serve(&sb);
    sb.agent = Some(second);
    assert!(said.contains(&format!("adopted {} pinned links and 1 services", programs.len())), "{said}");
    assert_eq!(attached(&sb.cgroup), programs, "each program once");
    let (ok, out) = output(agent(&sb, &["status", "--cgroup", sb.cgroup.to_str().unwrap()]));
    assert!(ok && out.contains("each mesh program attached once"), "{out}");

    // SIGHUP is a stop like SIGTERM: everything detached and unpinned.
    let mut second = sb.agent.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGHUP) };
    assert!(second.wait().unwrap().success());
    assert!(!sb.pins.exists(), "pins removed");
    assert_eq!(attached(&sb.cgroup), Vec::<String>::new());

    // Pins of another layout are never adopted; uninstall removes them.
    fs::create_dir_all(sb.pins.join("layout-0")).unwrap();
    let (ok, out) = output(agent(&sb, &["run"]));
    assert!(!ok && out.contains("layout-0: pins of another layout"), "{out}");
    assert_eq!(attached(&sb.cgroup), Vec::<String>::new(), "nothing attached");
    let (ok, out) = output(agent(&sb, &["uninstall"]));
    assert!(ok, "{out}");
    assert!(!sb.pins.exists());
    let _ = fs::remove_dir_all(&files);
}

#[test]
fn the_libbpf_engine_installs_the_c_twin_and_a_restart_keeps_it() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !common::root_or_skip("the_libbpf_engine_installs_the_c_twin_and_a_restart_keeps_it") {
        return;
    }
    let tag = format!("sidecarless-twin-test-{}", std::process::id());
    let mut sb = Sandbox::new(&tag);
    fs::create_dir(&sb.cgroup).unwrap();
    let (first, said) = serve_with(&sb, &["--engine", "libbpf"]);
    sb.agent = Some(first);
    assert!(said.contains("(redirect loaded by libbpf)"), "{said}");
    let programs = attached(&sb.cgroup);
    assert_eq!(
        programs.len(),
        mesh_agent::pins::linked_programs(mesh_agent::Variant::Netns).len(),
        "the C sock_ops beside aya's other programs, one per pinned link: {programs:?}"
    );
    let (ok, out) = output(agent(&sb, &["status", "--cgroup", sb.cgroup.to_str().unwrap()]));
    assert!(
        ok && out.contains("redirect loaded by libbpf") && out.contains("each mesh program attached once"),
        "{out}"
    );

    // Killed and restarted (with no engine named): the pins are adopted as the C twin's.
    let mut first = sb.agent.take().unwrap();
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(attached(&sb.cgroup), programs, "still attached with the agent dead");
    let (second, said) = serve(&sb);
    sb.agent = Some(second);
    assert!(said.contains("redirect loaded by libbpf"), "{said}");
    assert_eq!(attached(&sb.cgroup), programs, "each program once");
    let (ok, out) = output(agent(&sb, &["status", "--json"]));
    assert!(ok, "{out}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["engine"], "libbpf", "{status}");

    // Stopped: everything detached and unpinned, as with aya.
    let mut second = sb.agent.take().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert!(second.wait().unwrap().success());
    assert!(!sb.pins.exists(), "pins removed");
    assert_eq!(attached(&sb.cgroup), Vec::<String>::new());

    // Both engines load on this kernel, and the kernel reports on each program.
    let mut engines = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
    engines.args(["engines", "--runs", "1", "--json"]);
    let (ok, out) = output(engines);
    assert!(ok, "{out}");
    let loaded: Value = serde_json::from_str(&out).unwrap();
    let rows = loaded.as_array().unwrap();
    assert_eq!(rows.len(), 4, "two programs, two engines: {loaded}");
    for r in rows {
        assert!(r["xlated_insns"].as_u64().unwrap() > 0 && r["object_bytes"].as_u64().unwrap() > 0, "{r}");
    }
}

// ANCHOR: telemetry_test
#[test]
fn flow_records_count_every_byte_and_the_metrics_pass_promtool() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !common::root_or_skip("flow_records_count_every_byte_and_the_metrics_pass_promtool") {
        return;
    }
    let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("promtool (Debian package prometheus) is missing: run scripts/setup.sh");
    let tag = format!("sidecarless-telemetry-test-{}", std::process::id());
    let mut sb = Sandbox::new(&tag);
    fs::create_dir(&sb.cgroup).unwrap();
    let (child, said) = serve_with(&sb, &["--metrics", "127.0.0.1:0"]);
    sb.agent = Some(child);
    let metrics: std::net::SocketAddr = said
        .lines()
        .find_map(|l| {
            l.strip_prefix("mesh-agent: metrics at http://")?.strip_suffix("/metrics")?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no metrics address in: {said}"));

    // `observe --follow` started before the traffic prints its flow as it arrives.
    let mut follower = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .args(["observe", "--follow", "-o", "json", "--flow-log"])
        .arg(sb.flow_log())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, followed) = mpsc::channel::<String>();
    let out = follower.stdout.take().unwrap();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });

    // A client in the cgroup writes 100,000 bytes to a server outside it (so they go by TCP),
    // then reads to the end: the server answers 23,456 bytes and closes first.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let script = format!(
        "echo 0 > {}/cgroup.procs && exec 3<>/dev/tcp/127.0.0.1/{port} && head -c 100000 /dev/zero >&3 && cat <&3 | wc -c",
        sb.cgroup.display()
    );
    let client = Command::new("bash").args(["-c", &script]).stdout(Stdio::piped()).spawn().unwrap();
    let (mut conn, _) = listener.accept().unwrap();
    let mut got = vec![0u8; 100_000];
    conn.read_exact(&mut got).unwrap();
    std::io::Write::write_all(&mut conn, &vec![7u8; 23_456]).unwrap();
    drop(conn);
    let out = client.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "23456");

    // Its flow record: exactly those bytes, both ways, all through TCP.
    let deadline = Instant::now() + Duration::from_secs(10);
    let flow = loop {
        let log = fs::read_to_string(sb.flow_log()).unwrap_or_default();
        let found = log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|mut v| {
            let f = v.get_mut("flow")?.take();
            (f["destination"]["port"] == port).then_some(f)
        });
        match found {
            Some(f) => break f,
            None if Instant::now() > deadline => panic!("no flow record for port {port}: {log}"),
            None => thread::sleep(Duration::from_millis(100)),
        }
    };
    eprintln!("flow record: {flow}");
    assert_eq!(flow["reporter"], "client", "{flow}");
    assert_eq!(flow["bytes"], serde_json::json!({ "to_server": 100000, "to_client": 23456 }), "{flow}");
    assert_eq!((flow["path"].as_str(), flow["verdict"].as_str()), (Some("tcp"), Some("allowed")), "{flow}");
    assert!(flow["srtt_us"].as_u64() > Some(0) && flow["rtt_samples"].as_u64() > Some(0), "{flow}");

    let line = followed.recv_timeout(Duration::from_secs(10)).expect("observe --follow printed the flow");
    let _ = (follower.kill(), follower.wait());
    assert!(line.contains(&format!("\"port\":{port}")) && line.contains("\"to_client\":23456"), "{line}");

    // `mesh-agent observe` finds it by port.
    let mut observed = Command::new(env!("CARGO_BIN_EXE_mesh-agent"));
    observed.args(["observe", "--port", &port.to_string(), "-o", "json", "--flow-log"]).arg(sb.flow_log());
    let (ok, text) = output(observed);
    assert!(ok && text.contains("\"to_client\":23456"), "{text}");

    // The metrics count it, and promtool accepts them.
    let mut s = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let series = format!(
        "mesh_tcp_bytes_total{{reporter=\"client\",source=\"loopback\",destination=\"loopback\",destination_port=\"{port}\",direction=\"to_server\",path=\"tcp\"}} 100000"
    );
    assert!(body.contains(&series), "{series} not in:\n{body}");
    let mut check = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), body.as_bytes()).unwrap();
    let checked = check.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}
// ANCHOR_END: telemetry_test
