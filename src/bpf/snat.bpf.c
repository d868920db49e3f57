// SPDX-License-Identifier: GPL-2.0
/* snat: TC ingress of a container's host veth, after arp. A reply from a
 * published container port gets the host's external address and published
 * port as its source and leaves by the external NIC (bpf_redirect_neigh
 * fills in the L2 header from the host's neighbour table). IPv4 with a
 * source other than the container's is dropped here, first, so nothing
 * later in the chain ever sees a spoofed packet. */
#include "dp_maps.h"
#include "dp_pkt.h"

SEC("tc")
int snat(struct __sk_buff *skb)
{
	struct snat_config *cfg;
	struct ctr_endpoint key;
	struct veth_info *veth;
	struct snat_value *v;
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;
	struct dp_l4 p;
	int parsed;

	parsed = dp_parse_l4(skb, &p);
	if (!p.ip) {
		/* Not IPv4, or IPv4 cut short: tproxy drops what it must. */
		dp_count(DP_STAT_SNAT_HANDED_ON, skb->len);
		return TC_ACT_UNSPEC;
	}

	veth = bpf_map_lookup_elem(&veths, &ifindex);
	if (!veth) {
		/* Fail closed: a veth nobody registered forwards nothing. */
		dp_count(DP_STAT_SNAT_UNREGISTERED, skb->len);
		return TC_ACT_SHOT;
	}
	if (p.ip->saddr != veth->ctr_ip) {
		dp_count(DP_STAT_SNAT_SPOOFED, skb->len);
		return TC_ACT_SHOT;
	}
	if (parsed != DP_PARSE_OK) {
		dp_count(DP_STAT_SNAT_HANDED_ON, skb->len);
		return TC_ACT_UNSPEC;
	}

	key = dp_endpoint(p.ip->saddr, p.sport, p.proto);
	v = bpf_map_lookup_elem(&snat_ports, &key);
	if (!v || v->veth_ifindex != ifindex) {
		dp_count(DP_STAT_SNAT_HANDED_ON, skb->len);
		return TC_ACT_UNSPEC;
	}
	/* A SYN without ACK opens a connection: never a reply, even from the
	 * published port. Handing it on sends it to the proxy like any other
	 * outgoing connection instead of straight out of the external NIC,
	 * and tproxy records the flow; the rest of that connection is then
	 * recognised by its recorded original destination. (UDP has no such
	 * mark; without connection state a datagram from a published UDP
	 * port is taken as a reply.) */
	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)p.ports;
		struct flow_orig *orig;

		if (tcp->syn && !tcp->ack) {
			dp_count(DP_STAT_SNAT_HANDED_ON, skb->len);
			return TC_ACT_UNSPEC;
		}
		orig = bpf_map_lookup_elem(&proxy_flows, &key);
		if (orig && orig->orig_ip == p.ip->daddr &&
		    orig->orig_port == p.dport) {
			dp_count(DP_STAT_SNAT_HANDED_ON, skb->len);
			return TC_ACT_UNSPEC;
		}
	}

	cfg = bpf_map_lookup_elem(&snat_cfg, &zero);
	if (!cfg || !cfg->ext_ip) {
		dp_count(DP_STAT_SNAT_NO_EXTERNAL, skb->len);
		return TC_ACT_SHOT;
	}
	if (dp_rewrite(skb, &p, false, cfg->ext_ip, v->host_port)) {
		dp_count(DP_STAT_SNAT_REWRITE_FAILED, skb->len);
		return TC_ACT_SHOT;
	}
	dp_count(DP_STAT_SNAT_REDIRECT, skb->len);
	return bpf_redirect_neigh(cfg->ext_ifindex, NULL, 0, 0);
}

char _license[] SEC("license") = "GPL";
