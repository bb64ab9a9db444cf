//! Policy at the socket: the identity check connect4/6 and sendmsg4/6 make on the destination a
//! connection or datagram will really go to (after load balancing chose the backend). Not a hook
//! itself: `connect.rs` and `udp.rs` call [`allowed`].
//!
//! - Who: the connecting process's cgroup (`bpf_get_current_cgroup_id`, cgroup sock_addr programs
//!   from 5.7) -> `CGROUP_IDS` -> identity; a process in no pod's cgroup is `world`.
//! - Whom: the destination address -> `IDENTITIES` (longest prefix match) -> identity; an address
//!   no pod has is `world`.
//! - Verdict: a destination identity no rule selects (`POLICED` has no entry) is open; otherwise
//!   the `POLICY` allow-list must have (from, to, port, protocol) or (from, to, any port, protocol).
//! - Denied: the call fails with EPERM, counted as `policy_denied`.
//! - Book: `book/src/hooks/policy-connect.md`.
use aya_ebpf::{helpers::bpf_get_current_cgroup_id, maps::lpm_trie::Key};
use mesh_common::{AF_INET, AF_INET6, IdentityAddr, PolicyKey, WORLD_IDENTITY};

use crate::{
    maps::{CGROUP_IDS, IDENTITIES, POLICED, POLICY},
    sock_addr::Addr,
};

// ANCHOR: allowed
/// Whether the calling process may reach `to` (the final destination) over `protocol`.
#[inline(always)]
pub fn allowed(to: &Addr, protocol: u32) -> bool {
    let dst = identity_of(to);
    // SAFETY: plain lookups; values are copied out at once.
    if unsafe { POLICED.get(&dst) }.is_none() {
        return true;
    }
    // SAFETY: no arguments, no memory.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    let src = unsafe { CGROUP_IDS.get(&cgroup) }.copied().unwrap_or(WORLD_IDENTITY);
    let exact = PolicyKey { from: src, to: dst, port: to.port, protocol };
    let any_port = PolicyKey { port: 0, ..exact };
    unsafe { POLICY.get(&exact).is_some() || POLICY.get(&any_port).is_some() }
}
// ANCHOR_END: allowed

/// The identity of an address (an IPv4-mapped IPv6 address as its IPv4 address).
#[inline(always)]
fn identity_of(a: &Addr) -> u32 {
    let (data, bits) = if a.family == AF_INET || a.mapped() {
        let v4 = if a.mapped() { a.ip[3] } else { a.ip[0] };
        (IdentityAddr { family: AF_INET, ip: [v4, 0, 0, 0] }, 64)
    } else {
        (IdentityAddr { family: AF_INET6, ip: a.ip }, 160)
    };
    IDENTITIES.get(Key::new(bits, data)).copied().unwrap_or(WORLD_IDENTITY)
}
