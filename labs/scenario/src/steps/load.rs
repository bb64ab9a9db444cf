//! `do = "load"`: steady request/response traffic in the background, collected by `await`.
use std::net::SocketAddr;

use mesh_agent::Counters;
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::engine::{Client, Engine};
use lab_sandbox::LabError;

// ANCHOR: def
/// Steady request/response traffic from a pod in the background (`workload load`), for
/// `seconds`; the step returns once every connection is up. An `await` step collects it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub name: String,
    pub from: String,
    /// Where `rr-server` answers: a pod's address and port, or a service address.
    pub address: SocketAddr,
    #[serde(default = "super::four")]
    pub connections: u32,
    #[serde(default = "ten")]
    pub seconds: f64,
    /// As for `balance`: outside the lab's cgroup, unseen by the mesh.
    #[serde(default)]
    pub outside_mesh: bool,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn ten() -> f64 {
    10.0
}

/// A `load` step's process, running in the background until its `await`.
pub struct Running {
    pub child: std::process::Child,
    pub label: String,
    /// Reads the report the load prints when it ends.
    pub report: std::thread::JoinHandle<String>,
    /// The mesh's counters when it started.
    pub counters: Counters,
}

impl Kind for Load {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.pod(&self.from)?;
        if self.connections == 0 || !(self.seconds > 0.0 && self.seconds <= 600.0) {
            return Err("a load needs at least 1 connection and 0 < seconds <= 600".into());
        }
        if cx.results.contains_key(&self.name) || !cx.loads.insert(self.name.clone()) {
            return Err(format!("name {:?} is already used", self.name));
        }
        Ok(())
    }
    texts!(name, explain, try);
    // ANCHOR: load
    /// Starts `workload load` in `from` and returns once its connections are up.
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let from = Client { pod: &self.from, outside_mesh: self.outside_mesh };
        let (address, connections, seconds) = (self.address, self.connections, self.seconds);
        let args = workloads::load::Args {
            connections,
            seconds,
            ..workloads::defaults(&[("connect", address.to_string())])
        };
        let cmd = e.ctx.workload.command(&workloads::Workload::Load(args).argv());
        let mut child = if from.outside_mesh {
            e.site.lab()?.spawn_piped_outside(from.pod, cmd)?
        } else {
            e.site.lab()?.spawn_piped(from.pod, cmd)?
        };
        let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        use std::io::BufRead as _;
        if stdout.read_line(&mut line).map_err(LabError::io("cannot read from", "workload load"))? == 0
            || line.trim() != "ready"
        {
            let _ = child.kill();
            let out = child.wait_with_output().map_err(LabError::io("cannot wait for", "workload load"))?;
            return Err(LabError::Command {
                command: format!("workload load --connect {address}"),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        // The rest of stdout (the report) is read at `await`.
        child.stdout = None;
        let report = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut stdout, &mut s);
            s
        });
        e.out(
            label,
            format!("{connections} connections {from} -> {address} doing round trips for {seconds} s, in the background"),
        );
        let counters = e.counters()?;
        e.loads.insert(self.name.clone(), Running { child, label: label.to_owned(), report, counters });
        Ok(Ran::Passed)
    }
    // ANCHOR_END: load
}
