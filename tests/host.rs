//! The host backend end to end, on the running kernel: real namespaces, cgroups, eBPF programs.
//!
//! Needs root, cgroup v2 and bpffs. Without root each test fails, or prints SKIPPED and passes
//! where SIDECARLESS_ALLOW_SKIP=1 (tests/common).
//! The tests share the kernel, so they take a lock and run one at a time.
//!
//! Over 600 lines on purpose: one test binary per suite that touches the kernel, so that
//! `.config/nextest.toml` can serialize them by binary (host, agent, vm); each test is one
//! scenario end to end.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

mod common;
use common::root_or_skip;

use serde_json::Value;

static KERNEL: Mutex<()> = Mutex::new(());

fn bin() -> std::path::PathBuf {
    assert_cmd::cargo::cargo_bin("lab-runner")
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
        format!("/run/sidecarless-lab/{lab}"),
    ] {
        if Path::new(&dir).exists() {
            left.push(dir);
        }
    }
    left.extend(workload_processes());
    left
}

/// Live processes running our workloads or the mesh agent (`lab-runner workload|mesh-agent ...`).
fn workload_processes() -> Vec<String> {
    let me = bin();
    let mut out = Vec::new();
    for (pid, args) in lab_sandbox::process::running() {
        if args.len() > 1
            && Path::new(&args[0]) == me
            && ["workload", "mesh-agent"].contains(&args[1].as_str())
        {
            out.push(format!("process {pid} {}", args.join(" ")));
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
    rx.recv_timeout(timeout).unwrap_or_else(|_| panic!("no line with {marker:?} within {timeout:?}"));
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

/// Runs a shipped scenario on the host and returns its outcome, which must be a pass.
fn passed_on_host(scenario: &str, extra: &[&str]) -> Value {
    let out = Command::new(bin())
        .args(["scenario", scenario, "--backend", "host", "--json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // What failed first (the full outcome after it is long).
    let brief = serde_json::from_slice::<Value>(&out.stdout)
        .map(|v| {
            format!(
                "failures: {}\nworkload errors: {}\nunexplained cases: {:#}",
                v["failures"],
                v["report"]["errors"],
                unexplained(&v)
            )
        })
        .unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{brief}\nstderr: {stderr}\nstdout: {stdout}");
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object on stdout");
    assert_eq!(v["passed"], true, "{}", v["failures"]);
    // The JSON is the engine's typed report: it reads back as one, NaN (null) figures included.
    let typed: lab_scenario::Outcome =
        serde_json::from_value(v.clone()).expect("the outcome reads back typed");
    assert_eq!(typed.report.lab, v["report"]["lab"].as_str().unwrap());
    v
}

/// Conformance cases of mesh runs whose verdict is neither `same` nor a known kernel bug.
fn unexplained(v: &Value) -> Value {
    let runs = v["report"]["conform"].as_array().cloned().unwrap_or_default();
    runs.iter()
        .filter(|r| r["name"].as_str().is_some_and(|n| n.contains("sockmap")))
        .flat_map(|r| {
            r["cases"].as_array().cloned().unwrap_or_default().into_iter().filter_map(move |c| {
                let v = c["verdict"].as_str().unwrap_or("");
                (v != "same" && v != "kernel bug")
                    .then(|| serde_json::json!({ "run": r["name"], "family": r["family"], "case": c }))
            })
        })
        .collect()
}

#[test]
fn sockmap_redirects_and_leaves_nothing_behind() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("sockmap_redirects_and_leaves_nothing_behind") {
        return;
    }
    let v = passed_on_host("sockmap", &["--repetitions", "3", "--round-trips", "2000"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    let stats = &v["report"]["stats"];
    // All four data paths ran, in one lab, three times each, every measure.
    for run in ["direct", "sidecars", "sidecars+sockmap", "sockmap"] {
        for key in ["p50", "p50_4k", "p50_64k", "mb_s", "mb_s_4", "cpu_s_per_gb", "conn_s"] {
            assert!(get(run, key) > 0.0, "{run}.{key}");
            let s = &stats[format!("{run}.{key}")];
            assert_eq!(s["n"], 3, "{run}.{key}: {s}");
            assert_eq!(s["samples"].as_array().unwrap().len(), 3);
        }
    }
    // Ratios are per repetition, with an interval around their median.
    let ratio = &stats["sockmap_vs_direct.value"];
    let (lo, m, hi) =
        (ratio["lo"].as_f64().unwrap(), ratio["median"].as_f64().unwrap(), ratio["hi"].as_f64().unwrap());
    assert!(lo <= m && m <= hi && lo > 0.0, "{ratio}");
    assert_eq!(get("sockmap_vs_direct", "value"), m);
    for c in v["report"]["checks"].as_array().unwrap() {
        let verdict = c["verdict"].as_str().unwrap();
        assert!(["holds", "fails", "inconclusive"].contains(&verdict), "{c}");
        assert_eq!(c["passed"], verdict == "holds", "{c}");
    }
    // The machine is in the report.
    assert_eq!(
        v["report"]["machine"]["cpus"].as_u64(),
        std::thread::available_parallelism().ok().map(|n| n.get() as u64)
    );
    // The kernel redirected messages: 3 x 2,000 round trips = 12,000 messages.
    assert!(get("sockmap", "msg_redirected") >= 12_000.0);
    assert!(get("sockmap-ipv6", "msg_redirected") > 0.0);
    // With sidecars, the four app <-> proxy hops of each round trip were redirected.
    assert!(get("sidecars+sockmap", "msg_redirected") >= 24_000.0);
    assert_eq!(get("direct", "msg_redirected"), 0.0);
    assert_eq!(get("sidecars", "proxies"), 2.0);
    // Without the mesh every message is a packet on both pods' interfaces; with it, almost none.
    let (plain, mesh) = (get("direct", "packets"), get("sockmap", "packets"));
    assert!(plain >= 24_000.0, "direct run put only {plain} packets on the wire");
    assert!(mesh * 100.0 <= plain, "mesh run: {mesh} packets vs {plain} direct");
    let lab = v["report"]["lab"].as_str().unwrap();
    assert_eq!(remains_of(lab), Vec::<String>::new());
}

#[test]
fn conformance_shows_no_unexplained_difference_and_isolates_pods() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("conformance_shows_no_unexplained_difference_and_isolates_pods") {
        return;
    }
    let v = passed_on_host("conformance", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    let cases = workloads::conform::CASES.len() as f64;
    for run in ["direct", "sockmap", "sidecars", "sidecars+sockmap"] {
        assert_eq!(get(run, "cases"), 2.0 * cases, "{run}: every case, IPv4 and IPv6");
    }
    // Through the mesh: nothing differs but the kernel's known departures, and the data
    // really took the redirect.
    assert_eq!(get("sockmap", "differences"), 0.0);
    assert_eq!(get("sidecars+sockmap", "differences"), 0.0);
    assert!(get("sockmap", "msg_redirected") > 10_000.0);
    assert!(get("sidecars+sockmap", "msg_redirected") > 10_000.0);
    // Every case of every mesh run has a verdict, and each verdict that is not "same" names
    // a known kernel bug.
    for run in v["report"]["conform"].as_array().unwrap() {
        if !run["name"].as_str().unwrap().contains("sockmap") {
            continue;
        }
        for c in run["cases"].as_array().unwrap() {
            let verdict = c["verdict"].as_str().unwrap();
            assert!(verdict == "same" || verdict == "kernel bug", "{}: {c}", run["name"]);
        }
    }
    // The connection opened before the mesh kept its bytes; half-closing clients never saw
    // EAGAIN (the mesh takes them out of the map); pods holding the same loopback 4-tuple
    // never saw each other's bytes.
    assert_eq!(get("direct", "held_ok"), 1.0);
    let half = v["report"]["conform"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|run| run["name"] == "sockmap")
        .flat_map(|run| run["cases"].as_array().unwrap().iter())
        .filter(|c| c["case"] == "half-close-client-x1000")
        .map(|c| c["client"][0].as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    assert_eq!(half, ["1000 of 1000 half-closed requests echoed intact"; 2]);
    assert!(get("loopback", "bytes") > 0.0);
    assert_eq!(get("loopback", "errors"), 0.0);
    assert_eq!(get("loopback", "foreign_bytes"), 0.0);
    let lab = v["report"]["lab"].as_str().unwrap();
    assert_eq!(remains_of(lab), Vec::<String>::new());
}

/// Starts a scenario that turns the mesh on and then runs a long benchmark, and returns once
/// that benchmark runs, with the lab's id.
fn start_long_mesh_run() -> (Child, String) {
    let mut child = Command::new(bin())
        .arg("scenario")
        .arg(long_mesh_scenario())
        .args(["--backend", "host"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lab = format!("{}-0", child.id());
    wait_for_line(&mut child, "== long", Duration::from_mins(2));
    thread::sleep(Duration::from_millis(300));
    (child, lab)
}

/// A scenario that turns the mesh on and then runs a long benchmark, to interrupt.
fn long_mesh_scenario() -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("slab-long-{}.toml", std::process::id()));
    fs::write(
        &path,
        r#"name = "long-mesh"
summary = "mesh on, then a long benchmark"
[[pods]]
name = "client"
[[pods]]
name = "server"
workload = { kind = "rr-server", port = 7000 }
[[steps]]
do = "bench"
from = "client"
to = "server"
port = 7000
round_trips = 3000000
repetitions = 1
paths = [{ name = "long", mesh = "on" }]
"#,
    )
    .unwrap();
    path
}

#[test]
fn sigint_during_the_mesh_run_tears_everything_down() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("sigint_during_the_mesh_run_tears_everything_down") {
        return;
    }
    // Interrupt while the programs are attached, the maps pinned and rr is running.
    let (mut child, lab) = start_long_mesh_run();
    let pins =
        format!("/sys/fs/bpf/sidecarless-lab/{lab}/layout-{}/SOCKETS", mesh_agent::pins::LAYOUT_VERSION);
    assert!(Path::new(&pins).exists(), "mesh maps should be pinned at {pins} mid-run");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(130));
    assert_eq!(remains_of(&lab), Vec::<String>::new());
}

#[test]
fn clean_removes_what_a_killed_lab_left() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("clean_removes_what_a_killed_lab_left") {
        return;
    }
    // Interrupt while the programs are attached, the maps pinned and rr is running.
    let (mut child, lab) = start_long_mesh_run();
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    // The pods' processes die with their owner (PR_SET_PDEATHSIG); the rest stays behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !workload_processes().is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(workload_processes(), Vec::<String>::new());
    let left = remains_of(&lab);
    assert!(left.iter().any(|l| l.starts_with("netns")), "expected leftovers, got {left:?}");
    assert!(left.iter().any(|l| l.contains("/sys/fs/bpf/")), "expected pins left, got {left:?}");

    let out = Command::new(bin()).args(["clean", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let found = v["found"].as_array().unwrap();
    assert!(found.len() >= 5, "clean found {found:?}"); // 3 netns, cgroup, pins
    assert_eq!(remains_of(&lab), Vec::<String>::new());
    // And it is idempotent.
    let out = Command::new(bin()).arg("clean").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nothing to clean");
}

#[test]
fn sidecar_baseline_prints_ratios_and_proxy_memory_and_writes_reports() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("sidecar_baseline_prints_ratios_and_proxy_memory_and_writes_reports") {
        return;
    }
    let results = std::env::temp_dir().join(format!("slab-results-{}", std::process::id()));
    let out = Command::new(bin())
        .args(["scenario", "sidecar-baseline", "--backend", "host", "--repetitions", "3", "--results"])
        .arg(&results)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let summary = &stdout[stdout.find("== summary").expect("a summary")..];
    // Rows for the four configurations, the per-proxy memory, the ratios, the extrapolation,
    // the memory of 30 proxies beside the mesh's.
    for row in [
        "direct",
        "sidecars",
        "per-node",
        "mesh",
        "sidecars_vs_direct",
        "per_node_vs_direct",
        "fleet_proxy_gb",
        "proxies_mb",
        "mesh_mb",
        "mesh_vs_proxies_memory",
    ] {
        assert!(summary.lines().any(|l| l.trim_start().starts_with(row)), "no {row} row in:\n{summary}");
    }
    let sidecars = summary.lines().find(|l| l.trim_start().starts_with("sidecars ")).unwrap();
    assert!(sidecars.contains("KiB"), "per-proxy RSS missing: {sidecars}");
    // The result files.
    let dir = fs::read_dir(results.join("sidecar-baseline")).unwrap().flatten().next().unwrap().path();
    let md = fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(md.contains("| sidecars | sidecars per pod |"), "{md}");
    assert!(md.contains("![latency percentiles](latency.svg)"));
    let svg = fs::read_to_string(dir.join("latency.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 4);
    let outcome: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("outcome.json")).unwrap()).unwrap();
    let r = &outcome["report"]["results"];
    assert!(r["sidecars"]["proxy_rss_kb"].as_f64().unwrap() > 100.0);
    // Memory: 30 proxies' resident memory, and the one agent's beside it (its own and its maps').
    assert_eq!(r["sidecars"]["proxies"].as_f64(), Some(30.0));
    assert!(r["sidecars"]["proxy_rss_total_kb"].as_f64().unwrap() > 30.0 * 100.0, "{}", r["sidecars"]);
    assert!(r["mesh"]["agent_rss_kb"].as_f64().unwrap() > 100.0, "{}", r["mesh"]);
    assert!(r["mesh"]["map_kb"].as_f64().unwrap() > 1000.0, "{}", r["mesh"]);
    assert!(r["mesh_vs_proxies_memory"]["value"].as_f64().unwrap() > 0.0);
    fs::remove_dir_all(results).unwrap();
    assert_eq!(remains_of(outcome["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

/// Sends SIGINT to a lab-runner when the test fails before it exits, so its lab is torn down
/// instead of waiting for a key that never comes.
struct InterruptOnPanic(u32);

impl Drop for InterruptOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(self.0 as i32, libc::SIGINT) };
            thread::sleep(Duration::from_secs(5));
        }
    }
}

/// A pseudo-terminal whose output is collected in the background.
struct Pty {
    master: fs::File,
    seen: std::sync::Arc<Mutex<String>>,
}

impl Pty {
    fn spawn(cmd: &mut Command) -> (Pty, std::process::Child) {
        use std::os::fd::{FromRawFd, OwnedFd};
        let (mut m, mut s) = (0, 0);
        // SAFETY: openpty fills two fds we then own.
        assert_eq!(
            unsafe {
                libc::openpty(
                    &raw mut m,
                    &raw mut s,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    std::ptr::null(),
                )
            },
            0
        );
        // The master stays with the test: a child holding it would never see its terminal close.
        // SAFETY: fcntl on a fresh fd we own.
        unsafe { libc::fcntl(m, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: fresh fds from openpty.
        let (master, slave) = unsafe { (fs::File::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
        let child = cmd
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let seen = std::sync::Arc::new(Mutex::new(String::new()));
        let (mut r, sink) = (master.try_clone().unwrap(), seen.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut r, &mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        (Pty { master, seen }, child)
    }

    fn text(&self) -> String {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the output holds `n` occurrences of `needle`.
    fn wait_count(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.text().matches(needle).count() < n {
            assert!(Instant::now() < deadline, "waited for {n} x {needle:?}; got:\n{}", self.text());
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, keys: &str) {
        std::io::Write::write_all(&mut self.master, keys.as_bytes()).unwrap();
    }
}

#[test]
fn guided_mode_pauses_after_each_step_until_a_key_is_pressed() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("guided_mode_pauses_after_each_step_until_a_key_is_pressed") {
        return;
    }
    const PROMPT: &str = "-- Enter: next step, q: stop here --";
    let mut cmd = Command::new(bin());
    cmd.args([
        "scenario",
        "sockmap",
        "--backend",
        "host",
        "--step",
        "--round-trips",
        "500",
        "--repetitions",
        "2",
    ]);
    let (mut pty, mut child) = Pty::spawn(&mut cmd);
    let _stop = InterruptOnPanic(child.id());
    // Step 1 ran, with its explanation rendered in full and the commands to try.
    pty.wait_count(PROMPT, 1, Duration::from_mins(1));
    let first = pty.text();
    assert!(first.contains("== direct") && first.contains("try: ip -n slab-"), "{first}");
    // It really waits: no second step without a key.
    thread::sleep(Duration::from_millis(1500));
    assert!(!pty.text().contains("== sidecars"), "went on without a key:\n{}", pty.text());
    pty.send("\n");
    pty.wait_count(PROMPT, 2, Duration::from_mins(1));
    assert!(pty.text().contains("== sidecars"), "{}", pty.text());
    pty.send("\n");
    pty.wait_count(PROMPT, 3, Duration::from_mins(1));
    // q stops the scenario: interrupted, lab torn down.
    pty.send("q\n");
    let status = wait_exit(&mut child, Duration::from_mins(1));
    assert_eq!(status.code(), Some(130), "{}", pty.text());
    let lab = pty.text().lines().find_map(|l| l.strip_prefix("lab ").map(|s| s.trim().to_owned())).unwrap();
    assert_eq!(remains_of(&lab), Vec::<String>::new());
}

#[test]
fn a_missing_requirement_is_a_visible_skip_with_the_reason() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("a_missing_requirement_is_a_visible_skip_with_the_reason") {
        return;
    }
    let path = std::env::temp_dir().join(format!("slab-future-{}.toml", std::process::id()));
    fs::write(
        &path,
        "name = \"future\"\nsummary = \"needs a kernel from the future\"\n[requires]\nkernel = \"99.0\"\n\
         programs = [\"sock_ops\"]\ntools = [\"no-such-tool\"]\n[[pods]]\nname = \"a\"\n\
         [[steps]]\ndo = \"explain\"\ntitle = \"t\"\ntext = \"never shown\"\n",
    )
    .unwrap();
    let out = Command::new(bin()).arg("scenario").arg(&path).args(["--backend", "host"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{stdout}");
    assert!(stdout.contains("is older than 99.0"), "{stdout}");
    assert!(stdout.contains("no-such-tool is not installed"), "{stdout}");
    assert!(!stdout.contains("the kernel refuses sock_ops"), "sock_ops is supported here: {stdout}");
    assert!(stdout.contains("SKIPPED"), "{stdout}");
    assert!(!stdout.contains("never shown"), "nothing ran: {stdout}");
    fs::remove_file(path).unwrap();
}

#[test]
fn the_lab_agrees_with_sockperf_and_iperf3() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("the_lab_agrees_with_sockperf_and_iperf3") {
        return;
    }
    let v = passed_on_host("crosscheck", &["--pin", "--repetitions", "5"]);
    let stats = &v["report"]["stats"];
    let r = &v["report"]["results"];
    // sockperf's p50 round trip (twice its one-way figure) against rr's, per repetition, on the
    // direct path; through the mesh the same checks ran and did not fail. The scenario reports
    // how close they are (10% is its benchmark target); the test only holds them to the same
    // order, which a broken client (a lost factor of 2, a wrong unit) would not be: a 2-vCPU
    // CI machine once put iperf3 11% above stream.
    let ratio = stats["sockperf_vs_rr.value"]["median"].as_f64().unwrap();
    assert!((0.75..=1.33).contains(&ratio), "sockperf / rr p50 = {ratio}: {}", stats["sockperf_vs_rr.value"]);
    // iperf3's throughput against stream's, the same way.
    let ratio = stats["iperf3_vs_stream.value"]["median"].as_f64().unwrap();
    assert!((0.75..=1.33).contains(&ratio), "iperf3 / stream = {ratio}: {}", stats["iperf3_vs_stream.value"]);
    for path in ["direct", "sockmap"] {
        assert_eq!(stats[format!("{path}.sockperf_p50")]["n"], 5, "{path}");
        assert!(r[path]["iperf3_mb_s"].as_f64().unwrap() > 0.0, "{path}: iperf3 measured");
    }
    assert!(r["sockmap"]["msg_redirected"].as_f64().unwrap() > 0.0);
    assert_eq!(v["report"]["machine"]["pinned"], true);
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn agent_restart_keeps_the_datapath_and_adopts_it() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("agent_restart_keeps_the_datapath_and_adopts_it") {
        return;
    }
    let v = passed_on_host("agent-restart", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // Under load, across the SIGKILL and the restart: not one failed round trip.
    assert!(get("rr", "round_trips") > 1000.0, "{}", r["rr"]);
    assert_eq!(get("rr", "failed"), 0.0, "{}", r["rr"]);
    // With the agent dead: balanced over all backends, inserted and redirected.
    assert_eq!((get("down", "connections"), get("down", "backends")), (300.0, 3.0));
    assert!(get("down", "inserted") >= 600.0, "{}", r["down"]);
    // The new agent adopted every link and the four services; each program once.
    let links = mesh_agent::pins::linked_programs(mesh_agent::Variant::Netns).len() as f64;
    assert_eq!(
        (get("restart", "adopted"), get("restart", "links"), get("restart", "services")),
        (1.0, links, 4.0)
    );
    assert_eq!(get("restart", "attached_once"), 1.0);
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn the_book_exercises_answers_hold_on_this_kernel() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("the_book_exercises_answers_hold_on_this_kernel") {
        return;
    }
    // The answers are the file's expect steps; the scenario passing is the book being right.
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../book/exercises/counters.toml");
    let v = passed_on_host(file, &[]);
    let r = &v["report"]["results"];
    assert_eq!(r["pod"]["inserted"], 600.0, "{r}");
    assert_eq!(r["udp"]["msg_redirected"], 0.0, "{r}");
    // This kernel (>= 5.18): the errno the book gives for it.
    assert_eq!(r["nowhere"]["errno"], 111.0, "{r}");
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
    // Exercise 6: with the C twin loading the redirect, the same checks hold and every step
    // inserted the same sockets.
    let c = passed_on_host(file, &["--engine", "libbpf"]);
    let rc = &c["report"]["results"];
    for step in ["pod", "service", "udp", "nowhere"] {
        assert_eq!(rc[step]["inserted"], r[step]["inserted"], "{step}: {rc} vs {r}");
    }
    assert_eq!(remains_of(c["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn policy_denies_every_bypass_and_cuts_revoked_connections() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("policy_denies_every_bypass_and_cuts_revoked_connections") {
        return;
    }
    let v = passed_on_host("policy", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // Allowed: through the service and to the pod address; backend -> db.
    for run in ["service", "pod", "backend_to_db"] {
        assert_eq!(get(run, "errors"), 0.0, "{run}: {}", r[run]);
    }
    // Denied with EPERM, before any connection exists: IPv4, IPv6, mapped, UDP, after revocation.
    for run in ["to_db", "to_db6", "to_db_mapped", "to_db_udp", "revoked"] {
        assert_eq!(get(run, "errors"), 20.0, "{run}: {}", r[run]);
        assert_eq!(get(run, "errno"), 1.0, "{run}: {}", r[run]);
        assert_eq!(get(run, "inserted"), 0.0, "{run}: {}", r[run]);
    }
    // A process outside the mesh (frontend's namespace, not its cgroup): its SYNs to db are
    // dropped by db's ingress check (nobody answers: ETIMEDOUT); to backend they pass.
    assert_eq!(get("outside_to_db", "errors"), 3.0, "{}", r["outside_to_db"]);
    assert_eq!(get("outside_to_db", "errno"), 110.0, "{}", r["outside_to_db"]);
    assert!(get("outside_to_db", "ingress_denied") >= 3.0, "{}", r["outside_to_db"]);
    assert_eq!(get("outside_to_backend", "errors"), 0.0, "{}", r["outside_to_backend"]);
    // Revocation cuts established connections at their next message, redirected or not.
    for run in ["established", "established_outside"] {
        assert!(get(run, "round_trips") >= 4.0, "{run}: {}", r[run]);
        assert_eq!(get(run, "failed"), 4.0, "{run}: {}", r[run]);
    }
    assert!(get("established", "message_denied") >= 4.0, "{}", r["established"]);
    // HTTP in sk_msg: GET under /api answered; another method, another path, `..` denied with
    // EACCES; a request line split across writes judged whole; pipelining refused; a client
    // outside the mesh never gets a connection to a port with HTTP rules.
    assert_eq!((get("http_get", "ok"), get("http_get", "failed")), (3.0, 0.0), "{}", r["http_get"]);
    assert_eq!((get("http_post", "ok"), get("http_post", "failed")), (1.0, 1.0), "{}", r["http_post"]);
    assert_eq!(get("http_post", "errno"), 13.0, "{}", r["http_post"]);
    for run in ["http_admin", "http_dots"] {
        assert_eq!(
            (get(run, "ok"), get(run, "failed"), get(run, "http_denied")),
            (0.0, 1.0, 1.0),
            "{run}: {}",
            r[run]
        );
    }
    // This kernel (6.18) runs the program again on a corked message: the split line is judged.
    assert_eq!((get("http_split", "ok"), get("http_split", "failed")), (2.0, 0.0), "{}", r["http_split"]);
    assert_eq!((get("http_split_admin", "ok"), get("http_split_admin", "failed")), (0.0, 1.0));
    assert_eq!(get("http_headers_split", "ok"), 2.0, "{}", r["http_headers_split"]);
    assert_eq!(
        (get("http_pipeline", "ok"), get("http_pipeline", "failed")),
        (0.0, 2.0),
        "{}",
        r["http_pipeline"]
    );
    assert_eq!(get("outside_to_api", "errors"), 2.0, "{}", r["outside_to_api"]);
    // The agent applied the mesh file itself (the lab hands it over the control socket): its
    // denial events name the pods on both ends.
    let denials = v["report"]["denials"].as_array().expect("denials in the report");
    assert!(
        denials.iter().any(|d| d["from"]["pods"] == serde_json::json!(["frontend"])
            && d["to"]["pods"] == serde_json::json!(["db"])),
        "no denial names frontend -> db: {denials:?}"
    );
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn service_scale_measures_socket_lb_beside_kube_proxy_and_cleans_up() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("service_scale_measures_socket_lb_beside_kube_proxy_and_cleans_up") {
        return;
    }
    let v = passed_on_host("service-scale", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    for n in [1, 100, 1000, 10000] {
        for mode in ["mesh", "iptables"] {
            let us = get("scale", &format!("{mode}_{n}"));
            assert!(us > 0.0 && us < 100_000.0, "{mode}_{n} = {us}");
        }
    }
    // The ratios exist; their size is the benchmark's business, not a test's.
    assert!(get("mesh_growth", "value") > 0.0 && get("iptables_growth", "value") > 0.0);
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn service_lb_balances_at_connect_and_hides_the_backend() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("service_lb_balances_at_connect_and_hides_the_backend") {
        return;
    }
    let v = passed_on_host("service-lb", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // 3,000 connections to a virtual address nobody has, all made, each backend near a third.
    assert_eq!(get("spread", "connections"), 3000.0);
    assert_eq!(get("spread", "backends"), 3.0);
    assert!(get("spread", "min_ratio") >= 0.8 && get("spread", "max_ratio") <= 1.2, "{}", r["spread"]);
    // getpeername() named the service, over IPv4 and IPv6.
    assert_eq!(get("spread", "peer_is_service"), 1.0);
    assert_eq!(get("spread6", "peer_is_service"), 1.0);
    // Idempotent apply; the canary gone at once; no backend, no connection.
    assert_eq!((get("again", "added"), get("again", "changed"), get("again", "removed")), (0.0, 0.0, 0.0));
    assert_eq!(get("after", "outside"), 0.0);
    assert_eq!(get("refused", "errors"), 10.0);
    // UDP: every socket stuck to one backend, every reply from the service address.
    assert_eq!(
        (get("udp", "backends"), get("udp", "sticky"), get("udp", "peer_is_service")),
        (3.0, 1.0, 1.0)
    );
    // sk_msg judged a request and a response on each balanced connection, and redirected them
    // (a request written before the server's socket entered the map takes TCP: rare, not never).
    assert_eq!(get("spread", "msg_seen"), 6000.0);
    assert!(get("spread", "msg_redirected") >= 5940.0, "{}", r["spread"]);
    // This kernel (>= 5.18) lets the program choose the errno.
    assert_eq!(get("refused", "errno"), 111.0);
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn telemetry_counts_every_byte_and_prometheus_agrees() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("telemetry_counts_every_byte_and_prometheus_agrees") {
        return;
    }
    let v = passed_on_host("telemetry", &["--repetitions", "2", "--round-trips", "2000"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // Both ends of four connections report exactly the bytes the client counted: the request
    // redirected by sk_msg, the answer through TCP.
    assert_eq!((get("redirected", "exact"), get("redirected", "expected_records")), (8.0, 8.0));
    // Every byte on one of the two paths; the requests redirected (a connection whose first
    // write races the server's accept takes TCP throughout: at least three of four redirected).
    let (moved, tcp) = (get("redirected", "redirected_bytes"), get("redirected", "tcp_bytes"));
    assert_eq!(moved + tcp, 4_400_032.0, "{}", r["redirected"]);
    assert!(moved >= 3_000_024.0, "{}", r["redirected"]);
    // From outside the mesh: only the server reports, all TCP, exact.
    assert_eq!((get("outside", "exact"), get("outside", "records")), (4.0, 4.0));
    assert_eq!(get("outside", "redirected_bytes"), 0.0);
    // A real Prometheus server scraped the agent and agrees with the flow log.
    assert!(get("scraped", "flow_log_bytes") > 8_000_000.0, "{}", r["scraped"]);
    assert_eq!(get("scraped", "bytes"), get("scraped", "flow_log_bytes"), "{}", r["scraped"]);
    assert_eq!(get("scraped", "flows"), get("scraped", "flow_log_flows"), "{}", r["scraped"]);
    // The storm: thousands of connections per second for 10 s, not one record lost.
    assert!(get("storm", "connections") > 10_000.0, "{}", r["storm"]);
    assert_eq!(get("after_storm", "flow_events_lost"), 0.0);
    // netem: run where the kernel has it, else skipped with the reason (this host's kernel has none).
    let skipped = &v["report"]["skipped_steps"];
    match r.get("delayed") {
        Some(_) => assert!(get("delayed", "srtt_us") >= 20_000.0, "{}", r["delayed"]),
        None => assert!(skipped.to_string().contains("no sch_netem"), "{skipped}"),
    }
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn twin_moves_the_same_counters_with_either_engine() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("twin_moves_the_same_counters_with_either_engine") {
        return;
    }
    let v = passed_on_host("twin", &["--repetitions", "3", "--round-trips", "1000"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // 3 repetitions x (1,000 + 1,000 64 KiB) round trips, both directions, with either engine.
    assert!(get("aya", "msg_redirected") >= 6_000.0);
    assert_eq!(get("libbpf", "msg_redirected"), get("aya", "msg_redirected"));
    assert_eq!(get("libbpf", "sockets_inserted"), get("aya", "sockets_inserted"));
    for key in
        ["libbpf_vs_aya", "libbpf_vs_aya_64k", "libbpf_vs_aya_throughput", "libbpf_vs_aya_connect_rate"]
    {
        assert!(get(key, "value") > 0.0, "{key}");
    }
    // The kernel's view of both builds, from `mesh-agent engines` in the lab.
    for key in ["aya_msg_insns", "libbpf_msg_insns", "aya_ops_insns", "libbpf_ops_insns"] {
        assert!(get("programs", key) > 0.0, "{key}");
    }
    // The agent ran with each engine in turn.
    let steps = serde_json::to_string(&v["report"]).unwrap();
    assert!(steps.contains("redirect by the C twin, libbpf"), "libbpf path reported");
    let lab = v["report"]["lab"].as_str().unwrap();
    assert_eq!(remains_of(lab), Vec::<String>::new());
}

#[test]
fn sockmap_and_conformance_pass_with_the_libbpf_engine() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("sockmap_and_conformance_pass_with_the_libbpf_engine") {
        return;
    }
    let v = passed_on_host("sockmap", &["--engine", "libbpf", "--repetitions", "2", "--round-trips", "1000"]);
    let r = &v["report"]["results"];
    assert!(r["sockmap"]["msg_redirected"].as_f64().unwrap() >= 4_000.0, "{r}");
    assert!(r["sidecars+sockmap"]["msg_redirected"].as_f64().unwrap() >= 8_000.0, "{r}");
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());

    let v = passed_on_host("conformance", &["--engine", "libbpf", "--short-lived", "2000"]);
    let r = &v["report"]["results"];
    assert_eq!(r["sockmap"]["differences"], 0.0, "{:#}", unexplained(&v));
    assert_eq!(r["sidecars+sockmap"]["differences"], 0.0, "{:#}", unexplained(&v));
    assert!(r["sockmap"]["msg_redirected"].as_f64().unwrap() > 1_000.0, "{r}");
    assert_eq!(r["loopback"]["foreign_bytes"], 0.0);
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn real_applications_run_direct_through_sidecars_and_through_the_mesh() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("real_applications_run_direct_through_sidecars_and_through_the_mesh") {
        return;
    }
    let v = passed_on_host("apps", &["--repetitions", "2"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // Figures read from redis-benchmark's and wrk's own output, on every path.
    for path in ["direct", "sidecars", "mesh"] {
        for key in ["redis_set_rps", "redis_get_rps", "redis_get_p50", "wrk_rps", "wrk_p50", "wrk_p99"] {
            assert!(get(path, key) > 0.0, "{path}.{key}");
        }
        assert_eq!(get(path, "wrk_errors"), 0.0, "{path}");
    }
    assert_eq!(get("sidecars", "proxies"), 3.0);
    // The applications' own connections went through the redirect: 2 repetitions + a warm-up
    // of 20,000 redis requests and responses each, and wrk's.
    assert!(get("mesh", "msg_redirected") >= 60_000.0, "{r}");
    assert_eq!(get("direct", "msg_redirected"), 0.0);
    assert!(get("mesh", "packets") * 100.0 <= get("direct", "packets"), "{r}");
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn tcpdump_and_ss_see_the_payload_without_the_mesh_and_only_the_handshake_with_it() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("tcpdump_and_ss_see_the_payload_without_the_mesh_and_only_the_handshake_with_it") {
        return;
    }
    let v = passed_on_host("invisible", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    // The scenario's own expectations hold (it passed); these are the book's claims, checked
    // against the same numbers: payload visible without the mesh, invisible with it.
    assert!(get("tcpdump-direct", "packets") >= 100.0, "{r}");
    assert!(get("tcpdump-mesh", "packets") <= 12.0, "{r}");
    assert!(get("tcpdump-mesh", "packets") >= 3.0, "the handshake is still on the wire: {r}");
    assert!(get("ss-direct", "bytes_acked") >= 1000.0, "{r}");
    assert!(get("ss-mesh", "bytes_acked") <= 1.0, "{r}");
    assert_eq!(remains_of(v["report"]["lab"].as_str().unwrap()), Vec::<String>::new());
}

#[test]
fn an_exec_step_printing_a_mebibyte_completes_and_a_dead_server_shows_its_log() {
    let _k = KERNEL.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !root_or_skip("an_exec_step_printing_a_mebibyte_completes_and_a_dead_server_shows_its_log") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("slab-big-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    // 1 MiB on stdout (more than a pipe holds: a runner that reads only after exit blocks).
    let big = dir.join("big.toml");
    fs::write(
        &big,
        r#"name = "big"
summary = "an exec step that prints a mebibyte"
[[pods]]
name = "a"
[[steps]]
do = "exec"
name = "big"
pod = "a"
command = ["sh", "-c", "head -c 1048576 /dev/zero | tr '\\0' x; echo; echo bytes 1048576"]
figures = { bytes = { regex = '^bytes ([0-9]+)' } }
[[steps]]
do = "expect"
metric = "big.bytes"
op = "=="
value = 1048576
"#,
    )
    .unwrap();
    let t = Instant::now();
    let v = passed_on_host(big.to_str().unwrap(), &[]);
    assert!(t.elapsed() < Duration::from_mins(1), "took {:?}", t.elapsed());
    assert_eq!(v["report"]["results"]["big"]["bytes"], 1_048_576.0);
    // A command workload that exits instead of listening: the error carries its log's tail.
    let dead = dir.join("dead.toml");
    fs::write(
        &dead,
        r#"name = "dead"
summary = "a server that never listens"
[[pods]]
name = "a"
workload = { kind = "command", port = 9999, command = ["sh", "-c", "echo 'bind: address is on fire' >&2; exit 3"] }
[[steps]]
do = "explain"
title = "nothing"
text = "runs"
"#,
    )
    .unwrap();
    let results = dir.join("results");
    let run = |file: &std::path::Path| {
        Command::new(bin())
            .args(["scenario", file.to_str().unwrap(), "--backend", "host", "--results"])
            .arg(&results)
            .output()
            .unwrap()
    };
    let out = run(&dead);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("exited before anything listened on port 9999"), "{err}");
    assert!(err.contains("bind: address is on fire"), "{err}");
    // The run that broke left its failure bundle beside its report, collected before teardown.
    let failure = only_run(&results.join("dead")).join("failure");
    let read =
        |name: &str| fs::read_to_string(failure.join(name)).unwrap_or_else(|e| panic!("failure/{name}: {e}"));
    assert!(read("pods/a.log").contains("bind: address is on fire"));
    assert!(read("bpftool.txt").contains("$ bpftool prog show"));
    assert!(read("pods/a.ss.txt").contains("$ ss -tnie (in pod a)"));
    read("dmesg.txt");
    read("mesh-status.json");
    // A check that fails: exit 1, and a bundle too (with the mesh's state this time).
    let failing = dir.join("failing.toml");
    fs::write(
        &failing,
        r#"name = "failing"
summary = "a check that fails"
[[pods]]
name = "a"
[[steps]]
do = "mesh"
state = "on"
[[steps]]
do = "exec"
name = "t"
pod = "a"
command = ["true"]
[[steps]]
do = "expect"
metric = "t.exit"
op = "=="
value = 1
"#,
    )
    .unwrap();
    let out = run(&failing);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let failure = only_run(&results.join("failing")).join("failure");
    let status: Value = serde_json::from_str(&fs::read_to_string(failure.join("mesh-status.json")).unwrap())
        .expect("mesh-agent status as JSON");
    assert!(status.get("error").is_none(), "the mesh was on: {status}");
    let outcome = fs::read_to_string(failure.parent().unwrap().join("outcome.json")).unwrap();
    assert!(!outcome.contains("\"failure\""), "the bundle stays out of outcome.json");
    fs::remove_dir_all(&dir).unwrap();
}

/// The one run folder under `scenario_dir` (results/<scenario>/<time>).
fn only_run(scenario_dir: &std::path::Path) -> std::path::PathBuf {
    let runs: Vec<_> = fs::read_dir(scenario_dir).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}
