//! The host backend end to end, on the running kernel: real namespaces, cgroups, eBPF programs.
//!
//! Needs root, cgroup v2 and bpffs. Without root each test prints SKIPPED and returns, unless
//! SIDECARLESS_REQUIRE_ROOT_TESTS=1 (set by scripts/test.sh and CI), where that is a failure.
//! The tests share the kernel, so they take a lock and run one at a time.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

static KERNEL: Mutex<()> = Mutex::new(());

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lab-runner")
}

/// `true` when the test may touch the kernel; prints why not otherwise.
fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("SIDECARLESS_REQUIRE_ROOT_TESTS").is_ok_and(|v| v == "1") {
        panic!("{test}: needs root, and SIDECARLESS_REQUIRE_ROOT_TESTS=1 forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (namespaces, cgroups, eBPF)");
    false
}

/// What a lab with this id could have left: netns, cgroup, pins, processes.
fn remains_of(lab: &str) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(rd) = fs::read_dir("/run/netns") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("slab-{lab}-")) {
                left.push(format!("netns {name}"));
            }
        }
    }
    let cgroup2 = fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f[2] == "cgroup2").then(|| f[1].to_owned())
        })
        .expect("cgroup2 mounted");
    for dir in [
        format!("{cgroup2}/sidecarless-lab/{lab}"),
        format!("/sys/fs/bpf/sidecarless-lab/{lab}"),
    ] {
        if Path::new(&dir).exists() {
            left.push(dir);
        }
    }
    left.extend(workload_processes());
    left
}

/// Live processes running our workloads (`lab-runner workload ...`).
fn workload_processes() -> Vec<String> {
    let me = bin();
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<_> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let zombie = fs::read_to_string(e.path().join("stat")).is_ok_and(|s| s.contains(") Z "));
        if !zombie && args.len() > 1 && Path::new(&args[0]) == me && args[1] == "workload" {
            out.push(format!(
                "process {} {}",
                e.file_name().to_string_lossy(),
                args.join(" ")
            ));
        }
    }
    out
}

/// Reads the child's stdout until a line containing `marker` appears.
fn wait_for_line(child: &mut Child, marker: &str, timeout: Duration) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = marker.to_owned();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(&wanted) {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(timeout)
        .unwrap_or_else(|_| panic!("no line with {marker:?} within {timeout:?}"));
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lab-runner did not exit within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sockmap_redirects_and_leaves_nothing_behind() {
    let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    if !root_or_skip("sockmap_redirects_and_leaves_nothing_behind") {
        return;
    }
    let out = Command::new(bin())
        .args(["scenario", "sockmap", "--backend", "host", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["passed"], true);
    let r = &v["report"];
    // The kernel redirected messages: 20,000 round trips = 40,000 messages, plus the warm-up.
    let redirected = r["sockmap"]["mesh"]["msg_redirected"].as_u64().unwrap();
    assert!(redirected >= 40_000, "redirected {redirected}");
    assert!(r["ipv6"]["mesh"]["msg_redirected"].as_u64().unwrap() > 0);
    assert!(r["sockmap"]["mesh"]["sockets_inserted"].as_u64().unwrap() >= 2);
    // Without the mesh every message is a packet on both pods' interfaces; with it, almost none.
    let plain = r["plain"]["packets"].as_u64().unwrap();
    let mesh = r["sockmap"]["packets"].as_u64().unwrap();
    assert!(
        plain >= 80_000,
        "plain run put only {plain} packets on the wire"
    );
    assert!(
        mesh * 100 <= plain,
        "mesh run: {mesh} packets vs {plain} plain"
    );
    assert_eq!(r["plain"]["mesh"]["msg_redirected"], 0);
    let lab = r["lab"].as_str().unwrap();
    assert_eq!(remains_of(lab), Vec::<String>::new());
}

#[test]
fn sigint_during_the_mesh_run_tears_everything_down() {
    let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    if !root_or_skip("sigint_during_the_mesh_run_tears_everything_down") {
        return;
    }
    let mut child = Command::new(bin())
        .args([
            "scenario",
            "sockmap",
            "--backend",
            "host",
            "--round-trips",
            "300000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lab = format!("{}-0", child.id());
    // Interrupt while the programs are attached, the maps pinned and rr is running.
    wait_for_line(&mut child, "== sockmap", Duration::from_secs(120));
    thread::sleep(Duration::from_millis(300));
    let pins = format!("/sys/fs/bpf/sidecarless-lab/{lab}/SOCKETS");
    assert!(
        Path::new(&pins).exists(),
        "mesh maps should be pinned at {pins} mid-run"
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    assert_eq!(remains_of(&lab), Vec::<String>::new());
}

#[test]
fn clean_removes_what_a_killed_lab_left() {
    let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    if !root_or_skip("clean_removes_what_a_killed_lab_left") {
        return;
    }
    let mut child = Command::new(bin())
        .args([
            "scenario",
            "sockmap",
            "--backend",
            "host",
            "--round-trips",
            "300000",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lab = format!("{}-0", child.id());
    wait_for_line(&mut child, "== sockmap", Duration::from_secs(120));
    thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // The pods' processes die with their owner (PR_SET_PDEATHSIG); the rest stays behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !workload_processes().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(workload_processes(), Vec::<String>::new());
    let left = remains_of(&lab);
    assert!(
        left.iter().any(|l| l.starts_with("netns")),
        "expected leftovers, got {left:?}"
    );
    assert!(
        left.iter().any(|l| l.contains("/sys/fs/bpf/")),
        "expected pins left, got {left:?}"
    );

    let out = Command::new(bin())
        .args(["clean", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = v["found"].as_array().unwrap();
    assert!(found.len() >= 5, "clean found {found:?}"); // 3 netns, cgroup, pins
    assert_eq!(remains_of(&lab), Vec::<String>::new());
    // And it is idempotent.
    let out = Command::new(bin()).arg("clean").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "nothing to clean"
    );
}
