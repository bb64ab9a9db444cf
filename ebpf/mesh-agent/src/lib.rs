//! mesh-agent: the per-node side of the sidecarless mesh.
//!
//! [`Mesh::start`] loads the kernel programs embedded from `mesh-ebpf`, attaches them to a
//! cgroup v2 directory (sk_msg to the sockhash), and pins maps and links under a bpffs directory
//! ([`pins`]), or adopts what a previous agent pinned there. [`Pinned`] opens a running mesh's
//! maps from the pins (counters, services), from any process; [`Mesh::stop`] (or drop)
//! detaches the programs and removes the pins. With [`Engine::Libbpf`] the redirect's two
//! programs come from the C twin instead ([`twin`]).
pub mod cli;
pub mod control;
pub mod denials;
pub mod engines;
mod error;
pub mod flows;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
mod mesh;
pub mod meshfile;
pub mod metrics;
pub mod mounts;
pub mod object;
pub mod observe;
pub mod pins;
pub mod policy;
pub mod probe;
pub mod services;
pub mod status;
pub mod sys;
pub mod toml_span;
pub mod tracepoint;
pub mod twin;

pub use error::MeshError;
pub use mesh::{Counters, Engine, Mesh, Started, Variant};
pub use pins::Pinned;
