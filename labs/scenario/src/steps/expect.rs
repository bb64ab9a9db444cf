//! `do = "expect"`: a check on a figure, judged on its confidence interval when it was measured
//! in repetitions.
use serde::Deserialize;

use super::{Checker, Kind, Ran};
use crate::{
    engine::Engine,
    report::{Check, interval},
    spec::{Op, Severity},
    stats::Verdict,
};
use lab_sandbox::LabError;

// ANCHOR: def
/// `metric op value`, or `metric op factor * of`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub metric: String,
    pub op: Op,
    #[serde(default)]
    pub value: Option<f64>,
    #[serde(default)]
    pub of: Option<String>,
    #[serde(default = "super::one")]
    pub factor: f64,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default)]
    pub explain: String,
}
// ANCHOR_END: def

impl Kind for Expect {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        cx.metric(&self.metric)?;
        match (&self.of, self.value) {
            (Some(o), None) => cx.metric(o),
            (None, Some(_)) => Ok(()),
            _ => Err("expect needs exactly one of `value` or `of`".into()),
        }
    }
    fn reads(&self) -> Vec<&str> {
        std::iter::once(self.metric.as_str()).chain(self.of.as_deref()).collect()
    }
    fn label(&self) -> String {
        format!("expect {}", self.metric)
    }
    texts!(explain);
    fn on_kubernetes(&self) -> Result<(), String> {
        Ok(())
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let check = self.evaluate(e);
        let shown = match (check.verdict, self.severity) {
            (Verdict::Holds, _) => "ok",
            (Verdict::Inconclusive, _) => "INCONCLUSIVE (the interval straddles the target)",
            (Verdict::Fails, Severity::Check) => "FAILED",
            (Verdict::Fails, Severity::Benchmark) => "target not met (benchmark, not a failure)",
        };
        e.out(label, format!("{}: {shown}", check.text));
        let failed = check.verdict == Verdict::Fails && self.severity == Severity::Check;
        let text = check.text.clone();
        e.report.checks.push(check);
        Ok(if failed { Ran::Failed(text) } else { Ran::Passed })
    }
}

impl Expect {
    // ANCHOR: expect
    /// `metric op value` or `metric op factor * of`. Figures measured in repetitions are judged
    /// on the confidence interval of the median (of the per-repetition ratio, for `of`): the
    /// whole interval on the right side holds, the whole interval on the wrong side fails, and
    /// anything else is inconclusive.
    fn evaluate(&self, e: &Engine<'_>) -> Check {
        let (metric, op, factor) = (self.metric.as_str(), self.op, self.factor);
        let lhs = e.value(metric);
        let f = if factor == 1.0 { String::new() } else { format!("{factor} x ") };
        let (rhs, rhs_text, spread) = match (self.value, &self.of) {
            (Some(v), _) => (v, format!("{v}"), e.spread(metric).cloned().map(|s| (s, v))),
            (None, Some(o)) => {
                let r = factor * e.value(o);
                (r, format!("{f}{o} ({r:.3})"), e.paired(metric, o, 1.0).map(|s| (s, factor)))
            }
            (None, None) => unreachable!("checked at parse time"),
        };
        let mut text = format!("{metric} ({lhs:.3}) {} {rhs_text}", op.symbol());
        let verdict = match &spread {
            Some((s, target)) => {
                let what = match &self.of {
                    Some(o) => format!("{metric} / {o} per repetition"),
                    None => "median".into(),
                };
                text.push_str(&format!(": {what} {}", interval(s, "")));
                s.verdict(op, *target)
            }
            None if op.holds(lhs, rhs) => Verdict::Holds,
            None => Verdict::Fails,
        };
        Check { text, passed: verdict == Verdict::Holds, verdict, severity: self.severity }
    }
    // ANCHOR_END: expect
}
