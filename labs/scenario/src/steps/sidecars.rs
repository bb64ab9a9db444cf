//! `do = "sidecars"`: proxies in the data path (per pod or per node), or out of it.
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::{engine::Engine, spec::SidecarMode};
use lab_sandbox::LabError;

// ANCHOR: def
/// Put proxies in the data path (or take them out).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecars {
    pub mode: SidecarMode,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

impl Kind for Sidecars {
    fn check(&self, _: &mut Checker<'_>) -> Result<(), String> {
        Ok(())
    }
    fn label(&self) -> String {
        match self.mode {
            SidecarMode::PerPod => "sidecars per pod".into(),
            SidecarMode::PerNode => "proxy per node".into(),
            SidecarMode::Off => "sidecars off".into(),
        }
    }
    texts!(explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        for line in e.set_sidecars(self.mode)? {
            e.out(label, line);
        }
        Ok(Ran::Passed)
    }
}
