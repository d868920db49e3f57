/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/if_arp.h>; the Ethernet/IPv4 body
 * that follows the fixed header is spelled out, as every ARP responder
 * needs it. */
#pragma once

#include <linux/types.h>
#include <linux/if_ether.h>

#define ARPHRD_ETHER	1
#define ARPOP_REQUEST	1
#define ARPOP_REPLY	2

struct arphdr {
	__be16 ar_hrd;
	__be16 ar_pro;
	unsigned char ar_hln;
	unsigned char ar_pln;
	__be16 ar_op;
};

/* Body of an ARP packet for Ethernet hardware and IPv4 protocol addresses. */
struct arp_eth_ipv4 {
	unsigned char ar_sha[ETH_ALEN];
	__be32 ar_sip;
	unsigned char ar_tha[ETH_ALEN];
	__be32 ar_tip;
} __attribute__((packed));
