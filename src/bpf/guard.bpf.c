// SPDX-License-Identifier: GPL-2.0
/* guard: XDP on the external interface, before dnat and before the kernel
 * has allocated anything for the packet.
 *
 *  1. A source on a deny list (guard_deny4/6, LPM tries, optionally with
 *     an expiry) is dropped, whatever it sends.
 *  2. A new TCP connection (SYN without ACK) or a UDP datagram towards a
 *     published port takes a token from its source's bucket for that class
 *     (guard_limits: per port, else global); over the limit it is dropped
 *     and, with a block time, the source is blocked for that long.
 *     Segments of connections (no SYN, or SYN-ACK) and datagrams of UDP
 *     flows the container has answered (flows4) are never limited.
 *  3. Everything else passes untouched: the guard never changes a packet.
 *
 * Per-source state lives in two LRU maps: guard_vsrc4 for sources snat has
 * verified (they completed a handshake with a container, see dp_guard.h)
 * and guard_src4 for every other source. A spoofed flood only ever makes
 * entries in guard_src4, so it cannot evict a verified source's buckets or
 * block. IPv6 has deny lists only: no IPv6 port is published. */
#include <linux/ipv6.h>
#include "dp_verdict.h"
#include "dp_guard.h"
#include "dp_pkt.h"

#define NS_PER_SEC	1000000000ULL

/* How many expired deny entries on one address's path the program looks
 * behind (bounded loop). User space removes expired entries on every guard
 * command, so more than one is rare. */
#define GUARD_DENY_DEPTH	8

static __always_inline int guard_verdict(__u32 len, enum dp_stat stat,
					 int action)
{
	return dp_verdict(len, stat, action, NULL);
}

/* The deny entry that holds for `key`, if any. An LPM lookup returns only
 * the longest matching prefix; if that entry has expired, a shorter one may
 * still hold (a /16 denied for an hour inside a /8 denied for good), so the
 * lookup is repeated below the expired entry's prefix length. */
static __always_inline bool guard_denied(void *trie, __u32 *prefixlen,
					 void *key, struct guard_config *cfg)
{
	struct guard_deny *d;
	__u64 now = 0;
	int i;

	for (i = 0; i < GUARD_DENY_DEPTH; i++) {
		d = bpf_map_lookup_elem(trie, key);
		if (!d)
			return false;
		if (!d->expires)
			return true;
		/* The clock is read only when an entry can expire. */
		if (!now)
			now = dp_guard_now(cfg);
		if (now < d->expires)
			return true;
		if (!d->prefixlen)
			return false;
		*prefixlen = d->prefixlen - 1;
	}
	return false;
}

static __always_inline int guard_ip6(void *data, void *data_end, __u32 len,
				     struct guard_config *cfg)
{
	struct ipv6hdr *ip6 = data + ETH_HLEN;
	struct guard_lpm6 key;

	if ((void *)(ip6 + 1) > data_end || ip6->version != 6 ||
	    ETH_HLEN + sizeof(*ip6) + bpf_ntohs(ip6->payload_len) > len)
		return guard_verdict(len, DP_STAT_GUARD_MALFORMED, XDP_PASS);
	key.prefixlen = 128;
	__builtin_memcpy(key.addr, &ip6->saddr, sizeof(key.addr));
	if (guard_denied(&guard_deny6, &key.prefixlen, &key, cfg))
		return guard_verdict(len, DP_STAT_GUARD_DENIED, XDP_DROP);
	return guard_verdict(len, DP_STAT_GUARD_PASSED, XDP_PASS);
}

/* GCRA: does a packet at `now` conform to a bucket of `burst` tokens that
 * refills one token every `interval` ns? If so, the bucket moves on. */
static __always_inline bool guard_take(__u64 *tat, __u64 now, __u32 interval,
				       __u32 burst)
{
	__u64 t = *tat > now ? *tat : now;

	if (t + interval - now > (__u64)burst * interval)
		return false;
	*tat = t + interval;
	return true;
}

