//! Maps shared by the hooks. Their names come from `mesh-common`, so user space opens the same ones.
use aya_ebpf::{
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf, SockHash},
};
use mesh_common::{
    Backend, BackendKey, COUNTER_SLOTS, Counter, DENIALS_BYTES, FLOW_EVENTS_BYTES, FlowControl, FlowRecord,
    Hook, HttpRules, IdentityAddr, MAX_BACKEND_SLOTS, MAX_IDENTITY_ADDRS, MAX_POLICY, MAX_RULES,
    MAX_SERVICES, MAX_SOCKETS, OriginalDst, PolicyKey, ServiceKey, ServiceValue, SockKey, SockPolicy,
    TraceLayout, Unread,
};

// ANCHOR: maps
/// Every established TCP socket of the lab, keyed by the connection as that socket sees it.
/// sock_ops fills it; sk_msg looks the peer up in it.
#[map(name = "SOCKETS")]
pub static SOCKETS: SockHash<SockKey> = SockHash::with_max_entries(MAX_SOCKETS, 0);

/// Per-CPU event counters, one slot per [`Counter`]; user space sums the CPUs.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// With sidecars: the key a proxy sees for an application's outbound connection (see
/// `SockKey::sidecar_alias`) -> the key the application's socket is stored under. A socket can
/// sit in only one sk_msg-enabled map entry, so the alias is a pointer, not a second entry.
/// LRU: entries of closed connections age out.
#[map(name = "SIDECAR_ALIASES")]
pub static SIDECAR_ALIASES: LruHashMap<SockKey, SockKey> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Slot 0: the sidecar proxy's outbound port, 0 when pods have no sidecars. Set by the agent.
#[map(name = "SIDECAR")]
pub static SIDECAR: Array<u32> = Array::with_max_entries(1, 0);

/// Per-socket [`SockState`](mesh_common::SockState) bits, keyed like `SOCKETS`; sock_ops removes
/// a socket's entry when it closes. LRU, so a lost close callback cannot fill it.
#[map(name = "SOCK_STATE")]
pub static SOCK_STATE: LruHashMap<SockKey, u32> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);
// ANCHOR_END: maps

// ANCHOR: flow_control_maps
/// Per socket that was redirected to (keyed like `SOCKETS`, with `netns` 0: the read side
/// cannot see the namespace): bytes redirected to it and bytes its application read of them
/// (`mesh_common::Unread`). sock_ops removes the entry when the socket closes. LRU: a lost
/// close callback cannot fill it.
#[map(name = "UNREAD")]
pub static UNREAD: LruHashMap<SockKey, Unread> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Slot 0: the budget and how reads are known (`mesh_common::FlowControl`), set by the agent.
#[map(name = "FLOW_CONTROL")]
pub static FLOW_CONTROL: Array<FlowControl> = Array::with_max_entries(1, 0);
// ANCHOR_END: flow_control_maps

// ANCHOR: service_maps
/// Services by (virtual address, port, protocol). The agent writes them from the mesh file.
#[map(name = "SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(MAX_SERVICES, 0);

/// Backend slots of every service, `(service id, slot)`.
#[map(name = "BACKENDS")]
pub static BACKENDS: HashMap<BackendKey, Backend> = HashMap::with_max_entries(MAX_BACKEND_SLOTS, 0);

/// Per-socket storage: the service address a balanced socket connected to (for getpeername).
/// A BTF map: the kernel needs its key and value types to create it.
#[btf_map]
pub static ORIGINAL_DST: SkStorage<OriginalDst> = SkStorage::new();
// ANCHOR_END: service_maps

// ANCHOR: policy_maps
/// Address -> identity, longest prefix first (aya-ebpf adds `BPF_F_NO_PREALLOC`, which an LPM
/// trie requires).
#[map(name = "IDENTITIES")]
pub static IDENTITIES: LpmTrie<IdentityAddr, u32> = LpmTrie::with_max_entries(MAX_IDENTITY_ADDRS, 0);

/// cgroup id -> identity of the pod whose processes live there.
#[map(name = "CGROUP_IDS")]
pub static CGROUP_IDS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_IDENTITY_ADDRS, 0);

/// The allow-list.
#[map(name = "POLICY")]
pub static POLICY: HashMap<PolicyKey, u32> = HashMap::with_max_entries(MAX_POLICY, 0);

/// Identities that only accept what the allow-list names.
#[map(name = "POLICED")]
pub static POLICED: HashMap<u32, u32> = HashMap::with_max_entries(MAX_IDENTITY_ADDRS, 0);

/// Slot 0: the policy generation (see `mesh_common::POLICY_GEN_MAP`).
#[map(name = "POLICY_GEN")]
pub static POLICY_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Per socket in `SOCKETS`: direction, and the generation its connection was last judged under
/// (`mesh_common::SockPolicy`). LRU: a lost close callback cannot fill it.
#[map(name = "SOCK_POLICY")]
pub static SOCK_POLICY: LruHashMap<SockKey, SockPolicy> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Rule number -> its HTTP matches (only rules that have some).
#[map(name = "HTTP_RULES")]
pub static HTTP_RULES: HashMap<u32, HttpRules> = HashMap::with_max_entries(MAX_RULES, 0);

