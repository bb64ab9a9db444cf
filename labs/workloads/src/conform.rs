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

#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address to listen on (`[::]` accepts IPv4 and IPv6).
    #[arg(long, default_value = "[::]:7100")]
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, clap::Args)]
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
    "concurrent-100",
    "short-lived",
];
// ANCHOR_END: cases

/// Cases made of plain echo connections, checked by the client alone.
const BULK: &[&str] = &["half-close-client-x1000", "concurrent-100", "short-lived"];
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
        libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
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

// ---------------------------------------------------------------------------------------------
// Client

/// Runs the cases and collects both ends' transcripts.
pub fn run_client(args: &ClientArgs) -> anyhow::Result<ConformReport> {
    let names: Vec<&str> = if args.cases.is_empty() {
        CASES.to_vec()
    } else {
        for c in &args.cases {
            if !CASES.contains(&c.as_str()) {
                bail!("unknown case {c:?} (cases: {})", CASES.join(", "));
            }
        }
        args.cases.iter().map(String::as_str).collect()
    };
    wait_for_server(args.connect)?;
    let mut cases = Vec::new();
    for (token, name) in names.into_iter().enumerate() {
        let token = (u64::from(std::process::id()) << 32) | token as u64;
        let number = CASES.iter().position(|c| *c == name).expect("checked") as u32;
        let client = run_case(name, args, number, token);
        // The bulk cases use plain echo connections: their server side keeps no transcript.
        let server = if BULK.contains(&name) {
            Vec::new()
        } else {
            fetch_server(args.connect, token).unwrap_or_else(|e| vec![format!("no transcript: {e}")])
        };
        cases.push(CaseResult { case: name.to_owned(), client, server });
    }
    Ok(ConformReport { target: args.connect.to_string(), cases })
}

fn wait_for_server(addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(addr) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e).context(format!("connect {addr}")),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A connection with its header already written (in its own write, unless `with` adds bytes).
fn open(addr: SocketAddr, case: u32, token: u64, with: &[u8]) -> Step<TcpStream> {
    let mut s = TcpStream::connect(addr).op("connect")?;
    s.set_nodelay(true).op("setsockopt")?;
    let mut msg = header(case, token).to_vec();
    msg.extend_from_slice(with);
    s.write_all(&msg).op("write")?;
    Ok(s)
}

fn header(case: u32, token: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..4].copy_from_slice(MAGIC);
    h[4..8].copy_from_slice(&case.to_le_bytes());
    h[8..].copy_from_slice(&token.to_le_bytes());
    h
}

fn fetch_server(addr: SocketAddr, token: u64) -> anyhow::Result<Vec<String>> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(&header(CONTROL, token))?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(serde_json::from_str(&text)?)
}

