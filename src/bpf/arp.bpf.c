// SPDX-License-Identifier: GPL-2.0
/* arp: first on TC ingress of a container's host veth. Answers the
 * container's ARP requests for any address but its own with the host veth's
 * MAC, so every packet the container sends reaches the host veth whether it
 * routes by a gateway or treats everything as on-link. The reply is built
 * in place and sent back out of the same veth. IPv6 neighbour solicitations
 * are answered the same way with a neighbour advertisement (router flag for
 * the gateway address); the rest of neighbour and router discovery and
 * multicast listener reports go to the kernel. */
#include <linux/if_arp.h>
#include "dp_verdict.h"
#include "dp_pkt.h"
#include "dp_pkt6.h"

#define DP_ICMP6_MLD_QUERY	130
#define DP_ICMP6_MLD_REPORT	131
#define DP_ICMP6_MLD_DONE	132
#define DP_ICMP6_ROUTER_SOL	133
#define DP_ICMP6_REDIRECT	137
#define DP_ICMP6_NEIGH_SOL	135
#define DP_ICMP6_NEIGH_ADV	136
#define DP_ICMP6_MLD2_REPORT	143
#define DP_ND_OPT_TARGET_LLADDR	2
/* The advertisement: Ethernet, IPv6, ICMPv6 header (4), flags (4),
 * target (16), target link-layer address option (8). */
#define ARP_NA_ICMP_LEN		32
#define ARP_NA_LEN		(ETH_HLEN + 40 + ARP_NA_ICMP_LEN)
#define ARP_NA_F_ROUTER		0x80
#define ARP_NA_F_SOLICITED	0x40
#define ARP_NA_F_OVERRIDE	0x20

/* IPv6 from the container. A neighbour solicitation (RFC 4861 7.1.1:
 * hop limit 255, code 0, at least 24 bytes, a unicast target) from one of
 * its addresses for any target but its own is answered with a solicited
 * advertisement of the host veth's MAC, with the router flag when the
 * target is the gateway; the frame is rebuilt as the advertisement (86
 * bytes, full checksum) and sent back out of the veth. Duplicate-address
 * probes (source ::) and solicitations for its own address are the
 * container's checks for conflicts: the kernel gets them, like router
 * solicitations, advertisements, redirects and multicast listener reports.
 * Other IPv6 is handed on to snat. */
