//! `do = "await"`: waits for a background load and stores its figures under the load's name.
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, load::Running, results};
use crate::engine::Engine;
use lab_sandbox::LabError;

// ANCHOR: def
/// Waits for the `load` step named `load` to finish; stores its figures under that name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Await {
    pub load: String,
    #[serde(default)]
    pub explain: String,
}
// ANCHOR_END: def

results! {
    /// What a load stores under its name once awaited.
    pub struct Loaded {
        /// Round trips done.
        round_trips,
        /// Round trips that failed.
        failed,
        /// Messages sk_msg dropped by policy meanwhile (all the lab's connections).
        message_denied,
        /// The longest round trip.
        max_round_trip_ms ["ms"],
        /// Seconds it ran.
        seconds ["s"],
    }
}

impl Kind for Await {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        if !cx.loads.remove(&self.load) {
            return Err(format!("await {:?}: no earlier load step by that name is still running", self.load));
        }
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.load.clone(), Loaded::keys())]
    }
    fn label(&self) -> String {
        format!("await {}", self.load)
    }
    texts!(explain);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let Running { mut child, label: started, report, counters } =
            e.loads.remove(&self.load).expect("checked at parse");
        let status = child.wait().map_err(LabError::io("cannot wait for", "workload load"))?;
        let text = report.join().unwrap_or_default();
        let r: workloads::load::LoadReport =
            serde_json::from_str(text.trim()).map_err(|err| LabError::Parse {
                command: format!("workload load ({started}, {status})"),
                detail: format!("{err}: {text}"),
            })?;
        e.out(
            label,
            format!(
                "{}: {} round trips, {} failed, longest {:.1} ms",
                r.target, r.round_trips, r.failed, r.max_round_trip_ms
            ),
        );
        for err in &r.errors {
            e.out(label, format!("error: {err}"));
        }
        let loaded = Loaded {
            round_trips: r.round_trips as f64,
            failed: r.failed as f64,
            // Messages dropped by policy in sk_msg while it ran (any connection's).
            message_denied: e.counters()?.since(&counters).message_denied as f64,
            max_round_trip_ms: r.max_round_trip_ms,
            seconds: r.seconds,
        };
        e.record(label, &self.load, &loaded);
        Ok(Ran::Passed)
    }
}
