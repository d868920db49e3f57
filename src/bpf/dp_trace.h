/* SPDX-License-Identifier: GPL-2.0 */
/* Trace events: while `datapathctl trace` runs (trace_cfg.on), every
 * decision a program ends with becomes one event in the trace_events ring
 * buffer, if it passes the filters in trace_cfg.
 *
 * A program calls dp_trace_tc() / dp_trace_xdp() / dp_trace_cgroup() first:
 * with tracing on, that notes the interface and the packet's addresses and
 * ports ("before") in the per-CPU trace_scratch event. Every rewrite of an
 * address or port (dp_rewrite(), the ICMP translation, host access) calls
 * dp_trace_rewrite4() / dp_trace_rewrite6(), which changes "after". The
 * one exit, dp_verdict(), calls dp_trace_end(), which filters and emits.
 * A program runs to its end on one CPU, so the scratch is its own.
 *
 * With tracing off each of these is one load of trace_cfg.on and a branch.
 * Building with -DDP_NO_TRACE compiles every one of them out (the
 * benchmark's reference for that cost). */
#pragma once

#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include "dp_maps.h"

/* The reason bitmap of trace_config has room for 256 reasons. */
_Static_assert(DP_STAT_MAX <= 256, "trace_config.reasons is too small");

/* Fixed IPv6 header as far as the trace reads it. */
struct dp_trace_ip6 {
	__be32 vtc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__be32 saddr[4];
	__be32 daddr[4];
};

#ifndef DP_NO_TRACE

static __always_inline struct trace_config *dp_trace_cfg(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&trace_cfg, &zero);
}

/* The scratch event, when a trace runs. */
static __always_inline struct trace_event *dp_trace_scratch(void)
{
	struct trace_config *cfg = dp_trace_cfg();
	__u32 zero = 0;

	if (!cfg || !cfg->on)
		return NULL;
	return bpf_map_lookup_elem(&trace_scratch, &zero);
}

/* Reads the addresses and ports of the frame in [data, data_end) into
 * ev->before and ev->after. Only what is in the linear head is read (the
 * trace never pulls or changes a packet); what is not there stays zero. */
static __noinline void dp_trace_frame(struct trace_event *ev, void *data,
				      void *data_end)
{
	struct ethhdr *eth = data;
	struct dp_tuple *t = &ev->before;
	__be16 *ports = NULL;

	__builtin_memset(t, 0, sizeof(*t));
	if ((void *)(eth + 1) > data_end)
		goto out;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			goto out;
		t->family = DP_AF_INET;
		t->proto = ip->protocol;
		t->saddr[0] = ip->saddr;
		t->daddr[0] = ip->daddr;
		if (!(ip->frag_off & bpf_htons(IP_OFFSET)))
			ports = (void *)ip + ((ip->ihl * 4) & 0x3c);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct dp_trace_ip6 *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			goto out;
		t->family = DP_AF_INET6;
		t->proto = ip6->nexthdr;
		__builtin_memcpy(t->saddr, ip6->saddr, 16);
		__builtin_memcpy(t->daddr, ip6->daddr, 16);
		ports = (void *)(ip6 + 1);
	}
	if (ports && (t->proto == IPPROTO_TCP || t->proto == IPPROTO_UDP) &&
	    (void *)(ports + 2) <= data_end) {
		t->sport = ports[0];
		t->dport = ports[1];
	}
out:
	ev->after = ev->before;
}

/* First thing a TC program does. */
static __always_inline void dp_trace_tc(struct __sk_buff *skb)
{
	struct trace_event *ev = dp_trace_scratch();

	if (!ev)
		return;
	ev->hook = DP_TRACE_TC;
	ev->ifindex = skb->ifindex;
	dp_trace_frame(ev, (void *)(long)skb->data,
		       (void *)(long)skb->data_end);
}

/* First thing an XDP program does. */
static __always_inline void dp_trace_xdp(struct xdp_md *ctx)
{
	struct trace_event *ev = dp_trace_scratch();

	if (!ev)
		return;
	ev->hook = DP_TRACE_XDP;
	ev->ifindex = ctx->ingress_ifindex;
	dp_trace_frame(ev, (void *)(long)ctx->data,
		       (void *)(long)ctx->data_end);
}

/* First thing a cgroup program does: no interface; the destination a
 * socket asks for, when there is one (dst, dport: 0 for none). */
static __always_inline void dp_trace_cgroup(__be32 dst, __be16 dport,
					    __u8 proto)
{
	struct trace_event *ev = dp_trace_scratch();

	if (!ev)
		return;
	ev->hook = DP_TRACE_CGROUP;
	ev->ifindex = 0;
	__builtin_memset(&ev->before, 0, sizeof(ev->before));
	if (dst) {
		ev->before.family = DP_AF_INET;
		ev->before.proto = proto;
		ev->before.daddr[0] = dst;
		ev->before.dport = dport;
	}
	ev->after = ev->before;
}

