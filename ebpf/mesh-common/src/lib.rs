//! Types shared by the mesh's kernel programs (`mesh-ebpf`) and its user space (`mesh-agent`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel and user space read the same bytes.
//! With the `user` feature the types also implement `aya::Pod` so user space can use them as
//! map keys and values.
//!
//! Over 600 lines on purpose: one file is the one place where the kernel's and user space's
//! view of every map is defined side by side (the book includes its anchors), and a type moved
//! into another file would still be read with the rest.
#![no_std]

/// `AF_INET` from `<sys/socket.h>`.
pub const AF_INET: u32 = 2;
/// `AF_INET6` from `<sys/socket.h>`.
pub const AF_INET6: u32 = 10;

/// Name of the sockhash holding every established TCP socket of the lab, keyed by [`SockKey`].
pub const SOCKETS_MAP: &str = "SOCKETS";
/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the one-slot array holding the sidecar outbound port (0: no sidecars), see
/// [`SockKey::sidecar_alias`].
pub const SIDECAR_MAP: &str = "SIDECAR";
/// Name of the per-socket state map ([`SockKey`] -> [`SockState`] bits).
pub const SOCK_STATE_MAP: &str = "SOCK_STATE";
/// Capacity of the sockhash: established sockets the mesh can accelerate at once.
pub const MAX_SOCKETS: u32 = 65_536;
/// Name of the service map ([`ServiceKey`] -> [`ServiceValue`]).
pub const SERVICES_MAP: &str = "SERVICES";
/// Name of the backend map ([`BackendKey`] -> [`Backend`]).
pub const BACKENDS_MAP: &str = "BACKENDS";
/// Services (virtual address, port, protocol) the mesh can balance.
pub const MAX_SERVICES: u32 = 16_384;
/// Backend slots over all services (a backend of weight w takes w slots).
pub const MAX_BACKEND_SLOTS: u32 = 262_144;
/// `IPPROTO_TCP`, `IPPROTO_UDP`.
pub const IPPROTO_TCP: u32 = 6;
pub const IPPROTO_UDP: u32 = 17;

// ANCHOR: service_types
/// A service as a connecting socket names it: virtual address, port (host byte order),
/// protocol. Addresses follow [`SockKey`]'s rules: IPv4 in `ip[0]`, an IPv4-mapped IPv6 address
/// folded to IPv4, so a dual-stack application reaches the same service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceKey {
    pub ip: [u32; 4],
    pub port: u32,
    pub family: u32,
    pub protocol: u32,
    /// Always 0 (no implicit padding in a hash key).
    pub pad: u32,
}

/// A service's backend slots: `BACKENDS` holds `(id, 0) .. (id, slots - 1)`. `slots == 0`: the
/// service exists but has no backend, and connecting to it is refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ServiceValue {
    pub id: u32,
    pub slots: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BackendKey {
    pub service: u32,
    pub slot: u32,
}

/// One backend slot: where a connection to the service goes. A pod backend has both addresses;
/// an address backend only its own family's (the other is zero, and a socket of that family is
/// refused rather than sent nowhere).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Backend {
    /// Network byte order.
    pub ip4: u32,
    pub ip6: [u32; 4],
    /// Host byte order.
    pub port: u32,
}

/// What a balanced socket connected (or, for UDP, last sent) to, and the backend it was given,
/// kept in its socket storage: getpeername() and recvmsg() answer with the former, and a UDP
/// socket keeps sending to the same backend. It goes away with the socket: nothing to collect.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OriginalDst {
    /// As the application wrote it: for an IPv6 socket the full (possibly IPv4-mapped) address.
    pub ip: [u32; 4],
    /// Host byte order.
    pub port: u32,
    pub family: u32,
    pub backend: Backend,
}
// ANCHOR_END: service_types

