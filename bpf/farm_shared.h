/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Farm filter: structs, map names and constants shared by farm_filter.bpf.c
 * and the C++ loader. The single source of truth: never copy these by hand.
 */
#ifndef SK_FARM_SHARED_H
#define SK_FARM_SHARED_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

#define SK_FARM_MAX_BUCKETS 65536
#define SK_FARM_DEFAULT_BUCKETS 1024
/* Entries of the VIP map and of the port map (per-VIP and global rules). */
#define SK_FARM_MAX_VIPS 256
#define SK_FARM_MAX_PORT_RULES 1024
/* Bound on IPv6 extension headers walked before giving up on finding L4. */
#define SK_FARM_MAX_IPV6_EXT 8

/* Node id 0 means "no owner": a bucket owned by nobody is dropped everywhere. */
#define SK_FARM_NODE_NONE 0

/*
 * Maps are pinned by name (LIBBPF_PIN_BY_NAME) under <pin root>/<module>/:
 * farm_vips, farm_ports, farm_owners, farm_config, farm_verdicts,
 * farm_bkt_pkts. C++ reaches them through the skeleton (and bpf_map__name),
 * never by spelling the names again.
 */

/* Verdict counter indexes (per-CPU array "farm_verdicts"). */
enum sk_farm_verdict {
	SK_FARM_PASS_NOT_VIP = 0,	/* not for a VIP (or ARP/ND): untouched */
	SK_FARM_PASS_OWNED = 1,		/* for a VIP, bucket owned here */
	SK_FARM_DROP_NOT_OWNED = 2,	/* for a VIP, bucket owned elsewhere */
	SK_FARM_PASS_MALFORMED = 3,	/* could not parse L2/L3: left to the kernel */
	SK_FARM_PASS_PORT_UNLISTED = 4,	/* for a VIP, but its port is not balanced: untouched */
	SK_FARM_VERDICT_MAX = 5,
};

/*
 * Hash modes. IP: bucket = hash(client IP), session affinity per client.
 * IP_PORT: bucket = hash(client IP, client source port) for TCP/UDP; every
 * packet without visible ports (fragments, ICMP, unknown L4) hashes by client
 * IP only. All fragments of a datagram, the first included, hash by IP only,
 * so one node receives every fragment (the first would otherwise hash apart).
 * ICMP/ICMPv6 errors to a VIP (frag needed, packet too big, unreachable, time
 * exceeded, parameter problem) hash on the quoted packet's destination, i.e.
 * the client, and its destination port, so they reach the owner of that flow.
 * ND (ICMPv6 133-137) to a VIP passes untouched. Until the loader installs an
 * owner table no bucket has an owner, so VIP traffic is dropped everywhere.
 */
enum sk_farm_hash_mode {
	SK_FARM_HASH_IP = 0,
	SK_FARM_HASH_IP_PORT = 1,
};

/*
 * VIP map key. family is 4 or 6; addr holds the address in network order
 * (IPv4 in addr[0..3], the rest zero). The all-zero key (family 0) is never a
 * VIP; in the port map it stands for "every VIP" (global port rules).
 */
struct sk_farm_vip_key {
	__u8 family;
	__u8 pad[3];
	__u8 addr[16];
};

/* VIP flags: which port list narrows the balanced traffic of this VIP. */
#define SK_FARM_VIP_PORTS_OWN (1u << 0)		/* per-VIP rules (key = this VIP) */
#define SK_FARM_VIP_PORTS_GLOBAL (1u << 1)	/* global rules (key family 0) */

struct sk_farm_vip_value {
	__u32 flags;
};

/*
 * Port map key: (VIP or zero key, L4 protocol, destination port in network
 * order). Value is unused (presence is the rule). With no port flag, every
 * packet to the VIP is balanced. With a flag, TCP/UDP packets whose port is not
 * listed pass untouched on every node (the VIP is not balanced on that port);
 * packets without visible ports (fragments, ICMP) are always balanced.
 */
struct sk_farm_port_key {
	struct sk_farm_vip_key vip;
	__u8 proto;
	__u8 pad;
	__u16 port;
};

/*
 * Config array (one entry). The owner map holds two tables of `buckets`
 * entries each; active_table (0 or 1) says which one readers use. The loader
 * fills the inactive table, then flips active_table with one 32-bit store, so
 * a packet always sees one whole, consistent table.
 */
struct sk_farm_config {
	__u32 active_table;
	__u32 pad;
};

#endif
