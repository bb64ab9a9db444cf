//! The command line, driven through the real binary. None of these touch the kernel.
use assert_cmd::Command;
use predicates::prelude::*;

mod common;

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
fn list_names_the_shipped_scenarios() {
    lab_runner()
        .arg("list")
        .assert()
        .success()
        .stdout(predicate::str::contains("sockmap "))
        .stdout(predicate::str::contains("sidecar-baseline "));
    let out = lab_runner().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> =
        v.as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        names,
        [
            "agent-restart",
            "apps",
            "conformance",
            "crosscheck",
            "flow-control",
            "invisible",
            "kubernetes",
            "policy",
            "service-lb",
            "service-scale",
            "sidecar-baseline",
            "sockmap",
            "telemetry",
            "twin"
        ]
    );
}

#[test]
fn unknown_scenario_is_a_usage_error_naming_the_known_ones() {
    lab_runner()
        .args(["scenario", "sockmapp"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown scenario \"sockmapp\""))
        .stderr(predicate::str::contains(
            "known: agent-restart, apps, conformance, crosscheck, flow-control, invisible, kubernetes, policy, service-lb, service-scale, sidecar-baseline, sockmap",
        ));
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
        .stderr(predicate::str::contains("possible values: qemu, host, kubernetes"));
    lab_runner().arg("frobnicate").assert().code(2);
    lab_runner()
        .args(["up", "--kernel", "4.19"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown kernel \"4.19\" (known: 5.10, 6.1, 6.12, 7.2)"));
    lab_runner().args(["exec"]).assert().code(2);
}

/// A scenario file in a temp folder, for the error tests.
fn scenario_file(tag: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("slab-cli-{}-{tag}.toml", std::process::id()));
    std::fs::write(&p, text).unwrap();
    p
}

/// The valid two-pod scenario the parser's unit tests use too.
const GOOD: &str = include_str!("../labs/scenario/src/testdata/two-pods.toml");

#[test]
fn scenario_file_errors_name_file_line_and_what_was_expected() {
    let cases = [
        (
            "typo",
            GOOD.replace("from = ", "form = "),
            ":12: unknown field `form`, expected one of `from`, `to`",
        ),
        (
            "type",
            GOOD.replace("port = 7000\n", "port = \"http\"\n"),
            ":14: invalid type: string \"http\", expected u16",
        ),
        (
            "step",
            GOOD.replace("do = \"bench\"", "do = \"benchmark\""),
            ":10: unknown variant `benchmark`, expected one of `explain`, `bench`",
        ),
        ("reserved", GOOD.replace("name = \"b\"", "name = \"node\""), ":6: pod name \"node\" is reserved"),
        ("twice", GOOD.replace("name = \"b\"", "name = \"a\""), ":6: pod name \"a\" is used twice"),
        (
            "long",
            GOOD.replace("name = \"b\"", "name = \"a-much-longer-name\""),
            ":6: pod name \"a-much-longer-name\": expected 1 to 12",
        ),
        ("port0", GOOD.replace("port = 7000\n", "port = 0\n"), ":14: step 1 (bench): `port` must be 1-65535"),
    ];
    for (tag, text, want) in cases {
        let path = scenario_file(tag, &text);
        let out = lab_runner().arg("scenario").arg(&path).args(["--backend", "host"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tag}: {err}");
        assert_eq!(err.lines().count(), 1, "{tag}: one clear error, got {err}");
        assert!(err.contains(&format!("{}{want}", path.display())), "{tag}: {err}");
        assert!(!err.contains("panicked"), "{tag}: {err}");
        std::fs::remove_file(path).unwrap();
    }
}

/// Errors found after parsing, at load time, are the file's too: one line, file:line, exit 2.
#[test]
fn a_command_workload_without_a_program_or_a_missing_mesh_file_is_a_usage_error() {
    let empty = format!(
        "{GOOD}\n[[pods]]\nname = \"c\"\nworkload = {{ kind = \"command\", port = 80, command = [] }}\n"
    );
    let mesh = format!(
        "{GOOD}\n[[steps]]\ndo = \"mesh\"\nstate = \"on\"\n\n[[steps]]\ndo = \"apply\"\nname = \"m\"\nfile = \"no-such-mesh.toml\"\n"
    );
    let line = |text: &str, needle: &str| text.lines().position(|l| l.contains(needle)).unwrap() + 1;
    let cases = [
        (
            "empty-command",
            format!(
                ":{}: pod \"c\": a command workload needs a non-empty `command`",
                line(&empty, "command = []")
            ),
            empty.clone(),
        ),
        (
            "missing-mesh",
            format!(
                ":{}: step 4 (apply): mesh file \"no-such-mesh.toml\": cannot read ",
                line(&mesh, "no-such-mesh")
            ),
            mesh.clone(),
        ),
    ];
    for (tag, want, text) in cases {
        let path = scenario_file(tag, &text);
        let out = lab_runner().arg("scenario").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tag}: {err}");
        assert_eq!(err.lines().count(), 1, "{tag}: one clear error, got {err}");
        assert!(err.contains(&format!("{}{want}", path.display())), "{tag}: {err}");
        std::fs::remove_file(path).unwrap();
    }
}

