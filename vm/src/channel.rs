//! The host side of the guest protocol (`lab_protocol::wire`), over the unix socket
//! QEMU exposes for the `lab.control` virtio-serial port. Every wait has a deadline.
use std::{
    fs,
    io::{BufRead, BufReader, ErrorKind, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use lab_protocol::{
    Cancel,
    wire::{Reply, ReplyBody, Request, RequestBody, VERSION},
};

use crate::VmError;

/// How long a cancelled request may take to wind down (the guest tears its lab down).
const CANCEL_GRACE: Duration = Duration::from_mins(1);
/// Granularity of deadline and cancel checks while waiting for the guest.
const TICK: Duration = Duration::from_millis(200);

pub struct Channel {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    serial_log: PathBuf,
    next_id: u64,
    /// A cancelled request returns at once instead of asking the guest to wind down.
    abandon_on_cancel: bool,
}

impl Channel {
    /// Connects to the control socket, retrying until `timeout` while QEMU creates it.
    pub fn connect(socket: &Path, serial_log: &Path, timeout: Duration) -> Result<Channel, VmError> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Err(source) => {
                    return Err(VmError::Io {
                        what: "cannot connect to the VM's control socket",
                        path: socket.into(),
                        source,
                    });
                }
            }
        };
        stream.set_read_timeout(Some(TICK)).map_err(VmError::io("cannot configure", socket))?;
        let reader = BufReader::new(stream.try_clone().map_err(VmError::io("cannot clone", socket))?);
        // Ids start from the clock so a reply meant for an earlier client is never taken as ours.
        let next_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Ok(Channel { stream, reader, serial_log: serial_log.to_owned(), next_id, abandon_on_cancel: false })
    }

    /// Asks the guest who it is; returns its kernel release. A guest of another protocol
    /// version (a VM left up by another build) is refused with what to do.
    pub fn hello(&mut self, vm: &str, timeout: Duration, during: &str) -> Result<String, VmError> {
        self.hello_or_cancel(vm, timeout, during, &Cancel::new())
    }

    /// [`Channel::hello`], given up at once when `cancel` is set (a booting guest has nothing
    /// to wind down).
    pub fn hello_or_cancel(
        &mut self,
        vm: &str,
        timeout: Duration,
        during: &str,
        cancel: &Cancel,
    ) -> Result<String, VmError> {
        self.abandon_on_cancel = true;
        let reply = self.request(RequestBody::Hello, timeout, during, Some(cancel), |_| None);
        self.abandon_on_cancel = false;
        match reply? {
            ReplyBody::Ready { kernel, protocol, .. } if protocol == VERSION => Ok(kernel),
            ReplyBody::Ready { protocol, .. } => {
                Err(VmError::Version { name: vm.to_owned(), guest: protocol, host: VERSION })
            }
            other => Err(VmError::Guest {
                message: format!("unexpected answer to hello: {other:?}"),
                unmet: false,
            }),
        }
    }

    fn send(&mut self, id: u64, body: RequestBody) -> Result<(), VmError> {
        let mut line = serde_json::to_string(&Request { id, body }).expect("request serializes");
        line.push('\n');
        self.stream.write_all(line.as_bytes()).map_err(|_| self.gone("while sending a request"))
    }

    /// Sends `body` and returns its final reply, handing the others to `on_reply` (which may
    /// answer with a request of its own for the same id, such as `continue`). Fails if the guest
    /// stays silent past `timeout`, if QEMU goes away, or (after asking the guest to stop and
    /// letting it wind down) when `cancel` is set.
    pub fn request(
        &mut self,
        body: RequestBody,
        timeout: Duration,
        during: &str,
        cancel: Option<&Cancel>,
        mut on_reply: impl FnMut(&ReplyBody) -> Option<RequestBody>,
    ) -> Result<ReplyBody, VmError> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(id, body)?;
        let mut deadline = Instant::now() + timeout;
        let mut cancelled = false;
        let mut buf = Vec::new();
        loop {
            if !cancelled && cancel.is_some_and(Cancel::is_cancelled) {
                if self.abandon_on_cancel {
                    return Err(VmError::Cancelled);
                }
                cancelled = true;
                self.send(id, RequestBody::Cancel)?;
                deadline = Instant::now() + CANCEL_GRACE;
            }
            match self.reader.read_until(b'\n', &mut buf) {
                Ok(0) => return Err(self.gone(during)),
                Ok(_) if buf.ends_with(b"\n") => {
                    let reply = match serde_json::from_slice::<Reply>(&buf) {
                        Ok(r) => r,
                        Err(e) => {
                            let line = String::from_utf8_lossy(&buf).trim_end().chars().take(300).collect();
                            let _ = self.send(id, RequestBody::Cancel);
                            return Err(VmError::Garbled { line, detail: e.to_string() });
                        }
                    };
                    buf.clear();
                    if reply.id != id {
                        continue;
                    }
                    if reply.body.is_final() {
                        if cancelled {
                            return Err(VmError::Cancelled);
                        }
                        return Ok(reply.body);
                    }
                    if let Some(answer) = on_reply(&reply.body) {
                        self.send(id, answer)?;
                        // Time spent waiting for the user does not count against the guest.
                        deadline = Instant::now() + timeout;
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) =>
                {
                    if Instant::now() >= deadline {
                        // Giving up: the guest is told to stop too, so it is free for the next
                        // request if it ever wakes up.
                        if !cancelled {
                            let _ = self.send(id, RequestBody::Cancel);
                        }
                        return Err(VmError::GuestSilent {
                            during: during.to_owned(),
                            seconds: timeout.as_secs(),
                            console: tail(&self.serial_log, 15),
                        });
                    }
                }
                Err(_) => return Err(self.gone(during)),
            }
        }
    }

    fn gone(&self, during: &str) -> VmError {
        VmError::VmGone { during: during.to_owned(), console: tail(&self.serial_log, 15) }
    }
}

