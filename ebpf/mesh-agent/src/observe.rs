//! `mesh-agent observe`: the flow log, filtered, as JSON lines or a table; `--follow` keeps
//! printing what the running agent appends (in the spirit of `hubble observe`).
use std::{
    fs::File,
    io::{BufRead as _, BufReader, Seek as _, SeekFrom, Write},
    os::unix::fs::MetadataExt as _,
    path::Path,
    time::Duration,
};

use serde_json::Value;

/// Which events to show; every filter given must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Either end is this pod.
    pub pod: Option<String>,
    /// Either end uses this port.
    pub port: Option<u16>,
    /// `allowed` or `denied` (denials always are).
    pub verdict: Option<String>,
}

impl Filter {
    pub fn matches(&self, event: &Value) -> bool {
        let (ends, verdict) = if let Some(f) = event.get("flow") {
            let ends = [&f["source"], &f["destination"]]
                .map(|e| (e["pod"].as_str().unwrap_or("").to_owned(), e["port"].as_u64()));
            (ends, f["verdict"].as_str().unwrap_or(""))
        } else if let Some(d) = event.get("denial") {
            let pods = |who: &Value| who["pods"].as_array().cloned().unwrap_or_default();
            let first = |v: Vec<Value>| v.first().and_then(Value::as_str).unwrap_or("").to_owned();
            ([(first(pods(&d["from"])), None), (first(pods(&d["to"])), d["port"].as_u64())], "denied")
        } else {
            return false;
        };
        self.pod.as_ref().is_none_or(|p| ends.iter().any(|(pod, _)| pod == p))
            && self.port.is_none_or(|p| ends.iter().any(|(_, port)| *port == Some(u64::from(p))))
            && self.verdict.as_ref().is_none_or(|v| v == verdict)
    }
}

/// How to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Prints the matching events of `log`; with `follow`, keeps printing new ones (across
/// rotation) until the process is stopped.
pub fn run(
    log: &Path,
    filter: &Filter,
    output: Output,
    follow: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let open = || {
        File::open(log).map_err(|e| {
            anyhow::anyhow!("{}: {e} (is the agent running with this --flow-log?)", log.display())
        })
    };
    let mut file = open()?;
    if output == Output::Table {
        writeln!(out, "{}", header())?;
    }
    let mut reader = BufReader::new(file.try_clone()?);
    let mut partial = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        if n > 0 && line.ends_with('\n') {
            partial.push_str(&line);
            print(&partial, filter, output, out)?;
            partial.clear();
            continue;
        }
        // End of the file (or half a line being written).
        partial.push_str(&line);
        if !follow {
            return Ok(());
        }
        out.flush()?;
        std::thread::sleep(Duration::from_millis(200));
        // Rotated: the path now names a new file; read it from its start.
        if let Ok(now) = std::fs::metadata(log)
            && now.ino() != file.metadata()?.ino()
        {
            file = open()?;
            reader = BufReader::new(file.try_clone()?);
            partial.clear();
        } else {
            let pos = reader.stream_position()?;
            reader.seek(SeekFrom::Start(pos))?;
        }
    }
}

fn print(line: &str, filter: &Filter, output: Output, out: &mut impl Write) -> anyhow::Result<()> {
    let Ok(event) = serde_json::from_str::<Value>(line) else {
        // Not ours (or damaged): say so rather than drop it.
        eprintln!("mesh-agent observe: not an event: {}", line.trim_end());
        return Ok(());
    };
    if !filter.matches(&event) {
        return Ok(());
    }
    match output {
        Output::Json => writeln!(out, "{}", line.trim_end())?,
        Output::Table => writeln!(out, "{}", row(&event))?,
    }
    Ok(())
}

fn header() -> String {
    format!(
        "{:<12} {:<8} {:<30} {:<30} {:<8} {:<10} {:>10} {:>10} {:>9} {:>7}",
        "TIME",
        "REPORTER",
        "SOURCE",
        "DESTINATION",
        "VERDICT",
        "PATH",
        "TO_SERVER",
        "TO_CLIENT",
        "SRTT_US",
        "RETRANS"
    )
}