fn run_case(name: &str, args: &ClientArgs, case: u32, token: u64) -> Vec<String> {
    let addr = args.connect;
    record(|out| {
        match name {
            // ANCHOR: client_write_on_connect
            "write-on-connect" => {
                // The header and 64 more writes go out the moment connect() returns, while
                // the server has not even accepted: bytes may take TCP before the server's
                // socket is in the sockhash and the redirect after it.
                let mut s = open(addr, case, token, &[])?;
                let mut all = Vec::new();
                for i in 0..64 {
                    let chunk = pattern(i, 100);
                    s.write_all(&chunk).op("write")?;
                    all.extend_from_slice(&chunk);
                }
                out.push(format!("sent {}", digest(&all)));
                let reply = read_exactly(&mut s, 8)?;
                out.push(format!("server counted {}", u64::from_le_bytes(reply.try_into().expect("8"))));
                out.push(format!("then {}", read_to_eof(&mut s)?));
            }
            // ANCHOR_END: client_write_on_connect
            // ANCHOR: client_half_close
            "half-close-client" => {
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(1, 10_000);
                s.write_all(&data).op("write")?;
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("sent {}, shutdown(SHUT_WR)", digest(&data)));
                // A blocking read after our own FIN: must wait for the reply, then see EOF.
                out.push(format!("received {}", read_to_eof(&mut s)?));
            }
            // ANCHOR_END: client_half_close
            "half-close-client-x1000" => {
                // The pattern above, a thousand times: the kernel bug it can hit is a race.
                let once = |i: u64| -> Step<()> {
                    let data = pattern(i, 100);
                    let mut s = open(addr, COUNT_TO_EOF, 0, &data)?;
                    s.shutdown(Shutdown::Write).op("shutdown")?;
                    let mut reply = Vec::new();
                    s.read_to_end(&mut reply).op("read")?;
                    if reply != 100u64.to_le_bytes() {
                        return Err(Fail("read", io::Error::other("wrong reply")));
                    }
                    Ok(())
                };
                out.extend(tally((0..1000).map(once), "of 1000 half-closed requests"));
            }
            "half-close-server" => {
                let mut s = open(addr, case, token, &[])?;
                out.push(format!("received {}", read_to_eof(&mut s)?));
                let data = pattern(2, 3000);
                s.write_all(&data).op("write")?;
                out.push(format!("sent {} after EOF", digest(&data)));
            }
            "server-closes-first" => {
                let mut s = open(addr, case, token, &[])?;
                out.push(format!("received {}", read_to_eof(&mut s)?));
                thread::sleep(Duration::from_millis(50));
                // The peer is gone: the first write is accepted locally, the peer answers RST,
                // the next write fails.
                out.push(format!("write after eof: {} bytes", send(&s, b"late").op("send")?));
                thread::sleep(Duration::from_millis(200));
                match send(&s, b"later") {
                    Ok(n) => out.push(format!("second write: {n} bytes")),
                    Err(e) => out.push(format!("second write: {}", errno_name(&e))),
                }
            }
            "abortive-close" => {
                let mut s = open(addr, case, token, &[])?;
                let mut buf = [0u8; 16];
                match s.read(&mut buf) {
                    Ok(n) => out.push(format!("read returned {n}")),
                    Err(e) => out.push(format!("read: {}", errno_name(&e))),
                }
            }
            "write-1" | "write-1448" | "write-64k" | "write-1m" | "write-16m" => {
                let len = match name {
                    "write-1" => 1,
                    "write-1448" => 1448,
                    "write-64k" => 64 * 1024,
                    "write-1m" => 1 << 20,
                    _ => 16 << 20,
                };
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(len as u64, len);
                out.push(format!("sent {} in one write_all", digest(&data)));
                // Write from another thread while this one reads the echo: with 16 MiB both
                // directions must drain at once.
                let mut w = s.try_clone().op("dup")?;
                let writer = thread::spawn(move || w.write_all(&data).map(|()| w));
                let echo = read_exactly(&mut s, len)?;
                let _w = writer.join().expect("writer thread").op("write")?;
                out.push(format!("echo {}", digest(&echo)));
            }
            "writev" => {
                let mut s = open(addr, case, token, &[])?;
                let parts: Vec<Vec<u8>> = [1usize, 100, 4096, 70_000, 3]
                    .iter()
                    .enumerate()
                    .map(|(i, l)| pattern(i as u64, *l))
                    .collect();
                let all: Vec<u8> = parts.concat();
                let mut slices: Vec<IoSlice> = parts.iter().map(|p| IoSlice::new(p)).collect();
                let mut rest = &mut slices[..];
                while !rest.is_empty() {
                    let n = s.write_vectored(rest).op("writev")?;
                    IoSlice::advance_slices(&mut rest, n);
                }
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("writev {}", digest(&all)));
                out.push(format!("server counted {}", read_to_eof(&mut s)?));
            }
            "sendfile" => {
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(3, 300_000);
                let file = memfd_with(&data).op("memfd")?;
                let mut off: libc::off_t = 0;
                while (off as usize) < data.len() {
                    // SAFETY: both fds are open; off is a live off_t.
                    let n = unsafe {
                        libc::sendfile(s.as_raw_fd(), file.as_raw_fd(), &mut off, data.len() - off as usize)
                    };
                    cvt(n).op("sendfile")?;
                }
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("sendfile {}", digest(&data)));
                out.push(format!("server counted {}", read_to_eof(&mut s)?));
            }
            "splice" => {
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(4, 200_000);
                let (r, mut w) = pipe().op("pipe")?;
                let feed = data.clone();
                let feeder = thread::spawn(move || w.write_all(&feed));
                let mut moved = 0;
                while moved < data.len() {
                    match splice(r.as_raw_fd(), s.as_raw_fd(), data.len() - moved).op("splice")? {
                        0 => break,
                        n => moved += n,
                    }
                }
                feeder.join().expect("feeder").op("write pipe")?;
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("splice {} of {}", moved, digest(&data)));
                out.push(format!("server counted {}", read_to_eof(&mut s)?));
            }
            "splice-read" => {
                // The server reads with splice(2) (a proxy or a file server moving bytes through
                // a pipe without copying them to user space).
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(12, 100_000);
                s.write_all(&data).op("write")?;
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("sent {}", digest(&data)));
                out.push(format!("server spliced {}", read_to_eof(&mut s)?));
            }
            "peek" => {
                let s = open(addr, case, token, &[])?;
                let mut buf = [0u8; 64];
                let n = recv(&s, &mut buf[..5], libc::MSG_PEEK | libc::MSG_WAITALL).op("recv(MSG_PEEK)")?;
                out.push(format!("peek {:?}", String::from_utf8_lossy(&buf[..n])));
                let mut got = Vec::new();
                while got.len() < 12 {
                    let n = recv(&s, &mut buf, 0).op("recv")?;
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                out.push(format!("read {:?}", String::from_utf8_lossy(&got)));
            }
            "waitall" => {
                let mut s = open(addr, case, token, &[])?;
                let mut buf = vec![0u8; 10_000];
                let n = recv(&s, &mut buf, libc::MSG_WAITALL).op("recv(MSG_WAITALL)")?;
                out.push(format!("recv(10000, MSG_WAITALL) returned {n}"));
                out.push(format!("in all {}", read_rest(&mut s, &buf[..n])?));
            }
            "rcvlowat" | "rcvlowat-before-connect" => {
                // The option is set before the first byte: after connect() (the usual place),
                // or on the socket before connect().
                let set = |fd: RawFd| setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, &4000i32);
                let mut s = if name == "rcvlowat" {
                    let s = TcpStream::connect(addr).op("connect")?;
                    set(s.as_raw_fd()).op("setsockopt")?;
                    s
                } else {
                    connect_with(addr, set).op("connect")?
                };
                s.set_nodelay(true).op("setsockopt")?;
                s.write_all(&header(case, token)).op("write")?;
                let mut buf = vec![0u8; 8192];
                let n = recv(&s, &mut buf, 0).op("recv")?;
                // How much above 4000 the first read returns depends on timing; only the low
                // mark is the kernel's promise.
                out.push(format!("SO_RCVLOWAT 4000: first read >= 4000: {}", n >= 4000));
                out.push(format!("in all {}", read_rest(&mut s, &buf[..n])?));
            }
            "rcvtimeo" => {
                let mut s = open(addr, case, token, &[])?;
                s.set_read_timeout(Some(Duration::from_millis(200))).op("setsockopt")?;
                let t = Instant::now();
                let mut buf = [0u8; 64];
                match recv(&s, &mut buf, 0) {
                    Ok(n) => out.push(format!("recv with nothing sent returned {n}")),
                    Err(e) => out.push(format!(
                        "recv with nothing sent: {} after >= 150 ms: {}",
                        errno_name(&e),
                        t.elapsed() >= Duration::from_millis(150)
                    )),
                }
                s.write_all(b"go").op("write")?;
                let reply = read_exactly(&mut s, 10)?;
                out.push(format!("then {}", digest(&reply)));
            }
            "epoll" => epoll_case(addr, case, token, out)?,
            "concurrent-100" => {
                let workers: Vec<_> =
                    (0..100u64).map(|i| thread::spawn(move || echo_once(addr, 1000, i))).collect();
                let results = workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|_| Err(Fail("thread", io::Error::other("panicked")))));
                out.extend(tally(results, "of 100 concurrent connections"));
            }
            "short-lived" => {
                let results = (0..u64::from(args.short_lived)).map(|i| echo_once(addr, 16, i));
                out.extend(tally(results, &format!("of {} short-lived connections", args.short_lived)));
            }
            other => unreachable!("case {other} is listed but not implemented"),
        }
        Ok(())
    })
}