static __always_inline int arp_ipv6(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len, icmp_off, pull;
	__be32 target[4], peer[4], tail[2];
	struct veth6_info *veth;
	__u8 peer_mac[ETH_ALEN];
	void *data, *data_end;
	struct ipv6hdr *ip6;
	struct dp_l4_6 p;
	__u8 *icmp, type;
	__s64 sum;
	bool router;

	if (dp_parse_l4_6(skb, &p) != DP_PARSE_NOT_L4 ||
	    p.proto != DP_NEXTHDR_ICMP)
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);
	icmp_off = p.l4_off;
	if (icmp_off > DP_IPV6_HDRS_MAX || icmp_off + 4 > p.end)
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);
	pull = icmp_off + 24 <= p.end ? icmp_off + 24 : icmp_off + 4;
	if ((void *)(long)skb->data + pull > (void *)(long)skb->data_end &&
	    bpf_skb_pull_data(skb, pull))
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip6 = data + ETH_HLEN;
	icmp = data + (icmp_off & 0x1ff);
	if ((void *)(ip6 + 1) > data_end || (void *)(icmp + 4) > data_end)
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);
	type = icmp[0];
	if (type == DP_ICMP6_MLD_QUERY || type == DP_ICMP6_MLD_REPORT ||
	    type == DP_ICMP6_MLD_DONE || type == DP_ICMP6_MLD2_REPORT ||
	    (type >= DP_ICMP6_ROUTER_SOL && type <= DP_ICMP6_REDIRECT &&
	     type != DP_ICMP6_NEIGH_SOL))
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_OK, NULL);
	if (type != DP_ICMP6_NEIGH_SOL)
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);

	/* A veth without IPv6 (or not registered at all): the kernel's, like
	 * the rest of neighbour discovery; arp's own counters stay ARP's. */
	veth = bpf_map_lookup_elem(&veths6, &ifindex);
	if (!veth)
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_OK, NULL);
	if ((void *)(icmp + 24) > data_end || ip6->hop_limit != 255 ||
	    icmp[1] != 0 || icmp_off + 24 > p.end)
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_OK, NULL);
	__builtin_memcpy(target, icmp + 8, sizeof(target));
	dp_ip6_copy(peer, ip6->saddr.in6_u.u6_addr32);
	if ((!peer[0] && !peer[1] && !peer[2] && !peer[3]) ||
	    (target[0] & bpf_htonl(0xff000000)) == bpf_htonl(0xff000000) ||
	    dp_ip6_eq(target, veth->ctr_ip))
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_OK, NULL);
	dp_copy_mac(peer_mac, ((struct ethhdr *)data)->h_source);
	router = dp_ip6_eq(target, veth->host_ip);

	/* The solicitation becomes the advertisement: exactly its size. */
	if (len != ARP_NA_LEN && bpf_skb_change_tail(skb, ARP_NA_LEN, 0))
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_OK, NULL);
	if ((void *)(long)skb->data + ARP_NA_LEN >
		    (void *)(long)skb->data_end &&
	    bpf_skb_pull_data(skb, ARP_NA_LEN))
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_SHOT,
				  NULL);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + ARP_NA_LEN > data_end)
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_SHOT,
				  NULL);
	ip6 = data + ETH_HLEN;
	icmp = (void *)(ip6 + 1);

	dp_copy_mac(((struct ethhdr *)data)->h_dest, peer_mac);
	dp_copy_mac(((struct ethhdr *)data)->h_source, veth->host_mac);
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IPV6);
	*(__be32 *)ip6 = bpf_htonl(0x60000000);
	ip6->payload_len = bpf_htons(ARP_NA_ICMP_LEN);
	ip6->nexthdr = DP_NEXTHDR_ICMP;
	ip6->hop_limit = 255;
	dp_ip6_copy(ip6->saddr.in6_u.u6_addr32, target);
	dp_ip6_copy(ip6->daddr.in6_u.u6_addr32, peer);
	icmp[0] = DP_ICMP6_NEIGH_ADV;
	icmp[1] = 0;
	icmp[2] = 0;
	icmp[3] = 0;
	icmp[4] = ARP_NA_F_SOLICITED | ARP_NA_F_OVERRIDE |
		  (router ? ARP_NA_F_ROUTER : 0);
	icmp[5] = 0;
	icmp[6] = 0;
	icmp[7] = 0;
	__builtin_memcpy(icmp + 8, target, sizeof(target));
	icmp[24] = DP_ND_OPT_TARGET_LLADDR;
	icmp[25] = 1;		/* in units of 8 bytes */
	dp_copy_mac(icmp + 26, veth->host_mac);

	/* A new message: its checksum from scratch, over the pseudo-header
	 * (addresses, length, next header) and the 32 bytes. */
	tail[0] = bpf_htonl(ARP_NA_ICMP_LEN);
	tail[1] = bpf_htonl(DP_NEXTHDR_ICMP);
	sum = bpf_csum_diff(NULL, 0, (void *)&ip6->saddr, 32, 0);
	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, tail, sizeof(tail), sum);
	if (sum >= 0)
		sum = bpf_csum_diff(NULL, 0, (void *)icmp, ARP_NA_ICMP_LEN,
				    sum);
	if (sum < 0)
		return dp_verdict(len, DP_STAT_ARP_ND_PASSED, TC_ACT_SHOT,
				  NULL);
	*(__sum16 *)(icmp + 2) = (__sum16)~dp_csum_fold((__u32)sum);

	return dp_verdict(len, DP_STAT_ARP_NEIGH_ADVERTISED,
			  bpf_redirect(ifindex, 0), NULL);
}

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
	if ((void *)(eth + 1) > data_end || skb->vlan_present)
		return dp_verdict(len, DP_STAT_NONE, TC_ACT_UNSPEC, NULL);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return arp_ipv6(skb);
	if (eth->h_proto != bpf_htons(ETH_P_ARP))
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
