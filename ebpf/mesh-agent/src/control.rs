//! The running agent's control socket: one control plane for the mesh. `mesh-agent apply
//! --control SOCKET` (and the lab) hand the running agent a mesh file; the agent applies it with
//! the same code as at start, so it always knows the file and which pods each identity stands
//! for (its denial events name them). One JSON line each way on a unix stream socket, like the
//! admin sockets of other node agents; nothing here crosses machines.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::{fd::AsRawFd as _, unix::net::UnixListener},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

// ANCHOR: request
/// What a client asks the running agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Apply this mesh file by difference, with these pods (they then also name the flow log's
    /// addresses) or, without, the agent's `--pods`.
    Apply {
        file: PathBuf,
        #[serde(default)]
        pods: Option<PathBuf>,
    },
    /// Flow records on or off for connections established from now on.
    Telemetry { on: bool },
    /// Flow control through the redirect on (the agent's budgets) or off (budget 0: redirected
    /// bytes may outrun their reader, as before flow control), for messages sent from now on.
    FlowControl { on: bool },
    /// The port of a per-pod proxy whose app <-> proxy hops the redirect takes (0: none).
    SidecarPort { port: u16 },
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Applied(Applied),
    /// A setting was changed.
    Done,
    /// The request was refused (a bad file, a map that cannot be written): nothing or only part
    /// was applied, as the message says.
    Error(String),
}
// ANCHOR_END: request

/// What applying a mesh file changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub file: PathBuf,
    /// Service map entries.
    pub services: Changes,
    /// The file's policy rules, those with HTTP matches, the allow entries and policed
    /// identities they resolve to, and the policy map entries added and removed.
    pub rules: usize,
    pub http_rules: usize,
    pub allow_entries: usize,
    pub policed: usize,
    pub policy_added: usize,
    pub policy_removed: usize,
}

/// Entries written by difference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
}

/// What a running agent says once it serves, for programs to read instead of its sentences:
/// one line on stderr, `mesh-agent: ready {...}` ([`READY`] and this as JSON), after the
/// sentences and before `mesh-agent: serving`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub cgroup: PathBuf,
    pub pin_dir: PathBuf,
    /// Installed now, or adopted from the pins of an agent that is gone.
    pub started: crate::Started,
    /// Why the retransmit tracepoint is not attached (it is not part of the datapath).
    pub tracepoint_error: Option<String>,
    /// Why flow control estimates reads instead of counting them (no read counter), if it does.
    #[serde(default)]
    pub reads_estimated: Option<String>,
    /// Why flow control does not see TCP memory pressure (no pressure mark), if it does not.
    #[serde(default)]
    pub pressure_unwatched: Option<String>,
    /// The mesh file applied at start (`--file`), if one was.
    pub applied: Option<Applied>,
    pub flow_log: PathBuf,
    /// Where it serves Prometheus metrics (the port the kernel picked for `:0`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Where it takes requests ([`Request`]).
    pub control: Option<PathBuf>,
}

/// The prefix of the [`Ready`] line.
pub const READY: &str = "mesh-agent: ready ";

impl Ready {
    /// The line as the agent prints it.
    pub fn line(&self) -> String {
        format!("{READY}{}", serde_json::to_string(self).expect("serializes"))
    }

    /// `Some` for a [`Ready`] line, `Err` for one that does not parse.
    pub fn parse(line: &str) -> Option<Result<Ready, String>> {
        let json = line.strip_prefix(READY)?;
        Some(serde_json::from_str(json).map_err(|e| format!("{e}: {json}")))
    }
}

/// How long a client waits for the agent's answer (loading a large file under TCG is slow).
const ANSWER_TIMEOUT: Duration = Duration::from_mins(2);

/// The agent's end: a listening socket, removed when dropped.
pub struct Server {
    listener: UnixListener,
    path: PathBuf,
}

impl Server {
    /// Listens at `path` (a socket left by a killed agent is replaced).
    pub fn bind(path: &Path) -> std::io::Result<Server> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(Server { listener, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// For the agent's poll loop: readable when a client connects.
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }

    /// Serves every client waiting now, one request each, with `handle`. A client that sends
    /// no line within a few seconds is dropped (it must not hang the agent).
    pub fn serve(&self, mut handle: impl FnMut(Request) -> Response) -> std::io::Result<()> {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            };
            stream.set_nonblocking(false)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            let answer = match reader.read_line(&mut line) {
                Ok(_) => match serde_json::from_str::<Request>(&line) {
                    Ok(request) => handle(request),
                    Err(e) => Response::Error(format!("not a request ({e}): {}", line.trim())),
                },
                Err(e) => Response::Error(format!("reading the request: {e}")),
            };
            // A client gone before the answer is its own problem, not the agent's.
            let mut out = serde_json::to_string(&answer).expect("serializes");
            out.push('\n');
            let _ = (&stream).write_all(out.as_bytes());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `request` to the agent listening at `socket` and waits for its answer.
pub fn request(socket: &Path, request: &Request) -> Result<Response, String> {
    let at = |e: std::io::Error| format!("control socket {}: {e}", socket.display());
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(at)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(at)?;
    let mut line = serde_json::to_string(request).expect("serializes");
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(at)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(at)?;
    serde_json::from_str(&answer)
        .map_err(|e| format!("control socket {}: not an answer ({e}): {}", socket.display(), answer.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_request_one_answer_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("mesh-control-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let server = Server::bind(&path).unwrap();
        let client = {
            let path = path.clone();
            std::thread::spawn(move || {
                request(&path, &Request::Apply { file: "/x/web.toml".into(), pods: None })
            })
        };
        let mut seen = None;
        while seen.is_none() {
            server
                .serve(|r| {
                    seen = Some(r);
                    Response::Applied(Applied { file: "/x/web.toml".into(), rules: 2, ..Applied::default() })
                })
                .unwrap();
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen, Some(Request::Apply { file: "/x/web.toml".into(), pods: None }));
        let answer = client.join().unwrap().unwrap();
        assert!(matches!(answer, Response::Applied(a) if a.rules == 2));
        drop(server);
        assert!(!path.exists(), "the socket goes with the server");
        let e = request(&path, &Request::Apply { file: "/x".into(), pods: None }).unwrap_err();
        assert!(e.starts_with(&format!("control socket {}: ", path.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ready_line_reads_back() {
        let ready = Ready {
            cgroup: "/sys/fs/cgroup/lab".into(),
            pin_dir: "/sys/fs/bpf/lab".into(),
            started: crate::Started::Adopted { links: 12, services: 3, engine: crate::Engine::Aya },
            tracepoint_error: None,
            reads_estimated: None,
            pressure_unwatched: Some("no kernel BTF".into()),
            applied: Some(Applied { rules: 1, ..Applied::default() }),
            flow_log: "/run/lab/flows.jsonl".into(),
            metrics: Some("127.0.0.1:9464".parse().unwrap()),
            control: Some("/run/lab/agent.sock".into()),
        };
        assert_eq!(Ready::parse(&ready.line()), Some(Ok(ready)));
        assert_eq!(Ready::parse("mesh-agent: serving /sys/fs/cgroup/lab"), None);
        assert!(matches!(Ready::parse("mesh-agent: ready {"), Some(Err(_))));
    }
}
