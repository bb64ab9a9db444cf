//! `rr`: request/response latency. The client writes a fixed-size request and waits for the
//! fixed-size response (a ping-pong), timing every round trip into an HDR histogram.
use std::{
    fmt,
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Default request and response size: one small RPC.
pub const DEFAULT_SIZE: usize = 64;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerArgs {
    /// Address to listen on (`[::]` accepts IPv4 and IPv6).
    #[arg(long, default_value = "[::]:7000")]
    pub listen: SocketAddr,
    /// What this server answers to a `Name` hello (the lab passes the pod's name).
    #[arg(long, default_value = "rr-server")]
    pub name: String,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientArgs {
    /// Server address.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Bytes in each request.
    #[arg(long, default_value_t = DEFAULT_SIZE)]
    pub request_size: usize,
    /// Bytes in each response.
    #[arg(long, default_value_t = DEFAULT_SIZE)]
    pub response_size: usize,
    /// Measured round trips, shared among the connections.
    #[arg(long, default_value_t = 20_000)]
    pub round_trips: u64,
    /// Round trips per connection before measuring starts (caches, slow start, page faults).
    #[arg(long, default_value_t = 200)]
    pub warmup: u64,
    /// Concurrent connections, one thread each.
    #[arg(long, default_value_t = 1)]
    pub connections: u32,
    /// Leave Nagle's algorithm on (TCP_NODELAY is set by default).
    #[arg(long)]
    pub no_nodelay: bool,
    /// Keep retrying connect() this long while the server starts.
    #[arg(long, default_value_t = 5000)]
    pub connect_timeout_ms: u64,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Round-trip latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// What one rr run measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    pub target: String,
    pub connections: u32,
    pub request_size: usize,
    pub response_size: usize,
    pub nodelay: bool,
    pub round_trips: u64,
    pub elapsed_s: f64,
    pub round_trips_per_s: f64,
    pub latency_us: Latency,
    /// The percentile curve: `[percentile, microseconds]` at [`CURVE_PERCENTILES`].
    pub curve: Vec<[f64; 2]>,
}

/// Where the percentile curve is sampled (for charts).
pub const CURVE_PERCENTILES: [f64; 14] =
    [0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 98.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0];

impl fmt::Display for RrReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency_us;
        writeln!(
            f,
            "rr {} : {} round trips of {}/{} bytes on {} connection(s), {:.0}/s",
            self.target,
            self.round_trips,
            self.request_size,
            self.response_size,
            self.connections,
            self.round_trips_per_s
        )?;
        write!(
            f,
            "latency us: p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50, l.p90, l.p99, l.p999, l.max
        )
    }
}

// ANCHOR: hello
/// The first 12 bytes of every connection to `rr-server`: what the client wants. One server
/// then serves every benchmark: ping-pong at any size, bulk streams, connection setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hello {
    /// Answer every `request`-byte request with a `response`-byte response, until EOF.
    PingPong { request: u32, response: u32 },
    /// Read until EOF, `read` bytes per read(), then answer the number of bytes read (u64,
    /// little-endian) and close.
    Sink { read: u32 },
    /// Answer the server's name and a newline, then close (which backend did I reach?).
    Name,
}
// ANCHOR_END: hello

const HELLO_LEN: usize = 12;

impl Hello {
    pub fn encode(self) -> [u8; HELLO_LEN] {
        let (mode, a, b) = match self {
            Hello::PingPong { request, response } => (b'p', request, response),
            Hello::Sink { read } => (b's', read, 0),
            Hello::Name => (b'n', 0, 0),
        };
        let mut out = [0u8; HELLO_LEN];
        out[..3].copy_from_slice(b"RR1");
        out[3] = mode;
        out[4..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&b.to_le_bytes());
        out
    }

