//! The guest agent: serves [`protocol`](super::protocol) requests on the `lab.control`
//! virtio-serial port, one exec or scenario at a time (a `cancel` may arrive meanwhile).
use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use super::{
    init,
    protocol::{self, CONTROL_PORT, EXEC_PORT, Reply, ReplyBody, Request, RequestBody, VERSION},
};
use lab_sandbox::{
    preflight,
    process::{Cancel, Cmd},
};
use lab_scenario::{self as scenario, Programs};

/// Where the image puts the workloads binary.
pub const WORKLOAD_BIN: &str = "/bin/workload";
/// Where the image puts the mesh agent.
pub const MESH_AGENT_BIN: &str = "/bin/mesh-agent";

/// Where replies go: the control port (or, in tests, a file).
#[derive(Clone)]
struct Out(Arc<Mutex<File>>);

impl Out {
    fn send(&self, id: u64, body: ReplyBody) {
        let mut line = serde_json::to_string(&Reply { id, body }).expect("reply serializes");
        line.push('\n');
        let mut f = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // A host that is not listening makes this block or fail; either way nothing to do.
        let _ = f.write_all(line.as_bytes());
        let _ = f.flush();
    }
}

/// The request being served: how to cancel it, and (guided scenarios) how to let it go on.
struct Job {
    cancel: Cancel,
    gate: Option<std::sync::mpsc::Sender<()>>,
}

/// Finds `/dev/vportNpM` whose name is `name`.
fn find_port(name: &str) -> io::Result<PathBuf> {
    for _ in 0..100 {
        if let Ok(rd) = fs::read_dir("/sys/class/virtio-ports") {
            for e in rd.flatten() {
                if fs::read_to_string(e.path().join("name")).is_ok_and(|n| n.trim() == name) {
                    return Ok(PathBuf::from("/dev").join(e.file_name()));
                }
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::new(io::ErrorKind::NotFound, format!("no virtio port named {name}")))
}

/// Serves both ports forever (returns only if the control port cannot be opened): each port
/// takes one request at a time, so an `exec` on the second runs beside a scenario on the first.
pub fn serve() -> io::Result<()> {
    thread::spawn(|| {
        if let Err(e) = serve_port(EXEC_PORT) {
            init::log(&format!("{EXEC_PORT}: {e}"));
        }
    });
    serve_port(CONTROL_PORT)
}

fn serve_port(name: &str) -> io::Result<()> {
    let port = find_port(name)?;
    let file = OpenOptions::new().read(true).write(true).open(&port)?;
    let out = Out(Arc::new(Mutex::new(file.try_clone()?)));
    let mut reader = BufReader::new(file);
    let running: Arc<Mutex<Option<Job>>> = Arc::default();
    init::log(&format!("agent ready on {}", port.display()));
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            // No host connected: the port reads as end-of-file until one is.
            Ok(0) => {
                thread::sleep(Duration::from_millis(20));
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                init::log(&format!("control port: {e}"));
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        }
        let req: Request = match serde_json::from_str(line.trim()) {
            Ok(r) => r,
            Err(e) => {
                // Answered, not dropped: a host of another build learns why at once.
                init::log(&format!("bad request {:?}: {e}", line.trim()));
                let message = format!("cannot read request (protocol {VERSION}): {e}");
                out.send(protocol::id_of(line.trim()), ReplyBody::Error { message, unmet: false });
                continue;
            }
        };
        let id = req.id;
        match req.body {
            RequestBody::Hello => {
                let kernel = preflight::kernel_release();
                out.send(id, ReplyBody::Ready { kernel, uptime_s: uptime(), protocol: VERSION })
            }
            RequestBody::Cancel => {
                if let Some(job) = running.lock().unwrap().as_ref() {
                    job.cancel.cancel();
                }
            }
            RequestBody::Continue => {
                if let Some(Job { gate: Some(g), .. }) = running.lock().unwrap().as_ref() {
                    let _ = g.send(());
                }
            }
            RequestBody::Poweroff => init::poweroff(),
            body => {
                let mut slot = running.lock().unwrap();
                if slot.is_some() {
                    out.send(
                        id,
                        ReplyBody::Error {
                            message: "the agent is busy with another request".into(),
                            unmet: false,
                        },
                    );
                    continue;
                }
                let cancel = Cancel::new();
                let (gate_tx, gate_rx) = std::sync::mpsc::channel();
                let guided = matches!(body, RequestBody::Scenario { guided: true, .. });
                *slot = Some(Job { cancel: cancel.clone(), gate: guided.then_some(gate_tx) });
                drop(slot);
                start_job(id, &out, &running, move |out| match body {
                    RequestBody::Exec { argv } => exec(id, &argv, &cancel, out),
                    RequestBody::Scenario { file, source, mesh_files, options, .. } => {
                        match scenario::Scenario::parse(&source, &file) {
                            // The mesh files the host read with the scenario: none exists in here.
                            Ok(sc) => {
                                let sc = scenario::Scenario { mesh_files, ..sc };
                                run_scenario(id, sc, options, cancel, guided.then_some(gate_rx), out)
                            }
                            Err(e) => ReplyBody::Error { message: e.to_string(), unmet: false },
                        }
                    }
                    other => ReplyBody::Error { message: format!("not a job: {other:?}"), unmet: false },
                });
            }
        }
    }
}

/// Runs `work` on a thread of its own; its reply (or, if it panics, an error reply saying so)
/// ends the request, and the agent is free for the next one either way.
fn start_job(
    id: u64,
    out: &Out,
    running: &Arc<Mutex<Option<Job>>>,
    work: impl FnOnce(&Out) -> ReplyBody + Send + 'static,
) -> thread::JoinHandle<()> {
    let (out, running) = (out.clone(), running.clone());
    thread::spawn(move || {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&out)));
        let reply = result.unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            init::log(&format!("request {id} panicked: {what}"));
            ReplyBody::Error { message: format!("the guest agent panicked: {what}"), unmet: false }
        });
        *running.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        out.send(id, reply);
    })
}

