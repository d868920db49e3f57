// SPDX-License-Identifier: GPL-2.0
/* tproxy: every connection a container opens goes through the proxy on
 * the host; what else may come from a container is the replies of
 * connections the host opened to it.
 *
 *  tproxy_ingress  host veth TC ingress, last in the chain (after snat has
 *                  taken the replies of published flows):
 *                  1. a packet of a recorded proxied flow -> the proxy;
 *                  2. a TCP SYN (no ACK), or UDP to port 53 -> a new
 *                     proxied flow: its original destination recorded in
 *                     proxy_flows, rewritten to the proxy's address and
 *                     port on the host veth;
 *                  3. a reply of a connection the host opened to the
 *                     container (a host TCP socket for it, a UDP flow
 *                     tproxy_egress recorded) -> the host's stack;
 *                  4. anything else -> dropped and counted.
 *  tproxy_egress   host veth TC egress: the proxy's answers get the
 *                  original destination back as their source; UDP the
 *                  host sends to the container is recorded in host_flows4.
 *  getsockopt      cgroup/getsockopt: getsockopt(SOL_IP, SO_ORIGINAL_DST)
 *                  on the proxy's accepted socket returns it, as iptables'
 *                  REDIRECT would; getsockopt(SOL_IPV6,
 *                  IP6T_SO_ORIGINAL_DST) likewise for IPv6.
 *
 * IPv6 takes the same rules on the twins: veths6 (the gateway address is
 * the proxy's), proxy_flows6, host_flows6.
 */
#include "dp_verdict.h"
#include "dp_pkt.h"
#include "dp_pkt6.h"
#include "dp_host.h"

static __always_inline int tproxy_drop(__u32 len, enum dp_stat stat)
{
	return dp_verdict(len, stat, TC_ACT_SHOT, NULL);
}

/* tproxy_ingress for IPv6: the same four rules. */
static __always_inline int tproxy6_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len, zero = 0;
	struct host_flow_value *host;
	struct flow_orig6 orig, *old;
	struct proxy_config *cfg;
	struct ctr_endpoint6 key;
	struct veth6_info *veth;
	struct flow6_key hkey;
	__be32 proxy_ip[4];
	enum dp_stat stat;
	struct dp_l4_6 p;
	__be16 port;
	bool opens;
	int parsed;

	parsed = dp_parse_l4_6(skb, &p);
	if (!p.ip6)
		return tproxy_drop(len,
				   DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED);
	veth = bpf_map_lookup_elem(&veths6, &ifindex);
	if (!veth)
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_UNREGISTERED);
	if (!dp_ip6_eq(p.ip6->saddr.in6_u.u6_addr32, veth->ctr_ip))
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_SPOOFED);
	switch (parsed) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_FRAGMENT:
		return tproxy_drop(len,
				   DP_STAT_TPROXY_INGRESS_FRAGMENT_DROPPED);
	case DP_PARSE_NOT_L4:
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_L4_DROPPED);
	default:
		return tproxy_drop(len,
				   DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED);
	}

	if (p.dport == bpf_htons(53)) {
		stat = DP_STAT_TPROXY_INGRESS_DNS;
		opens = true;
	} else if (p.proto == IPPROTO_TCP) {
		stat = p.dport == bpf_htons(80) ? DP_STAT_TPROXY_INGRESS_HTTP :
						  DP_STAT_TPROXY_INGRESS_TCP;
		opens = true;
	} else {
		stat = DP_STAT_TPROXY_INGRESS_UDP_DROPPED;
		opens = false;
	}
	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)p.ports;

		opens = tcp->syn && !tcp->ack;
	}

	/* 1. */
	key = dp_endpoint6(p.ip6->saddr.in6_u.u6_addr32, p.sport, p.proto);
	old = bpf_map_lookup_elem(&proxy_flows6, &key);
	if (old && dp_ip6_eq(old->orig_ip, p.ip6->daddr.in6_u.u6_addr32) &&
	    old->orig_port == p.dport &&
	    stat != DP_STAT_TPROXY_INGRESS_UDP_DROPPED) {
		dp_ip6_copy(proxy_ip, old->proxy_ip);
		port = old->proxy_port;
		goto redirect;
	}

	/* 2. */
	if (opens) {
		cfg = bpf_map_lookup_elem(&proxy_cfg, &zero);
		if (!cfg)
			return tproxy_drop(len,
					   DP_STAT_TPROXY_INGRESS_FLOW_ERROR);
		if (stat == DP_STAT_TPROXY_INGRESS_DNS)
			port = cfg->dns_port;
		else if (stat == DP_STAT_TPROXY_INGRESS_HTTP)
			port = cfg->http_port;
		else
			port = cfg->tcp_port;
		dp_ip6_copy(proxy_ip, veth->host_ip);
		dp_ip6_copy(orig.orig_ip, p.ip6->daddr.in6_u.u6_addr32);
		dp_ip6_copy(orig.proxy_ip, proxy_ip);
		orig.orig_port = p.dport;
		orig.proxy_port = port;
		if (bpf_map_update_elem(&proxy_flows6, &key, &orig, BPF_ANY))
			return tproxy_drop(len,
					   DP_STAT_TPROXY_INGRESS_FLOW_ERROR);
		goto redirect;
	}

	/* 3. */
	if (p.proto == IPPROTO_TCP) {
		if (dp_host_tcp6(skb, p.ip6, p.sport, p.dport))
			return dp_verdict(len, DP_STAT_TPROXY_INGRESS_HOST_REPLY,
					  TC_ACT_OK, NULL);
		/* 4. */
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_NO_FLOW_DROPPED);
	}
	hkey = dp_flow6_key(p.ip6->saddr.in6_u.u6_addr32,
			    p.ip6->daddr.in6_u.u6_addr32, p.sport, p.dport,
			    p.proto);
	host = bpf_map_lookup_elem(&host_flows6, &hkey);
	if (host && host->veth_ifindex == ifindex)
		return dp_verdict(len, DP_STAT_TPROXY_INGRESS_HOST_REPLY,
				  TC_ACT_OK, NULL);
	/* 4. */
	return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_UDP_DROPPED);

