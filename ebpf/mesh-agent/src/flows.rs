//! Flow records: the kernel sends one [`FlowRecord`] per closed TCP socket of the lab
//! (`FLOW_EVENTS`, written by `telemetry.rs`); the running agent turns each into a [`Flow`] (who
//! talked to whom, bytes each way, RTT, retransmits, verdict, path) and appends it to the flow
//! log, a JSON-lines file `mesh-agent observe` reads. Denials go to the same log.
use std::{
    borrow::Cow,
    collections::BTreeMap,
    fs::{self, File, OpenOptions},
    io::{BufWriter, Write as _},
    net::IpAddr,
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use mesh_common::{FlowRecord, Hook};
use serde::{Deserialize, Serialize};

use crate::{denials::ip_of, meshfile::PodAddrs};

/// Where `mesh-agent run` writes the flow log and `observe` reads it, unless told otherwise.
pub const DEFAULT_FLOW_LOG: &str = "/run/sidecarless/flows.jsonl";
/// The log is rotated (to `<file>.1`, replacing the previous one) when it grows past this.
pub const ROTATE_BYTES: u64 = 64 << 20;

// ANCHOR: flow
/// One closed connection as one of its sockets saw it, oriented client -> server. The flow log
/// holds it as `{"flow": {...}}`; [`Flow`] reads back from there (the words are `Cow`s: the
/// agent writes its own constants, a reader gets them owned).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Seconds since the epoch when the agent read the record (just after the close).
    pub time: f64,
    /// Which end reported it: `client` (it called connect()) or `server` (it accepted).
    pub reporter: Cow<'static, str>,
    pub source: Endpoint,
    pub destination: Endpoint,
    /// Payload bytes each way, however they travelled.
    pub bytes: Directions,
    /// The part of `bytes` sk_msg redirected socket to socket (TCP never saw it).
    pub redirected: Directions,
    /// `redirected` (every byte), `tcp` (none), `both`, or `none` (no payload).
    pub path: Cow<'static, str>,
    /// Smoothed RTT at close, and the range of smoothed RTTs the RTT callback saw.
    pub srtt_us: u32,
    pub rtt_min_us: u32,
    pub rtt_max_us: u32,
    pub rtt_samples: u32,
    /// Segments TCP retransmitted (the kernel's `total_retrans`), and how many of them the
    /// RETRANS callback saw.
    pub retransmits: u32,
    pub retransmits_seen: u32,
    /// Retransmissions the `tcp:tcp_retransmit_skb` tracepoint saw (0 where it is not attached).
    pub retransmits_traced: u32,
    pub duration_ms: f64,
    /// `allowed`, or `denied` when sk_msg cut the connection.
    pub verdict: Cow<'static, str>,
    /// The hook that denied it (`message`, `http`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(default)]
    pub denied_by: Option<Cow<'static, str>>,
    /// The TCP state the socket closed from (`FIN_WAIT2` for an orderly active close, ...).
    pub closed_from: Cow<'static, str>,
}

/// One end of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    /// The pod that has this address (`world`: none of the lab's).
    pub pod: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directions {
    pub to_server: u64,
    pub to_client: u64,
}
// ANCHOR_END: flow

/// Address -> pod name, from the pods file.
#[derive(Debug, Clone, Default)]
pub struct Names(BTreeMap<IpAddr, String>);

impl Names {
    pub fn new(pods: &[PodAddrs]) -> Names {
        let mut m = BTreeMap::new();
        for p in pods {
            m.insert(IpAddr::V4(p.ipv4), p.name.clone());
            if let Some(v6) = p.ipv6 {
                m.insert(IpAddr::V6(v6), p.name.clone());
            }
        }
        Names(m)
    }

    pub fn of(&self, ip: IpAddr) -> String {
        if ip.is_loopback() {
            return "loopback".into();
        }
        self.0.get(&ip).cloned().unwrap_or_else(|| "world".into())
    }
}

