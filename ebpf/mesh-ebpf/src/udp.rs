//! cgroup/sendmsg4,6 and cgroup/recvmsg4,6: socket load balancing for unconnected UDP. Every
//! datagram an application sends with `sendto()` to a service address goes to a backend; the
//! first one picks it and the socket's storage keeps it, so one socket talks to one backend
//! (sticky, like a connected socket). Replies from that backend are handed to the application as
//! coming from the service address. Connected UDP sockets go through connect4/6 instead.
//!
//! - Attach: `BPF_CGROUP_UDP4_SENDMSG`, `..._UDP6_SENDMSG` (4.18), `BPF_CGROUP_UDP4_RECVMSG`,
//!   `..._UDP6_RECVMSG` (5.2) on the lab's cgroup.
//! - No backend: sendmsg refuses and `sendto()` fails with ECONNREFUSED (the `_refused` build,
//!   5.18 and later) or EPERM (see `connect.rs`). recvmsg programs must return 1.
//! - Book: `book/src/hooks/connect.md`.
use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_common::{AF_INET, AF_INET6, Backend, Counter, Hook, ServiceKey};

use crate::{
    connect::{deny, pick, refuse, remember, verdict_without_backend},
    maps::{ORIGINAL_DST, bump},
    policy,
    sock_addr::{self, Addr},
};

#[cgroup_sock_addr(sendmsg4)]
pub fn mesh_sendmsg4_refused(ctx: SockAddrContext) -> i32 {
    send_to_backend::<true>(&ctx, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mesh_sendmsg6_refused(ctx: SockAddrContext) -> i32 {
    send_to_backend::<true>(&ctx, AF_INET6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn mesh_sendmsg4(ctx: SockAddrContext) -> i32 {
    send_to_backend::<false>(&ctx, AF_INET)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn mesh_sendmsg6(ctx: SockAddrContext) -> i32 {
    send_to_backend::<false>(&ctx, AF_INET6)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn mesh_recvmsg4(ctx: SockAddrContext) -> i32 {
    from_service(&ctx, AF_INET)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn mesh_recvmsg6(ctx: SockAddrContext) -> i32 {
    from_service(&ctx, AF_INET6)
}

// ANCHOR: sendmsg4
/// A datagram to a service goes to the socket's backend for it.
#[inline(always)]
fn send_to_backend<const ECONNREFUSED: bool>(ctx: &SockAddrContext, family: u32) -> i32 {
    let asked = sock_addr::read(ctx, family);
    let protocol = sock_addr::protocol(ctx);
    let key = asked.service_key(protocol);
    let Some(backend) = sticky_backend(ctx, &key, &asked) else {
        return verdict_without_backend::<ECONNREFUSED>(&key, &asked, protocol, Hook::SENDMSG);
    };
    let Some(to) = asked.backend(&backend) else { return refuse::<ECONNREFUSED>() };
    if !policy::allowed(&to, protocol, Hook::SENDMSG) {
        return deny();
    }
    sock_addr::write(ctx, &to);
    1
}
// ANCHOR_END: sendmsg4

// ANCHOR: sticky
/// The backend this socket already sends this service's datagrams to, else a fresh pick, kept.
/// `None`: `key` is no service, or one without backends.
#[inline(always)]
fn sticky_backend(ctx: &SockAddrContext, key: &ServiceKey, asked: &Addr) -> Option<Backend> {
    // SAFETY: lookup only; the pointer is this socket's storage.
    let kept = unsafe { ORIGINAL_DST.get_ptr_mut(ctx) };
    if !kept.is_null() {
        // SAFETY: non-null: this socket's storage, written whole by `remember`.
        let k = unsafe { *kept };
        if k.family == asked.family && k.ip == asked.ip && k.port == asked.port {
            return Some(k.backend);
        }
    }
    let backend = pick(key)?;
    remember(ctx, asked, backend);
    bump(Counter::ConnectBalanced);
    Some(backend)
}
// ANCHOR_END: sticky

// ANCHOR: recvmsg4
/// A datagram from the socket's backend is handed over as coming from the service.
#[inline(always)]
fn from_service(ctx: &SockAddrContext, family: u32) -> i32 {
    // SAFETY: lookup only; the pointer is this socket's storage.
    let kept = unsafe { ORIGINAL_DST.get_ptr_mut(ctx) };
    if kept.is_null() {
        return 1;
    }
    // SAFETY: non-null: this socket's storage, written whole by `remember`.
    let k = unsafe { *kept };
    if k.family != family {
        return 1;
    }
    let service = Addr { ip: k.ip, port: k.port, family };
    if service.backend(&k.backend) == Some(sock_addr::read(ctx, family)) {
        sock_addr::write(ctx, &service);
    }
    1
}
// ANCHOR_END: recvmsg4
