//! `loopback-isolation`: the same loopback 4-tuple in several pods at once. One thread per pod
//! joins the pod's network namespace, listens on `127.0.0.1:PORT`, connects to it from
//! `127.0.0.1:SOURCE_PORT` and ping-pongs messages tagged with the pod's number. A byte that
//! arrives carrying another pod's tag crossed from one pod's socket into another's.
use std::{
    fs::File,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Args {
    /// Network namespaces (paths, such as /run/netns/NAME), one per pod.
    #[arg(long, value_delimiter = ',', required = true)]
    pub netns: Vec<PathBuf>,
    /// Port each pod listens on at 127.0.0.1.
    #[arg(long, default_value_t = 7300)]
    pub port: u16,
    /// Source port every pod's client binds (so the 4-tuples are identical). Below the
    /// ephemeral range (32768-60999): a port the steps before chose for a connection of their
    /// own (a proxy's, say, still closing) could refuse the bind.
    #[arg(long, default_value_t = 30300)]
    pub source_port: u16,
    /// Round trips per pod.
    #[arg(long, default_value_t = 2000)]
    pub round_trips: u32,
}

/// What one pod's connection saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodResult {
    pub netns: String,
    /// Bytes received by both ends.
    pub bytes: u64,
    /// Received bytes carrying another pod's tag.
    pub foreign_bytes: u64,
    /// Blocking reads that returned EAGAIN before their timeout (woken with no data: the
    /// kernel's `tcp-bpf-eagain`, see the conformance suite) and were simply read again.
    #[serde(default)]
    pub early_eagain: u32,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub pods: Vec<PodResult>,
}

const MSG: usize = 64;

/// Runs every pod's connection at the same time.
pub fn run(args: &Args) -> anyhow::Result<Report> {
    if args.netns.len() < 2 {
        bail!("name at least two network namespaces");
    }
    // All connections exist before any traffic flows, so the 4-tuples really coexist.
    let barrier = Arc::new(Barrier::new(args.netns.len()));
    let workers: Vec<_> = args
        .netns
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let (ns, args, barrier) = (ns.clone(), args.clone(), Arc::clone(&barrier));
            thread::spawn(move || pod(i as u8 + 1, &ns, &args, &barrier))
        })
        .collect();
    let mut pods = Vec::new();
    for (w, ns) in workers.into_iter().zip(&args.netns) {
        let (bytes, foreign_bytes, early_eagain, error) = match w.join() {
            Ok(Ok((b, f, e))) => (b, f, e, None),
            Ok(Err(e)) => (0, 0, 0, Some(format!("{e:#}"))),
            Err(_) => (0, 0, 0, Some("thread panicked".into())),
        };
        pods.push(PodResult { netns: ns.display().to_string(), bytes, foreign_bytes, early_eagain, error });
    }
    Ok(Report { pods })
}

fn pod(tag: u8, ns: &PathBuf, args: &Args, barrier: &Barrier) -> anyhow::Result<(u64, u64, u32)> {
    let f = File::open(ns).with_context(|| format!("open {}", ns.display()))?;
    // SAFETY: setns on this thread only (network namespaces are per thread).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).context("setns");
    }
    let lo = Ipv4Addr::LOCALHOST;
    let setup = (|| -> anyhow::Result<(TcpStream, TcpStream)> {
        let listener = TcpListener::bind(SocketAddrV4::new(lo, args.port)).context("bind listener")?;
        let client = connect_from(SocketAddrV4::new(lo, args.source_port), SocketAddrV4::new(lo, args.port))?;
        let (server, _) = listener.accept().context("accept")?;
        for s in [&client, &server] {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(READ_TIMEOUT))?;
        }
        Ok((client, server))
    })();
    // Every pod arrives here, its setup failed or not: one failure must not leave the others
    // waiting for it for ever.
    barrier.wait();
    let (mut client, mut server) = setup?;
    let (mut bytes, mut foreign, mut early) = (0u64, 0u64, 0u32);
    let mut buf = [0u8; MSG];
    let count = |buf: &[u8], bytes: &mut u64, foreign: &mut u64| {
        *bytes += buf.len() as u64;
        *foreign += buf.iter().filter(|b| **b != tag).count() as u64;
    };
    let deadline = Instant::now() + Duration::from_mins(1);
    for _ in 0..args.round_trips {
        client.write_all(&[tag; MSG]).context("client write")?;
        early += read_full(&mut server, &mut buf).context("server read")?;
        count(&buf, &mut bytes, &mut foreign);
        server.write_all(&[tag; MSG]).context("server write")?;
        early += read_full(&mut client, &mut buf).context("client read")?;
        count(&buf, &mut bytes, &mut foreign);
        if Instant::now() > deadline {
            bail!("too slow");
        }
    }
    Ok((bytes, foreign, early))
}

/// How long a read may wait for its bytes.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads exactly `buf.len()` bytes. A read that returns EAGAIN well before its timeout was woken
/// with no data (sockets in the sockhash can be, on every pinned kernel: the conformance
/// suite's `tcp-bpf-eagain`); this step tests isolation, not that, so it reads again and counts
/// it. Returns how many times that happened.
fn read_full(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<u32> {
    let (mut got, mut early) = (0, 0);
    let mut since = Instant::now();
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                got += n;
                since = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && since.elapsed() < READ_TIMEOUT / 2 => {
                early += 1
            }
            Err(e) => return Err(e),
        }
    }
    Ok(early)
}

/// A TCP connection from a fixed source address (SO_REUSEADDR, so a pod's previous run in
/// TIME_WAIT does not block it).
fn connect_from(src: SocketAddrV4, dst: SocketAddrV4) -> anyhow::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr structs are live.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error()).context("socket");
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, (&raw const one).cast(), 4);
        let sa = |a: SocketAddrV4| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
            sin_zero: [0; 8],
        };
        let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let s = sa(src);
        if libc::bind(fd, (&raw const s).cast(), len) != 0 {
            return Err(io::Error::last_os_error()).context(format!("bind {src}"));
        }
        let d = sa(dst);
        if libc::connect(fd, (&raw const d).cast(), len) != 0 {
            return Err(io::Error::last_os_error()).context(format!("connect {dst}"));
        }
        Ok(stream)
    }
}