// ANCHOR: sock_key
/// A TCP connection as one of its two sockets sees it.
///
/// Pod addresses are unique on a node, loopback addresses are not: every pod has its own
/// 127.0.0.1, so two pods can hold the same loopback 4-tuple at once. For a loopback-to-loopback
/// connection ([`SockKey::is_loopback`]), whose two ends always share a namespace, `netns` is the
/// network namespace's cookie; for every other connection it is 0 (the two ends live in
/// different namespaces and must find each other's keys). Kernels before 5.15 cannot tell
/// sock_ops and sk_msg the cookie: there the mesh leaves loopback-to-loopback connections alone.
///
/// Addresses are kept exactly as the kernel hands them to BPF (network byte order); ports are in
/// host byte order. IPv4 uses `ip[0]` and leaves the rest zero; an IPv4-mapped IPv6 address
/// (`::ffff:a.b.c.d`, a dual-stack socket talking IPv4) is stored as IPv4, so both ends of one
/// connection always agree on the family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockKey {
    pub netns: u64,
    pub local_ip: [u32; 4],
    pub remote_ip: [u32; 4],
    pub local_port: u32,
    pub remote_port: u32,
    pub family: u32,
    /// Always 0: keeps the key free of implicit padding (hash keys compare every byte).
    pub pad: u32,
}

impl SockKey {
    // ANCHOR: sidecar_alias
    /// With sidecars, iptables REDIRECTs an application's outbound connection to the proxy on
    /// `127.0.0.1:<port>`; the application's socket still believes it talks to the real
    /// destination, so the two ends of that loopback hop do not mirror each other. This is the
    /// proxy's peer as the proxy's accepted socket sees it: the application's local address and
    /// port, connected to the proxy's listener. sock_ops maps it to the application's real key
    /// (`SIDECAR_ALIASES`).
    #[must_use]
    pub const fn sidecar_alias(&self, port: u32) -> SockKey {
        SockKey {
            netns: self.netns,
            local_ip: self.local_ip,
            remote_ip: [LOCALHOST_BE, 0, 0, 0],
            local_port: self.local_port,
            remote_port: port,
            family: AF_INET,
            pad: 0,
        }
    }
    // ANCHOR_END: sidecar_alias

    /// The key under which the *other* end of this connection is stored.
    #[must_use]
    pub const fn peer(&self) -> SockKey {
        SockKey {
            netns: self.netns,
            local_ip: self.remote_ip,
            remote_ip: self.local_ip,
            local_port: self.remote_port,
            remote_port: self.local_port,
            family: self.family,
            pad: 0,
        }
    }

    // ANCHOR: is_loopback
    /// Both ends on a loopback address (127.0.0.0/8 or ::1). Without the netns cookie such a
    /// key is ambiguous: every pod has its own 127.0.0.1.
    pub const fn is_loopback(&self) -> bool {
        is_loopback(self.family, self.local_ip) && is_loopback(self.family, self.remote_ip)
    }
    // ANCHOR_END: is_loopback
}
// ANCHOR_END: sock_key

impl SockKey {
    /// Builds a key from what a socket hook reads. `local_ip`/`remote_ip` are in network byte
    /// order (IPv4 in word 0); an IPv6 socket whose ends are both IPv4-mapped becomes IPv4.
    pub const fn new(
        netns: u64,
        family: u32,
        local_ip: [u32; 4],
        remote_ip: [u32; 4],
        local_port: u32,
        remote_port: u32,
    ) -> SockKey {
        let (family, local_ip, remote_ip) =
            if family == AF_INET || (is_v4_mapped(local_ip) && is_v4_mapped(remote_ip)) {
                let (l, r) =
                    if family == AF_INET { (local_ip[0], remote_ip[0]) } else { (local_ip[3], remote_ip[3]) };
                (AF_INET, [l, 0, 0, 0], [r, 0, 0, 0])
            } else {
                (family, local_ip, remote_ip)
            };
        SockKey { netns, local_ip, remote_ip, local_port, remote_port, family, pad: 0 }
    }
}

/// 127.0.0.1 as the kernel stores it (network byte order) in a u32.
pub const LOCALHOST_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// 127.0.0.0/8 or ::1, with the words in network byte order.
const fn is_loopback(family: u32, ip: [u32; 4]) -> bool {
    match family {
        AF_INET => ip[0].to_ne_bytes()[0] == 127,
        _ => ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == 1u32.to_be(),
    }
}

