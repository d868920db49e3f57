// SPDX-License-Identifier: GPL-2.0
/* dnat: TC ingress of the external NIC. Publishes container ports: a TCP or
 * UDP packet to a published (external address, host port, proto) is
 * rewritten to the container's address, port and MAC, its flow is recorded
 * in flows4 for snat, and it is handed straight to the container side of
 * its veth with bpf_redirect_peer, skipping the host's stack. ICMP
 * destination-unreachable errors about a recorded flow are translated the
 * same way, so path-MTU discovery works for players behind smaller links.
 * IPv6 takes the same path through its twins: dnat6, flows6, ICMPv6
 * packet-too-big and destination-unreachable. */
#include <linux/icmp.h>
#include "dp_verdict.h"
#include "dp_pkt.h"
#include "dp_pkt6.h"

/* Records the flow of a published packet, or refreshes it: the lookup marks
 * the LRU entry used, and the entry is written only when it is missing or
 * different (another external address, interface, veth or mapping).
 * Returns 1 for a new flow, 0 for a known one, -1 when the update failed. */
static __always_inline int dnat_record(const struct flow4_key *k,
				       const struct flow4_value *v)
{
	struct flow4_value *f = bpf_map_lookup_elem(&flows4, k);

	if (f && f->ext_addr == v->ext_addr && f->host_port == v->host_port &&
	    f->ext_ifindex == v->ext_ifindex &&
	    f->veth_ifindex == v->veth_ifindex && f->slot == v->slot)
		return 0;
	/* A full LRU map evicts its least recently used entry: a new player
	 * is never refused for want of room. */
	if (bpf_map_update_elem(&flows4, k, v, BPF_ANY))
		return -1;
	return !f;
}

/* Bytes of an ICMP error the translation reads: the ICMP header, the
 * embedded IPv4 header (up to 60 bytes with options) and the first 18
 * bytes of its TCP header (ports and checksum), or 8 of UDP. */
#define DNAT_ICMP_MAX	(sizeof(struct icmphdr) + 60 + 18)

/* An ICMP packet to the host (the outer IPv4 header is complete, not a
 * fragment). A destination-unreachable error (every code, "fragmentation
 * needed" included) that the host's reply of a recorded published flow
 * provoked embeds that reply: ext addr:host port -> player. The error is
 * rewritten as if the container's own packet had provoked it (outer
 * destination, embedded source address and port, and every checksum that
 * covers them) and delivered to the container. Anything else is passed
 * untouched. */
