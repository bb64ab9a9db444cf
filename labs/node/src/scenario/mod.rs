//! Scenarios: step-by-step experiments on a lab, reporting through [`Event`]s.
pub mod sockmap;

use std::{path::PathBuf, process::Command, sync::mpsc::Sender};

use serde::{Deserialize, Serialize};

use crate::{Event, LabError, preflight::Host, process::Cancel};

/// A scenario the engine knows.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ScenarioInfo {
    pub name: &'static str,
    pub summary: &'static str,
}

/// Every scenario, in the order a reader should take them.
pub const SCENARIOS: &[ScenarioInfo] = &[ScenarioInfo {
    name: "sockmap",
    summary: "sock_ops fills a sockhash, sk_msg redirects payloads socket-to-socket: packets and latency, plain TCP vs. the mesh",
}];

pub fn find(name: &str) -> Option<&'static ScenarioInfo> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// How to start a workload process (see the `workloads` crate): `program prefix.. ARGS`.
#[derive(Debug, Clone)]
pub struct WorkloadCmd {
    pub program: PathBuf,
    pub prefix: Vec<String>,
}

impl WorkloadCmd {
    pub fn command<S: AsRef<str>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.prefix).args(args.iter().map(AsRef::as_ref));
        cmd
    }
}

/// Knobs shared by scenarios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// Measured round trips per latency run.
    pub round_trips: u64,
    /// Request and response size in bytes.
    pub size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            round_trips: 20_000,
            size: workloads::rr::DEFAULT_SIZE,
        }
    }
}

/// Everything a scenario needs from its caller.
pub struct Context {
    pub host: Host,
    pub workload: WorkloadCmd,
    pub options: Options,
    pub cancel: Cancel,
    pub events: Sender<Event>,
}

impl Context {
    pub fn emit(&self, e: Event) {
        // The receiver going away (UI gone) must not stop the teardown.
        let _ = self.events.send(e);
    }
}

/// What a scenario concluded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub scenario: String,
    pub kernel: String,
    pub passed: bool,
    /// Why it failed (empty when passed).
    pub failures: Vec<String>,
    /// The scenario's own figures.
    pub report: serde_json::Value,
}

/// Runs a scenario by name. `Err` means the lab could not run it at all (or was interrupted);
/// a scenario whose checks fail returns `Ok` with `passed: false`.
pub fn run(info: &ScenarioInfo, ctx: &Context) -> Result<Outcome, LabError> {
    match info.name {
        "sockmap" => sockmap::run(ctx),
        other => unreachable!("scenario {other} is listed but has no runner"),
    }
}

/// Runs a scenario on its own engine thread and hands each event to `on_event` as it comes.
///
/// The engine thread lives exactly as long as the lab: pod processes are tied to it
/// (`PR_SET_PDEATHSIG`) and die if it dies.
pub fn execute(
    info: &'static ScenarioInfo,
    host: Host,
    workload: WorkloadCmd,
    options: Options,
    cancel: Cancel,
    mut on_event: impl FnMut(Event),
) -> Result<Outcome, LabError> {
    let (events, rx) = std::sync::mpsc::channel();
    let ctx = Context {
        host,
        workload,
        options,
        cancel,
        events,
    };
    let engine = std::thread::spawn(move || run(info, &ctx));
    for event in rx {
        on_event(event);
    }
    engine
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
