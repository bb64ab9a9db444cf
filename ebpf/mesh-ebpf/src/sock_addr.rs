//! What the cgroup sock_addr hooks (`connect.rs`, `getpeername.rs`, `udp.rs`) share: reading and
//! writing the address a call carries, and turning it into a service key and a backend address.
//! Not a hook itself.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::programs::SockAddrContext;
use mesh_common::{AF_INET, AF_INET6, Backend, ServiceKey};

/// `::ffff:0:0/96`'s third word, as BPF holds it.
const MAPPED: u32 = 0xffff_u32.to_be();

/// An address as a sock_addr hook sees it: words in network byte order (IPv4 in word 0), port
/// in host byte order.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    pub ip: [u32; 4],
    pub port: u32,
    pub family: u32,
}

impl Addr {
    /// An IPv6 address of the form `::ffff:a.b.c.d`.
    #[inline(always)]
    pub fn mapped(&self) -> bool {
        self.family == AF_INET6 && self.ip[0] == 0 && self.ip[1] == 0 && self.ip[2] == MAPPED
    }

    /// The service key this address names: an IPv4-mapped address names the IPv4 service.
    #[inline(always)]
    pub fn service_key(&self, protocol: u32) -> ServiceKey {
        let (ip, family) =
            if self.mapped() { ([self.ip[3], 0, 0, 0], AF_INET) } else { (self.ip, self.family) };
        ServiceKey { ip, port: self.port, family, protocol, pad: 0 }
    }

    /// Where a socket that asked for `self` reaches `b`: the same family (mapped for a mapped
    /// request); `None` when the backend has no address of that family.
    #[inline(always)]
    pub fn backend(&self, b: &Backend) -> Option<Addr> {
        let ip = if self.family == AF_INET || self.mapped() {
            if b.ip4 == 0 {
                return None;
            }
            if self.family == AF_INET { [b.ip4, 0, 0, 0] } else { [0, 0, MAPPED, b.ip4] }
        } else {
            if b.ip6 == [0; 4] {
                return None;
            }
            b.ip6
        };
        Some(Addr { ip, port: b.port, family: self.family })
    }
}

/// The address of this call (`family` is the hook's: AF_INET for the `4` hooks).
#[inline(always)]
pub fn read(ctx: &SockAddrContext, family: u32) -> Addr {
    let sa = ctx.sock_addr;
    // SAFETY: fields of the live bpf_sock_addr of this call; the IPv6 words only in `6` hooks.
    unsafe {
        let port = u32::from(u16::from_be(read_volatile(&raw const (*sa).user_port) as u16));
        let ip = if family == AF_INET {
            [read_volatile(&raw const (*sa).user_ip4), 0, 0, 0]
        } else {
            [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ]
        };
        Addr { ip, port, family }
    }
}

/// Rewrites the address of this call (connect, sendmsg: the destination; getpeername, recvmsg:
/// the peer the application is told about).
#[inline(always)]
pub fn write(ctx: &SockAddrContext, a: &Addr) {
    let sa = ctx.sock_addr;
    // SAFETY: these hooks may write the address fields of their family.
    unsafe {
        if a.family == AF_INET {
            write_volatile(&raw mut (*sa).user_ip4, a.ip[0]);
        } else {
            for (i, w) in a.ip.iter().enumerate() {
                write_volatile(&raw mut (*sa).user_ip6[i], *w);
            }
        }
        write_volatile(&raw mut (*sa).user_port, u32::from((a.port as u16).to_be()));
    }
}

/// `IPPROTO_TCP` or `IPPROTO_UDP`.
#[inline(always)]
pub fn protocol(ctx: &SockAddrContext) -> u32 {
    // SAFETY: a field of the live bpf_sock_addr.
    unsafe { read_volatile(&raw const (*ctx.sock_addr).protocol) }
}
