//! cgroup/connect4 and cgroup/connect6: socket-level load balancing. When a pod's socket
//! connects to a service's virtual address, the destination is rewritten to one of the service's
//! backends before the kernel does anything else: no packet ever carries the virtual address,
//! no NAT state is kept, and the connection is a plain connection to the backend from then on
//! (so sock_ops and sk_msg redirect it like any other).
//!
//! - Attach: `BPF_CGROUP_INET4_CONNECT` / `BPF_CGROUP_INET6_CONNECT` on the lab's cgroup; runs in
//!   the connect() system call of TCP sockets and of UDP sockets that connect.
//! - Service lookup: `SERVICES` by (virtual address, port, protocol); not a service: the
//!   connect() proceeds untouched. A backend slot is picked at random (`bpf_get_prandom_u32`) out
//!   of the service's `slots`; a weight-2 backend has two slots.
//! - No backend: the program returns 0 and connect() fails. Two builds: `mesh_connect4_refused`
//!   first calls `bpf_set_retval(-ECONNREFUSED)` (cgroup programs have the helper from 5.18), so
//!   the application sees what a host with nothing listening says; `mesh_connect4` leaves the
//!   kernel's `EPERM`, for older kernels. The agent loads the first the verifier accepts.
//! - The address the application asked for is kept in the socket's storage (`ORIGINAL_DST`), so
//!   getpeername() can answer with it (`getpeername.rs`); it goes away with the socket.
//! - connect6 serves IPv6 services and dual-stack applications reaching an IPv4 service through an
//!   IPv4-mapped address (`::ffff:a.b.c.d`): the key folds to IPv4 and the backend is written back
//!   mapped.
//! - Minimum kernel: 4.17 (connect hooks), 5.3 (socket storage in these programs).
//! - Book: `book/src/hooks/connect.md`.
use aya_ebpf::{
    helpers::{bpf_get_prandom_u32, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{AF_INET, AF_INET6, Backend, BackendKey, Counter, Hook, OriginalDst, ServiceKey};

use crate::{
    maps::{BACKENDS, ORIGINAL_DST, SERVICES, bump},
    policy,
    sock_addr::{self, Addr},
};

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4_refused(ctx: SockAddrContext) -> i32 {
    balance::<true>(&ctx, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6_refused(ctx: SockAddrContext) -> i32 {
    balance::<true>(&ctx, AF_INET6)
}

#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    balance::<false>(&ctx, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    balance::<false>(&ctx, AF_INET6)
}

// ANCHOR: connect4
/// connect() to a service: a backend instead, the service kept for getpeername().
#[inline(always)]
fn balance<const ECONNREFUSED: bool>(ctx: &SockAddrContext, family: u32) -> i32 {
    let asked = sock_addr::read(ctx, family);
    let protocol = sock_addr::protocol(ctx);
    let key = asked.service_key(protocol);
    let Some(backend) = pick(&key) else {
        return verdict_without_backend::<ECONNREFUSED>(&key, &asked, protocol, Hook::CONNECT);
    };
    let Some(to) = asked.backend(&backend) else { return refuse::<ECONNREFUSED>() };
    // Policy judges where the connection really goes: the backend, not the service.
    if !policy::allowed(&to, protocol, Hook::CONNECT) {
        return deny();
    }
    remember(ctx, &asked, backend);
    sock_addr::write(ctx, &to);
    bump(Counter::ConnectBalanced);
    1
}
// ANCHOR_END: connect4

// ANCHOR: pick
/// `None` when `key` is not a service, or is one without backends (then [`verdict_without_backend`]
/// tells them apart).
#[inline(always)]
pub fn pick(key: &ServiceKey) -> Option<Backend> {
    // SAFETY: plain lookups; values are copied out at once.
    let service = unsafe { SERVICES.get(key) }.copied()?;
    if service.slots == 0 {
        return None;
    }
    // SAFETY: no arguments, no memory.
    let slot = unsafe { bpf_get_prandom_u32() } % service.slots;
    unsafe { BACKENDS.get(&BackendKey { service: service.id, slot }) }.copied()
}
// ANCHOR_END: pick

/// For an address that is no service: 1 (the call goes on untouched) if policy allows it, a
/// denial if not. For a service with no backend: a refusal.
#[inline(always)]
pub fn verdict_without_backend<const ECONNREFUSED: bool>(
    key: &ServiceKey,
    asked: &Addr,
    protocol: u32,
    hook: u32,
) -> i32 {
    // SAFETY: a plain lookup.
    if unsafe { SERVICES.get(key) }.is_some() {
        refuse::<ECONNREFUSED>()
    } else if policy::allowed(asked, protocol, hook) {
        1
    } else {
        deny()
    }
}

/// Fails the call with EPERM: policy does not allow it.
#[inline(always)]
pub fn deny() -> i32 {
    bump(Counter::PolicyDenied);
    0
}

// ANCHOR: refuse
/// `ECONNREFUSED` from `<errno.h>`.
const ECONNREFUSED_ERRNO: i32 = 111;

/// Fails the call: returning 0 makes it fail with EPERM, unless the program set another error
/// first (`bpf_set_retval`, cgroup programs from 5.18; the build that calls it is refused by
/// older verifiers, and the agent loads the other).
#[inline(always)]
pub fn refuse<const ECONNREFUSED: bool>() -> i32 {
    bump(Counter::ConnectRefused);
    if ECONNREFUSED {
        // SAFETY: no memory involved; the value is what the system call will return.
        unsafe { bpf_set_retval(-ECONNREFUSED_ERRNO) };
    }
    0
}
// ANCHOR_END: refuse

/// Keeps the address the application connected to, and its backend, in the socket's storage.
#[inline(always)]
pub fn remember(ctx: &SockAddrContext, asked: &Addr, backend: Backend) {
    let mut orig = OriginalDst { ip: asked.ip, port: asked.port, family: asked.family, backend };
    // SAFETY: the storage belongs to this socket; the kernel creates it when absent.
    let slot = unsafe { ORIGINAL_DST.get_or_insert_ptr_mut(ctx, Some(&mut orig)) };
    if !slot.is_null() {
        // A socket can connect again after a failed attempt: keep the latest.
        // SAFETY: non-null, so it points at this socket's storage, sized for an OriginalDst;
        // only this socket's own hooks write it, and they run under its lock.
        unsafe { *slot = orig };
    }
}
