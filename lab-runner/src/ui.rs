//! Rendering: the terminal view of a scenario's events, and error reporting. The engine never
//! prints; everything the user sees is drawn here.
use std::io::Write as _;

use indicatif::{ProgressBar, ProgressStyle};
use lab_sandbox::{Event, LabError, process::Cancel};
use lab_scenario::Outcome;
use lab_vm::{VmError, fetch::FetchEvent};

use crate::exit;

/// `println!` that never panics: a reader that went away (`| head`, a test that stopped reading)
/// must not turn into a panic halfway through a lab's teardown.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that never panics (see [`outln`]).
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}

/// Prints an error with its causes and returns the matching exit code.
pub fn fail(e: &LabError) -> i32 {
    eprintln!("lab-runner: {}", lab_sandbox::error::chain(e));
    exit_code(e)
}

fn exit_code(e: &LabError) -> i32 {
    match e {
        LabError::Cancelled => exit::INTERRUPTED,
        e if e.is_unmet() => exit::UNMET,
        _ => exit::BACKEND,
    }
}

/// Prints a VM error and returns the matching exit code.
pub fn fail_vm(e: &VmError) -> i32 {
    eprintln!("lab-runner: {}", lab_sandbox::error::chain(e));
    match e {
        VmError::Cancelled => exit::INTERRUPTED,
        VmError::UnknownKernel { .. } => exit::USAGE,
        e if e.is_unmet() => exit::UNMET,
        _ => exit::BACKEND,
    }
}

/// A `try` command as a line to paste on this machine: this very binary's `exec` into `vm`
/// (by path, so it runs whatever PATH holds), through `sh -c` when the command needs a shell
/// (pipes, redirections, quotes).
pub fn exec_line(vm: &str, cmd: &str) -> String {
    let me = std::env::current_exe().map_or_else(|_| "lab-runner".into(), |p| p.display().to_string());
    let vm_flag = if vm == lab_vm::machine::DEFAULT_NAME { String::new() } else { format!(" --vm {vm}") };
    let plain = cmd.chars().all(|c| c.is_ascii_alphanumeric() || " -_./:=,@%+[]".contains(c));
    if plain {
        format!("{me} exec{vm_flag} -- {cmd}")
    } else {
        format!("{me} exec{vm_flag} -- sh -c '{}'", cmd.replace('\'', "'\\''"))
    }
}

/// Download progress bars (stderr) drawn from fetch events.
pub struct FetchView {
    bar: Option<ProgressBar>,
}

impl FetchView {
    pub fn new() -> FetchView {
        FetchView { bar: None }
    }

    pub fn event(&mut self, e: &FetchEvent) {
        match e {
            FetchEvent::Cached { name } => eprintln!("{name}: cached, sha256 ok"),
            FetchEvent::Corrupt { name, actual } => {
                eprintln!("{name}: cached copy is corrupt (sha256 {actual}); fetching it again")
            }
            FetchEvent::Start { name, bytes } => {
                let bar = ProgressBar::new(*bytes);
                bar.set_style(
                    ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_message(name.clone());
                self.bar = Some(bar);
            }
            FetchEvent::Progress { done, .. } => {
                if let Some(b) = &self.bar {
                    b.set_position(*done);
                }
            }
            FetchEvent::Done { name } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("{name}: downloaded, sha256 ok");
            }
        }
    }
}

/// One measured figure in the summary table.
struct Figure {
    name: String,
    value: f64,
    unit: String,
}

/// The step-by-step view (or, with `--json`, silence until the outcome). In guided mode
/// (`--step`) explanations are rendered in full and the view waits for the reader after each
/// step.
pub struct View {
    json: bool,
    guided: bool,
    /// The VM the scenario runs in: its `try` commands are printed as `lab-runner exec` lines
    /// that reach it.
    vm: Option<String>,
    /// Metrics per step, in the order they came: the summary table.
    table: Vec<(String, Vec<Figure>)>,
}

impl View {
    pub fn new(json: bool, guided: bool) -> View {
        View { json, guided, vm: None, table: Vec::new() }
    }

    /// The scenario runs in VM `name` (not on this machine).
    pub fn in_vm(mut self, name: &str) -> View {
        self.vm = Some(name.to_owned());
        self
    }

    pub fn note(&self, line: &str) {
        if !self.json {
            outln!("{line}");
        }
    }

