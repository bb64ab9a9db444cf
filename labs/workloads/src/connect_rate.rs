//! `connect-rate`: how many short connections per second, one after another. Each one is
//! connect + one request + its response + close, the life of a typical HTTP/1.0 or RPC call
//! without connection reuse.
use std::{
    io::{Read, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::rr::{self, Hello, Latency};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Server address (`workload rr-server`).
    #[arg(long)]
    pub connect: SocketAddr,
    /// Measured connections.
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// Connections before measuring starts.
    #[arg(long, default_value_t = 20)]
    pub warmup: u32,
    /// Bytes in the request and in the response.
    #[arg(long, default_value_t = rr::DEFAULT_SIZE)]
    pub size: usize,
    /// Keep going for this long instead of a number of connections (a connection storm).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// At most this many new connections per second (0: as fast as one client can).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnectReport {
    pub target: String,
    pub connections: u32,
    pub elapsed_s: f64,
    pub per_s: f64,
    /// connect() to the response's last byte, microseconds.
    pub latency_us: Latency,
}

/// How long one connection's request or response may take before the run fails.
const CYCLE_DEADLINE: Duration = Duration::from_secs(30);

// ANCHOR: cycle
/// One connection's life; returns how long it took until the response was in.
fn cycle(to: SocketAddr, size: u32, request: &[u8], response: &mut [u8]) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let hello = Hello::PingPong { request: size, response: size };
    let mut conn = rr::connect(to, hello, true, Duration::ZERO)?;
    // A response lost on the way is an error naming the connection, not a hang (the request is
    // small: its write does not block); a healthy path answers in milliseconds, even under TCG.
    conn.set_read_timeout(Some(CYCLE_DEADLINE)).context("read timeout")?;
    // (The local address is asked for only on an error: a getsockname per connection would be
    // part of what is measured.)
    let local = |c: &std::net::TcpStream| c.local_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    conn.write_all(request).with_context(|| format!("request on {} -> {to}", local(&conn)))?;
    conn.read_exact(response).with_context(|| {
        format!("response on {} -> {to} (none within {} s)", local(&conn), CYCLE_DEADLINE.as_secs())
    })?;
    let took = t0.elapsed();
    drop(conn);
    Ok(took)
}
// ANCHOR_END: cycle

pub fn run(args: &Args) -> anyhow::Result<ConnectReport> {
    let size = u32::try_from(args.size).ok().filter(|s| *s > 0).context("size must be 1 .. 4 GiB")?;
    let request = vec![b'q'; args.size];
    let mut response = vec![0u8; args.size];
    // The server may still be starting: the first connection may wait for it.
    rr::connect(
        args.connect,
        Hello::PingPong { request: size, response: size },
        true,
        Duration::from_secs(5),
    )?;
    for _ in 0..args.warmup {
        cycle(args.connect, size, &request, &mut response)?;
    }
    let mut hist = rr::new_histogram();
    let start = Instant::now();
    let until = args.seconds.map(|s| start + Duration::from_secs_f64(s));
    let mut done = 0u32;
    while until.map_or(done < args.connections, |u| Instant::now() < u) {
        if args.rate > 0.0 {
            // Paced: connection i starts no earlier than i / rate seconds in.
            let due = start + Duration::from_secs_f64(f64::from(done) / args.rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let took = cycle(args.connect, size, &request, &mut response)?;
        hist.saturating_record(took.as_nanos() as u64);
        done += 1;
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    Ok(ConnectReport {
        target: args.connect.to_string(),
        connections: done,
        elapsed_s,
        per_s: f64::from(done) / elapsed_s.max(f64::EPSILON),
        latency_us: rr::latency(&hist),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_whole_connections() {
        let addr = crate::rr::tests::local_server();
        let args = Args {
            connect: addr,
            connections: 50,
            warmup: 2,
            size: 64,
            json: true,
            seconds: None,
            rate: 0.0,
        };
        let r = run(&args).unwrap();
        assert_eq!(r.connections, 50);
        assert!(r.per_s > 0.0 && r.latency_us.p50 > 0.0, "{r:?}");
    }

    #[test]
    fn paced_for_a_time() {
        let addr = crate::rr::tests::local_server();
        let args = Args {
            connect: addr,
            connections: 1,
            warmup: 0,
            size: 64,
            json: true,
            seconds: Some(0.3),
            rate: 100.0,
        };
        let r = run(&args).unwrap();
        // 100 per second for 0.3 s: 30 or 31 (the last starts just before the deadline).
        assert!((25..=31).contains(&r.connections), "{r:?}");
    }
}
