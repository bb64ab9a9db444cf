//! `do = "bench"`: data paths measured against each other, in repetitions, each figure stored
//! as its median with its spread.
use std::{collections::BTreeMap, net::SocketAddr};

use mesh_agent::{Counters, Pinned};
use serde::{Deserialize, Serialize};
use workloads::rr::RrReport;

use super::{Checker, Kind, Ran, Results, results};
use crate::{
    engine::Engine,
    measure::{Counted, TOTALS, Visit, WARMUP_ROUND_TRIPS, summarize_stream_errors},
    report::{Run, interval, round3},
    spec::{Family, OnOff, SidecarMode},
};
use lab_sandbox::{Event, LabError, sidecar};

// ANCHOR: def
/// Data paths measured against each other. Every repetition visits each path in turn
/// (switching proxies and the mesh to what the path names) and runs every measure there, so
/// whatever the machine does during the run lands on all paths alike. Figures are stored as
/// `<path>.<key>` (the median over repetitions, with its spread in the report); after the
/// step, proxies and mesh are as they were before it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bench {
    pub from: String,
    pub to: String,
    /// Where `to` runs `rr-server`.
    pub port: u16,
    #[serde(default)]
    pub family: Family,
    pub paths: Vec<PathDef>,
    #[serde(default = "latency_only")]
    pub measures: Vec<Measure>,
    /// Established tools run on each visit too, after the measures.
    #[serde(default)]
    pub tools: Vec<ToolDef>,
    /// Measured repetitions (default: the `--repetitions` option).
    #[serde(default)]
    pub repetitions: Option<u32>,
    /// Round trips per latency run (default: the `--round-trips` option).
    #[serde(default)]
    pub round_trips: Option<u64>,
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}
// ANCHOR_END: def

fn latency_only() -> Vec<Measure> {
    vec![Measure::Latency]
}

// ANCHOR: paths
/// One data path of a bench step: what is in the path while it is measured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathDef {
    /// Its results are stored under this name.
    pub name: String,
    #[serde(default = "sidecars_off")]
    pub sidecars: SidecarMode,
    #[serde(default = "off")]
    pub mesh: OnOff,
    /// With the mesh on: its flow records (telemetry) on or off for this path's connections.
    #[serde(default = "on")]
    pub telemetry: OnOff,
    /// With the mesh on: flow control through the redirect on (the default) or off, to measure
    /// what it costs against the redirect without it.
    #[serde(default = "on")]
    pub flow_control: OnOff,
    /// With the mesh on: who loads the redirect for this path (default: the run's `--engine`).
    #[serde(default)]
    pub engine: Option<mesh_agent::Engine>,
    /// Shown (with `try`) the first time the path is measured.
    #[serde(default)]
    pub explain: String,
    #[serde(default, rename = "try")]
    pub try_: Vec<String>,
}

fn sidecars_off() -> SidecarMode {
    SidecarMode::Off
}

fn off() -> OnOff {
    OnOff::Off
}

fn on() -> OnOff {
    OnOff::On
}

/// What a bench step measures on each path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Measure {
    /// Ping-pong round trips at the `--size` option (64 bytes by default).
    #[serde(rename = "latency")]
    Latency,
    /// Ping-pong with 4 KiB requests and responses.
    #[serde(rename = "latency-4k")]
    Latency4k,
    /// Ping-pong with 64 KiB requests and responses.
    #[serde(rename = "latency-64k")]
    Latency64k,
    /// One bulk stream for a second.
    #[serde(rename = "throughput")]
    Throughput,
    /// Four bulk streams at once.
    #[serde(rename = "throughput-4")]
    Throughput4,
    /// Sixteen bulk streams at once.
    #[serde(rename = "throughput-16")]
    Throughput16,
    /// Connections per second: connect, one request and response, close.
    #[serde(rename = "connect-rate")]
    ConnectRate,
    /// HTTP/1.1 `GET /api` round trips on one keep-alive connection (the target must be an
    /// `http-server` pod): through the mesh, each request is judged by the HTTP rules.
    #[serde(rename = "http-latency")]
    HttpLatency,
}
// ANCHOR_END: paths

// ANCHOR: tools
/// An established tool run on each path beside the lab's own measures (sockperf, iperf3, ...),
/// from the bench's `from` pod; `<ip:POD>` in its command is the pod's IPv4 address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    pub command: Vec<String>,
    /// Figure name -> how to read it from the tool's output.
    pub figures: BTreeMap<String, FigureDef>,
}

/// A figure read from a program's output: the first capture group of the last line the regular
/// expression matches, times `factor`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FigureDef {
    pub regex: String,
    #[serde(default = "super::one")]
    pub factor: f64,
}
// ANCHOR_END: tools

