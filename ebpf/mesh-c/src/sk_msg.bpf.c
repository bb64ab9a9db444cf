// SPDX-License-Identifier: (MIT OR Apache-2.0)
/*
 * sk_msg, the C twin of mesh-ebpf's sk_msg.rs: sends each message straight to the peer socket
 * when the peer is in SOCKETS (on this node), else lets it take TCP/IP. Same keys, same state
 * bits, same counters as the Rust program; see book/src/hooks/sk_msg.md and
 * book/src/hooks/twin.md.
 *
 * - Attach: BPF_SK_MSG_VERDICT on SOCKETS (the agent attaches it before sock_ops fills the map).
 * - The twin is the redirect only: the policy's per-message check and HTTP judge, and the
 *   telemetry byte counts, stay in the Rust build (with this engine they do not run). Flow
 *   control is here too: the same budget and UNREAD map (reads counted by aya's fexit program,
 *   or estimated from the peer's writes), and the smaller budget under TCP memory pressure.
 * - Two programs from one body, like sock_ops: with and without the netns cookie (5.15).
 */
#include "mesh.h"

// ANCHOR: key
/* The connection as the sending socket sees it, built exactly like sock_ops builds its keys. */
static __always_inline void msg_key(struct sk_msg_md *msg, __u32 family, struct sock_key *key,
				    const bool netns)
{
	__u32 local[4] = {}, remote[4] = {}, local_port, remote_port;

	if (family == AF_INET) {
		ctx_read(local[0], msg->local_ip4);
		ctx_read(remote[0], msg->remote_ip4);
	} else {
		ctx_read(local[0], msg->local_ip6[0]);
		ctx_read(local[1], msg->local_ip6[1]);
		ctx_read(local[2], msg->local_ip6[2]);
		ctx_read(local[3], msg->local_ip6[3]);
		ctx_read(remote[0], msg->remote_ip6[0]);
		ctx_read(remote[1], msg->remote_ip6[1]);
		ctx_read(remote[2], msg->remote_ip6[2]);
		ctx_read(remote[3], msg->remote_ip6[3]);
	}
	ctx_read(local_port, msg->local_port);
	ctx_read(remote_port, msg->remote_port);
	make_key(key, family, local, remote, local_port, bpf_ntohl(remote_port));
	if (netns && is_loopback(key->family, key->local_ip) && is_loopback(key->family, key->remote_ip))
		key->netns = bpf_get_netns_cookie(msg);
}
// ANCHOR_END: key

enum sent {
	SENT_REDIRECTED,
	SENT_NO_PEER,
	SENT_OVER_BUDGET, /* the peer has `budget` redirected bytes unread: TCP, for good */
};

// ANCHOR: redirect
/* Redirects the message to `target` unless it receives through TCP only (NO_REDIRECT) or its
 * redirect queue holds the budget's worth of bytes its application has not read (UNREAD). On
 * a hit the target is marked RECEIVED: its redirect queue may hold unread bytes, so it must
 * stay in the map until it closes. The budget is checked before the helper (once it recorded
 * a target, SK_PASS means "deliver there"), and the bytes are added before the kernel queues
 * them. */
static __always_inline enum sent redirect(struct sk_msg_md *msg, __u32 budget, struct sock_key *target)
{
	__u32 *state = bpf_map_lookup_elem(&SOCK_STATE, target);
	__u32 bits = state ? *state : 0;
	struct sock_key plain = *target;
	struct unread *u;
	__u32 size;

	if (bits & SOCK_STATE_NO_REDIRECT)
		return SENT_NO_PEER;
	plain.netns = 0; /* the read side keys without the namespace */
	u = bpf_map_lookup_elem(&UNREAD, &plain);
	if (u && budget && u->redirected > u->read && u->redirected - u->read >= budget)
		return SENT_OVER_BUDGET;
	if (bpf_msg_redirect_hash(msg, &SOCKETS, target, BPF_F_INGRESS) != SK_PASS)
		return SENT_NO_PEER;
	if (state) {
		if (!(bits & SOCK_STATE_RECEIVED))
			*state |= SOCK_STATE_RECEIVED;
	} else {
		__u32 received = SOCK_STATE_RECEIVED;

		bpf_map_update_elem(&SOCK_STATE, target, &received, BPF_ANY);
	}
	ctx_read(size, msg->size);
	if (budget) {
		if (u) {
			u->redirected += size;
		} else {
			struct unread fresh = { .redirected = size };

			bpf_map_update_elem(&UNREAD, &plain, &fresh, BPF_ANY);
		}
	}
	return SENT_REDIRECTED;
}
// ANCHOR_END: redirect