redirect:
	if (dp_rewrite6(skb, &p, true, proxy_ip, port))
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_REWRITE_FAILED);
	return dp_verdict(len, stat, TC_ACT_OK, NULL);
}

SEC("tc")
int tproxy_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len, zero = 0;
	struct host_flow_value *host;
	struct flow_orig orig, *old;
	struct proxy_config *cfg;
	struct ctr_endpoint key;
	struct veth_info *veth;
	struct flow4_key hkey;
	enum dp_stat stat;
	__be32 proxy_ip;
	__be16 port;
	struct dp_l4 p;
	bool opens;
	int parsed;

	dp_trace_tc(skb);
	parsed = dp_parse_l4(skb, &p);
	if (parsed == DP_PARSE_NOT_IPV4) {
		/* ARP reaches this only if arp is not attached. */
		if (!skb->vlan_present &&
		    p.eth->h_proto == bpf_htons(ETH_P_ARP))
			return dp_verdict(len, DP_STAT_NONE, TC_ACT_OK, NULL);
		if (!skb->vlan_present &&
		    p.eth->h_proto == bpf_htons(ETH_P_IPV6))
			return tproxy6_ingress(skb);
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_NON_IP_DROPPED);
	}
	if (!p.ip)
		return tproxy_drop(len,
				   DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED);

	veth = bpf_map_lookup_elem(&veths, &ifindex);
	if (!veth)
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_UNREGISTERED);
	if (p.ip->saddr != veth->ctr_ip)
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_SPOOFED);
	switch (parsed) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_FRAGMENT:
		return tproxy_drop(len,
				   DP_STAT_TPROXY_INGRESS_FRAGMENT_DROPPED);
	case DP_PARSE_NOT_L4:
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_L4_DROPPED);
	default:
		return tproxy_drop(len,
				   DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED);
	}

	/* What the proxy does with it: port 53 (TCP and UDP) is DNS, TCP 80
	 * is HTTP, other TCP goes to the TCP proxy; other UDP is not proxied
	 * (opens stays false for it). */
	if (p.dport == bpf_htons(53)) {
		stat = DP_STAT_TPROXY_INGRESS_DNS;
		opens = true;
	} else if (p.proto == IPPROTO_TCP) {
		stat = p.dport == bpf_htons(80) ? DP_STAT_TPROXY_INGRESS_HTTP :
						  DP_STAT_TPROXY_INGRESS_TCP;
		opens = true;
	} else {
		stat = DP_STAT_TPROXY_INGRESS_UDP_DROPPED;
		opens = false;
	}
	if (p.proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)p.ports;

		/* Only a SYN opens a TCP connection; a SYN-ACK or any later
		 * segment belongs to one that exists already. */
		opens = tcp->syn && !tcp->ack;
	}

	/* 1. A packet of a recorded proxied flow. Most packets are: a lookup
	 * (which also marks the LRU entry used) is much cheaper than an
	 * update. */
	key = dp_endpoint(p.ip->saddr, p.sport, p.proto);
	old = bpf_map_lookup_elem(&proxy_flows, &key);
	if (old && old->orig_ip == p.ip->daddr && old->orig_port == p.dport &&
	    stat != DP_STAT_TPROXY_INGRESS_UDP_DROPPED) {
		proxy_ip = old->proxy_ip;
		port = old->proxy_port;
		goto redirect;
	}

	/* 2. A new proxied flow. */
	if (opens) {
		cfg = bpf_map_lookup_elem(&proxy_cfg, &zero);
		if (!cfg)
			return tproxy_drop(len,
					   DP_STAT_TPROXY_INGRESS_FLOW_ERROR);
		if (stat == DP_STAT_TPROXY_INGRESS_DNS)
			port = cfg->dns_port;
		else if (stat == DP_STAT_TPROXY_INGRESS_HTTP)
			port = cfg->http_port;
		else
			port = cfg->tcp_port;
		proxy_ip = veth->host_ip;
		orig.orig_ip = p.ip->daddr;
		orig.proxy_ip = proxy_ip;
		orig.orig_port = p.dport;
		orig.proxy_port = port;
		if (bpf_map_update_elem(&proxy_flows, &key, &orig, BPF_ANY))
			return tproxy_drop(len,
					   DP_STAT_TPROXY_INGRESS_FLOW_ERROR);
		goto redirect;
	}

	/* 3. A reply of a connection the host opened: for TCP, a host
	 * socket for the reversed 4-tuple that is not a listener. */
	if (p.proto == IPPROTO_TCP) {
		if (dp_host_tcp(skb, &p))
			return dp_verdict(len, DP_STAT_TPROXY_INGRESS_HOST_REPLY,
					  TC_ACT_OK, NULL);
		/* 4. */
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_NO_FLOW_DROPPED);
	}
	hkey = dp_flow4_key(p.ip->saddr, p.ip->daddr, p.sport, p.dport,
			    p.proto);
	host = bpf_map_lookup_elem(&host_flows4, &hkey);
	if (host && host->veth_ifindex == ifindex)
		return dp_verdict(len, DP_STAT_TPROXY_INGRESS_HOST_REPLY,
				  TC_ACT_OK, NULL);
	/* 4. */
	return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_UDP_DROPPED);

