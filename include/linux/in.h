/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/in.h> and <linux/netfilter_ipv4.h>. */
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
/* <linux/netfilter_ipv4.h>: what iptables' REDIRECT answers with. */
#define SO_ORIGINAL_DST	80

struct in_addr {
	__be32 s_addr;
};

struct sockaddr_in {
	unsigned short sin_family;
	__be16 sin_port;
	struct in_addr sin_addr;
	unsigned char __pad[8];
};
