// SPDX-License-Identifier: GPL-2.0
/* snat: TC ingress of a container's host veth, after arp. A packet that is
 * the reverse of a flow dnat recorded, arriving on the host veth that flow
 * was sent to, is a reply: it gets the external address and host port the
 * player used as its source and leaves by the external interface the flow
 * came in on (bpf_redirect_neigh fills in the L2 header from the host's
 * neighbour table). Everything else is handed on: a container talking from
 * its published port to the host, to another container or to the outside
 * opens a connection of its own, which goes through the proxy. IPv4 with a
 * source other than the container's is dropped here, first, so nothing
 * later in the chain ever sees a spoofed packet. For a while after an
 * upgrade from the release before published flows, the flow-less replies
 * of the connections that release forwarded are adopted (snat_adopt()).
 * IPv6 takes the same steps on its twins (veths6, flows6); that release
 * had no IPv6, so there is nothing to adopt. */
#include "dp_verdict.h"
#include "dp_guard.h"
#include "dp_pkt.h"
#include "dp_pkt6.h"
#include "dp_host.h"

/* Upgrades from the release before published flows. That release took
 * every packet from a published container port for a reply and sent it
 * from its one external address; the connections it forwarded have no
 * recorded flow. Until host_cfg.adopt_until (set by the `load` that
 * migrated it), a flow-less packet is adopted if the release before would
 * have taken it and it is none of the host's own: TCP without SYN or UDP,
 * from a port published on that address to this container behind this
 * veth, not a proxied connection, not a connection or UDP flow the host
 * opened, not to the host veth's address, and routed out of that release's
 * external interface (when forwarding is off the FIB cannot say, and the
 * other checks decide). Its flow is recorded as dnat would have recorded
 * it, so from then on it is an ordinary published flow. */
static __always_inline bool snat_adopt(struct __sk_buff *skb,
				       const struct dp_l4 *p,
				       const struct veth_info *veth,
				       const struct flow4_key *key,
				       struct flow4_value *fv)
{
	struct mapping_rev_key rk = {};
	struct bpf_fib_lookup fib = {};
	struct host_config *cfg;
	struct mapping_key *mk;
	struct dnat4_value *d;
	struct flow_orig *orig;
	struct ctr_endpoint ek;
	struct dnat4_key dk;
	__u32 zero = 0;
	int rc;

	cfg = bpf_map_lookup_elem(&host_cfg, &zero);
	if (!cfg || !cfg->adopt_until || bpf_ktime_get_ns() >= cfg->adopt_until)
		return false;
	if (p->proto == IPPROTO_TCP && ((struct tcphdr *)p->ports)->syn)
		return false;

	/* That release published default mappings only. */
	rk.family = AF_INET;
	rk.proto = p->proto;
	rk.ctr_port = p->sport;
	rk.ctr_addr[0] = p->ip->saddr;
	mk = bpf_map_lookup_elem(&mapping_rev, &rk);
	if (!mk)
		return false;
	dk.ext_addr = cfg->adopt_addr;
	dk.host_port = mk->host_port;
	dk.proto = p->proto;
	dk.pad = 0;
	d = bpf_map_lookup_elem(&dnat4, &dk);
	if (!d || d->ctr_addr != p->ip->saddr || d->ctr_port != p->sport ||
	    d->veth_ifindex != skb->ifindex)
		return false;

	ek = dp_endpoint(p->ip->saddr, p->sport, p->proto);
	orig = bpf_map_lookup_elem(&proxy_flows, &ek);
	if (orig && orig->orig_ip == p->ip->daddr &&
	    orig->orig_port == p->dport)
		return false;
	if (p->proto == IPPROTO_TCP ? dp_host_tcp(skb, p) :
	    !!bpf_map_lookup_elem(&host_flows4, key))
		return false;
	if (p->ip->daddr == veth->host_ip)
		return false;

	fib.family = AF_INET;
	fib.l4_protocol = p->proto;
	fib.sport = p->sport;
	fib.dport = p->dport;
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = p->ip->saddr;
	fib.ipv4_dst = p->ip->daddr;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_FWD_DISABLED &&
	    ((rc != BPF_FIB_LKUP_RET_SUCCESS &&
	      rc != BPF_FIB_LKUP_RET_NO_NEIGH) ||
	     fib.ifindex != cfg->adopt_ifindex))
		return false;

	fv->ext_addr = cfg->adopt_addr;
	fv->host_port = mk->host_port;
	/* The container answers on it: what snat_reply() marks, marked before
	 * the flow is written. */
	fv->flags = DP_FLOW_F_ANSWERED;
	if (p->proto == IPPROTO_TCP && !((struct tcphdr *)p->ports)->rst) {
		fv->flags |= DP_FLOW_F_VERIFIED;
		dp_guard_verify4(p->ip->daddr);
	}
	fv->pad = 0;
	fv->ext_ifindex = cfg->adopt_ifindex;
	fv->veth_ifindex = skb->ifindex;
	fv->slot = d->slot;
	/* A failed update costs only this packet's record: the next one is
	 * adopted again. */
	bpf_map_update_elem(&flows4, key, fv, BPF_ANY);
	return true;
}

/* A reply: the source becomes what the player used, and it leaves by the
 * external interface the flow came in on. Inlined with a constant `stat`
 * at each call, like every dp_verdict(). */
