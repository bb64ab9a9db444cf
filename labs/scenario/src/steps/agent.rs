//! `do = "agent"`: the mesh agent killed (SIGKILL, no clean-up) or started again (it adopts the
//! pins and re-applies the last mesh file).
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// The mesh agent process: `kill` it (SIGKILL: no clean-up, the datapath stays in the
/// pins) or `start` it again (it adopts the pins and re-applies the last mesh file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: String,
    pub action: AgentAction,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

/// What an `agent` step does to the mesh agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentAction {
    Kill,
    Start,
}

results! {
    /// What an agent step with `action = "kill"` stores under its name.
    pub struct Killed {
        /// 1.
        killed,
    }
}

results! {
    /// What an agent step with `action = "start"` stores under its name.
    pub struct Restarted {
        /// 1 when it found the pins and attached nothing, 0 when it installed.
        adopted,
        /// Pinned links it adopted.
        links,
        /// Services it adopted.
        services,
        /// 1 when the cgroup runs each mesh program exactly once.
        attached_once,
        /// The changes re-applying the mesh file made.
        reapplied_changes,
    }
}

impl Kind for Agent {
    fn check(&self, _: &mut Checker<'_>) -> Result<(), String> {
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        let keys = match self.action {
            AgentAction::Kill => Killed::keys(),
            AgentAction::Start => Restarted::keys(),
        };
        vec![(self.name.clone(), keys)]
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
        self.agent(e, label)?;
        Ok(Ran::Passed)
    }
}

impl Agent {
    // ANCHOR: agent
    /// Kills the mesh agent (SIGKILL) or starts it again.
    fn agent(&self, e: &mut Engine<'_>, label: &str) -> Result<(), LabError> {
        let failed = |stderr: &str| LabError::Command {
            command: format!("agent {}", self.name),
            stderr: stderr.into(),
        };
        let cgroup = e.lab.cgroup().to_owned();
        let pin_dir = e.lab.id().pin_dir();
        let agent = e.lab.agent_mut().ok_or_else(|| failed("the mesh must be on"))?;
        match self.action {
            AgentAction::Kill => {
                let pid = agent.kill().ok_or_else(|| failed("the agent is not running"))?;
                e.out(label, format!("agent pid {pid} killed (SIGKILL): no clean-up ran"));
                e.record(label, &self.name, &Killed { killed: 1.0 });
            }
            AgentAction::Start => {
                let said = agent.restart()?;
                let pid = agent.pid().unwrap_or_default();
                let adopted = said.iter().find_map(|l| adopted_counts(l));
                let reapplied = said.iter().find_map(|l| applied_counts(l));
                for l in said {
                    e.out(label, format!("agent (pid {pid}): {l}"));
                }
                // What the kernel says, not what the agent says: each mesh program once.
                let status = mesh_agent::status::read(&pin_dir, Some(&cgroup))?;
                let problems = status.attach_problems();
                e.out(
                    label,
                    if problems.is_empty() {
                        format!(
                            "cgroup: each of the {} mesh hooks runs one mesh program",
                            status.attached.len()
                        )
                    } else {
                        format!("cgroup: {}", problems.join("; "))
                    },
                );
                let (links, services) = adopted.unwrap_or((0, 0));
                let r = Restarted {
                    adopted: f64::from(u8::from(adopted.is_some())),
                    links: links as f64,
                    services: services as f64,
                    attached_once: f64::from(u8::from(problems.is_empty())),
                    reapplied_changes: reapplied.map_or(0.0, |[a, c, r, _]| (a + c + r) as f64),
                };
                e.record(label, &self.name, &r);
            }
        }
        Ok(())
    }
    // ANCHOR_END: agent
}

/// `adopted N pinned links and M services from ...` -> (N, M).
fn adopted_counts(line: &str) -> Option<(usize, usize)> {
    let rest = line.strip_prefix("adopted ")?;
    let mut words = rest.split_whitespace();
    let links = words.next()?.parse().ok()?;
    let services = words.nth(3)?.parse().ok()?;
    Some((links, services))
}

/// `applied FILE: a added, c changed, r removed, u unchanged` -> [a, c, r, u].
fn applied_counts(line: &str) -> Option<[usize; 4]> {
    let (_, counts) = line.strip_prefix("applied ")?.rsplit_once(": ")?;
    let mut out = [0; 4];
    for (slot, part) in out.iter_mut().zip(counts.split(", ")) {
        *slot = part.split_whitespace().next()?.parse().ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_agent_says_it_adopted_and_applied() {
        let adopted =
            "adopted 10 pinned links and 4 services from /sys/fs/bpf/x/layout-1 (nothing attached again)";
        assert_eq!(adopted_counts(adopted), Some((10, 4)));
        assert_eq!(adopted_counts("installed in /sys/fs/bpf/x/layout-1"), None);
        let applied = "applied /run/sidecarless-lab/1-0/web.toml: 0 added, 2 changed, 1 removed, 4 unchanged";
        assert_eq!(applied_counts(applied), Some([0, 2, 1, 4]));
    }
}
