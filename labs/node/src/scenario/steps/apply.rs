//! `do = "apply"`: a mesh file applied to the running mesh, by difference.
use mesh_agent::{
    Pinned,
    meshfile::{MeshFile, PodAddrs},
};
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::{LabError, scenario::engine::Engine};

// ANCHOR: def
/// Apply a mesh file to the running mesh, by difference (scenarios/mesh/NAME.toml as
/// `mesh/NAME.toml`, or a path); stores `added`, `changed`, `removed`, `unchanged`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Apply {
    pub name: String,
    pub file: String,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

results! {
    /// Service map entries an apply step wrote, by what happened to each.
    pub struct Applied {
        added,
        changed,
        removed,
        unchanged,
    }
}

impl Kind for Apply {
    fn check(&self, _: &mut Checker<'_>) -> Result<(), String> {
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Applied::keys())]
    }
    fn label(&self) -> String {
        self.name.clone()
    }
    fn explain(&self) -> &str {
        &self.explain
    }
    fn try_(&self) -> &[String] {
        &self.try_
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let a = self.apply(e, label)?;
        e.record(label, &self.name, &a);
        Ok(Ran::Passed)
    }
}

impl Apply {
    // ANCHOR: apply
    /// Applies a mesh file to the running mesh: pods selected by label, services written by
    /// difference.
    fn apply(&self, e: &mut Engine<'_>, label: &str) -> Result<Applied, LabError> {
        let file = &self.file;
        let failed = |stderr: String| LabError::Command { command: format!("apply {file}"), stderr };
        let (shown, text) = crate::scenario::mesh_file(&e.mesh_files, file)
            .ok_or_else(|| failed("not read with the scenario (scenario::load reads it)".into()))?;
        let text = text.to_owned();
        let mf = MeshFile::parse(&text, &shown).map_err(|e| failed(e.to_string()))?;
        let pods: Vec<PodAddrs> = e.lab.pod_addrs();
        let resolved = mf.resolve(&pods);
        let wanted = mesh_agent::meshfile::wanted(&resolved);
        let policy = mesh_agent::policy::resolve(&mf, &pods);
        let mesh =
            e.lab.mesh_mut().ok_or_else(|| failed("the mesh must be on to apply a mesh file".into()))?;
        let applied = mesh.set_services(&wanted)?;
        let p = mesh.set_policy(&policy)?;
        e.policy = policy.clone();
        if !mf.policy.is_empty() || p.removed > 0 {
            for id in &policy.policed {
                let who = policy.members.get(id).map(|m| m.join(", ")).unwrap_or_default();
                e.out(label, format!("policy: identity {id} ({who}) accepts only what the rules allow"));
            }
            e.out(
                label,
                format!(
                    "policy: {} rules -> {} allow entries, {} with HTTP matches ({} map entries added, {} removed)",
                    mf.policy.len(),
                    policy.allow.len(),
                    policy.http.len(),
                    p.added,
                    p.removed
                ),
            );
            if e.lab.mesh().map(Pinned::engine) == Some(mesh_agent::Engine::Libbpf) {
                e.out(
                    label,
                    "policy: the redirect is the C twin's (--engine libbpf), whose sk_msg neither judges \
                     established connections again nor HTTP requests: connect and ingress checks only"
                        .into(),
                );
            }
        }
        // What a restarted agent applies: this file (with the lab's pods).
        e.lab.keep_mesh_file(text.as_bytes())?;
        for r in &resolved {
            let behind = if r.slot_names.is_empty() {
                "no backend (connect() is refused)".into()
            } else {
                r.slot_names.join(", ")
            };
            e.out(label, format!("service {}: {behind}", r.name));
        }
        e.out(
            label,
            format!(
                "{shown}: {} added, {} changed, {} removed, {} unchanged",
                applied.added, applied.changed, applied.removed, applied.unchanged
            ),
        );
        e.services = resolved;
        Ok(Applied {
            added: applied.added as f64,
            changed: applied.changed as f64,
            removed: applied.removed as f64,
            unchanged: applied.unchanged as f64,
        })
    }
    // ANCHOR_END: apply
}