impl FigureDef {
    // ANCHOR: read_figure
    /// The figure in a program's output: the capture of the last matching line, times the factor.
    pub fn read(&self, output: &str) -> Option<f64> {
        let re = regex::Regex::new(&self.regex).ok()?;
        let number = output.lines().rev().find_map(|l| re.captures(l)?.get(1))?;
        Some(self.factor * number.as_str().parse::<f64>().ok()?)
    }
    // ANCHOR_END: read_figure
}

/// Every figure's regular expression compiles and captures the number.
pub fn check_figures(figures: &BTreeMap<String, FigureDef>) -> Result<(), String> {
    for (name, f) in figures {
        if name.is_empty() || name.contains('.') {
            return Err(format!("figure name {name:?}: expected a name without dots"));
        }
        let re = regex::Regex::new(&f.regex).map_err(|e| {
            format!("figure {name:?}: `regex` does not compile: {}", e.to_string().replace('\n', " "))
        })?;
        if re.captures_len() < 2 {
            return Err(format!("figure {name:?}: `regex` needs a capture group for the number"));
        }
    }
    Ok(())
}

results! {
    /// What every path stores besides its measures' figures.
    pub struct PathFigures {
        /// Proxies in the data path.
        proxies,
        /// Their mean resident memory.
        proxy_rss_kb ["KiB"],
        /// Their total resident memory.
        proxy_rss_total_kb ["KiB"],
        /// With the mesh on: the agent's resident memory.
        agent_rss_kb ["KiB"],
        /// With the mesh on: its maps' kernel memory.
        map_kb ["KiB"],
        /// The two together.
        agent_total_kb ["KiB"],
    }
}