static __always_inline int dnat_icmp(struct __sk_buff *skb, struct dp_l4 *p)
{
	struct dp_acct acct = { .dir = DP_DIR_IN };
	__u32 len = skb->len, ihl, tot, icmp_off, in_ihl, avail, pull;
	__be32 ext_addr, ctr_addr, player;
	__be16 ext_port, ctr_port, player_port;
	__sum16 *l4_check = NULL, old, nc, sum;
	struct iphdr *ip, *in;
	struct dnat4_value *v;
	struct flow4_value *f;
	struct dnat4_key dk;
	struct flow4_key fk;
	struct icmphdr *icmp;
	void *data, *data_end;
	__be16 *ports;
	__u8 proto;

	ihl = (p->ip->ihl * 4) & 0x3c;
	tot = bpf_ntohs(p->ip->tot_len);
	icmp_off = ETH_HLEN + ihl;
	/* What the error carries beyond the outer header, within total
	 * length (checked against skb->len by the parser). */
	avail = tot - ihl;
	if (avail < sizeof(struct icmphdr) + sizeof(struct iphdr) + 8)
		goto pass;
	pull = icmp_off + (avail < DNAT_ICMP_MAX ? avail : DNAT_ICMP_MAX);
	if ((void *)(long)skb->data + pull > (void *)(long)skb->data_end &&
	    bpf_skb_pull_data(skb, pull))
		goto pass;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip = data + ETH_HLEN;
	icmp = (void *)ip + ihl;
	in = (void *)(icmp + 1);
	/* Both bounds: the verifier tracks the fixed and the variable
	 * offset separately. */
	if ((void *)(ip + 1) > data_end || (void *)(in + 1) > data_end)
		goto pass;
	if (icmp->type != ICMP_DEST_UNREACH)
		goto pass;
	in_ihl = (in->ihl * 4) & 0x3c;
	proto = in->protocol;
	/* The embedded packet must be one the host could have sent: a
	 * whole IPv4 header, not a later fragment, TCP or UDP, and long
	 * enough (by its own total length) for its L4 header. Of it, the
	 * error must carry at least the ports. */
	if (in->version != 4 || in_ihl < sizeof(*in) ||
	    (in->frag_off & bpf_htons(IP_OFFSET)) ||
	    (proto != IPPROTO_TCP && proto != IPPROTO_UDP) ||
	    bpf_ntohs(in->tot_len) < in_ihl + (proto == IPPROTO_TCP ?
					       sizeof(struct tcphdr) :
					       sizeof(struct udphdr)) ||
	    sizeof(struct icmphdr) + in_ihl + 8 > avail)
		goto pass;
	ports = (void *)in + in_ihl;
	if ((void *)(ports + 4) > data_end)
		goto pass;

	ext_addr = in->saddr;
	player = in->daddr;
	ext_port = ports[0];
	player_port = ports[1];
	/* The error is about the host's packet and is addressed to it. */
	if (ip->daddr != ext_addr)
		goto pass;
	dk.ext_addr = ext_addr;
	dk.host_port = ext_port;
	dk.proto = proto;
	dk.pad = 0;
	v = bpf_map_lookup_elem(&dnat4, &dk);
	if (!v)
		goto pass;
	ctr_addr = v->ctr_addr;
	ctr_port = v->ctr_port;
	fk = dp_flow4_key(ctr_addr, player, ctr_port, player_port, proto);
	f = bpf_map_lookup_elem(&flows4, &fk);
	if (!f || f->ext_addr != ext_addr || f->host_port != ext_port)
		goto pass;
	acct.slot = f->slot;
	/* The embedded L4 checksum: UDP's is in the first 8 bytes (zero: the
	 * datagram carried none); TCP's is in the error only if at least 18
	 * bytes of the segment are, and then the pull above brought it in. */
	if (proto == IPPROTO_UDP) {
		l4_check = (void *)(ports + 3);
		if (!*l4_check)
			l4_check = NULL;
	} else if (sizeof(struct icmphdr) + in_ihl + 18 <= avail) {
		l4_check = (void *)(ports + 8);
		if ((void *)(l4_check + 1) > data_end)
			goto pass;
	}

	/* Outer header: the destination becomes the container. */
	ip->daddr = ctr_addr;
	dp_trace_rewrite4(true, ctr_addr, 0);
	ip->check = dp_csum_replace4(ip->check, ext_addr, ctr_addr);
	dp_copy_mac(((struct ethhdr *)data)->h_dest, v->ctr_mac);

	/* The embedded packet: the ICMP checksum covers the whole message, so
	 * every 16-bit word changed in it is carried into it. Direct writes
	 * keep skb->csum right for CHECKSUM_COMPLETE: the outer header and
	 * the ICMP message each keep their one's-complement sum. */
	old = in->check;
	in->saddr = ctr_addr;
	in->check = dp_csum_replace4(old, ext_addr, ctr_addr);
	sum = dp_csum_replace4(icmp->checksum, ext_addr, ctr_addr);
	sum = dp_csum_replace2(sum, old, in->check);
	ports[0] = ctr_port;
	sum = dp_csum_replace2(sum, ext_port, ctr_port);
	if (l4_check) {
		old = *l4_check;
		nc = dp_csum_replace4(old, ext_addr, ctr_addr);
		nc = dp_csum_replace2(nc, ext_port, ctr_port);
		/* A UDP checksum that comes out 0 is sent as 0xffff. */
		if (proto == IPPROTO_UDP && !nc)
			nc = 0xffff;
		*l4_check = nc;
		sum = dp_csum_replace2(sum, old, nc);
	}
	icmp->checksum = sum;
	return dp_verdict(len, DP_STAT_DNAT_ICMP_TRANSLATED,
			  bpf_redirect_peer(v->veth_ifindex, 0), &acct);
pass:
	return dp_verdict(len, DP_STAT_DNAT_ICMP_PASSED, TC_ACT_UNSPEC, NULL);
}

