//! The VM backend end to end: pinned kernel 6.1 under QEMU (TCG), the guest agent, scenarios in
//! the VM, and the faults (QEMU killed, guest silent, corrupted download).
//!
//! Needs qemu-system-x86_64, the static guest binaries (target/x86_64-unknown-linux-musl/release,
//! built by scripts/test.sh) and the Debian mirror. Without them each test fails, or prints
//! SKIPPED and passes where SIDECARLESS_ALLOW_SKIP=1 (tests/common). One test at a time.
//!
//! Over 600 lines on purpose: one test binary per suite that touches the kernel (see
//! `.config/nextest.toml`); each test is one scenario or fault in the VM.
use std::{
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

mod common;

use serde_json::Value;

static VM: Mutex<()> = Mutex::new(());

fn bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("lab-runner")
}

fn guest_bins() -> PathBuf {
    bin().parent().unwrap().parent().unwrap().join("x86_64-unknown-linux-musl/release")
}

/// `true` when the VM tests can run; prints why not otherwise.
fn ready(test: &str) -> bool {
    let qemu = ["/usr/bin/qemu-system-x86_64", "/usr/local/bin/qemu-system-x86_64"]
        .iter()
        .any(|p| Path::new(p).exists());
    let bins = ["lab-node", "workload", "mesh-agent"].iter().all(|b| guest_bins().join(b).exists());
    let why = match (qemu, bins) {
        (true, true) => return true,
        (false, _) => "qemu-system-x86_64 is not installed".to_owned(),
        (_, false) => format!("the static guest binaries are not built in {}", guest_bins().display()),
    };
    common::cannot_run(test, &why)
}

/// Takes the VM lock and a private environment, or returns `None` (after saying why) when the
/// VM tests cannot run here.
fn start(test: &str, tag: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Env)> {
    let guard = VM.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    ready(test).then(|| (guard, Env::new(tag)))
}

/// Kernel 6.1 under TCG, as CI runs it.
const ON_61: [&str; 4] = ["--kernel", "6.1", "--accel", "tcg"];