/// `::ffff:a.b.c.d`, with the words in network byte order.
const fn is_v4_mapped(ip: [u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0xffff_u32.to_be()
}

// ANCHOR: counters
/// Slots of the per-CPU `COUNTERS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// sock_ops put an established socket into the sockhash.
    SocketsInserted = 0,
    /// sock_ops could not insert a socket (map full, or the kernel refused it).
    InsertFailed = 1,
    /// sk_msg found the peer socket and redirected the message to it.
    MsgRedirected = 2,
    /// sk_msg found no local peer and let the message take the TCP/IP path.
    MsgPassed = 3,
    /// A loopback-to-loopback socket left out of the map (kernel without the netns cookie).
    LoopbackSkipped = 4,
    /// A socket taken out of the map when it half-closed before any byte was redirected to it.
    HalfCloseDetached = 5,
    /// A socket whose incoming bytes stay on TCP because it uses SO_RCVLOWAT (never put into
    /// the map, or marked `NO_REDIRECT`).
    RcvlowatTcp = 6,
    /// connect() to a service address sent to one of its backends.
    ConnectBalanced = 7,
    /// connect() to a service address refused: no backend (for the socket's family).
    ConnectRefused = 8,
    /// connect() or sendto() refused by policy (EPERM).
    PolicyDenied = 9,
    /// A packet dropped by the ingress check (a connection opening or datagram policy does not
    /// allow, from a peer the egress checks never saw).
    IngressDenied = 10,
    /// A message of an established connection dropped in sk_msg because the policy no longer
    /// allows the connection (a revoked rule).
    MessageDenied = 11,
    /// A denial whose event did not fit in the `DENIALS` ring buffer (nobody draining it).
    EventsLost = 12,
    /// An HTTP request dropped in sk_msg (no HTTP rule matched it, or it could not be judged).
    HttpDenied = 13,
    /// A closed connection whose flow record did not fit in the `FLOW_EVENTS` ring buffer.
    FlowEventsLost = 14,
    /// A connection handed to TCP for good because its peer had not read the budget's worth
    /// ([`FlowControl`]) of what was redirected to it: TCP's flow control takes over.
    FlowFallback = 15,
    /// A socket whose incoming bytes stay on TCP because it asked for `TCP_INQ` (the count of
    /// bytes left to read in a control message), which the redirect's receive path never sends
    /// (marked `NO_REDIRECT`).
    InqTcp = 16,
    /// A connection handed to TCP for good because the node's TCP memory is under pressure
    /// (`tcp_mem[1]` passed) and its peer had the pressure budget's worth unread
    /// ([`FlowControl`]): redirected bytes are charged to that memory, and past its hard limit
    /// the writer gets ENOMEM.
    PressureFallback = 17,
}

// ANCHOR: sock_state
/// Bits of a socket's entry in `SOCK_STATE`, removed when the socket closes.
pub struct SockState;

