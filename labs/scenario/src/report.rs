//! What a scenario run reports: named results, spreads, runs, conformance transcripts, checks.
//! The engine fills it; it crosses to the caller as JSON.
use std::collections::BTreeMap;

use mesh_agent::Counters;
use serde::{Deserialize, Serialize};
use workloads::{
    conform::{CaseResult, HoldReport},
    rr::RrReport,
};

use super::{
    spec::{Family, Severity},
    stats::{Spread, Verdict},
};

/// One data path of a bench step: its median latency run (the repetition whose p50 is closest
/// to the median), with packets and mesh counters totalled over all repetitions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub name: String,
    /// What was in the data path: `direct`, `sidecars per-pod`, `mesh`, ...
    pub config: String,
    pub rr: RrReport,
    /// Packets through every pod's eth0, rx + tx.
    pub packets: u64,
    pub mesh: Counters,
    /// Resident memory of each proxy after the run, KiB.
    pub proxy_rss_kb: Vec<(String, u64)>,
}

/// One conformance run (one family) and each case's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConformRun {
    pub name: String,
    pub config: String,
    pub family: Family,
    /// The run these transcripts were compared with.
    pub compare: Option<String>,
    pub cases: Vec<CaseVerdict>,
    pub mesh: Counters,
    /// `across_mesh`: the connection held open while the mesh started and stopped.
    pub held: Option<HoldReport>,
}

/// A case's transcript and how it compared.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseVerdict {
    #[serde(flatten)]
    pub result: CaseResult,
    /// `same`, `differs`, `kernel bug` (a known kernel behaviour, see [`super::kernel_bugs`]) or
    /// `reference` (nothing to compare with).
    pub verdict: String,
    /// For `kernel bug`: which one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_bug: Option<String>,
    /// On a difference, the reference transcript.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<CaseResult>,
}

/// One expectation as evaluated.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub text: String,
    /// The verdict is [`Verdict::Holds`].
    pub passed: bool,
    pub verdict: Verdict,
    pub severity: Severity,
}

/// The machine a scenario ran on, and how busy it was meanwhile.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpus: usize,
    /// 1-minute load average at the start and at the end.
    #[serde(deserialize_with = "lab_protocol::nan::f64")]
    pub load_start: f64,
    #[serde(deserialize_with = "lab_protocol::nan::f64")]
    pub load_end: f64,
    /// Share of all CPU time during the run: working, and stolen by a hypervisor.
    #[serde(deserialize_with = "lab_protocol::nan::f64")]
    pub busy_pct: f64,
    #[serde(deserialize_with = "lab_protocol::nan::f64")]
    pub steal_pct: f64,
    /// Benchmark clients on the first CPU, servers on the last.
    pub pinned: bool,
}

impl Machine {
    pub fn load() -> f64 {
        use procfs::Current as _;
        procfs::LoadAverage::current().map_or(f64::NAN, |l| f64::from(l.one))
    }
}

/// The scenario's figures: what `lab-runner` renders (report.md, the matrix), read back typed
/// from the JSON the engine (on the host, or in a VM) sends.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub lab: String,
    /// `name -> key -> value` for every named result (NaN: not measured).
    #[serde(deserialize_with = "lab_protocol::nan::table")]
    pub results: BTreeMap<String, BTreeMap<String, f64>>,
    /// `name.key -> spread` for figures measured in repetitions and ratios derived from them.
    pub stats: BTreeMap<String, Spread>,
    pub runs: Vec<Run>,
    pub conform: Vec<ConformRun>,
    pub checks: Vec<Check>,
    /// Steps skipped for want of something on this kernel or machine: step -> why.
    pub skipped_steps: BTreeMap<String, String>,
    /// The RTT of every flow record `transfer` steps checked (the report plots them).
    pub flows: Vec<FlowRtt>,
    /// The policy denials the agent logged during the run (the first [`MAX_DENIALS`]), each
    /// naming the pods behind its identities, and how many there were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub denials: Vec<mesh_agent::denials::DenialRecord>,
    pub denials_total: u64,
    /// Kernel splats logged during the run, each its lines (see `splat.rs`): any fails the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kernel_splats: Vec<String>,
    /// What a workload said when it failed, by step (the figures only count the failures).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub errors: BTreeMap<String, Vec<String>>,
    pub machine: Machine,
    /// What was collected when the run failed (see `bundle.rs`); `lab-runner` writes it into
    /// `failure/` and leaves it out of outcome.json.
    #[serde(default, skip_serializing_if = "crate::bundle::Bundle::is_empty")]
    pub failure: crate::bundle::Bundle,
}

/// Denials kept in the report (the rest are counted).
pub const MAX_DENIALS: usize = 100;

/// The denials in the flow log at `log`: the first [`MAX_DENIALS`], and how many there are.
pub fn denials(text: &str) -> (Vec<mesh_agent::denials::DenialRecord>, u64) {
    #[derive(serde::Deserialize)]
    struct Line {
        denial: mesh_agent::denials::DenialRecord,
    }
    let mut all = text.lines().filter_map(|l| serde_json::from_str::<Line>(l).ok()).map(|l| l.denial);
    let kept: Vec<_> = all.by_ref().take(MAX_DENIALS).collect();
    let total = kept.len() as u64 + all.count() as u64;
    (kept, total)
}

/// One flow record's RTT, as a `transfer` step read it from the flow log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRtt {
    /// The step's result name.
    pub step: String,
    /// `client` or `server`.
    pub reporter: String,
    /// The client's port (which connection).
    pub port: u64,
    pub srtt_us: f64,
    pub rtt_min_us: f64,
    pub rtt_max_us: f64,
}

/// `12.3 [11.9, 12.8] (97.9 %, n = 10; IQR 12.0-12.6, range 11.5-13.4)`.
pub fn interval(s: &Spread, unit: &str) -> String {
    let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
    format!(
        "{}{unit} [{}, {}] ({:.1} %, n = {}; IQR {}-{}, range {}-{})",
        round3(s.median),
        round3(s.lo),
        round3(s.hi),
        100.0 * s.confidence,
        s.n,
        round3(s.q1),
        round3(s.q3),
        round3(s.min),
        round3(s.max)
    )
}

/// Three significant digits, enough for noisy figures; whole numbers as they are (the one
/// rounding the lab prints figures with, in the terminal and in report.md).
pub fn round3(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let digits = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    format!("{v:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_significant_digits() {
        assert_eq!(round3(52.43), "52.4");
        assert_eq!(round3(0.80612), "0.806");
        assert_eq!(round3(15436.2), "15436");
        assert_eq!(round3(15.0), "15");
    }
}
