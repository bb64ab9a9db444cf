//! `do = "mesh"`: the eBPF mesh on or off.
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::{engine::Engine, spec::OnOff};
use lab_sandbox::LabError;

// ANCHOR: def
/// Turn the eBPF mesh on or off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mesh {
    pub state: OnOff,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

impl Kind for Mesh {
    fn check(&self, _: &mut Checker<'_>) -> Result<(), String> {
        Ok(())
    }
    fn label(&self) -> String {
        match self.state {
            OnOff::On => "mesh on".into(),
            OnOff::Off => "mesh off".into(),
        }
    }
    texts!(explain, try);
    fn on_kubernetes(&self) -> Result<(), String> {
        Ok(())
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        match self.state {
            OnOff::On => {
                for line in e.mesh_on()? {
                    e.out(label, line);
                }
            }
            OnOff::Off => e.mesh_off()?,
        }
        Ok(Ran::Passed)
    }
}
