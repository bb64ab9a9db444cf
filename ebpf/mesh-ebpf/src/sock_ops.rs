//! sock_ops hook: puts every established TCP socket into the `SOCKETS` sockhash, and takes
//! sockets out again where the kernel's redirect would change what the application sees.
//!
//! - Attach: `BPF_CGROUP_SOCK_OPS` on a cgroup v2 directory; runs for TCP sockets created by
//!   processes in that cgroup (or below it), at each state callback.
//! - Callbacks used: `ACTIVE_ESTABLISHED` (connect() completed) and `PASSIVE_ESTABLISHED`
//!   (accept side), for IPv4 and IPv6: insert. `TCP_CONNECT` (before the SYN leaves): note the
//!   connection in `MESH_CONNECTS` for the receiving pod's ingress check. `STATE_CB` (enabled per socket with
//!   `bpf_sock_ops_cb_flags_set`): on a half-close before any byte was redirected to the socket,
//!   take it out of the map (see `book/src/hooks/redirect-changes.md`); on close, forget it.
//! - Two builds of the same body: `mesh_sockops` keys sockets by network namespace too
//!   (`bpf_get_netns_cookie`, sock_ops since 5.15); `mesh_sockops_nocookie` is for older kernels
//!   and leaves loopback-to-loopback sockets out instead.
//! - Minimum kernel: 4.13 for sock_ops, 4.18 for sockhash and `bpf_sock_hash_update`.
//! - Kernel config: `CONFIG_BPF_SYSCALL`, `CONFIG_CGROUP_BPF`, `CONFIG_INET`.
//! - With sidecars (`SIDECAR` map set), outbound sockets are also filed under the key their
//!   proxy looks up, so the app <-> sidecar loopback hop can be redirected too.
//! - Book: `book/src/hooks/sock_ops.md`.
use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
        BPF_TCP_ESTABLISHED, BPF_TCP_FIN_WAIT1,
    },
    helpers::{bpf_get_netns_cookie, bpf_getsockopt},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{AF_INET, AF_INET6, Counter, SockKey, SockPolicy, SockState};

use crate::maps::{
    MESH_CONNECTS, SIDECAR_ALIASES, SOCK_POLICY, SOCK_STATE, SOCKETS, UNREAD, bump, remove_socket,
    sidecar_port, sock_state,
};

const SOL_SOCKET: i32 = 1;
const SO_RCVLOWAT: i32 = 18;

