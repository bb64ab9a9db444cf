//! `do = "apply"`: a mesh file applied to the running mesh, by difference.
use mesh_agent::{
    Pinned,
    meshfile::{MeshFile, PodAddrs},
};
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// Apply a mesh file to the running mesh (through its agent), by difference (scenarios/mesh/NAME.toml as
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
    texts!(name, explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let a = self.apply(e, label)?;
        e.record(label, &self.name, &a);
        Ok(Ran::Passed)
    }
}

impl Apply {
    // ANCHOR: apply
    /// Applies a mesh file through the running agent (pods selected by label, services and
    /// policy written by difference), and keeps what it resolves to for the steps after it.
    fn apply(&self, e: &mut Engine<'_>, label: &str) -> Result<Applied, LabError> {
        let file = &self.file;
        let failed = |stderr: String| LabError::Command { command: format!("apply {file}"), stderr };
        let (shown, text) = crate::mesh_file(&e.mesh_files, file)
            .ok_or_else(|| failed("not read with the scenario (scenario::load reads it)".into()))?;
        let text = text.to_owned();
        let mf = MeshFile::parse(&text, &shown).map_err(|e| failed(e.to_string()))?;
        if e.site.lab()?.mesh().is_none() {
            return Err(failed("the mesh must be on to apply a mesh file".into()));
        }
        // The one control plane: the agent applies the file with the lab's pods. What it
        // resolves to is computed here too (the same code), for the steps that read it.
        let a = e.site.lab_mut()?.apply_mesh_file(text.as_bytes())?;
        let pods: Vec<PodAddrs> = e.site.lab()?.pod_addrs();
        let resolved = mf.resolve(&pods);
        let policy = mesh_agent::policy::resolve(&mf, &pods);
        if !mf.policy.is_empty() || a.policy_removed > 0 {
            for (id, flags) in &policy.policed {
                let who = policy.members.get(id).map(|m| m.join(", ")).unwrap_or_default();
                let what = match (
                    flags & mesh_common::POLICED_INGRESS != 0,
                    flags & mesh_common::POLICED_EGRESS != 0,
                ) {
                    (true, false) => "accepts only what the rules allow",
                    (false, true) => "reaches only what the rules allow",
                    _ => "accepts and reaches only what the rules allow",
                };
                e.out(label, format!("policy: identity {id} ({who}) {what}"));
            }
            e.out(
                label,
                format!(
                    "policy: {} rules -> {} allow entries, {} with HTTP matches ({} map entries added, {} removed)",
                    a.rules, a.allow_entries, a.http_rules, a.policy_added, a.policy_removed
                ),
            );
            if e.site.lab()?.mesh().map(Pinned::engine) == Some(mesh_agent::Engine::Libbpf) {
                e.out(
                    label,
                    "policy: the redirect is the C twin's (--engine libbpf), whose sk_msg neither judges \
                     established connections again nor HTTP requests: connect and ingress checks only"
                        .into(),
                );
            }
        }
        for r in &resolved {
            let behind = if r.slot_names.is_empty() {
                "no backend (connect() is refused)".into()
            } else {
                r.slot_names.join(", ")
            };
            e.out(label, format!("service {}: {behind}", r.name));
        }
        let c = a.services;
        e.out(
            label,
            format!(
                "{shown}: {} added, {} changed, {} removed, {} unchanged (applied by the agent)",
                c.added, c.changed, c.removed, c.unchanged
            ),
        );
        e.services = resolved;
        e.policy = policy;
        Ok(Applied {
            added: c.added as f64,
            changed: c.changed as f64,
            removed: c.removed as f64,
            unchanged: c.unchanged as f64,
        })
    }
    // ANCHOR_END: apply
}
