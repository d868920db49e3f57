/* SPDX-License-Identifier: GPL-2.0 */
/* Whether a container's packet belongs to something of the host's own: a
 * connection the host opened to the container. Shared by tproxy (which
 * passes such packets to the host) and snat (which must never take them
 * for a player's). */
#pragma once

#include "dp_pkt.h"
#include <linux/ipv6.h>

/* The container's TCP segment belongs to a connection the host opened if
 * the host has a socket for its reversed 4-tuple that is not a listener
 * (SYN-SENT, established, closing, time-wait). A listener would mean the
 * container is opening a connection to the host, which goes to the proxy,
 * never around it. */
static __always_inline bool dp_host_tcp(struct __sk_buff *skb,
					const struct dp_l4 *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 state;

	t.ipv4.saddr = p->ip->saddr;
	t.ipv4.daddr = p->ip->daddr;
	t.ipv4.sport = p->sport;
	t.ipv4.dport = p->dport;
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS,
				0);
	if (!sk)
		return false;
	state = sk->state;
	bpf_sk_release(sk);
	return state != BPF_TCP_LISTEN;
}

/* dp_host_tcp() for IPv6. */
static __always_inline bool dp_host_tcp6(struct __sk_buff *skb,
					 const struct ipv6hdr *ip6,
					 __be16 sport, __be16 dport)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 state;

	__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, sizeof(t.ipv6.saddr));
	__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, sizeof(t.ipv6.daddr));
	t.ipv6.sport = sport;
	t.ipv6.dport = dport;
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS,
				0);
	if (!sk)
		return false;
	state = sk->state;
	bpf_sk_release(sk);
	return state != BPF_TCP_LISTEN;
}