    /// Draws one event. Returns true when the engine paused and may now go on.
    pub fn event(&mut self, e: &Event, cancel: &Cancel) -> bool {
        if let Event::Metric { step, name, value, unit } = e {
            let fig = Figure { name: name.clone(), value: *value, unit: unit.clone() };
            match self.table.iter_mut().find(|(s, _)| s == step) {
                Some((_, row)) => row.push(fig),
                None => self.table.push((step.clone(), vec![fig])),
            }
        }
        if self.json {
            return matches!(e, Event::Paused { .. });
        }
        match e {
            Event::LabUp { id, pods } => {
                outln!("lab {id}");
                for p in pods {
                    outln!("  pod {:<8} {} {}  (netns {})", p.name, p.ipv4, p.ipv6, p.netns);
                }
            }
            Event::StepStarted { step, explain } => {
                outln!("\n== {step}");
                if self.guided {
                    termimad::MadSkin::default().print_text(&joined(explain));
                } else {
                    for line in wrap(&compact(explain), 96) {
                        outln!("   {line}");
                    }
                }
            }
            Event::Output { line, .. } => outln!("   {line}"),
            Event::Metric { name, value, unit, .. } => outln!("   {name:<18} {}", figure(*value, unit)),
            Event::StepPassed { step } => outln!("   ok: {step}"),
            Event::StepFailed { step, reason } => outln!("   FAILED: {step}: {reason}"),
            Event::StepSkipped { step, reason } => outln!("   skipped: {step}: {reason}"),
            Event::Paused { try_, .. } => {
                for t in try_ {
                    if let Some(vm) = &self.vm {
                        outln!("   try: {}", exec_line(vm, t))
                    } else {
                        outln!("   try: {t}")
                    }
                }
                out!("-- Enter: next step, q: stop here -- ");
                let _ = std::io::stdout().flush();
                match read_line_unless(cancel) {
                    Some(line) if line.trim() != "q" => {}
                    // q, Ctrl-C while waiting, or no more input: stop and tear down.
                    _ => cancel.cancel(),
                }
                return true;
            }
        }
        false
    }

    pub fn outcome(&self, o: &Outcome) {
        if self.json {
            outln!("{}", serde_json::to_string_pretty(o).expect("outcome serializes"));
            return;
        }
        outln!("\n== summary: scenario {} on kernel {}", o.scenario, o.kernel);
        if let Some(reason) = &o.skipped {
            outln!("\nSKIPPED: {reason}");
            return;
        }
        // Steps that measured a run (a latency, a throughput or a connection rate) form the
        // table; the rest follow, named by their step.
        let (runs, others): (Vec<_>, Vec<_>) = self
            .table
            .iter()
            .partition(|(_, row)| row.iter().any(|f| ["p50", "mb_s", "conn_s"].contains(&f.name.as_str())));
        let mut columns: Vec<&str> = Vec::new();
        for f in runs.iter().flat_map(|(_, row)| row) {
            if !columns.contains(&f.name.as_str()) {
                columns.push(&f.name);
            }
        }
        out!("   {:<18}", "");
        for c in &columns {
            out!(" {c:>15}");
        }
        outln!();
        for (step, row) in &runs {
            out!("   {:<18}", short(step));
            for c in &columns {
                if let Some(f) = row.iter().find(|f| f.name == *c) {
                    out!(" {:>15}", figure(f.value, &f.unit))
                } else {
                    out!(" {:>15}", "-")
                }
            }
            outln!();
        }
        for (step, row) in &others {
            for f in row {
                let name = if short(step) == f.name {
                    f.name.clone()
                } else {
                    format!("{}.{}", short(step), f.name)
                };
                outln!("   {name:<27} {}", figure(f.value, &f.unit));
            }
        }
        if o.passed {
            outln!("\nPASS");
        } else {
            outln!("\nFAIL");
            for f in &o.failures {
                outln!("   {f}");
            }
        }
    }
}

/// `3. sidecars` -> `sidecars`.
fn short(step: &str) -> &str {
    step.split_once(". ").map_or(
        step,
        |(n, rest)| {
            if n.chars().all(|c| c.is_ascii_digit()) { rest } else { step }
        },
    )
}

/// The first paragraph of a Markdown explanation, without emphasis marks.
fn compact(md: &str) -> String {
    md.trim().split("\n\n").next().unwrap_or_default().replace("**", "").replace('`', "")
}

/// Markdown whose paragraphs are written over several lines (as scenario files keep them), with
/// each paragraph on one line: the terminal renderer wraps lines, it does not join them.
fn joined(md: &str) -> String {
    let block = |l: &str| {
        let t = l.trim_start();
        t.starts_with("- ")
            || t.starts_with("* ")
            || t.starts_with(['|', '#', '>'])
            || t.starts_with("```")
            || t.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
    };
    md.trim()
        .split("\n\n")
        .map(|p| {
            if p.lines().any(block) {
                p.to_owned()
            } else {
                p.lines().map(str::trim).collect::<Vec<_>>().join(" ")
            }
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn figure(v: f64, unit: &str) -> String {
    match unit {
        "" => format!("{v:.0}"),
        "x" => format!("{v:.2}x"),
        "GB" => format!("{v:.1} GB"),
        "%" => format!("{v:.3}%"),
        u => format!("{v:.1} {u}"),
    }
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let last = lines.last_mut().expect("non-empty");
        if !last.is_empty() && last.len() + 1 + word.len() > width {
            lines.push(word.to_owned());
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(word);
        }
    }
    lines
}

/// A line from stdin, or `None` once `cancel` is set (Ctrl-C while waiting) or stdin has ended.
/// Polls, so a signal does not have to interrupt a blocking read.
fn read_line_unless(cancel: &Cancel) -> Option<String> {
    use std::os::fd::AsRawFd;
    let fd = std::io::stdin().as_raw_fd();
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&raw mut p, 1, 100) } {
            0 => continue,
            n if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {
                continue;
            }
            n if n < 0 => return None,
            _ => {}
        }
        let mut line = String::new();
        return match std::io::stdin().read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        };
    }
}

