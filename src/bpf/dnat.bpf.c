// SPDX-License-Identifier: GPL-2.0
/* dnat: TC ingress of the external NIC. Publishes container ports: a TCP or
 * UDP packet to a published (host port, proto) is rewritten to the
 * container's address, port and MAC and handed straight to the container
 * side of its veth with bpf_redirect_peer, skipping the host's stack. */
#include "dp_maps.h"
#include "dp_pkt.h"

SEC("tc")
int dnat(struct __sk_buff *skb)
{
	struct dnat_value *v;
	struct dnat_key key;
	struct dp_l4 p;

	switch (dp_parse_l4(skb, &p)) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_NOT_IPV4:
		dp_count(DP_STAT_DNAT_NOT_IPV4, skb->len);
		return TC_ACT_UNSPEC;
	case DP_PARSE_NOT_L4:
		dp_count(DP_STAT_DNAT_NOT_L4, skb->len);
		return TC_ACT_UNSPEC;
	case DP_PARSE_FRAGMENT:
		/* Later fragments carry no ports; rewriting only the first
		 * would split the datagram between host and container. */
		dp_count(DP_STAT_DNAT_FRAGMENT, skb->len);
		return TC_ACT_UNSPEC;
	default:
		dp_count(DP_STAT_DNAT_MALFORMED, skb->len);
		return TC_ACT_UNSPEC;
	}

	key.port = p.dport;
	key.proto = p.proto;
	key.pad = 0;
	v = bpf_map_lookup_elem(&dnat_ports, &key);
	if (!v) {
		dp_count(DP_STAT_DNAT_MISS, skb->len);
		return TC_ACT_UNSPEC;
	}

	dp_copy_mac(p.eth->h_dest, v->ctr_mac);
	if (dp_rewrite(skb, &p, true, v->ctr_ip, v->ctr_port)) {
		dp_count(DP_STAT_DNAT_REWRITE_FAILED, skb->len);
		return TC_ACT_SHOT;
	}
	dp_count(DP_STAT_DNAT_REDIRECT, skb->len);
	/* Into the container's netns without a second trip through the
	 * host's stack or the backlog queue (kernel 5.10+). */
	return bpf_redirect_peer(v->veth_ifindex, 0);
}

char _license[] SEC("license") = "GPL";
