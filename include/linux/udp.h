/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/udp.h>. */
#pragma once

#include <linux/types.h>

struct udphdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__sum16 check;
};
