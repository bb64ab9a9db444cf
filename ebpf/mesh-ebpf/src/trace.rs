//! Tracepoint `tcp:tcp_retransmit_skb`: every retransmission on the node, counted into the flow
//! record of the lab socket that made it. A second witness beside sock_ops' RETRANS callback,
//! seen from the kernel's tracing side, as `tcpretrans` (bcc) and most TCP tools see it.
//!
//! - Attach: a classic tracepoint (perf event); runs for every socket of the node. Only
//!   sockets with a `FLOWS` entry count: the lab's, while telemetry is on.
//! - The record's layout differs between kernels (5.10 has no `family`, 6.18 an `err` more): the
//!   agent reads the offsets from tracefs' `format` file into `TRACE_LAYOUT`; the program reads
//!   there. The IPv6 address fields are filled for both families (IPv4 as `::ffff:a.b.c.d`).
//! - Since the 2025 change that added `err`, the tracepoint fires for failed attempts too
//!   (`tcp_retransmit_skb()` calls it with the result of `__tcp_retransmit_skb()`): only
//!   `err == 0` is a segment that left, the same rule as sock_ops' RETRANS callback's `arg 2`.
//!   Older records have no `err` and fire only for segments that left.
//! - The tracepoint knows no network namespace: a loopback connection (keyed with the netns
//!   cookie on >= 5.15) is not matched; pod-to-pod connections are.
//! - Minimum kernel: 4.16 (the tracepoint's address fields), 4.7 (BPF on tracepoints).
//! - Not pinned: it lives with the agent process (a restarted agent attaches it again).
//! - Book: `book/src/hooks/telemetry.md`.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use mesh_common::{AF_INET6, SockKey};

use crate::{
    maps::{FLOWS, TRACE_LAYOUT},
    telemetry,
};

// ANCHOR: retransmit
#[tracepoint]
pub fn mesh_retransmit(ctx: TracePointContext) -> u32 {
    let _ = count(&ctx);
    0
}

fn count(ctx: &TracePointContext) -> Result<(), i32> {
    let Some(l) = TRACE_LAYOUT.get(0) else { return Ok(()) };
    if l.ready == 0 || !telemetry::on() {
        return Ok(());
    }
    // SAFETY: a bpf_probe_read_kernel at the offset tracefs gave for this record's `err`.
    if l.err != 0 && unsafe { ctx.read_at::<i32>(l.err as usize)? } != 0 {
        // A failed attempt: nothing left, nothing to count.
        return Ok(());
    }
    // SAFETY: each read is bpf_probe_read_kernel at an offset tracefs gave for this record.
    let (sport, dport, local, remote) = unsafe {
        (
            // Host byte order in the record (the kernel stores ntohs of the socket's ports).
            u32::from(ctx.read_at::<u16>(l.sport as usize)?),
            u32::from(ctx.read_at::<u16>(l.dport as usize)?),
            // Network order, like the keys' words; an IPv4 socket's as ::ffff:a.b.c.d.
            ctx.read_at::<[u32; 4]>(l.saddr_v6 as usize)?,
            ctx.read_at::<[u32; 4]>(l.daddr_v6 as usize)?,
        )
    };
    // SockKey::new folds an IPv4-mapped pair into the IPv4 key sock_ops filed.
    let key = SockKey::new(0, AF_INET6, local, remote, sport, dport);
    if let Some(f) = FLOWS.get_ptr_mut(&key) {
        // SAFETY: a live map value; a stray lost increment only costs a count.
        unsafe { (*f).retrans_tp += 1 };
    }
    Ok(())
}
// ANCHOR_END: retransmit
