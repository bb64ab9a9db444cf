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
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_common::{AF_INET, AF_INET6};

use crate::{
    maps::ORIGINAL_DST,
    sock_addr::{self, Addr},
};

#[cgroup_sock_addr(getpeername4)]
pub fn mesh_getpeername4(ctx: SockAddrContext) -> i32 {
    answer_service(&ctx, AF_INET)
}

#[cgroup_sock_addr(getpeername6)]
pub fn mesh_getpeername6(ctx: SockAddrContext) -> i32 {
    answer_service(&ctx, AF_INET6)
}

// ANCHOR: getpeername4
/// A balanced socket's peer is the service it asked for.
#[inline(always)]
fn answer_service(ctx: &SockAddrContext, family: u32) -> i32 {
    // SAFETY: lookup only (no create); the pointer is this socket's storage.
    let orig = unsafe { ORIGINAL_DST.get_ptr_mut(ctx) };
    if !orig.is_null() {
        // SAFETY: non-null: this socket's storage, written whole by `remember` (a plain copy).
        let o = unsafe { *orig };
        if o.family == family {
            sock_addr::write(ctx, &Addr { ip: o.ip, port: o.port, family });
        }
    }
    1
}
// ANCHOR_END: getpeername4
