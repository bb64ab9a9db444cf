//! The scenario file format (scenarios/*.toml). Errors name the file, the line and what was
//! expected; a scenario that parses is also checked for references to undefined pods and
//! results before anything runs.
use std::collections::{BTreeMap, BTreeSet};

use mesh_agent::toml_span::{line_of, locate, subject};

use super::steps::Checker;
pub use super::steps::Step;
use serde::{Deserialize, Serialize};

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub summary: String,
    #[serde(default)]
    pub requires: Requires,
    pub pods: Vec<PodDef>,
    pub steps: Vec<toml::Spanned<Step>>,
    /// Files the scenario's programs read (a server's configuration, a client's script), by
    /// name: written into the lab's run folder when the lab comes up; `<file:NAME>` in a command
    /// is the file's path. They travel inside the scenario, so a VM gets them too.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The text of every mesh file an `apply` step names by path, read when the scenario is
    /// loaded ([`super::load`]) and sent with it, so a VM applies the file the user has on the
    /// host. Keyed by the step's `file`; shipped mesh files (`mesh/NAME.toml`) are not here.
    #[serde(skip)]
    pub mesh_files: BTreeMap<String, String>,
    /// Run on the Kubernetes cluster of this machine (`lab-runner cluster`) instead of in the
    /// lab's sandbox: the scenario's pods are pods its manifests make.
    #[serde(default)]
    pub kubernetes: Option<Kubernetes>,
}

/// `[kubernetes]`: the manifests a scenario applies to the cluster when it starts (and deletes
/// when it ends). Its `[[pods]]` name pods those manifests make, in namespace `default`; the
/// programs in them are the manifests' (a pod of the scenario has no `workload`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Names of `[files]` holding manifests, applied in this order.
    pub manifests: Vec<String>,
}

