/* SPDX-License-Identifier: GPL-2.0 */
/* IPv6 parsing, through extension headers, over (data, data_end) for XDP
 * and TC, and the checksum-preserving rewrites of the TC programs. The
 * IPv6 twin of dp_pkt.h: IPv4 packets never run any of it. */
#pragma once

#include <linux/ipv6.h>
#include "dp_pkt.h"

/* Next-header values the parser knows. */
#define DP_NEXTHDR_HOP		0	/* hop-by-hop options */
#define DP_NEXTHDR_ROUTING	43
#define DP_NEXTHDR_FRAGMENT	44
#define DP_NEXTHDR_ICMP		58
#define DP_NEXTHDR_NONE		59
#define DP_NEXTHDR_DEST		60	/* destination options */

/* The parser follows at most this many extension headers, within this
 * many bytes after the fixed header: a packet with more is one the
 * datapath does not understand (passed by dnat, dropped and counted on
 * the container side). Real traffic carries one or two small ones. */
#define DP_IPV6_EXT_MAX		8
#define DP_IPV6_EXT_BYTES	256
/* The most a parse can need in the linear head: Ethernet, the fixed
 * header, the extension headers and a TCP header with options. */
#define DP_IPV6_HDRS_MAX	(ETH_HLEN + 40 + DP_IPV6_EXT_BYTES + 60)

struct dp_l4_6 {
	struct ethhdr *eth;
	struct ipv6hdr *ip6;	/* set once the 40-byte header is there */
	__be16 *ports;		/* source port, then destination port */
	__u32 l4_off;		/* from the start of the frame */
	__u32 end;		/* ETH_HLEN + 40 + payload length */
	__be16 sport;
	__be16 dport;
	__u8 proto;		/* the upper-layer header's next-header value */
};

/* Parses an Ethernet frame carrying IPv6 (the caller has seen the
 * EtherType) up to its upper-layer header, following hop-by-hop, routing
 * and destination options headers (bounded loop). Returns
 *  DP_PARSE_OK        TCP or UDP, header complete, ports set;
 *  DP_PARSE_NOT_L4    anything else, with p->proto and p->l4_off set to
 *                     the upper-layer header (ICMPv6: 58) when it was
 *                     reached, or to the header the parser stopped at;
 *  DP_PARSE_FRAGMENT  a fragment header (first fragment or not);
 *  DP_PARSE_MALFORMED lengths that contradict each other or the frame;
 *  DP_PARSE_PULL      headers beyond data_end but within `len` (TC only).
 * A payload length of 0 (jumbogram) is malformed here: nothing the
 * datapath serves sends one. */
