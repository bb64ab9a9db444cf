//! `do = "policy-scale"`: the cost of one connection against the size of the allow-list.
//!
//! Like `service-scale`, a benchmark that writes the pinned maps itself: its extra entries are
//! between identities no pod has, which no mesh file can name. It goes through the same
//! `Pinned::set_policy` as the agent's apply and restores the applied rules whatever happens.
use std::net::SocketAddr;

use mesh_common::IPPROTO_TCP;
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// The cost of one connection (connect() plus the first round trip) to `address` against how
/// many allow-list entries the policy holds: the rules of the mesh file applied last, plus
/// `count` entries between identities no pod has. Stores `rules_<count>` (microseconds, the
/// median connection).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyScale {
    pub name: String,
    pub from: String,
    pub address: SocketAddr,
    #[serde(default = "rule_counts")]
    pub counts: Vec<u32>,
    #[serde(default = "super::thousand")]
    pub connections: u32,
    #[serde(default)]
    pub repetitions: Option<u32>,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn rule_counts() -> Vec<u32> {
    vec![0, 100, 1_000, 10_000]
}

/// Most extra allow entries a `policy-scale` step may add (the map holds 65,536).
pub const MAX_SCALE_RULES: u32 = 60_000;

/// The key a count's median is stored under: `rules_100`.
fn key(count: u32) -> String {
    format!("rules_{count}")
}

impl Kind for PolicyScale {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.from)?;
        if self.counts.is_empty() || self.counts.iter().any(|c| *c > MAX_SCALE_RULES) {
            return Err(format!("counts must be 0 to {MAX_SCALE_RULES} rules each"));
        }
        super::at_least_one("connections", self.connections.into())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), self.counts.iter().map(|c| key(*c)).collect())]
    }
    texts!(name, explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        self.policy_scale(e, label)?;
        Ok(Ran::Passed)
    }
}

impl PolicyScale {
    // ANCHOR: policy_scale
    /// Connection cost against the size of the allow-list: the applied rules plus `n` entries
    /// between identities no pod has (the policy maps are hashes: a connection's lookups do not
    /// depend on how many entries there are, and this measures that they do not).
    fn policy_scale(&self, e: &mut Engine<'_>, label: &str) -> Result<(), LabError> {
        let failed = |why: &str| LabError::Command {
            command: format!("policy-scale {}", self.name),
            stderr: why.into(),
        };
        let SocketAddr::V4(to) = self.address else {
            return Err(failed("address must be IPv4"));
        };
        if e.site.lab()?.mesh().is_none() {
            return Err(failed("the mesh must be on"));
        }
        let reps = self.repetitions.unwrap_or(e.ctx.options.repetitions).max(1);
        let base = e.policy.clone();
        let mut sorted = self.counts.clone();
        sorted.sort_unstable();
        sorted.dedup();
        let mut result: Result<(), LabError> = Ok(());
        for n in sorted {
            let mut wanted = base.clone();
            for i in 0..n {
                // Identities far above any pod's: entries that exist, and match nothing.
                let key = mesh_common::PolicyKey {
                    from: 1_000_000 + i,
                    to: 2_000_000 + i,
                    port: 7000,
                    protocol: IPPROTO_TCP,
                };
                wanted.allow.insert(key, 1);
            }
            let t0 = std::time::Instant::now();
            if let Err(err) = e.site.lab_mut()?.mesh_mut().expect("checked").set_policy(&wanted) {
                result = Err(err.into());
                break;
            }
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            e.out(label, format!("{} allow entries (+{n}): written in {ms:.0} ms", wanted.allow.len()));
            let mut samples = Vec::new();
            for _ in 0..reps {
                let sample = e.ctx.cancel.check().map_err(LabError::from);
                match sample.and_then(|()| e.connect_p50(&self.from, to, self.connections)) {
                    Ok(v) => samples.push(v),
                    Err(err) => {
                        result = Err(err);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
            e.store_spread(label, &self.name, &key(n), &samples);
        }
        // The rules as the mesh file has them, whatever happened.
        if let Some(m) = e.site.lab_mut()?.mesh_mut() {
            m.set_policy(&base)?;
        }
        result
    }
    // ANCHOR_END: policy_scale
}