/// What the kernel must offer; anything missing turns the scenario into a skip with the reason.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Requires {
    /// Minimum kernel version, `"4.18"`.
    #[serde(default)]
    pub kernel: Option<String>,
    /// Program types (`sock_ops`, `sk_msg`, ...), probed by loading a minimal program.
    #[serde(default)]
    pub programs: Vec<String>,
    /// Map types (`sockhash`, ...), probed by creating a minimal map.
    #[serde(default)]
    pub maps: Vec<String>,
    /// Kernel config options that must be `y` or `m`.
    #[serde(default)]
    pub config: Vec<String>,
    /// Programs that must be installed (`iptables`).
    #[serde(default)]
    pub tools: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodDef {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Started when the lab comes up.
    #[serde(default)]
    pub workload: Option<WorkloadDef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum WorkloadDef {
    /// `workload rr-server`: answers rr requests.
    RrServer { port: u16 },
    /// `workload echo`.
    Echo { port: u16 },
    /// `workload conform-server`: the server side of the TCP conformance suite.
    ConformServer { port: u16 },
    /// `workload http-server`: 200 OK to every HTTP/1.1 request.
    HttpServer { port: u16 },
    /// `workload transfer-server`: reads to the end, answers with the bytes asked for.
    TransferServer { port: u16 },
    /// Any program (a real server: sockperf, iperf3, redis-server, ...), started with
    /// `command` in the pod and ready once `port` accepts connections.
    Command { port: u16, command: Vec<String> },
}

impl WorkloadDef {
    /// The port the workload listens on.
    pub fn port(&self) -> u16 {
        match self {
            WorkloadDef::RrServer { port }
            | WorkloadDef::Echo { port }
            | WorkloadDef::ConformServer { port }
            | WorkloadDef::HttpServer { port }
            | WorkloadDef::TransferServer { port }
            | WorkloadDef::Command { port, .. } => *port,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

impl Family {
    /// As scenario files and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnOff {
    On,
    Off,
}

pub use lab_sandbox::sidecar::SidecarMode;

pub use crate::stats::Op;

/// Whether a failed expectation fails the scenario.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Check,
    /// A figure to report against a target, not a pass condition (machines are noisy).
    Benchmark,
}

/// Pods a lab can hold: one address each in 10.77.0.10-10.77.0.249.
pub const MAX_PODS: usize = 240;
/// Longest pod name: it becomes part of namespace, cgroup and veth names (`v-<pod>` fits
/// IFNAMSIZ).
pub const MAX_POD_NAME: usize = 12;

/// A scenario file that cannot be used: where, and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl Scenario {
    /// Parses and checks a scenario file.
    pub fn parse(text: &str, file: &str) -> Result<Scenario, SpecError> {
        let sc: Scenario = toml::from_str(text).map_err(|e| {
            let message = e.message().trim().to_owned();
            let line = e.span().map_or(1, |s| locate(text, s, subject(&message).as_deref()));
            SpecError { file: file.to_owned(), line, message }
        })?;
        sc.check(text, file)?;
        Ok(sc)
    }

    /// Pod names become namespace, cgroup and interface names, and each pod one address.
    fn check_pods(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let at = |needle: &str, nth: usize| {
            let line = text.match_indices(needle).nth(nth).map_or(1, |(i, _)| line_of(text, i));
            move |message: String| SpecError { file: file.to_owned(), line, message }
        };
        if self.pods.len() > MAX_PODS {
            let e = at("[[pods]]", MAX_PODS);
            return Err(e(format!(
                "{} pods: the lab's address plan (10.77.0.10-10.77.0.249) holds at most {MAX_PODS}",
                self.pods.len()
            )));
        }
        let mut seen = BTreeSet::new();
        for (k, p) in self.pods.iter().enumerate() {
            let quoted = format!("\"{}\"", p.name);
            let e = at(&quoted, usize::from(seen.contains(p.name.as_str())));
            let valid = p.name.len() <= MAX_POD_NAME
                && p.name.starts_with(|c: char| c.is_ascii_lowercase())
                && p.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !valid {
                return Err(e(format!(
                    "pod name {quoted}: expected 1 to {MAX_POD_NAME} characters a-z, 0-9 or '-', starting with a letter"
                )));
            }
            if p.name == lab_sandbox::lab::NODE {
                return Err(e(format!("pod name {quoted} is reserved for the node itself")));
            }
            if !seen.insert(p.name.as_str()) {
                return Err(e(format!("pod name {quoted} is used twice")));
            }
            if p.workload.as_ref().is_some_and(|w| w.port() == 0) {
                return Err(e(format!("pod {quoted}: workload port must be 1-65535")));
            }
            if let Some(WorkloadDef::Command { command, .. }) = &p.workload
                && command.is_empty()
            {
                // The line of the pod's `command =`, after its `[[pods]]` header.
                let from = text.match_indices("[[pods]]").nth(k).map_or(0, |(i, _)| i);
                let line = text[from..].find("command").map_or(1, |i| line_of(text, from + i));
                return Err(SpecError {
                    file: file.to_owned(),
                    line,
                    message: format!(
                        "pod {quoted}: a command workload needs a non-empty `command` (the program, then its arguments)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// File names become paths in the lab's run folder; every `<file:NAME>` names one of them.
    fn check_files(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let at = |needle: &str, message: String| {
            let line = text.find(needle).map_or(1, |i| line_of(text, i));
            SpecError { file: file.to_owned(), line, message }
        };
        for name in self.files.keys() {
            let valid = !name.is_empty()
                && name.len() <= 64
                && !name.starts_with('.')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(at(
                    name,
                    format!(
                        "file name {name:?}: expected 1 to 64 characters a-z, A-Z, 0-9, '.', '_' or '-', not starting with '.'"
                    ),
                ));
            }
        }
        for (i, _) in text.match_indices("<file:") {
            let name: String = text[i + 6..].chars().take_while(|&c| c != '>' && c != '\n').collect();
            if !self.files.contains_key(&name) {
                let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                return Err(SpecError {
                    file: file.to_owned(),
                    line: line_of(text, i),
                    message: format!("<file:{name}>: no such file in [files] (known: {known})"),
                });
            }
        }
        Ok(())
    }

    /// A Kubernetes scenario's manifests are among its files, and its pods run what the
    /// manifests say.
    fn check_kubernetes(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let Some(k) = &self.kubernetes else { return Ok(()) };
        let at = |needle: &str, message: String| {
            let line = text.find(needle).map_or(1, |i| line_of(text, i));
            SpecError { file: file.to_owned(), line, message }
        };
        if k.manifests.is_empty() {
            return Err(at(
                "[kubernetes]",
                "[kubernetes] manifests: name at least one file of [files]".into(),
            ));
        }
        if let Some(m) = k.manifests.iter().find(|m| !self.files.contains_key(*m)) {
            let known: Vec<&str> = self.files.keys().map(String::as_str).collect();
            return Err(at(
                &format!("\"{m}\""),
                format!("[kubernetes] manifest {m:?}: no such file in [files] (known: {})", known.join(", ")),
            ));
        }
        if let Some(p) = self.pods.iter().find(|p| p.workload.is_some()) {
            return Err(at(
                &format!("\"{}\"", p.name),
                format!(
                    "pod \"{}\": on Kubernetes a pod runs what its manifest says; drop `workload`",
                    p.name
                ),
            ));
        }
        Ok(())
    }

    /// A misspelt requirement is the file's mistake, not a missing kernel feature: refuse it
    /// instead of skipping the scenario for it.
    fn check_requires(&self, text: &str, file: &str) -> Result<(), SpecError> {
        let err = |needle: &str, message: String| {
            let line = text.find(needle).map_or(1, |i| line_of(text, i));
            SpecError { file: file.to_owned(), line, message }
        };
        let r = &self.requires;
        if let Some(p) = r.programs.iter().find(|p| !mesh_agent::probe::PROGRAMS.iter().any(|(n, _)| n == p))
        {
            let known = mesh_agent::probe::PROGRAMS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(err(
                &format!("\"{p}\""),
                format!("[requires] unknown program type \"{p}\" (known: {known})"),
            ));
        }
        if let Some(m) = r.maps.iter().find(|m| !mesh_agent::probe::MAPS.iter().any(|(n, _)| n == m)) {
            let known = mesh_agent::probe::MAPS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ");
            return Err(err(
                &format!("\"{m}\""),
                format!("[requires] unknown map type \"{m}\" (known: {known})"),
            ));
        }
        if let Some(c) = r.config.iter().find(|c| !c.starts_with("CONFIG_")) {
            return Err(err(
                &format!("\"{c}\""),
                format!("[requires] config \"{c}\": expected a name like CONFIG_BPF_SYSCALL"),
            ));
        }
        if let Some(k) = &r.kernel {
            let parts: Vec<&str> = k.split('.').collect();
            if !(2..=3).contains(&parts.len())
                || parts.iter().any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
            {
                return Err(err(
                    &format!("\"{k}\""),
                    format!("[requires] kernel \"{k}\": expected a version like \"5.10\""),
                ));
            }
        }
        Ok(())
    }

    /// References: pods exist, metrics name results of earlier steps; each step kind checks its
    /// own fields ([`Kind::check`]).
    fn check(&self, text: &str, file: &str) -> Result<(), SpecError> {
        self.check_requires(text, file)?;
        self.check_pods(text, file)?;
        self.check_files(text, file)?;
        self.check_kubernetes(text, file)?;
        let mut cx = Checker::new(self.pods.iter().map(|p| p.name.as_str()));
        for (i, step) in self.steps.iter().enumerate() {
            let s = step.get_ref();
            let on_kubernetes = || if self.kubernetes.is_some() { s.get().on_kubernetes() } else { Ok(()) };
            on_kubernetes().and_then(|()| s.get().check(&mut cx)).map_err(|m| {
                let message = format!("step {} ({}): {m}", i + 1, s.kind());
                let line = locate(text, step.span(), subject(&message).as_deref());
                SpecError { file: file.to_owned(), line, message }
            })?;
            cx.results.extend(s.get().stores());
        }
        if let Some(l) = cx.loads.first() {
            let line = text.find(&format!("\"{l}\"")).map_or(1, |i| line_of(text, i));
            return Err(SpecError {
                file: file.to_owned(),
                line,
                message: format!("load {l:?} is never awaited (add a step: do = \"await\", load = {l:?})"),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared with the CLI tests (tests/cli.rs), which assert the same messages end to end.
    const GOOD: &str = include_str!("testdata/two-pods.toml");

    #[test]
    fn parses_a_good_file() {
        let s = Scenario::parse(GOOD, "t.toml").unwrap();
        assert_eq!(s.steps.len(), 2);
        assert!(matches!(s.steps[1].get_ref(), Step::Expect(x) if x.op == Op::Gt));
    }

    fn err(text: &str) -> String {
        Scenario::parse(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn a_typo_in_a_key_names_file_line_and_the_expected_keys() {
        let e = err(&GOOD.replace("from = \"a\"", "form = \"a\""));
        assert!(e.starts_with("t.toml:12: unknown field `form`, expected one of"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_file_and_line() {
        let e = err(&GOOD.replace("port = 7000\n\n[[steps]]", "port = \"seven\"\n\n[[steps]]"));
        assert!(e.starts_with("t.toml:14: invalid type: string \"seven\", expected u16"), "{e}");
    }

    #[test]
    fn an_unknown_step_names_the_known_ones() {
        let e = err(&GOOD.replace("do = \"expect\"", "do = \"expekt\""));
        assert!(
            e.starts_with("t.toml:17: unknown variant `expekt`, expected one of `explain`, `bench`"),
            "{e}"
        );
    }

    #[test]
    fn references_are_checked() {
        let e = err(&GOOD.replace("to = \"b\"", "to = \"c\""));
        assert!(e.starts_with("t.toml:13: step 1 (bench): no pod named \"c\""), "{e}");
        let e = err(&GOOD.replace("metric = \"direct.p50\"", "metric = \"sidecars.p50\""));
        assert!(e.starts_with("t.toml:18: step 2 (expect): metric \"sidecars.p50\": no earlier step stores a result named \"sidecars\""), "{e}");
        let e = err(&GOOD.replace("metric = \"direct.p50\"", "metric = \"direct.p42\""));
        assert!(e.contains("has no \"p42\""), "{e}");
    }

    #[test]
    fn bad_pods_and_ports_name_file_and_line() {
        let e = err(&GOOD.replace("name = \"b\"", "name = \"node\""));
        assert!(e.starts_with("t.toml:") && e.contains("\"node\" is reserved"), "{e}");
        let e = err(&GOOD.replace("name = \"b\"", "name = \"a\""));
        assert!(e.contains("pod name \"a\" is used twice"), "{e}");
        let e = err(&GOOD.replace("name = \"b\"", "name = \"with space\""));
        assert!(e.contains("expected 1 to 12 characters"), "{e}");
        let e = err(&GOOD.replace("name = \"b\"", "name = \"thirteen-char\""));
        assert!(e.contains("expected 1 to 12 characters"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n\n[[steps]]", "port = 0\n\n[[steps]]"));
        assert!(e.starts_with("t.toml:") && e.contains("`port` must be 1-65535"), "{e}");
        let many: String = (0..241).map(|i| format!("[[pods]]\nname = \"p{i}\"\n")).collect();
        let text = format!("name = \"x\"\nsummary = \"x\"\nsteps = []\n{many}");
        let e = err(&text);
        assert!(e.contains("241 pods") && e.contains("at most 240"), "{e}");
    }

    #[test]
    fn bench_paths_and_measures_are_checked() {
        let e = err(&GOOD.replace("{ name = \"direct\" }", "{ name = \"di.rect\" }"));
        assert!(
            e.starts_with("t.toml:11: step 1 (bench): path name \"di.rect\": expected a name without dots"),
            "{e}"
        );
        let e = err(&GOOD.replace("paths = [{ name = \"direct\" }]", "paths = []"));
        assert!(e.contains("at least one entry in `paths`, and one in `measures` or `tools`"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n", "port = 7000\nmeasures = []\n"));
        assert!(e.contains("at least one entry in `paths`, and one in `measures` or `tools`"), "{e}");
        let e = err(&GOOD.replace("{ name = \"direct\" }", "{ name = \"direct\", mesh = \"yes\" }"));
        assert!(e.starts_with("t.toml:11: unknown variant `yes`, expected `on` or `off`"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n", "port = 7000\nmeasures = [\"latency-1k\"]\n"));
        assert!(e.contains("unknown variant `latency-1k`, expected one of `latency`, `latency-4k`"), "{e}");
        let e = err(&GOOD.replace("port = 7000\n", "port = 7000\nrepetitions = 0\n"));
        assert!(e.contains("`repetitions` must be at least 1"), "{e}");
        let twice = GOOD
            .replace("{ name = \"direct\" }", "{ name = \"direct\" }, { name = \"direct\", mesh = \"on\" }");
        assert!(
            err(&twice).contains("path name \"direct\": an earlier step already stores results under it")
        );
    }

    #[test]
    fn figures_need_a_regex_that_compiles_and_captures() {
        let exec = "[[steps]]\ndo = \"exec\"\nname = \"e\"\npod = \"a\"\ncommand = [\"true\"]\n";
        let bad = format!("{GOOD}\n{exec}figures = {{ x = {{ regex = '([0-9' }} }}\n");
        let e = err(&bad);
        assert!(e.contains("step 3 (exec): figure \"x\": `regex` does not compile"), "{e}");
        let bad = format!("{GOOD}\n{exec}figures = {{ x = {{ regex = '[0-9]+' }} }}\n");
        assert!(err(&bad).contains("needs a capture group"));
        let good = format!("{GOOD}\n{exec}figures = {{ x = {{ regex = '([0-9]+) ops' }} }}\n");
        Scenario::parse(&good, "t.toml").unwrap();
    }

    #[test]
    fn a_command_workload_needs_a_program() {
        let pod = "[[pods]]\nname = \"c\"\nworkload = { kind = \"command\", port = 80, command = [] }\n";
        let text = format!("{GOOD}\n{pod}");
        let line = text.lines().position(|l| l.contains("command = []")).unwrap() + 1;
        assert_eq!(
            err(&text),
            format!(
                "t.toml:{line}: pod \"c\": a command workload needs a non-empty `command` (the program, then its arguments)"
            )
        );
    }

    #[test]
    fn files_are_named_plainly_and_every_file_placeholder_names_one() {
        let exec =
            "[[steps]]\ndo = \"exec\"\nname = \"x\"\npod = \"a\"\ncommand = [\"cat\", \"<file:a.conf>\"]\n";
        let good = format!("{GOOD}\n{exec}\n[files]\n\"a.conf\" = \"x\"\n");
        Scenario::parse(&good, "t.toml").unwrap();
        let e = err(&format!("{GOOD}\n{exec}"));
        let line = format!("{GOOD}\n{exec}").lines().position(|l| l.contains("<file:")).unwrap() + 1;
        assert_eq!(e, format!("t.toml:{line}: <file:a.conf>: no such file in [files] (known: none)"));
        let e = err(&format!("{GOOD}\n{exec}\n[files]\n\"../a.conf\" = \"x\"\n"));
        assert!(e.contains("file name \"../a.conf\": expected 1 to 64 characters"), "{e}");
    }

    #[test]
    fn a_typo_in_requires_is_the_file_s_error() {
        let with = |req: &str| format!("{GOOD}\n{req}\n");
        let line = GOOD.lines().count() + 3;
        let e = err(&with("[requires]\nprograms = [\"sock_opz\"]"));
        let want = format!("t.toml:{line}: [requires] unknown program type \"sock_opz\" (known: sock_ops");
        assert!(e.starts_with(&want), "{e}");
        let e = err(&with("[requires]\nmaps = [\"sockhsah\"]"));
        assert!(e.contains("unknown map type \"sockhsah\""), "{e}");
        let e = err(&with("[requires]\nkernel = \"5.1O\""));
        let want = format!("t.toml:{line}: [requires] kernel \"5.1O\": expected a version");
        assert!(e.starts_with(&want), "{e}");
        let e = err(&with("[requires]\nconfig = [\"BPF_SYSCALL\"]"));
        assert!(e.contains("expected a name like CONFIG_BPF_SYSCALL"), "{e}");
    }

    #[test]
    fn expect_reads_exactly_what_a_step_stores() {
        let with = |steps: &str| format!("{GOOD}\n{steps}");
        let conform = "[[steps]]\ndo = \"conform\"\nname = \"c\"\nfrom = \"a\"\nto = \"b\"\nport = 7000\n";
        let expect =
            |m: &str| format!("[[steps]]\ndo = \"expect\"\nmetric = \"{m}\"\nop = \"==\"\nvalue = 0\n");
        Scenario::parse(&with(&format!("{conform}{}", expect("c.kernel_bugs"))), "t.toml").unwrap();
        let iso = "[[steps]]\ndo = \"isolation\"\nname = \"i\"\npods = [\"a\", \"b\"]\n";
        Scenario::parse(&with(&format!("{iso}{}", expect("i.early_eagain"))), "t.toml").unwrap();
        // What an agent step stores depends on its action: a kill stores no `links`.
        let agent =
            |action: &str| format!("[[steps]]\ndo = \"agent\"\nname = \"g\"\naction = \"{action}\"\n");
        Scenario::parse(&with(&format!("{}{}", agent("start"), expect("g.links"))), "t.toml").unwrap();
        let e = err(&with(&format!("{}{}", agent("kill"), expect("g.links"))));
        assert!(e.contains("result \"g\" has no \"links\" (it has: killed)"), "{e}");
    }

    #[test]
    fn the_shipped_scenarios_parse() {
        for (file, text) in super::super::BUILTIN {
            Scenario::parse(text, file).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