impl SockState {
    /// The socket sent a message through TCP/IP: it never redirects again, or later redirected
    /// bytes could overtake the earlier TCP ones at the peer (which reads its redirect queue
    /// first).
    pub const PASSED: u32 = 1;
    /// Some peer redirected bytes to this socket: its redirect queue may hold unread data, so
    /// it must never leave the map before it closes (leaving drops that queue).
    pub const RECEIVED: u32 = 2;
    /// Nothing may be redirected to this socket (it uses SO_RCVLOWAT or TCP_INQ, which the
    /// kernel honours only for bytes that arrive through TCP).
    pub const NO_REDIRECT: u32 = 4;
}
// ANCHOR_END: sock_state
// ANCHOR_END: counters

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; 18] = [
        Counter::SocketsInserted,
        Counter::InsertFailed,
        Counter::MsgRedirected,
        Counter::MsgPassed,
        Counter::LoopbackSkipped,
        Counter::HalfCloseDetached,
        Counter::RcvlowatTcp,
        Counter::ConnectBalanced,
        Counter::ConnectRefused,
        Counter::PolicyDenied,
        Counter::IngressDenied,
        Counter::MessageDenied,
        Counter::EventsLost,
        Counter::HttpDenied,
        Counter::FlowEventsLost,
        Counter::FlowFallback,
        Counter::InqTcp,
        Counter::PressureFallback,
    ];

    /// Stable snake_case name, used in JSON output and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::SocketsInserted => "sockets_inserted",
            Counter::InsertFailed => "insert_failed",
            Counter::MsgRedirected => "msg_redirected",
            Counter::MsgPassed => "msg_passed",
            Counter::LoopbackSkipped => "loopback_skipped",
            Counter::HalfCloseDetached => "half_close_detached",
            Counter::RcvlowatTcp => "rcvlowat_tcp",
            Counter::ConnectBalanced => "connect_balanced",
            Counter::ConnectRefused => "connect_refused",
            Counter::PolicyDenied => "policy_denied",
            Counter::IngressDenied => "ingress_denied",
            Counter::MessageDenied => "message_denied",
            Counter::EventsLost => "events_lost",
            Counter::HttpDenied => "http_denied",
            Counter::FlowEventsLost => "flow_events_lost",
            Counter::FlowFallback => "flow_fallback",
            Counter::InqTcp => "inq_tcp",
            Counter::PressureFallback => "pressure_fallback",
        }
    }
}

// ANCHOR: policy_types
/// Name of the address -> identity map (longest prefix match; [`IdentityAddr`] -> identity).
pub const IDENTITIES_MAP: &str = "IDENTITIES";
/// Name of the cgroup id -> identity map: who a connecting socket's process is.
pub const CGROUP_IDS_MAP: &str = "CGROUP_IDS";
/// Name of the allow-list ([`PolicyKey`] -> rule number, from 1).
pub const POLICY_MAP: &str = "POLICY";
/// Name of the set of isolated identities (identity -> [`POLICED_INGRESS`] | [`POLICED_EGRESS`]):
/// a connection to an identity isolated for ingress, or from one isolated for egress, is denied
/// unless the allow-list has it. A flow between identities isolated neither way is open.
pub const POLICED_MAP: &str = "POLICED";
/// In `POLICED`: connections to this identity need an allow entry.
pub const POLICED_INGRESS: u32 = 1;
/// In `POLICED`: connections from this identity need an allow entry.
pub const POLICED_EGRESS: u32 = 2;
/// The identity of every address no pod has (outside the lab).
pub const WORLD_IDENTITY: u32 = 2;
/// The first identity given to a pod's label set.
pub const FIRST_POD_IDENTITY: u32 = 256;
/// Capacities: addresses with an identity, cgroups, allow entries.
pub const MAX_IDENTITY_ADDRS: u32 = 16_384;
pub const MAX_POLICY: u32 = 65_536;
/// Name of the per-CPU verdict counters: slot `rule * HOOKS + hook - 1` counts what `hook`
/// judged under rule number `rule` (from 1); rule 0 counts denials.
pub const VERDICTS_MAP: &str = "VERDICTS";
/// Rules whose verdicts are counted (rule numbers 1 .. MAX_RULES - 1; later rules still work).
pub const MAX_RULES: u32 = 1024;
/// Name of the ring buffer of [`Denial`] events.
pub const DENIALS_MAP: &str = "DENIALS";
/// Its size in bytes (a power of two, a multiple of the page size): 4,096 events.
pub const DENIALS_BYTES: u32 = 256 * 1024;
/// Name of the one-slot array holding the policy generation: the agent adds one each time the
/// allow-list or an identity changes; 0 while no policy was ever applied.
pub const POLICY_GEN_MAP: &str = "POLICY_GEN";
/// Name of the per-socket policy state (keyed like `SOCKETS`): see [`SockPolicy`].
pub const SOCK_POLICY_MAP: &str = "SOCK_POLICY";

/// Where a verdict was made.
pub struct Hook;

