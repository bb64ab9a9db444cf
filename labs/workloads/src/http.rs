//! `http-server` and `http-probe`: the smallest HTTP/1.1 that lets a scenario show which
//! requests the mesh lets through. The server answers every request with `200 OK` and a body
//! naming itself and the request (keep-alive, pipelining, `Content-Length` bodies); the probe
//! sends a list of requests over one connection in the way a scenario asks (one per write, each
//! split across two writes, or all in one write) and reports what came back for each.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerArgs {
    #[arg(long, default_value = "[::]:8080")]
    pub listen: SocketAddr,
    /// Named in every response body.
    #[arg(long, default_value = "http-server")]
    pub name: String,
}

/// How the probe writes its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One write per request, each answer read before the next request (keep-alive).
    #[default]
    KeepAlive,
    /// Each request in two writes, split inside its request line (after 2 bytes).
    Split,
    /// Each request in two writes: the request line, then the headers.
    SplitHeaders,
    /// All requests in one write, then the answers (pipelining).
    Pipeline,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ProbeArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// A request as `METHOD /path`; repeat for several, sent in order over one connection.
    #[arg(long = "request", required = true)]
    #[serde(rename = "request")]
    pub requests: Vec<String>,
    #[arg(long, value_enum, default_value_t = Mode::KeepAlive)]
    pub mode: Mode,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct RrArgs {
    #[arg(long)]
    pub connect: SocketAddr,
    /// The request, as `METHOD /path`, sent again and again on one keep-alive connection.
    #[arg(long, default_value = "GET /")]
    pub request: String,
    #[arg(long, default_value_t = 2000)]
    pub round_trips: u64,
    #[arg(long)]
    pub json: bool,
}

/// What each request got: `200` (or another status), or the error that ended the connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub target: String,
    pub answers: Vec<String>,
    /// Requests answered with 200.
    pub ok: u32,
    /// Requests that got no answer (the connection failed before or while sending them).
    pub failed: u32,
}

impl std::fmt::Display for ProbeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: {} ok, {} failed", self.target, self.ok, self.failed)?;
        for a in &self.answers {
            writeln!(f, "  {a}")?;
        }
        Ok(())
    }
}

pub fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).with_context(|| format!("listen on {}", args.listen))?;
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let name = args.name.clone();
        thread::spawn(move || {
            let _ = answer(conn, &name);
        });
    }
    Ok(())
}

/// Answers requests on one connection until it closes.
fn answer(conn: TcpStream, name: &str) -> anyhow::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let request = line.trim_end().to_owned();
        let mut length = 0usize;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        let body = format!("{name} {request}\n");
        // One write: several small ones would meet Nagle's algorithm and the client's delayed
        // ACK (40 ms a response).
        let response = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        out.write_all(response.as_bytes())?;
    }
}

