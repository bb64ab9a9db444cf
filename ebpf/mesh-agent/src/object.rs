//! The compiled kernel programs, embedded at build time (see build.rs).

/// The `mesh-ebpf` ELF object, 8-byte aligned as the ELF parser wants it. Empty when the crate
/// was built with `AYA_BUILD_SKIP=1`.
pub static MESH_EBPF: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-ebpf"));

/// Whether this build carries the real object rather than the `AYA_BUILD_SKIP` stub.
pub fn is_real() -> bool {
    !MESH_EBPF.is_empty()
}
