//! Figures from repeated runs: the median, its spread, and a confidence interval for the median
//! that assumes nothing about the distribution (order statistics: the number of samples below
//! the true median is binomial(n, 1/2), so `[x(k), x(n+1-k)]` covers it with a known
//! probability). No resampling, so the interval is the same every time the same samples are seen.
use serde::{Deserialize, Serialize};

/// A comparison in an `expect` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Op {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
}

impl Op {
    pub fn holds(self, l: f64, r: f64) -> bool {
        match self {
            Op::Lt => l < r,
            Op::Le => l <= r,
            Op::Gt => l > r,
            Op::Ge => l >= r,
            Op::Eq => l == r,
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
        }
    }
}

/// The coverage the interval aims for; the achieved one is reported (it is at least this when
/// there are enough samples, else the widest interval the samples allow).
pub const CONFIDENCE: f64 = 0.95;

// ANCHOR: spread
/// One figure over `n` repetitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Interquartile range: the middle half of the samples.
    pub q1: f64,
    pub q3: f64,
    /// Confidence interval for the median.
    pub lo: f64,
    pub hi: f64,
    /// Probability that `[lo, hi]` covers the true median.
    pub confidence: f64,
    /// As measured, NaN for a repetition that measured nothing.
    #[serde(deserialize_with = "lab_protocol::nan::vec")]
    pub samples: Vec<f64>,
}
// ANCHOR_END: spread

/// The median of `samples` (NaN ones left out; NaN when none is left): the one median the lab
/// computes, the same as [`Spread::median`].
pub fn median(samples: &[f64]) -> f64 {
    Spread::of(samples).map_or(f64::NAN, |s| s.median)
}

impl Spread {
    /// `None` without samples.
    pub fn of(samples: &[f64]) -> Option<Spread> {
        let mut s: Vec<f64> = samples.iter().copied().filter(|v| !v.is_nan()).collect();
        if s.is_empty() {
            return None;
        }
        s.sort_by(f64::total_cmp);
        let n = s.len();
        let (k, confidence) = median_interval_rank(n);
        Some(Spread {
            n,
            median: quantile(&s, 0.5),
            min: s[0],
            max: s[n - 1],
            q1: quantile(&s, 0.25),
            q3: quantile(&s, 0.75),
            lo: s[k - 1],
            hi: s[n - k],
            confidence,
            samples: samples.to_vec(),
        })
    }

    /// Whether `median op target` holds for the whole interval, for none of it, or is not decided
    /// by these samples.
    pub fn verdict(&self, op: Op, target: f64) -> Verdict {
        let (worst, best) = match op {
            Op::Lt | Op::Le => (self.hi, self.lo),
            Op::Gt | Op::Ge => (self.lo, self.hi),
            Op::Eq => {
                return if self.lo == target && self.hi == target {
                    Verdict::Holds
                } else if target < self.lo || target > self.hi {
                    Verdict::Fails
                } else {
                    Verdict::Inconclusive
                };
            }
        };
        if op.holds(worst, target) {
            Verdict::Holds
        } else if !op.holds(best, target) {
            Verdict::Fails
        } else {
            Verdict::Inconclusive
        }
    }
}

/// An expectation's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Holds,
    Fails,
    /// The interval straddles the target: more repetitions, or a quieter machine, would decide.
    Inconclusive,
}

/// Linear interpolation between the closest ranks (sorted input).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

/// The largest `k` (1-based) such that `[x(k), x(n+1-k)]` covers the median with probability
/// at least [`CONFIDENCE`], with that probability; `k = 1` (min..max) when even that falls short.
fn median_interval_rank(n: usize) -> (usize, f64) {
    // P(B <= j) for B ~ binomial(n, 1/2), accumulated term by term.
    let half_n = 0.5f64.powi(n as i32);
    let mut term = half_n; // C(n, 0) / 2^n
    let mut below = 0.0; // P(B <= k - 1)
    let mut best = (1, 1.0 - 2.0 * half_n);
    for k in 1..=n.div_ceil(2) {
        below += term; // now P(B <= k - 1)
        let coverage = 1.0 - 2.0 * below;
        if coverage >= CONFIDENCE {
            best = (k, coverage);
        } else {
            break;
        }
        // C(n, k) = C(n, k-1) * (n - k + 1) / k
        term *= (n - k + 1) as f64 / k as f64;
    }
    best
}

/// Per-repetition quotients `a[i] / (factor * b[i])` of two figures measured in the same
/// repetitions: the machine's mood at repetition `i` affects both, and divides out.
pub fn paired_ratio(a: &[f64], b: &[f64], factor: f64) -> Option<Spread> {
    if a.len() != b.len() || a.is_empty() {
        return None;
    }
    let q: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / (factor * y)).collect();
    Spread::of(&q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_ranks_match_the_binomial_tables() {
        // n = 10: [x(2), x(9)] covers the median with 97.9 %, [x(3), x(8)] only 89 %.
        let (k, c) = median_interval_rank(10);
        assert_eq!(k, 2);
        assert!((c - 0.978_515_625).abs() < 1e-9, "{c}");
        // n = 5: even min..max covers only 93.75 %.
        assert_eq!(median_interval_rank(5), (1, 0.9375));
        // n = 12: [x(3), x(10)], 96.1 %.
        assert_eq!(median_interval_rank(12).0, 3);
        assert_eq!(median_interval_rank(1), (1, 0.0));
    }

    #[test]
    fn spread_of_ten_samples() {
        let s = Spread::of(&[5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 9.0, 8.0, 7.0, 6.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (10, 5.5, 1.0, 10.0));
        assert_eq!((s.lo, s.hi), (2.0, 9.0));
        assert_eq!((s.q1, s.q3), (3.25, 7.75));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn verdicts_need_the_whole_interval() {
        let s = Spread::of(&[0.7, 0.75, 0.8, 0.85, 0.9, 0.7, 0.75, 0.8, 0.85, 0.9]).unwrap();
        assert_eq!(s.verdict(Op::Lt, 1.0), Verdict::Holds);
        assert_eq!(s.verdict(Op::Le, 0.8), Verdict::Inconclusive);
        assert_eq!(s.verdict(Op::Lt, 0.6), Verdict::Fails);
        assert_eq!(s.verdict(Op::Gt, 0.6), Verdict::Holds);
        assert_eq!(s.verdict(Op::Ge, 0.95), Verdict::Fails);
        assert_eq!(s.verdict(Op::Eq, 0.8), Verdict::Inconclusive);
    }

    #[test]
    fn paired_ratios_divide_out_a_shared_drift() {
        // The machine slows down 3x over the run; the path ratio stays 0.5 in every repetition.
        let direct = [10.0, 20.0, 30.0, 15.0, 25.0];
        let mesh: Vec<f64> = direct.iter().map(|d| d * 0.5).collect();
        let r = paired_ratio(&mesh, &direct, 1.0).unwrap();
        assert_eq!((r.lo, r.median, r.hi), (0.5, 0.5, 0.5));
        assert!(paired_ratio(&mesh, &direct[..3], 1.0).is_none());
    }
}
