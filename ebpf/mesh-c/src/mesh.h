/* SPDX-License-Identifier: (MIT OR Apache-2.0) */
/*
 * What the C twin shares with mesh-ebpf: the key, the counters, the state bits and the maps,
 * each the same as its Rust definition in mesh-common (ebpf/mesh-c/src/lib.rs tests that the
 * compiled object agrees, field by field and map by map). The agent creates the maps once, for
 * both builds; libbpf reuses them (bpf_map__reuse_fd), so the definitions below only have to
 * match, and the programs of both languages read and write the same entries.
 */
#ifndef MESH_H
#define MESH_H

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* #defines, so not in vmlinux.h (which holds types and enums only). */
#define AF_INET 2
#define AF_INET6 10
#define SOL_SOCKET 1
#define SO_RCVLOWAT 18

#define MAX_SOCKETS 65536

/* One 4-byte load of a context field, kept where it is written. The verifier rewrites context
 * loads by their constant offset and refuses a load through a pointer the compiler computed
 * (clang otherwise merges the IPv4 and IPv6 branches into one load from ctx + a chosen
 * offset: "dereference of modified ctx ptr"). barrier_var pins the value to this point. The
 * Rust programs do the same with read_volatile. */
#define ctx_read(dst, field)         \
	do {                         \
		(dst) = (field);     \
		barrier_var(dst);    \
	} while (0)

// ANCHOR: key
/* A TCP connection as one of its sockets sees it (mesh_common::SockKey). Addresses in network
 * byte order, IPv4 in word 0; ports in host byte order; an IPv4-mapped IPv6 pair is stored as
 * IPv4, so both ends agree on the family. */
struct sock_key {
	__u64 netns; /* the namespace's cookie for loopback keys (5.15 and later), else 0 */
	__u32 local_ip[4];
	__u32 remote_ip[4];
	__u32 local_port;
	__u32 remote_port;
	__u32 family;
	__u32 pad; /* always 0: hash keys compare every byte */
};
// ANCHOR_END: key

/* Slots of COUNTERS (mesh_common::Counter); the twin moves the first seven and FLOW_FALLBACK. */
enum counter {
	COUNTER_SOCKETS_INSERTED = 0,
	COUNTER_INSERT_FAILED = 1,
	COUNTER_MSG_REDIRECTED = 2,
	COUNTER_MSG_PASSED = 3,
	COUNTER_LOOPBACK_SKIPPED = 4,
	COUNTER_HALF_CLOSE_DETACHED = 5,
	COUNTER_RCVLOWAT_TCP = 6,
	COUNTER_FLOW_FALLBACK = 15,
	COUNTER_PRESSURE_FALLBACK = 17,
	COUNTER_SLOTS = 18,
};

/* mesh_common::SockState bits. */
enum sock_state {
	SOCK_STATE_PASSED = 1,
	SOCK_STATE_RECEIVED = 2,
	SOCK_STATE_NO_REDIRECT = 4,
};

/* mesh_common::SockPolicy: sock_ops notes which end a socket is; the aya build's sk_msg and
 * telemetry read it. */
struct sock_policy {
	__u32 flags;
	__u32 generation;
	__u32 http_rule;
	__u32 http_state;
};
#define SOCK_POLICY_PASSIVE 1

/* mesh_common::Unread and mesh_common::FlowControl: flow control through the redirect (see
 * book/src/hooks/flow-control.md). The read counter and the pressure mark are aya's tracing
 * programs; the agent sets FLOW_CONTROL whichever engine loaded the redirect. */
struct unread {
	__u64 redirected;
	__u64 read;
};

struct flow_control {
	__u32 budget;
	__u32 reads_counted;
	__u32 pressure_budget;
	__u32 pressure_watched;
	__u64 pressure_at; /* written by aya's fentry on tcp_enter_memory_pressure() */
};

