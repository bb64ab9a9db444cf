//! `lab-runner scenario NAME|FILE`: runs a scenario in a VM (default) or on this machine's
//! kernel, renders its events, and writes the result files.
use std::{sync::mpsc, time::Duration};

use lab_protocol::wire::{ReplyBody, RequestBody};
use lab_sandbox::{
    clean, preflight,
    process::{Cancel, Cmd},
};
use lab_scenario::{self as scenario, Options, Outcome, Programs, Scenario};
use lab_vm::{
    VmError,
    machine::{DEFAULT_NAME, Machine},
};

use crate::{
    cli::{Backend, ScenarioArgs},
    commands::signals,
    exit, report, ui, vmprep,
};

/// A loaded scenario: the file name for messages, its text (sent to a VM) and its parse.
pub struct Loaded {
    pub file: String,
    pub text: String,
    pub scenario: Scenario,
}

/// Loads by name or path; an unknown name or a bad file is a usage error (printed).
pub fn load(name: &str) -> Result<Loaded, i32> {
    scenario::load(name).map(|(file, text, scenario)| Loaded { file, text, scenario }).map_err(|e| {
        eprintln!("lab-runner: {e}");
        exit::USAGE
    })
}

pub fn run(args: ScenarioArgs) -> i32 {
    let loaded = match load(&args.name) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let options = args.run.options();
    let backend = match backend(args.backend, &loaded) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let (result, backend) = match backend {
        Backend::Host => (on_host(&args, &loaded, options), "host"),
        Backend::Qemu => (in_vm(&args, &loaded, options), "qemu"),
        Backend::Kubernetes => (on_cluster(&args, &loaded, options), "kubernetes"),
    };
    let (mut outcome, view) = match result {
        Ok(x) => x,
        Err(code) => return code,
    };
    // The failure bundle goes into its own folder, not into the outcome shown or outcome.json.
    let failure = std::mem::take(&mut outcome.report.failure);
    view.outcome(&outcome);
    match report::write(&args.results, &outcome, backend, &failure) {
        Ok(dir) if !failure.is_empty() => {
            eprintln!("results: {} (what the lab looked like when it failed: failure/)", dir.display());
        }
        Ok(dir) => eprintln!("results: {}", dir.display()),
        Err(e) => eprintln!("lab-runner: cannot write results under {}: {e}", args.results.display()),
    }
    match (&outcome.skipped, &outcome.error, outcome.passed) {
        (Some(_), _, _) => exit::UNMET,
        (None, Some(e), _) => {
            eprintln!("lab-runner: {e}");
            exit::BACKEND
        }
        (None, None, true) => exit::OK,
        (None, None, false) => exit::SCENARIO_FAILED,
    }
}

/// Where the scenario runs: what `--backend` says, and a scenario with a `[kubernetes]` section
/// on the cluster only.
fn backend(asked: Option<Backend>, l: &Loaded) -> Result<Backend, i32> {
    let on_kubernetes = l.scenario.kubernetes.is_some();
    match (asked, on_kubernetes) {
        (None | Some(Backend::Kubernetes), true) => Ok(Backend::Kubernetes),
        (None, false) => Ok(Backend::Qemu),
        (Some(Backend::Kubernetes), false) => {
            eprintln!(
                "lab-runner: scenario {} has no [kubernetes] section: it runs in the lab's sandbox (--backend qemu or host)",
                l.scenario.name
            );
            Err(exit::USAGE)
        }
        (Some(b), true) => {
            eprintln!(
                "lab-runner: scenario {} runs on Kubernetes ([kubernetes] in {}), not with --backend {}; drop --backend",
                l.scenario.name,
                l.file,
                if b == Backend::Host { "host" } else { "qemu" }
            );
            Err(exit::USAGE)
        }
        (Some(b), false) => Ok(b),
    }
}

/// On the cluster that is up, or on one started for the run (and stopped after, also on Ctrl-C
/// and on failure): the engine applies the scenario's manifests and deletes them after.
fn on_cluster(args: &ScenarioArgs, l: &Loaded, options: Options) -> Result<(Outcome, ui::View), i32> {
    let cancel = signals::watch()?;
    let running =
        lab_cluster::Cluster::find().map_err(|e| ui::fail_cluster(&e))?.filter(lab_cluster::Cluster::healthy);
    let owned = match running {
        Some(_) => None,
        None => Some(super::cluster::up_for_run(&cancel).map_err(|e| ui::fail_cluster(&e))?),
    };
    let result = on_host_with(args, l, options, cancel);
    if let Some(c) = owned
        && let Err(e) = c.down(&mut |e| ui::cluster_event(&e))
    {
        eprintln!("lab-runner: the cluster started for this run did not go down cleanly: {e}");
    }
    result
}

/// Guided mode: a gate the engine waits on, opened by the UI after each pause.
fn gate(step: bool) -> (Option<mpsc::Sender<()>>, Option<mpsc::Receiver<()>>) {
    if step {
        let (tx, rx) = mpsc::channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    }
}

