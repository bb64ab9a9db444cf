//! cgroup/setsockopt hook: keeps a socket's incoming bytes on TCP when its owner sets
//! `SO_RCVLOWAT` or `TCP_INQ`, which the kernel's sockmap receive path ignores for redirected
//! bytes (`tcp_bpf_recvmsg` returns as soon as one redirected message is queued, and never adds
//! the `TCP_CM_INQ` control message; for bytes in the TCP receive queue it hands over to
//! `tcp_recvmsg`, which honours both).
//!
//! - Attach: `BPF_CGROUP_SETSOCKOPT` on the lab's cgroup v2 directory; runs before the kernel
//!   handles every setsockopt() of the pods' sockets, and always lets it proceed (returns 1).
//! - Acts on `SOL_SOCKET`/`SO_RCVLOWAT` above 1 and `IPPROTO_TCP`/`TCP_INQ` on: sets the
//!   socket's `NO_REDIRECT` bit, and sk_msg
//!   stops redirecting to it (this program type may not delete from a sockhash: the verifier
//!   refuses `bpf_map_delete_elem` on one). A socket that sets the option before connecting is
//!   left out by sock_ops instead, where `bpf_getsockopt` can read it (see `sock_ops.rs`).
//! - Two builds, like the other hooks: `mesh_setsockopt` reads the netns cookie for loopback
//!   keys (`bpf_get_netns_cookie` for this program type: 5.15 and later), `mesh_setsockopt_nocookie`.
//! - Minimum kernel: 5.3 (cgroup sockopt programs). Kernel config: `CONFIG_CGROUP_BPF`.
//! - Book: `book/src/hooks/redirect-changes.md`.
use core::ptr::read_volatile;

use aya_ebpf::{helpers::bpf_get_netns_cookie, macros::cgroup_sockopt, programs::SockoptContext};
use mesh_common::{AF_INET, AF_INET6, Counter, SockKey, SockState};

use crate::maps::{bump, set_sock_state, sock_state};

const SOL_SOCKET: i32 = 1;
const SO_RCVLOWAT: i32 = 18;
const IPPROTO_TCP: i32 = 6;
const TCP_INQ: i32 = 36;

// ANCHOR: entry
#[cgroup_sockopt(setsockopt)]
pub fn mesh_setsockopt(ctx: SockoptContext) -> i32 {
    try_mesh_setsockopt::<true>(&ctx);
    1
}

/// The same for kernels whose sockopt programs cannot read the netns cookie.
#[cgroup_sockopt(setsockopt)]
pub fn mesh_setsockopt_nocookie(ctx: SockoptContext) -> i32 {
    try_mesh_setsockopt::<false>(&ctx);
    1
}
// ANCHOR_END: entry

// ANCHOR: body
fn try_mesh_setsockopt<const NETNS: bool>(ctx: &SockoptContext) {
    let s = ctx.sockopt;
    // SAFETY: fields of the live bpf_sockopt the kernel handed us; optval is bounds-checked
    // against optval_end before it is read.
    let (option, value) = unsafe {
        let option = (read_volatile(&raw const (*s).level), read_volatile(&raw const (*s).optname));
        if option != (SOL_SOCKET, SO_RCVLOWAT) && option != (IPPROTO_TCP, TCP_INQ) {
            return;
        }
        let val = (*s).__bindgen_anon_2.optval as usize;
        let end = (*s).__bindgen_anon_3.optval_end as usize;
        if val + 4 > end {
            return;
        }
        (option, read_volatile(val as *const i32))
    };
    let (counter, wanted) =
        if option.1 == TCP_INQ { (Counter::InqTcp, value != 0) } else { (Counter::RcvlowatTcp, value > 1) };
    if !wanted {
        return;
    }
    // Only a connected socket has a key; one that is not connected yet is sock_ops' to judge
    // when it is established.
    let Some(key) = sock_key::<NETNS>(ctx).filter(|k| k.remote_port != 0) else { return };
    if sock_state(&key) & SockState::NO_REDIRECT == 0 {
        set_sock_state(&key, SockState::NO_REDIRECT);
        bump(counter);
    }
}
// ANCHOR_END: body

/// The socket's key, as sock_ops filed it; None for a socket that is not TCP over IP.
#[inline(always)]
fn sock_key<const NETNS: bool>(ctx: &SockoptContext) -> Option<SockKey> {
    // SAFETY: sk is the live full socket of this setsockopt(); every field is read with a load
    // of its own width, as the verifier requires.
    unsafe {
        let sk = (*ctx.sockopt).__bindgen_anon_1.sk;
        let family = read_volatile(&raw const (*sk).family);
        let mut local = [0u32; 4];
        let mut remote = [0u32; 4];
        if family == AF_INET {
            local[0] = read_volatile(&raw const (*sk).src_ip4);
            remote[0] = read_volatile(&raw const (*sk).dst_ip4);
        } else if family == AF_INET6 {
            for i in 0..4 {
                local[i] = read_volatile(&raw const (*sk).src_ip6[i]);
                remote[i] = read_volatile(&raw const (*sk).dst_ip6[i]);
            }
        } else {
            return None;
        }
        // src_port is in host byte order; dst_port is the big-endian port.
        let local_port = read_volatile(&raw const (*sk).src_port);
        let remote_port = u32::from(u16::from_be(read_volatile(&raw const (*sk).dst_port)));
        let mut key = SockKey::new(0, family, local, remote, local_port, remote_port);
        if NETNS && key.is_loopback() {
            key.netns = bpf_get_netns_cookie(ctx.sockopt.cast());
        }
        Some(key)
    }
}
