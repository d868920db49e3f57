// SPDX-License-Identifier: GPL-2.0
/* arp: first on TC ingress of a container's host veth. Answers the
 * container's ARP requests for any address but its own with the host veth's
 * MAC, so every packet the container sends reaches the host veth whether it
 * routes by a gateway or treats everything as on-link. The reply is built
 * in place and sent back out of the same veth. */
#include <linux/if_arp.h>
#include "dp_verdict.h"
#include "dp_pkt.h"

SEC("tc")
int arp(struct __sk_buff *skb)
{
	void *data_end = (void *)(long)skb->data_end;
	void *data = (void *)(long)skb->data;
	struct ethhdr *eth = data;
	struct arp_eth_ipv4 *body;
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct veth_info *veth;
	struct arphdr *arp;
	__be32 sip, tip;

	dp_trace_tc(skb);
	/* A VLAN tag, already moved out of the frame into skb->vlan_tci, makes
	 * the frame not ours: tproxy drops it as not IPv4/ARP. */
	if ((void *)(eth + 1) > data_end || skb->vlan_present ||
	    eth->h_proto != bpf_htons(ETH_P_ARP))
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);

	/* From here on the packet is ARP: whatever is not answered goes to
	 * the kernel (TC_ACT_OK), never on to snat/tproxy, which would drop
	 * it as "not IPv4". */
	arp = (void *)(eth + 1);
	body = (void *)(arp + 1);
	if ((void *)(body + 1) > data_end ||
	    arp->ar_hrd != bpf_htons(ARPHRD_ETHER) ||
	    arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4 ||
	    arp->ar_op != bpf_htons(ARPOP_REQUEST))
		return dp_verdict(len, DP_STAT_ARP_PASSED, TC_ACT_OK, NULL);

	veth = bpf_map_lookup_elem(&veths, &ifindex);
	if (!veth)
		return dp_verdict(len, DP_STAT_ARP_UNREGISTERED, TC_ACT_OK,
				  NULL);

	sip = body->ar_sip;
	tip = body->ar_tip;
	/* Probes (sender 0.0.0.0), gratuitous ARP (target == sender) and
	 * requests for the container's own address are duplicate-address
	 * checks: answering them would make the container see a conflict. */
	if (!sip || tip == sip || tip == veth->ctr_ip)
		return dp_verdict(len, DP_STAT_ARP_PASSED, TC_ACT_OK, NULL);

	dp_copy_mac(eth->h_dest, eth->h_source);
	dp_copy_mac(eth->h_source, veth->host_mac);
	arp->ar_op = bpf_htons(ARPOP_REPLY);
	dp_copy_mac(body->ar_tha, body->ar_sha);
	body->ar_tip = sip;
	dp_copy_mac(body->ar_sha, veth->host_mac);
	body->ar_sip = tip;

	/* Out of the same veth's egress: straight back to the container. */
	return dp_verdict(len, DP_STAT_ARP_REPLIED, bpf_redirect(ifindex, 0),
			  NULL);
}

char _license[] SEC("license") = "GPL";
