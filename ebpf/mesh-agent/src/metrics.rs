//! `mesh-agent run --metrics ADDR`: Prometheus metrics over HTTP (OpenMetrics text, from the
//! prometheus-client crate). Flow metrics are fed by the flow records as they arrive; the
//! datapath's own counters, verdicts and map fill are read from the pinned maps at each scrape.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::atomic::Ordering,
    time::Duration,
};

use mesh_common::{Counter as DpCounter, Hook};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{Pinned, denials::DenialRecord, flows::Flow};

// ANCHOR: labels
/// Who talked to whom, as one end reported it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// `client` or `server`: each end of a connection inside the mesh reports it.
    pub reporter: String,
    pub source: String,
    pub destination: String,
    pub destination_port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClosedLabels {
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `redirected`, `tcp`, `both`, `none`.
    pub path: String,
    pub verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    #[prometheus(flatten)]
    pub flow: FlowLabels,
    /// `to_server` or `to_client`.
    pub direction: String,
    /// Whether sk_msg redirected these bytes (`redirected`) or TCP carried them (`tcp`).
    pub path: String,
}
// ANCHOR_END: labels

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    hook: String,
    source: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    rule: u32,
    hook: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabel {
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

/// The metric families. Cloning shares them (the server thread holds the registry).
#[derive(Clone)]
pub struct Metrics {
    flows: Family<ClosedLabels, Counter>,
    bytes: Family<ByteLabels, Counter>,
    rtt: Family<FlowLabels, Histogram>,
    retransmits: Family<FlowLabels, Counter>,
    denials: Family<DenialLabels, Counter>,
    verdicts: Family<VerdictLabels, Counter>,
    datapath: Family<NameLabel, Counter>,
    map_entries: Family<MapLabel, Gauge>,
    map_capacity: Family<MapLabel, Gauge>,
}

fn rtt_histogram() -> Histogram {
    // 25 µs .. ~0.8 s: loopback and redirected connections to netem-delayed ones.
    Histogram::new(exponential_buckets(25e-6, 2.0, 16))
}

impl Metrics {
    /// The families, registered in a new registry.
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics {
            flows: Family::default(),
            bytes: Family::default(),
            rtt: Family::new_with_constructor(rtt_histogram),
            retransmits: Family::default(),
            denials: Family::default(),
            verdicts: Family::default(),
            datapath: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
        };
        let mut r = Registry::with_prefix("mesh");
        r.register(
            "tcp_flows",
            "TCP connections closed, as each end in the mesh reported them",
            m.flows.clone(),
        );
        r.register("tcp_bytes", "Payload bytes of closed TCP connections, each way", m.bytes.clone());
        r.register("tcp_rtt_seconds", "Smoothed RTT of closed TCP connections at close", m.rtt.clone());
        r.register(
            "tcp_retransmits",
            "Segments retransmitted by closed TCP connections",
            m.retransmits.clone(),
        );
        r.register(
            "policy_denials",
            "Connections, datagrams, packets and messages the policy denied",
            m.denials.clone(),
        );
        r.register(
            "policy_verdicts",
            "Verdicts per rule number and hook (rule 0: denials)",
            m.verdicts.clone(),
        );
        r.register("datapath_events", "The kernel programs' counters (COUNTERS map)", m.datapath.clone());
        r.register("map_entries", "Entries in each pinned map", m.map_entries.clone());
        r.register("map_capacity", "Capacity of each pinned map", m.map_capacity.clone());
        (m, r)
    }

    // ANCHOR: record
    /// Counts one closed flow.
    pub fn flow(&self, f: &Flow) {
        let labels = FlowLabels {
            reporter: f.reporter.to_string(),
            source: f.source.pod.clone(),
            destination: f.destination.pod.clone(),
            destination_port: f.destination.port,
        };
        let closed =
            ClosedLabels { flow: labels.clone(), path: f.path.to_string(), verdict: f.verdict.to_string() };
        self.flows.get_or_create(&closed).inc();
        let ways = [
            ("to_server", f.bytes.to_server, f.redirected.to_server),
            ("to_client", f.bytes.to_client, f.redirected.to_client),
        ];
        for (direction, total, redirected) in ways {
            for (path, n) in [("redirected", redirected), ("tcp", total - redirected)] {
                // Families only grow: a series that would stay 0 is not created.
                if n > 0 {
                    let l =
                        ByteLabels { flow: labels.clone(), direction: direction.into(), path: path.into() };
                    self.bytes.get_or_create(&l).inc_by(n);
                }
            }
        }
        if f.bytes.to_server + f.bytes.to_client > f.redirected.to_server + f.redirected.to_client {
            // RTT means something only for a connection that sent bytes through TCP.
            self.rtt.get_or_create(&labels).observe(f64::from(f.srtt_us) / 1e6);
        }
        self.retransmits.get_or_create(&labels).inc_by(u64::from(f.retransmits));
    }

    /// Counts one denial.
    pub fn denial(&self, d: &DenialRecord) {
        let name = |pods: &[String]| pods.first().cloned().unwrap_or_else(|| "?".into());
        let l =
            DenialLabels { hook: d.hook.clone(), source: name(&d.from.pods), destination: name(&d.to.pods) };
        self.denials.get_or_create(&l).inc();
    }
    // ANCHOR_END: record

    /// Reads what the pinned maps say now: the datapath's counters, verdicts, map fill.
    pub fn refresh(&self, pinned: &Pinned) {
        if let Ok(c) = pinned.counters() {
            let json = serde_json::to_value(c).unwrap_or_default();
            for k in DpCounter::ALL {
                let v = json[k.name()].as_u64().unwrap_or(0);
                self.datapath
                    .get_or_create(&NameLabel { name: k.name().into() })
                    .inner()
                    .store(v, Ordering::Relaxed);
            }
        }
        if let Ok(v) = pinned.verdicts() {
            for ((rule, hook), n) in v {
                let l = VerdictLabels { rule, hook: Hook::name(hook).into() };
                self.verdicts.get_or_create(&l).inner().store(n, Ordering::Relaxed);
            }
        }
        for f in pinned.fill() {
            let l = MapLabel { map: f.name.into() };
            if let Some(n) = f.entries {
                self.map_entries.get_or_create(&l).set(n as i64);
            }
            self.map_capacity.get_or_create(&l).set(i64::from(f.max_entries));
        }
    }
}

