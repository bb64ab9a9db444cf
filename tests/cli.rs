//! The command line, driven through the real binary. None of these touch the kernel.
use assert_cmd::Command;
use predicates::prelude::*;

fn lab_runner() -> Command {
    Command::cargo_bin("lab-runner").expect("lab-runner binary")
}

#[test]
fn help_lists_commands_and_exit_codes() {
    lab_runner()
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("scenario"))
        .stdout(predicate::str::contains("list"))
        .stdout(predicate::str::contains("clean"))
        .stdout(predicate::str::contains("Exit codes"))
        .stdout(predicate::str::contains("130"))
        // The workload runner is internal.
        .stdout(predicate::str::contains("workload").not());
}

#[test]
fn list_names_the_sockmap_scenario() {
    lab_runner()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::starts_with("sockmap"));
    let out = lab_runner().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["name"], "sockmap");
}

#[test]
fn unknown_scenario_is_a_usage_error_naming_the_known_ones() {
    lab_runner()
        .args(["scenario", "sockmapp"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown scenario \"sockmapp\""))
        .stderr(predicate::str::contains("known: sockmap"));
}

#[test]
fn bad_arguments_are_refused_with_the_reason() {
    lab_runner()
        .args(["scenario", "sockmap", "--round-trips", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--round-trips"));
    lab_runner()
        .args(["scenario", "sockmap", "--size", "huge"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("expected a size in bytes"));
    lab_runner()
        .args(["scenario", "sockmap", "--backend", "mainframe"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("possible values: qemu, host"));
    lab_runner().arg("frobnicate").assert().code(2);
    lab_runner()
        .args(["up", "--kernel", "4.19"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "unknown kernel \"4.19\" (known: 5.10, 6.1, 6.12, 7.2)",
        ));
    lab_runner().args(["exec"]).assert().code(2);
}

#[test]
fn the_host_backend_refuses_to_run_without_root() {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        // Already unprivileged: run directly.
        lab_runner()
            .args(["scenario", "sockmap", "--backend", "host"])
            .assert()
            .code(3)
            .stderr(predicate::str::contains("needs root"));
        return;
    }
    // As root, drop to nobody with setpriv (util-linux) to see the unprivileged path.
    let bin = assert_cmd::cargo::cargo_bin("lab-runner");
    let Ok(out) = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["scenario", "sockmap", "--backend", "host"])
        .output()
    else {
        eprintln!("SKIPPED: setpriv not available to drop root");
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(3),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
}
