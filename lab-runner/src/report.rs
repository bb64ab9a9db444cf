//! Result files of a scenario run: the outcome as JSON, a Markdown report (tera) and an SVG
//! chart of the latency percentile curves, under `<results>/<scenario>/<UTC time>/`.
use std::{
    fs,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use lab_scenario::{
    Outcome,
    report::{CaseVerdict, Report, round3},
};

const TEMPLATE: &str = include_str!("../templates/report.md.tera");

/// Writes the three files; returns the folder.
pub fn write(
    results: &Path,
    outcome: &Outcome,
    backend: &str,
    failure: &lab_scenario::bundle::Bundle,
) -> std::io::Result<PathBuf> {
    let when = utc_now();
    let dir = results.join(&outcome.scenario).join(when.replace([':', ' '], "-"));
    fs::create_dir_all(&dir)?;
    lab_scenario::bundle::write(failure, &dir.join("failure"))?;
    fs::write(dir.join("outcome.json"), serde_json::to_string_pretty(outcome).expect("serializes"))?;
    fs::write(dir.join("latency.svg"), svg(&outcome.report))?;
    if let Some(rtt) = rtt_svg(&outcome.report) {
        fs::write(dir.join("rtt.svg"), rtt)?;
    }
    fs::write(dir.join("report.md"), markdown(outcome, &when, backend, "latency.svg"))?;
    Ok(dir)
}

/// The Markdown report.
pub fn markdown(outcome: &Outcome, when: &str, backend: &str, svg: &str) -> String {
    let report = &outcome.report;
    let computed: Vec<(String, String)> = report
        .results
        .iter()
        .filter_map(|(name, keys)| {
            let v = *keys.get("value")?;
            let text = match report.stats.get(&format!("{name}.value")) {
                Some(s) => format!(
                    "{} [{}, {}] ({:.0} % interval, n = {})",
                    round3(v),
                    round3(s.lo),
                    round3(s.hi),
                    100.0 * s.confidence,
                    s.n
                ),
                None => round3(v),
            };
            Some((name.clone(), text))
        })
        .collect();
    let mut ctx = tera::Context::new();
    ctx.insert("outcome", outcome);
    ctx.insert("when", when);
    ctx.insert("backend", backend);
    ctx.insert("svg", svg);
    ctx.insert("computed", &computed);
    let (fig_columns, fig_rows) = figures_table(report);
    // Every other step's figures, one row per step (apply, balance, isolation, exec, ...).
    let shown: Vec<&String> = fig_rows.iter().map(|(p, _)| p).collect();
    let scale = scale_table(report);
    let scaled: Vec<&String> = scale.iter().map(|(name, _)| name).collect();
    let other: Vec<(String, String)> = report
        .results
        .iter()
        .filter(|(name, keys)| {
            !shown.contains(name)
                && !scaled.contains(name)
                && !report.conform.iter().any(|r| r.name == **name)
                && !keys.contains_key("value")
        })
        .map(|(name, keys)| {
            let cells: Vec<String> = keys
                .iter()
                .map(|(k, v)| format!("{k} {}", if v.is_nan() { "-".to_owned() } else { round3(*v) }))
                .collect();
            (name.clone(), cells.join(", "))
        })
        .collect();
    ctx.insert("other", &other);
    ctx.insert("scale", &scale);
    ctx.insert("fig_columns", &fig_columns);
    ctx.insert("fig_rows", &fig_rows);
    let (columns, rows) = conformance_table(report);
    ctx.insert("conform_columns", &columns);
    ctx.insert("conform_rows", &rows);
    tera::Tera::one_off(TEMPLATE, &ctx, false)
        .unwrap_or_else(|e| format!("report template failed: {}", lab_sandbox::error::chain(&e)))
}

/// Figures of bench steps, one row per data path: `median (IQR q1-q3)`, or the total for
/// counted events.
const FIGURES: [(&str, &str); 13] = [
    ("p50", "p50 µs"),
    ("p99", "p99 µs"),
    ("p50_4k", "p50 4 KiB µs"),
    ("p50_64k", "p50 64 KiB µs"),
    ("mb_s", "1 stream MB/s"),
    ("mb_s_4", "4 streams MB/s"),
    ("mb_s_16", "16 streams MB/s"),
    ("cpu_s_per_gb", "CPU s per GB"),
    ("conn_s", "connections/s"),
    ("write_errors", "write errors, 1 stream"),
    ("write_errors_4", "write errors, 4 streams"),
    ("write_errors_16", "write errors, 16 streams"),
    ("stalls_16", "stalled, 16 streams"),
];

/// `median (q1-q3)`, or `None` without a spread.
fn spread_cell(report: &Report, key: &str) -> Option<String> {
    let s = report.stats.get(key)?;
    Some(format!("{} ({}-{})", round3(s.median), round3(s.q1), round3(s.q3)))
}

fn figures_table(report: &Report) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let results = &report.results;
    // Paths in the order they ran (the runs list), then any without a latency run.
    let mut paths: Vec<String> = report.runs.iter().map(|r| r.name.clone()).collect();
    for key in report.stats.keys() {
        if let Some((path, _)) = key.rsplit_once('.')
            && results.get(path).is_some_and(|r| !r.contains_key("value"))
            && !paths.iter().any(|p| p == path)
        {
            paths.push(path.to_owned());
        }
    }
    // A step with spreads of its own (service-scale) is no data path.
    paths.retain(|p| FIGURES.iter().any(|(k, _)| results.get(p).is_some_and(|r| r.contains_key(*k))));
    let used: Vec<(&str, &str)> =
        FIGURES.into_iter().filter(|(k, _)| paths.iter().any(|p| results[p].contains_key(*k))).collect();
    let rows = paths
        .iter()
        .map(|p| {
            let cells = used
                .iter()
                .map(|(k, _)| {
                    spread_cell(report, &format!("{p}.{k}"))
                        .or_else(|| results[p].get(*k).filter(|v| !v.is_nan()).map(|v| round3(*v)))
                        .unwrap_or_default()
                })
                .collect();
            (p.clone(), cells)
        })
        .collect();
    (used.into_iter().map(|(_, h)| h.to_owned()).collect(), rows)
}

