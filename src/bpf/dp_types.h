/* SPDX-License-Identifier: GPL-2.0 */
/* Map keys and values: the only definition of every struct user space
 * shares with the programs. Rust uses the skeleton's generated copies.
 * Rules: network-order fields are __be*, padding is an explicit field that
 * writers zero (hash keys are compared byte for byte), no bitfields. */
#pragma once

#include <linux/types.h>
#include "dp_consts.h"

/* dnat_ports key: a published (host port, protocol). */
struct dnat_key {
	__be16 port;
	__u8 proto;		/* IPPROTO_TCP or IPPROTO_UDP */
	__u8 pad;
};

/* dnat_ports value: where a published port leads. */
struct dnat_value {
	__be32 ctr_ip;
	__be16 ctr_port;
	__u8 ctr_mac[6];
	__u32 veth_ifindex;	/* host side of the container's veth pair */
};

/* A container endpoint: key of snat_ports (published container port) and
 * of proxy_flows (container source of a proxied flow). */
struct ctr_endpoint {
	__be32 ip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* snat_ports value: the host port a container port is published under. */
struct snat_value {
	__be16 host_port;
	__u16 pad;
	__u32 veth_ifindex;	/* replies are accepted on this veth only */
};

/* snat_cfg value (single entry): the host's external side. */
struct snat_config {
	__be32 ext_ip;		/* 0: not configured */
	__u32 ext_ifindex;
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

/* proxy_flows value: the destination a container asked for. */
struct flow_orig {
	__be32 orig_ip;
	__be32 proxy_ip;
	__be16 orig_port;
	__be16 proxy_port;
};

/* stats value, per CPU, indexed by enum dp_stat. */
struct dp_counter {
	__u64 packets;
	__u64 bytes;
};

/* attachments key: one TC attachment (netns inode, ifindex) or one cgroup
 * (cgroup id, ifindex 0). Written by datapathctl only. */
struct attach_key {
	__u64 id;
	__u32 ifindex;
	__u32 kind;		/* enum dp_attach_kind */
};

struct attach_value {
	char netns[DP_NETNS_LEN];	/* named netns, "" for datapathctl's own */
	char target[DP_TARGET_LEN];	/* interface name or cgroup path */
	__u32 flags;			/* enum dp_attach_flag */
	__u32 pad;
};

_Static_assert(sizeof(struct dnat_key) == 4, "dnat_key layout");
_Static_assert(sizeof(struct dnat_value) == 16, "dnat_value layout");
_Static_assert(sizeof(struct ctr_endpoint) == 8, "ctr_endpoint layout");
_Static_assert(sizeof(struct snat_value) == 8, "snat_value layout");
_Static_assert(sizeof(struct snat_config) == 8, "snat_config layout");
_Static_assert(sizeof(struct proxy_config) == 8, "proxy_config layout");
_Static_assert(sizeof(struct veth_info) == 32, "veth_info layout");
_Static_assert(sizeof(struct flow_orig) == 12, "flow_orig layout");
_Static_assert(sizeof(struct dp_counter) == 16, "dp_counter layout");
_Static_assert(sizeof(struct attach_key) == 16, "attach_key layout");
_Static_assert(sizeof(struct attach_value) == 328, "attach_value layout");