static __always_inline int dp_parse_frame6(void *data, void *data_end,
					   __u32 len, struct dp_l4_6 *p)
{
	struct ipv6hdr *ip6;
	__u32 off, l4_len;
	__u8 nexthdr;
	void *l4;
	int i;

	p->eth = data;
	p->ip6 = NULL;
	if ((void *)(p->eth + 1) > data_end)
		return DP_PARSE_MALFORMED;
	ip6 = (void *)(p->eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return DP_PARSE_MALFORMED;
	p->ip6 = ip6;
	p->end = ETH_HLEN + sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	if (ip6->version != 6 || !ip6->payload_len || p->end > len)
		return DP_PARSE_MALFORMED;

	nexthdr = ip6->nexthdr;
	off = ETH_HLEN + sizeof(*ip6);
#pragma unroll
	for (i = 0; i < DP_IPV6_EXT_MAX; i++) {
		__u8 *ext;

		if (nexthdr != DP_NEXTHDR_HOP && nexthdr != DP_NEXTHDR_ROUTING &&
		    nexthdr != DP_NEXTHDR_DEST)
			break;
		/* Every extension header is a multiple of 8 bytes. */
		if (off + 8 > p->end)
			return DP_PARSE_MALFORMED;
		if (off > ETH_HLEN + sizeof(*ip6) + DP_IPV6_EXT_BYTES) {
			p->proto = nexthdr;
			p->l4_off = off;
			return DP_PARSE_NOT_L4;
		}
		ext = data + off;
		if ((void *)(ext + 2) > data_end) {
			p->l4_off = off + 8;
			return DP_PARSE_PULL;
		}
		nexthdr = ext[0];
		off += (ext[1] + 1) * 8;
	}
	p->proto = nexthdr;
	p->l4_off = off;
	if (nexthdr == DP_NEXTHDR_FRAGMENT)
		return DP_PARSE_FRAGMENT;
	if (off > p->end)
		return DP_PARSE_MALFORMED;
	if ((nexthdr != IPPROTO_TCP && nexthdr != IPPROTO_UDP) ||
	    off > ETH_HLEN + sizeof(*ip6) + DP_IPV6_EXT_BYTES)
		return DP_PARSE_NOT_L4;

	l4_len = nexthdr == IPPROTO_TCP ? sizeof(struct tcphdr) :
					  sizeof(struct udphdr);
	if (off + l4_len > p->end)
		return DP_PARSE_MALFORMED;
	l4 = data + off;
	if (l4 + sizeof(struct tcphdr) > data_end &&
	    (nexthdr == IPPROTO_TCP || l4 + sizeof(struct udphdr) > data_end)) {
		p->l4_off = off + l4_len;
		return DP_PARSE_PULL;
	}
	if (nexthdr == IPPROTO_TCP) {
		struct tcphdr *tcp = l4;
		__u32 doff_len = tcp->doff * 4;

		if (doff_len < sizeof(*tcp) || off + doff_len > p->end)
			return DP_PARSE_MALFORMED;
	} else {
		struct udphdr *udp = l4;
		__u32 udp_len = bpf_ntohs(udp->len);

		if (udp_len < sizeof(*udp) || off + udp_len > p->end)
			return DP_PARSE_MALFORMED;
	}

	p->ports = l4;
	p->sport = p->ports[0];
	p->dport = p->ports[1];
	return DP_PARSE_OK;
}

/* dp_parse_frame6() for TC. Headers beyond the linear head are pulled in
 * once, as far as any header chain the parser accepts can reach (or the
 * whole frame, if shorter), and the frame is parsed again. The caller has
 * checked that the frame is untagged IPv6. */
static __always_inline int dp_parse_l4_6(struct __sk_buff *skb,
					 struct dp_l4_6 *p)
{
	__u32 len = skb->len;
	int ret;

	ret = dp_parse_frame6((void *)(long)skb->data,
			      (void *)(long)skb->data_end, len, p);
	if (ret != DP_PARSE_PULL)
		return ret;
	p->ip6 = NULL;
	if (bpf_skb_pull_data(skb, len < DP_IPV6_HDRS_MAX ? len :
					       DP_IPV6_HDRS_MAX))
		return DP_PARSE_MALFORMED;
	ret = dp_parse_frame6((void *)(long)skb->data,
			      (void *)(long)skb->data_end, len, p);
	return ret == DP_PARSE_PULL ? DP_PARSE_MALFORMED : ret;
}

static __always_inline bool dp_ip6_eq(const __be32 *a, const __be32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void dp_ip6_copy(__be32 *dst, const __be32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

/* The checksum after a 128-bit field changed (RFC 1624, word by word). */
static __always_inline __sum16 dp_csum_replace16(__sum16 check,
						 const __be32 *from,
						 const __be32 *to)
{
	check = dp_csum_replace4(check, from[0], to[0]);
	check = dp_csum_replace4(check, from[1], to[1]);
	check = dp_csum_replace4(check, from[2], to[2]);
	return dp_csum_replace4(check, from[3], to[3]);
}

/* Rewrites the source or destination address and port of a parsed IPv6
 * TCP or UDP packet and fixes the L4 checksum.
 *
 * IPv6 has no header checksum to absorb an address change, so the three
 * kinds of skb need care: the L4 checksum goes through
 * bpf_l4_csum_replace() with BPF_F_PSEUDO_HDR, which updates a full
 * checksum and leaves a CHECKSUM_PARTIAL one (the pseudo-header sum) right
 * as well; for CHECKSUM_COMPLETE that helper also takes the field's change
 * out of skb->csum, as if (IPv4) the header had kept its sum — here the
 * address's own change is put in first with bpf_csum_update(), which does
 * nothing for other skbs. Net: skb->csum is the sum of the packet again.
 * After this call every packet pointer is invalid. Returns 0, or -1 when a
 * helper failed and the packet must be dropped. */
static __always_inline int dp_rewrite6(struct __sk_buff *skb,
				       const struct dp_l4_6 *p, bool dst,
				       const __be32 *new_ip, __be16 new_port)
{
	__u32 csum_off = p->l4_off + (p->proto == IPPROTO_TCP ?
				      offsetof(struct tcphdr, check) :
				      offsetof(struct udphdr, check));
	__u64 mangled = p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	__be32 old[4], new[4];
	__be32 *addr;
	__be16 old_port;
	__s64 diff;

	addr = dst ? p->ip6->daddr.in6_u.u6_addr32 :
		     p->ip6->saddr.in6_u.u6_addr32;
	dp_ip6_copy(old, addr);
	dp_ip6_copy(new, new_ip);
	dp_ip6_copy(addr, new);
	if (dst) {
		old_port = p->dport;
		p->ports[1] = new_port;
	} else {
		old_port = p->sport;
		p->ports[0] = new_port;
	}

	diff = bpf_csum_diff(old, sizeof(old), new, sizeof(new), 0);
	if (diff < 0)
		return -1;
	bpf_csum_update(skb, (__wsum)diff);
	if (bpf_l4_csum_replace(skb, csum_off, 0, (__u32)diff,
				BPF_F_PSEUDO_HDR | mangled))
		return -1;
	if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
				sizeof(new_port) | mangled))
		return -1;
	return 0;
}
