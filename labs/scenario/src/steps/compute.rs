//! `do = "compute"`: a figure derived from others (a ratio, an extrapolation).
use serde::Deserialize;

use super::{Checker, Kind, Ran, Results, results};
use crate::{engine::Engine, report::interval, stats::Spread};
use lab_sandbox::LabError;

// ANCHOR: def
/// `name.value = factor * metric` (divided by `of` when given): ratios, extrapolations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compute {
    pub name: String,
    pub metric: String,
    #[serde(default)]
    pub of: Option<String>,
    #[serde(default = "super::one")]
    pub factor: f64,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub explain: String,
}
// ANCHOR_END: def

results! {
    /// What a compute step stores under its name.
    pub struct Computed {
        /// The figure: over repetitions, the median of the per-repetition values.
        value,
    }
}

impl Kind for Compute {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.metric(&self.metric)?;
        if let Some(o) = &self.of {
            cx.metric(o)?;
        }
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        vec![(self.name.clone(), Computed::keys())]
    }
    fn reads(&self) -> Vec<&str> {
        std::iter::once(self.metric.as_str()).chain(self.of.as_deref()).collect()
    }
    texts!(name, explain);
    fn on_kubernetes(&self) -> Result<(), String> {
        Ok(())
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let (metric, factor) = (self.metric.as_str(), self.factor);
        let spread = match &self.of {
            Some(o) => e.paired(metric, o, 1.0 / factor),
            None => e
                .spread(metric)
                .and_then(|s| Spread::of(&s.samples.iter().map(|v| factor * v).collect::<Vec<_>>())),
        };
        let mut value = factor * e.value(metric);
        if let Some(o) = &self.of {
            value /= e.value(o);
        }
        if let Some(s) = spread {
            // Over repetitions: the median of the per-repetition values.
            value = s.median;
            e.out(label, format!("{} = {}", self.name, interval(&s, &self.unit)));
            e.report.stats.insert(format!("{}.value", self.name), s);
        }
        e.report.results.entry(self.name.clone()).or_default().insert("value".into(), value);
        e.metric(label, &self.name, value, &self.unit);
        Ok(Ran::Passed)
    }
}
