//! `conform`: a TCP conformance suite. Each named case drives one pattern of socket use (half
//! close, abortive close, `sendfile`, `MSG_PEEK`, epoll, ...) and writes down what the
//! application saw on both ends - bytes and their checksum, EOF, errno, readiness events - as a
//! transcript of plain lines. The suite itself judges nothing: the scenario engine runs it on
//! several data paths (direct, through the mesh) and requires identical transcripts.
//!
//! Wire protocol: every test connection starts with a 16-byte header from the client (`CNF1`,
//! the case number, a token). The server records its side of the case under the token; the client
//! fetches it afterwards over a control connection (case [`CONTROL`]).
use std::{
    collections::HashMap,
    fmt,
    io::{self, IoSlice, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerArgs {
    /// Address to listen on (`[::]` accepts IPv4 and IPv6).
    #[arg(long, default_value = "[::]:7100")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, clap::Args, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClientArgs {
    /// Server address.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Cases to run, comma-separated (default: all; `--list` names them).
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Print the case names and exit.
    #[arg(long)]
    pub list: bool,
    /// Connections opened one after the other in `short-lived`.
    #[arg(long, default_value_t = 10_000)]
    pub short_lived: u32,
    /// Hold one echo connection open, ping-ponging, until this file exists; then write the
    /// report to `--report` and exit (the engine starts and stops the mesh meanwhile).
    #[arg(long, requires = "report")]
    pub hold_until: Option<PathBuf>,
    /// Where `--hold-until` writes its report (JSON).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What one case looked like from both ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: String,
    pub client: Vec<String>,
    pub server: Vec<String>,
}

/// The suite's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConformReport {
    pub target: String,
    pub cases: Vec<CaseResult>,
}

impl fmt::Display for ConformReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conformance transcripts against {}", self.target)?;
        for c in &self.cases {
            writeln!(f, "{}", c.case)?;
            for l in &c.client {
                writeln!(f, "  client: {l}")?;
            }
            for l in &c.server {
                writeln!(f, "  server: {l}")?;
            }
        }
        Ok(())
    }
}

/// The report of a `--hold-until` connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReport {
    pub round_trips: u64,
    /// Empty when every echo came back intact and the connection closed cleanly.
    pub error: Option<String>,
}

// ANCHOR: cases
/// The cases, in the order they run. Each is a client function and a server function.
pub const CASES: &[&str] = &[
    "write-on-connect",
    "half-close-client",
    "half-close-client-x1000",
    "half-close-server",
    "server-closes-first",
    "abortive-close",
    "write-1",
    "write-1448",
    "write-64k",
    "write-1m",
    "write-16m",
    "writev",
    "sendfile",
    "splice",
    "splice-read",
    "peek",
    "waitall",
    "rcvlowat",
    "rcvlowat-before-connect",
    "rcvtimeo",
    "epoll",
    "fionread",
    "tcp-inq",
    "slow-reader",
    "slow-reader-nonblocking",
    "slow-readers-8",
    "concurrent-100",
    "short-lived",
];
// ANCHOR_END: cases

/// Cases checked by the client alone: their connections (echoes, late readers) keep no
/// transcript on the server.
const BULK: &[&str] = &["half-close-client-x1000", "slow-readers-8", "concurrent-100", "short-lived"];
/// Header case number of a plain echo connection (`--hold-until`).
const ECHO: u32 = 1000;
/// Header case number of a half-closed request: the server reads to EOF, answers the byte count
/// as 8 bytes, closes.
const COUNT_TO_EOF: u32 = 1003;
/// Header case number of a one-shot echo: the server reads `token` bytes, echoes them and
/// closes first (so TIME_WAIT stays on its side and the client's ports stay free).
const ECHO_ONCE: u32 = 1002;
/// Header case number of a control connection: "send me the server's transcript of TOKEN".
const CONTROL: u32 = 1001;
/// Header case number of a slow reader: the server waits [`SLOW_START`] before its first read,
/// reads to EOF, and answers the monotonic time of that first read (8 bytes, ns) and the digest.
const SLOW_COUNT: u32 = 1004;
/// How long a slow reader waits before it reads at all.
const SLOW_START: Duration = Duration::from_secs(1);
/// Bytes a writer sends to a slow reader: more than every buffer on the way can hold (TCP's
/// autotuned send and receive buffers, a few MiB each, three connections deep with sidecars).
const SLOW_BYTES: usize = 64 << 20;
const MAGIC: &[u8; 4] = b"CNF1";
/// How long the control connection waits for the server to finish its side of a case.
const SERVER_DONE_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Recording

