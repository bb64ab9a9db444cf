//! `lab-runner scenario NAME`: runs a scenario and renders its events.
use std::{sync::mpsc, thread};

use lab_node::{
    clean, preflight,
    process::Cancel,
    scenario::{self, Options, WorkloadCmd},
};

use crate::{
    cli::{Backend, ScenarioArgs},
    exit, ui,
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
    let Backend::Host = args.backend;
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
    let cancel = Cancel::new();
    if let Err(e) = watch_signals(cancel.clone()) {
        eprintln!("lab-runner: cannot install signal handlers: {e}");
        return exit::BACKEND;
    }
    let options = Options {
        round_trips: args.round_trips,
        size: args.size,
    };
    let result = scenario::execute(info, host, workload, options, cancel.clone(), |e| {
        view.event(&e)
    });
    if cancel.is_cancelled() {
        eprintln!("lab-runner: interrupted; the lab was torn down");
        return exit::INTERRUPTED;
    }
    match result {
        Ok(outcome) => {
            view.outcome(&outcome);
            if outcome.passed {
                exit::OK
            } else {
                exit::SCENARIO_FAILED
            }
        }
        Err(e) => ui::fail(&e),
    }
}

/// SIGINT and SIGTERM set `cancel` instead of killing the process, so the engine can tear the
/// lab down. Returns once the handlers are installed.
fn watch_signals(cancel: Cancel) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (ready, installed) = mpsc::channel();
    thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return drop(ready.send(Err(e))),
        };
        rt.block_on(async move {
            let (mut int, mut term) = match (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) {
                (Ok(i), Ok(t)) => (i, t),
                (Err(e), _) | (_, Err(e)) => return drop(ready.send(Err(e))),
            };
            let _ = ready.send(Ok(()));
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            cancel.cancel();
        });
    });
    installed
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("signal thread died")))
}