redirect:
	if (dp_rewrite(skb, &p, true, proxy_ip, port))
		return tproxy_drop(len, DP_STAT_TPROXY_INGRESS_REWRITE_FAILED);
	/* Destination is now the host veth's own address: local delivery. */
	return dp_verdict(len, stat, TC_ACT_OK, NULL);
}

/* tproxy_egress for IPv6. */
static __always_inline int tproxy6_egress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct host_flow_value hv, *host;
	struct ctr_endpoint6 key;
	struct flow_orig6 *orig;
	struct flow6_key hkey;
	struct dp_l4_6 p;

	if (dp_parse_l4_6(skb, &p) != DP_PARSE_OK)
		return dp_verdict(len, DP_STAT_TPROXY_EGRESS_PASSED, TC_ACT_OK,
				  NULL);

	key = dp_endpoint6(p.ip6->daddr.in6_u.u6_addr32, p.dport, p.proto);
	orig = bpf_map_lookup_elem(&proxy_flows6, &key);
	if (orig && orig->proxy_port == p.sport &&
	    dp_ip6_eq(orig->proxy_ip, p.ip6->saddr.in6_u.u6_addr32)) {
		if (dp_rewrite6(skb, &p, false, orig->orig_ip,
				orig->orig_port))
			return dp_verdict(len,
					  DP_STAT_TPROXY_EGRESS_REWRITE_FAILED,
					  TC_ACT_SHOT, NULL);
		return dp_verdict(len, DP_STAT_TPROXY_EGRESS_RESTORED,
				  TC_ACT_OK, NULL);
	}
	if (p.proto != IPPROTO_UDP)
		return dp_verdict(len, DP_STAT_TPROXY_EGRESS_PASSED, TC_ACT_OK,
				  NULL);

	hkey = dp_flow6_key(p.ip6->daddr.in6_u.u6_addr32,
			    p.ip6->saddr.in6_u.u6_addr32, p.dport, p.sport,
			    p.proto);
	host = bpf_map_lookup_elem(&host_flows6, &hkey);
	if (!host || host->veth_ifindex != ifindex) {
		hv.veth_ifindex = ifindex;
		hv.pad = 0;
		if (bpf_map_update_elem(&host_flows6, &hkey, &hv, BPF_ANY))
			return dp_verdict(len, DP_STAT_TPROXY_EGRESS_FLOW_ERROR,
					  TC_ACT_OK, NULL);
	}
	return dp_verdict(len, DP_STAT_TPROXY_EGRESS_HOST_UDP, TC_ACT_OK,
			  NULL);
}