// ANCHOR: serve
/// Serves `GET /metrics` on `addr` from a thread of its own (the maps opened again from
/// `pin_dir` there); returns the address it listens on.
pub fn serve(
    addr: SocketAddr,
    pin_dir: PathBuf,
    metrics: Metrics,
    registry: Registry,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    // Opened here, not in the thread: metrics that could never refresh are an error at start.
    let pinned = Pinned::open(&pin_dir).map_err(std::io::Error::other)?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            metrics.refresh(&pinned);
            if let Err(e) = answer(stream, &registry) {
                eprintln!("mesh-agent: metrics: answering a scrape: {e}");
            }
        }
    })?;
    Ok(bound)
}

/// One HTTP/1.1 exchange: `GET /metrics` gets the registry, anything else 404.
fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = Vec::new();
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&req).to_ascii_lowercase();
    let (status, kind, body) = if head.starts_with("get /metrics ") || head.starts_with("get /metrics?") {
        let mut body = String::new();
        encode(&mut body, registry).map_err(std::io::Error::other)?;
        // Content negotiation, as Prometheus's own clients do: OpenMetrics for a scraper that
        // asks for it (the Prometheus server does), the classic text format for everyone else
        // (curl, promtool check metrics).
        if head.lines().any(|l| l.starts_with("accept:") && l.contains("application/openmetrics-text")) {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
        } else {
            ("200 OK", "text/plain; version=0.0.4; charset=utf-8", classic_text(&body))
        }
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
// ANCHOR_END: serve

/// OpenMetrics text as the classic Prometheus text format (0.0.4): a counter family is named
/// with its `_total` suffix there, and there is no `# EOF` or `# UNIT`.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if counters.contains(name) { "_total" } else { "" };
            out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use mesh_common::{AF_INET, FlowRecord, SockKey};

    use super::*;
    use crate::flows::Names;

    #[test]
    fn a_flow_becomes_counters_bytes_and_an_rtt() {
        let (m, r) = Metrics::new();
        let c = u32::from_ne_bytes([10, 77, 0, 10]);
        let s = u32::from_ne_bytes([10, 77, 0, 11]);
        let rec = FlowRecord {
            key: SockKey::new(0, AF_INET, [c, 0, 0, 0], [s, 0, 0, 0], 40000, 7000),
            tcp_sent: 5,
            redirected_sent: 1000,
            redirected_received: 2000,
            srtt_us: 40,
            flags: FlowRecord::CLIENT,
            ..FlowRecord::default()
        };
        m.flow(&Flow::new(&rec, &Names::default(), UNIX_EPOCH));
        let mut text = String::new();
        encode(&mut text, &r).unwrap();
        let l = r#"reporter="client",source="world",destination="world",destination_port="7000""#;
        assert!(
            text.contains(&format!("mesh_tcp_flows_total{{{l},path=\"both\",verdict=\"allowed\"}} 1")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "mesh_tcp_bytes_total{{{l},direction=\"to_server\",path=\"redirected\"}} 1000"
        )));
        assert!(
            text.contains(&format!("mesh_tcp_bytes_total{{{l},direction=\"to_server\",path=\"tcp\"}} 5"))
        );
        assert!(text.contains(&format!(
            "mesh_tcp_bytes_total{{{l},direction=\"to_client\",path=\"redirected\"}} 2000"
        )));
        assert!(text.contains(&format!("mesh_tcp_rtt_seconds_count{{{l}}} 1")));
        assert!(text.ends_with("# EOF\n"));
        let classic = classic_text(&text);
        assert!(classic.contains("# HELP mesh_tcp_flows_total TCP connections closed"), "{classic}");
        assert!(classic.contains("# TYPE mesh_tcp_flows_total counter\n"));
        assert!(classic.contains("# TYPE mesh_tcp_rtt_seconds histogram\n"));
        assert!(!classic.contains("# EOF"));
    }
}