/* An IPv4 address and port of the packet (or socket address) changed. */
static __always_inline void dp_trace_rewrite4(bool dst, __be32 addr,
					      __be16 port)
{
	struct trace_event *ev = dp_trace_scratch();

	if (!ev)
		return;
	if (dst) {
		ev->after.daddr[0] = addr;
		ev->after.dport = port;
	} else {
		ev->after.saddr[0] = addr;
		ev->after.sport = port;
	}
}

/* The same for IPv6. */
static __always_inline void dp_trace_rewrite6(bool dst, const __be32 *addr,
					      __be16 port)
{
	struct trace_event *ev = dp_trace_scratch();

	if (!ev)
		return;
	if (dst) {
		__builtin_memcpy(ev->after.daddr, addr, 16);
		ev->after.dport = port;
	} else {
		__builtin_memcpy(ev->after.saddr, addr, 16);
		ev->after.sport = port;
	}
}

static __always_inline bool dp_trace_has_addr(const struct dp_tuple *t,
					      const struct trace_config *cfg)
{
	const __be32 *a = cfg->addr;

	if (t->family != cfg->family)
		return false;
	return (t->saddr[0] == a[0] && t->saddr[1] == a[1] &&
		t->saddr[2] == a[2] && t->saddr[3] == a[3]) ||
	       (t->daddr[0] == a[0] && t->daddr[1] == a[1] &&
		t->daddr[2] == a[2] && t->daddr[3] == a[3]);
}

static __always_inline bool dp_trace_has_port(const struct dp_tuple *t,
					      __be16 port)
{
	return t->sport == port || t->dport == port;
}

/* Filters and emits the scratch event. Out of line: dp_verdict() is
 * inlined at every exit, and this runs only while a trace does. */
static __noinline int dp_trace_emit(__u32 bytes, __u32 stat, int verdict)
{
	struct trace_config *cfg = dp_trace_cfg();
	struct trace_event *ev;
	__u32 zero = 0;
	__u64 *lost;
	bool drop;

	if (!cfg)
		return 0;
	ev = bpf_map_lookup_elem(&trace_scratch, &zero);
	/* No scratch of this packet: tracing was switched on after the
	 * program started. */
	if (!ev || !ev->hook)
		return 0;
	switch (ev->hook) {
	case DP_TRACE_XDP:
		drop = verdict == XDP_DROP || verdict == XDP_ABORTED;
		break;
	case DP_TRACE_CGROUP:
		drop = verdict == 0;
		break;
	default:
		drop = verdict == TC_ACT_SHOT;
		break;
	}
	if (cfg->drops_only && !drop)
		goto done;
	if (!(cfg->reasons[(stat >> 6) & 3] & (1ULL << (stat & 63))))
		goto done;
	if (cfg->ifindex && cfg->ifindex != ev->ifindex)
		goto done;
	if (cfg->port && !dp_trace_has_port(&ev->before, cfg->port) &&
	    !dp_trace_has_port(&ev->after, cfg->port))
		goto done;
	if (cfg->family && !dp_trace_has_addr(&ev->before, cfg) &&
	    !dp_trace_has_addr(&ev->after, cfg))
		goto done;

	ev->ts = bpf_ktime_get_ns();
	ev->len = bytes;
	ev->stat = stat;
	ev->verdict = verdict;
	ev->drop = drop;
	if (bpf_ringbuf_output(&trace_events, ev, sizeof(*ev), 0)) {
		/* Ring full: counted per CPU, reported by trace. */
		lost = bpf_map_lookup_elem(&trace_lost, &zero);
		if (lost)
			(*lost)++;
	}
done:
	ev->hook = DP_TRACE_NONE;
	return 0;
}

/* Called by dp_verdict(): the check of trace_cfg.on comes first. */
static __always_inline void dp_trace_end(__u32 bytes, enum dp_stat stat,
					 int verdict)
{
	struct trace_config *cfg = dp_trace_cfg();

	if (!cfg || !cfg->on)
		return;
	dp_trace_emit(bytes, stat, verdict);
}

#else /* DP_NO_TRACE */

/* Compiled out: not even the load of trace_cfg.on is left. */
#define dp_trace_tc(skb)			((void)0)
#define dp_trace_xdp(ctx)			((void)0)
#define dp_trace_cgroup(dst, dport, proto)	((void)0)
#define dp_trace_rewrite4(dst, addr, port)	((void)0)
#define dp_trace_rewrite6(dst, addr, port)	((void)0)
#define dp_trace_end(bytes, stat, verdict)	((void)0)

#endif /* DP_NO_TRACE */
