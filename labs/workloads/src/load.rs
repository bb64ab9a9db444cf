//! `load`: steady request/response traffic for a fixed time, counting every failure instead of
//! stopping at the first. A scenario starts it, disturbs the mesh (kills its agent, restarts it)
//! and then reads whether any round trip failed or stalled.
//!
//! Prints `ready` on its own line once every connection is up and did one round trip (counted),
//! then one JSON report at the end.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::rr::{self, Hello};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Server (or service) address; `rr-server` listens there.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Concurrent connections, one thread each.
    #[arg(long, default_value_t = 4)]
    pub connections: u32,
    /// How long to keep the traffic going.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Bytes in each request and each response.
    #[arg(long, default_value_t = rr::DEFAULT_SIZE)]
    pub size: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub target: String,
    pub connections: u32,
    pub seconds: f64,
    pub round_trips: u64,
    /// Round trips that failed (an error, a short or wrong answer); the connection is then
    /// opened again.
    pub failed: u64,
    /// The longest single round trip, in milliseconds: a stall shows here even without a failure.
    pub max_round_trip_ms: f64,
    /// The first few errors, for the report.
    pub errors: Vec<String>,
}

// ANCHOR: load
pub fn run(args: &Args) -> anyhow::Result<LoadReport> {
    let hello = Hello::PingPong { request: args.size as u32, response: args.size as u32 };
    let mut conns = (0..args.connections)
        .map(|_| rr::connect(args.connect, hello, true, Duration::from_secs(5)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Ready means working: one round trip on every connection first.
    let (request, mut response) = (vec![b'q'; args.size], vec![0u8; args.size]);
    for c in &mut conns {
        c.write_all(&request).and_then(|()| c.read_exact(&mut response)).context("first round trip")?;
    }
    println!("ready");
    let until = Instant::now() + Duration::from_secs_f64(args.seconds);
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let (to, size) = (args.connect, args.size);
            thread::spawn(move || drive(conn, to, hello, size, until))
        })
        .collect();
    let mut r = LoadReport {
        target: args.connect.to_string(),
        connections: args.connections,
        seconds: args.seconds,
        ..LoadReport::default()
    };
    r.round_trips = u64::from(args.connections);
    for w in workers {
        let one = w.join().map_err(|_| anyhow::anyhow!("load worker panicked"))?;
        r.round_trips += one.round_trips;
        r.failed += one.failed;
        r.max_round_trip_ms = r.max_round_trip_ms.max(one.max_round_trip_ms);
        r.errors.extend(one.errors.into_iter().take(5usize.saturating_sub(r.errors.len())));
    }
    Ok(r)
}

fn drive(mut conn: TcpStream, to: SocketAddr, hello: Hello, size: usize, until: Instant) -> LoadReport {
    let mut r = LoadReport::default();
    let (request, mut response) = (vec![b'q'; size], vec![0u8; size]);
    while Instant::now() < until {
        let t0 = Instant::now();
        let done = conn.write_all(&request).and_then(|()| conn.read_exact(&mut response));
        r.max_round_trip_ms = r.max_round_trip_ms.max(t0.elapsed().as_secs_f64() * 1e3);
        match done {
            Ok(()) => r.round_trips += 1,
            Err(e) => {
                r.failed += 1;
                if r.errors.len() < 5 {
                    r.errors.push(e.to_string());
                }
                match rr::connect(to, hello, true, Duration::from_secs(1)) {
                    Ok(c) => conn = c,
                    Err(e) => {
                        r.errors.push(format!("reconnect: {e:#}"));
                        return r;
                    }
                }
            }
        }
    }
    r
}
// ANCHOR_END: load
