//! Policy verdicts, shared by the hooks that enforce them: connect4/6 and sendmsg4/6 judge where
//! a call really goes (after load balancing chose the backend), cgroup_skb ingress judges what
//! arrives from peers the mesh never saw connect, sk_msg judges established connections again
//! after the policy changed. Not a hook itself.
//!
//! - Identities: an address -> `IDENTITIES` (longest prefix match) -> identity; a connecting
//!   process's cgroup (`bpf_get_current_cgroup_id`, sock_addr programs from 5.7) ->
//!   `CGROUP_IDS`. Anything unknown is `world`.
//! - Verdict: a flow whose destination is not isolated for ingress and whose source is not
//!   isolated for egress (`POLICED`'s flags) is open; otherwise the `POLICY` allow-list must have
//!   (from, to, port, protocol) or (from, to, any port, protocol), whose value is the rule number.
//!   The agent writes an allow entry only when both ends' isolation allow the flow (Kubernetes
//!   NetworkPolicy's rule: egress of the source and ingress of the destination must both allow).
//! - Every verdict is counted per rule and hook (`VERDICTS`); every denial also goes to user
//!   space as a `Denial` event (`DENIALS` ring buffer, 5.8), or counts as `events_lost`.
//! - Book: `book/src/hooks/policy-connect.md`, `book/src/hooks/cgroup-skb.md`,
//!   `book/src/hooks/policy-sk-msg.md`.
use aya_ebpf::{helpers::bpf_get_current_cgroup_id, maps::lpm_trie::Key};
use mesh_common::{
    AF_INET, AF_INET6, Counter, Denial, Hook, IdentityAddr, POLICED_EGRESS, POLICED_INGRESS, PolicyKey,
    WORLD_IDENTITY,
};

use crate::{
    maps::{CGROUP_IDS, DENIALS, IDENTITIES, POLICED, POLICY, VERDICTS, bump},
    sock_addr::Addr,
};

/// What the policy says about one flow.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The destination is not policed.
    Open,
    /// Allowed by this rule (its number, from 1).
    Allowed(u32),
    Denied,
}

// ANCHOR: judge
/// The verdict for `from` reaching `to` on `port` over `protocol`: open unless `to` is isolated
/// for ingress or `from` for egress; then the allow-list decides.
#[inline(always)]
pub fn judge(from: u32, to: u32, port: u32, protocol: u32) -> (u32, Verdict) {
    // SAFETY: plain lookups; the flags are copied out at once.
    let isolated = |id: u32, flag: u32| unsafe { POLICED.get(&id) }.is_some_and(|f| *f & flag != 0);
    if !isolated(to, POLICED_INGRESS) && !isolated(from, POLICED_EGRESS) {
        return (from, Verdict::Open);
    }
    let exact = PolicyKey { from, to, port, protocol };
    let any_port = PolicyKey { port: 0, ..exact };
    // SAFETY: lookups of a hash the agent updates whole values of; the u32 is copied at once.
    match unsafe { POLICY.get(&exact).or_else(|| POLICY.get(&any_port)) } {
        Some(rule) => (from, Verdict::Allowed(*rule)),
        None => (from, Verdict::Denied),
    }
}
// ANCHOR_END: judge

// ANCHOR: allowed
/// Whether the calling process may reach `to` (the final destination) over `protocol`; counts
/// the verdict and reports a denial.
#[inline(always)]
pub fn allowed(to: &Addr, protocol: u32, hook: u32) -> bool {
    let dst = identity_of(to.family, &to.ip);
    // SAFETY: no arguments, no memory; then a plain lookup, copied out at once.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let caller = unsafe { CGROUP_IDS.get(&cgroup) }.copied().unwrap_or(WORLD_IDENTITY);
    let (src, verdict) = judge(caller, dst, to.port, protocol);
    let flow = Flow {
        hook,
        protocol,
        from: src,
        to: dst,
        family: to.family,
        port: to.port,
        src: [0; 4],
        dst: to.ip,
    };
    record(verdict, &flow)
}
// ANCHOR_END: allowed

/// One judged flow, for the counters and the event. The same fields as `Denial`, but not that
/// type: built as a `Denial` and handed to the ring buffer whole, one path of sk_msg's check
/// reached the verifier with a field never written (`R2 !read_ok`, 6.18); copying into the
/// event at the last moment, as below, verifies.
pub struct Flow {
    pub hook: u32,
    pub protocol: u32,
    pub from: u32,
    pub to: u32,
    pub family: u32,
    pub port: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

// ANCHOR: record
/// Counts `verdict` under its rule and hook; a denial also becomes a `Denial` event. Returns
/// whether the flow may go on.
#[inline(always)]
pub fn record(verdict: Verdict, f: &Flow) -> bool {
    let rule = match verdict {
        Verdict::Open => return true,
        Verdict::Allowed(rule) => rule,
        Verdict::Denied => 0,
    };
    count(rule, f.hook);
    if rule != 0 {
        return true;
    }
    let event = Denial {
        hook: f.hook,
        protocol: f.protocol,
        from: f.from,
        to: f.to,
        family: f.family,
        port: f.port,
        src: f.src,
        dst: f.dst,
    };
    if DENIALS.output::<Denial>(&event, 0).is_err() {
        bump(Counter::EventsLost);
    }
    false
}
// ANCHOR_END: record

/// Counts one verdict of `hook` under `rule` (0: a denial).
#[inline(always)]
pub fn count(rule: u32, hook: u32) {
    if let Some(slot) = VERDICTS.get_ptr_mut(rule * Hook::COUNT + hook - 1) {
        // SAFETY: this CPU's slot of a live per-CPU value.
        unsafe { *slot += 1 };
    }
}

/// The identity of an address (words in network byte order, IPv4 in word 0; an IPv4-mapped
/// IPv6 address as its IPv4 address).
#[inline(always)]
pub fn identity_of(family: u32, ip: &[u32; 4]) -> u32 {
    let a = Addr { ip: *ip, port: 0, family };
    let (data, bits) = if family == AF_INET || a.mapped() {
        let v4 = if a.mapped() { ip[3] } else { ip[0] };
        (IdentityAddr { family: AF_INET, ip: [v4, 0, 0, 0] }, 64)
    } else {
        (IdentityAddr { family: AF_INET6, ip: *ip }, 160)
    };
    IDENTITIES.get(Key::new(bits, data)).copied().unwrap_or(WORLD_IDENTITY)
}
