//! The bench machinery: one visit of a data path runs every measure (and tool) once and keeps
//! its figures, typed per measure so the keys a bench declares are the keys it stores.
use std::{collections::BTreeMap, net::SocketAddr};

use mesh_agent::Counters;
use workloads::{
    Workload,
    connect_rate::{self, ConnectReport},
    defaults, http,
    rr::{self, RrReport},
    stream::{self, StreamReport},
};

use super::{
    engine::{Engine, RUN_TIMEOUT, Role, command_of},
    steps::{
        Results,
        bench::{Measure, ToolDef},
        results,
    },
};
use crate::LabError;

/// Round trips of the unmeasured visit each path gets before the repetitions.
pub const WARMUP_ROUND_TRIPS: u64 = 500;

results! {
    /// `latency`: ping-pong round trips at the `--size` option, µs and round trips per second.
    pub struct Latency { p50, p90, p99, p999, max, mean, rps }
}
results! {
    /// Packets through every pod's eth0 and the mesh's counters, over the latency runs (or a
    /// bench of tools only, over the tools' runs); totals over the repetitions.
    pub struct Counted { packets, msg_redirected, msg_passed, sockets_inserted, flow_fallback, pressure_fallback }
}
results! {
    /// `latency-4k`.
    pub struct Latency4k { p50_4k, p99_4k }
}
results! {
    /// `latency-64k`.
    pub struct Latency64k { p50_64k, p99_64k }
}
results! {
    /// `throughput`: one bulk stream.
    pub struct Throughput { mb_s, cpu_s_per_gb, write_errors, stalls }
}
results! {
    /// `throughput-4`: four bulk streams at once.
    pub struct Throughput4 { mb_s_4, cpu_s_per_gb_4, write_errors_4, stalls_4 }
}
results! {
    /// `throughput-16`: sixteen bulk streams at once (more than the node's TCP memory holds
    /// for redirected queues without flow control).
    /// With the mesh on, also the connections its flow control handed to TCP meanwhile (per
    /// budget: `mesh_common::FlowControl`).
    pub struct Throughput16 {
        mb_s_16, cpu_s_per_gb_16, write_errors_16, stalls_16, flow_fallback_16, pressure_fallback_16
    }
}
results! {
    /// `connect-rate`.
    pub struct ConnectRate { conn_s, conn_p50 }
}
results! {
    /// `http-latency`.
    pub struct HttpLatency { http_p50, http_p99 }
}

impl Measure {
    /// The figures it stores under each path.
    pub fn keys(self) -> Vec<&'static str> {
        match self {
            Measure::Latency => [Latency::KEYS, Counted::KEYS].concat(),
            Measure::Latency4k => Latency4k::KEYS.to_vec(),
            Measure::Latency64k => Latency64k::KEYS.to_vec(),
            Measure::Throughput => Throughput::KEYS.to_vec(),
            Measure::Throughput4 => Throughput4::KEYS.to_vec(),
            Measure::Throughput16 => Throughput16::KEYS.to_vec(),
            Measure::ConnectRate => ConnectRate::KEYS.to_vec(),
            Measure::HttpLatency => HttpLatency::KEYS.to_vec(),
        }
    }
}

/// Figures summed over repetitions rather than summarised by their median: events that must
/// not vanish in a median.
pub const TOTALS: &[&str] = &[
    "write_errors",
    "write_errors_4",
    "write_errors_16",
    "stalls",
    "stalls_4",
    "stalls_16",
    "flow_fallback_16",
    "pressure_fallback_16",
];

/// What one visit of a path measured.
#[derive(Default)]
pub struct Visit {
    pub figures: Vec<(String, f64)>,
    pub rr: Option<RrReport>,
    /// Packets on the client's interface and the mesh's counters, over the latency run (or,
    /// in a bench of tools only, over the tools' runs).
    pub packets: u64,
    pub mesh: Counters,
    pub counted: bool,
    /// Bulk streams started, and what the failed ones said (`N stream(s): message`).
    pub streams: u32,
    pub stream_errors: Vec<String>,
}

impl Visit {
    fn add(&mut self, r: &impl Results) {
        self.figures.extend(r.values().into_iter().map(|(k, v, _)| (k.to_owned(), v)));
    }
}