/* dnat_record() for flows6. */
static __always_inline int dnat_record6(const struct flow6_key *k,
					const struct flow6_value *v)
{
	struct flow6_value *f = bpf_map_lookup_elem(&flows6, k);

	if (f && dp_ip6_eq(f->ext_addr, v->ext_addr) &&
	    f->host_port == v->host_port &&
	    f->ext_ifindex == v->ext_ifindex &&
	    f->veth_ifindex == v->veth_ifindex && f->slot == v->slot)
		return 0;
	if (bpf_map_update_elem(&flows6, k, v, BPF_ANY))
		return -1;
	return !f;
}

#define DP_ICMP6_DEST_UNREACH	1
#define DP_ICMP6_PKT_TOOBIG	2

/* Bytes of an ICMPv6 error the translation reads: its 8-byte header, the
 * embedded IPv6 header and the first 18 bytes of its TCP header (ports
 * and checksum), or 8 of UDP. */
#define DNAT_ICMP6_MAX	(8 + 40 + 18)

/* dnat_icmp() for IPv6: a packet-too-big or destination-unreachable error
 * about the host's reply of a recorded flow (embedded: ext addr:host port
 * -> player, TCP or UDP right after the fixed header, as the host sends
 * them) is rewritten as if the container's packet had provoked it, and
 * delivered to the container. The ICMPv6 checksum covers a pseudo-header
 * with the outer destination, so it takes that change too, besides the
 * embedded source address, port and L4 checksum. Every change is a direct
 * write whose one's-complement sum the checksum field takes back, so the
 * packet's sum, and skb->csum of a CHECKSUM_COMPLETE skb, stay what they
 * were. Anything else is passed untouched. */
static __always_inline int dnat_icmp6(struct __sk_buff *skb,
				      const struct dp_l4_6 *p)
{
	struct dp_acct acct = { .dir = DP_DIR_IN };
	__u32 len = skb->len, icmp_off, avail, pull;
	__be32 ext[4], ctr[4];
	__be16 ext_port, ctr_port;
	__sum16 *l4_check = NULL, *icheck, old, nc, sum;
	struct ipv6hdr *ip6, *in;
	struct dnat6_value *v;
	struct flow6_value *f;
	struct dnat6_key dk;
	struct flow6_key fk;
	void *data, *data_end;
	__u8 *icmp, proto;
	__be16 *ports;

	icmp_off = p->l4_off;
	if (icmp_off > DP_IPV6_HDRS_MAX || icmp_off > p->end)
		goto pass;
	avail = p->end - icmp_off;
	if (avail < 8 + sizeof(*in) + 8)
		goto pass;
	pull = icmp_off + (avail < DNAT_ICMP6_MAX ? avail : DNAT_ICMP6_MAX);
	if ((void *)(long)skb->data + pull > (void *)(long)skb->data_end &&
	    bpf_skb_pull_data(skb, pull))
		goto pass;

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip6 = data + ETH_HLEN;
	icmp = data + (icmp_off & 0x1ff);
	in = (void *)(icmp + 8);
	if ((void *)(ip6 + 1) > data_end || (void *)(in + 1) > data_end)
		goto pass;
	if (icmp[0] != DP_ICMP6_DEST_UNREACH && icmp[0] != DP_ICMP6_PKT_TOOBIG)
		goto pass;
	proto = in->nexthdr;
	if (in->version != 6 ||
	    (proto != IPPROTO_TCP && proto != IPPROTO_UDP) ||
	    bpf_ntohs(in->payload_len) < (proto == IPPROTO_TCP ?
					  sizeof(struct tcphdr) :
					  sizeof(struct udphdr)))
		goto pass;
	ports = (void *)(in + 1);
	if ((void *)(ports + 4) > data_end)
		goto pass;

	/* The error is about the host's packet and is addressed to it. */
	if (!dp_ip6_eq(ip6->daddr.in6_u.u6_addr32, in->saddr.in6_u.u6_addr32))
		goto pass;
	dp_ip6_copy(ext, in->saddr.in6_u.u6_addr32);
	ext_port = ports[0];
	__builtin_memcpy(dk.ext_addr, ext, sizeof(ext));
	dk.host_port = ext_port;
	dk.proto = proto;
	dk.pad = 0;
	v = bpf_map_lookup_elem(&dnat6, &dk);
	if (!v)
		goto pass;
	dp_ip6_copy(ctr, v->ctr_addr);
	ctr_port = v->ctr_port;
	fk = dp_flow6_key(ctr, in->daddr.in6_u.u6_addr32, ctr_port, ports[1],
			  proto);
	f = bpf_map_lookup_elem(&flows6, &fk);
	if (!f || !dp_ip6_eq(f->ext_addr, ext) || f->host_port != ext_port)
		goto pass;
	acct.slot = f->slot;
	if (proto == IPPROTO_UDP) {
		l4_check = (void *)(ports + 3);
		if (!*l4_check)
			l4_check = NULL;
	} else if (8 + sizeof(*in) + 18 <= avail) {
		l4_check = (void *)(ports + 8);
		if ((void *)(l4_check + 1) > data_end)
			goto pass;
	}
	icheck = (void *)(icmp + 2);

	/* The outer destination: in the ICMPv6 pseudo-header. */
	dp_ip6_copy(ip6->daddr.in6_u.u6_addr32, ctr);
	sum = dp_csum_replace16(*icheck, ext, ctr);
	dp_copy_mac(((struct ethhdr *)data)->h_dest, v->ctr_mac);
	/* The embedded packet: source address and port, and its own
	 * checksum, whose pseudo-header has that source. */
	dp_ip6_copy(in->saddr.in6_u.u6_addr32, ctr);
	sum = dp_csum_replace16(sum, ext, ctr);
	ports[0] = ctr_port;
	sum = dp_csum_replace2(sum, ext_port, ctr_port);
	if (l4_check) {
		old = *l4_check;
		nc = dp_csum_replace16(old, ext, ctr);
		nc = dp_csum_replace2(nc, ext_port, ctr_port);
		if (proto == IPPROTO_UDP && !nc)
			nc = 0xffff;
		*l4_check = nc;
		sum = dp_csum_replace2(sum, old, nc);
	}
	*icheck = sum;
	return dp_verdict(len, DP_STAT_DNAT_ICMP_TRANSLATED,
			  bpf_redirect_peer(v->veth_ifindex, 0), &acct);
pass:
	return dp_verdict(len, DP_STAT_DNAT_ICMP_PASSED, TC_ACT_UNSPEC, NULL);
}