impl Hook {
    /// connect4/6: a TCP connection or a connecting UDP socket.
    pub const CONNECT: u32 = 1;
    /// sendmsg4/6: an unconnected UDP datagram.
    pub const SENDMSG: u32 = 2;
    /// cgroup_skb ingress: a TCP SYN or a UDP datagram arriving at a pod's socket.
    pub const INGRESS: u32 = 3;
    /// sk_msg: a message of an established connection, judged again after the policy changed.
    pub const MESSAGE: u32 = 4;
    /// sk_msg: an HTTP request line, judged against the rule's HTTP matches.
    pub const HTTP: u32 = 5;
    /// How many there are (slots per rule in `VERDICTS`).
    pub const COUNT: u32 = 5;

    pub const fn name(hook: u32) -> &'static str {
        match hook {
            Hook::CONNECT => "connect",
            Hook::SENDMSG => "sendmsg",
            Hook::INGRESS => "ingress",
            Hook::MESSAGE => "message",
            Hook::HTTP => "http",
            _ => "?",
        }
    }
}

/// A socket's `SOCK_POLICY` entry: sock_ops writes it when the socket enters the sockhash,
/// sk_msg keeps it up to date.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct SockPolicy {
    /// [`SockPolicy::PASSIVE`], [`SockPolicy::DENIED`].
    pub flags: u32,
    /// The policy generation the connection was last judged under (0: not yet).
    pub generation: u32,
    /// The rule that allows the connection when it has HTTP matches (this socket then parses
    /// the requests it sends), else 0.
    pub http_rule: u32,
    /// Where the request stream stands: [`SockPolicy::HTTP_REQUEST`] (a request line comes
    /// next) or [`SockPolicy::HTTP_HEADERS`] plus how many bytes of the blank line that ends
    /// the headers (`\r\n\r\n`) the last message ended with.
    pub http_state: u32,
}

impl SockPolicy {
    /// The socket accepted the connection (the peer is the client).
    pub const PASSIVE: u32 = 1;
    /// A message was dropped: the connection is cut for good (its byte stream has a hole).
    pub const DENIED: u32 = 2;
    pub const HTTP_REQUEST: u32 = 0;
    pub const HTTP_HEADERS: u32 = 0x100;
}

// ANCHOR: http_types
/// Name of the HTTP matches per rule (rule number -> [`HttpRules`]): a connection allowed by a
/// rule listed here may only carry requests one of its matches allows.
pub const HTTP_RULES_MAP: &str = "HTTP_RULES";
/// Matches per rule, bytes of a method, bytes of a path prefix.
pub const MAX_HTTP_MATCHES: usize = 4;
pub const HTTP_METHOD_MAX: usize = 8;
pub const HTTP_PATH_MAX: usize = 64;
/// Name of the program array holding the HTTP-judging sk_msg program (slot 0), which the
/// redirect program tail-calls.
pub const HTTP_PROGS_MAP: &str = "HTTP_PROGS";
/// Name of the connections the mesh saw a lab process open (sock_ops `TCP_CONNECT_CB`, keyed
/// like `SOCKETS` without the netns cookie): the ingress check lets a SYN onto a port with
/// HTTP rules only from them, since only a mesh client's requests are parsed.
pub const MESH_CONNECTS_MAP: &str = "MESH_CONNECTS";

/// One allowed request shape: a method and a path prefix, both exact bytes. The masks are
/// 0xff over the used bytes and 0 after them: the kernel compares with `(a ^ b) & mask`, since
/// a comparison against the length would be a branch per byte for the verifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HttpMatch {
    pub method: [u8; HTTP_METHOD_MAX],
    pub method_mask: [u8; HTTP_METHOD_MAX],
    pub method_len: u32,
    pub path_len: u32,
    pub path: [u8; HTTP_PATH_MAX],
    pub path_mask: [u8; HTTP_PATH_MAX],
}

/// A rule's HTTP matches; `count` of them are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct HttpRules {
    pub count: u32,
    pub matches: [HttpMatch; MAX_HTTP_MATCHES],
}
// ANCHOR_END: http_types

