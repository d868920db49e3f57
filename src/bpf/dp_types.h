/* SPDX-License-Identifier: GPL-2.0 */
/* Map keys and values: the only definition of every struct user space
 * shares with the programs. Rust uses the skeleton's generated copies.
 * Rules: network-order fields are __be*, padding is an explicit field that
 * writers zero (hash keys are compared byte for byte), no bitfields.
 *
 * Address families: maps on a per-packet path come in pairs (...4 and
 * ...6) whose keys have exactly the family's size, so IPv4 never hashes a
 * 16-byte address. Maps only user space reads use one layout for both
 * families: __u8 family (AF_INET, AF_INET6) and __be32 addr[4], with IPv4
 * in addr[0] and the rest zero. */
#pragma once

#include <linux/types.h>
#include "dp_consts.h"

/* dnat4 key: a published (external address, host port, protocol). */
struct dnat4_key {
	__be32 ext_addr;
	__be16 host_port;
	__u8 proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* dnat4 value: where a published port leads. */
struct dnat4_value {
	__be32 ctr_addr;
	__be16 ctr_port;
	__u8 ctr_mac[6];
	__u32 veth_ifindex;	/* host side of the container's veth pair */
	__u32 slot;		/* the mapping's index in port_stats */
};

/* dnat6 key: the IPv6 twin of dnat4_key. */
struct dnat6_key {
	__be32 ext_addr[4];
	__be16 host_port;
	__u8 proto;
	__u8 pad;
};

/* dnat6 value. */
struct dnat6_value {
	__be32 ctr_addr[4];
	__be16 ctr_port;
	__u8 ctr_mac[6];
	__u32 veth_ifindex;
	__u32 slot;
};

/* flows4 key, and host_flows4 key: the container side of a flow. */
struct flow4_key {
	__be32 ctr_addr;
	__be32 peer_addr;	/* the player (flows4) or the host (host_flows4) */
	__be16 ctr_port;
	__be16 peer_port;
	__u8 proto;
	__u8 pad[3];
};

/* flows4 value: what the player used, and where the flow was sent. */
struct flow4_value {
	__be32 ext_addr;
	__be16 host_port;
	__u8 flags;		/* enum dp_flow_flag, set by snat; dnat writes 0 */
	__u8 pad;
	__u32 ext_ifindex;	/* the external interface it arrived on */
	__u32 veth_ifindex;	/* replies are taken on this veth only */
	__u32 slot;
};

/* flows6 key, and host_flows6 key: the IPv6 twin of flow4_key. */
struct flow6_key {
	__be32 ctr_addr[4];
	__be32 peer_addr[4];
	__be16 ctr_port;
	__be16 peer_port;
	__u8 proto;
	__u8 pad[3];
};

/* flows6 value: the IPv6 twin of flow4_value. */
struct flow6_value {
	__be32 ext_addr[4];
	__be16 host_port;
	__u8 flags;		/* enum dp_flow_flag, set by snat; dnat writes 0 */
	__u8 pad;
	__u32 ext_ifindex;
	__u32 veth_ifindex;
	__u32 slot;
};

/* host_flows4 / host_flows6 value: a UDP flow the host opened to a
 * container. */
struct host_flow_value {
	__u32 veth_ifindex;	/* the host veth it left by */
	__u32 pad;
};

/* port_stats value, per CPU, indexed by a mapping's slot. */
struct port_counter {
	__u64 pkts_in;		/* player -> container */
	__u64 bytes_in;
	__u64 pkts_out;		/* container -> player */
	__u64 bytes_out;
	__u64 conns;		/* TCP SYNs taken, UDP flows recorded */
};

/* host_cfg value (single entry): facts about the host, for the host
 * access programs (netns_cookie) and for upgrades from the release before
 * published flows: until adopt_until, snat adopts the flow-less replies of
 * connections that release forwarded, on its one external address and
 * interface (adopt_addr, adopt_ifindex). */
struct host_config {
	__u64 netns_cookie;	/* the host's network namespace, 0: unset */
	__u64 adopt_until;	/* bpf_ktime_get_ns() deadline, 0: none */
	__be32 adopt_addr;
	__u32 adopt_ifindex;
	__u64 reserved;		/* zero */
};

/* mappings key: a mapping as the user gave it. User space keeps it; host
 * access looks up the default mappings in it for 127.0.0.1. */
struct mapping_key {
	__u8 family;
	__u8 proto;
	__be16 host_port;
	__be32 ext_addr[4];	/* all zero: every default external address */
};

/* mappings value. */
struct mapping_value {
	__be32 ctr_addr[4];
	__be16 ctr_port;
	__u8 ctr_mac[6];
	__u32 veth_ifindex;
	__u32 slot;
};

/* mapping_rev key (user space only): one container port and protocol is
 * published once per external address (all zero: default). The value is
 * the mappings key that holds it. */
struct mapping_rev_key {
	__u8 family;
	__u8 proto;
	__be16 ctr_port;
	__be32 ctr_addr[4];
	__be32 ext_addr[4];
};

/* externals key (user space only): an external address. */
struct external_key {
	__u8 family;
	__u8 pad[3];
	__be32 addr[4];
};

/* externals value. */
struct external_value {
	__u32 ifindex;
	__u32 flags;		/* enum dp_ext_flag */
	char ifname[16];	/* the interface's name when it was added */
};

/* meta value (single entry, user space only): slot allocation. Slots are
 * handed out by the cursor until it reaches DP_MAX_PUBLISHED, then from a
 * FIFO free list threaded through slot_next, so a freed slot is reused as
 * late as possible. */
struct dp_meta {
	__u32 slot_cursor;	/* next never-used slot */
	__u32 free_head;	/* oldest freed slot (when free_count > 0) */
	__u32 free_tail;	/* newest freed slot (when free_count > 0) */
	__u32 free_count;
	__u64 reserved[2];	/* zero */
};

/* A container endpoint: key of proxy_flows (container source of a proxied
 * flow). */
struct ctr_endpoint {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* proxy_flows6 key: the IPv6 twin of ctr_endpoint. */
struct ctr_endpoint6 {
	__be32 ip[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* proxy_cfg value (single entry): where proxied traffic goes. */
struct proxy_config {
	__be16 dns_port;
	__be16 http_port;
	__be16 tcp_port;
	__u16 pad;
};

/* veths value, keyed by the host veth's ifindex: a registered container. */
struct veth_info {
	__be32 ctr_ip;
	__be32 host_ip;		/* the host veth's own address: the proxy's */
	__u8 host_mac[6];	/* read from the interface at registration */
	__u8 pad[2];
	char ifname[16];	/* user space only: finds the entry after the
				 * veth is gone, and tells a reused ifindex */
};

/* veths6 value, keyed by the host veth's ifindex: the IPv6 side of a
 * registered dual-stack container (its veths entry holds the IPv4 side).
 * Everything an IPv6 packet needs is here, so it costs one lookup. */
struct veth6_info {
	__be32 ctr_ip[4];
	__be32 host_ip[4];	/* the host veth's gateway address: the proxy's */
	__u8 host_mac[6];
	__u8 pad[2];
};

/* proxy_flows value: the destination a container asked for. */
struct flow_orig {
	__be32 orig_ip;
	__be32 proxy_ip;
	__be16 orig_port;
	__be16 proxy_port;
};

/* proxy_flows6 value. */
struct flow_orig6 {
	__be32 orig_ip[4];
	__be32 proxy_ip[4];
	__be16 orig_port;
	__be16 proxy_port;
};

/* stats value, per CPU, indexed by enum dp_stat. */
struct dp_counter {
	__u64 packets;
	__u64 bytes;
};

/* attachments key (user space only): an interface (netns inode, ifindex,
 * DP_ATTACH_IFACE: it carries one kind) or a cgroup (cgroup id, ifindex 0,
 * the kind). */
struct attach_key {
	__u64 id;
	__u32 ifindex;
	__u32 kind;		/* enum dp_attach_kind */
};

struct attach_value {
	char netns[DP_NETNS_LEN];	/* named netns, "" for datapathctl's own */
	char target[DP_TARGET_LEN];	/* interface name or cgroup path */
	__u32 flags;			/* enum dp_attach_flag */
	__u32 kind;			/* enum dp_attach_kind */
};

/* attach_names key (user space only): an attached interface by name in its
 * namespace; the value is its ifindex. Finds the record of an interface
 * that is gone, or whose name now belongs to another interface. */
struct attach_name_key {
	__u64 netns;			/* netns inode */
	char ifname[16];
};

/* pin_root value (single entry, user space only): the pin root the maps
 * were created for. Every program holds this map, so an attached program
 * tells which pin root it belongs to even after the pins are lost. */
struct pin_root_value {
	char path[DP_TARGET_LEN];
};

/* guard_cfg value (single entry). */
struct guard_config {
	__u64 test_now;		/* 0: the clock is bpf_ktime_get_ns(); else it
				 * stands at this value (tests only) */
	__u64 reserved[3];	/* zero */
};

/* guard_limits value, indexed by host port (0: every published port).
 * Rates are per second; 0 means no limit for that class (a port's entry
 * then takes the global one's). The interval (1e9 / rate ns) is computed
 * by user space, so the program never divides. */
struct guard_limit {
	__u32 syn_rate;
	__u32 syn_burst;
	__u32 syn_interval;	/* ns between two SYNs at the rate */
	__u32 udp_rate;
	__u32 udp_burst;
	__u32 udp_interval;
	__u32 block_for;	/* seconds a source over its limit is blocked */
	__u32 set;		/* 1: the entry holds settings */
};

/* guard_deny4 key: an LPM trie key, prefix length first. */
struct guard_lpm4 {
	__u32 prefixlen;
	__be32 addr;
};

/* guard_deny6 key. */
struct guard_lpm6 {
	__u32 prefixlen;
	__be32 addr[4];
};

/* guard_deny4 / guard_deny6 value. */
struct guard_deny {
	__u64 expires;		/* guard clock (ns); 0: never */
	__u32 prefixlen;	/* the entry's own, to look behind it */
	__u32 pad;
};

/* guard_src4 / guard_vsrc4 key: a source and the scope of its limits
 * (a host port with limits of its own, or 0 for the global ones). */
struct guard_src4_key {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/* guard_src4 / guard_vsrc4 value: per-source token buckets kept as their
 * theoretical arrival time (GCRA): a packet at time t conforms if
 * tat - t <= (burst - 1) * interval, and then moves tat on by interval. */
struct guard_state {
	__u64 syn_tat;
	__u64 udp_tat;
	__u64 blocked_until;	/* guard clock (ns); 0: not blocked */
	__u32 block_class;	/* enum dp_guard_class that caused the block */
	__u32 flags;		/* enum dp_guard_flag */
};

/* sock_rev4 key: a host socket host access sent to a container, and the
 * container endpoint it sent it to. */
struct sock_rev4_key {
	__u64 cookie;		/* bpf_get_socket_cookie(): unique per boot */
	__be32 ctr_addr;
	__be16 ctr_port;
	__u16 pad;
};

/* sock_rev4 value: the destination the process asked for. */
struct sock_rev4_value {
	__be32 addr;		/* an external address, or 127.0.0.1 */
	__be16 port;		/* the published host port */
	__u16 pad;
};

/* containers key (user space only): a container's name, NUL-padded. */
struct container_key {
	char name[DP_CTR_NAME_LEN];
};

/* One port a container publishes, as `container add --publish` gave it. */
struct container_port {
	__u8 family;		/* AF_INET */
	__u8 proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__be16 host_port;
	__be16 ctr_port;
	__u16 pad;
	__be32 ext_addr[4];	/* all zero: the default external addresses */
};

/* containers value (user space only): what `container add` made, so that
 * `container del` removes exactly that, also after a crash or a load. */
struct container_value {
	__u32 state;		/* enum dp_ctr_state */
	__u32 flags;		/* zero */
	__u32 host_ifindex;	/* the host veth, 0 until it exists */
	__u32 mtu;		/* 0: the kernel's default */
	__be32 addr4;		/* the container's address */
	__be32 gateway4;	/* the host veth's address */
	__be32 addr6[4];	/* a dual-stack container's IPv6 address, or zero */
	__u8 ctr_mac[6];	/* the container side's MAC, once wired */
	__u16 nports;
	char host_ifname[DP_IFNAME_LEN];
	char ifname[DP_IFNAME_LEN];		/* the container side's name */
	char host_netns[DP_NETNS_LEN];		/* -n NAME of the host side */
	char netns[DP_CTR_NETNS_LEN];		/* the container's namespace */
	char owner[DP_CTR_OWNER_LEN];		/* CNI network, "" otherwise */
	struct container_port ports[DP_CTR_MAX_PORTS];
};

/* container_cfg value (single entry, user space only): how containers
 * are wired. */
struct container_config {
	__be32 gateway4;	/* 0: the default, 169.254.1.1 */
	__u32 flags;		/* zero */
	__u64 reserved[3];	/* zero */
};

/* Addresses and ports of a packet or socket, either family (IPv4 in
 * word 0). */
struct dp_tuple {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 family;		/* enum dp_trace_family; 0: no IP header */
	__u8 proto;
	__u8 pad[2];
};

/* One decision of a program, as `datapathctl trace` receives it from
 * trace_events (and as trace_scratch builds it). */
struct trace_event {
	__u64 ts;		/* bpf_ktime_get_ns() */
	__u32 ifindex;		/* the packet's interface; 0 at cgroup hooks */
	__u32 len;		/* bytes counted */
	__u32 stat;		/* enum dp_stat */
	__s32 verdict;		/* the program's return value */
	__u8 hook;		/* enum dp_trace_hook */
	__u8 drop;		/* the verdict drops the packet */
	__u8 pad[6];
	struct dp_tuple before;	/* as the program found it */
	struct dp_tuple after;	/* after its rewrites */
};

/* trace_cfg value (single entry): whether a trace runs and its filters,
 * all applied in the kernel. */
struct trace_config {
	__u32 on;		/* 0: nothing is emitted */
	__u32 drops_only;
	__u32 ifindex;		/* 0: any interface */
	__be16 port;		/* 0: any; else a port before or after */
	__u8 family;		/* 0: any address; else addr, before or after */
	__u8 pad;
	__be32 addr[4];
	__u64 reasons[4];	/* bit per enum dp_stat: the reasons shown */
	__u32 owner_pid;	/* user space only: the trace that switched it on */
	__u32 pad2;
	__u64 owner_start;	/* user space only: its start time (clock ticks) */
};

_Static_assert(sizeof(struct dnat4_key) == 8, "dnat4_key layout");
_Static_assert(sizeof(struct dnat4_value) == 20, "dnat4_value layout");
_Static_assert(sizeof(struct dnat6_key) == 20, "dnat6_key layout");
_Static_assert(sizeof(struct dnat6_value) == 32, "dnat6_value layout");
_Static_assert(sizeof(struct flow4_key) == 16, "flow4_key layout");
_Static_assert(sizeof(struct flow6_key) == 40, "flow6_key layout");
_Static_assert(sizeof(struct flow6_value) == 32, "flow6_value layout");
_Static_assert(sizeof(struct ctr_endpoint6) == 20, "ctr_endpoint6 layout");
_Static_assert(sizeof(struct veth6_info) == 40, "veth6_info layout");
_Static_assert(sizeof(struct flow_orig6) == 36, "flow_orig6 layout");
_Static_assert(sizeof(struct flow4_value) == 20, "flow4_value layout");
_Static_assert(sizeof(struct host_flow_value) == 8, "host_flow_value layout");
_Static_assert(sizeof(struct port_counter) == 40, "port_counter layout");
_Static_assert(sizeof(struct host_config) == 32, "host_config layout");
_Static_assert(sizeof(struct mapping_key) == 20, "mapping_key layout");
_Static_assert(sizeof(struct mapping_value) == 32, "mapping_value layout");
_Static_assert(sizeof(struct mapping_rev_key) == 36, "mapping_rev_key layout");
_Static_assert(sizeof(struct external_key) == 20, "external_key layout");
_Static_assert(sizeof(struct external_value) == 24, "external_value layout");
_Static_assert(sizeof(struct dp_meta) == 32, "dp_meta layout");
_Static_assert(sizeof(struct ctr_endpoint) == 8, "ctr_endpoint layout");
_Static_assert(sizeof(struct proxy_config) == 8, "proxy_config layout");
_Static_assert(sizeof(struct veth_info) == 32, "veth_info layout");
_Static_assert(sizeof(struct flow_orig) == 12, "flow_orig layout");
_Static_assert(sizeof(struct dp_counter) == 16, "dp_counter layout");
_Static_assert(sizeof(struct attach_key) == 16, "attach_key layout");
_Static_assert(sizeof(struct attach_value) == 328, "attach_value layout");
_Static_assert(sizeof(struct attach_name_key) == 24, "attach_name_key layout");
_Static_assert(sizeof(struct pin_root_value) == 256, "pin_root_value layout");
_Static_assert(sizeof(struct guard_config) == 32, "guard_config layout");
_Static_assert(sizeof(struct guard_limit) == 32, "guard_limit layout");
_Static_assert(sizeof(struct guard_lpm4) == 8, "guard_lpm4 layout");
_Static_assert(sizeof(struct guard_lpm6) == 20, "guard_lpm6 layout");
_Static_assert(sizeof(struct guard_deny) == 16, "guard_deny layout");
_Static_assert(sizeof(struct guard_src4_key) == 8, "guard_src4_key layout");
_Static_assert(sizeof(struct guard_state) == 32, "guard_state layout");
_Static_assert(sizeof(struct sock_rev4_key) == 16, "sock_rev4_key layout");
_Static_assert(sizeof(struct sock_rev4_value) == 8, "sock_rev4_value layout");
_Static_assert(sizeof(struct container_key) == 128, "container_key layout");
_Static_assert(sizeof(struct container_port) == 24, "container_port layout");
_Static_assert(sizeof(struct container_value) == 1872, "container_value layout");
_Static_assert(sizeof(struct container_config) == 32, "container_config layout");
_Static_assert(sizeof(struct dp_tuple) == 40, "dp_tuple layout");
_Static_assert(sizeof(struct trace_event) == 112, "trace_event layout");
_Static_assert(sizeof(struct trace_config) == 80, "trace_config layout");
