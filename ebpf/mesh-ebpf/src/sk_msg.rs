//! sk_msg hook: sends each message straight to the peer socket when the peer is on this node.
//!
//! - Attach: `BPF_SK_MSG_VERDICT` on the `SOCKETS` sockhash; runs on every sendmsg()/write() of a
//!   socket that sock_ops put in that map.
//! - Verdict: `bpf_msg_redirect_hash(.., BPF_F_INGRESS)` queues the bytes on the peer socket's
//!   psock ingress list, skipping TCP, IP, qdiscs, netfilter, the veths and the bridge. No local
//!   peer: pass, and the message (and every later one from this socket) takes the TCP/IP path.
//! - Flow control: nothing in the kernel makes a redirecting writer wait for its reader. Once
//!   the peer holds the budget's worth of bytes it has not read (`UNREAD`, whose reads
//!   `unread.rs` counts, or which a socket's own writes clear where it cannot), the connection
//!   takes TCP/IP for good, and TCP's window makes the writer wait (`FLOW_CONTROL`). While the
//!   node's TCP memory is under pressure (`pressure.rs`) the budget shrinks to 64 KiB.
//! - Policy: once a policy exists, each socket's connection is judged again at its first
//!   message after every policy change (`POLICY_GEN`); a connection the policy no longer allows
//!   is cut: `SK_DROP` (the writer's sendmsg fails with EACCES) for this and every later message
//!   of either end. Redirected bytes skip cgroup_skb and netfilter: this is their only check.
//!   A client allowed by a rule with HTTP matches has each request line judged (`http.rs`).
//! - Two builds of the same body: `mesh_redirect` keys by network namespace
//!   (`bpf_get_netns_cookie`, sk_msg since 5.15), `mesh_redirect_nocookie` for older kernels.
//! - Minimum kernel: 4.17 (sk_msg), 4.18 (sockhash, `bpf_msg_redirect_hash`, the address and
//!   port fields of `sk_msg_md`).
//! - Kernel config: `CONFIG_BPF_SYSCALL`; before 5.13 also `CONFIG_BPF_STREAM_PARSER` (commit
//!   887596095ec2). Sources of each fact: the book's chapter.
//! - Book: `book/src/hooks/sk_msg.md`.
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, sk_action},
    helpers::{bpf_get_netns_cookie, bpf_ktime_get_ns},
    macros::sk_msg,
    programs::SkMsgContext,
};
use mesh_common::{
    AF_INET, AF_INET6, Counter, FlowControl, Hook, IPPROTO_TCP, PRESSURE_HOLD_NS, SockKey, SockPolicy,
    SockState, Unread,
};

use crate::{
    http::{self, Http},
    maps::{
        FLOW_CONTROL, HTTP_PROGS, HTTP_RULES, POLICY_GEN, SIDECAR_ALIASES, SOCK_POLICY, SOCK_STATE, SOCKETS,
        UNREAD, bump, set_sock_state, sidecar_port, sock_state,
    },
    policy::{self, Flow, Verdict},
    telemetry,
};