impl Kind for Bench {
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String> {
        super::port(self.port)?;
        if self.round_trips == Some(0) {
            return Err("`round_trips` must be at least 1".into());
        }
        if self.repetitions == Some(0) {
            return Err("`repetitions` must be at least 1".into());
        }
        cx.pod(&self.from)?;
        cx.pod(&self.to)?;
        for t in &self.tools {
            if t.command.is_empty() || t.figures.is_empty() {
                return Err("a tool needs a non-empty `command` and at least one figure".into());
            }
            check_figures(&t.figures)?;
        }
        if self.paths.is_empty() || (self.measures.is_empty() && self.tools.is_empty()) {
            return Err(
                "a bench needs at least one entry in `paths`, and one in `measures` or `tools`".into()
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.paths {
            let quoted = format!("\"{}\"", p.name);
            if p.name.is_empty() || p.name.contains('.') || p.name.contains(char::is_whitespace) {
                return Err(format!("path name {quoted}: expected a name without dots or spaces"));
            }
            if cx.results.contains_key(&p.name) || !names.insert(&p.name) {
                return Err(format!("path name {quoted}: an earlier step already stores results under it"));
            }
        }
        Ok(())
    }
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        let mut keys: Vec<&str> = PathFigures::KEYS.to_vec();
        for m in &self.measures {
            keys.extend(m.keys());
        }
        keys.extend(self.tools.iter().flat_map(|t| t.figures.keys().map(String::as_str)));
        if !self.tools.is_empty() && !self.measures.contains(&Measure::Latency) {
            keys.extend(Counted::KEYS);
        }
        let keys: Vec<String> = keys.into_iter().map(str::to_owned).collect();
        self.paths.iter().map(|p| (p.name.clone(), keys.clone())).collect()
    }
    fn label(&self) -> String {
        format!("bench {}", self.paths.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "))
    }
    texts!(explain, try);
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError> {
        let target = SocketAddr::new(e.pod_ip(&self.to, self.family)?, self.port);
        self.bench(e, label, target)?;
        Ok(Ran::Passed)
    }
}

impl Bench {
    // ANCHOR: bench
    /// Measures every path in every repetition, in turn, and stores each figure's median and
    /// spread; afterwards proxies and mesh are as they were before the step.
    fn bench(&self, e: &mut Engine<'_>, label: &str, target: SocketAddr) -> Result<(), LabError> {
        let mesh = if e.site.lab()?.mesh().is_some() { OnOff::On } else { OnOff::Off };
        let before = (e.sidecars.mode.unwrap_or(SidecarMode::Off), mesh);
        let result = self.paths(e, label, target);
        let engine = e.site.lab()?.mesh().map(Pinned::engine);
        let restored = e
            .switch_to(before.0, before.1, engine)
            .and_then(|_| e.set_telemetry(OnOff::On))
            .and_then(|()| e.set_flow_control(OnOff::On));
        result.and(restored.map(drop))
    }

    fn paths(&self, e: &mut Engine<'_>, label: &str, target: SocketAddr) -> Result<(), LabError> {
        let n = self.repetitions.unwrap_or(e.ctx.options.repetitions) as usize;
        let round_trips = self.round_trips.unwrap_or(e.ctx.options.round_trips);
        let (from, measures, tools) = (self.from.as_str(), &self.measures, &self.tools);
        let mut visits: Vec<Vec<Visit>> = self.paths.iter().map(|_| Vec::new()).collect();
        let mut rss: Vec<Vec<(String, u64)>> = vec![Vec::new(); self.paths.len()];
        // With the mesh on: the agent's resident memory and its maps' kernel memory (KiB).
        let mut agent_mem: Vec<Option<(u64, u64)>> = vec![None; self.paths.len()];
        let mut configs = vec![String::new(); self.paths.len()];
        // Warm-up, unmeasured: each path's first connections, proxies and programs.
        for p in &self.paths {
            e.ctx.cancel.check()?;
            e.switch_to(p.sidecars, p.mesh, p.engine)?;
            e.set_telemetry(p.telemetry)?;
            e.set_flow_control(p.flow_control)?;
            // The step's first measure, short: the server may speak only that protocol (HTTP).
            // A bench of tools only (a real server, no rr-server) warms up with its tools.
            match measures.first() {
                Some(m) => e.visit(from, target, &[*m], &[], round_trips.min(WARMUP_ROUND_TRIPS))?,
                None => e.visit(from, target, &[], tools, 0)?,
            };
        }
        e.out(
            label,
            format!(
                "{from} -> {target}: {n} repetitions, each visiting {} path(s) in turn ({} measure(s) per visit) after a warm-up",
                self.paths.len(),
                measures.len()
            ),
        );
        for rep in 0..n {
            for (i, p) in self.paths.iter().enumerate() {
                e.ctx.cancel.check()?;
                let lines = e.switch_to(p.sidecars, p.mesh, p.engine)?;
                e.set_telemetry(p.telemetry)?;
                e.set_flow_control(p.flow_control)?;
                let sub = p.name.clone();
                if rep == 0 {
                    e.ctx.emit(Event::StepStarted { step: sub.clone(), explain: p.explain.clone() });
                    for line in lines {
                        e.out(&sub, line);
                    }
                    e.out(&sub, format!("data path: {}", e.config()));
                }
                configs[i] = e.config();
                let v = e.visit(from, target, measures, tools, round_trips)?;
                rss[i] = e
                    .sidecars
                    .proxies
                    .iter()
                    .filter_map(|p| Some((p.at.clone(), sidecar::rss_kb(p.pid)?)))
                    .collect();
                agent_mem[i] = e.site.lab()?.agent().and_then(lab_sandbox::agent::Agent::memory_kb);
                if rep == 0 {
                    for (k, x) in &v.figures {
                        e.out(&sub, format!("first repetition: {k} {}", round3(*x)));
                    }
                    e.ctx.emit(Event::StepPassed { step: sub.clone() });
                    let try_: Vec<String> = p.try_.iter().map(|t| e.fill(t)).collect();
                    e.ctx.pause(&sub, &try_)?;
                }
                visits[i].push(v);
            }
            let line: Vec<String> = self
                .paths
                .iter()
                .zip(&visits)
                .filter_map(|(p, v)| {
                    let (k, x) = v.last()?.figures.first()?;
                    Some(format!("{} {k} {}", p.name, round3(*x)))
                })
                .collect();
            e.out(label, format!("repetition {}/{n}: {}", rep + 1, line.join(", ")));
        }
        for (i, p) in self.paths.iter().enumerate() {
            store_path(e, &p.name, &configs[i], &visits[i], &rss[i], agent_mem[i]);
            stream_errors(e, &p.name, &configs[i], &visits[i]);
        }
        Ok(())
    }
    // ANCHOR_END: bench
}

/// Streams that ended early, said once per path and kind (a fast writer into a slow reader
/// through the redirect fails write() again and again: a newcomer must not read that as the
/// lab crashing); each message goes to the report, by path.
fn stream_errors(e: &mut Engine<'_>, name: &str, config: &str, visits: &[Visit]) {
    let streams: u32 = visits.iter().map(|v| v.streams).sum();
    let errors: Vec<&String> = visits.iter().flat_map(|v| &v.stream_errors).collect();
    for line in summarize_stream_errors(streams, &errors) {
        e.out(name, line);
    }
    if !errors.is_empty() {
        let all = e.report.errors.entry(name.to_owned()).or_default();
        all.extend(errors.iter().map(|err| format!("{config}: {err}")));
    }
}

/// A path's figures: medians (with spreads in `stats`), counter totals, its proxies' and the
/// agent's memory, and its median latency run for the report's table and chart.
fn store_path(
    e: &mut Engine<'_>,
    name: &str,
    config: &str,
    visits: &[Visit],
    rss: &[(String, u64)],
    agent_mem: Option<(u64, u64)>,
) {
    let mut values: Vec<(String, f64)> = Vec::new();
    for (k, _) in visits.first().map(|v| v.figures.as_slice()).unwrap_or_default() {
        let samples: Vec<f64> =
            visits.iter().filter_map(|v| v.figures.iter().find(|(kk, _)| kk == k).map(|(_, x)| *x)).collect();
        if TOTALS.contains(&k.as_str()) {
            values.push((k.clone(), samples.iter().sum()));
        } else if let Some(s) = crate::stats::Spread::of(&samples) {
            values.push((k.clone(), s.median));
            e.out(name, format!("{k:<14} {}", interval(&s, "")));
            e.report.stats.insert(format!("{name}.{k}"), s);
        }
    }
    let mesh = visits.iter().fold(Counters::default(), |t, v| t.plus(&v.mesh));
    let packets: u64 = visits.iter().map(|v| v.packets).sum();
    let latency_runs: Vec<&RrReport> = visits.iter().filter_map(|v| v.rr.as_ref()).collect();
    let mut figures = Vec::new();
    if visits.iter().any(|v| v.counted) {
        figures.extend(
            Counted {
                packets: packets as f64,
                msg_redirected: mesh.msg_redirected as f64,
                msg_passed: mesh.msg_passed as f64,
                sockets_inserted: mesh.sockets_inserted as f64,
                flow_fallback: mesh.flow_fallback as f64,
                pressure_fallback: mesh.pressure_fallback as f64,
            }
            .values(),
        );
    }
    let rss_total = rss.iter().map(|(_, k)| *k as f64).fold(0.0, |a, b| a + b); // not sum(): an empty f64 sum is -0.0
    let (agent_rss, map_kb) = agent_mem.unwrap_or_default();
    figures.extend(
        PathFigures {
            proxies: rss.len() as f64,
            proxy_rss_kb: if rss.is_empty() { 0.0 } else { rss_total / rss.len() as f64 },
            proxy_rss_total_kb: rss_total,
            agent_rss_kb: agent_rss as f64,
            map_kb: map_kb as f64,
            agent_total_kb: (agent_rss + map_kb) as f64,
        }
        .values(),
    );
    values.extend(figures.iter().map(|(k, v, _)| ((*k).to_owned(), *v)));
    let r = e.report.results.entry(name.to_owned()).or_default();
    for (k, v) in &values {
        r.insert(k.clone(), *v);
    }
    let shown = ["p50", "p99", "mb_s", "conn_s", "packets", "msg_redirected", "proxy_rss_kb"];
    for (k, v) in values {
        let k = k.as_str();
        let unit = match k {
            "p50" | "p99" | "conn_p50" => "us",
            "mb_s" => "MB/s",
            "conn_s" => "/s",
            "proxy_rss_kb" => "KiB",
            _ => "",
        };
        if shown.contains(&k) && (k != "proxy_rss_kb" || v > 0.0) && (k != "msg_redirected" || v > 0.0) {
            e.metric(name, k, v, unit);
        }
    }
    if let Some((rss, maps)) = agent_mem {
        e.out(name, format!("mesh agent: {rss} KiB resident, its maps {maps} KiB of kernel memory"));
    }
    if let Some(p50) = e.report.stats.get(&format!("{name}.p50")).map(|s| s.median) {
        let median = latency_runs
            .iter()
            .min_by(|a, b| (a.latency_us.p50 - p50).abs().total_cmp(&(b.latency_us.p50 - p50).abs()));
        if let Some(rr) = median {
            e.report.runs.push(Run {
                name: name.to_owned(),
                config: config.to_owned(),
                rr: (*rr).clone(),
                packets,
                mesh,
                proxy_rss_kb: rss.to_vec(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_figure_is_the_last_matching_line_times_the_factor() {
        let out =
            "sockperf: ---> percentile 99.000 =   29.378\nsockperf: ---> percentile 50.000 =    5.988\n";
        let f = FigureDef { regex: r"percentile 50\.000 =\s*([0-9.]+)".into(), factor: 2.0 };
        assert_eq!(f.read(out), Some(11.976));
        let iperf = "\"bits_per_second\":\t8.0e9,\n\"sum_received\": {\n\"bits_per_second\":\t1.6e10,\n";
        let f = FigureDef { regex: r#""bits_per_second":\s*([0-9.eE+]+)"#.into(), factor: 1.25e-7 };
        assert_eq!(f.read(iperf), Some(2000.0));
        assert_eq!(f.read("nothing here"), None);
    }
}
