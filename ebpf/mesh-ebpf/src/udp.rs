//! cgroup/sendmsg4,6 and cgroup/recvmsg4,6: socket load balancing for unconnected UDP. Every
//! datagram an application sends with `sendto()` to a service address goes to a backend; the
//! first one picks it and the socket's storage keeps it, so one socket talks to one backend
//! (sticky, like a connected socket). Replies from that backend are handed to the application as
//! coming from the service address. Connected UDP sockets go through connect4/6 instead.
//!
//! - Attach: `BPF_CGROUP_UDP4_SENDMSG`, `..._UDP6_SENDMSG` (4.18), `BPF_CGROUP_UDP4_RECVMSG`,
//!   `..._UDP6_RECVMSG` (5.2) on the lab's cgroup.
//! - No backend: sendmsg returns 0 and `sendto()` fails with EPERM. recvmsg programs must return 1.
//! - Book: `book/src/hooks/connect.md`.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_common::{AF_INET, AF_INET6, Backend, Counter, ServiceKey};

use crate::{
    connect::{pick, remember, verdict_without_backend},
    maps::{ORIGINAL_DST, bump},
};

const MAPPED: u32 = 0xffff_u32.to_be();

// ANCHOR: sendmsg4
#[cgroup_sock_addr(sendmsg4)]
pub fn mesh_sendmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: fields of the live bpf_sock_addr of this sendmsg().
    let (ip, port, protocol) = unsafe {
        (
            read_volatile(&raw const (*sa).user_ip4),
            u16::from_be(read_volatile(&raw const (*sa).user_port) as u16),
            read_volatile(&raw const (*sa).protocol),
        )
    };
    let key = ServiceKey { ip: [ip, 0, 0, 0], port: u32::from(port), family: AF_INET, protocol, pad: 0 };
    let Some(backend) = sticky_backend(&ctx, &key, [ip, 0, 0, 0], AF_INET) else {
        return verdict_without_backend(&key);
    };
    if backend.ip4 == 0 {
        bump(Counter::ConnectRefused);
        return 0;
    }
    // SAFETY: sendmsg4 programs may write the destination.
    unsafe {
        write_volatile(&raw mut (*sa).user_ip4, backend.ip4);
        write_volatile(&raw mut (*sa).user_port, u32::from((backend.port as u16).to_be()));
    }
    1
}
// ANCHOR_END: sendmsg4

#[cgroup_sock_addr(sendmsg6)]
pub fn mesh_sendmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: fields of the live bpf_sock_addr of this sendmsg().
    let (ip, port, protocol) = unsafe {
        (
            [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            u16::from_be(read_volatile(&raw const (*sa).user_port) as u16),
            read_volatile(&raw const (*sa).protocol),
        )
    };
    let mapped = ip[0] == 0 && ip[1] == 0 && ip[2] == MAPPED;
    let key = if mapped {
        ServiceKey { ip: [ip[3], 0, 0, 0], port: u32::from(port), family: AF_INET, protocol, pad: 0 }
    } else {
        ServiceKey { ip, port: u32::from(port), family: AF_INET6, protocol, pad: 0 }
    };
    let Some(backend) = sticky_backend(&ctx, &key, ip, AF_INET6) else {
        return verdict_without_backend(&key);
    };
    let dest = if mapped { [0, 0, MAPPED, backend.ip4] } else { backend.ip6 };
    if (mapped && backend.ip4 == 0) || (!mapped && dest == [0; 4]) {
        bump(Counter::ConnectRefused);
        return 0;
    }
    // SAFETY: sendmsg6 programs may write the destination.
    unsafe {
        for (i, w) in dest.iter().enumerate() {
            write_volatile(&raw mut (*sa).user_ip6[i], *w);
        }
        write_volatile(&raw mut (*sa).user_port, u32::from((backend.port as u16).to_be()));
    }
    1
}

// ANCHOR: sticky
/// The backend this socket already sends this service's datagrams to, else a fresh pick, kept.
/// `None`: `key` is no service, or one without backends.
#[inline(always)]
fn sticky_backend(ctx: &SockAddrContext, key: &ServiceKey, ip: [u32; 4], family: u32) -> Option<Backend> {
    // SAFETY: lookup only; the pointer is this socket's storage.
    let kept = unsafe { ORIGINAL_DST.get_ptr_mut(ctx) };
    if !kept.is_null() {
        let k = unsafe { *kept };
        if k.family == family && k.ip == ip && k.port == key.port {
            return Some(k.backend);
        }
    }
    let backend = pick(key)?;
    remember(ctx, ip, key.port, family, backend);
    bump(Counter::ConnectBalanced);
    Some(backend)
}
// ANCHOR_END: sticky

// ANCHOR: recvmsg4
#[cgroup_sock_addr(recvmsg4)]
pub fn mesh_recvmsg4(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: lookup only; fields of the live bpf_sock_addr of this recvmsg().
    unsafe {
        let kept = ORIGINAL_DST.get_ptr_mut(&ctx);
        if kept.is_null() {
            return 1;
        }
        let k = *kept;
        let from = read_volatile(&raw const (*sa).user_ip4);
        let port = u32::from(u16::from_be(read_volatile(&raw const (*sa).user_port) as u16));
        if k.family == AF_INET && from == k.backend.ip4 && port == k.backend.port {
            write_volatile(&raw mut (*sa).user_ip4, k.ip[0]);
            write_volatile(&raw mut (*sa).user_port, u32::from((k.port as u16).to_be()));
        }
    }
    1
}
// ANCHOR_END: recvmsg4

#[cgroup_sock_addr(recvmsg6)]
pub fn mesh_recvmsg6(ctx: SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: as above.
    unsafe {
        let kept = ORIGINAL_DST.get_ptr_mut(&ctx);
        if kept.is_null() {
            return 1;
        }
        let k = *kept;
        if k.family != AF_INET6 {
            return 1;
        }
        let from = [
            read_volatile(&raw const (*sa).user_ip6[0]),
            read_volatile(&raw const (*sa).user_ip6[1]),
            read_volatile(&raw const (*sa).user_ip6[2]),
            read_volatile(&raw const (*sa).user_ip6[3]),
        ];
        let port = u32::from(u16::from_be(read_volatile(&raw const (*sa).user_port) as u16));
        let mapped = k.ip[0] == 0 && k.ip[1] == 0 && k.ip[2] == MAPPED;
        let backend = if mapped { [0, 0, MAPPED, k.backend.ip4] } else { k.backend.ip6 };
        if from == backend && port == k.backend.port {
            for (i, w) in k.ip.iter().enumerate() {
                write_volatile(&raw mut (*sa).user_ip6[i], *w);
            }
            write_volatile(&raw mut (*sa).user_port, u32::from((k.port as u16).to_be()));
        }
    }
    1
}
