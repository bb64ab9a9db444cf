//! lab-scenario: step-by-step experiments on a lab, written as TOML files (scenarios/*.toml, see
//! [`spec`]; one module per step kind in [`steps`]) and run by the [`engine`] on a [`site`]:
//! the lab's own sandbox (`lab_sandbox::Lab`) or a Kubernetes cluster's pods, reporting through
//! [`Event`]s.
pub mod bundle;
mod dataplane;
pub mod engine;
#[cfg(test)]
mod fuzz;
pub mod kernel_bugs;
mod measure;
pub mod report;
pub mod requirements;
pub mod site;
pub mod spec;
pub mod splat;
pub mod stats;
pub mod steps;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::mpsc::{Receiver, Sender},
};

pub use spec::Scenario;

use lab_sandbox::{Event, LabError, preflight::Host, process::Cancel};

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
/// file name shown in messages, the text, and the parsed scenario. Mesh files that its `apply`
/// steps name by path are read now (relative to the scenario file's folder) and travel with the
/// scenario in [`Scenario::mesh_files`]: the engine never reads them from disk, so a VM, which
/// has no such file, applies the user's file too.
pub fn load(name: &str) -> Result<(String, String, Scenario), LoadError> {
    if std::path::Path::new(name).extension().is_some_and(|e| e == "toml") || name.contains('/') {
        let text = std::fs::read_to_string(name)
            .map_err(|e| LoadError::Read { path: name.into(), message: e.to_string() })?;
        let dir = Path::new(name).parent().unwrap_or(Path::new(""));
        let sc = from_text(&text, name, Some(dir))?;
        return Ok((name.to_owned(), text, sc));
    }
    for (file, text) in BUILTIN {
        if Path::new(file).file_stem().is_some_and(|s| s == name) {
            let sc = from_text(text, file, None)?;
            return Ok(((*file).to_owned(), (*text).to_owned(), sc));
        }
    }
    Err(LoadError::Unknown { name: name.into(), known: builtin().into_iter().map(|(_, s)| s.name).collect() })
}

/// Everything between a scenario's text and the engine: parse, check, and read the mesh files
/// it names by path (relative to `dir`; `None` for a shipped scenario, which may name shipped
/// mesh files only). What passes here must not make the engine panic (the fuzzer holds it to
/// that).
pub fn from_text(text: &str, file: &str, dir: Option<&Path>) -> Result<Scenario, LoadError> {
    let mut sc = Scenario::parse(text, file).map_err(LoadError::Spec)?;
    sc.mesh_files = read_mesh_files(&sc, text, file, dir)?;
    Ok(sc)
}

/// The text of a mesh file a scenario applies, with the name shown in messages: one shipped in
/// scenarios/mesh/ (by its path under scenarios/, e.g. `mesh/web.toml`), else one read with the
/// scenario.
pub fn mesh_file<'a>(sc_mesh_files: &'a BTreeMap<String, String>, file: &str) -> Option<(String, &'a str)> {
    match MESH_FILES.iter().find(|(f, _)| *f == file) {
        Some((_, text)) => Some((format!("scenarios/{file}"), text)),
        None => sc_mesh_files.get(file).map(|text| (file.to_owned(), text.as_str())),
    }
}

/// Reads and parses every mesh file `sc` applies that is not a shipped one, relative to `dir`
/// (`None`: a shipped scenario, which may name shipped mesh files only). A file that cannot be
/// read is the scenario's error, at the step's line.
fn read_mesh_files(
    sc: &Scenario,
    text: &str,
    scenario_file: &str,
    dir: Option<&Path>,
) -> Result<BTreeMap<String, String>, LoadError> {
    let mut read = BTreeMap::new();
    for (i, step) in sc.steps.iter().enumerate() {
        let spec::Step::Apply(steps::apply::Apply { file, .. }) = step.get_ref() else { continue };
        let at = |why: String| {
            LoadError::Spec(spec::SpecError {
                file: scenario_file.to_owned(),
                line: mesh_agent::toml_span::locate(text, step.span(), Some(&format!("\"{file}\""))),
                message: format!("step {} (apply): mesh file {file:?}: {why}", i + 1),
            })
        };
        let (shown, mesh) = if let Some((shown, t)) = mesh_file(&BTreeMap::new(), file) {
            (shown, t.to_owned())
        } else {
            let dir =
                dir.ok_or_else(|| at(format!("not a shipped one (shipped: {})", shipped_mesh_files())))?;
            let path = dir.join(file);
            let t = std::fs::read_to_string(&path)
                .map_err(|e| at(format!("cannot read {}: {e}", path.display())))?;
            read.insert(file.clone(), t.clone());
            (path.display().to_string(), t)
        };
        mesh_agent::meshfile::MeshFile::parse(&mesh, &shown).map_err(LoadError::Mesh)?;
    }
    Ok(read)
}

fn shipped_mesh_files() -> String {
    MESH_FILES.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
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

pub use lab_sandbox::process::Cmd;

pub use lab_protocol::Options;

/// What a scenario concluded, with its report typed (JSON only on the wire).
pub type Outcome = lab_protocol::Outcome<report::Report>;

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