/* The state of a source in a scope, made if missing. A new state is all
 * zero: tat 0 is a full bucket, blocked_until 0 is no block. A source that
 * snat has verified since its state was made has that state moved over to
 * guard_vsrc4, so verification neither refills its buckets nor lifts its
 * block. An insert that loses a race (EEXIST) finds the winner's state by
 * the lookup after it. */
static __always_inline struct guard_state *
guard_state4(const struct guard_src4_key *key, bool verified)
{
	struct guard_state init, *st;

	__builtin_memset(&init, 0, sizeof(init));
	if (!verified) {
		st = bpf_map_lookup_elem(&guard_src4, key);
		if (st)
			return st;
		/* A full map evicts its least recently used entry. */
		bpf_map_update_elem(&guard_src4, key, &init, BPF_NOEXIST);
		return bpf_map_lookup_elem(&guard_src4, key);
	}
	st = bpf_map_lookup_elem(&guard_vsrc4, key);
	if (st)
		return st;
	st = bpf_map_lookup_elem(&guard_src4, key);
	if (st)
		init = *st;
	init.flags = DP_GUARD_F_VERIFIED;
	bpf_map_update_elem(&guard_vsrc4, key, &init, BPF_NOEXIST);
	if (st)
		bpf_map_delete_elem(&guard_src4, key);
	return bpf_map_lookup_elem(&guard_vsrc4, key);
}

/* A SYN or UDP datagram towards a published port that a limit applies
 * to: take a token from the source's bucket, or drop it. */
static __always_inline int guard_limit4(__be32 saddr, __be16 scope,
					int class, __u32 interval,
					__u32 burst, __u32 block_for,
					struct guard_config *cfg, __u32 len)
{
	struct guard_src4_key key = { .addr = saddr, .port = scope, .pad = 0 };
	enum dp_stat over = class == DP_GUARD_SYN ? DP_STAT_GUARD_SYN_LIMITED :
						    DP_STAT_GUARD_UDP_LIMITED;
	struct guard_state *st;
	bool verified;
	__u64 now;

	verified = bpf_map_lookup_elem(&guard_verified4, &saddr) != NULL;
	st = guard_state4(&key, verified);
	if (!st)
		/* Fail open: a player is never refused for want of state. */
		return guard_verdict(len, DP_STAT_GUARD_STATE_ERROR, XDP_PASS);

	now = dp_guard_now(cfg);
	if (st->blocked_until && now < st->blocked_until)
		return guard_verdict(len, DP_STAT_GUARD_BLOCKED, XDP_DROP);
	/* Packets of one interface's receive queue are handled one at a
	 * time; only a multi-queue NIC can update one source from two CPUs
	 * at once, and that race lets a packet or two more through at most,
	 * so there are no atomics on this path. */
	if (guard_take(class == DP_GUARD_SYN ? &st->syn_tat : &st->udp_tat,
		       now, interval, burst))
		return guard_verdict(len, DP_STAT_GUARD_ADMITTED, XDP_PASS);
	if (block_for) {
		st->blocked_until = now + block_for * NS_PER_SEC;
		st->block_class = class;
	}
	return guard_verdict(len, over, XDP_DROP);
}

