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
 * later in the chain ever sees a spoofed packet. */
#include "dp_verdict.h"
#include "dp_guard.h"
#include "dp_pkt.h"

SEC("tc")
int snat(struct __sk_buff *skb)
{
	struct dp_acct acct = { .dir = DP_DIR_OUT };
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct veth_info *veth;
	struct flow4_value *f;
	struct flow4_key key;
	struct dp_l4 p;
	int parsed;

	parsed = dp_parse_l4(skb, &p);
	if (!p.ip)
		/* Not IPv4, or IPv4 cut short: tproxy drops what it must. */
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
	if (!f || f->veth_ifindex != ifindex)
		return dp_verdict(len, DP_STAT_SNAT_HANDED_ON, TC_ACT_UNSPEC,
				  NULL);

	acct.slot = f->slot;
	/* What the guard needs to know of the flow, written in place once:
	 * the container has answered it (the guard never limits such a UDP
	 * flow), and for TCP that the player completed a handshake, so its
	 * address is verified and the guard keeps its limits' state where a
	 * spoofed flood cannot evict it. */
	if (!(f->flags & DP_FLOW_F_ANSWERED))
		f->flags |= DP_FLOW_F_ANSWERED;
	if (p.proto == IPPROTO_TCP && !(f->flags & DP_FLOW_F_VERIFIED)) {
		struct tcphdr *tcp = (void *)p.ports;

		if (!tcp->syn && !tcp->rst) {
			f->flags |= DP_FLOW_F_VERIFIED;
			dp_guard_verify4(p.ip->daddr);
		}
	}
	if (dp_rewrite(skb, &p, false, f->ext_addr, f->host_port))
		return dp_verdict(len, DP_STAT_SNAT_REWRITE_FAILED, TC_ACT_SHOT,
				  NULL);
	return dp_verdict(len, DP_STAT_SNAT_REDIRECT,
			  bpf_redirect_neigh(f->ext_ifindex, NULL, 0, 0), &acct);
}

char _license[] SEC("license") = "GPL";