static __always_inline int snat_reply(struct __sk_buff *skb, struct dp_l4 *p,
				      struct flow4_value *f, __u32 len,
				      enum dp_stat stat)
{
	struct dp_acct acct = { .dir = DP_DIR_OUT, .slot = f->slot };

	/* What the guard needs to know of the flow, written in place once:
	 * the container has answered it (the guard never limits such a UDP
	 * flow), and for TCP that the player completed a handshake, so its
	 * address is verified and the guard keeps its limits' state where a
	 * spoofed flood cannot evict it. */
	if (!(f->flags & DP_FLOW_F_ANSWERED))
		f->flags |= DP_FLOW_F_ANSWERED;
	if (p->proto == IPPROTO_TCP && !(f->flags & DP_FLOW_F_VERIFIED)) {
		struct tcphdr *tcp = (void *)p->ports;

		if (!tcp->syn && !tcp->rst) {
			f->flags |= DP_FLOW_F_VERIFIED;
			dp_guard_verify4(p->ip->daddr);
		}
	}
	if (dp_rewrite(skb, p, false, f->ext_addr, f->host_port))
		return dp_verdict(len, DP_STAT_SNAT_REWRITE_FAILED, TC_ACT_SHOT,
				  NULL);
	return dp_verdict(len, stat,
			  bpf_redirect_neigh(f->ext_ifindex, NULL, 0, 0), &acct);
}

/* snat for IPv6: anti-spoofing against veths6 (a veth registered without
 * an IPv6 address forwards no IPv6), then the reply of a flows6 flow.
 * Neighbour discovery never gets here: arp answers or passes it first. The
 * guard has no IPv6 limits, so a reply only marks its flow answered. */
static __always_inline int snat6(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct dp_acct acct = { .dir = DP_DIR_OUT };
	struct veth6_info *veth;
	struct flow6_value *f;
	struct flow6_key key;
	struct dp_l4_6 p;
	int parsed;

	parsed = dp_parse_l4_6(skb, &p);
	if (!p.ip6)
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);
	veth = bpf_map_lookup_elem(&veths6, &ifindex);
	if (!veth)
		return dp_verdict(len, DP_STAT_SNAT_UNREGISTERED, TC_ACT_SHOT,
				  NULL);
	if (!dp_ip6_eq(p.ip6->saddr.in6_u.u6_addr32, veth->ctr_ip))
		return dp_verdict(len, DP_STAT_SNAT_SPOOFED, TC_ACT_SHOT, NULL);
	if (parsed != DP_PARSE_OK)
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);

	key = dp_flow6_key(p.ip6->saddr.in6_u.u6_addr32,
			   p.ip6->daddr.in6_u.u6_addr32, p.sport, p.dport,
			   p.proto);
	f = bpf_map_lookup_elem(&flows6, &key);
	if (!f || f->veth_ifindex != ifindex)
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);
	acct.slot = f->slot;
	if (!(f->flags & DP_FLOW_F_ANSWERED))
		f->flags |= DP_FLOW_F_ANSWERED;
	if (dp_rewrite6(skb, &p, false, f->ext_addr, f->host_port))
		return dp_verdict(len, DP_STAT_SNAT_REWRITE_FAILED, TC_ACT_SHOT,
				  NULL);
	return dp_verdict(len, DP_STAT_SNAT_REDIRECT,
			  bpf_redirect_neigh(f->ext_ifindex, NULL, 0, 0), &acct);
}

SEC("tc")
int snat(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct veth_info *veth;
	struct flow4_value *f;
	struct flow4_value adopted;
	struct flow4_key key;
	struct dp_l4 p;
	int parsed;

	dp_trace_tc(skb);
	parsed = dp_parse_l4(skb, &p);
	if (parsed == DP_PARSE_NOT_IPV4 && !skb->vlan_present &&
	    p.eth->h_proto == bpf_htons(ETH_P_IPV6))
		return snat6(skb);
	if (!p.ip)
		/* Not IP, or IPv4 cut short: tproxy drops what it must. */
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);

	veth = bpf_map_lookup_elem(&veths, &ifindex);
	if (!veth)
		/* Fail closed: a veth nobody registered forwards nothing. */
		return dp_verdict(len, DP_STAT_SNAT_UNREGISTERED, TC_ACT_SHOT,
				  NULL);
	if (p.ip->saddr != veth->ctr_ip)
		return dp_verdict(len, DP_STAT_SNAT_SPOOFED, TC_ACT_SHOT, NULL);
	if (parsed != DP_PARSE_OK)
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);

	key = dp_flow4_key(p.ip->saddr, p.ip->daddr, p.sport, p.dport,
			   p.proto);
	f = bpf_map_lookup_elem(&flows4, &key);
	if (!f) {
		if (!snat_adopt(skb, &p, veth, &key, &adopted))
			return dp_verdict(len, DP_STAT_SNAT_HANDED_ON,
					  TC_ACT_UNSPEC, NULL);
		return snat_reply(skb, &p, &adopted, len,
				  DP_STAT_SNAT_ADOPTED);
	}
	if (f->veth_ifindex != ifindex)
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);
	return snat_reply(skb, &p, f, len, DP_STAT_SNAT_REDIRECT);
}

char _license[] SEC("license") = "GPL";