    pub fn decode(b: &[u8; HELLO_LEN]) -> io::Result<Hello> {
        let word = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
        match (&b[..3], b[3]) {
            (b"RR1", b'p') if word(4) > 0 && word(8) > 0 => {
                Ok(Hello::PingPong { request: word(4), response: word(8) })
            }
            (b"RR1", b's') if word(4) > 0 => Ok(Hello::Sink { read: word(4) }),
            (b"RR1", b'n') => Ok(Hello::Name),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, format!("not an rr hello: {b:?}"))),
        }
    }
}

/// Serves rr clients until killed: each connection gets a thread that does what its hello asks.
pub fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    let name: std::sync::Arc<str> = args.name.as_str().into();
    // The same port over UDP: every datagram is answered with the server's name (which backend
    // did this UDP socket reach?).
    let udp = std::net::UdpSocket::bind(args.listen).with_context(|| format!("bind udp {}", args.listen))?;
    let udp_name = name.clone();
    thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(format!("{udp_name}\n").as_bytes(), from);
        }
    });
    for conn in listener.incoming() {
        let conn = conn.context("accept")?;
        let name = name.clone();
        thread::spawn(move || answer(conn, &name));
    }
    Ok(())
}

fn answer(mut conn: TcpStream, name: &str) -> io::Result<()> {
    conn.set_nodelay(true)?;
    let mut hello = [0u8; HELLO_LEN];
    conn.read_exact(&mut hello)?;
    match Hello::decode(&hello)? {
        Hello::PingPong { request, response } => {
            let mut request = vec![0u8; request as usize];
            let response = vec![b'r'; response as usize];
            loop {
                match conn.read_exact(&mut request) {
                    Ok(()) => conn.write_all(&response)?,
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
        }
        Hello::Sink { read } => {
            let mut buf = vec![0u8; read as usize];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf)? {
                    0 => break,
                    n => total += n as u64,
                }
            }
            conn.write_all(&total.to_le_bytes())
        }
        Hello::Name => conn.write_all(format!("{name}\n").as_bytes()),
    }
}

/// Connects, retrying while the server starts, and sends the hello.
pub fn connect(to: SocketAddr, hello: Hello, nodelay: bool, timeout: Duration) -> anyhow::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        // Within the window each attempt has a deadline too: a SYN dropped on the way (policy)
        // would otherwise be retried by the kernel for minutes.
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = if timeout.is_zero() {
            TcpStream::connect(to)
        } else {
            TcpStream::connect_timeout(&to, left.max(Duration::from_millis(100)))
        };
        match attempt {
            Ok(mut s) => {
                s.set_nodelay(nodelay)?;
                s.write_all(&hello.encode()).with_context(|| format!("hello to {to}"))?;
                return Ok(s);
            }
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).with_context(|| format!("connect {to}")),
        }
    }
}

/// Runs the client and reports the merged histogram of all connections.
pub fn run_client(args: &ClientArgs) -> anyhow::Result<RrReport> {
    if args.connections == 0 || args.round_trips < u64::from(args.connections) {
        bail!("need at least one connection and one round trip per connection");
    }
    let per_conn = args.round_trips / u64::from(args.connections);
    // Connect everything first, so the measured phase is only round trips.
    let conns = (0..args.connections).map(|_| connect_client(args)).collect::<anyhow::Result<Vec<_>>>()?;
    let start = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let a = args.clone();
            thread::spawn(move || ping_pong(conn, &a, per_conn))
        })
        .collect();
    let mut hist = new_histogram();
    for w in workers {
        let h = w.join().map_err(|_| anyhow::anyhow!("rr worker panicked"))??;
        hist.add(&h).context("merge histograms")?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(report(args, &hist, elapsed))
}

fn connect_client(args: &ClientArgs) -> anyhow::Result<TcpStream> {
    let hello =
        Hello::PingPong { request: size32(args.request_size)?, response: size32(args.response_size)? };
    connect(args.connect, hello, !args.no_nodelay, Duration::from_millis(args.connect_timeout_ms))
}

