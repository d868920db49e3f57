/* SPDX-License-Identifier: GPL-2.0 */
/* Packet parsing shared by the TC and XDP programs, and the rewrites of
 * the TC programs (which need an skb). */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include "dp_trace.h"

#ifndef offsetof
#define offsetof(type, member) __builtin_offsetof(type, member)
#endif

enum dp_parse {
	DP_PARSE_OK,		/* IPv4 TCP or UDP, headers complete */
	DP_PARSE_NOT_IPV4,	/* EtherType is not IPv4 (VLAN tags included) */
	DP_PARSE_NOT_L4,	/* IPv4, but neither TCP nor UDP */
	DP_PARSE_FRAGMENT,	/* IPv4 fragment, first or not */
	DP_PARSE_MALFORMED,	/* too short or inconsistent headers */
	DP_PARSE_PULL,		/* headers beyond the linear head (TC only) */
};

/* The longest IPv4 header (IHL 15). */
#define DP_MAX_IP_HLEN	60

struct dp_l4 {
	struct ethhdr *eth;
	struct iphdr *ip;	/* set once 20 bytes of IPv4 header are there */
	__be16 *ports;		/* source port, then destination port */
	__u32 l4_off;		/* from the start of the frame */
	__be16 sport;
	__be16 dport;
	__u8 proto;
};

/* Parses Ethernet, IPv4 and the TCP or UDP header of a frame whose first
 * data_end - data bytes are directly readable and whose whole length is
 * `len`. Lengths come from the headers themselves (IHL, total length, TCP
 * data offset, UDP length) and are checked against `len`. Needs no skb, so
 * XDP (where the frame is all there: len = data_end - data) and TC share
 * it. Returns DP_PARSE_PULL, with p->l4_off set to the bytes needed, when
 * the IPv4 or the L4 header lies beyond data_end but within `len` (only at
 * TC). */
static __always_inline int dp_parse_frame(void *data, void *data_end,
					  __u32 len, struct dp_l4 *p)
{
	__u32 ihl_len, tot_len, l4_len;
	struct iphdr *ip;
	void *l4;

	p->eth = data;
	p->ip = NULL;
	if ((void *)(p->eth + 1) > data_end)
		return DP_PARSE_MALFORMED;
	if (p->eth->h_proto != bpf_htons(ETH_P_IP))
		return DP_PARSE_NOT_IPV4;

	ip = (void *)(p->eth + 1);
	if ((void *)(ip + 1) > data_end) {
		if (ETH_HLEN + sizeof(*ip) > len)
			return DP_PARSE_MALFORMED;
		/* The IPv4 header lies beyond the linear head (a frame a
		 * packet socket sent has only its Ethernet header there):
		 * ask for every header the parser may read, at most the
		 * whole frame. */
		p->l4_off = ETH_HLEN + DP_MAX_IP_HLEN + sizeof(struct tcphdr);
		if (p->l4_off > len)
			p->l4_off = len;
		p->ports = NULL;
		p->sport = 0;
		p->dport = 0;
		p->proto = 0;
		return DP_PARSE_PULL;
	}
	p->ip = ip;
	ihl_len = ip->ihl * 4;
	tot_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ihl_len < sizeof(*ip) || tot_len < ihl_len ||
	    ETH_HLEN + tot_len > len)
		return DP_PARSE_MALFORMED;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return DP_PARSE_FRAGMENT;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return DP_PARSE_NOT_L4;

	p->proto = ip->protocol;
	l4_len = p->proto == IPPROTO_TCP ? sizeof(struct tcphdr) :
					   sizeof(struct udphdr);
	if (ihl_len + l4_len > tot_len)
		return DP_PARSE_MALFORMED;
	p->l4_off = ETH_HLEN + ihl_len;
	if (data + p->l4_off + l4_len > data_end) {
		p->l4_off += l4_len;
		return DP_PARSE_PULL;
	}

	/* ihl_len is 20..60; the mask lets the verifier see that too. */
	l4 = (void *)ip + (ihl_len & 0x3c);
	if (l4 + sizeof(struct tcphdr) > data_end &&
	    (p->proto == IPPROTO_TCP || l4 + sizeof(struct udphdr) > data_end))
		return DP_PARSE_MALFORMED;
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		__u32 doff_len = tcp->doff * 4;

		if (doff_len < sizeof(*tcp) || ihl_len + doff_len > tot_len)
			return DP_PARSE_MALFORMED;
	} else {
		struct udphdr *udp = l4;
		__u32 udp_len = bpf_ntohs(udp->len);

		if (udp_len < sizeof(*udp) || ihl_len + udp_len > tot_len)
			return DP_PARSE_MALFORMED;
	}

	p->ports = l4;
	p->sport = p->ports[0];
	p->dport = p->ports[1];
	return DP_PARSE_OK;
}