// ANCHOR: entry
#[sock_ops]
pub fn mesh_sockops(ctx: SockOpsContext) -> u32 {
    match try_mesh_sockops::<true>(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}

/// The same for kernels before 5.15, whose sock_ops cannot read the netns cookie.
#[sock_ops]
pub fn mesh_sockops_nocookie(ctx: SockOpsContext) -> u32 {
    match try_mesh_sockops::<false>(&ctx) {
        Ok(()) | Err(()) => 0,
    }
}
// ANCHOR_END: entry

// ANCHOR: body
fn try_mesh_sockops<const NETNS: bool>(ctx: &SockOpsContext) -> Result<(), ()> {
    let op = ctx.op();
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let key = sock_key::<NETNS>(ctx, family);
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            insert::<NETNS>(ctx, op, key)
        }
        BPF_SOCK_OPS_STATE_CB => {
            state_changed(&key, ctx.arg(0), ctx.arg(1));
            Ok(())
        }
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            // The SYN is about to leave: the receiving pod's ingress check may ask whether a
            // lab process opened this connection (it sees addresses, not namespaces).
            let _ = MESH_CONNECTS.insert(&SockKey { netns: 0, ..key }, &1, 0);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn insert<const NETNS: bool>(ctx: &SockOpsContext, op: u32, mut key: SockKey) -> Result<(), ()> {
    if !NETNS && key.is_loopback() {
        // Without the netns cookie, 127.0.0.1:a -> 127.0.0.1:b in one pod has the same key as
        // in every other pod: redirecting it could hand one pod's bytes to another.
        bump(Counter::LoopbackSkipped);
        return Ok(());
    }
    // A socket with SO_RCVLOWAT (set before connect(), or inherited from its listener) would
    // see it ignored for redirected bytes. Kernels before 6.1 cannot answer SOL_SOCKET here
    // (the call fails); there setsockopt.rs still catches the option set after connect().
    let mut lowat: i32 = 0;
    // SAFETY: ctx.ops is the live context; lowat is a live i32 of the size passed.
    let got = unsafe { bpf_getsockopt(ctx.ops.cast(), SOL_SOCKET, SO_RCVLOWAT, (&raw mut lowat).cast(), 4) };
    if got == 0 && lowat > 1 {
        bump(Counter::RcvlowatTcp);
        return Ok(());
    }
    // SAFETY: ctx.ops is the live bpf_sock_ops the kernel handed us.
    let ops = unsafe { &mut *ctx.ops };
    if SOCKETS.update(&mut key, ops, BPF_NOEXIST.into()).is_err() {
        bump(Counter::InsertFailed);
        return Ok(());
    }
    bump(Counter::SocketsInserted);
    // Which end this is, for sk_msg's policy check (judged as client -> server's port).
    let flags = if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB { SockPolicy::PASSIVE } else { 0 };
    let _ = SOCK_POLICY.insert(&key, &SockPolicy { flags, ..SockPolicy::default() }, 0);
    // Ask for state callbacks on this socket: half-close and close are handled above.
    let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    // With sidecars, remember under which key the proxy will look for this application socket
    // (see SockKey::sidecar_alias), so the proxy -> app hop can be redirected too. Only for a
    // socket that really is in the map.
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

// ANCHOR: state
/// `old -> new` TCP state of a socket in the map.
fn state_changed(key: &SockKey, old: u32, new: u32) {
    if old == BPF_TCP_ESTABLISHED && new == BPF_TCP_FIN_WAIT1 && sock_state(key) & SockState::RECEIVED == 0 {
        // This socket sent its FIN (shutdown(SHUT_WR) or close()). A blocking read on it would
        // now run tcp_bpf_recvmsg, which returns EAGAIN when the ACK of that FIN wakes it with
        // no data. Nothing was ever redirected to it, so its redirect queue is empty and it can
        // leave the map without losing a byte: from here on it reads through plain TCP.
        if remove_socket(key) {
            bump(Counter::HalfCloseDetached);
        }
    }
    if new == BPF_TCP_CLOSE {
        let _ = SOCK_STATE.remove(key);
        let _ = SOCK_POLICY.remove(key);
        let _ = MESH_CONNECTS.remove(&SockKey { netns: 0, ..*key });
        let _ = UNREAD.remove(&SockKey { netns: 0, ..*key });
        let port = sidecar_port();
        if port != 0 && key.family == AF_INET {
            let _ = SIDECAR_ALIASES.remove(&key.sidecar_alias(port));
        }
    }
}
// ANCHOR_END: state

/// The connection as this socket sees it. The verifier only accepts 4-byte loads of the address
/// fields, so each word is read on its own (volatile keeps LLVM from merging two into one).
#[inline(always)]
pub fn sock_key<const NETNS: bool>(ctx: &SockOpsContext, family: u32) -> SockKey {
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
    // local_port is host byte order; remote_port is the port as a 32-bit network-order value
    // (on little-endian machines the kernel shifts it into the upper half), hence from_be.
    let mut key = SockKey::new(0, family, local, remote, ctx.local_port(), u32::from_be(ctx.remote_port()));
    // Pod addresses are unique on the node; loopback addresses are not: every pod has its own
    // 127.0.0.1. Loopback keys carry the namespace (both ends of such a connection share it).
    if NETNS && key.is_loopback() {
        // SAFETY: bpf_get_netns_cookie reads the socket's namespace from the live context.
        key.netns = unsafe { bpf_get_netns_cookie(ops.cast()) };
    }
    key
}
