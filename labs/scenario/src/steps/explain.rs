//! `do = "explain"`: text only, shown between steps.
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// Only text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Explain {
    pub title: String,
    pub text: String,
}
// ANCHOR_END: def

impl Kind for Explain {
    fn check(&self, _: &mut Checker<'_>) -> Result<(), String> {
        Ok(())
    }
    fn label(&self) -> String {
        self.title.clone()
    }
    fn explain(&self) -> &str {
        &self.text
    }
    fn on_kubernetes(&self) -> Result<(), String> {
        Ok(())
    }
    fn run(&self, _: &mut Engine<'_>, _: &str) -> Result<Ran, LabError> {
        Ok(Ran::Passed)
    }
}