/// One denial, as the kernel reports it in `DENIALS`. Addresses like [`IdentityAddr`]'s
/// (network byte order, IPv4 in word 0); `src` is zero where the hook does not know it yet
/// (connect). `port` is the destination port, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Denial {
    pub hook: u32,
    pub protocol: u32,
    pub from: u32,
    pub to: u32,
    pub family: u32,
    pub port: u32,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The data of an `IDENTITIES` key: family, then the address in network byte order (IPv4 in
/// `ip[0]`; an IPv4-mapped IPv6 address is looked up as IPv4). The trie's prefix length counts
/// the family's 32 bits too: 64 for an IPv4 host, 160 for an IPv6 host.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct IdentityAddr {
    pub family: u32,
    pub ip: [u32; 4],
}

/// One allowed flow: from an identity to an identity, a port (host byte order; 0: any port) and
/// a protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyKey {
    pub from: u32,
    pub to: u32,
    pub port: u32,
    pub protocol: u32,
}
// ANCHOR_END: policy_types

// ANCHOR: flow_types
/// Name of the per-socket flow accounting (keyed like `SOCKETS`, value [`FlowRecord`]): sock_ops
/// opens an entry when a lab socket's connection is established and closes it (into
/// `FLOW_EVENTS`) when the socket closes; sk_msg adds the bytes it redirects.
pub const FLOWS_MAP: &str = "FLOWS";
/// Name of the ring buffer of closed flows ([`FlowRecord`]s).
pub const FLOW_EVENTS_MAP: &str = "FLOW_EVENTS";
/// Its size in bytes (a power of two): about 8,000 records.
pub const FLOW_EVENTS_BYTES: u32 = 1024 * 1024;
/// Name of the one-slot array switching telemetry: 1 on (the agent's default), 0 off.
pub const TELEMETRY_MAP: &str = "TELEMETRY";
/// Name of the one-slot array with the field offsets of the `tcp:tcp_retransmit_skb`
/// tracepoint on this kernel ([`TraceLayout`]), read by the agent from tracefs.
pub const TRACE_LAYOUT_MAP: &str = "TRACE_LAYOUT";

/// Where the fields the tracepoint program reads sit in the tracepoint's record (bytes from
/// its start, as tracefs' `format` file says); `ready` is 1 once the agent filled it. The
/// addresses are the IPv6 fields, which every kernel fills for both families (an IPv4 socket's
/// as `::ffff:a.b.c.d`); 5.10's record has no `family` field. `err` is the offset of the
/// attempt's result, 0 where the record has none (before the 2025 change that fires the
/// tracepoint for failed attempts too and says which).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct TraceLayout {
    pub sport: u32,
    pub dport: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    pub err: u32,
    pub ready: u32,
}

/// One TCP socket's view of its connection: opened when the connection is established, sent to
/// user space when the socket closes. While open, `tcp_sent`/`tcp_received` hold the kernel's
/// `bytes_acked`/`bytes_received` at the start (so the SYN is not counted); on close they become
/// the payload bytes that went through TCP, with a FIN taken off (see `FlowRecord::FIN_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowRecord {
    pub key: SockKey,
    /// `bpf_ktime_get_ns` at established and at close (0 while open).
    pub start_ns: u64,
    pub end_ns: u64,
    pub tcp_sent: u64,
    pub tcp_received: u64,
    /// Payload bytes sk_msg redirected from this socket to its peer, and from the peer to it.
    pub redirected_sent: u64,
    pub redirected_received: u64,
    /// Smoothed RTT at close (µs), and the smallest and largest RTT sample the RTT callback saw.
    pub srtt_us: u32,
    pub rtt_min_us: u32,
    pub rtt_max_us: u32,
    pub rtt_samples: u32,
    /// The kernel's `total_retrans` at close, and retransmissions the RETRANS callback counted.
    pub retransmits: u32,
    pub retrans_cb: u32,
    /// `FlowRecord::CLIENT`, `FlowRecord::FIN_SENT`, ...
    pub flags: u32,
    /// The TCP state the socket closed from.
    pub last_state: u32,
    /// `rcv_nxt` at the last state change (tells a FIN from a timeout in FIN_WAIT2).
    pub rcv_nxt: u32,
    /// The policy's last word on the connection: 0 allowed, else the `Hook` that denied it.
    pub denied_by: u32,
    /// Retransmissions the `tcp:tcp_retransmit_skb` tracepoint saw (one per call, which may
    /// carry several segments).
    pub retrans_tp: u32,
    /// Always 0 (keeps the record free of implicit padding).
    pub pad: u32,
}