/* dp_parse_frame() for TC. skb->len counts the whole frame even when only
 * its head is linear; a header that is not in the linear head is pulled in
 * and the frame parsed again (the pull invalidates every packet pointer).
 * A pull for the IPv4 header brings in the longest L4 header too, so one
 * pull is always enough.
 * Before TC ingress the kernel moves an 802.1Q/802.1ad tag out of the
 * frame into skb->vlan_tci (skb_vlan_untag()), so a tagged frame looks
 * untagged here. The datapath serves untagged traffic only: a tagged frame
 * is not ours, whatever its inner EtherType says. */
static __always_inline int dp_parse_l4(struct __sk_buff *skb, struct dp_l4 *p)
{
	int ret;

	p->eth = (void *)(long)skb->data;
	p->ip = NULL;
	if (skb->vlan_present) {
		if ((void *)(p->eth + 1) > (void *)(long)skb->data_end)
			return DP_PARSE_MALFORMED;
		return DP_PARSE_NOT_IPV4;
	}
	ret = dp_parse_frame((void *)(long)skb->data,
			     (void *)(long)skb->data_end, skb->len, p);
	if (ret != DP_PARSE_PULL)
		return ret;
	p->ip = NULL;
	if (bpf_skb_pull_data(skb, p->l4_off))
		return DP_PARSE_MALFORMED;
	ret = dp_parse_frame((void *)(long)skb->data,
			     (void *)(long)skb->data_end, skb->len, p);
	/* Pulled as far as the headers go: still short means inconsistent. */
	return ret == DP_PARSE_PULL ? DP_PARSE_MALFORMED : ret;
}

/* One's-complement arithmetic on 16-bit words as they lie in memory: the
 * sum does not depend on byte order, so network-order fields are added as
 * they are (RFC 1071). */
static __always_inline __u16 dp_csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

/* The checksum after a 32-bit field changed from `from` to `to`
 * (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). */
static __always_inline __sum16 dp_csum_replace4(__sum16 check, __be32 from,
						__be32 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~from + (__u16)~(from >> 16);
	s += (__u16)to + (__u16)(to >> 16);
	return (__sum16)~dp_csum_fold(s);
}

/* The same for a 16-bit field. */
static __always_inline __sum16 dp_csum_replace2(__sum16 check, __be16 from,
						__be16 to)
{
	__u32 s = (__u16)~check;

	s += (__u16)~from;
	s += (__u16)to;
	return (__sum16)~dp_csum_fold(s);
}

/* Rewrites the source or destination address and port of a parsed packet
 * and fixes both checksums incrementally.
 *
 * The IPv4 header checksum is updated in place: the address and the
 * checksum change together, so the header's one's-complement sum, and with
 * it skb->csum of a CHECKSUM_COMPLETE skb, stays what it was; a helper call
 * would only cost time. The L4 checksum goes through the helpers: they
 * also keep skb->csum right for CHECKSUM_COMPLETE (the pseudo-header is not
 * in the packet, the checksum field is) and leave the port out for
 * CHECKSUM_PARTIAL, where the field holds only the pseudo-header sum
 * (inet_proto_csum_replace*); which case applies is not visible to the
 * program. BPF_F_MARK_MANGLED_0 keeps a zero (absent) UDP checksum zero.
 * After this call every packet pointer is invalid. Returns 0, or -1 when a
 * helper failed and the packet must be dropped. */
static __always_inline int dp_rewrite(struct __sk_buff *skb,
				      const struct dp_l4 *p, bool dst,
				      __be32 new_ip, __be16 new_port)
{
	__u32 csum_off = p->l4_off + (p->proto == IPPROTO_TCP ?
				      offsetof(struct tcphdr, check) :
				      offsetof(struct udphdr, check));
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 old_ip;
	__be16 old_port;

	if (dst) {
		old_ip = p->ip->daddr;
		old_port = p->dport;
		p->ip->daddr = new_ip;
		p->ports[1] = new_port;
	} else {
		old_ip = p->ip->saddr;
		old_port = p->sport;
		p->ip->saddr = new_ip;
		p->ports[0] = new_port;
	}
	p->ip->check = dp_csum_replace4(p->ip->check, old_ip, new_ip);
	dp_trace_rewrite4(dst, new_ip, new_port);

	if (bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip,
				BPF_F_PSEUDO_HDR | sizeof(new_ip) | mangled))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
				sizeof(new_port) | mangled))
		return -1;
	return 0;
}

static __always_inline void dp_copy_mac(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}
