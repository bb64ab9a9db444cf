//! The failure bundle: what an engineer asks for first when a scenario fails, collected before
//! the lab is torn down (the pods, the maps and the agent are gone after), carried in the report
//! (over the wire from a VM too) and written by `lab-runner` into `failure/` beside the report.
//!
//! - `dmesg.txt`: the kernel log since the run started;
//! - `bpftool.txt`: the programs, maps, links and the cgroup tree the mesh attaches to;
//! - `mesh-status.json`: `mesh-agent status --json` (what is attached, counters, map fill);
//! - `agent.log`, `flows.jsonl`: the mesh agent's log and flow log (their last 256 KiB);
//! - `pods/<pod>.log`: each pod's own programs' output;
//! - `pods/<pod>.ss.txt`: every TCP socket in the pod with its state and counters (`ss -tnie`).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{engine::Engine, site::Site, splat::KernelLog};

/// Files by name (relative to `failure/`), their text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bundle {
    pub files: BTreeMap<String, String>,
}

impl Bundle {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Each file keeps its last this many bytes (a VM sends the bundle over its console channel).
pub const MAX_FILE: usize = 256 * 1024;

/// The last [`MAX_FILE`] bytes of `text`, from a line start, saying what was cut.
pub fn tail(text: &str) -> String {
    if text.len() <= MAX_FILE {
        return text.to_owned();
    }
    let mut from = text.len() - MAX_FILE;
    while !text.is_char_boundary(from) {
        from += 1;
    }
    let from = text[from..].find('\n').map_or(from, |i| from + i + 1);
    format!("[... the first {from} bytes cut]\n{}", &text[from..])
}

/// Runs `program args`, its output and exit status as text; a program that is missing says so.
fn output_of(program: &str, args: &[&str]) -> String {
    let shown = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
    match Command::new(program).args(args).output() {
        Ok(o) => format!(
            "$ {shown}\n{}{}{}\n",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            if o.status.success() { String::new() } else { format!("({})", o.status) }
        ),
        Err(e) => format!("$ {shown}\n(cannot run: {e})\n"),
    }
}

impl Engine<'_> {
    /// Collects the bundle from the running lab (best effort: what cannot be read says why in
    /// its file).
    pub(crate) fn failure_bundle(&self, klog: Option<&KernelLog>) -> Bundle {
        let mut files = BTreeMap::new();
        let dmesg = match klog.map(KernelLog::text_since) {
            Some(Ok(text)) => text,
            Some(Err(e)) => format!("cannot read /dev/kmsg: {e}\n"),
            None => "the kernel log could not be read when the run started\n".into(),
        };
        files.insert("dmesg.txt".into(), tail(&dmesg));
        let (pin_dir, cgroup) = self.site.mesh_place();
        let cgroup_shown = cgroup.display().to_string();
        let bpftool: String =
            [&["prog", "show"][..], &["map", "show"], &["link", "show"], &["cgroup", "tree", &cgroup_shown]]
                .iter()
                .map(|args| output_of("bpftool", args))
                .collect();
        files.insert("bpftool.txt".into(), tail(&bpftool));
        let status = match mesh_agent::status::read(&pin_dir, Some(&cgroup)) {
            Ok(s) => serde_json::to_string_pretty(&s).expect("status serializes"),
            Err(e) => format!("{{\"error\": {:?}}}", e.to_string()),
        };
        files.insert("mesh-status.json".into(), status);
        match &self.site {
            Site::Sandbox(lab) => {
                let run = lab.id().run_dir();
                for (name, file) in
                    [("agent.log", lab_sandbox::lab::AGENT_LOG), ("flows.jsonl", lab_sandbox::lab::FLOW_LOG)]
                {
                    if let Ok(text) = std::fs::read_to_string(run.join(file)) {
                        files.insert(name.into(), tail(&text));
                    }
                }
                for p in lab.pods() {
                    if let Ok(text) = std::fs::read_to_string(lab.log_path(&p.name)) {
                        files.insert(format!("pods/{}.log", p.name), tail(&text));
                    }
                }
            }
            Site::Kubernetes(k) => {
                let logs = format!(
                    "== agent\n{}\n== kubernetes\n{}",
                    k.session.mesh_log("agent"),
                    k.session.mesh_log("kubernetes")
                );
                files.insert("agent.log".into(), tail(&logs));
                for p in k.session.pods() {
                    let mut c = k.session.kubectl();
                    c.args(["logs", &p.name]);
                    let text = c.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
                    files.insert(format!("pods/{}.log", p.name), tail(&text.unwrap_or_default()));
                }
            }
        }
        for p in self.site.pods() {
            let ss = match &self.site {
                // Joined the way the lab joins its pods (a VM's busybox `ip` has no `netns exec`).
                Site::Sandbox(lab) => {
                    let mut cmd = Command::new("ss");
                    cmd.arg("-tnie");
                    match lab.run_status(&p.name, cmd, Duration::from_secs(10), &self.ctx.cancel) {
                        Ok(o) => format!(
                            "$ ss -tnie (in pod {})\n{}{}",
                            p.name,
                            String::from_utf8_lossy(&o.stdout),
                            String::from_utf8_lossy(&o.stderr)
                        ),
                        Err(e) => format!("$ ss -tnie (in pod {})\n(cannot run: {e})\n", p.name),
                    }
                }
                Site::Kubernetes(_) if p.netns.is_empty() => continue,
                Site::Kubernetes(_) => output_of("ip", &["netns", "exec", &p.netns, "ss", "-tnie"]),
            };
            files.insert(format!("pods/{}.ss.txt", p.name), tail(&ss));
        }
        Bundle { files }
    }
}

/// Writes `bundle` under `dir` (`failure/` of a run's results); returns the paths written.
pub fn write(bundle: &Bundle, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (name, text) in &bundle.files {
        // Names are the engine's own; a name that would leave the folder is not written.
        if name.split('/').any(|part| part.is_empty() || part == "..") {
            continue;
        }
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_file_keeps_its_last_lines_and_says_so() {
        let text: String = (0..100_000).map(|i| format!("line {i}\n")).collect();
        let t = tail(&text);
        assert!(t.len() <= MAX_FILE + 64, "{}", t.len());
        assert!(t.starts_with("[... the first "), "{}", &t[..40]);
        assert!(t.ends_with("line 99999\n"));
        // Cut at a line start: the second line is a whole one.
        let second = t.lines().nth(1).unwrap();
        assert!(second.starts_with("line "), "{second}");
        assert_eq!(tail("short\n"), "short\n");
    }

    #[test]
    fn names_that_would_leave_the_folder_are_not_written() {
        let dir = std::env::temp_dir().join(format!("slab-bundle-{}", std::process::id()));
        let bundle = Bundle {
            files: BTreeMap::from([
                ("dmesg.txt".to_owned(), "ok".to_owned()),
                ("pods/a.log".to_owned(), "a".to_owned()),
                ("../escape".to_owned(), "no".to_owned()),
            ]),
        };
        let written = write(&bundle, &dir).unwrap();
        assert_eq!(written, [dir.join("dmesg.txt"), dir.join("pods/a.log")]);
        assert!(!dir.parent().unwrap().join("escape").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
