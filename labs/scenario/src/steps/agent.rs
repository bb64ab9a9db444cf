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
    texts!(name, explain, try);
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
        let cgroup = e.site.lab()?.cgroup().to_owned();
        let pin_dir = e.site.lab()?.id().pin_dir();
        let agent = e.site.lab_mut()?.agent_mut().ok_or_else(|| failed("the mesh must be on"))?;
        match self.action {
            AgentAction::Kill => {
                let pid = agent.kill().ok_or_else(|| failed("the agent is not running"))?;
                e.out(label, format!("agent pid {pid} killed (SIGKILL): no clean-up ran"));
                e.record(label, &self.name, &Killed { killed: 1.0 });
            }
            AgentAction::Start => {
                let said = agent.restart()?;
                let pid = agent.pid().unwrap_or_default();
                let ready = agent.ready().cloned().expect("a started agent said it was ready");
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
                let (adopted, links, services) = match ready.started {
                    mesh_agent::Started::Adopted { links, services, .. } => (1.0, links, services),
                    mesh_agent::Started::Installed { .. } => (0.0, 0, 0),
                };
                let reapplied =
                    ready.applied.map_or(0, |a| a.services.added + a.services.changed + a.services.removed);
                let r = Restarted {
                    adopted,
                    links: links as f64,
                    services: services as f64,
                    attached_once: f64::from(u8::from(problems.is_empty())),
                    reapplied_changes: reapplied as f64,
                };
                e.record(label, &self.name, &r);
            }
        }
        Ok(())
    }
    // ANCHOR_END: agent
}