impl Flow {
    /// `r` as the log shows it; `now` is the time to stamp it with.
    pub fn new(r: &FlowRecord, names: &Names, now: SystemTime) -> Flow {
        let k = &r.key;
        let local = Endpoint {
            ip: ip_of(k.family, k.local_ip),
            port: k.local_port as u16,
            pod: names.of(ip_of(k.family, k.local_ip)),
        };
        let remote = Endpoint {
            ip: ip_of(k.family, k.remote_ip),
            port: k.remote_port as u16,
            pod: names.of(ip_of(k.family, k.remote_ip)),
        };
        let client = r.flags & FlowRecord::CLIENT != 0;
        let sent = Directions {
            to_server: r.tcp_sent + r.redirected_sent,
            to_client: r.tcp_received + r.redirected_received,
        };
        let sent_redirected = Directions { to_server: r.redirected_sent, to_client: r.redirected_received };
        // A server's "sent" is towards the client.
        let flip = |d: Directions| Directions { to_server: d.to_client, to_client: d.to_server };
        let (source, destination, bytes, redirected) = if client {
            (local, remote, sent, sent_redirected)
        } else {
            (remote, local, flip(sent), flip(sent_redirected))
        };
        let total = bytes.to_server + bytes.to_client;
        let moved = redirected.to_server + redirected.to_client;
        Flow {
            time: now.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
            reporter: if client { "client" } else { "server" }.into(),
            source,
            destination,
            bytes,
            redirected,
            path: match (total, moved) {
                (0, _) => "none",
                (t, m) if t == m => "redirected",
                (_, 0) => "tcp",
                _ => "both",
            }
            .into(),
            srtt_us: r.srtt_us,
            rtt_min_us: r.rtt_min_us,
            rtt_max_us: r.rtt_max_us,
            rtt_samples: r.rtt_samples,
            retransmits: r.retransmits,
            retransmits_seen: r.retrans_cb,
            retransmits_traced: r.retrans_tp,
            duration_ms: r.end_ns.saturating_sub(r.start_ns) as f64 / 1e6,
            verdict: if r.denied_by == 0 { "allowed" } else { "denied" }.into(),
            denied_by: (r.denied_by != 0).then(|| Hook::name(r.denied_by).into()),
            closed_from: tcp_state(r.last_state).into(),
        }
    }
}

/// Every flow in the flow log at `path`, in order (denials and other lines left out). A log
/// that does not exist yet holds none.
pub fn read_log(path: &Path) -> std::io::Result<Vec<Flow>> {
    #[derive(Deserialize)]
    struct Line {
        flow: Flow,
    }
    let text = match fs::read_to_string(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        r => r?,
    };
    Ok(text.lines().filter_map(|l| serde_json::from_str::<Line>(l).ok()).map(|l| l.flow).collect())
}

/// The kernel's TCP state numbers (include/net/tcp_states.h).
pub fn tcp_state(s: u32) -> &'static str {
    match s {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => "?",
    }
}

// ANCHOR: log
/// The flow log: JSON lines appended as events arrive (`{"flow": ...}` or `{"denial": ...}`),
/// rotated at [`ROTATE_BYTES`].
pub struct FlowLog {
    path: PathBuf,
    file: BufWriter<File>,
    written: u64,
}

impl FlowLog {
    pub fn open(path: &Path) -> std::io::Result<FlowLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(FlowLog { path: path.to_owned(), file: BufWriter::new(file), written })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one event as a line (buffered: [`FlowLog::flush`] after a batch).
    pub fn write(&mut self, event: &serde_json::Value) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(event)?;
        line.push(b'\n');
        if self.written + line.len() as u64 > ROTATE_BYTES {
            self.file.flush()?;
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            fs::rename(&self.path, &old)?;
            self.file = BufWriter::new(OpenOptions::new().create(true).append(true).open(&self.path)?);
            self.written = 0;
        }
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    /// Writes out what is buffered (a reader may see a batch's last line cut until then).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
// ANCHOR_END: log

#[cfg(test)]
mod tests {
    use mesh_common::{AF_INET, SockKey};

