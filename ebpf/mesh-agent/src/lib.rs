//! mesh-agent: the per-node side of the sidecarless mesh.
//!
//! [`Mesh::start`] loads the kernel programs embedded from `mesh-ebpf`, attaches sock_ops to a
//! cgroup v2 directory and sk_msg to the sockhash, and pins the maps under a bpffs directory.
//! [`Mesh::counters`] reads what the programs counted; [`Mesh::stop`] (or drop) detaches the
//! programs and removes the pins.
mod error;
mod mesh;
pub mod meshfile;
pub mod mounts;
pub mod object;
pub mod probe;
pub mod services;
pub mod toml_span;

pub use error::MeshError;
pub use mesh::{Counters, Mesh, Variant};
