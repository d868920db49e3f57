/* SPDX-License-Identifier: GPL-2.0 */
/* Constants shared by the programs and datapathctl. Everything user space
 * needs is an enum, so it reaches Rust through BTF (the skeletons' types)
 * instead of being copied. */
#pragma once

/* Capacities of the maps: 65,536 published ports and registered veths,
 * 262,144 published flows, 65,536 proxied flows. dnat4 holds the
 * expansion of default mappings (one entry per default address), so it has
 * room for every mapping on two default addresses. attachments has room for
 * the host veths of 65,536 containers and 8,192 external interfaces and
 * cgroups besides. */
enum dp_capacity {
	DP_MAX_PUBLISHED = 65536,	/* mappings, mapping_rev, slots */
	DP_MAX_DNAT = 131072,		/* dnat4, dnat6 */
	DP_MAX_FLOWS = 262144,		/* flows4, flows6 */
	DP_MAX_PROXY_FLOWS = 65536,	/* proxy_flows, proxy_flows6 */
	DP_MAX_HOST_FLOWS = 65536,	/* host_flows4, host_flows6 */
	DP_MAX_SOCK_REV = 65536,	/* sock_rev4 */
	DP_MAX_VETHS = 65536,		/* veths, veths6 */
	DP_MAX_EXTERNALS = 1024,
	DP_MAX_ATTACHMENTS = 73728,	/* attachments, attach_names */
	DP_MAX_GUARD_DENY = 65536,	/* guard_deny4, guard_deny6 */
	DP_MAX_GUARD_SOURCES = 65536,	/* guard_src4, guard_vsrc4 */
	DP_MAX_GUARD_VERIFIED = 65536,	/* guard_verified4 */
	DP_GUARD_LIMIT_SLOTS = 65536,	/* guard_limits: 0 global, else a port */
	DP_MAX_CONTAINERS = 65536,
	DP_CTR_MAX_PORTS = 64,		/* published ports per container */
};

/* Default ports of the proxy on the host; `datapathctl load` may change them. */
enum dp_default_port {
	DP_CTR_PORT = 25565,
	DP_PROXY_DNS_PORT = 9053,
	DP_PROXY_HTTP_PORT = 9080,
	DP_PROXY_TCP_PORT = 9111,
};

/* One counter per verdict and reason, named DP_STAT_<PROGRAM>_<REASON> where
 * PROGRAM is the program's pinned name (dnat, snat, arp, tproxy_ingress,
 * tproxy_egress, getsockopt, guard, connect4, sendmsg4, recvmsg4,
 * getpeername4): datapathctl stats splits the names that way. The host
 * access programs count calls (their bytes stay 0). */
enum dp_stat {
	DP_STAT_DNAT_REDIRECT,		/* published port: rewritten, to container */
	DP_STAT_DNAT_MISS,		/* TCP/UDP to an unpublished port: passed */
	DP_STAT_DNAT_NOT_IPV4,		/* neither IPv4 nor IPv6: passed (the
					 * name is older than IPv6 support) */
	DP_STAT_DNAT_NOT_L4,		/* IP, neither TCP, UDP nor ICMP(v6), or
					 * extension headers not understood:
					 * passed */
	DP_STAT_DNAT_FRAGMENT,		/* IP fragment: passed untouched */
	DP_STAT_DNAT_MALFORMED,		/* too short for its headers: passed */
	DP_STAT_DNAT_FLOW_ERROR,	/* flows4 update failed: dropped */
	DP_STAT_DNAT_REWRITE_FAILED,	/* checksum helper failed: dropped */
	DP_STAT_DNAT_ICMP_TRANSLATED,	/* error about a published flow: to it */
	DP_STAT_DNAT_ICMP_PASSED,	/* any other ICMP: passed */

	DP_STAT_SNAT_REDIRECT,		/* reply of a published flow: to ext NIC */
	DP_STAT_SNAT_HANDED_ON,		/* not a published reply: next program */
	DP_STAT_SNAT_SPOOFED,		/* source is not the container's: dropped */
	DP_STAT_SNAT_UNREGISTERED,	/* IP on a veth not registered for its
					 * family: dropped */
	DP_STAT_SNAT_REWRITE_FAILED,	/* checksum helper failed: dropped */
	DP_STAT_SNAT_ADOPTED,		/* flow of the release before flows: recorded */