/// One echo connection: write `len` bytes, read them back, check them, then read the server's
/// EOF (it closes first).
fn echo_once(addr: SocketAddr, len: usize, seed: u64) -> Step<()> {
    let data = pattern(seed, len);
    let mut s = open(addr, ECHO_ONCE, len as u64, &data)?;
    let back = read_exactly(&mut s, len)?;
    if back != data {
        return Err(Fail("read", io::Error::other("echo differs")));
    }
    let mut rest = [0u8; 1];
    match s.read(&mut rest).op("read")? {
        0 => Ok(()),
        _ => Err(Fail("read", io::Error::other("bytes after the echo"))),
    }
}

/// `N intact of ...`, then one line per distinct failure with its count.
fn tally(results: impl Iterator<Item = Step<()>>, what: &str) -> Vec<String> {
    let mut ok = 0;
    let mut failures: std::collections::BTreeMap<String, u32> = Default::default();
    for r in results {
        match r {
            Ok(()) => ok += 1,
            Err(Fail(op, e)) => *failures.entry(format!("{op}: {}", errno_name(&e))).or_default() += 1,
        }
    }
    let mut lines = vec![format!("{ok} {what} echoed intact")];
    lines.extend(failures.into_iter().map(|(f, n)| format!("{n} failed with {f}")));
    lines
}

