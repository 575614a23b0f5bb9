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
 * VIP table: an array of SK_FARM_VIP_SLOTS slots per table, two tables (the
 * loader fills the inactive one, then flips sk_farm_config.vip_table). A VIP
 * sits at slot sk_farm_vip_home(salt, addr) or, on collision, in one of the
 * next SK_FARM_VIP_MAX_PROBE - 1 slots (linear probing, wrapping); an empty
 * slot (family 0) ends the search. 4x SK_FARM_MAX_VIPS slots keep probes
 * short; the loader picks a salt that keeps every VIP within the bound. An
 * array lookup is inlined by the verifier: no helper call per packet.
 */
#define SK_FARM_VIP_SLOTS_LOG2 10
#define SK_FARM_VIP_SLOTS (1u << SK_FARM_VIP_SLOTS_LOG2)
#define SK_FARM_VIP_MAX_PROBE 8

/*
 * Global port rules (every VIP): a bitmap of 2 x 65536 bits in __u64 words,
 * TCP ports in words [0, 1024), UDP in [1024, 2048); port p (host order) is
 * bit p % 64 of word p / 64 of its half.
 */
#define SK_FARM_PORT_WORDS 2048

/*
 * Maps are pinned by name (LIBBPF_PIN_BY_NAME) under <pin root>/<module>/:
 * farm_vips, farm_ports, farm_port_bits, farm_owners, farm_config,
 * farm_verdicts, farm_bkt_pkts. C++ reaches them through the skeleton (and
 * bpf_map__name), never by spelling the names again.
 */

/*
 * Verdicts. Each packet is counted once, in one per-CPU counter: the two
 * balanced verdicts (PASS_OWNED, DROP_NOT_OWNED) per bucket in farm_bkt_pkts
 * (struct sk_farm_bucket_count; their sums are the totals), the others in
 * farm_verdicts at their index (entries 1 and 2 stay zero there). The two
 * flow verdicts only occur in draining buckets (struct sk_farm_owner).
 */
enum sk_farm_verdict {
	SK_FARM_PASS_NOT_VIP = 0,	/* not for a VIP (or ARP/ND): untouched */
	SK_FARM_PASS_OWNED = 1,		/* for a VIP, bucket owned here */
	SK_FARM_DROP_NOT_OWNED = 2,	/* for a VIP, bucket owned elsewhere */
	SK_FARM_PASS_MALFORMED = 3,	/* could not parse L2/L3: left to the kernel */
	SK_FARM_PASS_PORT_UNLISTED = 4,	/* for a VIP, but its port is not balanced: untouched */
	SK_FARM_PASS_FLOW_HERE = 5,	/* draining bucket (struct sk_farm_owner), not ours, its connection is */
	SK_FARM_DROP_FLOW_ELSEWHERE = 6,/* draining bucket, ours, but its connection lives on drain_from */
	SK_FARM_VERDICT_MAX = 7,
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
 * A VIP: family 4 or 6 (0: empty slot), address in network order (IPv4 in
 * addr[0], the rest zero).
 */
struct sk_farm_vip_key {
	__u8 family;
	__u8 pad[3];
	__u32 addr[4];
};

/* VIP flags: which port list narrows the balanced traffic of this VIP. */
#define SK_FARM_VIP_PORTS_OWN (1u << 0)		/* per-VIP rules in farm_ports */
#define SK_FARM_VIP_PORTS_GLOBAL (1u << 1)	/* global rules in farm_port_bits */

/* One slot of the VIP table (farm_vips). */
struct sk_farm_vip_slot {
	struct sk_farm_vip_key vip;
	__u32 flags;
};

/*
 * Per-VIP port rule (hash map farm_ports): (VIP, L4 protocol, destination port
 * in network order); the value is unused (presence is the rule). With no port
 * flag, every packet to the VIP is balanced. With a flag, TCP/UDP packets whose
 * port is in neither the VIP's own nor the global list pass untouched on every
 * node (the VIP is not balanced on that port); packets without visible ports
 * (fragments, ICMP) are always balanced.
 */
struct sk_farm_port_key {
	struct sk_farm_vip_key vip;
	__u8 proto;
	__u8 pad;
	__u16 port;
};

/*
 * One bucket of an owner table (farm_owners). node owns it (SK_FARM_NODE_NONE:
 * nobody, dropped everywhere). drain_from is the node that owned it before,
 * for as long as its connections may drain (SK_FARM_NODE_NONE otherwise). In
 * a draining bucket, on the owner and on drain_from only, a TCP segment other
 * than a SYN is kept by the node that holds its socket (bpf_skc_lookup_tcp; a
 * listener counts only for the ACK of a SYN cookie it issued, TIME_WAIT not at
 * all) and dropped by the other; SYNs and everything else
 * go to the owner. So a handover between two live nodes resets no connection:
 * the old node keeps serving its flows while the new one takes new clients.
 */
struct sk_farm_owner {
	__u32 node;
	__u32 drain_from;
};

/* Per-CPU packet counts of one bucket (farm_bkt_pkts, one entry per bucket). */
struct sk_farm_bucket_count {
	__u64 kept;	/* SK_FARM_PASS_OWNED */
	__u64 dropped;	/* SK_FARM_DROP_NOT_OWNED */
};

/*
 * Config array (one entry, read once per packet). The owner map holds two
 * tables of `buckets` entries each; active_table (0 or 1) says which one
 * readers use; vip_table likewise for the VIP map, whose table t is searched
 * with vip_salt[t]. The loader fills an inactive table, then flips the switch
 * (0 <-> 1: a byte-wise copy cannot tear it), so a packet always sees one
 * whole, consistent table of each kind.
 */
struct sk_farm_config {
	__u32 active_table;
	__u32 vip_table;
	__u32 vip_salt[2];
};

#endif