/// One event as a table row.
pub fn row(e: &Value) -> String {
    let end = |v: &Value| {
        let ip = v["ip"].as_str().unwrap_or("?");
        let ip = if ip.contains(':') { format!("[{ip}]") } else { ip.to_owned() };
        format!("{} {ip}:{}", v["pod"].as_str().unwrap_or("?"), v["port"])
    };
    if let Some(f) = e.get("flow") {
        format!(
            "{:<12} {:<8} {:<30} {:<30} {:<8} {:<10} {:>10} {:>10} {:>9} {:>7}",
            clock(f["time"].as_f64().unwrap_or(0.0)),
            f["reporter"].as_str().unwrap_or(""),
            end(&f["source"]),
            end(&f["destination"]),
            f["verdict"].as_str().unwrap_or(""),
            f["path"].as_str().unwrap_or(""),
            f["bytes"]["to_server"].to_string(),
            f["bytes"]["to_client"].to_string(),
            f["srtt_us"].to_string(),
            f["retransmits"].to_string(),
        )
    } else {
        let d = &e["denial"];
        let who = |w: &Value| {
            w["pods"].as_array().and_then(|p| p.first()).and_then(Value::as_str).unwrap_or("?").to_owned()
        };
        format!(
            "{:<12} {:<8} {:<30} {:<30} {:<8} {}",
            "",
            d["hook"].as_str().unwrap_or(""),
            who(&d["from"]),
            format!("{} {}:{}", who(&d["to"]), d["dst"].as_str().unwrap_or("?"), d["port"]),
            "denied",
            d["protocol"].as_str().unwrap_or(""),
        )
    }
}

/// UTC time of day, `HH:MM:SS.mmm`.
fn clock(secs: f64) -> String {
    let ms = (secs * 1000.0) as u64 % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(src: &str, dst: &str, port: u16, verdict: &str) -> Value {
        serde_json::json!({"flow": {
            "time": 3661.5, "reporter": "client",
            "source": {"ip": "10.77.0.10", "port": 40000, "pod": src},
            "destination": {"ip": "10.77.0.11", "port": port, "pod": dst},
            "verdict": verdict, "path": "redirected",
            "bytes": {"to_server": 5, "to_client": 7}, "srtt_us": 30, "retransmits": 0
        }})
    }

    #[test]
    fn filters_by_pod_port_and_verdict() {
        let f = flow("client", "server", 7000, "allowed");
        let denial = serde_json::json!({"denial": {"hook": "connect", "protocol": "tcp",
            "from": {"id": 256, "pods": ["frontend"]}, "to": {"id": 257, "pods": ["db"]},
            "dst": "10.77.0.12", "port": 5432}});
        let by = |pod: Option<&str>, port: Option<u16>, verdict: Option<&str>| Filter {
            pod: pod.map(Into::into),
            port,
            verdict: verdict.map(Into::into),
        };
        assert!(by(Some("server"), None, None).matches(&f));
        assert!(!by(Some("db"), None, None).matches(&f));
        assert!(by(None, Some(40000), Some("allowed")).matches(&f));
        assert!(!by(None, Some(7001), None).matches(&f));
        assert!(!by(None, None, Some("denied")).matches(&f));
        assert!(by(Some("db"), Some(5432), Some("denied")).matches(&denial));
        assert!(!by(Some("server"), None, None).matches(&denial));
    }

    #[test]
    fn table_rows_name_both_ends() {
        let r = row(&flow("client", "server", 7000, "allowed"));
        assert!(r.starts_with("01:01:01.500 client   client 10.77.0.10:40000"), "{r}");
        assert!(r.contains("server 10.77.0.11:7000") && r.contains("redirected"), "{r}");
    }
}