/// Prints a cluster error and returns the matching exit code.
pub fn fail_cluster(e: &lab_cluster::ClusterError) -> i32 {
    eprintln!("lab-runner: {}", lab_sandbox::error::chain(e));
    match e {
        lab_cluster::ClusterError::Cancelled => exit::INTERRUPTED,
        e if e.is_unmet() => exit::UNMET,
        _ => exit::BACKEND,
    }
}

/// The Kubernetes build's progress: one spinner per component (stderr).
pub struct BuildView {
    bar: Option<ProgressBar>,
}

impl BuildView {
    pub fn new() -> BuildView {
        BuildView { bar: None }
    }

    pub fn event(&mut self, e: &lab_cluster::source::BuildEvent) {
        use lab_cluster::source::BuildEvent;
        match e {
            BuildEvent::Cached { version } => eprintln!("kubernetes {version}: cached build"),
            BuildEvent::Fetching { version } => eprintln!("kubernetes {version}: apt-get source"),
            BuildEvent::Component { name, n, of } => {
                let bar = ProgressBar::new_spinner();
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg} {elapsed}").expect("valid template"),
                );
                bar.set_message(format!("make WHAT=cmd/{name} ({n}/{of})"));
                bar.enable_steady_tick(std::time::Duration::from_millis(200));
                self.bar = Some(bar);
            }
            BuildEvent::ComponentDone { name, secs } => {
                if let Some(b) = self.bar.take() {
                    b.finish_and_clear();
                }
                eprintln!("built {name} in {secs:.0} s");
            }
            BuildEvent::Done { secs } => eprintln!("kubernetes built in {secs:.0} s"),
        }
    }
}

/// One line per step of `cluster up`/`down` (stderr).
pub fn cluster_event(e: &lab_cluster::daemons::UpEvent) {
    use lab_cluster::daemons::UpEvent;
    match e {
        UpEvent::Started { daemon, pid } => eprintln!("started {daemon} (pid {pid})"),
        UpEvent::Ready { what, secs } => eprintln!("{what} ready ({secs:.1} s)"),
        UpEvent::Imported { image } => eprintln!("imported {image}"),
        UpEvent::Stopped { daemon } => eprintln!("stopped {daemon}"),
        UpEvent::Swept { what } => eprintln!("removed {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_lines_in_a_vm_are_exec_commands_that_reach_it() {
        let me = std::env::current_exe().unwrap().display().to_string();
        assert_eq!(
            exec_line("scenario-42", "ip -n slab-1-client -s link show eth0"),
            format!("{me} exec --vm scenario-42 -- ip -n slab-1-client -s link show eth0")
        );
        assert_eq!(exec_line("default", "bpftool prog list"), format!("{me} exec -- bpftool prog list"));
        assert_eq!(
            exec_line("default", "iptables -S | head -n 'x'"),
            format!(r"{me} exec -- sh -c 'iptables -S | head -n '\''x'\'''")
        );
    }

    #[test]
    fn joins_the_lines_of_each_paragraph_and_keeps_blocks() {
        assert_eq!(joined("One\ntwo.\n\n- a\n- b\n\nThree\nfour."), "One two.\n\n- a\n- b\n\nThree four.");
        assert_eq!(joined("1. x\n2. y"), "1. x\n2. y");
        assert_eq!(joined("**Direct**: a\nb."), "**Direct**: a b.");
    }

    #[test]
    fn compacts_markdown_to_its_first_paragraph() {
        assert_eq!(compact("**Direct**: `a` b.\n\nMore."), "Direct: a b.");
        assert_eq!(short("3. sidecars"), "sidecars");
        assert_eq!(short("sidecars+sockmap"), "sidecars+sockmap");
    }

    #[test]
    fn wraps_at_word_boundaries() {
        assert_eq!(wrap("aa bb cc", 5), vec!["aa bb", "cc"]);
        assert_eq!(wrap("", 5), vec![""]);
    }

    #[test]
    fn requirement_errors_map_to_unmet() {
        assert_eq!(exit_code(&LabError::NotRoot), exit::UNMET);
        assert_eq!(exit_code(&LabError::NoCgroup2), exit::UNMET);
        let refused = mesh_agent::MeshError::Refused {
            program: "mesh_redirect",
            source: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: "R1 invalid mem access".into(),
        };
        let msg = LabError::Mesh(refused).to_string();
        assert!(
            msg.contains("mesh_redirect")
                && msg.contains("verifier log")
                && msg.contains("R1 invalid mem access"),
            "{msg}"
        );
        assert_eq!(exit_code(&LabError::Cancelled), exit::INTERRUPTED);
        assert_eq!(exit_code(&LabError::Timeout { what: "x".into(), seconds: 1 }), exit::BACKEND);
    }
}
