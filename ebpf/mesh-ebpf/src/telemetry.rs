//! sock_ops hook for telemetry: one flow record per TCP socket of the lab, from established to
//! close, sent to user space through the `FLOW_EVENTS` ring buffer when the socket closes.
//!
//! - Attach: `BPF_CGROUP_SOCK_OPS` on the lab's cgroup, beside the redirect's sock_ops program
//!   (a cgroup runs every program attached there, in order); a program of its own so telemetry
//!   reads in one file and costs nothing where it is off (`TELEMETRY` slot 0 = 0).
//! - Callbacks: `ACTIVE_ESTABLISHED` / `PASSIVE_ESTABLISHED` open the socket's `FLOWS` entry and
//!   ask the kernel (`bpf_sock_ops_cb_flags_set`) for three more callbacks on this socket:
//!   `STATE_CB` (every TCP state change: FINs seen, close), `RTT_CB` (every RTT sample: the
//!   smallest and largest smoothed RTT) and `RETRANS_CB` (every retransmitted segment).
//! - Bytes: TCP's own counters (`bytes_acked`, `bytes_received`) at close less their values at
//!   established, less the FIN each direction's sequence space counts; plus what sk_msg
//!   redirected (`redirected`, called from `sk_msg.rs`), which TCP never sees.
//! - Minimum kernel: 4.13 (sock_ops), 4.16 (`STATE_CB`, `RETRANS_CB`, `bytes_acked`/`bytes_received`
//!   in the context), 5.3 (`RTT_CB`), 5.8 (ring buffer).
//! - Two builds, keyed like the redirect's (`mesh_telemetry` with the netns cookie for loopback
//!   keys, 5.15; `mesh_telemetry_nocookie`), so sk_msg finds the same entries.
//! - Book: `book/src/hooks/telemetry.md`.
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG,
        BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE, BPF_TCP_CLOSE_WAIT, BPF_TCP_CLOSING, BPF_TCP_FIN_WAIT1, BPF_TCP_FIN_WAIT2,
        BPF_TCP_LAST_ACK,
    },
    helpers::bpf_ktime_get_ns,
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{AF_INET, AF_INET6, Counter, FLOW_EVENTS_BYTES, FlowRecord, SockKey};

use crate::{
    maps::{FLOW_EVENTS, FLOWS, TELEMETRY, bump},
    sock_ops::sock_key,
};

// ANCHOR: entry
#[sock_ops]
pub fn mesh_telemetry(ctx: SockOpsContext) -> u32 {
    observe::<true>(&ctx);
    1
}

/// The same for kernels before 5.15 (keys without the netns cookie, like the redirect's).
#[sock_ops]
pub fn mesh_telemetry_nocookie(ctx: SockOpsContext) -> u32 {
    observe::<false>(&ctx);
    1
}
// ANCHOR_END: entry

/// Telemetry is on (the agent's default).
#[inline(always)]
pub fn on() -> bool {
    TELEMETRY.get(0).is_some_and(|v| *v != 0)
}

// ANCHOR: observe
fn observe<const NETNS: bool>(ctx: &SockOpsContext) {
    let family = ctx.family();
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let op = ctx.op();
    let key = sock_key::<NETNS>(ctx, family);
    if !NETNS && key.is_loopback() {
        // Without the netns cookie, one pod's 127.0.0.1:a -> 127.0.0.1:b has the same key as
        // another's: their records would mix. Left out, like the redirect leaves them out.
        return;
    }
    match op {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB | BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB if on() => {
            open(ctx, key, op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB);
        }
        BPF_SOCK_OPS_STATE_CB => state_changed(ctx, &key, ctx.arg(0), ctx.arg(1)),
        BPF_SOCK_OPS_RTT_CB => {
            if let Some(f) = FLOWS.get_ptr_mut(&key) {
                // SAFETY: a live map value; this socket's callbacks run under its lock.
                let f = unsafe { &mut *f };
                // SAFETY: a field of the live context (stored times 8 by the kernel).
                let srtt = unsafe { read_volatile(&raw const (*ctx.ops).srtt_us) } >> 3;
                if f.rtt_samples == 0 || srtt < f.rtt_min_us {
                    f.rtt_min_us = srtt;
                }
                if srtt > f.rtt_max_us {
                    f.rtt_max_us = srtt;
                }
                f.rtt_samples += 1;
            }
        }
        BPF_SOCK_OPS_RETRANS_CB => {
            // arg 1: how many segments were retransmitted, arg 2: the result (0: they left).
            if ctx.arg(2) == 0
                && let Some(f) = FLOWS.get_ptr_mut(&key)
            {
                // SAFETY: as above.
                unsafe { (*f).retrans_cb += ctx.arg(1) };
            }
        }
        _ => {}
    }
}
// ANCHOR_END: observe

