//! cgroup/getpeername4 and cgroup/getpeername6: a balanced socket's peer is the service address
//! the application connected to, not the backend it reached (`connect.rs` keeps the former in the
//! socket's storage). Without this, an application that checks whom it talks to would see the
//! backend: the mesh would be visible.
//!
//! - Attach: `BPF_CGROUP_INET4_GETPEERNAME` / `BPF_CGROUP_INET6_GETPEERNAME` on the lab's cgroup.
//! - Sockets without storage (not balanced) are left alone. Always returns 1 (the hook cannot
//!   fail the call).
//! - Minimum kernel: 5.8.
//! - Book: `book/src/hooks/connect.md`.
use core::ptr::write_volatile;

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_common::{AF_INET, AF_INET6};

use crate::maps::ORIGINAL_DST;

// ANCHOR: getpeername4
#[cgroup_sock_addr(getpeername4)]
pub fn mesh_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: lookup only (no create); the pointer is this socket's storage.
    let orig = unsafe { ORIGINAL_DST.get_ptr_mut(&ctx) };
    if !orig.is_null() {
        let o = unsafe { *orig };
        if o.family == AF_INET {
            // SAFETY: getpeername4 programs may write the address the call returns.
            unsafe {
                write_volatile(&raw mut (*ctx.sock_addr).user_ip4, o.ip[0]);
                write_volatile(&raw mut (*ctx.sock_addr).user_port, u32::from((o.port as u16).to_be()));
            }
        }
    }
    1
}
// ANCHOR_END: getpeername4

#[cgroup_sock_addr(getpeername6)]
pub fn mesh_getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    let orig = unsafe { ORIGINAL_DST.get_ptr_mut(&ctx) };
    if !orig.is_null() {
        let o = unsafe { *orig };
        if o.family == AF_INET6 {
            // SAFETY: getpeername6 programs may write the address the call returns.
            unsafe {
                for (i, w) in o.ip.iter().enumerate() {
                    write_volatile(&raw mut (*ctx.sock_addr).user_ip6[i], *w);
                }
                write_volatile(&raw mut (*ctx.sock_addr).user_port, u32::from((o.port as u16).to_be()));
            }
        }
    }
    1
}
