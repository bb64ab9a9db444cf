//! One module per step kind. Each owns its TOML fields (the struct `do = "<kind>"` parses into),
//! its parse-time checks, what it stores (derived from a typed results struct where the keys are
//! fixed, so the declared keys and the stored ones cannot drift apart) and how it runs on the
//! [`Engine`].
//!
//! Adding a kind: a file here with its struct and an `impl Kind`, and one line in [`kinds!`].
use std::collections::{BTreeMap, BTreeSet};

use super::engine::Engine;
use crate::LabError;

/// The label (result name), explanation and commands to try that most kinds take from their
/// fields of those names.
macro_rules! texts {
    (name $(, $rest:ident)*) => {
        fn label(&self) -> String {
            self.name.clone()
        }
        texts!($($rest),*);
    };
    (explain $(, $rest:ident)*) => {
        fn explain(&self) -> &str {
            &self.explain
        }
        texts!($($rest),*);
    };
    (try) => {
        fn try_(&self) -> &[String] {
            &self.try_
        }
    };
    () => {};
}

pub mod agent;
pub mod apply;
pub mod await_load;
pub mod balance;
pub mod bench;
pub mod compute;
pub mod conform;
pub mod exec;
pub mod expect;
pub mod explain;
pub mod http;
pub mod isolation;
pub mod load;
pub mod mesh;
pub mod policy_scale;
pub mod prometheus;
pub mod service_scale;
pub mod sidecars;
pub mod transfer;

