//! The `mesh-agent` binary on the running kernel: attach to a cgroup, count a connection that
//! has no local peer (its message must pass, intact), then detach and unpin on SIGTERM.
//!
//! Needs root; skips visibly without it unless SIDECARLESS_REQUIRE_ROOT_TESTS=1.
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

use serde_json::Value;

/// Removes the test's cgroup and pins and kills the agent, even when an assertion fails.
struct Sandbox {
    cgroup: PathBuf,
    pins: PathBuf,
    agent: Option<Child>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        let _ = fs::remove_dir_all(&self.pins);
        let _ = fs::remove_dir(&self.cgroup);
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var("SIDECARLESS_REQUIRE_ROOT_TESTS").as_deref() != Ok("1"),
            "needs root, and SIDECARLESS_REQUIRE_ROOT_TESTS=1 forbids skipping"
        );
        eprintln!("SKIPPED agent_counts_passes_and_cleans_up_on_sigterm: needs root");
        return;
    }
    let tag = format!("sidecarless-agent-test-{}", std::process::id());
    let mut sb =
        Sandbox { cgroup: cgroup2_root().join(&tag), pins: Path::new("/sys/fs/bpf").join(&tag), agent: None };
    fs::create_dir(&sb.cgroup).unwrap();

    let mut agent = Command::new(env!("CARGO_BIN_EXE_mesh-agent"))
        .arg("run")
        .arg("--cgroup")
        .arg(&sb.cgroup)
        .arg("--pin-dir")
        .arg(&sb.pins)
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
        assert!(sb.pins.join(map).exists(), "{map} pinned");
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
    let attached =
        Command::new("bpftool").arg("-j").arg("cgroup").arg("show").arg(&sb.cgroup).output().unwrap();
    assert!(attached.status.success(), "bpftool: {}", String::from_utf8_lossy(&attached.stderr));
    // bpftool prints nothing at all for a cgroup without programs.
    let text = String::from_utf8_lossy(&attached.stdout);
    let attached: Value =
        if text.trim().is_empty() { Value::Array(vec![]) } else { serde_json::from_str(&text).unwrap() };
    assert_eq!(attached, Value::Array(vec![]), "no program left on the cgroup");
}
