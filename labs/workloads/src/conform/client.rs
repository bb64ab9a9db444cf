//! The client side of the suite: runs each case, fetches the server's transcript, and holds a
//! connection open across the mesh's start and stop (`--hold-until`).
use super::*;

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
                        libc::sendfile(
                            s.as_raw_fd(),
                            file.as_raw_fd(),
                            &raw mut off,
                            data.len() - off as usize,
                        )
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
            // ANCHOR: client_queue_inspection
            "fionread" | "tcp-inq" => {
                // What is waiting to be read, as event loops and Java's available() ask it.
                let mut s = TcpStream::connect(addr).op("connect")?;
                s.set_nodelay(true).op("setsockopt")?;
                if name == "tcp-inq" {
                    // Before the first byte arrives, as a program that relies on it would.
                    setsockopt(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_INQ, &1i32).op("setsockopt")?;
                }
                s.write_all(&header(case, token)).op("write")?;
                if !poll_for(&s, libc::POLLIN, Duration::from_secs(10)).op("poll")? {
                    return Err(Fail("poll", io::Error::from_raw_os_error(libc::ETIMEDOUT)));
                }
                // One write of 1000 bytes: all of it is here once any of it is.
                thread::sleep(Duration::from_millis(50));
                if name == "fionread" {
                    let mut n: libc::c_int = 0;
                    // SAFETY: FIONREAD writes one int through the pointer.
                    if unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &raw mut n) } != 0 {
                        return Err(Fail("ioctl(FIONREAD)", io::Error::last_os_error()));
                    }
                    out.push(format!("FIONREAD once readable: {n}"));
                    out.push(format!("then read {}", digest(&read_exactly(&mut s, 1000)?)));
                } else {
                    let (first, inq) = recv_inq(&s, 400).op("recvmsg")?;
                    out.push(format!(
                        "read {} bytes; TCP_CM_INQ says {}",
                        first.len(),
                        inq.map_or_else(|| "nothing (no control message)".to_owned(), |n| n.to_string())
                    ));
                    let rest = read_exactly(&mut s, 1000 - first.len())?;
                    out.push(format!("in all {}", digest(&[first, rest].concat())));
                }
                s.write_all(b"k").op("write")?;
            }
            // ANCHOR_END: client_queue_inspection
            // ANCHOR: client_slow_reader
            "slow-reader" => {
                // A blocking writer, a reader that starts a second late: TCP makes write_all()
                // wait until the reader has made room, so it cannot return before the first read.
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(14, SLOW_BYTES);
                s.write_all(&data).op("write")?;
                let done = monotonic_ns();
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("wrote {} with one blocking write_all", digest(&data)));
                let (first, got) = slow_reply(&mut s)?;
                out.push(format!("write_all returned before the reader's first read: {}", done < first));
                out.push(format!("server received {got}"));
            }
            "slow-reader-nonblocking" => {
                // The same with a non-blocking writer: TCP answers EAGAIN, then POLLOUT once the
                // reader has read.
                let mut s = open(addr, case, token, &[])?;
                let data = pattern(15, SLOW_BYTES);
                s.set_nonblocking(true).op("fcntl")?;
                let (mut at, mut eagain) = (0, false);
                while at < data.len() {
                    match send(&s, &data[at..(at + (256 << 10)).min(data.len())]) {
                        Ok(n) => at += n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            eagain = true;
                            if !poll_for(&s, libc::POLLOUT, Duration::from_secs(10)).op("poll")? {
                                return Err(Fail(
                                    "poll(POLLOUT)",
                                    io::Error::from_raw_os_error(libc::ETIMEDOUT),
                                ));
                            }
                        }
                        Err(e) => return Err(Fail("send", e)),
                    }
                }
                s.set_nonblocking(false).op("fcntl")?;
                s.shutdown(Shutdown::Write).op("shutdown")?;
                out.push(format!("sent {} non-blocking", digest(&data)));
                out.push(format!("send() would block, then poll() said writable: {eagain}"));
                let (_, got) = slow_reply(&mut s)?;
                out.push(format!("server received {got}"));
            }
            "slow-readers-8" => {
                // Eight writers into one process whose readers all start late, like a proxy's
                // upstreams: what waits unread adds up on the node.
                let workers: Vec<_> = (0..8u64)
                    .map(|i| {
                        thread::spawn(move || -> Step<()> {
                            let data = pattern(100 + i, SLOW_BYTES / 4);
                            let mut s = open(addr, SLOW_COUNT, 0, &[])?;
                            s.write_all(&data).op("write")?;
                            s.shutdown(Shutdown::Write).op("shutdown")?;
                            let (_, got) = slow_reply(&mut s)?;
                            if got != format!("{}, eof", digest(&data)) {
                                return Err(Fail("read", io::Error::other("the reader got other bytes")));
                            }
                            Ok(())
                        })
                    })
                    .collect();
                let results = workers
                    .into_iter()
                    .map(|w| w.join().unwrap_or_else(|_| Err(Fail("thread", io::Error::other("panicked")))));
                out.extend(tally(results, "of 8 connections of 16 MiB to late readers"));
            }
            // ANCHOR_END: client_slow_reader
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

/// A slow reader's answer: when it first read (monotonic ns) and what it received.
fn slow_reply(s: &mut TcpStream) -> Step<(u64, String)> {
    let first = u64::from_le_bytes(read_exactly(s, 8)?.try_into().expect("8"));
    let mut text = String::new();
    s.read_to_string(&mut text).op("read")?;
    Ok((first, text))
}

/// recvmsg(2) of up to `len` bytes with room for control messages: the bytes, and the
/// `TCP_CM_INQ` value if the kernel sent one.
fn recv_inq(s: &TcpStream, len: usize) -> io::Result<(Vec<u8>, Option<i32>)> {
    let mut buf = vec![0u8; len];
    let mut control = [0u64; 8];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: len };
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // socklen_t on musl, size_t on glibc.
    msg.msg_controllen = size_of_val(&control) as _;
    // SAFETY: msg describes live buffers of the given lengths.
    let n = cvt(unsafe { libc::recvmsg(s.as_raw_fd(), &raw mut msg, 0) })?;
    buf.truncate(n);
    let mut inq = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled, within controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_TCP && (*c).cmsg_type == libc::TCP_CM_INQ {
                inq = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()));
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Ok((buf, inq))
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
    if unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, s.as_raw_fd(), &raw mut ev) } != 0 {
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
