//! What the engine reports while a scenario runs. The terminal UI, `--json` and reports all
//! consume the same stream.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use serde::{Deserialize, Serialize};

/// One pod of a running lab, as events and reports show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub netns: String,
    pub cgroup: PathBuf,
    /// The pod's interface in its namespace.
    pub interface: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// One thing that happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The sandbox exists.
    LabUp {
        id: String,
        pods: Vec<Pod>,
    },
    /// A step began; `explain` says what it shows.
    StepStarted {
        step: String,
        explain: String,
    },
    /// A line worth showing (a command's output, a counter).
    Output {
        step: String,
        line: String,
    },
    /// A measured figure.
    Metric {
        step: String,
        name: String,
        /// Not a number (a ratio with nothing to divide) travels as JSON `null`.
        #[serde(deserialize_with = "crate::nan::f64")]
        value: f64,
        unit: String,
    },
    StepPassed {
        step: String,
    },
    StepFailed {
        step: String,
        reason: String,
    },
    StepSkipped {
        step: String,
        reason: String,
    },
    /// Guided mode: the engine waits before the next step; `try_` lists commands to run now.
    Paused {
        step: String,
        try_: Vec<String>,
    },
}
