// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Farm XDP filter: packets to a VIP are hashed into a bucket; only the node
 * owning the bucket keeps them (dest MAC rewritten to its own MAC), the others
 * drop them. Everything else passes untouched. Constants in farm_shared.h.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "farm_shared.h"
#include "farm_hash.h"
#include "farm_parse.h"

/* Knobs fixed at load time (a change of any of them means a reload). */
const volatile __u32 hash_mode = SK_FARM_HASH_IP;
const volatile __u32 bucket_count = SK_FARM_DEFAULT_BUCKETS;	/* power of two */
const volatile __u32 hash_seed = 0;
const volatile __u32 node_id = SK_FARM_NODE_NONE;
const volatile __u8 own_mac[6] = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SK_FARM_MAX_VIPS);
	__type(key, struct sk_farm_vip_key);
	__type(value, struct sk_farm_vip_value);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SK_FARM_MAX_PORT_RULES);
	__type(key, struct sk_farm_port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_ports SEC(".maps");

/* Two tables of bucket_count entries (see struct sk_farm_config); resized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SK_FARM_MAX_BUCKETS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sk_farm_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SK_FARM_VERDICT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_verdicts SEC(".maps");

/* Packets hashed into each bucket (owned here or not); resized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SK_FARM_MAX_BUCKETS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_bkt_pkts SEC(".maps");

static __always_inline void count(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		*v += 1;
}

/* Reads the first 4 bytes of a TCP/UDP header: source and destination ports. */
static __always_inline int read_ports(struct sk_cursor *c, __u16 *sport, __u16 *dport)
{
	__u16 *p = sk_pull(c, 4);

	if (!p)
		return -1;
	*sport = p[0];
	*dport = p[1];
	return 0;
}

/*
 * An ICMP error quotes our own packet (VIP -> client): its destination is the
 * client, its destination port the client's source port. Fills the hash key
 * from it; returns -1 when the quote is unusable (caller keeps the outer key).
 * A quoted IPv6 packet's extension headers are not walked (a second walk makes
 * the verifier's state space explode): such a quote hashes on the client IP
 * only. Our own replies (TCP/UDP from the local stack) rarely carry any.
 */
static __always_inline int quoted_client(struct sk_cursor *c, __u8 family, __u32 *addr,
					 __u16 *port, int *has_port)
{
	struct sk_l3 in = {};
	__u16 sport, dport;

	if (family == 4) {
		if (sk_parse_ipv4(c, &in))
			return -1;
	} else if (sk_parse_ipv6_fixed(c, &in)) {
		return -1;
	}
	__builtin_memcpy(addr, in.dst, 16);
	*has_port = 0;
	if (!in.frag && in.l4_here && (in.proto == SK_IPPROTO_TCP || in.proto == SK_IPPROTO_UDP) &&
	    !read_ports(c, &sport, &dport)) {
		*port = dport;
		*has_port = 1;
	}
	return 0;
}

/* Is (proto, port) balanced for this VIP? Only called when the VIP has a port flag. */
static __always_inline int port_listed(const struct sk_farm_vip_key *vip, __u32 flags,
				       __u8 proto, __u16 port)
{
	struct sk_farm_port_key pk = {};

	pk.proto = proto;
	pk.port = port;
	if (flags & SK_FARM_VIP_PORTS_OWN) {
		pk.vip = *vip;
		if (bpf_map_lookup_elem(&farm_ports, &pk))
			return 1;
	}
	if (flags & SK_FARM_VIP_PORTS_GLOBAL) {
		__builtin_memset(&pk.vip, 0, sizeof(pk.vip));
		if (bpf_map_lookup_elem(&farm_ports, &pk))
			return 1;
	}
	return 0;
}

SEC("xdp")
int sk_farm_filter(struct xdp_md *ctx)
{
	struct sk_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct ethhdr *eth = c.pos;
	struct sk_farm_vip_key vip = {};
	struct sk_farm_vip_value *vv;
	struct sk_farm_config *cfg;
	struct sk_l3 l3 = {};
	__u32 verdict = SK_FARM_PASS_MALFORMED;
	__u32 action = XDP_PASS;
	__u32 key[4], bucket, idx, zero = 0, *owner;
	__u16 eth_proto, sport = 0, dport = 0;
	int has_port = 0;

	if (sk_parse_eth(&c, &eth_proto))
		goto out;
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		if (sk_parse_ipv4(&c, &l3))
			goto out;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		if (sk_parse_ipv6(&c, &l3))
			goto out;
	} else {
		verdict = SK_FARM_PASS_NOT_VIP;
		goto out;
	}

	verdict = SK_FARM_PASS_NOT_VIP;
	vip.family = l3.family;
	__builtin_memcpy(vip.addr, l3.dst, 16);
	vv = bpf_map_lookup_elem(&farm_vips, &vip);
	if (!vv)
		goto out;

	/* Default key: the client (outer source); ports only when visible and not a fragment. */
	__builtin_memcpy(key, l3.src, 16);
	if (!l3.frag && l3.l4_here) {
		if (l3.proto == SK_IPPROTO_TCP || l3.proto == SK_IPPROTO_UDP) {
			if (!read_ports(&c, &sport, &dport)) {
				has_port = 1;
				if ((vv->flags & (SK_FARM_VIP_PORTS_OWN | SK_FARM_VIP_PORTS_GLOBAL)) &&
				    !port_listed(&vip, vv->flags, l3.proto, dport)) {
					verdict = SK_FARM_PASS_PORT_UNLISTED;
					goto out;
				}
			}
		} else if (l3.proto == SK_IPPROTO_ICMP && l3.family == 4) {
			__u8 *icmp = sk_pull(&c, 8);

			if (icmp && sk_icmp4_is_error(icmp[0]))
				quoted_client(&c, 4, key, &sport, &has_port);
		} else if (l3.proto == SK_IPPROTO_ICMPV6 && l3.family == 6) {
			__u8 *icmp = sk_pull(&c, 8);

			if (icmp && sk_icmp6_is_nd(icmp[0]))
				goto out;	/* NUD probes to the VIP: every node answers for itself */
			if (icmp && sk_icmp6_is_error(icmp[0]))
				quoted_client(&c, 6, key, &sport, &has_port);
		}
	}
	/* quoted_client stores the client port in sport; outer TCP/UDP has it there too. */
	bucket = sk_farm_hash(hash_seed, key, l3.family == 4 ? 1 : 4,
			      hash_mode == SK_FARM_HASH_IP_PORT && has_port,
			      has_port ? sport : 0) & (bucket_count - 1);
	count(&farm_bkt_pkts, bucket);

	verdict = SK_FARM_DROP_NOT_OWNED;
	action = XDP_DROP;
	cfg = bpf_map_lookup_elem(&farm_config, &zero);
	if (!cfg)
		goto out;
	idx = (cfg->active_table & 1) * bucket_count + bucket;
	owner = bpf_map_lookup_elem(&farm_owners, &idx);
	if (!owner || *owner != node_id || node_id == SK_FARM_NODE_NONE)
		goto out;
	if ((void *)(eth + 1) > c.end)	/* proven by sk_parse_eth; the verifier wants it here */
		goto out;
	/* Byte by byte: memcpy would drop the volatile and fold in the zero initializer. */
	eth->h_dest[0] = own_mac[0];
	eth->h_dest[1] = own_mac[1];
	eth->h_dest[2] = own_mac[2];
	eth->h_dest[3] = own_mac[3];
	eth->h_dest[4] = own_mac[4];
	eth->h_dest[5] = own_mac[5];
	verdict = SK_FARM_PASS_OWNED;
	action = XDP_PASS;
out:
	count(&farm_verdicts, verdict);
	return action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
