//! `stream`: bulk throughput. Each stream connects to `rr-server` as a sink, writes 128 KiB
//! buffers for a fixed time, half-closes, and checks the byte count the server read.
use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::{
    cpu::CpuTimes,
    rr::{self, Hello},
};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Server address (`workload rr-server`).
    #[arg(long)]
    pub connect: SocketAddr,
    /// Concurrent streams, one thread each.
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// How long each stream writes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub millis: u64,
    /// Bytes per write() on this side, per read() on the server's (iperf3's default for TCP).
    #[arg(long, default_value_t = 128 * 1024)]
    pub write_size: usize,
    /// How long one write, or the wait for the server's byte count, may take before the stream
    /// gives up and reports it (milliseconds).
    #[arg(long, default_value_t = 10_000)]
    pub stall_ms: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one stream run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamReport {
    pub target: String,
    pub streams: u32,
    /// Bytes the server confirmed it read, all streams.
    pub bytes: u64,
    pub elapsed_s: f64,
    /// Megabytes (10^6) per second.
    pub mb_per_s: f64,
    /// Busy CPU time of the whole machine per gigabyte moved (both ends, proxies, the kernel).
    pub cpu_s_per_gb: f64,
    /// Streams that ended early: a write() that failed, or one that (or the server's count)
    /// did not come within the stall time. Each stopped there; its bytes up to then are counted.
    pub errors: Vec<String>,
    /// How many of `errors` are stalls only: no write() failed, the stream stopped moving.
    #[serde(default)]
    pub stalls: u32,
}

/// Runs the streams and reports their total.
pub fn run(args: &Args) -> anyhow::Result<StreamReport> {
    if args.streams == 0 || args.write_size == 0 {
        bail!("need at least one stream and a non-empty write");
    }
    let conns = (0..args.streams)
        .map(|_| {
            let read = u32::try_from(args.write_size).unwrap_or(u32::MAX);
            // TCP's default (Nagle on), like iperf3 and most bulk senders: over veth, turning it
            // off roughly doubled single-stream throughput on the machine this was written on.
            rr::connect(args.connect, Hello::Sink { read }, false, Duration::from_secs(5))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cpu0 = CpuTimes::now();
    let start = Instant::now();
    let until = start + Duration::from_millis(args.millis);
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let size = args.write_size;
            let stall = Duration::from_millis(args.stall_ms);
            thread::spawn(move || one_stream(conn, size, until, stall))
        })
        .collect();
    let (mut bytes, mut errors, mut stalls) = (0, Vec::new(), 0);
    for w in workers {
        let (sent, end) = w.join().map_err(|_| anyhow::anyhow!("stream worker panicked"))??;
        bytes += sent;
        if let Some(end) = end {
            stalls += u32::from(end.stalled);
            errors.push(end.text);
        }
    }
    let elapsed_s = start.elapsed().as_secs_f64();
    let cpu = CpuTimes::now().since(&cpu0);
    let gb = bytes as f64 / 1e9;
    Ok(StreamReport {
        target: args.connect.to_string(),
        streams: args.streams,
        bytes,
        elapsed_s,
        mb_per_s: bytes as f64 / 1e6 / elapsed_s.max(f64::EPSILON),
        cpu_s_per_gb: if gb > 0.0 { cpu.busy_s() / gb } else { 0.0 },
        errors,
        stalls,
    })
}

/// Why a stream ended early.
struct EarlyEnd {
    text: String,
    /// Only a stall: no write() failed, the stream stopped moving.
    stalled: bool,
}

// ANCHOR: one_stream
/// Writes until `until`, half-closes, and checks the server's count. A failed write() ends the
/// stream early and is returned beside the bytes the server confirmed (TCP itself blocks a
/// writer whose peer is slow; a write error is what the application would see). A write or the
/// server's count that does not come within `stall` is an error too: a stream must not hang the
/// benchmark (on 5.10, four streams into sidecar proxies through sockmap stalled for good).
fn one_stream(
    mut conn: TcpStream,
    size: usize,
    until: Instant,
    stall: Duration,
) -> anyhow::Result<(u64, Option<EarlyEnd>)> {
    conn.set_write_timeout(Some(stall))?;
    conn.set_read_timeout(Some(stall))?;
    let buf = vec![b's'; size];
    let (mut sent, mut error, mut failed) = (0u64, None, false);
    let is_stall = |e: &std::io::Error| {
        matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
    };
    let stalled = |e: &std::io::Error| {
        if is_stall(e) { format!("stalled for {} ms", stall.as_millis()) } else { e.to_string() }
    };
    'send: while Instant::now() < until {
        let mut at = 0;
        while at < size {
            match conn.write(&buf[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    sent += at as u64;
                    failed = !is_stall(&e);
                    error = Some(format!("write after {sent} bytes: {}", stalled(&e)));
                    break 'send;
                }
            }
        }
        sent += size as u64;
    }
    let _ = conn.shutdown(Shutdown::Write);
    let mut count = [0u8; 8];
    match conn.read_exact(&mut count) {
        Ok(()) => {
            let read = u64::from_le_bytes(count);
            if read != sent && error.is_none() {
                failed = true;
                error = Some(format!("sent {sent} bytes, the server read {read}"));
            }
            Ok((read.min(sent), error.map(|text| EarlyEnd { text, stalled: !failed })))
        }
        Err(e) => {
            failed |= !is_stall(&e);
            let e = format!("no byte count from the server: {}", stalled(&e));
            let text = error.map_or(e.clone(), |w| format!("{w}; {e}"));
            Ok((0, Some(EarlyEnd { text, stalled: !failed })))
        }
    }
}
// ANCHOR_END: one_stream

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_byte_is_confirmed_by_the_server() {
        let addr = crate::rr::tests::local_server();
        let args =
            Args { connect: addr, streams: 2, millis: 100, write_size: 10_000, stall_ms: 5000, json: true };
        let r = run(&args).unwrap();
        assert!(r.bytes > 0 && r.bytes.is_multiple_of(10_000), "{r:?}");
        assert!(r.mb_per_s > 0.0);
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }

    #[test]
    fn a_reader_that_never_reads_is_an_error_not_a_hang() {
        // Accepts, then neither reads nor answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held = thread::spawn(move || listener.accept().map(|(c, _)| (c, listener)));
        let args =
            Args { connect: addr, streams: 1, millis: 3000, write_size: 1 << 20, stall_ms: 300, json: true };
        let t0 = Instant::now();
        let r = run(&args).unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert!(r.errors[0].contains("stalled for 300 ms"), "{r:?}");
        assert_eq!(r.stalls, 1, "only a stall: no write() failed");
        drop(held);
    }
}