	DP_STAT_ARP_REPLIED,		/* request answered with the veth's MAC */
	DP_STAT_ARP_PASSED,		/* other ARP: to the kernel */
	DP_STAT_ARP_UNREGISTERED,	/* ARP on an unregistered veth: kernel */
	DP_STAT_ARP_NEIGH_ADVERTISED,	/* IPv6 NS answered with an NA */
	DP_STAT_ARP_ND_PASSED,		/* other ND/RD, MLD, DAD, NS on a veth
					 * without IPv6: to the kernel */

	DP_STAT_TPROXY_INGRESS_DNS,		/* TCP/UDP to port 53: to the DNS proxy */
	DP_STAT_TPROXY_INGRESS_HTTP,		/* TCP to port 80: to the HTTP proxy */
	DP_STAT_TPROXY_INGRESS_TCP,		/* other TCP: to the TCP proxy */
	DP_STAT_TPROXY_INGRESS_HOST_REPLY,	/* reply to the host's own connection */
	DP_STAT_TPROXY_INGRESS_NO_FLOW_DROPPED,	/* TCP without SYN of no flow */
	DP_STAT_TPROXY_INGRESS_UDP_DROPPED,	/* UDP to a port other than 53 */
	DP_STAT_TPROXY_INGRESS_L4_DROPPED,	/* ICMP(v6) and other protocols */
	DP_STAT_TPROXY_INGRESS_NON_IP_DROPPED,	/* neither IPv4, IPv6 nor ARP */
	DP_STAT_TPROXY_INGRESS_FRAGMENT_DROPPED,/* IP fragments cannot be proxied */
	DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED,/* too short or inconsistent headers */
	DP_STAT_TPROXY_INGRESS_SPOOFED,		/* source is not the container's */
	DP_STAT_TPROXY_INGRESS_UNREGISTERED,	/* IP on a veth not registered for
						 * its family */
	DP_STAT_TPROXY_INGRESS_FLOW_ERROR,	/* flow map update failed: dropped */
	DP_STAT_TPROXY_INGRESS_REWRITE_FAILED,	/* checksum helper failed: dropped */

	DP_STAT_TPROXY_EGRESS_RESTORED,	/* proxy reply: source restored */
	DP_STAT_TPROXY_EGRESS_HOST_UDP,	/* UDP from the host: host flow recorded */
	DP_STAT_TPROXY_EGRESS_PASSED,	/* anything else leaving the host veth */
	DP_STAT_TPROXY_EGRESS_FLOW_ERROR,	/* host_flows4 update failed: passed */
	DP_STAT_TPROXY_EGRESS_REWRITE_FAILED,	/* checksum helper failed: dropped */

	DP_STAT_GETSOCKOPT_FOUND,	/* SO_ORIGINAL_DST / IP6T_... answered */
	DP_STAT_GETSOCKOPT_MISS,	/* ... for an unknown flow */

	DP_STAT_GUARD_PASSED,		/* not subject to a limit: passed */
	DP_STAT_GUARD_ADMITTED,		/* SYN or UDP within its source's limit */
	DP_STAT_GUARD_ESTABLISHED,	/* UDP of a flow the container answered */
	DP_STAT_GUARD_NOT_IP,		/* neither IPv4 nor IPv6 (or tagged) */
	DP_STAT_GUARD_MALFORMED,	/* too short for its headers: passed */
	DP_STAT_GUARD_DENIED,		/* source on a deny list: dropped */
	DP_STAT_GUARD_SYN_LIMITED,	/* SYN over its source's limit: dropped */
	DP_STAT_GUARD_UDP_LIMITED,	/* UDP over its source's limit: dropped */
	DP_STAT_GUARD_BLOCKED,		/* source blocked (--block-for): dropped */
	DP_STAT_GUARD_STATE_ERROR,	/* source state not writable: passed */

	DP_STAT_CONNECT4_REWRITTEN,	/* published: to the container */
	DP_STAT_CONNECT4_UNPUBLISHED,	/* host socket, not published: untouched */
	DP_STAT_CONNECT4_OTHER_NETNS,	/* not the host's namespace: untouched */
	DP_STAT_CONNECT4_REV_ERROR,	/* rewritten, but sock_rev4 not written */

	DP_STAT_SENDMSG4_REWRITTEN,	/* as connect4, per unconnected datagram */
	DP_STAT_SENDMSG4_UNPUBLISHED,
	DP_STAT_SENDMSG4_OTHER_NETNS,
	DP_STAT_SENDMSG4_REV_ERROR,