SEC("xdp")
int guard(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct guard_limit *port_lim, *glob_lim, *lim;
	__u32 len = data_end - data;
	struct guard_config *cfg;
	__u32 zero = 0, idx;
	struct guard_lpm4 key;
	struct dnat4_value *dv;
	struct dnat4_key dk;
	struct dp_l4 p;
	__u32 rate_off;
	int parsed, class;

	dp_trace_xdp(ctx);
	cfg = bpf_map_lookup_elem(&guard_cfg, &zero);
	if (!cfg)
		return guard_verdict(len, DP_STAT_GUARD_PASSED, XDP_PASS);

	/* At XDP the frame is linear and whole, and an 802.1Q tag is still
	 * in it: a tagged frame's EtherType is not IPv4 or IPv6, so it is
	 * not ours, as at TC. */
	parsed = dp_parse_frame(data, data_end, len, &p);
	if (parsed == DP_PARSE_NOT_IPV4) {
		if (p.eth->h_proto == bpf_htons(ETH_P_IPV6))
			return guard_ip6(data, data_end, len, cfg);
		return guard_verdict(len, DP_STAT_GUARD_NOT_IP, XDP_PASS);
	}
	if (parsed == DP_PARSE_MALFORMED || parsed == DP_PARSE_PULL || !p.ip)
		return guard_verdict(len, DP_STAT_GUARD_MALFORMED, XDP_PASS);

	key.prefixlen = 32;
	key.addr = p.ip->saddr;
	if (guard_denied(&guard_deny4, &key.prefixlen, &key, cfg))
		return guard_verdict(len, DP_STAT_GUARD_DENIED, XDP_DROP);
	if (parsed != DP_PARSE_OK)
		/* Fragments and other protocols: not limited. */
		return guard_verdict(len, DP_STAT_GUARD_PASSED, XDP_PASS);

	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)p.ports;

		/* Only a SYN opens a connection; every other segment belongs
		 * to one (or to nothing, and the container answers it with a
		 * RST), and connections are never limited. */
		if (!tcp->syn || tcp->ack)
			return guard_verdict(len, DP_STAT_GUARD_PASSED,
					     XDP_PASS);
		class = DP_GUARD_SYN;
		rate_off = 0;
	} else {
		class = DP_GUARD_UDP;
		rate_off = 1;
	}

	/* A port's own rate for the class, else the global one. */
	idx = bpf_ntohs(p.dport);
	port_lim = bpf_map_lookup_elem(&guard_limits, &idx);
	glob_lim = bpf_map_lookup_elem(&guard_limits, &zero);
	if (!port_lim || !glob_lim)
		return guard_verdict(len, DP_STAT_GUARD_PASSED, XDP_PASS);
	lim = NULL;
	if (rate_off ? port_lim->udp_rate : port_lim->syn_rate)
		lim = port_lim;
	else if (rate_off ? glob_lim->udp_rate : glob_lim->syn_rate)
		lim = glob_lim;
	if (!lim)
		return guard_verdict(len, DP_STAT_GUARD_PASSED, XDP_PASS);

	/* Only traffic towards published ports is limited. */
	dk.ext_addr = p.ip->daddr;
	dk.host_port = p.dport;
	dk.proto = p.proto;
	dk.pad = 0;
	dv = bpf_map_lookup_elem(&dnat4, &dk);
	if (!dv)
		return guard_verdict(len, DP_STAT_GUARD_PASSED, XDP_PASS);
	if (class == DP_GUARD_UDP) {
		/* A datagram of a flow dnat recorded and the container has
		 * answered (snat marks it) belongs to an established flow,
		 * which is never limited. A flood never gets that far: its
		 * datagrams open new flows or flows nobody answers. */
		struct flow4_key fk = dp_flow4_key(dv->ctr_addr, p.ip->saddr,
						   dv->ctr_port, p.sport,
						   IPPROTO_UDP);
		struct flow4_value *f = bpf_map_lookup_elem(&flows4, &fk);

		if (f && (f->flags & DP_FLOW_F_ANSWERED) &&
		    f->ext_addr == p.ip->daddr && f->host_port == p.dport)
			return guard_verdict(len, DP_STAT_GUARD_ESTABLISHED,
					     XDP_PASS);
	}

	return guard_limit4(p.ip->saddr, port_lim->set ? p.dport : 0, class,
			    rate_off ? lim->udp_interval : lim->syn_interval,
			    rate_off ? lim->udp_burst : lim->syn_burst,
			    port_lim->block_for ? port_lim->block_for :
						  glob_lim->block_for,
			    cfg, len);
}

char _license[] SEC("license") = "GPL";