impl FlowRecord {
    /// This socket opened the connection (connect()); without it, it accepted it.
    pub const CLIENT: u32 = 1;
    /// This socket sent its FIN.
    pub const FIN_SENT: u32 = 2;
    /// The peer's FIN arrived.
    pub const FIN_RECEIVED: u32 = 4;
    /// Closed: the record is final.
    pub const CLOSED: u32 = 8;
}
// ANCHOR_END: flow_types

// ANCHOR: unread
/// Name of the per-socket map of redirected bytes not yet read ([`SockKey`] with `netns` 0 ->
/// [`Unread`]).
pub const UNREAD_MAP: &str = "UNREAD";
/// Name of the one-slot array holding the [`FlowControl`] settings.
pub const FLOW_CONTROL_MAP: &str = "FLOW_CONTROL";
/// The budget the agent sets: 1 MiB. TCP lets a writer run ahead of its reader by the reader's
/// receive buffer plus its own send buffer (autotuned to a few MiB at most); the redirect
/// queue has no such bound, and what it holds is charged to the node's TCP memory, whose hard
/// limit (`tcp_mem[2]`, about 8% of RAM) fails the writer with ENOMEM. 1 MiB keeps 64
/// stalled connections under 64 MiB.
pub const REDIRECT_BUDGET: u32 = 1 << 20;

/// The budget while the node's TCP memory is under pressure: 64 KiB, half TCP's default
/// receive buffer (`tcp_rmem[1]`, 128 KiB). Between `tcp_mem[1]` (pressure) and `tcp_mem[2]`
/// (the hard limit) the lab's 1 GiB VM has about 27 MiB (5.10: 14096 and 21144 pages): room
/// for 400 such queues.
pub const PRESSURE_BUDGET: u32 = 64 << 10;
/// How long after the kernel last reported TCP memory pressure sk_msg keeps the pressure
/// budget: 1 s. Under pressure every allocation reports it again, so the mark stays fresh
/// for as long as the pressure lasts.
pub const PRESSURE_HOLD_NS: u64 = 1_000_000_000;

/// How sk_msg bounds what waits unread in a socket's redirect queue. Once a socket holds
/// `budget` redirected bytes its application has not read ([`Unread`]), the connection
/// writing to it takes TCP for good, and TCP's window makes the writer wait. `budget` 0 turns
/// the check off.
///
/// `reads_counted` 1: the `mesh_unread` fexit program counts every read exactly. 0 (a kernel
/// that refuses tracing programs): a socket that writes is taken to have read what was
/// redirected to it so far - true of request/response protocols, whose replies follow their
/// requests; a one-way stream of more than `budget` bytes takes TCP, which has flow control.
///
/// `pressure_at`: when (`bpf_ktime_get_ns`) the kernel last reported the node's TCP memory
/// under pressure, written by the `mesh_pressure` fentry program on
/// `tcp_enter_memory_pressure()`; 0 never. For [`PRESSURE_HOLD_NS`] after it, `pressure_budget`
/// replaces `budget`. `pressure_watched` 1: that program is attached (0: no pressure signal on
/// this kernel, the budget alone bounds each queue).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowControl {
    pub budget: u32,
    pub reads_counted: u32,
    pub pressure_budget: u32,
    pub pressure_watched: u32,
    pub pressure_at: u64,
}

/// What sk_msg redirected to one socket and what its application read of it, each only ever
/// growing: the difference is what waits in the socket's redirect queue. sk_msg adds
/// `redirected` (under the sending socket's lock); `read` grows under the reading socket's
/// lock (see [`FlowControl`]): one writer per field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Unread {
    pub redirected: u64,
    pub read: u64,
}
// ANCHOR_END: unread

/// Number of slots in the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = Counter::ALL.len() as u32;