impl Engine<'_> {
    /// One visit of a path: every measure once. Packets and mesh counters are taken around the
    /// latency measure only (the other measures would drown them).
    pub(crate) fn visit(
        &mut self,
        from: &str,
        target: SocketAddr,
        measures: &[Measure],
        tools: &[ToolDef],
        round_trips: u64,
    ) -> Result<Visit, LabError> {
        let mut v = Visit::default();
        for m in measures {
            self.ctx.cancel.check()?;
            let c = [("connect", target.to_string())];
            let rr = |size: usize| {
                let n = if size == 65536 { round_trips.div_ceil(4) } else { round_trips };
                Workload::Rr(rr::ClientArgs {
                    round_trips: n,
                    request_size: size,
                    response_size: size,
                    json: true,
                    ..defaults(&c)
                })
            };
            match m {
                Measure::Latency => {
                    let (p0, c0) = (self.packets()?, self.counters()?);
                    let r: RrReport = self.run_json(from, &rr(self.ctx.options.size))?;
                    let (p1, c1) = (self.packets()?, self.counters()?);
                    v.packets = p1.saturating_sub(p0);
                    v.mesh = c1.since(&c0);
                    v.counted = true;
                    let l = &r.latency_us;
                    v.add(&Latency {
                        p50: l.p50,
                        p90: l.p90,
                        p99: l.p99,
                        p999: l.p999,
                        max: l.max,
                        mean: l.mean,
                        rps: r.round_trips_per_s,
                    });
                    v.rr = Some(r);
                }
                Measure::Latency4k => {
                    let r: RrReport = self.run_json(from, &rr(4096))?;
                    v.add(&Latency4k { p50_4k: r.latency_us.p50, p99_4k: r.latency_us.p99 });
                }
                Measure::Latency64k => {
                    let r: RrReport = self.run_json(from, &rr(65536))?;
                    v.add(&Latency64k { p50_64k: r.latency_us.p50, p99_64k: r.latency_us.p99 });
                }
                Measure::Throughput | Measure::Throughput4 | Measure::Throughput16 => {
                    let streams = match m {
                        Measure::Throughput => 1,
                        Measure::Throughput4 => 4,
                        _ => 16,
                    };
                    let args = stream::Args { streams, json: true, ..defaults(&c) };
                    let c0 = self.counters()?;
                    let r: StreamReport = self.run_json(from, &Workload::Stream(args))?;
                    let fallbacks = self.counters()?.since(&c0);
                    v.streams += streams;
                    v.stream_errors.extend(r.errors.iter().map(|e| format!("{streams} stream(s): {e}")));
                    // A stream that only stalled is counted apart from one whose write() failed.
                    let stalls = f64::from(r.stalls);
                    let (mb_s, cpu, errors) = (r.mb_per_s, r.cpu_s_per_gb, r.errors.len() as f64 - stalls);
                    match streams {
                        1 => v.add(&Throughput { mb_s, cpu_s_per_gb: cpu, write_errors: errors, stalls }),
                        4 => v.add(&Throughput4 {
                            mb_s_4: mb_s,
                            cpu_s_per_gb_4: cpu,
                            write_errors_4: errors,
                            stalls_4: stalls,
                        }),
                        _ => v.add(&Throughput16 {
                            mb_s_16: mb_s,
                            cpu_s_per_gb_16: cpu,
                            write_errors_16: errors,
                            stalls_16: stalls,
                            flow_fallback_16: fallbacks.flow_fallback as f64,
                            pressure_fallback_16: fallbacks.pressure_fallback as f64,
                        }),
                    }
                }
                Measure::HttpLatency => {
                    let args =
                        http::RrArgs { request: "GET /api".into(), round_trips, json: true, ..defaults(&c) };
                    let r: RrReport = self.run_json(from, &Workload::HttpRr(args))?;
                    v.add(&HttpLatency { http_p50: r.latency_us.p50, http_p99: r.latency_us.p99 });
                }
                Measure::ConnectRate => {
                    let connections = (round_trips / 4).clamp(50, 1000) as u32;
                    let args = connect_rate::Args { connections, json: true, ..defaults(&c) };
                    let r: ConnectReport = self.run_json(from, &Workload::ConnectRate(args))?;
                    v.add(&ConnectRate { conn_s: r.per_s, conn_p50: r.latency_us.p50 });
                }
            }
        }
        // A bench of tools only (a real application's client) counts over the tools instead.
        let count_tools = !v.counted && !tools.is_empty();
        let (p0, c0) = if count_tools { (self.packets()?, self.counters()?) } else { Default::default() };
        for t in tools {
            self.ctx.cancel.check()?;
            let words: Vec<String> = t.command.iter().map(|w| self.fill(w)).collect();
            let cmd = command_of(&words)?;
            let out =
                self.site.lab()?.run(from, self.pinned(cmd, Role::Client), RUN_TIMEOUT, &self.ctx.cancel)?;
            let text =
                format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            for (name, f) in &t.figures {
                let value = f.read(&text).ok_or_else(|| LabError::Parse {
                    command: words.join(" "),
                    detail: format!(
                        "no line matches /{}/ for figure {name:?} in its output:\n{text}",
                        f.regex
                    ),
                })?;
                v.figures.push((name.clone(), value));
            }
        }
        if count_tools {
            v.packets = self.packets()?.saturating_sub(p0);
            v.mesh = self.counters()?.since(&c0);
            v.counted = true;
        }
        Ok(v)
    }
}

