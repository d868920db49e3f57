/* SPDX-License-Identifier: GPL-2.0 */
/* The maps, shared by all four objects. datapathctl pins each one under
 * <pin root>/maps/<name> and hands the same map to every object it loads,
 * so a definition here is the one every program sees. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "dp_types.h"

/* Published ports: (host port, proto) -> container address, port, MAC. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_PUBLISHED);
	__type(key, struct dnat_key);
	__type(value, struct dnat_value);
} dnat_ports SEC(".maps");

/* Reverse of dnat_ports: container (addr, port, proto) -> host port. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_PUBLISHED);
	__type(key, struct ctr_endpoint);
	__type(value, struct snat_value);
} snat_ports SEC(".maps");

/* The host's external address and interface (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct snat_config);
} snat_cfg SEC(".maps");

/* Proxy ports on the host veth's address (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proxy_config);
} proxy_cfg SEC(".maps");

/* Registered host veths: ifindex -> container and host addresses, MAC. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_VETHS);
	__type(key, __u32);
	__type(value, struct veth_info);
} veths SEC(".maps");

/* Proxied flows: container source -> original destination (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_FLOWS);
	__type(key, struct ctr_endpoint);
	__type(value, struct flow_orig);
} proxy_flows SEC(".maps");

/* Packets and bytes per verdict and reason (enum dp_stat), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_STAT_MAX);
	__type(key, __u32);
	__type(value, struct dp_counter);
} stats SEC(".maps");

/* Where datapathctl attached the programs (user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_ATTACHMENTS);
	__type(key, struct attach_key);
	__type(value, struct attach_value);
} attachments SEC(".maps");

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

/* A key of snat_ports or proxy_flows. Hash keys are compared byte for
 * byte, so the padding is zeroed here, once. */
static __always_inline struct ctr_endpoint dp_endpoint(__be32 ip, __be16 port,
						       __u8 proto)
{
	struct ctr_endpoint k = {
		.ip = ip, .port = port, .proto = proto, .pad = 0,
	};

	return k;
}

/* The enums user space needs, gathered so one reference carries them all. */
struct dp_btf_enums {
	enum dp_stat stat;
	enum dp_attach_kind kind;
	enum dp_attach_flag flag;
	enum dp_default_port port;
	enum dp_capacity cap;
	enum dp_name_len len;
};

/* Never called, so never loaded. Its signature puts the shared enums into
 * every object's BTF (clang emits only types something references), and
 * user space takes them from the skeleton instead of keeping a copy. */
__attribute__((noinline, used)) int dp_btf_anchor(struct dp_btf_enums *e)
{
	return e ? 0 : 1;
}
