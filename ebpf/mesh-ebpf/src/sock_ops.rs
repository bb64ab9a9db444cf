//! sock_ops hook: puts every established TCP socket into the `SOCKETS` sockhash.
//!
//! - Attach: `BPF_CGROUP_SOCK_OPS` on a cgroup v2 directory; runs for TCP sockets created by
//!   processes in that cgroup (or below it), at each state callback.
//! - Callbacks used: `ACTIVE_ESTABLISHED` (connect() completed) and `PASSIVE_ESTABLISHED`
//!   (accept side), for IPv4 and IPv6.
//! - Minimum kernel: 4.13 for sock_ops, 4.18 for sockhash and `bpf_sock_hash_update`.
//! - Kernel config: `CONFIG_BPF_SYSCALL`, `CONFIG_CGROUP_BPF`, `CONFIG_BPF_STREAM_PARSER`.
//! - With sidecars (`SIDECAR` map set), outbound sockets are also filed under the key their
//!   proxy looks up, so the app <-> sidecar loopback hop can be redirected too.
//! - Book: `book/src/hooks/sock_ops.md`.
use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{AF_INET, AF_INET6, Counter, SockKey};

use crate::maps::{SIDECAR_ALIASES, SOCKETS, bump, sidecar_port};

// ANCHOR: entry
#[sock_ops]
pub fn mesh_sockops(ctx: SockOpsContext) -> u32 {
    match try_mesh_sockops(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}
// ANCHOR_END: entry

// ANCHOR: body
fn try_mesh_sockops(ctx: &SockOpsContext) -> Result<(), ()> {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        return Ok(());
    }
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let mut key = sock_key(ctx, family);
    // SAFETY: ctx.ops is the live bpf_sock_ops the kernel handed us.
    let ops = unsafe { &mut *ctx.ops };
    match SOCKETS.update(&mut key, ops, BPF_NOEXIST.into()) {
        Ok(()) => bump(Counter::SocketsInserted),
        Err(_) => bump(Counter::InsertFailed),
    }
    // With sidecars, remember under which key the proxy will look for this application socket
    // (see SockKey::sidecar_alias), so the proxy -> app hop can be redirected too.
    let port = sidecar_port();
    if port != 0
        && op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && key.family == AF_INET
        && key.remote_port != port
    {
        let _ = SIDECAR_ALIASES.insert(&key.sidecar_alias(port), &key, 0);
    }
    Ok(())
}
// ANCHOR_END: body

/// The connection as this socket sees it. The verifier only accepts 4-byte loads of the address
/// fields, so each word is read on its own (volatile keeps LLVM from merging two into one).
#[inline(always)]
fn sock_key(ctx: &SockOpsContext, family: u32) -> SockKey {
    let ops = ctx.ops;
    let (local, remote) = if family == AF_INET {
        ([ctx.local_ip4(), 0, 0, 0], [ctx.remote_ip4(), 0, 0, 0])
    } else {
        let mut local = [0u32; 4];
        let mut remote = [0u32; 4];
        for i in 0..4 {
            // SAFETY: reads of the context the kernel handed us, within the ip6 arrays.
            unsafe {
                local[i] = core::ptr::read_volatile(&raw const (*ops).local_ip6[i]);
                remote[i] = core::ptr::read_volatile(&raw const (*ops).remote_ip6[i]);
            }
        }
        (local, remote)
    };
    // local_port is host byte order; remote_port holds the big-endian port in its upper half.
    SockKey::new(family, local, remote, ctx.local_port(), u32::from_be(ctx.remote_port()))
}
