//! `lab-runner matrix`: every scenario on every pinned kernel. Writes a compatibility table
//! (Markdown and JSON) with pass, fail, or skip and its reason per cell, and the boot-to-agent
//! time per kernel (median of `--boots` boots).
use std::fs;

use lab_scenario::{self as scenario, Outcome, report::Report};
use lab_vm::{
    VmError,
    catalog::Catalog,
    machine::{BootOptions, Machine},
};
use mesh_agent::Engine;
use serde::Serialize;

use crate::{
    cli::{MatrixArgs, VmArgs},
    commands::{
        scenario::{Loaded, load, run_on},
        signals,
    },
    exit, ui, vmprep,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Pass,
    Fail,
    Skip,
    Error,
}

#[derive(Debug, Clone, Serialize)]
struct Cell {
    scenario: String,
    /// Who loaded the redirect.
    engine: Engine,
    status: Status,
    detail: String,
    /// For a conformance scenario: each case and what the runs through the mesh showed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cases: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    kernel: String,
    release: String,
    accel: String,
    boot_s: Vec<f64>,
    boot_median_s: Option<f64>,
    cells: Vec<Cell>,
}

pub fn run(args: &MatrixArgs) -> i32 {
    let cat = Catalog::builtin();
    let kernels: Vec<String> = if args.kernels.is_empty() {
        cat.names().iter().map(std::string::ToString::to_string).collect()
    } else {
        args.kernels.clone()
    };
    for k in &kernels {
        if let Err(e) = cat.get(k) {
            return ui::fail_vm(&e);
        }
    }
    let names: Vec<String> = if args.scenarios.is_empty() {
        // A Kubernetes scenario runs on this machine's cluster, not in a VM of each kernel.
        scenario::builtin().into_iter().filter(|(_, s)| s.kubernetes.is_none()).map(|(_, s)| s.name).collect()
    } else {
        args.scenarios.clone()
    };
    let mut scenarios = Vec::new();
    for n in &names {
        match load(n) {
            Ok(l) if l.scenario.kubernetes.is_some() => {
                eprintln!(
                    "lab-runner: scenario {n} runs on Kubernetes (this machine's cluster), not in a VM per kernel: `lab-runner scenario {n}`"
                );
                return exit::USAGE;
            }
            Ok(l) => scenarios.push(l),
            Err(code) => return code,
        }
    }
    let cancel = match signals::watch() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let engines = if args.engines.is_empty() { vec![args.run.engine] } else { args.engines.clone() };
    let mut rows = Vec::new();
    for k in &kernels {
        if cancel.is_cancelled() {
            break;
        }
        rows.push(kernel_row(k, args, &scenarios, &engines, &cancel));
    }
    if cancel.is_cancelled() {
        eprintln!("lab-runner: interrupted; every VM was stopped");
        return exit::INTERRUPTED;
    }
    let md = markdown(&rows, &scenarios, &engines);
    println!("\n{md}");
    if let Err(e) = fs::create_dir_all(&args.out)
        .and_then(|()| fs::write(args.out.join("matrix.md"), &md))
        .and_then(|()| {
            fs::write(args.out.join("matrix.json"), serde_json::to_string_pretty(&rows).expect("serializes"))
        })
        .and_then(|()| fs::write(args.out.join("junit.xml"), junit(&rows, &engines)))
    {
        eprintln!("lab-runner: cannot write the table to {}: {e}", args.out.display());
        return exit::BACKEND;
    }
    eprintln!("wrote {}, matrix.json and junit.xml", args.out.join("matrix.md").display());
    let all_ok = rows.iter().flat_map(|r| &r.cells).all(|c| matches!(c.status, Status::Pass | Status::Skip));
    if all_ok { exit::OK } else { exit::SCENARIO_FAILED }
}