/// One line per kind of stream failure: how many of the path's streams, the range of bytes
/// written before the failure where the kind says it, what it means, where to read more.
pub fn summarize_stream_errors(streams: u32, errors: &[&String]) -> Vec<String> {
    let mut kinds: BTreeMap<String, (u32, Vec<u64>)> = BTreeMap::new();
    for e in errors {
        let e = e.split_once(": ").map_or(e.as_str(), |(_, rest)| rest);
        let (kind, bytes) = match e.strip_prefix("write after ").and_then(|r| r.split_once(" bytes: ")) {
            Some((n, rest)) => (format!("write() failed: {rest}"), n.parse::<u64>().ok()),
            None => (e.to_owned(), None),
        };
        let k = kinds.entry(kind).or_default();
        k.0 += 1;
        k.1.extend(bytes);
    }
    kinds
        .into_iter()
        .map(|(kind, (n, bytes))| {
            let after = match (bytes.iter().min(), bytes.iter().max()) {
                (Some(lo), Some(hi)) => format!(" after {:.0}-{:.0} MB", *lo as f64 / 1e6, *hi as f64 / 1e6),
                _ => String::new(),
            };
            let why = if kind.contains("(os error 12)") {
                ": the redirected queue has no flow control, so a writer faster than its reader gets \
                 ENOMEM where TCP would make it wait (book: Measuring on a noisy machine, where it breaks)"
            } else {
                ""
            };
            format!("{n} of {streams} bulk streams ended early, {kind}{after}{why}; each one is in report.md")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_failures_are_one_counted_line_per_kind() {
        let errors: Vec<String> = [
            "4 stream(s): write after 12000000 bytes: Out of memory (os error 12)",
            "4 stream(s): write after 66400000 bytes: Out of memory (os error 12)",
            "1 stream(s): write after 30000000 bytes: Out of memory (os error 12)",
            "4 stream(s): no byte count from the server: stalled for 10000 ms",
        ]
        .map(str::to_owned)
        .to_vec();
        let lines = summarize_stream_errors(50, &errors.iter().collect::<Vec<_>>());
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            "1 of 50 bulk streams ended early, no byte count from the server: stalled for 10000 ms; \
             each one is in report.md"
        );
        assert!(
            lines[1].starts_with(
                "3 of 50 bulk streams ended early, write() failed: Out of memory (os error 12) after 12-66 MB: \
                 the redirected queue has no flow control"
            ),
            "{}",
            lines[1]
        );
        assert!(summarize_stream_errors(50, &[]).is_empty());
    }

    #[test]
    fn the_totals_are_measure_keys() {
        let all: Vec<&str> = [Measure::Throughput, Measure::Throughput4, Measure::Throughput16]
            .iter()
            .flat_map(|m| m.keys())
            .collect();
        assert!(TOTALS.iter().all(|t| all.contains(t)));
    }
}