fn epoll_case(addr: SocketAddr, case: u32, token: u64, out: &mut Vec<String>) -> Step<()> {
    let s = TcpStream::connect(addr).op("connect")?;
    s.set_nonblocking(true).op("fcntl")?;
    // SAFETY: epoll_create1 returns a new fd or -1.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(Fail("epoll_create1", io::Error::last_os_error()));
    }
    // SAFETY: ep is a fresh fd we own.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    let mut ev =
        libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP) as u32, u64: 0 };
    // SAFETY: both fds are open; ev is live.
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) } != 0 {
        return Err(Fail("epoll_ctl", io::Error::last_os_error()));
    }
    let wait = |want: u32| -> Step<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
            // SAFETY: evs is a live array of 4 events.
            let n = unsafe { libc::epoll_wait(ep.as_raw_fd(), evs.as_mut_ptr(), 4, 1000) };
            if n < 0 {
                return Err(Fail("epoll_wait", io::Error::last_os_error()));
            }
            if n > 0 && evs[0].events & want != 0 {
                return Ok(evs[0].events);
            }
            if Instant::now() > deadline {
                return Err(Fail("epoll_wait", io::Error::from_raw_os_error(libc::ETIMEDOUT)));
            }
        }
    };
    let mask = |m: u32| {
        let names = [
            (libc::EPOLLIN, "IN"),
            (libc::EPOLLOUT, "OUT"),
            (libc::EPOLLRDHUP, "RDHUP"),
            (libc::EPOLLHUP, "HUP"),
            (libc::EPOLLERR, "ERR"),
        ];
        names.iter().filter(|(b, _)| m & *b as u32 != 0).map(|(_, n)| *n).collect::<Vec<_>>().join("|")
    };
    wait(libc::EPOLLOUT as u32)?;
    out.push("writable after connect".into());
    let mut msg = header(case, token).to_vec();
    let data = pattern(5, 100);
    msg.extend_from_slice(&data);
    let n = send(&s, &msg).op("send")?;
    out.push(format!("sent {n} bytes without blocking"));
    // Level-triggered: gather the echo, then wait for the server's FIN to show as RDHUP.
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let rdhup = loop {
        let m = wait((libc::EPOLLIN | libc::EPOLLRDHUP) as u32)?;
        if m & libc::EPOLLRDHUP as u32 != 0 && got.len() >= data.len() {
            break m;
        }
        loop {
            match recv(&s, &mut buf, 0) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Fail("recv", e)),
            }
        }
    };
    out.push(format!("echo {}", digest(&got)));
    out.push(format!("after the peer's FIN: {}", mask(rdhup)));
    out.push(format!("recv then returns {}", recv(&s, &mut buf, 0).op("recv")?));
    Ok(())
}