SEC("tc")
int tproxy_egress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex, len = skb->len;
	struct host_flow_value hv, *host;
	struct ctr_endpoint key;
	struct flow_orig *orig;
	struct flow4_key hkey;
	struct dp_l4 p;

	dp_trace_tc(skb);
	switch (dp_parse_l4(skb, &p)) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_NOT_IPV4:
		if (!skb->vlan_present &&
		    p.eth->h_proto == bpf_htons(ETH_P_IPV6))
			return tproxy6_egress(skb);
		/* fall through */
	default:
		return dp_verdict(len, DP_STAT_TPROXY_EGRESS_PASSED, TC_ACT_OK,
				  NULL);
	}

	key = dp_endpoint(p.ip->daddr, p.dport, p.proto);
	orig = bpf_map_lookup_elem(&proxy_flows, &key);
	if (orig && orig->proxy_port == p.sport &&
	    orig->proxy_ip == p.ip->saddr) {
		if (dp_rewrite(skb, &p, false, orig->orig_ip, orig->orig_port))
			return dp_verdict(len,
					  DP_STAT_TPROXY_EGRESS_REWRITE_FAILED,
					  TC_ACT_SHOT, NULL);
		return dp_verdict(len, DP_STAT_TPROXY_EGRESS_RESTORED,
				  TC_ACT_OK, NULL);
	}
	if (p.proto != IPPROTO_UDP)
		return dp_verdict(len, DP_STAT_TPROXY_EGRESS_PASSED, TC_ACT_OK,
				  NULL);

	/* UDP from the host to the container: its replies are let through
	 * by tproxy_ingress (rule 3) for as long as the entry lives. */
	hkey = dp_flow4_key(p.ip->daddr, p.ip->saddr, p.dport, p.sport,
			    p.proto);
	host = bpf_map_lookup_elem(&host_flows4, &hkey);
	if (!host || host->veth_ifindex != ifindex) {
		hv.veth_ifindex = ifindex;
		hv.pad = 0;
		if (bpf_map_update_elem(&host_flows4, &hkey, &hv, BPF_ANY))
			return dp_verdict(len, DP_STAT_TPROXY_EGRESS_FLOW_ERROR,
					  TC_ACT_OK, NULL);
	}
	return dp_verdict(len, DP_STAT_TPROXY_EGRESS_HOST_UDP, TC_ACT_OK,
			  NULL);
}

/* IP6T_SO_ORIGINAL_DST: the proxied IPv6 flow whose container is the
 * socket's peer. Only a real IPv6 peer: an IPv4-mapped one is an IPv4
 * connection, answered by SO_ORIGINAL_DST (as conntrack keeps it in its
 * IPv4 table). */
