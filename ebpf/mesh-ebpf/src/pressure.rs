//! fentry on TCP's memory-pressure report: marks when the node's TCP memory last passed
//! `tcp_mem[1]`, so that sk_msg shrinks its flow-control budget before redirected bytes reach
//! `tcp_mem[2]`, past which their writer gets ENOMEM (see `sk_msg.rs`).
//!
//! - Attach: fentry (BPF trampoline) on `tcp_enter_memory_pressure(sk)`, which
//!   `__sk_mem_raise_allocated()` calls through `sk->sk_prot` on every allocation while the
//!   protocol's memory is above `tcp_mem[1]` (net/core/sock.c), whatever the socket's
//!   `sk_prot` (tcp_bpf's copies keep TCP's). It runs only under pressure: nothing is added to
//!   the allocation path otherwise.
//! - Effect: `FLOW_CONTROL.pressure_at` = now (`bpf_ktime_get_ns`); sk_msg applies
//!   `pressure_budget` for `PRESSURE_HOLD_NS` after it (`mesh_common::FlowControl`).
//! - Minimum kernel: 5.5 (fentry), with BTF (`CONFIG_DEBUG_INFO_BTF`). Where the agent cannot
//!   attach it, the mesh runs without the signal (`pressure_watched` 0).
//! - Book: `book/src/hooks/flow-control.md`.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::fentry, programs::FEntryContext};

use crate::maps::FLOW_CONTROL;

// ANCHOR: pressure
#[fentry(function = "tcp_enter_memory_pressure")]
pub fn mesh_pressure(_ctx: FEntryContext) -> i32 {
    if let Some(flow) = FLOW_CONTROL.get_ptr_mut(0) {
        // SAFETY: a live map value; this is the only writer of `pressure_at`, and a racing
        // writer stores the same moment give or take a few nanoseconds.
        unsafe { (*flow).pressure_at = bpf_ktime_get_ns() };
    }
    0
}
// ANCHOR_END: pressure