/* mesh_common::PRESSURE_HOLD_NS */
#define PRESSURE_HOLD_NS 1000000000ULL

// ANCHOR: maps
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, __u32);
} SOCKETS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTER_SLOTS);
	__type(key, enum counter); /* 4 bytes, like aya's u32; and the names land in BTF */
	__type(value, __u64);
} COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, struct sock_key);
} SIDECAR_ALIASES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} SIDECAR SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, __u32);
} SOCK_STATE SEC(".maps");
// ANCHOR_END: maps

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, struct unread);
} UNREAD SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct flow_control);
} FLOW_CONTROL SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, struct sock_policy);
} SOCK_POLICY SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, struct sock_key);
	__type(value, __u32);
} MESH_CONNECTS SEC(".maps");

static __always_inline void bump(enum counter c)
{
	__u32 slot = c;
	__u64 *v = bpf_map_lookup_elem(&COUNTERS, &slot);

	/* Per-CPU slot, migration disabled while a program runs: no atomics needed. */
	if (v)
		*v += 1;
}

static __always_inline __u32 sock_state(const struct sock_key *key)
{
	__u32 *bits = bpf_map_lookup_elem(&SOCK_STATE, key);

	return bits ? *bits : 0;
}

static __always_inline __u32 sidecar_port(void)
{
	__u32 slot = 0;
	__u32 *port = bpf_map_lookup_elem(&SIDECAR, &slot);

	return port ? *port : 0;
}

// ANCHOR: make_key
/* 127.0.0.0/8 or ::1, words in network byte order. */
static __always_inline bool is_loopback(__u32 family, const __u32 ip[4])
{
	if (family == AF_INET)
		return ((const __u8 *)ip)[0] == 127;
	return ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && ip[3] == bpf_htonl(1);
}

static __always_inline bool is_v4_mapped(const __u32 ip[4])
{
	return ip[0] == 0 && ip[1] == 0 && ip[2] == bpf_htonl(0xffff);
}

/* SockKey::new: fills `key` from what a socket hook read. */
static __always_inline void make_key(struct sock_key *key, __u32 family, const __u32 local[4],
				     const __u32 remote[4], __u32 local_port, __u32 remote_port)
{
	__builtin_memset(key, 0, sizeof(*key));
	if (family == AF_INET || (is_v4_mapped(local) && is_v4_mapped(remote))) {
		key->local_ip[0] = family == AF_INET ? local[0] : local[3];
		key->remote_ip[0] = family == AF_INET ? remote[0] : remote[3];
		key->family = AF_INET;
	} else {
		for (int i = 0; i < 4; i++) {
			key->local_ip[i] = local[i];
			key->remote_ip[i] = remote[i];
		}
		key->family = family;
	}
	key->local_port = local_port;
	key->remote_port = remote_port;
}
// ANCHOR_END: make_key

/* SockKey::peer: the key under which the other end of the connection is stored. */
static __always_inline void peer_of(const struct sock_key *key, struct sock_key *peer)
{
	peer->netns = key->netns;
	for (int i = 0; i < 4; i++) {
		peer->local_ip[i] = key->remote_ip[i];
		peer->remote_ip[i] = key->local_ip[i];
	}
	peer->local_port = key->remote_port;
	peer->remote_port = key->local_port;
	peer->family = key->family;
	peer->pad = 0;
}

/* SockKey::sidecar_alias: the proxy's peer as the proxy's accepted socket sees it. */
static __always_inline void sidecar_alias(const struct sock_key *key, __u32 port, struct sock_key *alias)
{
	__builtin_memset(alias, 0, sizeof(*alias));
	alias->netns = key->netns;
	for (int i = 0; i < 4; i++)
		alias->local_ip[i] = key->local_ip[i];
	alias->remote_ip[0] = bpf_htonl(0x7f000001);
	alias->local_port = key->local_port;
	alias->remote_port = port;
	alias->family = AF_INET;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";

#endif