/* dnat for IPv6: the same steps on dnat6 and flows6. */
static __always_inline int dnat6_packet(struct __sk_buff *skb)
{
	struct dp_acct acct = { .dir = DP_DIR_IN };
	struct dnat6_value *v;
	struct flow6_value fv;
	struct dnat6_key key;
	struct flow6_key fk;
	__u32 len = skb->len;
	struct dp_l4_6 p;
	int new;

	switch (dp_parse_l4_6(skb, &p)) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_NOT_L4:
		if (p.proto == DP_NEXTHDR_ICMP)
			return dnat_icmp6(skb, &p);
		return dp_verdict(len, DP_STAT_DNAT_NOT_L4, TC_ACT_UNSPEC,
				  NULL);
	case DP_PARSE_FRAGMENT:
		return dp_verdict(len, DP_STAT_DNAT_FRAGMENT, TC_ACT_UNSPEC,
				  NULL);
	default:
		return dp_verdict(len, DP_STAT_DNAT_MALFORMED, TC_ACT_UNSPEC,
				  NULL);
	}

	__builtin_memcpy(key.ext_addr, p.ip6->daddr.in6_u.u6_addr32,
			 sizeof(key.ext_addr));
	key.host_port = p.dport;
	key.proto = p.proto;
	key.pad = 0;
	v = bpf_map_lookup_elem(&dnat6, &key);
	if (!v)
		return dp_verdict(len, DP_STAT_DNAT_MISS, TC_ACT_UNSPEC, NULL);

	fk = dp_flow6_key(v->ctr_addr, p.ip6->saddr.in6_u.u6_addr32,
			  v->ctr_port, p.sport, p.proto);
	__builtin_memcpy(fv.ext_addr, key.ext_addr, sizeof(fv.ext_addr));
	fv.host_port = p.dport;
	fv.flags = 0;
	fv.pad = 0;
	fv.ext_ifindex = skb->ifindex;
	fv.veth_ifindex = v->veth_ifindex;
	fv.slot = v->slot;
	new = dnat_record6(&fk, &fv);
	if (new < 0)
		return dp_verdict(len, DP_STAT_DNAT_FLOW_ERROR, TC_ACT_SHOT,
				  NULL);
	acct.slot = v->slot;
	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)p.ports;

		acct.conn = tcp->syn && !tcp->ack;
	} else {
		acct.conn = new;
	}

	dp_copy_mac(p.eth->h_dest, v->ctr_mac);
	if (dp_rewrite6(skb, &p, true, v->ctr_addr, v->ctr_port))
		return dp_verdict(len, DP_STAT_DNAT_REWRITE_FAILED,
				  TC_ACT_SHOT, NULL);
	return dp_verdict(len, DP_STAT_DNAT_REDIRECT,
			  bpf_redirect_peer(v->veth_ifindex, 0), &acct);
}