fn on_host(args: &ScenarioArgs, l: &Loaded, options: Options) -> Result<(Outcome, ui::View), i32> {
    let cancel = signals::watch()?;
    on_host_with(args, l, options, cancel)
}

/// The engine on this machine's kernel: in the lab's sandbox, or on the cluster's pods.
fn on_host_with(
    args: &ScenarioArgs,
    l: &Loaded,
    options: Options,
    cancel: lab_protocol::Cancel,
) -> Result<(Outcome, ui::View), i32> {
    let host = preflight::check().map_err(|e| ui::fail(&e))?;
    let mut view = ui::View::new(args.json, args.step);
    // Labs whose owner was killed outright cannot clean up after themselves; do it for them.
    for left in clean::leftovers() {
        if clean::remove(&left).is_ok() {
            view.note(&format!("removed {left} left by an earlier lab"));
        }
    }
    let program = std::env::current_exe().map_err(|e| {
        eprintln!("lab-runner: cannot find its own executable: {e}");
        exit::BACKEND
    })?;
    let programs = Programs {
        workload: Cmd { program: program.clone(), prefix: vec!["workload".into()] },
        agent: Cmd { program, prefix: vec!["mesh-agent".into()] },
    };
    let (go, gate_rx) = gate(args.step);
    let result =
        scenario::execute(l.scenario.clone(), host, programs, options, cancel.clone(), gate_rx, |e| {
            if view.event(&e, &cancel)
                && let Some(go) = &go
            {
                let _ = go.send(());
            }
        });
    if cancel.is_cancelled() {
        eprintln!("lab-runner: interrupted; the lab was torn down");
        return Err(exit::INTERRUPTED);
    }
    result.map(|o| (o, view)).map_err(|e| ui::fail(&e))
}

fn in_vm(args: &ScenarioArgs, l: &Loaded, options: Options) -> Result<(Outcome, ui::View), i32> {
    let cancel = signals::watch()?;
    // Use the VM that is up, or boot one for this run (tied to this process, removed after).
    let (mut machine, owned) = match Machine::find(DEFAULT_NAME) {
        Ok(Some(m)) => {
            if let Some(k) = &args.vm.kernel
                && *k != m.state.kernel
            {
                eprintln!(
                    "lab-runner: the VM that is up runs kernel {}, not {k}; `lab-runner down` first or drop --kernel",
                    m.state.kernel
                );
                return Err(exit::USAGE);
            }
            (m, false)
        }
        Ok(None) => match vmprep::boot(
            &format!("scenario-{}", std::process::id()),
            &args.vm,
            true,
            &l.scenario.requires.tools,
            &cancel,
        ) {
            Ok(m) => (m, true),
            Err(e) => return Err(ui::fail_vm(&e)),
        },
        Err(e) => return Err(ui::fail_vm(&e)),
    };
    let mut view = ui::View::new(args.json, args.step).in_vm(&machine.state.name);
    let result = run_on(&mut machine, l, options, &cancel, args.step, &mut view);
    if owned {
        let _ = machine.down();
    } else if !machine.alive() {
        machine.kill();
    }
    match result {
        Ok(outcome) => Ok((outcome, view)),
        Err(VmError::Cancelled) => {
            eprintln!(
                "lab-runner: interrupted; the lab was torn down{}",
                if owned { " and the VM stopped" } else { "" }
            );
            Err(exit::INTERRUPTED)
        }
        Err(e) => Err(ui::fail_vm(&e)),
    }
}

/// Runs one scenario in a running VM, rendering its events as they stream in.
pub fn run_on(
    m: &mut Machine,
    l: &Loaded,
    options: Options,
    cancel: &Cancel,
    guided: bool,
    view: &mut ui::View,
) -> Result<Outcome, VmError> {
    let mut ch = m.channel(Duration::from_secs(30))?;
    let timeout = vmprep::scenario_timeout(m.state.accel);
    let during = format!("during scenario {} on kernel {}", l.scenario.name, m.state.kernel);
    let request = RequestBody::Scenario {
        file: l.file.clone(),
        source: l.text.clone(),
        mesh_files: l.scenario.mesh_files.clone(),
        options,
        guided,
    };
    let reply = ch.request(request, timeout, &during, Some(cancel), |r| match r {
        ReplyBody::Event { event } => view.event(event, cancel).then_some(RequestBody::Continue),
        _ => None,
    })?;
    match reply {
        ReplyBody::Outcome { outcome } => {
            outcome.try_map(serde_json::from_value).map_err(|e| VmError::Guest {
                message: format!("the guest's report does not read as a lab_scenario::Report: {e}"),
                unmet: false,
            })
        }
        ReplyBody::Error { message, unmet } => Err(VmError::Guest { message, unmet }),
        other => Err(VmError::Guest { message: format!("unexpected reply {other:?}"), unmet: false }),
    }
}