/// Services, then the socket LB and the iptables cell.
type ScaleRow = (u64, String, String);

/// service-scale steps: per step, one row per service count with the median connection for
/// each mode (and its interquartile range).
fn scale_table(report: &Report) -> Vec<(String, Vec<ScaleRow>)> {
    let cell = |key: String| spread_cell(report, &key).unwrap_or_else(|| "-".to_owned());
    report
        .results
        .iter()
        .filter_map(|(name, keys)| {
            let mut counts: Vec<u64> = keys
                .keys()
                .filter_map(|k| k.strip_prefix("mesh_")?.parse().ok())
                .filter(|n: &u64| keys.contains_key(&format!("iptables_{n}")))
                .collect();
            if counts.is_empty() {
                return None;
            }
            counts.sort_unstable();
            let rows = counts
                .into_iter()
                .map(|n| (n, cell(format!("{name}.mesh_{n}")), cell(format!("{name}.iptables_{n}"))))
                .collect();
            Some((name.clone(), rows))
        })
        .collect()
}

/// A case's verdict as a cell: `same`, `**differs**`, `kernel bug: <id>`, `reference`.
fn verdict_cell(case: &CaseVerdict) -> String {
    match (case.verdict.as_str(), &case.kernel_bug) {
        ("kernel bug", Some(id)) => format!("kernel bug: {id}"),
        ("differs", _) => "**differs**".into(),
        (v, _) => v.into(),
    }
}

/// The conformance runs as a table: one column per run and family, one row per case.
fn conformance_table(report: &Report) -> (Vec<String>, Vec<(String, Vec<String>)>) {
    let runs = &report.conform;
    let columns = runs.iter().map(|r| format!("{} ({})", r.name, r.family.name())).collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        for case in &run.cases {
            let name = &case.result.case;
            let at = if let Some(at) = rows.iter().position(|(n, _)| n == name) {
                at
            } else {
                rows.push((name.clone(), vec![String::new(); runs.len()]));
                rows.len() - 1
            };
            rows[at].1[i] = verdict_cell(case);
        }
    }
    (columns, rows)
}

const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

