/* SPDX-License-Identifier: GPL-2.0 */
/* The one exit of every program: dp_verdict() counts the packet under its
 * reason, accounts it to its published port when it belongs to one, and
 * emits its trace event while a trace runs. A new counter or event is one
 * edit here, never one per return statement. */
#pragma once

#include "dp_maps.h"
#include "dp_trace.h"

/* A packet of a published port: its slot in port_stats and which way it
 * goes. */
struct dp_acct {
	__u32 slot;
	__u8 dir;		/* enum dp_dir */
	__u8 conn;		/* it opens a connection (TCP SYN, new UDP flow) */
};

static __always_inline void dp_count(enum dp_stat stat, __u32 bytes)
{
	__u32 key = stat;
	struct dp_counter *c = bpf_map_lookup_elem(&stats, &key);

	/* Per-CPU slot: no other writer, no atomics needed. */
	if (c) {
		c->packets++;
		c->bytes += bytes;
	}
}

static __always_inline void dp_account(const struct dp_acct *a, __u32 bytes)
{
	__u32 key = a->slot;
	struct port_counter *c = bpf_map_lookup_elem(&port_stats, &key);

	if (!c)
		return;
	if (a->dir == DP_DIR_IN) {
		c->pkts_in++;
		c->bytes_in += bytes;
	} else {
		c->pkts_out++;
		c->bytes_out += bytes;
	}
	c->conns += a->conn;
}

/* Ends a program: returns `verdict` after counting `bytes` under `stat`
 * (nothing for DP_STAT_NONE: the next program in the chain counts the
 * packet) and, with `acct`, under its published port. Always inlined with
 * constant `stat` and `acct`, so every exit pays only for what it uses. */
static __always_inline int dp_verdict(__u32 bytes, enum dp_stat stat,
				      int verdict, const struct dp_acct *acct)
{
	dp_keep_maps();
	if (stat != DP_STAT_NONE)
		dp_count(stat, bytes);
	if (acct && acct->dir != DP_DIR_NONE)
		dp_account(acct, bytes);
	/* One event per decision while `datapathctl trace` runs (see
	 * dp_trace.h); without a trace, one load and one branch. A verdict
	 * the next program counts is its decision, not this one's. */
	if (stat != DP_STAT_NONE)
		dp_trace_end(bytes, stat, verdict);
	return verdict;
}
