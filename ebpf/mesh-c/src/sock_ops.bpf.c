// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * sock_ops, the C twin of mesh-ebpf's sock_ops.rs: puts every established TCP socket of the
 * lab into SOCKETS, and takes sockets out again where the redirect would change what the
 * application sees. Same callbacks, same keys, same counters as the Rust program; see
 * book/src/hooks/sock_ops.md for the why of each step and book/src/hooks/twin.md for the two
 * side by side.
 *
 * - Attach: BPF_CGROUP_SOCK_OPS on the lab's cgroup (a bpf_link, pinned by the agent).
 * - CO-RE: the context comes from vmlinux.h, whose types carry preserve_access_index, so every
 *   field read below is a CO-RE relocation that libbpf checks against the running kernel's
 *   BTF at load time (a field the kernel lacks fails the load with its name, not the verifier).
 * - Two programs from one body: mesh_sockops keys loopback sockets by network namespace
 *   (bpf_get_netns_cookie, in sock_ops since 5.15); mesh_sockops_nocookie leaves them out.
 */
#include "mesh.h"

// ANCHOR: key
/* The connection as this socket sees it. Each address word is its own 4-byte load: the
 * verifier refuses wider loads of these context fields. */
static __always_inline void ops_key(struct bpf_sock_ops *ctx, __u32 family, struct sock_key *key,
				    const bool netns)
{
	__u32 local[4] = {}, remote[4] = {}, local_port, remote_port;

	if (family == AF_INET) {
		ctx_read(local[0], ctx->local_ip4);
		ctx_read(remote[0], ctx->remote_ip4);
	} else {
		ctx_read(local[0], ctx->local_ip6[0]);
		ctx_read(local[1], ctx->local_ip6[1]);
		ctx_read(local[2], ctx->local_ip6[2]);
		ctx_read(local[3], ctx->local_ip6[3]);
		ctx_read(remote[0], ctx->remote_ip6[0]);
		ctx_read(remote[1], ctx->remote_ip6[1]);
		ctx_read(remote[2], ctx->remote_ip6[2]);
		ctx_read(remote[3], ctx->remote_ip6[3]);
	}
	/* local_port is host byte order; remote_port is the big-endian port, shifted. */
	ctx_read(local_port, ctx->local_port);
	ctx_read(remote_port, ctx->remote_port);
	make_key(key, family, local, remote, local_port, bpf_ntohl(remote_port));
	if (netns && is_loopback(key->family, key->local_ip) && is_loopback(key->family, key->remote_ip))
		key->netns = bpf_get_netns_cookie(ctx);
}
// ANCHOR_END: key

// ANCHOR: insert
static __always_inline void insert(struct bpf_sock_ops *ctx, __u32 op, struct sock_key *key,
				   const bool netns)
{
	struct sock_policy policy = {};
	int lowat = 0;
	__u32 port;

	if (!netns && is_loopback(key->family, key->local_ip) && is_loopback(key->family, key->remote_ip)) {
		/* Without the cookie, 127.0.0.1:a -> 127.0.0.1:b is the same key in every pod. */
		bump(COUNTER_LOOPBACK_SKIPPED);
		return;
	}
	/* SO_RCVLOWAT is ignored for redirected bytes: such a socket stays on TCP. Before 6.1
	 * sock_ops cannot ask (the call fails) and setsockopt.rs catches it later. */
	if (bpf_getsockopt(ctx, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat)) == 0 && lowat > 1) {
		bump(COUNTER_RCVLOWAT_TCP);
		return;
	}
	if (bpf_sock_hash_update(ctx, &SOCKETS, key, BPF_NOEXIST)) {
		bump(COUNTER_INSERT_FAILED);
		return;
	}
	bump(COUNTER_SOCKETS_INSERTED);
	policy.flags = op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB ? SOCK_POLICY_PASSIVE : 0;
	bpf_map_update_elem(&SOCK_POLICY, key, &policy, BPF_ANY);
	/* State callbacks for this socket: half-close and close are handled below. */
	bpf_sock_ops_cb_flags_set(ctx, ctx->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
	/* With sidecars: where the proxy will look for this application socket. */
	port = sidecar_port();
	if (port && op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && key->family == AF_INET &&
	    key->remote_port != port) {
		struct sock_key alias;

		sidecar_alias(key, port, &alias);
		bpf_map_update_elem(&SIDECAR_ALIASES, &alias, key, BPF_ANY);
	}
}
// ANCHOR_END: insert

// ANCHOR: state
static __always_inline void state_changed(const struct sock_key *key, __u32 old, __u32 new)
{
	__u32 port;

	/* Sent its FIN before any byte was redirected to it: leave the map, read through TCP. */
	if (old == BPF_TCP_ESTABLISHED && new == BPF_TCP_FIN_WAIT1 &&
	    !(sock_state(key) & SOCK_STATE_RECEIVED)) {
		if (bpf_map_delete_elem(&SOCKETS, key) == 0)
			bump(COUNTER_HALF_CLOSE_DETACHED);
	}
	if (new == BPF_TCP_CLOSE) {
		struct sock_key plain = *key;

		bpf_map_delete_elem(&SOCK_STATE, key);
		bpf_map_delete_elem(&SOCK_POLICY, key);
		plain.netns = 0;
		bpf_map_delete_elem(&MESH_CONNECTS, &plain);
		bpf_map_delete_elem(&UNREAD, &plain);
		port = sidecar_port();
		if (port && key->family == AF_INET) {
			struct sock_key alias;

			sidecar_alias(key, port, &alias);
			bpf_map_delete_elem(&SIDECAR_ALIASES, &alias);
		}
	}
}
// ANCHOR_END: state

// ANCHOR: body
static __always_inline int handle(struct bpf_sock_ops *ctx, const bool netns)
{
	__u32 op = ctx->op, family = ctx->family;
	struct sock_key key;

	if (family != AF_INET && family != AF_INET6)
		return 0;
	ops_key(ctx, family, &key, netns);
	switch (op) {
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		insert(ctx, op, &key, netns);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		state_changed(&key, ctx->args[0], ctx->args[1]);
		break;
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		/* The SYN is about to leave: the receiving pod's ingress check may ask. */
		__u32 one = 1;

		key.netns = 0;
		bpf_map_update_elem(&MESH_CONNECTS, &key, &one, BPF_ANY);
		break;
	}
	}
	return 0;
}

SEC("sockops")
int mesh_sockops(struct bpf_sock_ops *ctx)
{
	return handle(ctx, true);
}

/* The same for kernels before 5.15, whose sock_ops cannot read the netns cookie. */
SEC("sockops")
int mesh_sockops_nocookie(struct bpf_sock_ops *ctx)
{
	return handle(ctx, false);
}
// ANCHOR_END: body