fn memfd_with(data: &[u8]) -> io::Result<std::fs::File> {
    // SAFETY: a static C string; memfd_create returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"conform".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh fd we own.
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data)?;
    Ok(f)
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

/// `--hold-until`: one echo connection kept busy until `until` exists.
pub fn hold(args: &ClientArgs) -> anyhow::Result<HoldReport> {
    let until = args.hold_until.as_ref().context("--hold-until")?;
    wait_for_server(args.connect)?;
    let mut round_trips = 0u64;
    let result = (|| -> Step<()> {
        let mut s = open(args.connect, ECHO, 0, &[])?;
        while !until.exists() {
            let data = pattern(round_trips, 100);
            s.write_all(&data).op("write")?;
            if read_exactly(&mut s, 100)? != data {
                return Err(Fail("read", io::Error::other("echo differs")));
            }
            round_trips += 1;
            thread::sleep(Duration::from_millis(2));
        }
        s.shutdown(Shutdown::Write).op("shutdown")?;
        match read_to_eof(&mut s)?.as_str() {
            "0 bytes fnv cbf29ce484222325, eof" => Ok(()),
            other => Err(Fail("read", io::Error::other(format!("unexpected tail: {other}")))),
        }
    })();
    let error = result.err().map(|Fail(op, e)| format!("{op}: {}", errno_name(&e)));
    Ok(HoldReport { round_trips, error })
}

// ---------------------------------------------------------------------------------------------
// Server

#[derive(Default)]
struct Transcripts {
    done: Mutex<HashMap<u64, Vec<String>>>,
    cv: Condvar,
}

/// Accepts connections forever, one thread each.
pub fn serve(args: &ServerArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    let transcripts = Arc::new(Transcripts::default());
    for conn in listener.incoming() {
        let conn = conn.context("accept")?;
        let t = Arc::clone(&transcripts);
        thread::spawn(move || serve_one(conn, &t));
    }
    Ok(())
}

fn serve_one(mut s: TcpStream, t: &Transcripts) {
    let _ = s.set_nodelay(true);
    let mut h = [0u8; 16];
    if s.read_exact(&mut h).is_err() || &h[..4] != MAGIC {
        return;
    }
    let case = u32::from_le_bytes(h[4..8].try_into().expect("4"));
    let token = u64::from_le_bytes(h[8..].try_into().expect("8"));
    match case {
        ECHO => {
            let _ = echo_until_eof(&mut s);
        }
        COUNT_TO_EOF => {
            let mut n = 0u64;
            let mut buf = [0u8; 4096];
            while let Ok(got @ 1..) = s.read(&mut buf) {
                n += got as u64;
            }
            let _ = s.write_all(&n.to_le_bytes());
        }
        ECHO_ONCE => {
            let mut buf = vec![0u8; (token as usize).min(16 << 20)];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
        CONTROL => {
            let mut done = t.done.lock().expect("lock");
            let deadline = Instant::now() + SERVER_DONE_TIMEOUT;
            while !done.contains_key(&token) && Instant::now() < deadline {
                done = t.cv.wait_timeout(done, Duration::from_millis(100)).expect("lock").0;
            }
            let lines = done.remove(&token).unwrap_or_else(|| vec!["server side did not finish".into()]);
            drop(done);
            let _ = s.write_all(serde_json::to_string(&lines).expect("strings").as_bytes());
        }
        n => {
            let name = CASES.get(n as usize).copied().unwrap_or("?");
            let lines = record(|out| serve_case(name, s, out));
            t.done.lock().expect("lock").insert(token, lines);
            t.cv.notify_all();
        }
    }
}

/// Echoes until EOF, then closes (first: the client waits for our FIN).
fn echo_until_eof(s: &mut TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            n => s.write_all(&buf[..n])?,
        }
    }
}

