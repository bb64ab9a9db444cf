//! sk_msg hook: sends each message straight to the peer socket when the peer is on this node.
//!
//! - Attach: `BPF_SK_MSG_VERDICT` on the `SOCKETS` sockhash; runs on every sendmsg()/write() of a
//!   socket that sock_ops put in that map.
//! - Verdict: `bpf_msg_redirect_hash(.., BPF_F_INGRESS)` queues the bytes on the peer socket's
//!   receive queue, skipping TCP, IP, netfilter, the veths and the bridge. No local peer: pass, and
//!   the message takes the normal TCP/IP path.
//! - Minimum kernel: 4.18 (sk_msg, sockhash, `bpf_msg_redirect_hash`).
//! - Kernel config: `CONFIG_BPF_SYSCALL`, `CONFIG_BPF_STREAM_PARSER`.
//! - Book: `book/src/hooks/sk_msg.md`.
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action},
    macros::sk_msg,
    programs::SkMsgContext,
};
use mesh_common::{AF_INET, AF_INET6, Counter, SockKey};

use crate::maps::{SIDECAR_ALIASES, SOCKETS, bump, sidecar_port};

// ANCHOR: entry
#[sk_msg]
pub fn mesh_redirect(ctx: SkMsgContext) -> u32 {
    match try_mesh_redirect(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}
// ANCHOR_END: entry

// ANCHOR: body
fn try_mesh_redirect(ctx: &SkMsgContext) -> Result<u32, u32> {
    // SAFETY: a u32 field of the live sk_msg_md the kernel handed us.
    let family = unsafe { read_volatile(&raw const (*ctx.msg).family) };
    if family != AF_INET && family != AF_INET6 {
        return Ok(sk_action::SK_PASS);
    }
    // The peer socket is stored under this connection's key seen from the other end.
    let mut peer = msg_key(ctx, family).peer();
    // On a hit the helper records the peer as the target and returns SK_PASS; returning SK_PASS
    // then means "deliver to the target". On a miss it returns SK_DROP and records nothing: we
    // still return SK_PASS, so the message simply goes out through TCP/IP.
    let mut ret = SOCKETS.redirect_msg(ctx, &mut peer, BPF_F_INGRESS.into());
    // With sidecars the loopback hop between an application and its proxy does not mirror
    // (iptables rewrote the destination): try both ways across it.
    let port = sidecar_port();
    if ret != sk_action::SK_PASS.into() && port != 0 {
        // proxy -> app: our peer is filed as an alias of the application's real key.
        // SAFETY: a plain lookup; the value is copied out at once.
        if let Some(real) = unsafe { SIDECAR_ALIASES.get(&peer) } {
            let mut real = *real;
            ret = SOCKETS.redirect_msg(ctx, &mut real, BPF_F_INGRESS.into());
        } else if family == AF_INET {
            // app -> proxy: the proxy accepted the REDIRECTed connection on 127.0.0.1:<port>.
            let mut proxy = peer.peer().sidecar_alias(port).peer();
            ret = SOCKETS.redirect_msg(ctx, &mut proxy, BPF_F_INGRESS.into());
        }
    }
    if ret == sk_action::SK_PASS.into() {
        bump(Counter::MsgRedirected);
    } else {
        bump(Counter::MsgPassed);
    }
    Ok(sk_action::SK_PASS)
}
// ANCHOR_END: body

/// The connection as the sending socket sees it, built exactly like sock_ops builds its keys.
/// The verifier only accepts 4-byte loads of these fields: each is a volatile u32 read, which
/// keeps LLVM from merging neighbours into one wider load.
#[inline(always)]
fn msg_key(ctx: &SkMsgContext, family: u32) -> SockKey {
    let m = ctx.msg;
    let mut local = [0u32; 4];
    let mut remote = [0u32; 4];
    // SAFETY: every pointer is a u32 field of the live sk_msg_md the kernel handed us.
    unsafe {
        if family == AF_INET {
            local[0] = read_volatile(&raw const (*m).local_ip4);
            remote[0] = read_volatile(&raw const (*m).remote_ip4);
        } else {
            for i in 0..4 {
                local[i] = read_volatile(&raw const (*m).local_ip6[i]);
                remote[i] = read_volatile(&raw const (*m).remote_ip6[i]);
            }
        }
        // As in sock_ops: local_port in host order, remote_port big-endian in the upper half.
        let local_port = read_volatile(&raw const (*m).local_port);
        let remote_port = u32::from_be(read_volatile(&raw const (*m).remote_port));
        SockKey::new(family, local, remote, local_port, remote_port)
    }
}