static __always_inline void set_passed(const struct sock_key *key)
{
	__u32 *state = bpf_map_lookup_elem(&SOCK_STATE, key);
	__u32 passed = SOCK_STATE_PASSED;

	if (state)
		*state |= SOCK_STATE_PASSED;
	else
		bpf_map_update_elem(&SOCK_STATE, key, &passed, BPF_ANY);
}

// ANCHOR: body
static __always_inline int handle(struct sk_msg_md *msg, const bool netns)
{
	__u32 family = msg->family, port, slot = 0, budget = 0;
	bool pressure = false;
	struct sock_key me, target, plain;
	struct flow_control *flow;
	enum sent sent;

	if (family != AF_INET && family != AF_INET6)
		return SK_PASS;
	msg_key(msg, family, &me, netns);
	flow = bpf_map_lookup_elem(&FLOW_CONTROL, &slot);
	if (flow)
		budget = flow->budget;
	/* The node's TCP memory passed tcp_mem[1] lately (aya's pressure.rs): the smaller budget,
	 * so that redirected bytes never reach tcp_mem[2]. */
	if (flow && budget && flow->pressure_budget && flow->pressure_at &&
	    bpf_ktime_get_ns() - flow->pressure_at < PRESSURE_HOLD_NS) {
		pressure = true;
		if (flow->pressure_budget < budget)
			budget = flow->pressure_budget;
	}
	if (flow && budget && !flow->reads_counted) {
		/* Reads are not counted on this kernel: a socket that writes has read what was
		 * redirected to it (mesh_common::FlowControl). */
		struct unread *mine;

		plain = me;
		plain.netns = 0;
		mine = bpf_map_lookup_elem(&UNREAD, &plain);
		if (mine)
			mine->read = mine->redirected;
	}
	/* Once a message went through TCP, all later ones must too: the peer reads its redirect
	 * queue first, so a redirected message could overtake bytes still in flight. */
	if (sock_state(&me) & SOCK_STATE_PASSED) {
		bump(COUNTER_MSG_PASSED);
		return SK_PASS;
	}
	/* The peer socket is stored under this connection's key seen from the other end. */
	peer_of(&me, &target);
	sent = redirect(msg, budget, &target);
	/* With sidecars the app <-> proxy hop does not mirror (iptables rewrote the destination). */
	port = sidecar_port();
	if (sent == SENT_NO_PEER && port) {
		struct sock_key *real = bpf_map_lookup_elem(&SIDECAR_ALIASES, &target);

		if (real) {
			/* proxy -> app: our peer is filed as an alias of the application's key. */
			target = *real;
			sent = redirect(msg, budget, &target);
		} else if (family == AF_INET) {
			/* app -> proxy: the proxy accepted on 127.0.0.1:<port>. */
			struct sock_key alias;

			sidecar_alias(&me, port, &alias);
			peer_of(&alias, &target);
			sent = redirect(msg, budget, &target);
		}
	}
	if (sent == SENT_REDIRECTED) {
		bump(COUNTER_MSG_REDIRECTED);
	} else {
		set_passed(&me);
		if (sent == SENT_OVER_BUDGET)
			bump(pressure ? COUNTER_PRESSURE_FALLBACK : COUNTER_FLOW_FALLBACK);
		bump(COUNTER_MSG_PASSED);
	}
	return SK_PASS;
}

SEC("sk_msg")
int mesh_redirect(struct sk_msg_md *msg)
{
	return handle(msg, true);
}

/* The same for kernels before 5.15, whose sk_msg cannot read the netns cookie. */
SEC("sk_msg")
int mesh_redirect_nocookie(struct sk_msg_md *msg)
{
	return handle(msg, false);
}
// ANCHOR_END: body