    use super::*;

    fn pods() -> Names {
        let pod = |name: &str, last: u8| PodAddrs {
            name: name.into(),
            labels: BTreeMap::new(),
            ipv4: [10, 77, 0, last].into(),
            ipv6: Some(format!("fd77::{last}").parse().unwrap()),
            cgroups: Vec::new(),
        };
        Names::new(&[pod("client", 10), pod("server", 11)])
    }

    fn record(client: bool) -> FlowRecord {
        let c = u32::from_ne_bytes([10, 77, 0, 10]);
        let s = u32::from_ne_bytes([10, 77, 0, 11]);
        let key = if client {
            SockKey::new(0, AF_INET, [c, 0, 0, 0], [s, 0, 0, 0], 40000, 7000)
        } else {
            SockKey::new(0, AF_INET, [s, 0, 0, 0], [c, 0, 0, 0], 7000, 40000)
        };
        FlowRecord {
            key,
            start_ns: 1_000_000,
            end_ns: 3_500_000,
            tcp_sent: 10,
            tcp_received: 20,
            redirected_sent: 100,
            redirected_received: 200,
            flags: if client { FlowRecord::CLIENT } else { 0 } | FlowRecord::CLOSED,
            last_state: 5,
            ..FlowRecord::default()
        }
    }

    #[test]
    fn both_ends_orient_the_flow_client_to_server() {
        let c = Flow::new(&record(true), &pods(), UNIX_EPOCH);
        assert_eq!(
            (c.reporter.as_ref(), c.source.pod.as_str(), c.destination.pod.as_str()),
            ("client", "client", "server")
        );
        assert_eq!(c.bytes, Directions { to_server: 110, to_client: 220 });
        assert_eq!(c.redirected, Directions { to_server: 100, to_client: 200 });
        assert_eq!((c.path.as_ref(), c.closed_from.as_ref(), c.duration_ms), ("both", "FIN_WAIT2", 2.5));
        // What the log holds reads back as the same flow.
        let line = serde_json::json!({ "flow": c }).to_string();
        let back: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(serde_json::from_value::<Flow>(back["flow"].clone()).unwrap(), c);
        let s = Flow::new(&record(false), &pods(), UNIX_EPOCH);
        assert_eq!((s.reporter.as_ref(), s.source.port, s.destination.port), ("server", 40000, 7000));
        // The server sent 110 (to the client) and received 220 (to the server).
        assert_eq!(s.bytes, Directions { to_server: 220, to_client: 110 });
    }

    #[test]
    fn paths_and_verdicts() {
        let only_tcp = FlowRecord { redirected_sent: 0, redirected_received: 0, ..record(true) };
        assert_eq!(Flow::new(&only_tcp, &pods(), UNIX_EPOCH).path, "tcp");
        let empty = FlowRecord { tcp_sent: 0, tcp_received: 0, ..only_tcp };
        assert_eq!(Flow::new(&empty, &pods(), UNIX_EPOCH).path, "none");
        let denied = FlowRecord { denied_by: Hook::HTTP, ..record(true) };
        let f = Flow::new(&denied, &pods(), UNIX_EPOCH);
        assert_eq!((f.verdict.as_ref(), f.denied_by.as_deref()), ("denied", Some("http")));
    }

    #[test]
    fn the_log_rotates_and_keeps_whole_lines() {
        let dir = std::env::temp_dir().join(format!("flowlog-{}", std::process::id()));
        let path = dir.join("flows.jsonl");
        let mut log = FlowLog::open(&path).unwrap();
        log.written = ROTATE_BYTES - 5;
        log.write(&serde_json::json!({"flow": 1})).unwrap();
        log.write(&serde_json::json!({"flow": 2})).unwrap();
        log.flush().unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "{\"flow\":1}\n{\"flow\":2}\n");
        assert!(dir.join("flows.jsonl.1").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