fn uptime() -> f64 {
    fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

fn exec(id: u64, argv: &[String], cancel: &Cancel, out: &Out) -> ReplyBody {
    let Some((prog, args)) = argv.split_first() else {
        return ReplyBody::Error { message: "empty command".into(), unmet: false };
    };
    let mut child = match Command::new(prog)
        .args(args)
        .env("PATH", init::PATH)
        .current_dir("/root")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            out.send(id, ReplyBody::Stderr { data: format!("{prog}: {e}\n") });
            return ReplyBody::Exit { code: 127 };
        }
    };
    let pumps = [
        pump(child.stdout.take().expect("piped"), id, out.clone(), false),
        pump(child.stderr.take().expect("piped"), id, out.clone(), true),
    ];
    let status = loop {
        if cancel.is_cancelled() {
            lab_sandbox::process::kill_tree(&mut child);
        }
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) => thread::sleep(Duration::from_millis(5)),
            Err(e) => {
                return ReplyBody::Error { message: format!("wait: {e}"), unmet: false };
            }
        }
    };
    for p in pumps {
        let _ = p.join();
    }
    use std::os::unix::process::ExitStatusExt;
    ReplyBody::Exit { code: status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)) }
}

fn pump(stream: impl Read + Send + 'static, id: u64, out: Out, stderr: bool) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let data = String::from_utf8_lossy(&buf).into_owned();
            out.send(id, if stderr { ReplyBody::Stderr { data } } else { ReplyBody::Stdout { data } });
            buf.clear();
        }
    })
}

fn run_scenario(
    id: u64,
    sc: scenario::Scenario,
    options: scenario::Options,
    cancel: Cancel,
    gate: Option<std::sync::mpsc::Receiver<()>>,
    out: &Out,
) -> ReplyBody {
    let host = match preflight::check() {
        Ok(h) => h,
        Err(e) => {
            return ReplyBody::Error { message: e.to_string(), unmet: e.is_unmet() };
        }
    };
    let programs = Programs {
        workload: Cmd { program: WORKLOAD_BIN.into(), prefix: Vec::new() },
        agent: Cmd { program: MESH_AGENT_BIN.into(), prefix: Vec::new() },
    };
    match scenario::execute(sc, host, programs, options, cancel, gate, |event| {
        out.send(id, ReplyBody::Event { event })
    }) {
        // The report as JSON on the wire: NaN (not measured) goes as null.
        Ok(outcome) => ReplyBody::Outcome {
            outcome: outcome.try_map(serde_json::to_value).expect("a report serializes"),
        },
        Err(e) => ReplyBody::Error { message: lab_sandbox::error::chain(&e), unmet: e.is_unmet() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(path: &std::path::Path) -> Vec<Reply> {
        fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn a_panicking_job_answers_with_an_error_and_frees_the_agent() {
        let path = std::env::temp_dir().join(format!("agent-panic-{}.jsonl", std::process::id()));
        let out = Out(Arc::new(Mutex::new(File::create(&path).unwrap())));
        let running: Arc<Mutex<Option<Job>>> = Arc::default();
        *running.lock().unwrap() = Some(Job { cancel: Cancel::new(), gate: None });
        start_job(7, &out, &running, |_| panic!("scenario thread blew up")).join().unwrap();
        assert!(running.lock().unwrap().is_none(), "the agent is still busy");
        *running.lock().unwrap() = Some(Job { cancel: Cancel::new(), gate: None });
        start_job(8, &out, &running, |_| ReplyBody::Exit { code: 0 }).join().unwrap();
        let r = replies(&path);
        fs::remove_file(&path).unwrap();
        assert_eq!(r.len(), 2);
        assert!(
            matches!(&r[0].body, ReplyBody::Error { message, .. } if r[0].id == 7 && message.contains("panicked: scenario thread blew up")),
            "{:?}",
            r[0]
        );
        assert!(matches!(r[1].body, ReplyBody::Exit { code: 0 }) && r[1].id == 8);
    }
}
