// SPDX-License-Identifier: GPL-2.0
/* tproxy: every connection a container makes, other than replies from its
 * published ports, goes through the proxy on the host.
 *
 *  tproxy_ingress  host veth TC ingress, last in the chain: rewrites the
 *                  destination to the host veth's address and a proxy port,
 *                  recording the original destination in proxy_flows.
 *  tproxy_egress   host veth TC egress: the proxy's answers get the
 *                  original destination back as their source.
 *  getsockopt      cgroup/getsockopt: getsockopt(SOL_IP, SO_ORIGINAL_DST)
 *                  on the proxy's accepted socket returns it, as iptables'
 *                  REDIRECT would.
 */
#include "dp_maps.h"
#include "dp_pkt.h"

static __always_inline int tproxy_drop(struct __sk_buff *skb,
				       enum dp_stat stat)
{
	dp_count(stat, skb->len);
	return TC_ACT_SHOT;
}

SEC("tc")
int tproxy_ingress(struct __sk_buff *skb)
{
	struct flow_orig orig, *old;
	struct proxy_config *cfg;
	struct ctr_endpoint key;
	struct veth_info *veth;
	__u32 ifindex = skb->ifindex;
	__u32 zero = 0;
	enum dp_stat stat;
	__be16 port;
	struct dp_l4 p;
	int parsed;

	parsed = dp_parse_l4(skb, &p);
	if (parsed == DP_PARSE_NOT_IPV4) {
		/* ARP reaches this only if arp is not attached. */
		if (!skb->vlan_present &&
		    p.eth->h_proto == bpf_htons(ETH_P_ARP))
			return TC_ACT_OK;
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_NON_IP_DROPPED);
	}
	if (!p.ip)
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED);

	veth = bpf_map_lookup_elem(&veths, &ifindex);
	if (!veth)
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_UNREGISTERED);
	if (p.ip->saddr != veth->ctr_ip)
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_SPOOFED);
	switch (parsed) {
	case DP_PARSE_OK:
		break;
	case DP_PARSE_FRAGMENT:
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_FRAGMENT_DROPPED);
	case DP_PARSE_NOT_L4:
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_L4_DROPPED);
	default:
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED);
	}

	cfg = bpf_map_lookup_elem(&proxy_cfg, &zero);
	if (!cfg)
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_FLOW_ERROR);
	if (p.dport == bpf_htons(53)) {
		port = cfg->dns_port;
		stat = DP_STAT_TPROXY_INGRESS_DNS;
	} else if (p.proto != IPPROTO_TCP) {
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_UDP_DROPPED);
	} else if (p.dport == bpf_htons(80)) {
		port = cfg->http_port;
		stat = DP_STAT_TPROXY_INGRESS_HTTP;
	} else {
		port = cfg->tcp_port;
		stat = DP_STAT_TPROXY_INGRESS_TCP;
	}

	key = dp_endpoint(p.ip->saddr, p.sport, p.proto);
	orig.orig_ip = p.ip->daddr;
	orig.proxy_ip = veth->host_ip;
	orig.orig_port = p.dport;
	orig.proxy_port = port;
	/* Most packets belong to a flow already recorded: a lookup (which
	 * also marks the LRU entry used) is much cheaper than an update. */
	old = bpf_map_lookup_elem(&proxy_flows, &key);
	if (!old || old->orig_ip != orig.orig_ip ||
	    old->orig_port != orig.orig_port ||
	    old->proxy_ip != orig.proxy_ip ||
	    old->proxy_port != orig.proxy_port) {
		if (bpf_map_update_elem(&proxy_flows, &key, &orig, BPF_ANY))
			return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_FLOW_ERROR);
	}

	if (dp_rewrite(skb, &p, true, veth->host_ip, port))
		return tproxy_drop(skb, DP_STAT_TPROXY_INGRESS_REWRITE_FAILED);
	dp_count(stat, skb->len);
	/* Destination is now the host veth's own address: local delivery. */
	return TC_ACT_OK;
}

SEC("tc")
int tproxy_egress(struct __sk_buff *skb)
{
	struct ctr_endpoint key;
	struct flow_orig *orig;
	struct dp_l4 p;

	if (dp_parse_l4(skb, &p) != DP_PARSE_OK)
		goto pass;

	key = dp_endpoint(p.ip->daddr, p.dport, p.proto);
	orig = bpf_map_lookup_elem(&proxy_flows, &key);
	if (!orig || orig->proxy_port != p.sport ||
	    orig->proxy_ip != p.ip->saddr)
		goto pass;

	if (dp_rewrite(skb, &p, false, orig->orig_ip, orig->orig_port)) {
		dp_count(DP_STAT_TPROXY_EGRESS_REWRITE_FAILED, skb->len);
		return TC_ACT_SHOT;
	}
	dp_count(DP_STAT_TPROXY_EGRESS_RESTORED, skb->len);
	return TC_ACT_OK;
pass:
	dp_count(DP_STAT_TPROXY_EGRESS_PASSED, skb->len);
	return TC_ACT_OK;
}

SEC("cgroup/getsockopt")
int getsockopt(struct bpf_sockopt *ctx)
{
	struct sockaddr_in *sin = ctx->optval;
	struct bpf_sock *sk = ctx->sk;
	struct ctr_endpoint key;
	struct flow_orig *orig;
	__u32 family, ip6[4];
	__be32 ip4;

	/* Anything else keeps the kernel's own answer (return 1). */
	if (ctx->level != SOL_IP || ctx->optname != SO_ORIGINAL_DST || !sk)
		return 1;

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
	/* Pin both loads here (libbpf's barrier_var idiom). */
	asm volatile("" : "+r"(ip4));
	asm volatile("" : "+r"(ip6[3]));
	if (family == AF_INET6 && !ip6[0] && !ip6[1] &&
	    ip6[2] == bpf_htonl(0x0000ffff))
		ip4 = ip6[3];
	else if (family != AF_INET)
		return 1;
	key = dp_endpoint(ip4, sk->dst_port, sk->protocol);
	orig = bpf_map_lookup_elem(&proxy_flows, &key);
	if (!orig) {
		dp_count(DP_STAT_GETSOCKOPT_MISS, 0);
		return 1;
	}
	if ((void *)(sin + 1) > ctx->optval_end)
		return 1;	/* caller's buffer is too small: kernel's error */

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
	dp_count(DP_STAT_GETSOCKOPT_FOUND, 0);
	return 1;
}

char _license[] SEC("license") = "GPL";