/// Latency (µs, log scale) against percentile (on a `1/(1-p)` scale, as HdrHistogram plots it),
/// one line per run.
pub fn svg(report: &Report) -> String {
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 200.0, 20.0, 50.0);
    let curves: Vec<(String, Vec<(f64, f64)>)> = report
        .runs
        .iter()
        .map(|r| {
            let pts =
                r.rr.curve.iter().map(|&[pct, us]| (pct, us)).filter(|(pct, us)| *pct < 100.0 && *us > 0.0);
            (r.name.clone(), pts.collect())
        })
        .collect();
    // x: log10(1/(1-p)) from 0 (p0) to 4 (p99.99); y: log10(us).
    let xs = |pct: f64| (1.0 / (1.0 - pct / 100.0)).log10();
    let all: Vec<f64> = curves.iter().flat_map(|(_, c)| c.iter().map(|(_, us)| us.log10())).collect();
    let (ymin, ymax) = (
        all.iter().copied().fold(f64::MAX, f64::min).floor(),
        all.iter().copied().fold(f64::MIN, f64::max).ceil(),
    );
    let (ymin, ymax) = if ymin >= ymax { (0.0, 1.0) } else { (ymin, ymax) };
    let px = |x: f64| left + x / 4.0 * (w - left - right);
    let py = |y: f64| top + (ymax - y) / (ymax - ymin) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (pct, label) in [(0.0, "p0"), (90.0, "p90"), (99.0, "p99"), (99.9, "p99.9"), (99.99, "p99.99")] {
        let x = px(xs(pct));
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
            h - bottom
        ));
        s.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{label}</text>\n",
            h - bottom + 18.0
        ));
    }
    let mut e = ymin;
    while e <= ymax {
        let y = py(e);
        s.push_str(&format!(
            "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\n",
            w - right
        ));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{} µs</text>\n",
            left - 6.0,
            y + 4.0,
            10f64.powf(e)
        ));
        e += 1.0;
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">percentile</text>\n",
        (left + w - right) / 2.0,
        h - 10.0
    ));
    for (i, (name, pts)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> =
            pts.iter().map(|(p, us)| format!("{:.1},{:.1}", px(xs(*p)), py(us.log10()))).collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        ));
        let ly = top + 20.0 * i as f64 + 10.0;
        s.push_str(&format!("<line x1=\"{:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"3\"/>\n", w - right + 15.0, w - right + 40.0));
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            w - right + 46.0,
            ly + 4.0,
            escape(name)
        ));
    }
    s.push_str("</svg>\n");
    s
}