	DP_STAT_RECVMSG4_RESTORED,	/* source put back to what was asked */
	DP_STAT_RECVMSG4_UNTOUCHED,	/* not from a rewritten destination */

	DP_STAT_GETPEERNAME4_RESTORED,	/* peer put back to what was asked */
	DP_STAT_GETPEERNAME4_UNTOUCHED,	/* not a rewritten connection */

	DP_STAT_MAX,
	/* Not a counter: a verdict that is counted by the next program in
	 * the chain (dp_verdict() counts nothing for it). */
	DP_STAT_NONE = DP_STAT_MAX,
};

/* Per-port accounting of dp_verdict(): which way a packet of a published
 * port goes. */
enum dp_dir {
	DP_DIR_NONE,
	DP_DIR_IN,		/* player -> container */
	DP_DIR_OUT,		/* container -> player */
};

/* Flags of an externals entry. */
enum dp_ext_flag {
	DP_EXT_F_DEFAULT = 1,	/* default mappings are published on it */
};

/* Kinds of attachment datapathctl records, so `load` can replace programs
 * in place and `status` can show where they are. An interface carries one
 * kind, so its record's key has DP_ATTACH_IFACE and the kind is in the
 * value; a cgroup's key names the kind (a cgroup may carry several). */
enum dp_attach_kind {
	DP_ATTACH_IFACE = 0,
	DP_ATTACH_DNAT = 1,
	DP_ATTACH_HOST = 2,
	DP_ATTACH_GETSOCKOPT = 3,
	DP_ATTACH_HOST_ACCESS = 4,
};

/* Flags of an attachment record. */
enum dp_attach_flag {
	DP_ATTACH_F_QDISC_CREATED = 1,	/* datapathctl created the clsact qdisc */
	DP_ATTACH_F_XDP_NATIVE = 2,	/* guard runs in the driver (XDP) */
	DP_ATTACH_F_XDP_GENERIC = 4,	/* guard runs in generic (skb) XDP */
	DP_ATTACH_F_SHARED_BLOCKS = 8,	/* the clsact qdisc binds the pin root's
					 * shared filter blocks */
};

/* guard: the classes a source is limited in, and why it is blocked. */
enum dp_guard_class {
	DP_GUARD_SYN = 1,		/* TCP SYN without ACK: a new connection */
	DP_GUARD_UDP = 2,		/* UDP towards a published port */
};

/* flow4_value.flags: what snat has seen of a flow. */
enum dp_flow_flag {
	DP_FLOW_F_VERIFIED = 1,	/* a TCP segment other than SYN-ACK or RST went
				 * to the player: its source is verified */
	DP_FLOW_F_ANSWERED = 2,	/* the container has replied on the flow: the
				 * guard never limits it (UDP) */
};

/* guard_state.flags */
enum dp_guard_flag {
	DP_GUARD_F_VERIFIED = 1,	/* the state lives in guard_vsrc4 */
};

/* Trace events: the hook a program runs at (how its verdict reads), and
 * the address family of a tuple (0: the packet has no IP header). */
enum dp_trace_hook {
	DP_TRACE_NONE = 0,	/* no event being built */
	DP_TRACE_TC = 1,
	DP_TRACE_XDP = 2,
	DP_TRACE_CGROUP = 3,
};

enum dp_trace_family {
	DP_AF_INET = 2,
	DP_AF_INET6 = 10,
};

/* Size of the trace_events ring buffer, bytes (a power of two). */
enum dp_trace_size {
	DP_TRACE_RING = 1 << 20,
};

enum dp_name_len {
	DP_NETNS_LEN = 64,
	DP_TARGET_LEN = 256,
	DP_CTR_NAME_LEN = 128,		/* container name, NUL included */
	DP_CTR_NETNS_LEN = 128,		/* container's namespace path */
	DP_CTR_OWNER_LEN = 64,		/* CNI network name */
	DP_IFNAME_LEN = 16,
};

/* Where a container record is in its life: `container add` writes it
 * ADDING before it makes anything and READY when everything is made;
 * `container del` marks it DELETING before it removes anything. A record
 * left ADDING or DELETING (a command was killed) describes what may exist,
 * and the next add or del of that name removes it first. */
enum dp_ctr_state {
	DP_CTR_ADDING = 1,
	DP_CTR_READY = 2,
	DP_CTR_DELETING = 3,
};
