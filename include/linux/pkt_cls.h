/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/* Trimmed from the kernel's uapi <linux/pkt_cls.h>: TC verdicts. */
#pragma once

#define TC_ACT_UNSPEC		(-1)
#define TC_ACT_OK		0
#define TC_ACT_RECLASSIFY	1
#define TC_ACT_SHOT		2
#define TC_ACT_PIPE		3
#define TC_ACT_STOLEN		4
#define TC_ACT_QUEUED		5
#define TC_ACT_REPEAT		6
#define TC_ACT_REDIRECT		7
