/* SPDX-License-Identifier: GPL-2.0 */
/* The maps, shared by every object. datapathctl pins each one under
 * <pin root>/maps/<name> and hands the same map to every object it loads,
 * so a definition here is the one every program sees. User-space-only hash
 * maps are BPF_F_NO_PREALLOC: they cost memory only for what they hold. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "dp_types.h"

/* Published ports as dnat looks them up: (ext addr, host port, proto) ->
 * container. A default mapping is one entry per default address. Written
 * by user space only, so entries are allocated as they are added. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_DNAT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dnat4_key);
	__type(value, struct dnat4_value);
} dnat4 SEC(".maps");

/* The IPv6 twin of dnat4. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_DNAT);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dnat6_key);
	__type(value, struct dnat6_value);
} dnat6 SEC(".maps");

/* Published flows, recorded by dnat, reversed by snat (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_FLOWS);
	__type(key, struct flow4_key);
	__type(value, struct flow4_value);
} flows4 SEC(".maps");

/* The IPv6 twin of flows4 (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_FLOWS);
	__type(key, struct flow6_key);
	__type(value, struct flow6_value);
} flows6 SEC(".maps");

/* UDP flows the host opened to a container, recorded by tproxy_egress so
 * tproxy_ingress passes their replies (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_HOST_FLOWS);
	__type(key, struct flow4_key);
	__type(value, struct host_flow_value);
} host_flows4 SEC(".maps");

/* Host access: the destination a host socket asked for, by socket and
 * the container endpoint it was sent to instead (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_SOCK_REV);
	__type(key, struct sock_rev4_key);
	__type(value, struct sock_rev4_value);
} sock_rev4 SEC(".maps");

/* The IPv6 twin of host_flows4 (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_HOST_FLOWS);
	__type(key, struct flow6_key);
	__type(value, struct host_flow_value);
} host_flows6 SEC(".maps");

/* Packets, bytes and connections per published port (slot), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_MAX_PUBLISHED);
	__type(key, __u32);
	__type(value, struct port_counter);
} port_stats SEC(".maps");

/* Facts about the host (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct host_config);
} host_cfg SEC(".maps");

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

/* The IPv6 side of registered dual-stack veths: ifindex -> container and
 * gateway addresses, MAC. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_VETHS);
	__type(key, __u32);
	__type(value, struct veth6_info);
} veths6 SEC(".maps");

/* Proxied flows: container source -> original destination (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_PROXY_FLOWS);
	__type(key, struct ctr_endpoint);
	__type(value, struct flow_orig);
} proxy_flows SEC(".maps");

/* The IPv6 twin of proxy_flows (LRU). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_PROXY_FLOWS);
	__type(key, struct ctr_endpoint6);
	__type(value, struct flow_orig6);
} proxy_flows6 SEC(".maps");

/* Packets and bytes per verdict and reason (enum dp_stat), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DP_STAT_MAX);
	__type(key, __u32);
	__type(value, struct dp_counter);
} stats SEC(".maps");

/* The mappings as the user gave them (user space; host access looks up
 * default ones for 127.0.0.1). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_PUBLISHED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mapping_key);
	__type(value, struct mapping_value);
} mappings SEC(".maps");

/* Container port and protocol per external address -> mapping (user
 * space only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_PUBLISHED);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct mapping_rev_key);
	__type(value, struct mapping_key);
} mapping_rev SEC(".maps");

/* External addresses: interface and default flag (user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_EXTERNALS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct external_key);
	__type(value, struct external_value);
} externals SEC(".maps");

/* Slot allocation state (one entry, user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dp_meta);
} meta SEC(".maps");

/* The slot freed after this one (FIFO free list, user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DP_MAX_PUBLISHED);
	__type(key, __u32);
	__type(value, __u32);
} slot_next SEC(".maps");

/* Where datapathctl attached the programs (user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_ATTACHMENTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct attach_key);
	__type(value, struct attach_value);
} attachments SEC(".maps");

/* Attached interfaces by name in their namespace -> ifindex (user space
 * only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_ATTACHMENTS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct attach_name_key);
	__type(value, __u32);
} attach_names SEC(".maps");

/* The pin root these maps belong to (one entry, user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct pin_root_value);
} pin_root SEC(".maps");

/* Containers by name: what `container add` made (user space only). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DP_MAX_CONTAINERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct container_key);
	__type(value, struct container_value);
} containers SEC(".maps");

/* How containers are wired: the gateway address (one entry, user space
 * only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct container_config);
} container_cfg SEC(".maps");

/* trace: whether `datapathctl trace` runs, and its filters (one entry). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_config);
} trace_cfg SEC(".maps");

/* trace: the events (see dp_trace.h). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, DP_TRACE_RING);
} trace_events SEC(".maps");

/* trace: the event a program builds while it runs (per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct trace_event);
} trace_scratch SEC(".maps");

/* trace: events lost to a full ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} trace_lost SEC(".maps");

/* Names a map in an instruction that never runs. */
#define dp_keep(map) asm volatile("" : : "r"(&(map)))
/* guard: settings (one entry; the clock tests use). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct guard_config);
} guard_cfg SEC(".maps");

/* guard: limits by host port, index 0 for every published port. An array,
 * so the lookup on the packet path is an inlined index. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, DP_GUARD_LIMIT_SLOTS);
	__type(key, __u32);
	__type(value, struct guard_limit);
} guard_limits SEC(".maps");

/* guard: denied IPv4 sources (LPM trie; tries need BPF_F_NO_PREALLOC). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DP_MAX_GUARD_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct guard_lpm4);
	__type(value, struct guard_deny);
} guard_deny4 SEC(".maps");

/* guard: denied IPv6 sources. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DP_MAX_GUARD_DENY);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct guard_lpm6);
	__type(value, struct guard_deny);
} guard_deny6 SEC(".maps");

/* guard: token buckets and blocks of unverified IPv4 sources (LRU). Any
 * address, spoofed or not, can make an entry here. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_GUARD_SOURCES);
	__type(key, struct guard_src4_key);
	__type(value, struct guard_state);
} guard_src4 SEC(".maps");

/* guard: the same for verified sources (LRU), so that a spoofed flood,
 * which fills guard_src4, never evicts them. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_GUARD_SOURCES);
	__type(key, struct guard_src4_key);
	__type(value, struct guard_state);
} guard_vsrc4 SEC(".maps");

/* guard: verified IPv4 sources (LRU): players a container has sent a TCP
 * segment other than SYN-ACK or RST, which its stack only does once the
 * player completed the handshake, so the address is not spoofed. Written
 * by snat only: no packet from outside can make an entry. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DP_MAX_GUARD_VERIFIED);
	__type(key, __be32);
	__type(value, __u64);
} guard_verified4 SEC(".maps");

/* Every program refers to every map of the pin root, so while any program
 * is attached all the maps stay alive and can be found again from it
 * (BPF_OBJ_GET_INFO_BY_FD lists its map ids) even if the pins are lost.
 * A program's map list is collected from its ld_imm64 instructions before
 * verification (resolve_pseudo_ldimm64), so the references sit on a
 * branch the verifier proves dead: `never` is 0 as far as it can see, and
 * for privileged programs it removes the branch (opt_remove_dead_code),
 * leaving one register move on the packet path. clang cannot see through
 * the asm, so it keeps the branch. */