/// A scenario with a `[kubernetes]` section runs on the cluster and nowhere else; the others
/// never on the cluster. Refused before anything starts, with what to do instead.
#[test]
fn kubernetes_scenarios_run_on_the_cluster_only() {
    lab_runner()
        .args(["scenario", "kubernetes", "--backend", "qemu"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("runs on Kubernetes ([kubernetes] in scenarios/kubernetes.toml)"));
    lab_runner()
        .args(["scenario", "sockmap", "--backend", "kubernetes"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("scenario sockmap has no [kubernetes] section"));
    lab_runner()
        .args(["matrix", "--kernels", "6.1", "--scenarios", "kubernetes"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("scenario kubernetes runs on Kubernetes"));
    // The file's own mistakes, at their lines.
    let k8s = "name = \"k\"\nsummary = \"s\"\n[kubernetes]\nmanifests = [\"m.yaml\"]\n[files]\n\"m.yaml\" = \"\"\n[[pods]]\nname = \"a\"\n";
    let step = "[[steps]]\ndo = \"explain\"\ntitle = \"t\"\ntext = \"x\"\n";
    let cases = [
        (
            "k8s-manifest",
            format!("{}{step}", k8s.replace("[\"m.yaml\"]", "[\"n.yaml\"]")),
            ":4: [kubernetes] manifest \"n.yaml\": no such file in [files] (known: m.yaml)",
        ),
        (
            "k8s-workload",
            format!("{k8s}workload = {{ kind = \"echo\", port = 7 }}\n{step}"),
            ":8: pod \"a\": on Kubernetes a pod runs what its manifest says; drop `workload`",
        ),
        (
            "k8s-step",
            format!("{k8s}[[steps]]\ndo = \"sidecars\"\nmode = \"per-pod\"\n"),
            ":9: step 1 (sidecars): runs in the lab's own sandbox only, not on Kubernetes",
        ),
    ];
    for (tag, text, want) in cases {
        let path = scenario_file(tag, &text);
        let out = lab_runner().arg("scenario").arg(&path).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{tag}: {err}");
        assert!(err.contains(&format!("{}{want}", path.display())), "{tag}: {err}");
        std::fs::remove_file(path).unwrap();
    }
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
        common::cannot_run(
            "the_host_backend_refuses_to_run_without_root",
            "setpriv (util-linux) cannot drop root",
        );
        return;
    };
    assert_eq!(out.status.code(), Some(3), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs root"));
}

/// The reference chapter's command-line section is the binary's own help, so it cannot drift:
/// this test fails when they differ (`SIDECARLESS_UPDATE_BOOK=1 cargo test` rewrites the file).
#[test]
fn the_book_s_cli_reference_is_the_binary_s_help() {
    let help = |args: &[&str]| {
        let out = lab_runner().args(args).arg("--help").output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap().trim_end().to_owned()
    };
    // The subcommands a help text lists, `help` left out.
    let commands_of = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .filter(|c| c != "help")
            .collect()
    };
    let top = help(&[]);
    let commands = commands_of(&top);
    assert!(commands.len() >= 8, "{commands:?}");
    let mut text = String::from(
        "<!-- Generated from `lab-runner --help` by tests/cli.rs; do not edit (SIDECARLESS_UPDATE_BOOK=1 cargo test rewrites it). -->\n\n",
    );
    text.push_str(&format!("### lab-runner\n\n```text\n{top}\n```\n"));
    for c in &commands {
        let sub = help(&[c.as_str()]);
        text.push_str(&format!("\n### lab-runner {c}\n\n```text\n{sub}\n```\n"));
    }
    // The mesh agent (`lab-runner mesh-agent`, the same as the `mesh-agent` binary) and each of
    // its commands: not in the top-level list, since the lab runs it for you.
    let agent = help(&["mesh-agent"]);
    let agent_commands = commands_of(&agent);
    assert!(agent_commands.iter().any(|c| c == "observe"), "{agent_commands:?}");
    text.push_str(&format!("\n### lab-runner mesh-agent\n\n```text\n{agent}\n```\n"));
    for c in &agent_commands {
        let sub = help(&["mesh-agent", c.as_str()]);
        text.push_str(&format!("\n### lab-runner mesh-agent {c}\n\n```text\n{sub}\n```\n"));
    }
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../book/src/reference/cli-generated.md");
    if std::env::var("SIDECARLESS_UPDATE_BOOK").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &text).unwrap();
    }
    let book = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        book == text,
        "{} is not the binary's help: run SIDECARLESS_UPDATE_BOOK=1 cargo test --test cli",
        path.display()
    );
}