fn size32(n: usize) -> anyhow::Result<u32> {
    match u32::try_from(n) {
        Ok(v) if v > 0 => Ok(v),
        _ => bail!("message size must be 1 .. 4 GiB, got {n}"),
    }
}

// ANCHOR: ping_pong
fn ping_pong(mut conn: TcpStream, args: &ClientArgs, measured: u64) -> anyhow::Result<Histogram<u64>> {
    let request = vec![b'q'; args.request_size];
    let mut response = vec![0u8; args.response_size];
    let mut hist = new_histogram();
    for i in 0..args.warmup + measured {
        let t0 = Instant::now();
        conn.write_all(&request)?;
        conn.read_exact(&mut response)?;
        if i >= args.warmup {
            hist.saturating_record(t0.elapsed().as_nanos() as u64);
        }
    }
    Ok(hist)
}
// ANCHOR_END: ping_pong

pub fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a histogram of nanoseconds, in microseconds.
pub fn latency(h: &Histogram<u64>) -> Latency {
    let us = |ns: u64| ns as f64 / 1000.0;
    Latency {
        min: us(h.min()),
        p50: us(h.value_at_quantile(0.50)),
        p90: us(h.value_at_quantile(0.90)),
        p99: us(h.value_at_quantile(0.99)),
        p999: us(h.value_at_quantile(0.999)),
        max: us(h.max()),
        mean: h.mean() / 1000.0,
    }
}

fn report(args: &ClientArgs, h: &Histogram<u64>, elapsed_s: f64) -> RrReport {
    let us = |ns: u64| ns as f64 / 1000.0;
    RrReport {
        target: args.connect.to_string(),
        connections: args.connections,
        request_size: args.request_size,
        response_size: args.response_size,
        nodelay: !args.no_nodelay,
        round_trips: h.len(),
        elapsed_s,
        round_trips_per_s: h.len() as f64 / elapsed_s.max(f64::EPSILON),
        latency_us: latency(h),
        curve: CURVE_PERCENTILES.iter().map(|p| [*p, us(h.value_at_quantile(p / 100.0))]).collect(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An rr server on a free loopback port.
    pub fn local_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let udp = std::net::UdpSocket::bind(addr).unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(b"test\n", from);
            }
        });
        thread::spawn(move || {
            for c in listener.incoming() {
                thread::spawn(move || answer(c.unwrap(), "test"));
            }
        });
        addr
    }

    #[test]
    fn hello_round_trips_and_garbage_is_refused() {
        for h in
            [Hello::PingPong { request: 64, response: 65536 }, Hello::Sink { read: 131_072 }, Hello::Name]
        {
            assert_eq!(Hello::decode(&h.encode()).unwrap(), h);
        }
        assert!(Hello::decode(b"GET / HTTP/1").is_err());
        assert!(Hello::decode(&Hello::PingPong { request: 0, response: 1 }.encode()).is_err());
    }

    #[test]
    fn loopback_round_trips_are_counted_and_ordered() {
        let addr = local_server();
        let args = ClientArgs {
            connect: addr,
            request_size: 32,
            response_size: 48,
            round_trips: 300,
            warmup: 10,
            connections: 3,
            no_nodelay: false,
            connect_timeout_ms: 1000,
            json: true,
        };
        let r = run_client(&args).unwrap();
        assert_eq!(r.round_trips, 300);
        let l = r.latency_us;
        assert!(l.min > 0.0 && l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
        let back: RrReport = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn refuses_zero_connections() {
        let args = ClientArgs {
            connect: "127.0.0.1:9".parse().unwrap(),
            request_size: 1,
            response_size: 1,
            round_trips: 1,
            warmup: 0,
            connections: 0,
            no_nodelay: false,
            connect_timeout_ms: 0,
            json: false,
        };
        assert!(run_client(&args).is_err());
    }
}
