//! `lb-probe`: which backend does each new connection to a service reach? Connects `connections`
//! times, one after another; each connection asks the `rr-server` it reached for its name and
//! checks what getpeername() says it is connected to (with socket load balancing, the service's
//! address, not the backend's).
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::rr::Hello;

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// The service address.
    #[arg(long)]
    pub connect: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub connections: u32,
    /// UDP instead of TCP: each "connection" is a new unconnected socket that sends two
    /// datagrams with sendto() (the second must reach the same backend) and checks where the
    /// replies say they come from.
    #[arg(long)]
    pub udp: bool,
    /// Give up on a connection not established after this long. A SYN dropped on the way (by
    /// the receiving pod's ingress policy) is retried by the kernel for about two minutes before
    /// connect() fails with ETIMEDOUT; this deadline stands in for it, and is reported the same.
    #[arg(long, default_value_t = 2000)]
    pub connect_timeout_ms: u64,
    /// Instead of `--connections`: connect (every 5 ms) until this many different backends have
    /// answered, or `--within-ms` has passed; `elapsed_ms` says when. How long a new endpoint
    /// takes to become reachable.
    #[arg(long, conflicts_with = "udp")]
    pub until_backends: Option<usize>,
    /// With `--until-backends`: give up after this long [default: 60000].
    #[arg(long, requires = "until_backends")]
    pub within_ms: Option<u64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub target: String,
    /// Backend name -> connections that reached it.
    pub reached: BTreeMap<String, u32>,
    /// Connections whose getpeername() was the address connected to.
    pub peer_is_target: u32,
    /// What getpeername() said otherwise (first few), for the report.
    pub other_peers: Vec<String>,
    /// Failed connections, by error.
    pub errors: BTreeMap<String, u32>,
    /// UDP: sockets whose second datagram reached the same backend as the first.
    pub sticky: u32,
    /// With `--until-backends`: when that many had answered (None: not within the time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<f64>,
    /// The same moment as milliseconds since the Unix epoch (to compare with another process's
    /// clock on the same machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reached_unix_ms: Option<f64>,
}

// ANCHOR: probe
pub fn run(args: &Args) -> anyhow::Result<ProbeReport> {
    let mut r = ProbeReport { target: args.connect.to_string(), ..ProbeReport::default() };
    if args.udp {
        for _ in 0..args.connections {
            if let Err(e) = udp_once(args.connect, &mut r) {
                *r.errors.entry(e.to_string()).or_default() += 1;
            }
        }
        return Ok(r);
    }
    let t0 = std::time::Instant::now();
    let mut made = 0;
    loop {
        match args.until_backends {
            None if made == args.connections => break,
            Some(k) if r.reached.len() >= k => {
                r.elapsed_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                r.reached_unix_ms = now.ok().map(|d| d.as_secs_f64() * 1e3);
                break;
            }
            Some(_) if t0.elapsed() >= Duration::from_millis(args.within_ms.unwrap_or(60_000)) => break,
            Some(_) if made > 0 => std::thread::sleep(Duration::from_millis(5)),
            _ => {}
        }
        made += 1;
        let timeout = Duration::from_millis(args.connect_timeout_ms);
        let conn = match connect(args.connect, timeout) {
            Ok(c) => c,
            Err(e) => {
                *r.errors.entry(e.to_string()).or_default() += 1;
                continue;
            }
        };
        match conn.peer_addr() {
            Ok(p) if p == args.connect => r.peer_is_target += 1,
            Ok(p) if r.other_peers.len() < 5 => r.other_peers.push(p.to_string()),
            _ => {}
        }
        let mut name = String::new();
        BufReader::new(&conn).read_line(&mut name)?;
        *r.reached.entry(name.trim().to_owned()).or_default() += 1;
    }
    Ok(r)
}
// ANCHOR_END: probe

/// One connection that says hello; a connect() still pending after `timeout` fails as the
/// kernel's own SYN retries would have: ETIMEDOUT.
fn connect(to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let conn = TcpStream::connect_timeout(&to, timeout).map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut && e.raw_os_error().is_none() {
            std::io::Error::from_raw_os_error(libc::ETIMEDOUT)
        } else {
            e
        }
    })?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    (&conn).write_all(&Hello::Name.encode())?;
    Ok(conn)
}

/// One unconnected UDP socket, two datagrams: who answers, from which address, the same twice?
fn udp_once(to: SocketAddr, r: &mut ProbeReport) -> std::io::Result<()> {
    let local: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let sock = std::net::UdpSocket::bind(local)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 256];
    let mut ask = || -> std::io::Result<(String, SocketAddr)> {
        sock.send_to(b"name?", to)?;
        let (n, from) = sock.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), from))
    };
    let (first, from) = ask()?;
    let (second, _) = ask()?;
    if from == to {
        r.peer_is_target += 1;
    } else if r.other_peers.len() < 5 {
        r.other_peers.push(from.to_string());
    }
    if first == second {
        r.sticky += 1;
    }
    *r.reached.entry(first).or_default() += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(connect: SocketAddr) -> Args {
        Args {
            connect,
            connections: 1,
            udp: false,
            json: true,
            connect_timeout_ms: 2000,
            until_backends: None,
            within_ms: None,
        }
    }

    #[test]
    fn until_backends_stops_when_enough_answered_or_in_time() {
        let addr = crate::rr::tests::local_server();
        let r = run(&Args { until_backends: Some(1), ..args(addr) }).unwrap();
        assert_eq!(r.reached.values().sum::<u32>(), 1);
        assert!(r.elapsed_ms.is_some_and(|ms| ms < 1000.0), "{r:?}");
        let r = run(&Args { until_backends: Some(2), within_ms: Some(50), ..args(addr) }).unwrap();
        assert_eq!(r.elapsed_ms, None, "one server never makes two backends");
        assert!(r.reached["test"] >= 2, "{r:?}");
    }

    #[test]
    fn counts_who_answered_and_the_peer_seen() {
        let addr = crate::rr::tests::local_server();
        let r = run(&Args { connections: 20, ..args(addr) }).unwrap();
        assert_eq!(r.reached, BTreeMap::from([("test".to_owned(), 20)]));
        assert_eq!(r.peer_is_target, 20);
        assert!(r.errors.is_empty());
        let refused = run(&Args { connections: 2, ..args("127.0.0.1:9".parse().unwrap()) }).unwrap();
        assert_eq!(refused.errors.values().sum::<u32>(), 2, "{refused:?}");
    }

    #[test]
    fn udp_names_the_server_and_its_address() {
        let addr = crate::rr::tests::local_server();
        let r = run(&Args { connections: 5, udp: true, ..args(addr) }).unwrap();
        assert_eq!(r.reached, BTreeMap::from([("test".to_owned(), 5)]), "{r:?}");
        assert_eq!((r.peer_is_target, r.sticky), (5, 5));
    }
}
