/* SPDX-License-Identifier: GPL-2.0 */
/* What the guard shares with the other programs: its clock, and how snat
 * marks a player's address as verified. */
#pragma once

#include "dp_maps.h"

/* The guard's clock: bpf_ktime_get_ns() (CLOCK_MONOTONIC, which is what
 * datapathctl reads to compute expiry times), unless a test has stopped it
 * at guard_cfg.test_now to make refills and expiry repeatable. */
static __always_inline __u64 dp_guard_now(const struct guard_config *cfg)
{
	return cfg->test_now ? cfg->test_now : bpf_ktime_get_ns();
}

/* A container sent `player` a TCP segment that is neither SYN-ACK nor RST:
 * its stack does that only on a connection whose handshake the player
 * completed, which a spoofed source cannot do (it never sees the SYN-ACK).
 * The lookup comes first because nearly every call finds the player
 * already there; it also keeps the entry young in the LRU. */
static __always_inline void dp_guard_verify4(__be32 player)
{
	__u64 now;

	if (bpf_map_lookup_elem(&guard_verified4, &player))
		return;
	now = bpf_ktime_get_ns();
	/* Failure (a racing insert) leaves the source unverified for one
	 * more packet; nothing depends on it. */
	bpf_map_update_elem(&guard_verified4, &player, &now, BPF_NOEXIST);
}
