//! lab-vm: kernel-pinned VMs for the lab.
//!
//! [`catalog`] pins Debian kernels (vm/kernels.toml); [`fetch`] downloads them from the mirror
//! the machine's apt configuration uses ([`mirror`]), verifies and caches them; [`kernel`]
//! extracts vmlinuz, config and modules and resolves module dependencies; [`image`] builds the
//! initramfs (busybox, iproute2/bpftool, the static lab binaries, the modules); [`qemu`] builds
//! the command line; [`machine`] boots, tracks and stops a VM; [`channel`] talks to the guest
//! agent; [`vagrant`] renders a Vagrantfile for laptops.
pub mod catalog;
pub mod channel;
mod error;
pub mod fetch;
pub mod image;
pub mod kernel;
pub mod machine;
pub mod mirror;
pub mod paths;
pub mod qemu;
pub mod vagrant;

pub use error::VmError;