// ANCHOR: open
fn open(ctx: &SockOpsContext, key: SockKey, client: bool) {
    let o = ctx.ops.cast_const();
    // SAFETY: fields of the live context; the kernel answers with the socket's own values.
    let flow = unsafe {
        FlowRecord {
            key,
            // SAFETY: a plain helper call.
            start_ns: bpf_ktime_get_ns(),
            // The SYN already counted in bytes_acked: start from here.
            tcp_sent: read_volatile(&raw const (*o).bytes_acked),
            tcp_received: read_volatile(&raw const (*o).bytes_received),
            rcv_nxt: read_volatile(&raw const (*o).rcv_nxt),
            flags: if client { FlowRecord::CLIENT } else { 0 },
            ..FlowRecord::default()
        }
    };
    if FLOWS.insert(&key, &flow, 0).is_ok() {
        let flags = BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RTT_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG;
        let _ = ctx.set_cb_flags((ctx.cb_flags() | flags) as i32);
    }
}
// ANCHOR_END: open

// ANCHOR: state
/// `old -> new`: note the FINs; on close, finish the record and send it.
fn state_changed(ctx: &SockOpsContext, key: &SockKey, old: u32, new: u32) {
    let Some(f) = FLOWS.get_ptr_mut(key) else { return };
    // SAFETY: a live map value; this socket's callbacks run under its lock.
    let f = unsafe { &mut *f };
    let o = ctx.ops.cast_const();
    // SAFETY: a field of the live context.
    let rcv_nxt = unsafe { read_volatile(&raw const (*o).rcv_nxt) };
    if new == BPF_TCP_FIN_WAIT1 || new == BPF_TCP_LAST_ACK {
        f.flags |= FlowRecord::FIN_SENT;
    }
    // FIN_WAIT2 -> CLOSE is the peer's FIN (time-wait), or a socket already closed by its
    // application giving up waiting for it: only the FIN moves rcv_nxt (data arriving after
    // close() resets the connection instead).
    if new == BPF_TCP_CLOSE_WAIT
        || new == BPF_TCP_CLOSING
        || (old == BPF_TCP_FIN_WAIT2 && new == BPF_TCP_CLOSE && rcv_nxt != f.rcv_nxt)
    {
        f.flags |= FlowRecord::FIN_RECEIVED;
    }
    f.rcv_nxt = rcv_nxt;
    if new != BPF_TCP_CLOSE {
        return;
    }
    // SAFETY: fields of the live context, read once each.
    let (acked, received, una, nxt, srtt, retrans) = unsafe {
        (
            read_volatile(&raw const (*o).bytes_acked),
            read_volatile(&raw const (*o).bytes_received),
            read_volatile(&raw const (*o).snd_una),
            read_volatile(&raw const (*o).snd_nxt),
            read_volatile(&raw const (*o).srtt_us),
            read_volatile(&raw const (*o).total_retrans),
        )
    };
    // Our FIN took one sequence number; it was acknowledged when nothing is outstanding.
    let fin_acked = f.flags & FlowRecord::FIN_SENT != 0 && una == nxt;
    f.tcp_sent = acked.saturating_sub(f.tcp_sent).saturating_sub(fin_acked as u64);
    let fin_in = f.flags & FlowRecord::FIN_RECEIVED != 0;
    f.tcp_received = received.saturating_sub(f.tcp_received).saturating_sub(fin_in as u64);
    f.srtt_us = srtt >> 3;
    f.retransmits = retrans;
    f.last_state = old;
    f.flags |= FlowRecord::CLOSED;
    // SAFETY: a plain helper call.
    f.end_ns = unsafe { bpf_ktime_get_ns() };
    // Wake the agent only once records pile up (an eighth of the ring): it drains every 100 ms
    // anyway, and a wakeup per closed connection would cost more than the record.
    let wake = if FLOW_EVENTS.query(BPF_RB_AVAIL_DATA.into()) > u64::from(FLOW_EVENTS_BYTES / 8) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if FLOW_EVENTS.output::<FlowRecord>(&*f, wake.into()).is_err() {
        bump(Counter::FlowEventsLost);
    }
    let _ = FLOWS.remove(key);
}
// ANCHOR_END: state

// ANCHOR: redirected
/// sk_msg redirected `bytes` from `from` to `to`: bytes TCP's counters will never see.
#[inline(always)]
pub fn redirected(from: &SockKey, to: &SockKey, bytes: u32) {
    if !on() {
        return;
    }
    if let Some(f) = FLOWS.get_ptr_mut(from) {
        // SAFETY: a live map value; only the sending socket's messages (under its lock) add here.
        unsafe { (*f).redirected_sent += u64::from(bytes) };
    }
    if let Some(f) = FLOWS.get_ptr_mut(to) {
        // SAFETY: as above: only this socket redirects to its peer.
        unsafe { (*f).redirected_received += u64::from(bytes) };
    }
}

/// The policy cut this socket's connection at `hook`.
#[inline(always)]
pub fn denied(key: &SockKey, hook: u32) {
    if let Some(f) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as above.
        unsafe { (*f).denied_by = hook };
    }
}
// ANCHOR_END: redirected