/// Slot 0: the HTTP-judging build of sk_msg (`mesh_http` or `mesh_http_nocookie`, the one
/// matching the attached redirect program), which the redirect program tail-calls. The agent
/// fills it and pins it: a program array empties itself when its last user reference goes.
#[map(name = "HTTP_PROGS")]
pub static HTTP_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// One per-CPU word of scratch memory (see `http.rs`'s `opaque`).
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Bytes of a request line `http.rs` copies: method, space, target (a power of two).
pub const HTTP_LINE: usize = 128;

/// Per-CPU copy of the message being judged (the stack has 512 bytes for everything).
#[map(name = "MSG_BUF")]
pub static MSG_BUF: PerCpuArray<[u8; crate::http::SCAN]> = PerCpuArray::with_max_entries(1, 0);

/// Connections a lab process opened, as the client sees them (no netns cookie): sock_ops
/// writes them before the SYN leaves; ingress asks for them (see `mesh_common::MESH_CONNECTS_MAP`).
#[map(name = "MESH_CONNECTS")]
pub static MESH_CONNECTS: LruHashMap<SockKey, u32> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Verdicts per rule and hook (see `mesh_common::VERDICTS_MAP`).
#[map(name = "VERDICTS")]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_RULES * Hook::COUNT, 0);

/// One `mesh_common::Denial` per denied connection, datagram, packet or message.
#[map(name = "DENIALS")]
pub static DENIALS: RingBuf = RingBuf::with_byte_size(DENIALS_BYTES, 0);
// ANCHOR_END: policy_maps

// ANCHOR: flow_maps
/// Per socket (keyed like `SOCKETS`): its flow record while the connection is open (see
/// `telemetry.rs`). LRU: a lost close callback cannot fill it.
#[map(name = "FLOWS")]
pub static FLOWS: LruHashMap<SockKey, FlowRecord> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Closed flows, to user space.
#[map(name = "FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(FLOW_EVENTS_BYTES, 0);

/// Slot 0: 1 when telemetry is on (set by the agent).
#[map(name = "TELEMETRY")]
pub static TELEMETRY: Array<u32> = Array::with_max_entries(1, 0);

/// Slot 0: where `tcp:tcp_retransmit_skb`'s fields are on this kernel (see `trace.rs`).
#[map(name = "TRACE_LAYOUT")]
pub static TRACE_LAYOUT: Array<TraceLayout> = Array::with_max_entries(1, 0);
// ANCHOR_END: flow_maps

/// The socket's state bits (0 when it has none).
#[inline(always)]
pub fn sock_state(key: &SockKey) -> u32 {
    // SAFETY: a plain lookup; the value is copied out at once.
    unsafe { SOCK_STATE.get(key) }.copied().unwrap_or(0)
}

/// Sets `bits` in the socket's state (one lookup when they are already set).
#[inline(always)]
pub fn set_sock_state(key: &SockKey, bits: u32) {
    match SOCK_STATE.get_ptr_mut(key) {
        // SAFETY: the pointer is a live map value; racing writers only ever add bits.
        Some(v) => unsafe {
            if *v & bits != bits {
                *v |= bits;
            }
        },
        None => {
            let _ = SOCK_STATE.insert(key, &bits, 0);
        }
    }
}

/// Takes a socket out of `SOCKETS` (aya-ebpf 0.2 has no `remove` for a sockhash).
#[inline(always)]
pub fn remove_socket(key: &SockKey) -> bool {
    // SAFETY: the helper needs the map, which in BPF code is a reference to the map's symbol:
    // the loader replaces a load of `SOCKETS`' address with the map. aya-ebpf 0.2.1 declares
    // SockHash `#[repr(transparent)]` over its one field, the definition it passes to the
    // helpers itself, so `&SOCKETS` is that same address (offset 0 of the symbol); were that
    // ever to change, the verifier would refuse the call (not a map pointer), never run it. The
    // key is a live SockKey, read only.
    let ret = unsafe {
        aya_ebpf::helpers::bpf_map_delete_elem(
            core::ptr::from_ref(&SOCKETS).cast_mut().cast(),
            core::ptr::from_ref(key).cast(),
        )
    };
    ret == 0
}

/// The sidecar outbound port, or 0.
#[inline(always)]
pub fn sidecar_port() -> u32 {
    SIDECAR.get(0).copied().unwrap_or(0)
}

/// Adds one to a counter on this CPU. Per-CPU slots need no atomics: a BPF program runs with
/// migration disabled, and each CPU writes only its own copy.
#[inline(always)]
pub fn bump(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: the pointer is this CPU's slot of a live map value.
        unsafe { *slot += 1 };
    }
}