/// A failed socket operation, recorded as `error: OP: ERRNO`.
struct Fail(&'static str, io::Error);

type Step<T> = Result<T, Fail>;

trait Op<T> {
    fn op(self, what: &'static str) -> Step<T>;
}

impl<T> Op<T> for io::Result<T> {
    fn op(self, what: &'static str) -> Step<T> {
        self.map_err(|e| Fail(what, e))
    }
}

/// The symbolic errno of an error (`ECONNRESET`), or its text when it has none.
pub fn errno_name(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let name = match code {
        libc::EAGAIN => "EAGAIN",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::ENOTCONN => "ENOTCONN",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::EINVAL => "EINVAL",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::ENOMEM => "ENOMEM",
        libc::ENOBUFS => "ENOBUFS",
        _ => return format!("errno {code}"),
    };
    name.to_owned()
}

/// Runs one side of a case, turning a failed operation into the transcript's last line.
fn record(f: impl FnOnce(&mut Vec<String>) -> Step<()>) -> Vec<String> {
    let mut lines = Vec::new();
    if let Err(Fail(op, e)) = f(&mut lines) {
        lines.push(format!("error: {op}: {}", errno_name(&e)));
    }
    lines
}

/// FNV-1a, 64 bits: order-sensitive, so reordered bytes change it.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// `len` bytes of a pattern that never repeats with a short period (a counter mixed by `seed`).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn digest(data: &[u8]) -> String {
    let mut f = Fnv::new();
    f.update(data);
    format!("{} bytes fnv {:016x}", data.len(), f.0)
}

/// Reads until EOF: `N bytes fnv X, eof`.
fn read_to_eof(s: &mut TcpStream) -> Step<String> {
    let mut f = Fnv::new();
    let mut n = 0usize;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let got = s.read(&mut buf).op("read")?;
        if got == 0 {
            return Ok(format!("{n} bytes fnv {:016x}, eof", f.0));
        }
        f.update(&buf[..got]);
        n += got;
    }
}

/// `first` and then the rest of the stream to EOF, as one digest: how the bytes were split
/// among reads does not show.
fn read_rest(s: &mut TcpStream, first: &[u8]) -> Step<String> {
    let mut all = first.to_vec();
    s.read_to_end(&mut all).op("read")?;
    Ok(format!("{}, eof", digest(&all)))
}

fn read_exactly(s: &mut TcpStream, len: usize) -> Step<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match s.read(&mut buf[at..]).op("read")? {
            0 => return Err(Fail("read", io::Error::new(io::ErrorKind::UnexpectedEof, "eof too early"))),
            n => at += n,
        }
    }
    Ok(buf)
}

fn setsockopt<T>(fd: RawFd, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: value points to a live T of the size we pass.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref::<T>(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}

/// A TCP connection whose socket `before` may configure before connect().
fn connect_with(addr: SocketAddr, before: impl FnOnce(RawFd) -> io::Result<()>) -> io::Result<TcpStream> {
    let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket() returns a new fd or -1; the fd is owned by the TcpStream from here on.
    let s = unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        TcpStream::from_raw_fd(fd)
    };
    before(s.as_raw_fd())?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of length len for this family.
    if unsafe { libc::connect(s.as_raw_fd(), (&raw const storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; the arms write a sockaddr of their family
    // into it, which it is large and aligned enough to hold.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin = (&raw mut storage).cast::<libc::sockaddr_in>();
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_port = a.port().to_be();
                (*sin).sin_addr = libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) };
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 = (&raw mut storage).cast::<libc::sockaddr_in6>();
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_port = a.port().to_be();
                (*sin6).sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
                size_of::<libc::sockaddr_in6>()
            }
        };
        (storage, len as libc::socklen_t)
    }
}

