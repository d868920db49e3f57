/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/icmp.h>. */
#pragma once

#include <linux/types.h>

#define ICMP_DEST_UNREACH	3	/* Destination Unreachable */
#define ICMP_FRAG_NEEDED	4	/* code: Fragmentation Needed/DF set */

struct icmphdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	union {
		struct {
			__be16 id;
			__be16 sequence;
		} echo;
		__be32 gateway;
		struct {
			__be16 __unused;
			__be16 mtu;
		} frag;
		__u8 reserved[4];
	} un;
};
