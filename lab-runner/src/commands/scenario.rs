//! `lab-runner scenario NAME`: runs a scenario in a VM (default) or on this machine's kernel,
//! and renders its events.
use lab_node::{
    clean,
    guest::protocol::{ReplyBody, RequestBody},
    preflight,
    process::Cancel,
    scenario::{self, Options, Outcome, ScenarioInfo, WorkloadCmd},
};
use lab_vm::{
    VmError,
    machine::{DEFAULT_NAME, Machine},
};

use crate::{
    cli::{Backend, ScenarioArgs},
    commands::signals,
    exit, ui, vmprep,
};

pub fn run(args: ScenarioArgs) -> i32 {
    let Some(info) = scenario::find(&args.name) else {
        let known: Vec<_> = scenario::SCENARIOS.iter().map(|s| s.name).collect();
        eprintln!(
            "lab-runner: unknown scenario {:?} (known: {}; see `lab-runner list`)",
            args.name,
            known.join(", ")
        );
        return exit::USAGE;
    };
    let options = Options {
        round_trips: args.round_trips,
        size: args.size,
    };
    match args.backend {
        Backend::Host => on_host(&args, info, options),
        Backend::Qemu => in_vm(&args, info, options),
    }
}

fn finish(view: &ui::View, outcome: &Outcome) -> i32 {
    view.outcome(outcome);
    if outcome.passed {
        exit::OK
    } else {
        exit::SCENARIO_FAILED
    }
}

fn on_host(args: &ScenarioArgs, info: &'static ScenarioInfo, options: Options) -> i32 {
    let host = match preflight::check() {
        Ok(h) => h,
        Err(e) => return ui::fail(&e),
    };
    let mut view = ui::View::new(args.json);
    // Labs whose owner was killed outright cannot clean up after themselves; do it for them.
    for l in clean::leftovers() {
        if clean::remove(&l).is_ok() {
            view.note(&format!("removed {l} left by an earlier lab"));
        }
    }
    let workload = match std::env::current_exe() {
        Ok(program) => WorkloadCmd {
            program,
            prefix: vec!["workload".into()],
        },
        Err(e) => {
            eprintln!("lab-runner: cannot find its own executable: {e}");
            return exit::BACKEND;
        }
    };
    let cancel = match signals::watch() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let result = scenario::execute(info, host, workload, options, cancel.clone(), |e| {
        view.event(&e)
    });
    if cancel.is_cancelled() {
        eprintln!("lab-runner: interrupted; the lab was torn down");
        return exit::INTERRUPTED;
    }
    match result {
        Ok(outcome) => finish(&view, &outcome),
        Err(e) => ui::fail(&e),
    }
}

fn in_vm(args: &ScenarioArgs, info: &'static ScenarioInfo, options: Options) -> i32 {
    let cancel = match signals::watch() {
        Ok(c) => c,
        Err(code) => return code,
    };
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
                return exit::USAGE;
            }
            (m, false)
        }
        Ok(None) => match vmprep::boot(&format!("scenario-{}", std::process::id()), &args.vm, true)
        {
            Ok(m) => (m, true),
            Err(e) => return ui::fail_vm(&e),
        },
        Err(e) => return ui::fail_vm(&e),
    };
    let mut view = ui::View::new(args.json);
    let result = run_on(&mut machine, info, options, &cancel, &mut view);
    if owned {
        let _ = machine.down();
    } else if !machine.alive() {
        machine.kill();
    }
    match result {
        Ok(outcome) => finish(&view, &outcome),
        Err(VmError::Cancelled) => {
            eprintln!(
                "lab-runner: interrupted; the lab was torn down{}",
                if owned { " and the VM stopped" } else { "" }
            );
            exit::INTERRUPTED
        }
        Err(e) => ui::fail_vm(&e),
    }
}

/// Runs one scenario in a running VM, rendering its events as they stream in.
pub fn run_on(
    m: &mut Machine,
    info: &ScenarioInfo,
    options: Options,
    cancel: &Cancel,
    view: &mut ui::View,
) -> Result<Outcome, VmError> {
    let mut ch = m.channel()?;
    let timeout = vmprep::scenario_timeout(m.state.accel);
    let during = format!("during scenario {} on kernel {}", info.name, m.state.kernel);
    let reply = ch.request(
        RequestBody::Scenario {
            name: info.name.into(),
            options,
        },
        timeout,
        &during,
        Some(cancel),
        |r| {
            if let ReplyBody::Event { event } = r {
                view.event(event);
            }
        },
    )?;
    match reply {
        ReplyBody::Outcome { outcome } => Ok(outcome),
        ReplyBody::Error { message, unmet } => Err(VmError::Guest { message, unmet }),
        other => Err(VmError::Guest {
            message: format!("unexpected reply {other:?}"),
            unmet: false,
        }),
    }
}