SEC("tc")
int dnat(struct __sk_buff *skb)
{
	struct dp_acct acct = { .dir = DP_DIR_IN };
	struct dnat4_value *v;
	struct flow4_value fv;
	struct dnat4_key key;
	struct flow4_key fk;
	__u32 len = skb->len;
	struct dp_l4 p;
	int new;

	dp_trace_tc(skb);
	switch (dp_parse_l4(skb, &p)) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_NOT_IPV4:
		/* IPv6 only here: IPv4 never pays for it. */
		if (!skb->vlan_present &&
		    p.eth->h_proto == bpf_htons(ETH_P_IPV6))
			return dnat6_packet(skb);
		return dp_verdict(len, DP_STAT_DNAT_NOT_IPV4, TC_ACT_UNSPEC,
				  NULL);
	case DP_PARSE_NOT_L4:
		if (p.ip->protocol == IPPROTO_ICMP)
			return dnat_icmp(skb, &p);
		return dp_verdict(len, DP_STAT_DNAT_NOT_L4, TC_ACT_UNSPEC,
				  NULL);
	case DP_PARSE_FRAGMENT:
		/* Later fragments carry no ports; rewriting only the first
		 * would split the datagram between host and container. */
		return dp_verdict(len, DP_STAT_DNAT_FRAGMENT, TC_ACT_UNSPEC,
				  NULL);
	default:
		return dp_verdict(len, DP_STAT_DNAT_MALFORMED, TC_ACT_UNSPEC,
				  NULL);
	}

	key.ext_addr = p.ip->daddr;
	key.host_port = p.dport;
	key.proto = p.proto;
	key.pad = 0;
	v = bpf_map_lookup_elem(&dnat4, &key);
	if (!v)
		return dp_verdict(len, DP_STAT_DNAT_MISS, TC_ACT_UNSPEC, NULL);

	fk = dp_flow4_key(v->ctr_addr, p.ip->saddr, v->ctr_port, p.sport,
			  p.proto);
	fv.ext_addr = p.ip->daddr;
	fv.host_port = p.dport;
	fv.flags = 0;
	fv.pad = 0;
	fv.ext_ifindex = skb->ifindex;
	fv.veth_ifindex = v->veth_ifindex;
	fv.slot = v->slot;
	new = dnat_record(&fk, &fv);
	if (new < 0)
		return dp_verdict(len, DP_STAT_DNAT_FLOW_ERROR, TC_ACT_SHOT,
				  NULL);
	acct.slot = v->slot;
	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)p.ports;

		acct.conn = tcp->syn && !tcp->ack;
	} else {
		acct.conn = new;
	}

	dp_copy_mac(p.eth->h_dest, v->ctr_mac);
	if (dp_rewrite(skb, &p, true, v->ctr_addr, v->ctr_port))
		return dp_verdict(len, DP_STAT_DNAT_REWRITE_FAILED,
				  TC_ACT_SHOT, NULL);
	/* Into the container's netns without a second trip through the
	 * host's stack or the backlog queue (kernel 5.10+). */
	return dp_verdict(len, DP_STAT_DNAT_REDIRECT,
			  bpf_redirect_peer(v->veth_ifindex, 0), &acct);
}

char _license[] SEC("license") = "GPL";
