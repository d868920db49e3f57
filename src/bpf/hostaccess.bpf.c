// SPDX-License-Identifier: GPL-2.0
/* hostaccess: processes on the host reach published ports, as players do.
 *
 * A host process that connects or sends to a published (external address,
 * host port, protocol), or to 127.0.0.1 and the host port of a default
 * mapping, is sent to the container instead, and is shown the address it
 * asked for wherever the kernel tells it its peer:
 *
 *  connect4      cgroup/connect4: connect() of TCP and UDP sockets; the
 *                destination becomes the container's, and what was asked
 *                for is remembered in sock_rev4 under (socket cookie,
 *                container address and port);
 *  sendmsg4      cgroup/sendmsg4: the same for each datagram an
 *                unconnected UDP socket sends to an address;
 *  recvmsg4      cgroup/recvmsg4: a datagram from that container endpoint
 *                shows the remembered address as its source;
 *  getpeername4  cgroup/getpeername4: so does getpeername().
 *
 * Packets never see any of this: the kernel routes the rewritten
 * destination like any connection of the host to a container, and the
 * container's answers reach the socket through tproxy_ingress (rule 3).
 *
 * The programs sit on a cgroup (the cgroup v2 root, by default) and so see
 * the sockets of every process in its tree, whatever its network
 * namespace. Only sockets of the host's namespace (host_cfg.netns_cookie,
 * recorded by `attach host-access`) are rewritten: a container's
 * 127.0.0.1 is its own, and its connections to the host's addresses go
 * through the proxy, which dials them from the host.
 *
 * What depends on the family is in the ha_*4 helpers and the four
 * programs; the IPv6 twins (connect6, sendmsg6, recvmsg6, getpeername6,
 * ::1 for 127.0.0.1, sock_rev6) take the same shape beside them. An IPv6
 * socket sending to an IPv4-mapped address (::ffff:a.b.c.d) goes through
 * the IPv6 hooks, so it is theirs to handle.
 */
#include "dp_verdict.h"
#include <linux/in.h>
#include <bpf/bpf_endian.h>

/* What a sock_addr program returns to let the call go on, with whatever
 * it wrote into the context. */
#define HA_ALLOW 1

/* A container endpoint a published destination leads to. */
struct ha_target4 {
	__be32 addr;
	__be16 port;
};

/* Whether the call's socket belongs to the host's network namespace.
 * Network namespace cookies are never 0, so an unset host_cfg matches no
 * socket. */
static __always_inline bool ha_host_socket(struct bpf_sock_addr *ctx)
{
	struct host_config *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&host_cfg, &zero);
	return cfg && cfg->netns_cookie &&
	       cfg->netns_cookie == bpf_get_netns_cookie(ctx);
}

/* Where (addr, port, proto) is published. An external address is looked
 * up exactly as dnat looks up a player's packet (dnat4). 127.0.0.1 stands
 * for the default external addresses: the default mapping of that host
 * port and protocol, as the user gave it (mappings). */
static __always_inline bool ha_published4(__be32 addr, __be16 port,
					  __u8 proto, struct ha_target4 *t)
{
	struct mapping_value *m;
	struct dnat4_value *d;

	if (addr == bpf_htonl(INADDR_LOOPBACK)) {
		struct mapping_key mk = {
			.family = AF_INET, .proto = proto, .host_port = port,
		};

		m = bpf_map_lookup_elem(&mappings, &mk);
		if (!m)
			return false;
		t->addr = m->ctr_addr[0];
		t->port = m->ctr_port;
		return true;
	}

	struct dnat4_key dk = {
		.ext_addr = addr, .host_port = port, .proto = proto, .pad = 0,
	};

	d = bpf_map_lookup_elem(&dnat4, &dk);
	if (!d)
		return false;
	t->addr = d->ctr_addr;
	t->port = d->ctr_port;
	return true;
}

/* A key of sock_rev4, padding zeroed. */
static __always_inline struct sock_rev4_key ha_rev4_key(struct bpf_sock_addr *ctx,
							 __be32 addr,
							 __be16 port)
{
	struct sock_rev4_key k = {
		.cookie = bpf_get_socket_cookie(ctx),
		.ctr_addr = addr, .ctr_port = port, .pad = 0,
	};

	return k;
}

