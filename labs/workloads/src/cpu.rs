//! Machine-wide CPU time from `/proc/stat` (the first `cpu` line), for CPU cost per byte and for
//! the steal a virtual machine's host takes during a benchmark.
use serde::{Deserialize, Serialize};

/// Cumulative CPU time of all CPUs, in clock ticks (USER_HZ).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq: time spent working, kernel networking included.
    pub busy: u64,
    /// idle + iowait.
    pub idle: u64,
    /// Time the hypervisor ran something else while this machine wanted the CPU.
    pub steal: u64,
}

impl CpuTimes {
    /// Reads `/proc/stat`; all zero where it cannot be read.
    pub fn now() -> CpuTimes {
        std::fs::read_to_string("/proc/stat").ok().and_then(|s| CpuTimes::parse(&s)).unwrap_or_default()
    }

    pub fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        Some(CpuTimes { busy: at(0) + at(1) + at(2) + at(5) + at(6), idle: at(3) + at(4), steal: at(7) })
    }

    #[must_use]
    pub fn since(&self, earlier: &CpuTimes) -> CpuTimes {
        CpuTimes {
            busy: self.busy.saturating_sub(earlier.busy),
            idle: self.idle.saturating_sub(earlier.idle),
            steal: self.steal.saturating_sub(earlier.steal),
        }
    }

    pub fn total(&self) -> u64 {
        self.busy + self.idle + self.steal
    }

    /// Busy time in seconds.
    pub fn busy_s(&self) -> f64 {
        self.busy as f64 / ticks_per_s()
    }
}

fn ticks_per_s() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_aggregate_line() {
        let stat = "cpu  10 2 30 400 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        let t = CpuTimes::parse(stat).unwrap();
        assert_eq!(t, CpuTimes { busy: 10 + 2 + 30 + 6 + 7, idle: 405, steal: 8 });
        assert_eq!(t.since(&CpuTimes { busy: 5, idle: 5, steal: 8 }).total(), 50 + 400);
    }
}
