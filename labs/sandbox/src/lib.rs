//! lab-sandbox: a lab on the running kernel.
//!
//! A [`Lab`] is a sandbox: a cgroup v2 subtree, a node network namespace holding a bridge, and
//! one network namespace per pod wired to that bridge with a veth pair; proxies beside the pods
//! ([`sidecar`]), kube-proxy's rules ([`kube_proxy`]), and the mesh agent process ([`agent`]).
//! All names derive from a [`LabId`], so labs can run side by side; dropping the `Lab` removes
//! everything, and [`clean::leftovers`] finds what a killed lab left behind. Nothing here knows
//! about scenarios (the `lab-scenario` crate runs them against a `Lab`).
pub mod agent;
pub mod cgroup;
pub mod clean;
pub mod error;
pub mod kube_proxy;
pub mod lab;
pub mod netns;
pub mod preflight;
pub mod process;
pub mod sidecar;

pub use error::LabError;
pub use lab::{Lab, LabId, PodSpec};
pub use lab_protocol::Event;