static __always_inline int getsockopt6(struct bpf_sockopt *ctx, __u32 family,
				       const __be32 *ip6, __be16 port,
				       __u8 proto)
{
	struct sockaddr_in6 *sin6 = ctx->optval;
	struct ctr_endpoint6 key;
	struct flow_orig6 *orig;

	if (family != AF_INET6 ||
	    (!ip6[0] && !ip6[1] && ip6[2] == bpf_htonl(0x0000ffff)))
		return dp_verdict(0, DP_STAT_NONE, 1, NULL);
	key = dp_endpoint6(ip6, port, proto);
	orig = bpf_map_lookup_elem(&proxy_flows6, &key);
	if (!orig)
		return dp_verdict(0, DP_STAT_GETSOCKOPT_MISS, 1, NULL);
	if ((void *)(sin6 + 1) > ctx->optval_end)
		return dp_verdict(0, DP_STAT_NONE, 1, NULL);

	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = orig->orig_port;
	sin6->sin6_flowinfo = 0;
	dp_ip6_copy(sin6->sin6_addr, orig->orig_ip);
	sin6->sin6_scope_id = 0;
	ctx->optlen = sizeof(*sin6);
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	return dp_verdict(0, DP_STAT_GETSOCKOPT_FOUND, 1, NULL);
}

SEC("cgroup/getsockopt")
int getsockopt(struct bpf_sockopt *ctx)
{
	struct sockaddr_in *sin = ctx->optval;
	struct bpf_sock *sk = ctx->sk;
	struct ctr_endpoint key;
	struct flow_orig *orig;
	__u32 family, ip6[4];
	__be16 port;
	__be32 ip4;
	__u8 proto;
	bool v6;

	dp_trace_cgroup(0, 0, 0);
	/* Anything else keeps the kernel's own answer (return 1). */
	if (!sk)
		return dp_verdict(0, DP_STAT_NONE, 1, NULL);
	if (ctx->level == SOL_IP && ctx->optname == SO_ORIGINAL_DST)
		v6 = false;
	else if (ctx->level == SOL_IPV6 && ctx->optname == IP6T_SO_ORIGINAL_DST)
		v6 = true;
	else
		return dp_verdict(0, DP_STAT_NONE, 1, NULL);

	/* The proxy's socket faces the container: its peer is the key. A
	 * dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d. Every field
	 * is read up front: the verifier refuses the pointer arithmetic clang
	 * emits when loads of different fields are merged across branches. */
	family = sk->family;
	ip4 = sk->dst_ip4;
	ip6[0] = sk->dst_ip6[0];
	ip6[1] = sk->dst_ip6[1];
	ip6[2] = sk->dst_ip6[2];
	ip6[3] = sk->dst_ip6[3];
	port = sk->dst_port;
	proto = sk->protocol;
	/* Pin the loads here (libbpf's barrier_var idiom). */
	asm volatile("" : "+r"(ip4));
	asm volatile("" : "+r"(ip6[3]));
	if (v6)
		return getsockopt6(ctx, family, ip6, port, proto);
	if (family == AF_INET6 && !ip6[0] && !ip6[1] &&
	    ip6[2] == bpf_htonl(0x0000ffff))
		ip4 = ip6[3];
	else if (family != AF_INET)
		return dp_verdict(0, DP_STAT_NONE, 1, NULL);
	key = dp_endpoint(ip4, port, proto);
	orig = bpf_map_lookup_elem(&proxy_flows, &key);
	if (!orig)
		return dp_verdict(0, DP_STAT_GETSOCKOPT_MISS, 1, NULL);
	/* The caller's buffer is too small: the kernel's error stands. */
	if ((void *)(sin + 1) > ctx->optval_end)
		return dp_verdict(0, DP_STAT_NONE, 1, NULL);

	sin->sin_family = AF_INET;
	sin->sin_port = orig->orig_port;
	sin->sin_addr.s_addr = orig->orig_ip;
	__builtin_memset(sin->__pad, 0, sizeof(sin->__pad));
	ctx->optlen = sizeof(*sin);
	/* The context only takes 4-byte stores: keep clang from merging
	 * optlen and retval into one 8-byte store. */
	asm volatile("" ::: "memory");
	/* Without nf_conntrack the kernel said ENOPROTOOPT; override it. */
	ctx->retval = 0;
	return dp_verdict(0, DP_STAT_GETSOCKOPT_FOUND, 1, NULL);
}

char _license[] SEC("license") = "GPL";