fn kernel_row(
    kernel: &str,
    args: &MatrixArgs,
    scenarios: &[Loaded],
    engines: &[Engine],
    cancel: &lab_sandbox::process::Cancel,
) -> Row {
    let mut row = Row {
        kernel: kernel.into(),
        release: String::new(),
        accel: String::new(),
        boot_s: vec![],
        boot_median_s: None,
        cells: vec![],
    };
    let error_all = |row: &mut Row, msg: String| {
        row.cells = scenarios
            .iter()
            .flat_map(|s| engines.iter().map(move |e| (s, *e)))
            .map(|(s, engine)| Cell {
                cases: Vec::new(),
                scenario: s.scenario.name.clone(),
                engine,
                status: Status::Error,
                detail: msg.clone(),
            })
            .collect();
    };
    let vm = VmArgs {
        kernel: Some(kernel.into()),
        mirror: args.mirror.clone(),
        accel: args.accel,
        memory: 1024,
        cpus: 2,
        guest_bin: args.guest_bin.clone(),
    };
    let tools: Vec<String> = scenarios.iter().flat_map(|s| s.scenario.requires.tools.clone()).collect();
    let prepared = vmprep::prepare(kernel, vm.mirror.as_deref(), vm.guest_bin.as_ref(), &tools, cancel)
        .and_then(|p| vmprep::choose_accel(vm.accel, &p, cancel).map(|a| (p, a)));
    let (p, accel) = match prepared {
        Ok(x) => x,
        Err(e) => {
            error_all(&mut row, first_line(&e));
            return row;
        }
    };
    row.release.clone_from(&p.kernel.release);
    row.accel = accel.to_string();
    let name = format!("matrix-{}", std::process::id());
    for i in 0..args.boots {
        if cancel.is_cancelled() {
            break;
        }
        let opts = BootOptions {
            name: &name,
            kernel_name: kernel,
            files: &p.files,
            image: &p.image,
            accel,
            memory_mb: vm.memory,
            cpus: vm.cpus,
            tied: true,
            cancel,
        };
        let mut m = match Machine::boot(&opts) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("kernel {kernel}: boot {} failed: {}", i + 1, first_line(&e));
                if i == 0 {
                    error_all(&mut row, format!("boot failed: {}", first_line(&e)));
                }
                break;
            }
        };
        eprintln!(
            "kernel {kernel}: boot {}/{} ready in {:.1} s ({accel})",
            i + 1,
            args.boots,
            m.state.boot_s
        );
        row.boot_s.push(m.state.boot_s);
        if i == 0 {
            for (s, engine) in scenarios.iter().flat_map(|s| engines.iter().map(move |e| (s, *e))) {
                let mut quiet = ui::View::new(true, false);
                let options = lab_scenario::Options { engine, ..args.run.options() };
                let mut outcome = run_on(&mut m, s, options, cancel, false, &mut quiet);
                // A failed cell's bundle: <out>/<kernel>/<scenario>-<engine>/failure/.
                if let Ok(o) = &mut outcome {
                    let bundle = std::mem::take(&mut o.report.failure);
                    let dir = args.out.join(kernel).join(format!("{}-{}", s.scenario.name, engine.name()));
                    if let Err(e) = lab_scenario::bundle::write(&bundle, &dir.join("failure")) {
                        eprintln!("lab-runner: cannot write {}: {e}", dir.display());
                    }
                }
                let cases = outcome.as_ref().map(|o| conform_cases(&o.report)).unwrap_or_default();
                let cell = match outcome {
                    Ok(Outcome { skipped: Some(reason), .. }) => Cell {
                        cases: Vec::new(),
                        scenario: s.scenario.name.clone(),
                        engine,
                        status: Status::Skip,
                        detail: reason,
                    },
                    Ok(o) if o.passed => Cell {
                        cases: Vec::new(),
                        scenario: s.scenario.name.clone(),
                        engine,
                        status: Status::Pass,
                        detail: summary(&o.report),
                    },
                    Ok(Outcome { error: Some(e), .. }) => Cell {
                        cases: Vec::new(),
                        scenario: s.scenario.name.clone(),
                        engine,
                        status: Status::Error,
                        detail: e.lines().next().unwrap_or_default().to_owned(),
                    },
                    Ok(o) => Cell {
                        cases: Vec::new(),
                        scenario: s.scenario.name.clone(),
                        engine,
                        status: Status::Fail,
                        detail: o.failures.join("; "),
                    },
                    Err(e) if e.is_unmet() => Cell {
                        cases: Vec::new(),
                        scenario: s.scenario.name.clone(),
                        engine,
                        status: Status::Skip,
                        detail: first_line(&e),
                    },
                    Err(e) => Cell {
                        cases: Vec::new(),
                        scenario: s.scenario.name.clone(),
                        engine,
                        status: Status::Error,
                        detail: first_line(&e),
                    },
                };
                eprintln!(
                    "kernel {kernel}: {} ({}) {:?} {}",
                    s.scenario.name,
                    engine.name(),
                    cell.status,
                    cell.detail
                );
                row.cells.push(Cell { cases, ..cell });
            }
        }
        let _ = m.down();
    }
    row.boot_median_s = median(&row.boot_s);
    row
}

