/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/in.h>, <linux/in6.h>,
 * <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>. */
#pragma once

#include <linux/types.h>

enum {
	IPPROTO_IP = 0,
	IPPROTO_ICMP = 1,
	IPPROTO_TCP = 6,
	IPPROTO_UDP = 17,
};

#define AF_INET		2
#define AF_INET6	10
#define SOL_IP		0
#define INADDR_LOOPBACK	0x7f000001	/* 127.0.0.1, host order */
#define SOL_IPV6	41
/* <linux/netfilter_ipv4.h>: what iptables' REDIRECT answers with. */
#define SO_ORIGINAL_DST	80
/* <linux/netfilter_ipv6/ip6_tables.h>: the same for ip6tables. */
#define IP6T_SO_ORIGINAL_DST	80

struct in_addr {
	__be32 s_addr;
};

struct sockaddr_in {
	unsigned short sin_family;
	__be16 sin_port;
	struct in_addr sin_addr;
	unsigned char __pad[8];
};

/* <linux/in6.h> */
struct sockaddr_in6 {
	unsigned short sin6_family;
	__be16 sin6_port;
	__be32 sin6_flowinfo;
	__be32 sin6_addr[4];
	__u32 sin6_scope_id;
};