// ANCHOR: probe
pub fn probe(args: &ProbeArgs) -> anyhow::Result<ProbeReport> {
    let mut r = ProbeReport { target: args.connect.to_string(), ..ProbeReport::default() };
    let wire: Vec<Vec<u8>> = args
        .requests
        .iter()
        .map(|req| {
            let (method, path) = req.split_once(' ').unwrap_or((req, "/"));
            format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n\r\n", args.connect).into_bytes()
        })
        .collect();
    let conn = TcpStream::connect_timeout(&args.connect, Duration::from_secs(2))
        .with_context(|| format!("connect {}", args.connect))?;
    conn.set_read_timeout(Some(Duration::from_secs(3)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    let mut sent_all = Ok(());
    if args.mode == Mode::Pipeline {
        sent_all = w.write_all(&wire.concat());
    }
    for (i, req) in wire.iter().enumerate() {
        let sent = match args.mode {
            Mode::Pipeline => {
                sent_all.as_ref().map(drop).map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
            }
            Mode::KeepAlive => w.write_all(req),
            Mode::Split | Mode::SplitHeaders => {
                let at = if args.mode == Mode::Split {
                    2
                } else {
                    req.windows(2).position(|w| w == b"\r\n").map_or(2, |p| p + 2)
                };
                w.write_all(&req[..at]).and_then(|()| {
                    // Long enough for the first write to leave on its own.
                    thread::sleep(Duration::from_millis(50));
                    w.write_all(&req[at..])
                })
            }
        };
        let answer = sent.map_err(anyhow::Error::from).and_then(|()| read_answer(&mut reader));
        match answer {
            Ok(status) => {
                if status == "200" {
                    r.ok += 1;
                }
                r.answers.push(format!("{}: {status}", args.requests[i]));
            }
            Err(e) => {
                // The connection is gone: this request and every later one failed.
                let left = (wire.len() - i) as u32;
                r.failed += left;
                r.answers.push(format!("{}: {}", args.requests[i], describe(&e)));
                break;
            }
        }
    }
    Ok(r)
}
// ANCHOR_END: probe

/// HTTP request/response latency: one keep-alive connection, one request at a time, an HDR
/// histogram of the round trips (after 100 unmeasured), reported like `rr`'s.
pub fn rr(args: &RrArgs) -> anyhow::Result<crate::rr::RrReport> {
    let (method, path) = args.request.split_once(' ').unwrap_or((&args.request, "/"));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n\r\n", args.connect).into_bytes();
    let conn = TcpStream::connect_timeout(&args.connect, Duration::from_secs(2))
        .with_context(|| format!("connect {}", args.connect))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    let mut hist = crate::rr::new_histogram();
    let warmup = 100;
    let start = std::time::Instant::now();
    for i in 0..warmup + args.round_trips {
        let t0 = std::time::Instant::now();
        w.write_all(&req)?;
        let status = read_answer(&mut reader)?;
        if status != "200" {
            bail!("{} answered {status}", args.request);
        }
        if i >= warmup {
            hist.saturating_record(t0.elapsed().as_nanos() as u64);
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(crate::rr::RrReport {
        target: args.connect.to_string(),
        connections: 1,
        request_size: req.len(),
        response_size: 0,
        nodelay: true,
        round_trips: hist.len(),
        elapsed_s,
        round_trips_per_s: hist.len() as f64 / elapsed_s.max(f64::EPSILON),
        latency_us: crate::rr::latency(&hist),
        curve: crate::rr::CURVE_PERCENTILES
            .iter()
            .map(|p| [*p, us(hist.value_at_quantile(p / 100.0))])
            .collect(),
    })
}

/// The status code of one response, its body read.
fn read_answer(reader: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut status = String::new();
    if reader.read_line(&mut status)? == 0 {
        bail!("connection closed");
    }
    let code = status.split_whitespace().nth(1).unwrap_or("?").to_owned();
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            bail!("connection closed in the headers");
        }
        if h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok(code)
}

/// An error as `Permission denied (os error 13)`, the form the lab reads errno from.
fn describe(e: &anyhow::Error) -> String {
    e.downcast_ref::<std::io::Error>().map_or_else(|| format!("{e:#}"), ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_gets_every_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        thread::spawn(move || serve(&ServerArgs { listen: addr, name: "s".into() }));
        thread::sleep(Duration::from_millis(100));
        for mode in [Mode::KeepAlive, Mode::Split, Mode::SplitHeaders, Mode::Pipeline] {
            let r = probe(&ProbeArgs {
                connect: addr,
                requests: vec!["GET /api".into(), "POST /api".into(), "GET /admin".into()],
                mode,
                json: true,
            })
            .unwrap();
            assert_eq!((r.ok, r.failed), (3, 0), "{mode:?}: {r}");
        }
        let r =
            rr(&RrArgs { connect: addr, request: "GET /api".into(), round_trips: 50, json: true }).unwrap();
        assert_eq!(r.round_trips, 50);
        assert!(r.latency_us.p50 > 0.0);
    }
}
