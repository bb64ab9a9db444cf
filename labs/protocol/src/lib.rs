//! What the host and the guest say to each other, and the types both sides of that conversation
//! share: a scenario's [`Options`], its [`Event`]s and [`Outcome`], the [`Cancel`] flag every
//! wait honours, and the [`wire`] format of the `lab.control` port.
//!
//! No kernel and no eBPF in here: the VM crate speaks to the guest through this crate alone, so
//! building it never builds the mesh.
mod event;
pub mod nan;
pub mod wire;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

pub use event::{Event, Pod};
use serde::{Deserialize, Serialize};

/// Set from a signal handler (Ctrl-C, SIGTERM); every wait in the lab gives up when it is set.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// What [`Cancel::check`] returns once cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cancelled;

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("cancelled")
    }
}

impl std::error::Error for Cancelled {}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// `Err(Cancelled)` once cancelled.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() { Err(Cancelled) } else { Ok(()) }
    }
}

/// Who loads the redirect's sock_ops and sk_msg programs; the rest of the mesh is aya's either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// The Rust programs of mesh-ebpf, loaded by aya.
    #[default]
    Aya,
    /// The C twin (ebpf/mesh-c, CO-RE), loaded by libbpf through libbpf-rs skeletons.
    Libbpf,
}

impl Engine {
    pub const fn name(self) -> &'static str {
        match self {
            Engine::Aya => "aya",
            Engine::Libbpf => "libbpf",
        }
    }
}

/// Request and response size of a latency run when none is asked for (the rr client's default).
pub const DEFAULT_SIZE: usize = 64;

/// Knobs shared by scenarios.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Options {
    /// Measured round trips per latency run (a bench step may set its own).
    pub round_trips: u64,
    /// Measured repetitions of each bench step (a step may set its own).
    #[serde(default = "default_repetitions")]
    pub repetitions: u32,
    /// Pin benchmark clients to the first CPU and servers to the last (`taskset`-style).
    #[serde(default)]
    pub pin: bool,
    /// Request and response size in bytes.
    pub size: usize,
    /// Connections in the conformance suite's `short-lived` case (a step may set its own).
    #[serde(default = "default_short_lived")]
    pub short_lived: u32,
    /// Who loads the redirect's programs whenever the mesh starts (a bench path may name its
    /// own): aya (the Rust programs) or libbpf (their C twin).
    #[serde(default)]
    pub engine: Engine,
}

fn default_repetitions() -> u32 {
    10
}

fn default_short_lived() -> u32 {
    10_000
}

impl Default for Options {
    fn default() -> Self {
        Options {
            round_trips: 2_000,
            repetitions: default_repetitions(),
            pin: false,
            size: DEFAULT_SIZE,
            short_lived: default_short_lived(),
            engine: Engine::Aya,
        }
    }
}

/// What a scenario concluded. `R` is the engine's report: typed where the engine runs and where
/// `lab-runner` renders it (`lab_scenario::Report`), JSON while it crosses the wire (this crate
/// knows no mesh types).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome<R = serde_json::Value> {
    pub scenario: String,
    pub kernel: String,
    pub passed: bool,
    /// Why it failed (empty when passed).
    pub failures: Vec<String>,
    /// Set when the kernel lacks something the scenario requires: nothing ran.
    #[serde(default)]
    pub skipped: Option<String>,
    /// Set when a step could not run at all (a program that would not start, a command that
    /// failed): the run failed as a backend failure, with its report so far (also among
    /// `failures`).
    #[serde(default)]
    pub error: Option<String>,
    /// The scenario's own figures (the engine's report).
    pub report: R,
}

impl<R> Outcome<R> {
    /// The same outcome with its report converted (to JSON for the wire, or back).
    pub fn try_map<S, E>(self, f: impl FnOnce(R) -> Result<S, E>) -> Result<Outcome<S>, E> {
        let Outcome { scenario, kernel, passed, failures, skipped, error, report } = self;
        Ok(Outcome { scenario, kernel, passed, failures, skipped, error, report: f(report)? })
    }
}

/// An error and its sources on one line: `outer: inner: innermost`.
/// Where the lab keeps downloads and builds, per user: `$XDG_CACHE_HOME/sidecarless-lab`, else
/// `~/.cache/sidecarless-lab` (kernels, images, the Kubernetes build).
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::path::PathBuf::from("/tmp"))
        .join("sidecarless-lab")
}

pub fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