/// Each conformance case and the verdicts of the runs that were compared with another run:
/// `same`, or the runs (name and family) per verdict, such as
/// `kernel bug: tcp-bpf-eagain (sockmap ipv4, sockmap ipv6)`.
fn conform_cases(report: &Report) -> Vec<(String, String)> {
    let mut cases: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for run in report.conform.iter().filter(|r| r.compare.is_some()) {
        let at = format!("{} {}", run.name, run.family.name());
        for c in &run.cases {
            let name = c.result.case.clone();
            let verdict = match (c.verdict.as_str(), &c.kernel_bug) {
                ("kernel bug", Some(id)) => format!("kernel bug: {id}"),
                (v, _) => v.to_owned(),
            };
            let i = cases.iter().position(|(n, _)| *n == name).unwrap_or_else(|| {
                cases.push((name, Vec::new()));
                cases.len() - 1
            });
            cases[i].1.push((verdict, at.clone()));
        }
    }
    cases
        .into_iter()
        .map(|(name, verdicts)| {
            let mut kinds: Vec<&str> =
                verdicts.iter().map(|(v, _)| v.as_str()).filter(|v| *v != "same").collect();
            kinds.dedup();
            kinds.sort_unstable();
            kinds.dedup();
            let text = if kinds.is_empty() {
                "same".to_owned()
            } else {
                kinds
                    .iter()
                    .map(|k| {
                        let runs: Vec<&str> =
                            verdicts.iter().filter(|(v, _)| v == k).map(|(_, at)| at.as_str()).collect();
                        format!("{k} ({})", runs.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            (name, text)
        })
        .collect()
}

/// A scenario's headline figures for its cell: its computed values, or for a conformance
/// scenario the differences it found.
fn summary(report: &Report) -> String {
    let runs = &report.conform;
    if !runs.is_empty() {
        // Runs whose data took the redirect, and the others (proxies alone, compared for
        // information).
        let count = |mesh: bool, v: &str| {
            runs.iter()
                .filter(|r| (r.mesh.msg_redirected > 0) == mesh)
                .flat_map(|r| &r.cases)
                .filter(|c| c.verdict == v)
                .count()
        };
        let mut text = format!(
            "through the mesh: {} unexplained differences, {} known kernel bugs; without it: {} differences",
            count(true, "differs"),
            count(true, "kernel bug"),
            count(false, "differs")
        );
        let iso = |k: &str| report.results.get("loopback")?.get(k).copied().filter(|v| !v.is_nan());
        if let (Some(foreign), Some(redirected), Some(skipped)) =
            (iso("foreign_bytes"), iso("msg_redirected"), iso("loopback_skipped"))
        {
            text.push_str(&format!(
                "; loopback isolation: {foreign} foreign bytes, {redirected} messages redirected, {skipped} sockets skipped"
            ));
        }
        return text;
    }
    report
        .results
        .iter()
        .filter_map(|(name, keys)| Some(format!("{name} {:.2}", keys.get("value").filter(|v| !v.is_nan())?)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn first_line(e: &VmError) -> String {
    let s = lab_sandbox::error::chain(e);
    s.lines().next().unwrap_or_default().to_owned()
}

/// The lab's one median (`lab_scenario::stats`), `None` without samples.
fn median(v: &[f64]) -> Option<f64> {
    lab_scenario::stats::Spread::of(v).map(|s| s.median)
}

/// A row's name: the scenario, with the engine when it is not the only one or not aya.
fn row_label(scenario: &str, engine: Engine, engines: &[Engine]) -> String {
    if engines.len() == 1 && engine == Engine::Aya {
        scenario.to_owned()
    } else {
        format!("{scenario} ({})", engine.name())
    }
}

/// The matrix as JUnit XML (what CI systems show as tests): a suite per kernel, a case per
/// scenario (and engine), a failure or error with its detail, a skip with its reason.
fn junit(rows: &[Row], engines: &[Engine]) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new("lab-runner matrix");
    for r in rows {
        let mut suite = TestSuite::new(format!("kernel {} ({})", r.kernel, r.release));
        for c in &r.cells {
            let mut status = match c.status {
                Status::Pass => TestCaseStatus::success(),
                Status::Fail => TestCaseStatus::non_success(NonSuccessKind::Failure),
                Status::Error => TestCaseStatus::non_success(NonSuccessKind::Error),
                Status::Skip => TestCaseStatus::skipped(),
            };
            if c.status != Status::Pass {
                status.set_message(c.detail.clone());
            }
            let mut case = TestCase::new(row_label(&c.scenario, c.engine, engines), status);
            case.set_classname(format!("kernel-{}", r.kernel));
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.to_string().expect("JUnit XML from strings serializes")
}

fn markdown(rows: &[Row], scenarios: &[Loaded], engines: &[Engine]) -> String {
    let mut s = String::from("| | ");
    s.push_str(&rows.iter().map(|r| format!("{} ({})", r.kernel, r.release)).collect::<Vec<_>>().join(" | "));
    s.push_str(" |\n|---|");
    s.push_str(&"---|".repeat(rows.len()));
    s.push('\n');
    let pairs: Vec<(&str, Engine)> =
        scenarios.iter().flat_map(|sc| engines.iter().map(|e| (sc.scenario.name.as_str(), *e))).collect();
    for &(name, engine) in &pairs {
        s.push_str(&format!("| {} |", row_label(name, engine, engines)));
        for r in rows {
            let cell = r.cells.iter().find(|c| c.scenario == name && c.engine == engine);
            let text = match cell {
                Some(Cell { status: Status::Pass, detail, .. }) if detail.is_empty() => "pass".to_owned(),
                Some(Cell { status: Status::Pass, detail, .. }) => format!("pass ({detail})"),
                Some(Cell { status: Status::Fail, detail, .. }) => format!("**fail**: {detail}"),
                Some(Cell { status: Status::Skip, detail, .. }) => format!("skip: {detail}"),
                Some(Cell { status: Status::Error, detail, .. }) => format!("**error**: {detail}"),
                None => "-".into(),
            };
            s.push_str(&format!(" {} |", text.replace('|', "\\|")));
        }
        s.push('\n');
    }
    s.push_str("| boot to agent ready (median) |");
    for r in rows {
        let n = r.boot_s.len();
        match r.boot_median_s {
            Some(m) => s.push_str(&format!(" {m:.1} s ({}, {n} boots) |", r.accel)),
            None => s.push_str(" - |"),
        }
    }
    s.push('\n');
    for &(name, engine) in &pairs {
        let cells: Vec<Option<&Cell>> =
            rows.iter().map(|r| r.cells.iter().find(|c| c.scenario == name && c.engine == engine)).collect();
        let Some(first) = cells.iter().flatten().find(|c| !c.cases.is_empty()) else { continue };
        s.push_str(&format!("\n### {}: case by kernel\n\n| case |", row_label(name, engine, engines)));
        for r in rows {
            s.push_str(&format!(" {} |", r.kernel));
        }
        s.push_str("\n|---|");
        s.push_str(&"---|".repeat(rows.len()));
        s.push('\n');
        for (case, _) in &first.cases {
            s.push_str(&format!("| {case} |"));
            for c in &cells {
                let v =
                    c.and_then(|c| c.cases.iter().find(|(n, _)| n == case)).map_or("-", |(_, v)| v.as_str());
                s.push_str(&format!(" {} |", v.replace('|', "\\|")));
            }
            s.push('\n');
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn table_has_a_row_per_scenario_and_boot_times() {
        let rows = vec![Row {
            kernel: "6.1".into(),
            release: "6.1.0-50-cloud-amd64".into(),
            accel: "tcg".into(),
            boot_s: vec![5.0, 4.0, 6.0],
            boot_median_s: Some(5.0),
            cells: vec![
                Cell {
                    cases: Vec::new(),
                    scenario: "sockmap".into(),
                    engine: Engine::Aya,
                    status: Status::Skip,
                    detail: "no | pipes".into(),
                },
                Cell {
                    cases: Vec::new(),
                    scenario: "sockmap".into(),
                    engine: Engine::Libbpf,
                    status: Status::Pass,
                    detail: String::new(),
                },
            ],
        }];
        let scenarios = [load("sockmap").ok().unwrap()];
        let md = markdown(&rows, &scenarios, &[Engine::Aya]);
        assert!(md.contains("| sockmap | skip: no \\| pipes |"), "{md}");
        assert!(md.contains("5.0 s (tcg, 3 boots)"), "{md}");
        let both = markdown(&rows, &scenarios, &[Engine::Aya, Engine::Libbpf]);
        assert!(both.contains("| sockmap (aya) | skip: no \\| pipes |"), "{both}");
        assert!(both.contains("| sockmap (libbpf) | pass |"), "{both}");
    }

    #[test]
    fn junit_has_a_suite_per_kernel_and_a_case_per_cell() {
        let cell = |engine, status, detail: &str| Cell {
            cases: Vec::new(),
            scenario: "sockmap".into(),
            engine,
            status,
            detail: detail.into(),
        };
        let rows = vec![Row {
            kernel: "5.10".into(),
            release: "5.10.0-32-cloud-amd64".into(),
            accel: "tcg".into(),
            boot_s: vec![],
            boot_median_s: None,
            cells: vec![
                cell(Engine::Aya, Status::Fail, "sockmap.write_errors_16 (2) == 0 <failed>"),
                cell(Engine::Libbpf, Status::Skip, "no BTF"),
            ],
        }];
        let xml = junit(&rows, &[Engine::Aya, Engine::Libbpf]);
        assert!(xml.contains(r#"<testsuite name="kernel 5.10 (5.10.0-32-cloud-amd64)" tests="2" skipped="1" errors="0" failures="1">"#), "{xml}");
        assert!(xml.contains(r#"<testcase name="sockmap (aya)" classname="kernel-5.10">"#), "{xml}");
        assert!(
            xml.contains(r#"<failure message="sockmap.write_errors_16 (2) == 0 &lt;failed&gt;"/>"#),
            "{xml}"
        );
        assert!(xml.contains(r#"<skipped message="no BTF"/>"#), "{xml}");
    }
}
