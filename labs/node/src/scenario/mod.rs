//! Scenarios: step-by-step experiments on a lab, written as TOML files (scenarios/*.toml, see
//! [`spec`]) and run by the [`engine`], which reports through [`Event`]s.
pub mod engine;
#[cfg(test)]
mod fuzz;
pub mod kernel_bugs;
pub mod requirements;
pub mod spec;
pub mod stats;

use std::{
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, Sender},
};

pub use spec::Scenario;

use crate::{Event, LabError, preflight::Host, process::Cancel};

include!(concat!(env!("OUT_DIR"), "/scenarios.rs"));

/// The scenarios shipped in scenarios/, parsed (their validity is tested).
pub fn builtin() -> Vec<(String, Scenario)> {
    BUILTIN
        .iter()
        .map(|(file, text)| {
            ((*file).to_owned(), Scenario::parse(text, file).unwrap_or_else(|e| panic!("{e}")))
        })
        .collect()
}

/// A scenario by name, or from a file when `name` is a path to a `.toml` file. Returns the
/// file name shown in messages, the text, and the parsed scenario.
pub fn load(name: &str) -> Result<(String, String, Scenario), LoadError> {
    if name.ends_with(".toml") || name.contains('/') {
        let text = std::fs::read_to_string(name)
            .map_err(|e| LoadError::Read { path: name.into(), message: e.to_string() })?;
        let sc = Scenario::parse(&text, name).map_err(LoadError::Spec)?;
        check_mesh_files(&sc)?;
        return Ok((name.to_owned(), text, sc));
    }
    for (file, text) in BUILTIN {
        if Path::new(file).file_stem().is_some_and(|s| s == name) {
            let sc = Scenario::parse(text, file).map_err(LoadError::Spec)?;
            check_mesh_files(&sc)?;
            return Ok(((*file).to_owned(), (*text).to_owned(), sc));
        }
    }
    Err(LoadError::Unknown { name: name.into(), known: builtin().into_iter().map(|(_, s)| s.name).collect() })
}

/// The text of a mesh file a scenario applies: one shipped in scenarios/mesh/ (by its path
/// under scenarios/, e.g. `mesh/web.toml`), else a file on disk. Returns the name shown in
/// messages and the text.
pub fn mesh_file(file: &str) -> Result<(String, String), LoadError> {
    if let Some((_, text)) = MESH_FILES.iter().find(|(f, _)| *f == file) {
        return Ok((format!("scenarios/{file}"), (*text).to_owned()));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| LoadError::Read { path: file.into(), message: e.to_string() })?;
    Ok((file.to_owned(), text))
}

/// Every mesh file `sc` applies parses (checked before anything runs).
fn check_mesh_files(sc: &Scenario) -> Result<(), LoadError> {
    for step in &sc.steps {
        if let spec::Step::Apply { file, .. } = step.get_ref() {
            let (shown, text) = mesh_file(file)?;
            mesh_agent::meshfile::MeshFile::parse(&text, &shown).map_err(LoadError::Mesh)?;
        }
    }
    Ok(())
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unknown scenario {name:?} (known: {}; see `lab-runner list`)", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error(transparent)]
    Spec(spec::SpecError),
    #[error(transparent)]
    Mesh(mesh_agent::meshfile::MeshFileError),
}

/// The programs the lab starts: workloads inside pods (see the `workloads` crate) and the mesh
/// agent (`mesh-agent`). On the host both are `lab-runner` itself; in a VM, binaries of their own.
#[derive(Debug, Clone)]
pub struct Programs {
    pub workload: Cmd,
    pub agent: Cmd,
}

pub use crate::process::Cmd;

pub use lab_protocol::{Options, Outcome};

/// Everything a scenario needs from its caller.
pub struct Context {
    pub host: Host,
    pub workload: Cmd,
    pub agent: Cmd,
    pub options: Options,
    pub cancel: Cancel,
    pub events: Sender<Event>,
    /// Guided mode: after each step the engine waits for a message here.
    pub gate: Option<Receiver<()>>,
}

impl Context {
    pub fn emit(&self, e: Event) {
        // The receiver going away (UI gone) must not stop the teardown.
        let _ = self.events.send(e);
    }

    /// In guided mode, announces the pause and waits for the go-ahead (or a cancel).
    pub fn pause(&self, step: &str, try_: &[String]) -> Result<(), LabError> {
        if let Some(gate) = &self.gate {
            self.emit(Event::Paused { step: step.into(), try_: try_.to_vec() });
            loop {
                self.cancel.check()?;
                match gate.recv_timeout(std::time::Duration::from_millis(100)) {
                    Ok(()) => break,
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        }
        Ok(())
    }
}

/// Runs a scenario on its own engine thread and hands each event to `on_event` as it comes.
///
/// The engine thread lives exactly as long as the lab: pod processes are tied to it
/// (`PR_SET_PDEATHSIG`) and die if it dies.
pub fn execute(
    scenario: Scenario,
    host: Host,
    programs: Programs,
    options: Options,
    cancel: Cancel,
    gate: Option<Receiver<()>>,
    mut on_event: impl FnMut(Event),
) -> Result<Outcome, LabError> {
    let (events, rx) = std::sync::mpsc::channel();
    let Programs { workload, agent } = programs;
    let ctx = Context { host, workload, agent, options, cancel, events, gate };
    let engine = std::thread::spawn(move || engine::run(&scenario, &ctx));
    for event in rx {
        on_event(event);
    }
    engine.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned()).unwrap_or_default()
}
