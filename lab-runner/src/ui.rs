//! Rendering: the terminal view of a scenario's events, and error reporting. The engine never
//! prints; everything the user sees is drawn here.
use indicatif::{ProgressBar, ProgressStyle};
use lab_node::{Event, LabError, scenario::Outcome};
use lab_vm::{VmError, fetch::FetchEvent};

use crate::exit;

/// Prints an error with its causes and returns the matching exit code.
pub fn fail(e: &LabError) -> i32 {
    eprintln!("lab-runner: {}", lab_node::error::chain(e));
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
    eprintln!("lab-runner: {}", lab_node::error::chain(e));
    match e {
        VmError::Cancelled => exit::INTERRUPTED,
        VmError::UnknownKernel { .. } => exit::USAGE,
        e if e.is_unmet() => exit::UNMET,
        _ => exit::BACKEND,
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
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
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

/// The step-by-step view (or, with `--json`, silence until the outcome).
pub struct View {
    json: bool,
    /// Metrics per step, in the order they came: the summary table.
    table: Vec<(String, Vec<Figure>)>,
}

impl View {
    pub fn new(json: bool) -> View {
        View {
            json,
            table: Vec::new(),
        }
    }

    pub fn note(&self, line: &str) {
        if !self.json {
            println!("{line}");
        }
    }

    pub fn event(&mut self, e: &Event) {
        if let Event::Metric {
            step,
            name,
            value,
            unit,
        } = e
        {
            let fig = Figure {
                name: name.clone(),
                value: *value,
                unit: unit.clone(),
            };
            match self.table.iter_mut().find(|(s, _)| s == step) {
                Some((_, row)) => row.push(fig),
                None => self.table.push((step.clone(), vec![fig])),
            }
        }
        if self.json {
            return;
        }
        match e {
            Event::LabUp { id, pods } => {
                println!("lab {id}");
                for p in pods {
                    println!(
                        "  pod {:<8} {} {}  (netns {})",
                        p.name, p.ipv4, p.ipv6, p.netns
                    );
                }
            }
            Event::StepStarted { step, explain } => {
                println!("\n== {step}");
                for line in wrap(explain, 96) {
                    println!("   {line}");
                }
            }
            Event::Output { line, .. } => println!("   {line}"),
            Event::Metric {
                name, value, unit, ..
            } => println!("   {name:<18} {}", figure(*value, unit)),
            Event::StepPassed { step } => println!("   ok: {step}"),
            Event::StepFailed { step, reason } => println!("   FAILED: {step}: {reason}"),
            Event::StepSkipped { step, reason } => println!("   skipped: {step}: {reason}"),
            Event::Cleaned { what } => println!("removed {what}"),
        }
    }

    pub fn outcome(&self, o: &Outcome) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(o).expect("outcome serializes")
            );
            return;
        }
        println!(
            "\n== summary: scenario {} on kernel {}",
            o.scenario, o.kernel
        );
        // Steps that measured a run (they have a p50) form the table; the rest (ratios) follow.
        let (runs, others): (Vec<_>, Vec<_>) = self
            .table
            .iter()
            .partition(|(_, row)| row.iter().any(|f| f.name == "p50"));
        let mut columns: Vec<&str> = Vec::new();
        for f in runs.iter().flat_map(|(_, row)| row) {
            if !columns.contains(&f.name.as_str()) {
                columns.push(&f.name);
            }
        }
        print!("   {:<10}", "");
        for c in &columns {
            print!(" {c:>16}");
        }
        println!();
        for (step, row) in &runs {
            print!("   {step:<10}");
            for c in &columns {
                match row.iter().find(|f| f.name == *c) {
                    Some(f) => print!(" {:>16}", figure(f.value, &f.unit)),
                    None => print!(" {:>16}", "-"),
                }
            }
            println!();
        }
        for f in others.iter().flat_map(|(_, row)| row) {
            println!("   {:<27} {}", f.name, figure(f.value, &f.unit));
        }
        if o.passed {
            println!("\nPASS");
        } else {
            println!("\nFAIL");
            for f in &o.failures {
                println!("   {f}");
            }
        }
    }
}

fn figure(v: f64, unit: &str) -> String {
    match unit {
        "" => format!("{v:.0}"),
        "x" => format!("{v:.2}x"),
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            exit_code(&LabError::Timeout {
                what: "x".into(),
                seconds: 1
            }),
            exit::BACKEND
        );
    }
}