// ANCHOR: rtt_svg
/// One row per flow record of the `transfer` steps: the smoothed RTT at close (a dot) and the
/// range of smoothed RTTs the RTT callback saw (a bar), on a log scale; `None` without flows.
pub fn rtt_svg(report: &Report) -> Option<String> {
    let flows = Some(&report.flows).filter(|f| !f.is_empty())?;
    // Log scale: at least 1 µs.
    let num = |us: f64| if us.is_nan() { 1.0 } else { us.max(1.0) };
    let (row, left, right, top) = (16.0, 190.0, 30.0, 20.0);
    let (w, h) = (720.0, top + row * flows.len() as f64 + 50.0);
    let all: Vec<f64> = flows
        .iter()
        .flat_map(|f| [f.srtt_us, f.rtt_min_us, f.rtt_max_us].map(|us| num(us).log10()))
        .collect();
    let lo = all.iter().copied().fold(f64::MAX, f64::min).floor();
    let hi = all.iter().copied().fold(f64::MIN, f64::max).ceil().max(lo + 1.0);
    let px = |us: f64| left + (us.log10() - lo) / (hi - lo) * (w - left - right);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let bottom = top + row * flows.len() as f64;
    let mut e = lo;
    while e <= hi {
        let x = px(10f64.powf(e));
        s.push_str(&format!(
            "<line x1=\"{x:.1}\" y1=\"{top}\" x2=\"{x:.1}\" y2=\"{bottom:.1}\" stroke=\"#ddd\"/>\n"
        ));
        s.push_str(&format!(
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{} µs</text>\n",
            bottom + 16.0,
            10f64.powf(e)
        ));
        e += 1.0;
    }
    s.push_str(&format!(
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">smoothed RTT at close (dot), range seen by the RTT callback (bar)</text>\n",
        (left + w - right) / 2.0,
        h - 10.0
    ));
    let mut steps: Vec<&str> = Vec::new();
    for (i, f) in flows.iter().enumerate() {
        let step = f.step.as_str();
        if !steps.contains(&step) {
            steps.push(step);
        }
        let color = COLORS[(steps.len() - 1) % COLORS.len()];
        let y = top + row * i as f64 + row / 2.0;
        let label = format!("{step} {} :{}", f.reporter, f.port);
        s.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            left - 8.0,
            y + 4.0,
            escape(&label)
        ));
        s.push_str(&format!(
            "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{color}\" stroke-width=\"4\" opacity=\"0.4\"/>\n",
            px(num(f.rtt_min_us)),
            px(num(f.rtt_max_us))
        ));
        s.push_str(&format!(
            "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"{color}\"/>\n",
            px(num(f.srtt_us))
        ));
    }
    s.push_str("</svg>\n");
    Some(s)
}
// ANCHOR_END: rtt_svg

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// `2026-11-28 11:38:25Z`, from the system clock (no time zone database needed).
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report from JSON, as the wire brings it.
    fn report(json: serde_json::Value) -> Report {
        serde_json::from_value(json).unwrap()
    }

    /// A spread with these median and quartiles (the rest as the lab would fill it).
    fn spread(median: f64, q1: f64, q3: f64) -> serde_json::Value {
        serde_json::json!({
            "n": 5, "median": median, "min": q1, "max": q3, "q1": q1, "q3": q3,
            "lo": q1, "hi": q3, "confidence": 0.94, "samples": [q1, median, q3],
        })
    }

    /// A run whose latency curve is `curve`.
    fn run(name: &str, curve: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "name": name, "config": "direct", "packets": 0, "mesh": {}, "proxy_rss_kb": [],
            "rr": {
                "target": "10.77.0.11:7000", "connections": 1, "request_size": 64, "response_size": 64,
                "nodelay": true, "round_trips": 100, "elapsed_s": 1.0, "round_trips_per_s": 100.0,
                "latency_us": { "min": 1.0, "p50": 2.0, "p90": 3.0, "p99": 4.0, "p999": 5.0, "max": 6.0, "mean": 2.5 },
                "curve": curve,
            },
        })
    }

    #[test]
    fn figures_table_shows_medians_with_their_iqr_and_totals() {
        let report = report(serde_json::json!({
            "results": {
                "direct": { "p50": 52.4, "write_errors_4": 0.0, "p99": null },
                "sockmap": { "p50": 39.6, "write_errors_4": 3.0 },
                "ratio": { "value": 0.75 },
            },
            "stats": {
                "direct.p50": spread(52.4, 49.2, 58.9),
                "sockmap.p50": spread(39.6, 38.0, 41.0),
                "ratio.value": spread(0.75, 0.7, 0.8),
            },
        }));
        assert!(report.results["direct"]["p99"].is_nan(), "null reads back as NaN");
        let (columns, rows) = figures_table(&report);
        assert_eq!(columns, ["p50 µs", "p99 µs", "write errors, 4 streams"]);
        assert_eq!(
            rows[0],
            ("direct".to_owned(), vec!["52.4 (49.2-58.9)".to_owned(), String::new(), "0".to_owned()])
        );
        assert_eq!(rows[1].1[2], "3");
        assert_eq!(rows.len(), 2, "derived figures are not paths");
    }

    #[test]
    fn markdown_lists_every_error_by_step() {
        let outcome = Outcome {
            scenario: "sockmap".into(),
            kernel: "6.1.0".into(),
            passed: true,
            failures: vec![],
            skipped: None,
            error: None,
            report: report(serde_json::json!({
                "errors": { "sidecars-sockmap": [
                    "sidecars per pod + eBPF mesh: 4 stream(s): write after 12000000 bytes: Out of memory (os error 12)",
                ]},
            })),
        };
        let md = markdown(&outcome, "2026-12-07 03:00:00", "vm", "latency.svg");
        assert!(
            md.contains("## Errors\n")
                && md.contains(
                    "### sidecars-sockmap\n\n- sidecars per pod + eBPF mesh: 4 stream(s): write after"
                ),
            "{md}"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_785), (2026, 11, 28));
    }

    #[test]
    fn rtt_svg_draws_a_row_per_flow() {
        assert_eq!(rtt_svg(&Report::default()), None);
        let report = report(serde_json::json!({ "flows": [
            { "step": "redirected", "reporter": "client", "port": 40000, "srtt_us": 30.0, "rtt_min_us": 20.0, "rtt_max_us": 90.0 },
            { "step": "delayed", "reporter": "server", "port": 40002, "srtt_us": 20500.0, "rtt_min_us": 20100.0, "rtt_max_us": 21000.0 },
        ]}));
        let s = rtt_svg(&report).unwrap();
        assert_eq!(s.matches("<circle").count(), 2);
        assert!(s.contains("delayed server :40002") && s.contains("10000 µs"), "{s}");
    }

    #[test]
    fn svg_draws_a_line_per_run() {
        let report = report(serde_json::json!({ "runs": [
            run("direct", serde_json::json!([[0.0, 20.0], [50.0, 25.0], [99.0, 60.0], [100.0, 900.0]])),
            run("a<b", serde_json::json!([[0.0, 8.0], [50.0, 10.0], [99.0, 30.0]])),
        ]}));
        let s = svg(&report);
        assert_eq!(s.matches("<polyline").count(), 2);
        assert!(s.contains("a&lt;b") && s.contains("p99.9"));
    }
}