/// The last `n` lines of a log file (empty if unreadable).
pub fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A fake guest on a unix socket: answers every request line with `answer` (its `{id}`
    /// replaced by the request's id) and records what it was sent.
    fn fake_guest(tag: &str, answer: &'static str) -> (PathBuf, thread::JoinHandle<Vec<String>>) {
        let dir = std::env::temp_dir().join(format!("slab-channel-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("control.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let guest = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut w = stream.try_clone().unwrap();
            let mut seen = Vec::new();
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let id = lab_protocol::wire::id_of(&line);
                seen.push(line);
                let _ = w.write_all(format!("{}\n", answer.replace("{id}", &id.to_string())).as_bytes());
            }
            seen
        });
        (socket, guest)
    }

    #[test]
    fn a_guest_from_an_older_build_is_refused_with_what_to_do() {
        // What a guest from before versioning answers: no `protocol`.
        let (socket, guest) =
            fake_guest("old", r#"{"id":{id},"kind":"ready","kernel":"6.1.0","uptime_s":1.0}"#);
        let mut ch = Channel::connect(&socket, &socket, Duration::from_secs(2)).unwrap();
        let e = ch.hello("lab", Duration::from_secs(2), "while saying hello").unwrap_err();
        assert!(matches!(e, VmError::Version { guest: 0, host: VERSION, .. }), "{e:?}");
        assert!(e.to_string().contains("`lab-runner down`, then run again"), "{e}");
        drop(ch);
        guest.join().unwrap();
        fs::remove_dir_all(socket.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_line_that_is_no_reply_is_an_error_and_the_guest_is_told_to_stop() {
        let (socket, guest) = fake_guest("garbled", "Kernel panic - not syncing");
        let mut ch = Channel::connect(&socket, &socket, Duration::from_secs(2)).unwrap();
        let e = ch.hello("lab", Duration::from_secs(2), "while saying hello").unwrap_err();
        assert!(matches!(&e, VmError::Garbled { line, .. } if line == "Kernel panic - not syncing"), "{e:?}");
        drop(ch);
        let seen = guest.join().unwrap();
        assert!(seen.len() == 2 && seen[1].contains(r#""op":"cancel""#), "{seen:?}");
        fs::remove_dir_all(socket.parent().unwrap()).unwrap();
    }
}