#[cfg(feature = "user")]
mod user {
    /// aya::Pod for types whose `bytemuck::Pod` derive (above each type, with the `user`
    /// feature) proved them plain data.
    macro_rules! pod {
        ($($t:ident),* $(,)?) => {$(
            // SAFETY: the type derives bytemuck::Pod, which does not compile unless it is
            // #[repr(C)], has no padding and holds only Pod fields (integers and arrays of
            // them): every byte is initialised and any bit pattern is a valid value, which is
            // what aya::Pod requires of what it copies to and from the kernel.
            unsafe impl aya::Pod for super::$t {}
        )*};
    }
    pod!(
        SockKey,
        ServiceKey,
        ServiceValue,
        BackendKey,
        Backend,
        IdentityAddr,
        PolicyKey,
        Denial,
        SockPolicy,
        HttpRules,
        FlowRecord,
        Unread,
        FlowControl,
        TraceLayout,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_swaps_ends_and_is_an_involution() {
        let k = SockKey::new(9, AF_INET, [1, 0, 0, 0], [2, 0, 0, 0], 40000, 7000);
        let p = k.peer();
        assert_eq!(p.local_ip, [2, 0, 0, 0]);
        assert_eq!(p.remote_port, 40000);
        assert_eq!(p.netns, 9);
        assert_eq!(p.peer(), k);
    }

    #[test]
    fn loopback_means_both_ends() {
        let lo = u32::from_ne_bytes([127, 0, 0, 1]);
        let pod = u32::from_ne_bytes([10, 77, 0, 2]);
        assert!(SockKey::new(0, AF_INET, [lo, 0, 0, 0], [lo, 0, 0, 0], 1, 2).is_loopback());
        assert!(!SockKey::new(0, AF_INET, [pod, 0, 0, 0], [lo, 0, 0, 0], 1, 2).is_loopback());
        let one = [0, 0, 0, 1u32.to_be()];
        assert!(SockKey::new(0, AF_INET6, one, one, 1, 2).is_loopback());
        let m = |v| [0, 0, 0xffff_u32.to_be(), v];
        assert!(SockKey::new(0, AF_INET6, m(lo), m(lo), 1, 2).is_loopback());
    }

    #[test]
    fn mapped_ipv6_folds_to_ipv4() {
        let a = u32::from_ne_bytes([10, 77, 0, 2]);
        let b = u32::from_ne_bytes([10, 77, 0, 3]);
        let m = |v| [0, 0, 0xffff_u32.to_be(), v];
        let k = SockKey::new(0, AF_INET6, m(a), m(b), 1, 2);
        assert_eq!(k, SockKey::new(0, AF_INET, [a, 7, 7, 7], [b, 0, 0, 0], 1, 2));
        assert_eq!(k.local_ip, [a, 0, 0, 0]);
        let v6 = [0xfd77_0000_u32.to_be(), 0, 0, 2_u32.to_be()];
        let k6 = SockKey::new(0, AF_INET6, v6, m(b), 1, 2);
        assert_eq!((k6.family, k6.local_ip), (AF_INET6, v6));
    }

    #[test]
    fn service_types_have_no_padding() {
        assert_eq!(core::mem::size_of::<ServiceKey>(), 16 + 4 * 4);
        assert_eq!(core::mem::size_of::<ServiceValue>(), 8);
        assert_eq!(core::mem::size_of::<BackendKey>(), 8);
        assert_eq!(core::mem::size_of::<Backend>(), 4 + 16 + 4);
        assert_eq!(core::mem::size_of::<OriginalDst>(), 16 + 8 + 24);
    }

    #[test]
    fn flow_has_no_padding() {
        // The key, six u64s, twelve u32s: what the kernel writes is what user space reads.
        assert_eq!(core::mem::size_of::<FlowRecord>(), 56 + 6 * 8 + 12 * 4);
    }

    #[test]
    fn key_has_no_padding() {
        // 8 (netns) + 16 + 16 + 4 * 4: no byte the compiler could leave uninitialised.
        assert_eq!(core::mem::size_of::<SockKey>(), 56);
    }
}