fn serve_case(name: &str, mut s: TcpStream, out: &mut Vec<String>) -> Step<()> {
    match name {
        "write-on-connect" => {
            thread::sleep(Duration::from_millis(20));
            let data = read_exactly(&mut s, 6400)?;
            out.push(format!("received {}", digest(&data)));
            s.write_all(&(data.len() as u64).to_le_bytes()).op("write")?;
        }
        "half-close-client" => {
            out.push(format!("received {}", read_to_eof(&mut s)?));
            let data = pattern(6, 5000);
            s.write_all(&data).op("write")?;
            out.push(format!("sent {}", digest(&data)));
        }
        "half-close-server" => {
            let data = pattern(7, 5000);
            s.write_all(&data).op("write")?;
            s.shutdown(Shutdown::Write).op("shutdown")?;
            out.push(format!("sent {}, shutdown(SHUT_WR)", digest(&data)));
            out.push(format!("received {}", read_to_eof(&mut s)?));
        }
        "server-closes-first" => {
            let data = pattern(8, 1000);
            s.write_all(&data).op("write")?;
            out.push(format!("sent {}, close()", digest(&data)));
        }
        "abortive-close" => {
            setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &libc::linger { l_onoff: 1, l_linger: 0 },
            )
            .op("setsockopt")?;
            thread::sleep(Duration::from_millis(50));
            out.push("close() with SO_LINGER 0".into());
        }
        "write-1" | "write-1448" | "write-64k" | "write-1m" | "write-16m" => {
            let mut f = Fnv::new();
            let mut n = 0;
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let got = s.read(&mut buf).op("read")?;
                if got == 0 {
                    break;
                }
                f.update(&buf[..got]);
                n += got;
                s.write_all(&buf[..got]).op("write")?;
            }
            out.push(format!("echoed {n} bytes fnv {:016x}, then eof", f.0));
        }
        "writev" | "sendfile" | "splice" => {
            let got = read_to_eof(&mut s)?;
            out.push(format!("received {got}"));
            s.write_all(got.as_bytes()).op("write")?;
        }
        "splice-read" => {
            // splice() honours SO_RCVTIMEO: a reader that waits for bytes which never reach TCP's
            // receive queue gives up with EAGAIN instead of hanging the suite.
            s.set_read_timeout(Some(Duration::from_secs(3))).op("setsockopt")?;
            let (r, w) = pipe().op("pipe")?;
            let mut r = std::fs::File::from(r);
            let (mut f, mut n) = (Fnv::new(), 0usize);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let moved = splice(s.as_raw_fd(), w.as_raw_fd(), buf.len()).op("splice")?;
                if moved == 0 {
                    break;
                }
                r.read_exact(&mut buf[..moved]).op("read pipe")?;
                f.update(&buf[..moved]);
                n += moved;
            }
            let got = format!("{n} bytes fnv {:016x}, eof", f.0);
            out.push(format!("spliced {got}"));
            s.write_all(got.as_bytes()).op("write")?;
        }
        "peek" => s.write_all(b"hello, world").op("write")?,
        "waitall" | "rcvlowat" | "rcvlowat-before-connect" => {
            let n = if name == "waitall" { 1000 } else { 500 };
            for i in 0..10 {
                s.write_all(&pattern(i, n)).op("write")?;
                thread::sleep(Duration::from_millis(5));
            }
            out.push(format!("sent 10 writes of {n} bytes, 5 ms apart"));
        }
        "rcvtimeo" => {
            let go = read_exactly(&mut s, 2)?;
            out.push(format!("received {:?}", String::from_utf8_lossy(&go)));
            s.write_all(&pattern(9, 10)).op("write")?;
        }
        "epoll" => {
            let data = read_exactly(&mut s, 100)?;
            s.write_all(&data).op("write")?;
            s.shutdown(Shutdown::Write).op("shutdown")?;
            out.push(format!("echoed {}, shutdown(SHUT_WR)", digest(&data)));
        }
        _ => out.push(format!("unknown case {name}")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
