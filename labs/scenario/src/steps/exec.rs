//! `do = "exec"`: a command in a pod; its exit code and figures read from its output.
use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Checker, Kind, Ran, bench::FigureDef};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// Run a command in a pod; its exit code is stored as `<name>.exit`, and each figure read
/// from its output as `<name>.<figure>`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    pub name: String,
    pub pod: String,
    pub command: Vec<String>,
    #[serde(default)]
    pub expect_exit: Option<i32>,
    #[serde(default)]
    pub figures: BTreeMap<String, FigureDef>,
    #[serde(default)]
    pub explain: String,
}
// ANCHOR_END: def

impl Kind for Exec {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.pod)?;
        if self.command.is_empty() {
            return Err("exec needs a non-empty command".into());
        }
        super::bench::check_figures(&self.figures)
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        let keys = std::iter::once("exit".to_owned()).chain(self.figures.keys().cloned()).collect();
        vec![(self.name.clone(), keys)]
    }
    texts!(name, explain);
    fn on_kubernetes(&self) -> Result<(), String> {
        Ok(())
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        // `<mesh-agent>` and `<workload>` as a word of their own stand for several words
        // (`lab-runner mesh-agent` on the host); other words keep their spaces.
        let words: Vec<String> = self
            .command
            .iter()
            .flat_map(|w| match w.as_str() {
                "<mesh-agent>" | "<workload>" => e.fill(w).split(' ').map(str::to_owned).collect(),
                _ => vec![e.fill(w)],
            })
            .collect();
        let out = e.run_command(&self.pod, &words)?;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        for line in stdout.lines().chain(stderr.lines()) {
            e.out(label, line.to_owned());
        }
        let code = out.status.code().unwrap_or(-1);
        e.store(label, &self.name, &[("exit", f64::from(code))]);
        let text = format!("{stdout}{stderr}");
        for (figure, f) in &self.figures {
            let Some(v) = f.read(&text) else {
                return Ok(Ran::Failed(format!(
                    "{}: no line of the output matches /{}/ ({figure})",
                    self.name, f.regex
                )));
            };
            e.store(label, &self.name, &[(figure, v)]);
        }
        match self.expect_exit {
            Some(want) if want != code => Ok(Ran::Failed(format!(
                "{}: `{}` exited {code}, expected {want}",
                self.name,
                self.command.join(" ")
            ))),
            _ => Ok(Ran::Passed),
        }
    }
}
