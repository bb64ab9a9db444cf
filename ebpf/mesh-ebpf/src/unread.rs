//! fexit on the redirect queue's reader: counts the redirected bytes each socket's application
//! has read, so that sk_msg knows how much waits unread (`UNREAD`) and can hand a connection
//! to TCP before that queue outgrows what TCP itself would allow (see `sk_msg.rs`).
//!
//! - Attach: fexit (BPF trampoline) on `sk_msg_recvmsg()` (5.12 and later), or on
//!   `__tcp_bpf_recvmsg()`, its name before 5.12 (commit 2bc793e3272a moved it to skmsg.c).
//!   Both are `(sk, psock, msg, len, flags) -> copied`: the bytes copied out of the socket's
//!   redirect queue (`psock->ingress_msg`). `tcp_bpf_recvmsg()` calls it with the socket
//!   locked, so one socket's reads are counted one after the other.
//! - `MSG_PEEK` copies without consuming: not counted.
//! - Key: the socket's connection read from `struct sock_common` at the offsets below (stable
//!   since 2.6 on x86_64 with IPv6 built in: daddr 0, rcv_saddr 4, dport 12, num 14,
//!   family 16, v6 addresses 56 and 72), netns 0 (the read side has no netns cookie;
//!   sk_msg files `UNREAD` the same way).
//! - Minimum kernel: 5.5 (fexit), with BTF (`CONFIG_DEBUG_INFO_BTF`). Where the agent cannot
//!   attach it (a kernel that refuses tracing programs), sk_msg estimates reads instead (see
//!   `mesh_common::FlowControl`).
//! - Book: `book/src/hooks/flow-control.md`.
use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::fexit, programs::FExitContext};
use mesh_common::{AF_INET, AF_INET6, SockKey};

use crate::maps::UNREAD;

/// `MSG_PEEK` from `<sys/socket.h>`.
const MSG_PEEK: i32 = 2;

// ANCHOR: read
#[fexit(function = "sk_msg_recvmsg")]
pub fn mesh_unread(ctx: FExitContext) -> i32 {
    let _ = count(&ctx);
    0
}

fn count(ctx: &FExitContext) -> Result<(), i64> {
    // The arguments, then the return value: (sk, psock, msg, len, flags) -> copied.
    let copied: i32 = ctx.arg(5);
    let flags: i32 = ctx.arg(4);
    if copied <= 0 || flags & MSG_PEEK != 0 {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let key = sock_key(sk)?;
    if let Some(u) = UNREAD.get_ptr_mut(&key) {
        // SAFETY: a live map value; only this socket's reads (under its lock) write `read`.
        unsafe { (*u).read += copied as u64 };
    }
    Ok(())
}
// ANCHOR_END: read

/// The connection as this socket sees it, built like sock_ops builds its keys (netns 0).
fn sock_key(sk: *const u8) -> Result<SockKey, i64> {
    // SAFETY: bpf_probe_read_kernel of fields of the `struct sock` the traced function got; a
    // bad address is an error, not a fault.
    unsafe {
        let family = u32::from(bpf_probe_read_kernel(sk.add(16).cast::<u16>())?);
        let (local, remote) = if family == AF_INET {
            let daddr = bpf_probe_read_kernel(sk.cast::<u32>())?;
            let saddr = bpf_probe_read_kernel(sk.add(4).cast::<u32>())?;
            ([saddr, 0, 0, 0], [daddr, 0, 0, 0])
        } else if family == AF_INET6 {
            let daddr = bpf_probe_read_kernel(sk.add(56).cast::<[u32; 4]>())?;
            let saddr = bpf_probe_read_kernel(sk.add(72).cast::<[u32; 4]>())?;
            (saddr, daddr)
        } else {
            return Err(0);
        };
        // skc_dport is network order, skc_num host order: the keys hold both in host order.
        let dport = u16::from_be(bpf_probe_read_kernel(sk.add(12).cast::<u16>())?);
        let num = bpf_probe_read_kernel(sk.add(14).cast::<u16>())?;
        Ok(SockKey::new(0, family, local, remote, u32::from(num), u32::from(dport)))
    }
}