/* connect4 and sendmsg4: a published destination of a host socket becomes
 * the container's, and what was asked for is remembered. A socket that
 * connects or sends there again finds its entry and writes nothing.
 * Inlined with constant reasons at each program, like every dp_verdict().
 * If the entry cannot be written the call still goes to the container (the
 * connection matters more than what getpeername shows); rev_error counts
 * it. */
static __always_inline int ha_redirect4(struct bpf_sock_addr *ctx,
					enum dp_stat rewritten,
					enum dp_stat unpublished,
					enum dp_stat other_netns,
					enum dp_stat rev_error)
{
	struct sock_rev4_value orig, *old;
	struct sock_rev4_key key;
	struct ha_target4 t;
	__u32 proto = ctx->protocol;
	__be32 addr = ctx->user_ip4;
	__be16 port = (__be16)ctx->user_port;

	dp_trace_cgroup(addr, port, proto);
	if (!ha_host_socket(ctx))
		return dp_verdict(0, other_netns, HA_ALLOW, NULL);
	if ((proto != IPPROTO_TCP && proto != IPPROTO_UDP) ||
	    !ha_published4(addr, port, proto, &t))
		return dp_verdict(0, unpublished, HA_ALLOW, NULL);

	/* The kernel takes the port from the low 16 bits, in network
	 * order, as it gave it. */
	ctx->user_ip4 = t.addr;
	ctx->user_port = t.port;
	dp_trace_rewrite4(true, t.addr, t.port);

	key = ha_rev4_key(ctx, t.addr, t.port);
	old = bpf_map_lookup_elem(&sock_rev4, &key);
	if (old && old->addr == addr && old->port == port)
		return dp_verdict(0, rewritten, HA_ALLOW, NULL);
	orig.addr = addr;
	orig.port = port;
	orig.pad = 0;
	if (bpf_map_update_elem(&sock_rev4, &key, &orig, BPF_ANY))
		return dp_verdict(0, rev_error, HA_ALLOW, NULL);
	return dp_verdict(0, rewritten, HA_ALLOW, NULL);
}

/* recvmsg4 and getpeername4: the container endpoint the kernel is about to
 * show becomes the address the socket asked for. Only host sockets have
 * entries (ha_redirect4 writes them), so no namespace check is needed. */
static __always_inline int ha_restore4(struct bpf_sock_addr *ctx,
				       enum dp_stat restored,
				       enum dp_stat untouched)
{
	struct sock_rev4_value *orig;
	struct sock_rev4_key key;

	key = ha_rev4_key(ctx, ctx->user_ip4, (__be16)ctx->user_port);
	dp_trace_cgroup(key.ctr_addr, key.ctr_port, ctx->protocol);
	orig = bpf_map_lookup_elem(&sock_rev4, &key);
	if (!orig)
		return dp_verdict(0, untouched, HA_ALLOW, NULL);
	ctx->user_ip4 = orig->addr;
	ctx->user_port = orig->port;
	dp_trace_rewrite4(true, orig->addr, orig->port);
	return dp_verdict(0, restored, HA_ALLOW, NULL);
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return ha_redirect4(ctx, DP_STAT_CONNECT4_REWRITTEN,
			    DP_STAT_CONNECT4_UNPUBLISHED,
			    DP_STAT_CONNECT4_OTHER_NETNS,
			    DP_STAT_CONNECT4_REV_ERROR);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return ha_redirect4(ctx, DP_STAT_SENDMSG4_REWRITTEN,
			    DP_STAT_SENDMSG4_UNPUBLISHED,
			    DP_STAT_SENDMSG4_OTHER_NETNS,
			    DP_STAT_SENDMSG4_REV_ERROR);
}

SEC("cgroup/recvmsg4")
int recvmsg4(struct bpf_sock_addr *ctx)
{
	return ha_restore4(ctx, DP_STAT_RECVMSG4_RESTORED,
			   DP_STAT_RECVMSG4_UNTOUCHED);
}

SEC("cgroup/getpeername4")
int getpeername4(struct bpf_sock_addr *ctx)
{
	return ha_restore4(ctx, DP_STAT_GETPEERNAME4_RESTORED,
			   DP_STAT_GETPEERNAME4_UNTOUCHED);
}

char _license[] SEC("license") = "GPL";