/// CLOCK_MONOTONIC in ns: one clock for every process on the kernel, pods included.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// poll(2) for `events` on one socket; `Ok(false)` when `timeout` ran out.
fn poll_for(s: &TcpStream, events: i16, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd { fd: s.as_raw_fd(), events, revents: 0 };
    // SAFETY: p is a live pollfd; one entry.
    let n = unsafe { libc::poll(&raw mut p, 1, timeout.as_millis() as i32) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n > 0) }
}

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r as usize) }
}

fn recv(s: &TcpStream, buf: &mut [u8], flags: i32) -> io::Result<usize> {
    // SAFETY: buf is a live, writable buffer of the given length.
    cvt(unsafe { libc::recv(s.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) })
}

fn send(s: &TcpStream, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: buf is a live buffer of the given length.
    cvt(unsafe { libc::send(s.as_raw_fd(), buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
}

/// splice(2) of up to `len` bytes from `from` to `to` (one of them a pipe), at their current
/// positions.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: the caller's fds are open; null offsets are allowed for pipes and sockets.
    cvt(unsafe {
        libc::splice(from, std::ptr::null_mut(), to, std::ptr::null_mut(), len, libc::SPLICE_F_MOVE)
    })
}

fn pipe() -> io::Result<(OwnedFd, std::fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a live array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) })
}

mod client;
mod server;

pub use client::{hold, run_client};
pub use server::serve;

#[cfg(test)]
mod tests {
    use super::{server::*, *};

    fn run(cases: &[&str]) -> ConformReport {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = Arc::new(Transcripts::default());
        thread::spawn(move || {
            for c in l.incoming() {
                let t = Arc::clone(&t);
                thread::spawn(move || serve_one(c.unwrap(), &t));
            }
        });
        let args = ClientArgs {
            connect: addr,
            cases: cases.iter().map(|c| (*c).to_owned()).collect(),
            list: false,
            short_lived: 50,
            hold_until: None,
            report: None,
            json: true,
        };
        run_client(&args).unwrap()
    }

    #[test]
    fn every_case_runs_clean_on_plain_loopback() {
        let r = run(CASES);
        assert_eq!(r.cases.len(), CASES.len());
        for c in &r.cases {
            let all = c.client.iter().chain(&c.server).cloned().collect::<Vec<_>>().join("\n");
            assert!(!all.contains("error:") && !all.contains("did not finish"), "{}:\n{all}", c.case);
        }
        let half = &r.cases[1];
        assert_eq!(half.client[1], format!("received {}, eof", digest(&pattern(6, 5000))));
        assert_eq!(half.server[0], format!("received {}, eof", digest(&pattern(1, 10_000))));
        let abort = r.cases.iter().find(|c| c.case == "abortive-close").unwrap();
        assert_eq!(abort.client, ["read: ECONNRESET"]);
    }

    #[test]
    fn the_checksum_sees_reordering() {
        let (a, b) = (pattern(1, 10), pattern(2, 10));
        let ab = [a.clone(), b.clone()].concat();
        let ba = [b, a].concat();
        assert_ne!(digest(&ab), digest(&ba));
    }

    #[test]
    fn unknown_cases_are_refused() {
        let args = ClientArgs {
            connect: "127.0.0.1:1".parse().unwrap(),
            cases: vec!["nope".into()],
            list: false,
            short_lived: 1,
            hold_until: None,
            report: None,
            json: false,
        };
        let e = run_client(&args).unwrap_err().to_string();
        assert!(e.contains("unknown case \"nope\""), "{e}");
    }
}