/// A private state root (and optionally cache) so the tests never touch a user's VM.
struct Env {
    root: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let root = std::env::temp_dir().join(format!("slab-vmtest-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("run")).unwrap();
        Env { root }
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).env("XDG_RUNTIME_DIR", self.root.join("run")).env("SIDECARLESS_GUEST_BIN", guest_bins());
        c
    }
    /// A guided (`--step`) run to drive: stdin and stdout piped, stderr dropped.
    fn guided(&self, args: &[&str]) -> std::process::Child {
        self.cmd(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap()
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn state_dirs(&self) -> Vec<String> {
        fs::read_dir(self.root.join("run/sidecarless-lab"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Whatever a failed test left: kill its QEMUs, then remove the folder.
        for pid in qemus_under(&self.root) {
            // SAFETY: signalling a QEMU this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Live QEMU processes whose command line mentions `dir`.
fn qemus_under(dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    lab_sandbox::process::running()
        .into_iter()
        .filter(|(_, args)| {
            let cmd = args.join(" ");
            cmd.contains("qemu") && cmd.contains(&needle)
        })
        .map(|(pid, _)| pid)
        .collect()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn up_exec_down_as_an_unprivileged_user() {
    let Some((_vm, env)) = start("up_exec_down_as_an_unprivileged_user", "nobody") else { return };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    // As root, prove the claim by dropping to nobody: give it copies of the binaries and a cache
    // of its own (seeded with our verified download, if any, to spare the mirror).
    let (runner, guest, cache) =
        (env.root.join("lab-runner"), env.root.join("guest"), env.root.join("cache"));
    fs::copy(bin(), &runner).unwrap();
    fs::create_dir_all(&guest).unwrap();
    for b in ["lab-node", "workload", "mesh-agent"] {
        fs::copy(guest_bins().join(b), guest.join(b)).unwrap();
    }
    let debs = cache.join("sidecarless-lab/debs");
    fs::create_dir_all(&debs).unwrap();
    let home_debs =
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sidecarless-lab/debs");
    if let Ok(rd) = fs::read_dir(home_debs) {
        for e in rd.flatten() {
            let _ = fs::copy(e.path(), debs.join(e.file_name()));
        }
    }
    if root {
        Command::new("chown").args(["-R", "65534:65534"]).arg(&env.root).status().unwrap();
        fs::set_permissions(&env.root, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = |args: &[&str]| -> Output {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(&runner);
            c
        } else {
            Command::new(&runner)
        };
        c.args(args)
            .env("HOME", &env.root)
            .env("XDG_CACHE_HOME", &cache)
            .env("XDG_RUNTIME_DIR", env.root.join("run"))
            .env("SIDECARLESS_GUEST_BIN", &guest)
            .output()
            .unwrap()
    };
    let up = run(&[&["up"][..], &ON_61].concat());
    assert!(up.status.success(), "up failed: {}", text(&up.stderr));
    assert!(text(&up.stdout).contains("VM up: kernel 6.1"), "{}", text(&up.stdout));

    let uname = run(&["exec", "--", "uname", "-r"]);
    assert!(uname.status.success(), "{}", text(&uname.stderr));
    assert_eq!(text(&uname.stdout).trim(), "6.1.0-50-cloud-amd64");
    let seven = run(&["exec", "--", "sh", "-c", "exit 7"]);
    assert_eq!(seven.status.code(), Some(7));
    let status = run(&["status", "--json"]);
    let s: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(s["kernel"], "6.1");

    let down = run(&["down"]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new(), "no QEMU left");
    assert_eq!(env.state_dirs(), Vec::<String>::new(), "no state left");
}

/// Runs a shipped scenario in a VM on 6.1 booted for the run; returns its outcome, which must be
/// a pass on that kernel.
fn passed_on_61(env: &Env, scenario: &str, extra: &[&str]) -> Value {
    let out = env.run(&[&["scenario", scenario][..], &ON_61, &["--json"], extra].concat());
    // What failed, from the outcome on stdout (stderr only says where the results went).
    let failures =
        serde_json::from_slice::<Value>(&out.stdout).map(|v| v["failures"].to_string()).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "failures: {failures}\nstderr: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], true, "{}", v["failures"]);
    assert!(v["kernel"].as_str().unwrap().starts_with("6.1.0"), "ran on {}", v["kernel"]);
    // The guest's report crossed the wire as JSON and reads back as the engine's typed report.
    let typed: lab_scenario::Outcome =
        serde_json::from_value(v.clone()).expect("the outcome reads back typed");
    assert_eq!(typed.kernel, v["kernel"].as_str().unwrap());
    v
}

#[test]
fn sockmap_passes_inside_the_vm() {
    let Some((_vm, env)) = start("sockmap_passes_inside_the_vm", "sockmap") else { return };
    let results = env.root.join("results");
    let v = passed_on_61(
        &env,
        "sockmap",
        &["--repetitions", "2", "--round-trips", "1000", "--results", results.to_str().unwrap()],
    );
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    assert!(get("sockmap", "msg_redirected") >= 4_000.0);
    for run in ["direct", "sidecars", "sidecars+sockmap", "sockmap"] {
        assert!(get(run, "mb_s") > 0.0 && get(run, "conn_s") > 0.0, "{run}");
    }
    // Sidecars ran in the guest too (iptables-nft and its modules are in the image).
    assert_eq!(get("sidecars", "proxies"), 2.0);
    assert!(get("sidecars+sockmap", "msg_redirected") > 0.0);
    assert!(get("sockmap", "packets") * 100.0 <= get("direct", "packets"));
    assert!(fs::read_dir(results.join("sockmap")).unwrap().count() == 1, "result files written");
    // The VM booted for the run is gone with it.
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

/// A user's own scenario, in a folder of its own, applying a mesh file that sits beside it on the
/// host: the file travels with the scenario (the guest has no such path), and its service works.
#[test]
fn a_user_scenario_with_its_own_mesh_file_passes_inside_the_vm() {
    let Some((_vm, env)) = start("a_user_scenario_with_its_own_mesh_file_passes_inside_the_vm", "own") else {
        return;
    };
    let dir = env.root.join("mine");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("api-mesh.toml"),
        "[[services]]\nname = \"api\"\naddress = \"10.96.0.42\"\nport = 80\n\
         backends = [{ pods = { app = \"api\" }, port = 7000 }]\n",
    )
    .unwrap();
    let scenario = r#"name = "my-api"
summary = "a user's own scenario: one service from a mesh file beside it"

[[pods]]
name = "client"

[[pods]]
name = "api"
labels = { app = "api" }
workload = { kind = "rr-server", port = 7000 }

[[steps]]
do = "mesh"
state = "on"

[[steps]]
do = "apply"
name = "mine"
file = "api-mesh.toml"

[[steps]]
do = "balance"
name = "reach"
from = "client"
address = "10.96.0.42:80"
connections = 50

[[steps]]
do = "expect"
metric = "reach.backends"
op = "=="
value = 1

[[steps]]
do = "expect"
metric = "reach.errors"
op = "=="
value = 0
"#;
    let file = dir.join("my-api.toml");
    fs::write(&file, scenario).unwrap();
    let v = passed_on_61(&env, file.to_str().unwrap(), &[]);
    assert_eq!(v["report"]["results"]["mine"]["added"].as_f64(), Some(1.0), "{}", v["report"]["results"]);
    assert_eq!(v["report"]["results"]["reach"]["connections"].as_f64(), Some(50.0));
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
}

/// A kernel warning logged during a run fails it, with the warning in the outcome and the report.
/// The warning is written into the guest's kernel log through /dev/kmsg, as a kernel would
/// print it: what is tested is that the engine reads the log over the run, not the kernel.
#[test]
fn a_kernel_warning_during_the_run_fails_it() {
    let Some((_vm, env)) = start("a_kernel_warning_during_the_run_fails_it", "splat") else { return };
    let warning = "WARNING: CPU: 0 PID: 1 at lab/splat.c:1 lab_splat_test+0x0/0x10";
    let scenario = format!(
        r#"name = "splat"
summary = "a kernel warning during the run fails it"

[[pods]]
name = "a"

[[steps]]
do = "exec"
name = "warn"
pod = "a"
command = ["sh", "-c", "for l in '{warning}' 'Call Trace:' '---[ end trace 0000000000000000 ]---'; do echo \"$l\" > /dev/kmsg; done"]
"#
    );
    let file = env.root.join("splat.toml");
    fs::write(&file, scenario).unwrap();
    let results = env.root.join("results");
    let out = env.run(
        &[
            &["scenario", file.to_str().unwrap()][..],
            &ON_61,
            &["--json", "--results", results.to_str().unwrap()],
        ]
        .concat(),
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["passed"], false);
    assert_eq!(v["failures"], serde_json::json!([format!("kernel splat: {warning}")]), "{}", v["failures"]);
    let splat = format!("{warning}\nCall Trace:\n---[ end trace 0000000000000000 ]---");
    assert_eq!(v["report"]["kernel_splats"], serde_json::json!([splat]));
    let report =
        fs::read_dir(results.join("splat")).unwrap().next().unwrap().unwrap().path().join("report.md");
    let md = fs::read_to_string(&report).unwrap();
    assert!(md.contains("## Kernel splats") && md.contains(warning), "{md}");
    // The failure bundle, collected in the guest before teardown, came back with the report.
    let failure = report.parent().unwrap().join("failure");
    let dmesg = fs::read_to_string(failure.join("dmesg.txt")).unwrap();
    assert!(dmesg.contains(warning), "{dmesg}");
    let bpftool = fs::read_to_string(failure.join("bpftool.txt")).unwrap();
    assert!(bpftool.contains("$ bpftool prog show"), "{bpftool}");
    assert!(failure.join("pods/a.ss.txt").exists());
    assert!(v["report"].get("failure").is_none(), "the bundle stays out of the JSON outcome");
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
}

#[test]
fn conformance_passes_inside_the_vm() {
    let Some((_vm, env)) = start("conformance_passes_inside_the_vm", "conformance") else { return };
    // 1,000 short-lived connections per run instead of 10,000: under TCG each costs milliseconds.
    let v = passed_on_61(&env, "conformance", &["--short-lived", "1000"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    assert_eq!(get("sockmap", "differences"), 0.0);
    assert_eq!(get("sidecars+sockmap", "differences"), 0.0);
    assert!(get("sockmap", "msg_redirected") > 0.0);
    assert_eq!(get("loopback", "foreign_bytes"), 0.0);
    assert_eq!(get("loopback", "errors"), 0.0);
    // 6.1 gives sock_ops and sk_msg the netns cookie: loopback pairs are redirected, not skipped.
    assert!(get("loopback", "msg_redirected") > 0.0);
    assert_eq!(get("loopback", "loopback_skipped"), 0.0);
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn service_lb_passes_inside_the_vm() {
    let Some((_vm, env)) = start("service_lb_passes_inside_the_vm", "service-lb") else { return };
    let v = passed_on_61(&env, "service-lb", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    assert_eq!(get("spread", "backends"), 3.0);
    assert_eq!(get("spread", "peer_is_service"), 1.0);
    assert_eq!(get("spread6", "peer_is_service"), 1.0);
    assert_eq!((get("udp", "sticky"), get("udp", "peer_is_service")), (1.0, 1.0));
    assert_eq!(get("after", "outside"), 0.0);
    assert_eq!(get("refused", "errors"), 10.0);
    // 6.1 has bpf_set_retval for cgroup programs: the honest errno.
    assert_eq!(get("refused", "errno"), 111.0);
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn agent_restart_passes_inside_the_vm() {
    let Some((_vm, env)) = start("agent_restart_passes_inside_the_vm", "agent-restart") else { return };
    let v = passed_on_61(&env, "agent-restart", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    assert_eq!(get("rr", "failed"), 0.0);
    assert!(get("rr", "round_trips") > 0.0);
    assert_eq!(get("down", "backends"), 3.0);
    assert!(get("down", "inserted") >= 600.0);
    assert_eq!((get("restart", "adopted"), get("restart", "attached_once")), (1.0, 1.0));
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn policy_passes_inside_the_vm() {
    let Some((_vm, env)) = start("policy_passes_inside_the_vm", "policy") else { return };
    // One repetition: the bench's figures are the matrix's business, not this test's.
    let v = passed_on_61(&env, "policy", &["--repetitions", "1"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    // 6.1: egress denials, ingress drops for a process outside the mesh, HTTP judged in sk_msg
    // (a split request line included), revoked connections cut.
    assert_eq!((get("to_db", "errors"), get("to_db", "errno")), (20.0, 1.0));
    assert!(get("outside_to_db", "ingress_denied") >= 3.0);
    assert_eq!((get("http_get", "ok"), get("http_post", "errno")), (3.0, 13.0));
    assert_eq!((get("http_split", "ok"), get("http_split_admin", "ok")), (2.0, 0.0));
    assert_eq!((get("established", "failed"), get("established_outside", "failed")), (4.0, 4.0));
    // The agent applied the mesh file itself (the lab hands it over the control socket): its
    // denial events name the pods on both ends.
    let denials = v["report"]["denials"].as_array().expect("denials in the report");
    assert!(
        denials.iter().any(|d| d["from"]["pods"] == serde_json::json!(["frontend"])
            && d["to"]["pods"] == serde_json::json!(["db"])),
        "no denial names frontend -> db: {denials:?}"
    );
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn telemetry_passes_inside_the_vm() {
    let Some((_vm, env)) = start("telemetry_passes_inside_the_vm", "telemetry") else { return };
    let v = passed_on_61(&env, "telemetry", &["--repetitions", "1"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    // 6.1: exact bytes both ways, redirected and through TCP; netem runs here: the 20 ms delay
    // shows in the RTT, the loss as retransmits the callback saw too.
    assert_eq!((get("redirected", "exact"), get("outside", "exact")), (8.0, 4.0));
    assert!(get("delayed", "srtt_us") >= 20_000.0, "{}", r["delayed"]);
    assert!(get("lossy", "retransmits_seen") > 0.0, "{}", r["lossy"]);
    // No Prometheus in the VM image: that step says so.
    assert!(
        v["report"]["skipped_steps"].to_string().contains("prometheus"),
        "{}",
        v["report"]["skipped_steps"]
    );
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn a_vm_killed_mid_scenario_is_reported_and_cleaned_up() {
    let Some((_vm, env)) = start("a_vm_killed_mid_scenario_is_reported_and_cleaned_up", "killed") else {
        return;
    };
    let mut child = env
        .cmd(&[&["scenario", "sockmap"][..], &ON_61, &["--round-trips", "200000", "--results"]].concat())
        .arg(env.root.join("results"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref().map_while(Result::ok) {
        if line.contains("== direct") {
            break;
        }
    }
    // Keep reading, as a terminal would, while the VM dies under the scenario.
    let rest = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let qemus = qemus_under(&env.root);
    assert_eq!(qemus.len(), 1, "one QEMU runs the scenario");
    // SAFETY: killing the QEMU this test's lab-runner started.
    unsafe { libc::kill(qemus[0], libc::SIGKILL) };
    let killed = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(killed.elapsed() < Duration::from_secs(10), "reported after {:?}", killed.elapsed());
    rest.join().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("the VM stopped (qemu exited) during scenario sockmap"), "{err}");
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn a_silent_guest_is_reported_within_the_timeout() {
    let Some((_vm, env)) = start("a_silent_guest_is_reported_within_the_timeout", "silent") else { return };
    let up = env.run(&[&["up"][..], &ON_61].concat());
    assert!(up.status.success(), "{}", text(&up.stderr));
    let qemus = qemus_under(&env.root);
    // SAFETY: freezing the QEMU this test started: the guest stops answering.
    unsafe { libc::kill(qemus[0], libc::SIGSTOP) };
    let t = Instant::now();
    let out = env.run(&["exec", "--timeout", "3", "--", "uname", "-r"]);
    assert!(t.elapsed() < Duration::from_secs(8), "took {:?}", t.elapsed());
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains("did not answer within 3 s"), "{}", text(&out.stderr));
    let down = env.run(&["down"]);
    assert!(down.status.success());
    thread::sleep(Duration::from_millis(200));
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn a_corrupted_cached_package_is_detected_and_fetched_again() {
    let Some((_vm, env)) = start("a_corrupted_cached_package_is_detected_and_fetched_again", "corrupt")
    else {
        return;
    };
    let cache = env.root.join("cache");
    let debs = cache.join("sidecarless-lab/debs");
    fs::create_dir_all(&debs).unwrap();
    let name = "linux-image-6.1.0-50-cloud-amd64-unsigned_6.1.176-1_amd64.deb";
    fs::write(debs.join(name), b"not a kernel").unwrap();
    let out = env.cmd(&["kernels", "fetch", "6.1"]).env("XDG_CACHE_HOME", &cache).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("cached copy is corrupt"), "{err}");
    assert!(err.contains("downloaded, sha256 ok"), "{err}");
    assert!(fs::metadata(debs.join(name)).unwrap().len() > 20_000_000);
}

#[test]
fn matrix_writes_the_table_with_boot_times() {
    let Some((_vm, env)) = start("matrix_writes_the_table_with_boot_times", "matrix") else { return };
    let out_dir = env.root.join("results");
    let out = env.run(&[
        "matrix",
        "--kernels",
        "6.1",
        "--scenarios",
        "sidecar-baseline",
        "--boots",
        "2",
        "--accel",
        "tcg",
        "--round-trips",
        "1000",
        "--repetitions",
        "2",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let md = fs::read_to_string(out_dir.join("matrix.md")).unwrap();
    assert!(md.contains("| sidecar-baseline | pass ("), "{md}");
    assert!(md.contains("(tcg, 2 boots)"), "{md}");
    let rows: Value =
        serde_json::from_str(&fs::read_to_string(out_dir.join("matrix.json")).unwrap()).unwrap();
    assert_eq!(rows[0]["boot_s"].as_array().unwrap().len(), 2);
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
}

#[test]
fn sockmap_with_the_libbpf_engine_passes_inside_the_vm() {
    let Some((_vm, env)) = start("sockmap_with_the_libbpf_engine_passes_inside_the_vm", "sockmap-libbpf")
    else {
        return;
    };
    // The guest's static mesh-agent carries libbpf, libelf and zlib; the C twin loads on 6.1.
    let v =
        passed_on_61(&env, "sockmap", &["--engine", "libbpf", "--repetitions", "1", "--round-trips", "1000"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key}"));
    assert!(get("sockmap", "msg_redirected") >= 2_000.0);
    assert!(get("sidecars+sockmap", "msg_redirected") > 0.0);
    assert!(get("sockmap", "packets") * 100.0 <= get("direct", "packets"));
    let text = serde_json::to_string(&v["report"]).unwrap();
    assert!(text.contains("redirect by the C twin, libbpf"), "the libbpf engine ran");
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
}

#[test]
fn real_applications_run_inside_the_vm() {
    let Some((_vm, env)) = start("real_applications_run_inside_the_vm", "apps") else { return };
    // redis-server, redis-benchmark, nginx and wrk come from this machine, with their libraries.
    let v = passed_on_61(&env, "apps", &["--repetitions", "2"]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    for path in ["direct", "sidecars", "mesh"] {
        for key in ["redis_get_rps", "redis_set_rps", "wrk_rps", "wrk_p50"] {
            assert!(get(path, key) > 0.0, "{path}.{key}");
        }
    }
    assert!(get("mesh", "msg_redirected") >= 60_000.0, "{r}");
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn tcpdump_and_ss_inside_the_vm_see_only_the_handshake_through_the_mesh() {
    let Some((_vm, env)) =
        start("tcpdump_and_ss_inside_the_vm_see_only_the_handshake_through_the_mesh", "invis")
    else {
        return;
    };
    // tcpdump comes from this machine with libpcap; ss needs tcp_diag, a module on every pinned
    // kernel (without it ss reads /proc/net/tcp and prints no byte counters: found this way).
    let v = passed_on_61(&env, "invisible", &[]);
    let r = &v["report"]["results"];
    let get = |run: &str, key: &str| r[run][key].as_f64().unwrap_or_else(|| panic!("no {run}.{key} in {r}"));
    assert!(get("tcpdump-direct", "packets") >= 100.0, "{r}");
    assert!((3.0..=12.0).contains(&get("tcpdump-mesh", "packets")), "{r}");
    assert!(get("ss-direct", "bytes_acked") >= 1000.0, "{r}");
    assert_eq!(get("ss-mesh", "bytes_acked"), 1.0, "{r}");
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn ctrl_c_during_boot_stops_at_once_and_leaves_nothing() {
    let Some((_vm, env)) = start("ctrl_c_during_boot_stops_at_once_and_leaves_nothing", "ctrlc") else {
        return;
    };
    let mut child = env
        .cmd(&[&["up"][..], &ON_61].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut said = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        said.push(line.clone());
        if line.starts_with("booting kernel") {
            break;
        }
    }
    // QEMU is up and the guest is booting (it takes seconds under TCG): interrupt now.
    let deadline = Instant::now() + Duration::from_secs(5);
    while qemus_under(&env.root).is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(qemus_under(&env.root).len(), 1, "QEMU runs: {said:?}");
    // SAFETY: interrupting the lab-runner this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "stopped after {:?}", t.elapsed());
    assert_eq!(status.code(), Some(130), "{said:?} {rest:?}");
    assert!(rest.iter().any(|l| l.contains("interrupted; nothing was left running")), "{rest:?}");
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

#[test]
fn a_guided_run_in_the_vm_prints_try_commands_that_run_there() {
    let Some((_vm, env)) = start("a_guided_run_in_the_vm_prints_try_commands_that_run_there", "guided")
    else {
        return;
    };
    let mut child =
        env.guided(&[&["scenario", "apps"][..], &ON_61, &["--step", "--repetitions", "1"]].concat());
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let try_line = loop {
        let Some(Ok(line)) = lines.next() else { panic!("no try line: {seen:?}") };
        seen.push(line.clone());
        if let Some(cmd) = line.trim().strip_prefix("try: ")
            && cmd.contains("redis-cli")
        {
            break cmd.to_owned();
        }
    };
    // Printed for this machine: this binary's exec into the scenario's own VM...
    assert!(try_line.contains(" exec --vm scenario-"), "{try_line}");
    // ... and runnable as it is, while the scenario waits for Enter.
    let out = Command::new("sh")
        .args(["-c", &try_line])
        .env("XDG_RUNTIME_DIR", env.root.join("run"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{try_line}: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "PONG", "{try_line}");
    // q stops the run; the VM booted for it goes with it.
    use std::io::Write;
    stdin.write_all(b"q\n").unwrap();
    drop(stdin);
    let rest = thread::spawn(move || lines.map_while(Result::ok).count());
    let status = child.wait().unwrap();
    rest.join().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
}

/// The program each `try` command of the shipped scenarios runs (after `ip netns exec NS`).
fn try_programs() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut programs = Vec::new();
    for e in
        fs::read_dir(dir).unwrap().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
    {
        let text = fs::read_to_string(e.path()).unwrap();
        // A Kubernetes scenario runs on this machine's cluster, never in a VM.
        if text.lines().any(|l| l.trim() == "[kubernetes]") {
            continue;
        }
        for line in text.lines().filter(|l| l.trim_start().starts_with("try = [")) {
            // The quoted strings of the line: every other piece between double quotes.
            for cmd in line.split('"').skip(1).step_by(2) {
                let words: Vec<&str> = cmd.split_whitespace().collect();
                let words = match words.as_slice() {
                    ["ip", "netns", "exec", _ns, rest @ ..] => rest,
                    all => all,
                };
                for part in words.split(|w| *w == "|") {
                    if let Some(p) = part.first() {
                        programs.push(p.replace("<mesh-agent>", "mesh-agent"));
                    }
                }
            }
        }
    }
    programs.sort();
    programs.dedup();
    programs
}

#[test]
fn every_try_command_s_program_is_in_the_vm() {
    let Some((_vm, env)) = start("every_try_command_s_program_is_in_the_vm", "trytools") else { return };
    let programs = try_programs();
    assert!(programs.len() >= 8 && programs.contains(&"bpftool".to_owned()), "{programs:?}");
    let up = env.run(&[&["up"][..], &ON_61].concat());
    assert!(up.status.success(), "{}", text(&up.stderr));
    let script =
        format!("for p in {}; do command -v $p >/dev/null || echo missing $p; done", programs.join(" "));
    let out = env.run(&["exec", "--", "sh", "-c", &script]);
    let down = env.run(&["down"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "programs of try commands the VM lacks");
    assert!(down.status.success());
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
}

/// The default flow, guided: `lab-runner scenario sockmap --step` in the 6.1 VM. At every pause,
/// each `try` line is run as printed, on this machine, and must succeed; the whole session
/// (the scenario's output with each try command's output under it) is the book's transcript
/// when SIDECARLESS_RECORD_BOOK=1.
#[test]
fn the_guided_default_flow_s_try_commands_all_run() {
    let Some((_vm, env)) = start("the_guided_default_flow_s_try_commands_all_run", "transcript") else {
        return;
    };
    const PROMPT: &str = "-- Enter: next step, q: stop here -- ";
    let args = ["scenario", "sockmap", "--step", "--repetitions", "1", "--round-trips", "500"];
    let mut child = env.guided(&[&args[..], &ON_61].concat());
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut stdout = child.stdout.take().unwrap();
    thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let me = bin().display().to_string();
    let mut transcript = format!("$ lab-runner {}\n", args.join(" "));
    let mut pending = String::new();
    let (mut pauses, mut tried) = (0, 0);
    let deadline = Instant::now() + Duration::from_mins(15);
    loop {
        assert!(Instant::now() < deadline, "no end after 15 minutes:\n{transcript}{pending}");
        let Ok(chunk) = rx.recv_timeout(Duration::from_secs(1)) else {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            continue;
        };
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = pending.find(PROMPT) {
            let before: String = pending.drain(..at + PROMPT.len()).collect();
            transcript.push_str(&before);
            transcript.push_str("<Enter>\n");
            pauses += 1;
            for line in before.lines() {
                let Some(cmd) = line.trim().strip_prefix("try: ") else { continue };
                let out = Command::new("sh")
                    .args(["-c", cmd])
                    .env("XDG_RUNTIME_DIR", env.root.join("run"))
                    .output()
                    .unwrap();
                assert!(out.status.success(), "{cmd}: {}\n{}", text(&out.stderr), text(&out.stdout));
                tried += 1;
                transcript.push_str(&format!("\n$ {}\n", cmd.replace(&me, "lab-runner")));
                transcript.push_str(&text(&out.stdout));
                transcript.push('\n');
            }
            use std::io::Write;
            stdin.write_all(b"\n").unwrap();
        }
    }
    transcript.push_str(&pending);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{transcript}");
    assert!(pauses >= 4 && tried >= 5, "{pauses} pauses, {tried} try commands:\n{transcript}");
    assert_eq!(qemus_under(&env.root), Vec::<i32>::new());
    assert_eq!(env.state_dirs(), Vec::<String>::new());
    if std::env::var("SIDECARLESS_RECORD_BOOK").is_ok_and(|v| v == "1") {
        let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src/results/guided-vm.txt");
        fs::write(out, without_ansi(&transcript.replace(&me, "lab-runner"))).unwrap();
    }
}

/// `s` without terminal escape sequences (ESC [ ... final byte).
fn without_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
