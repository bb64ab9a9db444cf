//! lab-node: one lab node on one kernel.
//!
//! A [`Lab`] is a sandbox on the running kernel: a cgroup v2 subtree, a node network namespace
//! holding a bridge, and one network namespace per pod wired to that bridge with a veth pair. All
//! names derive from a [`LabId`], so labs can run side by side; dropping the `Lab` removes
//! everything, and [`clean::leftovers`] finds what a killed lab left behind.
//!
//! Scenarios run against a `Lab` and report through [`Event`]s; they never print.
pub mod agent;
pub mod cgroup;
pub mod clean;
pub mod error;
pub mod guest;
pub mod kube_proxy;
pub mod lab;
pub mod netns;
pub mod preflight;
pub mod process;
pub mod scenario;
pub mod sidecar;

pub use error::LabError;
pub use lab::{Lab, LabId, PodSpec};
pub use lab_protocol::Event;
