//! The mesh's kernel programs. One file per hook; the maps they share live in `maps.rs`.
//!
//! Built for `bpfel-unknown-none` by `mesh-agent`'s build.rs (aya-build) and embedded there.
#![no_std]
#![no_main]

mod connect;
mod getpeername;
mod http;
mod ingress;
mod maps;
mod policy;
mod pressure;
mod setsockopt;
mod sk_msg;
mod sock_addr;
mod sock_ops;
mod telemetry;
mod trace;
mod udp;
mod unread;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never run.
    loop {}
}

/// The kernel refuses sockmap helpers to programs that are not GPL-compatible.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
