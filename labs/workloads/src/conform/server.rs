//! The server side of the suite: one thread per connection, each case's transcript kept under
//! its token until the client fetches it.
use super::*;

#[derive(Default)]
pub(super) struct Transcripts {
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

pub(super) fn serve_one(mut s: TcpStream, t: &Transcripts) {
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
        SLOW_COUNT => {
            thread::sleep(SLOW_START);
            let first = monotonic_ns();
            if let Ok(got) = read_to_eof(&mut s) {
                let _ = s.write_all(&first.to_le_bytes());
                let _ = s.write_all(got.as_bytes());
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
        "fionread" | "tcp-inq" => {
            s.write_all(&pattern(13, 1000)).op("write")?;
            let go = read_exactly(&mut s, 1)?;
            out.push(format!("sent 1000 bytes in one write, then read {} byte", go.len()));
        }
        "slow-reader" | "slow-reader-nonblocking" => {
            thread::sleep(SLOW_START);
            let first = monotonic_ns();
            let got = read_to_eof(&mut s)?;
            out.push(format!("waited 1 s, then received {got}"));
            s.write_all(&first.to_le_bytes()).op("write")?;
            s.write_all(got.as_bytes()).op("write")?;
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
