/* SPDX-License-Identifier: GPL-2.0 */
/* Constants shared by the programs and datapathctl. Everything user space
 * needs is an enum, so it reaches Rust through BTF (the skeletons' types)
 * instead of being copied. */
#pragma once

/* Capacities of the maps (DESIGN.md: 65,536 published ports and flows). */
enum dp_capacity {
	DP_MAX_PUBLISHED = 65536,
	DP_MAX_FLOWS = 65536,
	DP_MAX_VETHS = 65536,
	DP_MAX_ATTACHMENTS = 4096,
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
 * tproxy_egress, getsockopt): datapathctl stats splits the names that way. */
enum dp_stat {
	DP_STAT_DNAT_REDIRECT,		/* published port: rewritten, to container */
	DP_STAT_DNAT_MISS,		/* TCP/UDP to an unpublished port: passed */
	DP_STAT_DNAT_NOT_IPV4,		/* not IPv4: passed */
	DP_STAT_DNAT_NOT_L4,		/* IPv4 but neither TCP nor UDP: passed */
	DP_STAT_DNAT_FRAGMENT,		/* IPv4 fragment: passed untouched */
	DP_STAT_DNAT_MALFORMED,		/* too short for its headers: passed */
	DP_STAT_DNAT_REWRITE_FAILED,	/* checksum helper failed: dropped */

	DP_STAT_SNAT_REDIRECT,		/* reply from a published port: to ext NIC */
	DP_STAT_SNAT_HANDED_ON,		/* not a published reply: next program */
	DP_STAT_SNAT_SPOOFED,		/* source is not the container's: dropped */
	DP_STAT_SNAT_UNREGISTERED,	/* IPv4 on an unregistered veth: dropped */
	DP_STAT_SNAT_NO_EXTERNAL,	/* `map snat` not set: reply dropped */
	DP_STAT_SNAT_REWRITE_FAILED,	/* checksum helper failed: dropped */

	DP_STAT_ARP_REPLIED,		/* request answered with the veth's MAC */
	DP_STAT_ARP_PASSED,		/* other ARP: to the kernel */
	DP_STAT_ARP_UNREGISTERED,	/* ARP on an unregistered veth: kernel */

	DP_STAT_TPROXY_INGRESS_DNS,		/* TCP/UDP to port 53: to the DNS proxy */
	DP_STAT_TPROXY_INGRESS_HTTP,		/* TCP to port 80: to the HTTP proxy */
	DP_STAT_TPROXY_INGRESS_TCP,		/* other TCP: to the TCP proxy */
	DP_STAT_TPROXY_INGRESS_UDP_DROPPED,	/* UDP to a port other than 53 */
	DP_STAT_TPROXY_INGRESS_L4_DROPPED,	/* ICMP and other IPv4 protocols */
	DP_STAT_TPROXY_INGRESS_NON_IP_DROPPED,	/* neither IPv4 nor ARP */
	DP_STAT_TPROXY_INGRESS_FRAGMENT_DROPPED,/* IPv4 fragments cannot be proxied */
	DP_STAT_TPROXY_INGRESS_MALFORMED_DROPPED,/* too short or inconsistent headers */
	DP_STAT_TPROXY_INGRESS_SPOOFED,		/* source is not the container's */
	DP_STAT_TPROXY_INGRESS_UNREGISTERED,	/* IPv4 on an unregistered veth */
	DP_STAT_TPROXY_INGRESS_FLOW_ERROR,	/* flow map update failed: dropped */
	DP_STAT_TPROXY_INGRESS_REWRITE_FAILED,	/* checksum helper failed: dropped */

	DP_STAT_TPROXY_EGRESS_RESTORED,	/* proxy reply: source restored */
	DP_STAT_TPROXY_EGRESS_PASSED,		/* anything else leaving the host veth */
	DP_STAT_TPROXY_EGRESS_REWRITE_FAILED,	/* checksum helper failed: dropped */

	DP_STAT_GETSOCKOPT_FOUND,	/* SO_ORIGINAL_DST answered */
	DP_STAT_GETSOCKOPT_MISS,	/* SO_ORIGINAL_DST for an unknown flow */

	DP_STAT_MAX,
};

/* Kinds of attachment datapathctl records, so `load` can replace programs
 * in place and `status` can show where they are. */
enum dp_attach_kind {
	DP_ATTACH_DNAT = 1,
	DP_ATTACH_HOST = 2,
	DP_ATTACH_GETSOCKOPT = 3,
};

/* Flags of an attachment record. */
enum dp_attach_flag {
	DP_ATTACH_F_QDISC_CREATED = 1,	/* datapathctl created the clsact qdisc */
};

enum dp_name_len {
	DP_NETNS_LEN = 64,
	DP_TARGET_LEN = 256,
};