/// What every step kind says and does.
pub trait Kind {
    /// Parse-time checks against the scenario and the steps before this one. The message is
    /// prefixed with the step's number and kind.
    fn check(&self, cx: &mut Checker<'_>) -> Result<(), String>;
    /// Result name -> the keys the step stores under it (what later steps may read). The engine
    /// holds every passed step to it.
    fn stores(&self) -> Vec<(String, Vec<String>)> {
        Vec::new()
    }
    /// The `RESULT.KEY`s the step reads: when a step that stores one was skipped, so is this one.
    fn reads(&self) -> Vec<&str> {
        Vec::new()
    }
    /// How the step is named in events: its result name, or what it does.
    fn label(&self) -> String;
    /// Shown before the step runs (Markdown).
    fn explain(&self) -> &str;
    /// Commands a reader can run after the step (`lab-runner scenario --step` pauses there).
    fn try_(&self) -> &[String] {
        &[]
    }
    fn run(&self, e: &mut Engine<'_>, label: &str) -> Result<Ran, LabError>;
    /// Whether the step can run on a Kubernetes cluster's pods (`[kubernetes]`), where programs
    /// are run with `kubectl exec` and the mesh is a DaemonSet: why not, when it cannot.
    fn on_kubernetes(&self) -> Result<(), String> {
        Err("runs in the lab's own sandbox only, not on Kubernetes".into())
    }
}

/// How a step ended, when it did not end in an error (which ends the scenario).
#[derive(Debug, Clone, PartialEq)]
pub enum Ran {
    Passed,
    /// A check failed: the scenario fails, the next steps run.
    Failed(String),
    /// Something this kernel or machine lacks: the step, and the steps reading its results, are
    /// skipped with the reason.
    Skipped(String),
}

/// A step's results with fixed keys: one `f64` field per key.
pub trait Results {
    /// The keys, in field order.
    const KEYS: &'static [&'static str];
    /// `(key, value, unit)` for every key, in field order.
    fn values(&self) -> Vec<(&'static str, f64, &'static str)>;
    /// [`Self::KEYS`] owned, for [`Kind::stores`].
    fn keys() -> Vec<String> {
        Self::KEYS.iter().map(|k| (*k).to_owned()).collect()
    }
}

/// A results struct: `results! { /// doc  pub struct Name { /// doc  key, key ["unit"], ... } }`.
/// The field names are the stored keys; the optional literal is the unit shown beside the figure.
macro_rules! results {
    ($(#[$meta:meta])* pub struct $name:ident {
        $($(#[$fmeta:meta])* $field:ident $([$unit:literal])?),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: f64,)*
        }
        impl $crate::steps::Results for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            fn values(&self) -> Vec<(&'static str, f64, &'static str)> {
                vec![$((stringify!($field), self.$field, results!(@unit $($unit)?))),*]
            }
        }
    };
    (@unit) => { "" };
    (@unit $u:literal) => { $u };
}
pub(crate) use results;

/// What the checks know while they walk the steps in order.
pub struct Checker<'a> {
    pods: BTreeSet<&'a str>,
    /// Results stored by earlier steps: name -> keys.
    pub results: BTreeMap<String, Vec<String>>,
    /// Names of earlier conform steps (what `compare` may name).
    pub conform_runs: BTreeSet<String>,
    /// Loads started and not yet awaited.
    pub loads: BTreeSet<String>,
}

impl<'a> Checker<'a> {
    pub fn new(pods: impl IntoIterator<Item = &'a str>) -> Checker<'a> {
        Checker {
            pods: pods.into_iter().collect(),
            results: BTreeMap::new(),
            conform_runs: BTreeSet::new(),
            loads: BTreeSet::new(),
        }
    }

    /// `p` is one of the scenario's pods.
    pub fn pod(&self, p: &str) -> Result<(), String> {
        if self.pods.contains(p) {
            return Ok(());
        }
        let known = self.pods.iter().copied().collect::<Vec<_>>().join(", ");
        Err(format!("no pod named {p:?} (pods: {known})"))
    }

    /// `m` is `RESULT.KEY` of an earlier step's result.
    pub fn metric(&self, m: &str) -> Result<(), String> {
        let (name, key) =
            m.rsplit_once('.').ok_or_else(|| format!("metric {m:?} must look like RESULT.KEY"))?;
        match self.results.get(name) {
            Some(keys) if keys.iter().any(|k| k == key) => Ok(()),
            Some(keys) => {
                Err(format!("metric {m:?}: result {name:?} has no {key:?} (it has: {})", keys.join(", ")))
            }
            None => Err(format!(
                "metric {m:?}: no earlier step stores a result named {name:?} (known: {})",
                self.results.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// `port` is 1-65535.
pub fn port(p: u16) -> Result<(), String> {
    if p == 0 { Err("`port` must be 1-65535".into()) } else { Ok(()) }
}

/// `what` is at least 1.
pub fn at_least_one(what: &str, n: u64) -> Result<(), String> {
    if n == 0 { Err(format!("`{what}` must be at least 1")) } else { Ok(()) }
}

// Defaults several kinds share.
fn one() -> f64 {
    1.0
}

fn four() -> u32 {
    4
}

fn thousand() -> u32 {
    1000
}

/// Declares the step kinds: the [`Step`] enum (`do = "<kind>"` picks the variant) and its
/// dispatch to each kind's [`Kind`].
macro_rules! kinds {
    ($($(#[$meta:meta])* $variant:ident($ty:ty) = $name:literal,)*) => {
        /// One step. `do` picks the kind; each kind's fields are its module's struct (the
        /// book's format reference shows them all).
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(tag = "do")]
        pub enum Step {
            $($(#[$meta])* #[serde(rename = $name)] $variant($ty),)*
        }

        impl Step {
            /// The kind's code.
            pub fn get(&self) -> &dyn Kind {
                match self {
                    $(Step::$variant(s) => s,)*
                }
            }
            /// The kind's name, as `do` spells it.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Step::$variant(_) => $name,)*
                }
            }
        }

        /// Every kind's name, in the order `do` lists them.
        pub const KINDS: &[&str] = &[$($name),*];
    };
}

// ANCHOR: steps
kinds! {
    /// Only text.
    Explain(explain::Explain) = "explain",
    /// Data paths measured against each other.
    Bench(bench::Bench) = "bench",
    /// The TCP conformance suite, compared with a reference run.
    Conform(conform::Conform) = "conform",
    /// The same loopback 4-tuple in several pods at once.
    Isolation(isolation::Isolation) = "isolation",
    /// The eBPF mesh on or off.
    Mesh(mesh::Mesh) = "mesh",
    /// Proxies in the data path, or out of it.
    Sidecars(sidecars::Sidecars) = "sidecars",
    /// A command in a pod: its exit code and figures read from its output.
    Exec(exec::Exec) = "exec",
    /// A mesh file applied to the running mesh.
    Apply(apply::Apply) = "apply",
    /// New connections to a service address: which backend each reached.
    Balance(balance::Balance) = "balance",
    /// HTTP requests over one connection.
    Http(http::Http) = "http",
    /// Byte-exact transfers, checked against the flow log.
    Transfer(transfer::Transfer) = "transfer",
    /// A real Prometheus scraping the agent.
    Prometheus(prometheus::Prometheus) = "prometheus",
    /// Request/response traffic in the background.
    Load(load::Load) = "load",
    /// Waits for a load and stores its figures.
    Await(await_load::Await) = "await",
    /// The mesh agent killed or started again.
    Agent(agent::Agent) = "agent",
    /// Connection cost against the number of services, beside kube-proxy's iptables.
    ServiceScale(service_scale::ServiceScale) = "service-scale",
    /// Connection cost against the size of the allow-list.
    PolicyScale(policy_scale::PolicyScale) = "policy-scale",
    /// A figure derived from others.
    Compute(compute::Compute) = "compute",
    /// A check on a figure.
    Expect(expect::Expect) = "expect",
}
// ANCHOR_END: steps

#[cfg(test)]
mod tests {
    use super::*;

    results! {
        /// A test struct.
        pub struct Two {
            /// first
            a,
            b ["ms"],
        }
    }

    #[test]
    fn a_results_struct_stores_exactly_its_keys() {
        assert_eq!(Two::KEYS, ["a", "b"]);
        let v = Two { a: 1.0, b: 2.0 }.values();
        assert_eq!(v, [("a", 1.0, ""), ("b", 2.0, "ms")]);
    }

    #[test]
    fn every_kind_is_listed_once_in_serde_s_spelling() {
        let mut seen = BTreeSet::new();
        for k in KINDS {
            assert!(seen.insert(k), "{k} twice");
            let text = format!("do = \"{k}\"");
            let e = toml::from_str::<Step>(&text).map(|_| ()).unwrap_err().to_string();
            assert!(!e.contains("unknown variant"), "{k}: {e}");
        }
    }
}
