//! cgroup_skb ingress: the receiving pod's own check, for peers the mesh never saw connect (a
//! process outside the lab's cgroup, another host, a raw pod address): connect4/6 and
//! sendmsg4/6 only run for the lab's processes.
//!
//! - Attach: `BPF_CGROUP_INET_INGRESS` on the lab's cgroup; runs for every packet delivered to a
//!   socket of a process in it (after IP reassembly, at the socket's filter: `sk_filter`), with
//!   `skb->data` at the IP header. Return 1 to deliver, 0 to drop.
//! - Judged: a TCP SYN (a connection opening; the handshake crosses the stack even for
//!   connections sockmap later redirects) and every UDP datagram, on (identity of the source
//!   address, identity of the destination address, destination port, protocol). Packets of
//!   established TCP connections pass: like a connection-tracking firewall, ingress decides
//!   when a connection opens (revocation reaches established connections through sk_msg).
//! - A port whose rule has HTTP matches takes connections only from lab processes: their
//!   requests are judged in the client's sk_msg (`http.rs`); a connection sock_ops did not see
//!   open (`MESH_CONNECTS`) has nobody to judge its requests and is dropped.
//! - Fail closed: to a policed pod, any IP protocol but TCP, UDP and ICMP is dropped (an IPv6
//!   extension header in front of TCP is not parsed; it is dropped instead).
//! - Dropped: the packet vanishes (cgroup_skb cannot answer with a reset); a TCP client retries
//!   its SYN until connect() times out. Counted as `ingress_denied`, reported as a denial.
//! - Redirected payload never reaches this hook (it is queued on the peer socket without an
//!   skb): the reason sk_msg judges established connections itself.
//! - Minimum kernel: 4.10 (cgroup_skb), `bpf_skb_load_bytes` in it since 4.10.
//! - Book: `book/src/hooks/cgroup-skb.md`.
use aya_ebpf::{macros::cgroup_skb, programs::SkBuffContext};
use mesh_common::{AF_INET, AF_INET6, Counter, Hook, IPPROTO_TCP, IPPROTO_UDP, SockKey};

use crate::{
    maps::{HTTP_RULES, MESH_CONNECTS, bump},
    policy::{self, Flow, Verdict},
};

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

// ANCHOR: entry
#[cgroup_skb(ingress)]
pub fn mesh_ingress(ctx: SkBuffContext) -> i32 {
    match check(&ctx) {
        Ok(deliver) => i32::from(deliver),
        // The packet is shorter than its headers say: not ours to judge, the stack drops it.
        Err(_) => 1,
    }
}
// ANCHOR_END: entry

// ANCHOR: check
fn check(ctx: &SkBuffContext) -> Result<bool, i64> {
    let first: u8 = ctx.load(0)?;
    let (family, src, dst, protocol, l4) = match first >> 4 {
        4 => {
            let src: u32 = ctx.load(12)?;
            let dst: u32 = ctx.load(16)?;
            (AF_INET, [src, 0, 0, 0], [dst, 0, 0, 0], ctx.load::<u8>(9)?, usize::from(first & 0xf) * 4)
        }
        6 => {
            let mut src = [0u32; 4];
            let mut dst = [0u32; 4];
            for i in 0..4 {
                src[i] = ctx.load(8 + 4 * i)?;
                dst[i] = ctx.load(24 + 4 * i)?;
            }
            (AF_INET6, src, dst, ctx.load::<u8>(6)?, 40)
        }
        _ => return Ok(true),
    };
    let port = match u32::from(protocol) {
        IPPROTO_TCP => {
            let flags: u8 = ctx.load(l4 + 13)?;
            if flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                return Ok(true);
            }
            u32::from(u16::from_be(ctx.load(l4 + 2)?))
        }
        IPPROTO_UDP => u32::from(u16::from_be(ctx.load(l4 + 2)?)),
        _ if protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6 => return Ok(true),
        // Anything else: no rule names its protocol, so a policed pod never gets it.
        _ => 0,
    };
    let to = policy::identity_of(family, &dst);
    let (from, verdict) = policy::judge(policy::identity_of(family, &src), to, port, u32::from(protocol));
    let verdict = match verdict {
        // HTTP matches are enforced by the client's sk_msg: only a connection a lab process
        // opened (sock_ops saw its SYN leave) has one.
        // SAFETY: a lookup whose value is only tested for presence, never read.
        Verdict::Allowed(rule) if unsafe { HTTP_RULES.get(&rule) }.is_some() => {
            let sport = u32::from(u16::from_be(ctx.load(l4)?));
            let key = SockKey::new(0, family, src, dst, sport, port);
            // SAFETY: a plain lookup.
            if unsafe { MESH_CONNECTS.get(&key) }.is_some() { verdict } else { Verdict::Denied }
        }
        v => v,
    };
    let flow = Flow { hook: Hook::INGRESS, protocol: u32::from(protocol), from, to, family, port, src, dst };
    let deliver = policy::record(verdict, &flow);
    if !deliver {
        bump(Counter::IngressDenied);
    }
    Ok(deliver)
}
// ANCHOR_END: check