static __always_inline void dp_keep_maps(void)
{
	int never = 0;

	asm volatile("" : "+r"(never));
	if (never) {
		dp_keep(dnat4);
		dp_keep(flows4);
		dp_keep(host_flows4);
		dp_keep(sock_rev4);
		dp_keep(port_stats);
		dp_keep(host_cfg);
		dp_keep(proxy_cfg);
		dp_keep(veths);
		dp_keep(proxy_flows);
		dp_keep(stats);
		dp_keep(mappings);
		dp_keep(mapping_rev);
		dp_keep(externals);
		dp_keep(meta);
		dp_keep(slot_next);
		dp_keep(attachments);
		dp_keep(attach_names);
		dp_keep(pin_root);
		dp_keep(guard_cfg);
		dp_keep(guard_limits);
		dp_keep(guard_deny4);
		dp_keep(guard_deny6);
		dp_keep(guard_src4);
		dp_keep(guard_vsrc4);
		dp_keep(guard_verified4);
		dp_keep(containers);
		dp_keep(container_cfg);
		dp_keep(trace_cfg);
		dp_keep(trace_events);
		dp_keep(trace_scratch);
		dp_keep(trace_lost);
		dp_keep(dnat6);
		dp_keep(flows6);
		dp_keep(host_flows6);
		dp_keep(veths6);
		dp_keep(proxy_flows6);
	}
}

/* A key of proxy_flows. Hash keys are compared byte for byte, so the
 * padding is zeroed here, once. */
static __always_inline struct ctr_endpoint dp_endpoint(__be32 ip, __be16 port,
						       __u8 proto)
{
	struct ctr_endpoint k = {
		.ip = ip, .port = port, .proto = proto, .pad = 0,
	};

	return k;
}

/* A key of flows4 or host_flows4, padding zeroed. */
static __always_inline struct flow4_key dp_flow4_key(__be32 ctr_addr,
						     __be32 peer_addr,
						     __be16 ctr_port,
						     __be16 peer_port,
						     __u8 proto)
{
	struct flow4_key k = {
		.ctr_addr = ctr_addr, .peer_addr = peer_addr,
		.ctr_port = ctr_port, .peer_port = peer_port,
		.proto = proto,
	};

	return k;
}

/* A key of proxy_flows6, padding zeroed. */
static __always_inline struct ctr_endpoint6 dp_endpoint6(const __be32 *ip,
							 __be16 port,
							 __u8 proto)
{
	struct ctr_endpoint6 k = {
		.ip = { ip[0], ip[1], ip[2], ip[3] },
		.port = port, .proto = proto, .pad = 0,
	};

	return k;
}

/* A key of flows6 or host_flows6, padding zeroed. */
static __always_inline struct flow6_key dp_flow6_key(const __be32 *ctr_addr,
						     const __be32 *peer_addr,
						     __be16 ctr_port,
						     __be16 peer_port,
						     __u8 proto)
{
	struct flow6_key k = {
		.ctr_addr = { ctr_addr[0], ctr_addr[1], ctr_addr[2],
			      ctr_addr[3] },
		.peer_addr = { peer_addr[0], peer_addr[1], peer_addr[2],
			       peer_addr[3] },
		.ctr_port = ctr_port, .peer_port = peer_port,
		.proto = proto,
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
	enum dp_ctr_state ctr_state;
	enum dp_dir dir;
	enum dp_ext_flag ext_flag;
	enum dp_guard_class guard_class;
	enum dp_guard_flag guard_flag;
	enum dp_flow_flag flow_flag;
	enum dp_trace_hook trace_hook;
	enum dp_trace_family trace_family;
	enum dp_trace_size trace_size;
};

/* Never called, so never loaded. Its signature puts the shared enums into
 * every object's BTF (clang emits only types something references), and
 * user space takes them from the skeleton instead of keeping a copy. */
__attribute__((noinline, used)) int dp_btf_anchor(struct dp_btf_enums *e)
{
	return e ? 0 : 1;
}