// ANCHOR: entry
#[sk_msg]
pub fn mesh_redirect(ctx: SkMsgContext) -> u32 {
    match try_mesh_redirect::<true, false>(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// The same for kernels before 5.15, whose sk_msg cannot read the netns cookie.
#[sk_msg]
pub fn mesh_redirect_nocookie(ctx: SkMsgContext) -> u32 {
    match try_mesh_redirect::<false, false>(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// The same body after HTTP judging, for clients whose connection is allowed by a rule with
/// HTTP matches: the redirect program tail-calls it (`HTTP_PROGS`). A program of its own, so the
/// verifier checks the parser once, apart from every path through the redirect program.
#[sk_msg]
pub fn mesh_http(ctx: SkMsgContext) -> u32 {
    match try_mesh_redirect::<true, true>(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

#[sk_msg]
pub fn mesh_http_nocookie(ctx: SkMsgContext) -> u32 {
    match try_mesh_redirect::<false, true>(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}
// ANCHOR_END: entry

// ANCHOR: body
fn try_mesh_redirect<const NETNS: bool, const HTTP: bool>(ctx: &SkMsgContext) -> Result<u32, u32> {
    // SAFETY: a u32 field of the live sk_msg_md the kernel handed us.
    let family = unsafe { read_volatile(&raw const (*ctx.msg).family) };
    if family != AF_INET && family != AF_INET6 {
        return Ok(sk_action::SK_PASS);
    }
    let me = msg_key::<NETNS>(ctx, family);
    let check = if HTTP { http_check(ctx, &me) } else { policy_check(ctx, &me) };
    match check {
        Check::Pass => {}
        // Held back, not sent: the program runs again with the next write.
        Check::Cork => return Ok(sk_action::SK_PASS),
        Check::Drop => return Ok(sk_action::SK_DROP),
    }
    // ANCHOR: pressure
    let mut flow = FLOW_CONTROL.get(0).copied().unwrap_or_default();
    // The node's TCP memory passed tcp_mem[1] within the last PRESSURE_HOLD_NS (`pressure.rs`):
    // the smaller budget, so that redirected bytes never reach tcp_mem[2].
    // SAFETY: bpf_ktime_get_ns has no preconditions.
    let pressure = flow.pressure_at != 0
        && unsafe { bpf_ktime_get_ns() }.wrapping_sub(flow.pressure_at) < PRESSURE_HOLD_NS
        && flow.budget != 0
        && flow.pressure_budget != 0;
    if pressure && flow.pressure_budget < flow.budget {
        flow.budget = flow.pressure_budget;
    }
    // ANCHOR_END: pressure
    if flow.budget != 0 && flow.reads_counted == 0 {
        // Reads are not counted on this kernel: a socket that writes has read what was
        // redirected to it (see FlowControl).
        if let Some(u) = UNREAD.get_ptr_mut(&SockKey { netns: 0, ..me }) {
            // SAFETY: a live map value; `read` is only written by this socket (its lock held).
            unsafe { (*u).read = (*u).redirected };
        }
    }
    // Once a message of this socket went through TCP, all later ones must too: the peer reads
    // its redirect queue before its TCP receive queue, so a redirected message could overtake
    // bytes still in flight.
    if sock_state(&me) & SockState::PASSED != 0 {
        bump(Counter::MsgPassed);
        return Ok(sk_action::SK_PASS);
    }
    // The peer socket is stored under this connection's key seen from the other end.
    let mut sent = redirect(ctx, &flow, &me, &mut me.peer());
    // With sidecars the loopback hop between an application and its proxy does not mirror
    // (iptables rewrote the destination): try both ways across it.
    let port = sidecar_port();
    if sent == Sent::NoPeer && port != 0 {
        // proxy -> app: our peer is filed as an alias of the application's real key.
        // SAFETY: a plain lookup; the value is copied out at once.
        if let Some(real) = unsafe { SIDECAR_ALIASES.get(&me.peer()) } {
            sent = redirect(ctx, &flow, &me, &mut { *real });
        } else if family == AF_INET {
            // app -> proxy: the proxy accepted the REDIRECTed connection on 127.0.0.1:<port>.
            sent = redirect(ctx, &flow, &me, &mut me.sidecar_alias(port).peer());
        }
    }
    match sent {
        Sent::Redirected => bump(Counter::MsgRedirected),
        Sent::NoPeer | Sent::OverBudget => {
            // For good: see PASSED above.
            set_sock_state(&me, SockState::PASSED);
            if sent == Sent::OverBudget {
                bump(if pressure { Counter::PressureFallback } else { Counter::FlowFallback });
            }
            bump(Counter::MsgPassed);
        }
    }
    Ok(sk_action::SK_PASS)
}
// ANCHOR_END: body

// ANCHOR: still_allowed
enum Check {
    Pass,
    Cork,
    Drop,
}

/// The policy's say on this message. The connection is judged again (as the client's
/// connection to the server's port) once per policy generation; a denial is final: the sender
/// gets EACCES, its bytes are gone, and every later message of either end is dropped too. A
/// client whose connection is allowed by a rule with HTTP matches has every request judged
/// ([`http::judge`]). A socket sock_ops never filed (its entry aged out of the LRU) is left
/// alone.
#[inline(always)]
fn policy_check(ctx: &SkMsgContext, me: &SockKey) -> Check {
    let generation = POLICY_GEN.get(0).copied().unwrap_or(0);
    if generation == 0 {
        return Check::Pass;
    }
    let Some(state) = SOCK_POLICY.get_ptr_mut(me) else { return Check::Pass };
    // SAFETY: a live map value; only this socket's own messages (serialised by its socket
    // lock) write it.
    let p = unsafe { &mut *state };
    if p.flags & SockPolicy::DENIED != 0 {
        bump(Counter::MessageDenied);
        return Check::Drop;
    }
    if p.generation != generation {
        // Only now the addresses' identities: a message of an unchanged policy costs two
        // lookups (the generation and this entry).
        let passive = p.flags & SockPolicy::PASSIVE != 0;
        let (client, server, port) = if passive {
            (me.remote_ip, me.local_ip, me.local_port)
        } else {
            (me.local_ip, me.remote_ip, me.remote_port)
        };
        let to = policy::identity_of(me.family, &server);
        let (from, verdict) = policy::judge(policy::identity_of(me.family, &client), to, port, IPPROTO_TCP);
        let flow = Flow {
            hook: Hook::MESSAGE,
            protocol: IPPROTO_TCP,
            from,
            to,
            family: me.family,
            port,
            src: client,
            dst: server,
        };
        p.generation = generation;
        if !policy::record(verdict, &flow) {
            p.flags |= SockPolicy::DENIED;
            telemetry::denied(me, Hook::MESSAGE);
            bump(Counter::MessageDenied);
            return Check::Drop;
        }
        // Only the client parses: requests are what it sends.
        p.http_rule = match verdict {
            // SAFETY: a lookup whose value is only tested for presence, never read.
            Verdict::Allowed(rule) if !passive && unsafe { HTTP_RULES.get(&rule) }.is_some() => rule,
            _ => 0,
        };
    }
    if p.http_rule == 0 {
        return Check::Pass;
    }
    // SAFETY: the context is the live sk_msg; on success this does not return.
    let _ = unsafe { HTTP_PROGS.tail_call(ctx, 0) };
    // No HTTP program in the array: nothing can judge the request, so it does not pass.
    p.flags |= SockPolicy::DENIED;
    bump(Counter::HttpDenied);
    Check::Drop
}

/// The HTTP program's check: the redirect program judged the connection a moment ago, and
/// tail-called here because its rule has HTTP matches; the request in this message is judged.
#[inline(always)]
fn http_check(ctx: &SkMsgContext, me: &SockKey) -> Check {
    let Some(state) = SOCK_POLICY.get_ptr_mut(me) else { return Check::Drop };
    // SAFETY: as in policy_check.
    let p = unsafe { &mut *state };
    // SAFETY: a plain lookup; the value stays valid for this program run.
    let Some(rules) = (unsafe { HTTP_RULES.get(&p.http_rule) }) else { return Check::Drop };
    match http::judge(ctx, rules, &mut p.http_state) {
        Http::Allow => {
            policy::count(p.http_rule, Hook::HTTP);
            Check::Pass
        }
        Http::Cork => Check::Cork,
        Http::Deny => {
            p.flags |= SockPolicy::DENIED;
            let (client, server) = (me.local_ip, me.remote_ip);
            let flow = Flow {
                hook: Hook::HTTP,
                protocol: IPPROTO_TCP,
                from: policy::identity_of(me.family, &client),
                to: policy::identity_of(me.family, &server),
                family: me.family,
                port: me.remote_port,
                src: client,
                dst: server,
            };
            policy::record(Verdict::Denied, &flow);
            telemetry::denied(me, Hook::HTTP);
            bump(Counter::HttpDenied);
            Check::Drop
        }
    }
}
// ANCHOR_END: still_allowed

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// Queued on the peer socket.
    Redirected,
    /// No local peer under that key (or it asked to receive through TCP only): TCP/IP.
    NoPeer,
    /// The peer has not read the budget's worth of what was redirected to it: TCP/IP,
    /// whose flow control makes the writer wait for the reader.
    OverBudget,
}

// ANCHOR: redirect
/// Redirects the message to `target`, unless it asked to receive through TCP only
/// (`NO_REDIRECT`) or its redirect queue already holds the budget's worth of bytes its
/// application has not read (`UNREAD`). On a hit the helper records the target and returns
/// SK_PASS (the program's SK_PASS then means "deliver there") and the target is marked
/// `RECEIVED`: its redirect queue may now hold bytes it has not read, so it must stay in the map
/// until it closes (see sock_ops.rs). On a miss the helper records nothing and the message takes
/// TCP/IP. The budget is checked before the helper: once it has recorded a target, SK_PASS
/// can only mean "deliver there". With telemetry on, the bytes are added to both ends' flow
/// records (TCP's own counters never see them).
#[inline(always)]
fn redirect(ctx: &SkMsgContext, flow: &FlowControl, me: &SockKey, target: &mut SockKey) -> Sent {
    let state = SOCK_STATE.get_ptr_mut(&*target);
    // SAFETY: a live map value; racing writers only ever add bits.
    let bits = state.map_or(0, |p| unsafe { *p });
    if bits & SockState::NO_REDIRECT != 0 {
        return Sent::NoPeer;
    }
    // What the target's application has not read yet (the read side keys without netns).
    let budget = u64::from(flow.budget);
    let unread_key = SockKey { netns: 0, ..*target };
    // Looked up whatever the budget: a pointer set on one path only would be spilled to a
    // stack slot that 5.10's and 6.1's verifiers refuse to read on the other ("invalid read
    // from stack").
    let unread = UNREAD.get_ptr_mut(&unread_key);
    if let Some(u) = unread
        // SAFETY: a live map value; `read` may grow meanwhile, which only makes this larger
        // than what is left.
        && budget != 0
        && unsafe { (*u).redirected.saturating_sub((*u).read) } >= budget
    {
        return Sent::OverBudget;
    }
    if SOCKETS.redirect_msg(ctx, &mut *target, BPF_F_INGRESS.into()) != sk_action::SK_PASS.into() {
        return Sent::NoPeer;
    }
    match state {
        // SAFETY: as above.
        Some(p) if bits & SockState::RECEIVED == 0 => unsafe { *p |= SockState::RECEIVED },
        Some(_) => {}
        None => {
            let _ = SOCK_STATE.insert(&*target, &SockState::RECEIVED, 0);
        }
    }
    // SAFETY: a u32 field of the live sk_msg_md.
    let size = unsafe { read_volatile(&raw const (*ctx.msg).size) };
    // Counted now, before the kernel queues the bytes (after this program returns), so the
    // reader can never count bytes not added here yet.
    if budget != 0 {
        match unread {
            // SAFETY: a live map value; only this connection's writer (under its socket lock)
            // writes `redirected`.
            Some(u) => unsafe { (*u).redirected += u64::from(size) },
            None => {
                let _ = UNREAD.insert(&unread_key, &Unread { redirected: u64::from(size), read: 0 }, 0);
            }
        }
    }
    telemetry::redirected(me, target, size);
    Sent::Redirected
}
// ANCHOR_END: redirect

/// The connection as the sending socket sees it, built exactly like sock_ops builds its keys.
/// The verifier only accepts 4-byte loads of these fields: each is a volatile u32 read, which
/// keeps LLVM from merging neighbours into one wider load.
#[inline(always)]
fn msg_key<const NETNS: bool>(ctx: &SkMsgContext, family: u32) -> SockKey {
    let m = ctx.msg;
    let mut local = [0u32; 4];
    let mut remote = [0u32; 4];
    // SAFETY: every pointer is a u32 field of the live sk_msg_md the kernel handed us;
    // bpf_get_netns_cookie reads the socket's namespace from the same context.
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
        // As in sock_ops: local_port in host order; remote_port a 32-bit network-order value
        // (the kernel shifts the 16-bit port up on little-endian machines), so from_be works on
        // either byte order.
        let local_port = read_volatile(&raw const (*m).local_port);
        let remote_port = u32::from_be(read_volatile(&raw const (*m).remote_port));
        let mut key = SockKey::new(0, family, local, remote, local_port, remote_port);
        // Loopback keys carry the namespace, exactly as sock_ops filed them.
        if NETNS && key.is_loopback() {
            key.netns = bpf_get_netns_cookie(m.cast());
        }
        key
    }
}
