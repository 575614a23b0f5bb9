// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Farm XDP filter: packets to a VIP are hashed into a bucket; only the node
 * owning the bucket keeps them (dest MAC rewritten to its own MAC), the others
 * drop them. Everything else passes untouched. Constants in farm_shared.h.
 * Cost (tests/bench/farm): plain TCP/UDP over untagged IPv4/IPv6 takes an
 * inline fast path with fixed offsets and no copies; the hot path has array
 * lookups only, which the verifier inlines (no helper call), and one per-CPU
 * counter per packet. Out of line, as global functions the verifier checks
 * once: the rest of the general path after its parse, and the VIP probe past
 * a home slot that holds another VIP. The per-VIP port hash map is read only
 * for VIPs with rules of their own.
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

/* Two tables of SK_FARM_VIP_SLOTS slots (see SK_FARM_VIP_SLOTS and struct sk_farm_config). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SK_FARM_VIP_SLOTS);
	__type(key, __u32);
	__type(value, struct sk_farm_vip_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, SK_FARM_MAX_PORT_RULES);
	__type(key, struct sk_farm_port_key);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SK_FARM_PORT_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_port_bits SEC(".maps");

/* Two tables of bucket_count entries (see struct sk_farm_config); resized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2 * SK_FARM_MAX_BUCKETS);
	__type(key, __u32);
	__type(value, struct sk_farm_owner);
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

/* Packets hashed into each bucket, kept or dropped here; resized by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SK_FARM_MAX_BUCKETS);
	__type(key, __u32);
	__type(value, struct sk_farm_bucket_count);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} farm_bkt_pkts SEC(".maps");

static __always_inline void count(void *map, __u32 key)
{
	__u64 *v = bpf_map_lookup_elem(map, &key);

	if (v)
		*v += 1;
}

/*
 * Flags of the VIP `vip` in VIP table `table`, or -1 when it is not a VIP,
 * searching from slot `from` on (see SK_FARM_VIP_SLOTS): at most
 * SK_FARM_VIP_MAX_PROBE slots, stopping at the first empty one. Only reached
 * when the home slot holds another VIP (rare: the loader picks a salt that
 * avoids it where it can), so it stays out of line.
 */
__noinline int sk_farm_vip_probe(const struct sk_farm_vip_key *vip, __u32 table, __u32 from)
{
	int i;

	if (!vip)
		return -1;
	table &= 1;
#pragma unroll
	for (i = 1; i < SK_FARM_VIP_MAX_PROBE; i++) {
		__u32 idx = table * SK_FARM_VIP_SLOTS + ((from + i) & (SK_FARM_VIP_SLOTS - 1));
		struct sk_farm_vip_slot *s = bpf_map_lookup_elem(&farm_vips, &idx);

		if (!s || !s->vip.family)
			return -1;
		if (s->vip.family == vip->family && s->vip.addr[0] == vip->addr[0] &&
		    s->vip.addr[1] == vip->addr[1] && s->vip.addr[2] == vip->addr[2] &&
		    s->vip.addr[3] == vip->addr[3])
			return (int)s->flags;
	}
	return -1;
}

/* The VIP key of a destination (family 4: dst[0] only). */
static __always_inline void dst_key(__u8 family, const __u32 *dst, struct sk_farm_vip_key *vip)
{
	vip->family = family;
	vip->pad[0] = vip->pad[1] = vip->pad[2] = 0;
	vip->addr[0] = dst[0];
	if (family == 4) {
		vip->addr[1] = vip->addr[2] = vip->addr[3] = 0;
	} else {
		vip->addr[1] = dst[1];
		vip->addr[2] = dst[2];
		vip->addr[3] = dst[3];
	}
}

/*
 * VIP flags of a destination (in the packet or a copy), or -1 when it is not
 * a VIP. The home slot is checked here, inline; only a collision builds a key
 * and calls out to the probe.
 */
static __always_inline int vip_flags(const struct sk_farm_config *cfg, __u8 family, const __u32 *dst)
{
	__u32 table = cfg->vip_table & 1;
	__u32 salt = cfg->vip_salt[table];
	__u32 d0 = dst[0], d1 = 0, d2 = 0, d3 = 0, home, idx;
	struct sk_farm_vip_key vip;
	struct sk_farm_vip_slot *s;

	if (family == 4) {
		home = sk_farm_vip_home(salt, d0, 0, 0, 0, SK_FARM_VIP_SLOTS_LOG2);
	} else {
		d1 = dst[1];
		d2 = dst[2];
		d3 = dst[3];
		home = sk_farm_vip_home(salt, d0, d1, d2, d3, SK_FARM_VIP_SLOTS_LOG2);
	}
	idx = table * SK_FARM_VIP_SLOTS + home;
	s = bpf_map_lookup_elem(&farm_vips, &idx);
	if (!s || !s->vip.family)
		return -1;
	/* An IPv4 slot's addr[1..3] are zero (the loader's keys): its family and addr[0] decide. */
	if (s->vip.family == family && s->vip.addr[0] == d0 &&
	    (family == 4 || (s->vip.addr[1] == d1 && s->vip.addr[2] == d2 && s->vip.addr[3] == d3)))
		return (int)s->flags;
	dst_key(family, dst, &vip);
	return sk_farm_vip_probe(&vip, table, home);
}

/* Reads the first 4 bytes of a TCP/UDP header: source and destination ports. */
static __always_inline int read_ports(struct sk_cursor *c, __u16 *sport, __u16 *dport)
{
	__u16 *p;

	if (sk_pull(c, 4, (void **)&p))
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
static __always_inline int quoted_client(struct sk_cursor *c, __u8 family, __u32 *key,
					 __u16 *port, int *has_port)
{
	struct sk_l3 in;
	__u16 sport, dport;

	if (family == 4) {
		if (sk_parse_ipv4(c, &in))
			return -1;
	} else if (sk_parse_ipv6_fixed(c, &in)) {
		return -1;
	}
	__builtin_memcpy(key, in.dst, 16);
	if (!in.frag && in.l4_here && (in.proto == SK_IPPROTO_TCP || in.proto == SK_IPPROTO_UDP) &&
	    !read_ports(c, &sport, &dport)) {
		*port = dport;
		*has_port = 1;
	}
	return 0;
}

/* Is (proto, port) balanced for this VIP? Only called when the VIP has a port flag. */
static __always_inline int port_listed(__u8 family, const __u32 *dst, __u32 flags, __u8 proto, __u16 port)
{
	if (flags & SK_FARM_VIP_PORTS_GLOBAL) {
		__u16 p = bpf_ntohs(port);
		__u32 word = (proto == SK_IPPROTO_UDP ? SK_FARM_PORT_WORDS / 2 : 0) + (p >> 6);
		__u64 *bits = bpf_map_lookup_elem(&farm_port_bits, &word);

		if (bits && (*bits & (1ull << (p & 63))))
			return 1;
	}
	if (flags & SK_FARM_VIP_PORTS_OWN) {
		struct sk_farm_port_key pk = {};

		dst_key(family, dst, &pk.vip);
		pk.proto = proto;
		pk.port = port;
		if (bpf_map_lookup_elem(&farm_ports, &pk))
			return 1;
	}
	return 0;
}

/* A TCP segment from a client to a VIP, as the socket lookup and the cookie check take it. */
struct sk_farm_flow {
	struct bpf_sock_tuple tuple;	/* client -> VIP, network order */
	__u32 tuple_len;		/* sizeof tuple.ipv4 or tuple.ipv6 */
	__u32 th[5];			/* the segment's TCP header */
};

/*
 * Whether the final ACK of a handshake answers a SYN cookie that listener sk issued
 * (the kernel sends cookies when the SYN queue overflows: no request socket then).
 * The helper reads only the addresses of the IP header: rebuilt here from the tuple.
 */
static __always_inline int syncookie_here(struct bpf_sock *sk, const struct sk_farm_flow *f)
{
	struct tcphdr *th = (struct tcphdr *)f->th;

	if (f->tuple_len == sizeof(f->tuple.ipv4)) {
		struct iphdr ip = {};

		ip.version = 4;
		ip.ihl = 5;
		ip.protocol = SK_IPPROTO_TCP;
		ip.saddr = f->tuple.ipv4.saddr;
		ip.daddr = f->tuple.ipv4.daddr;
		return bpf_tcp_check_syncookie(sk, &ip, sizeof(ip), th, sizeof(f->th)) == 0;
	} else {
		struct ipv6hdr ip6 = {};

		ip6.version = 6;
		ip6.nexthdr = SK_IPPROTO_TCP;
		__builtin_memcpy(&ip6.saddr, f->tuple.ipv6.saddr, 16);
		__builtin_memcpy(&ip6.daddr, f->tuple.ipv6.daddr, 16);
		return bpf_tcp_check_syncookie(sk, &ip6, sizeof(ip6), th, sizeof(f->th)) == 0;
	}
}

/*
 * Whether this node holds a live socket of the flow (established, closing or a
 * request socket of its handshake), in the namespace of the receiving device.
 * A listener counts only for the ACK of a SYN cookie it issued. TIME_WAIT does
 * not count: a client may reuse that 4-tuple for a new connection, which
 * belongs to the owner. Out of line: only segments in draining buckets (struct
 * sk_farm_owner) pay for the lookup.
 */
__noinline int sk_farm_flow_here(struct xdp_md *ctx, struct sk_farm_flow *f)
{
	struct bpf_sock *sk;
	__u32 len;
	int here;

	if (!ctx || !f)
		return 0;
	/* The size as one of two constants: the verifier cannot bound a length read from memory. */
	len = f->tuple_len == sizeof(f->tuple.ipv4) ? sizeof(f->tuple.ipv4) : sizeof(f->tuple.ipv6);
	sk = bpf_skc_lookup_tcp(ctx, &f->tuple, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	if (sk->state == BPF_TCP_LISTEN)
		here = syncookie_here(sk, f);
	else
		here = sk->state != BPF_TCP_TIME_WAIT;
	bpf_sk_release(sk);
	return here;
}

/*
 * A packet to a VIP, hashed on key (1 or 4 words) and, with has_port, the
 * client port: counts it in its bucket, keeps it (destination MAC rewritten)
 * when the bucket is ours, drops it otherwise. In a draining bucket (see
 * struct sk_farm_owner) a TCP segment from the client decides by its socket:
 * proto with has_port says whether the packet is one, l4 (a packet pointer,
 * bounds checked here) is its header, key/dst/sport/dport its flow.
 */
static __always_inline __u32 balance(struct xdp_md *ctx, const struct sk_farm_config *cfg, struct ethhdr *eth,
				     void *end, const __u32 *key, __u8 family, int has_port, __u16 sport,
				     const __u32 *dst, __u16 dport, __u8 proto, const __u8 *l4)
{
	struct sk_farm_bucket_count *counts;
	struct sk_farm_owner *owner;
	__u32 bucket, idx, verdict;

	bucket = sk_farm_hash(hash_seed, key, family == 4 ? 1 : 4, hash_mode == SK_FARM_HASH_IP_PORT && has_port,
			      has_port ? sport : 0) & (bucket_count - 1);
	idx = (cfg->active_table & 1) * bucket_count + bucket;
	owner = bpf_map_lookup_elem(&farm_owners, &idx);
	counts = bpf_map_lookup_elem(&farm_bkt_pkts, &bucket);
	/* eth + 1 <= end was proven by the parse; the verifier wants it again here. */
	if (!owner || node_id == SK_FARM_NODE_NONE || (void *)(eth + 1) > end)
		goto drop;
	verdict = owner->node == node_id ? SK_FARM_PASS_OWNED : SK_FARM_DROP_NOT_OWNED;
	/* A segment shorter than a TCP header is no connection's: the owner's kernel drops it. */
	if (owner->drain_from != SK_FARM_NODE_NONE && has_port && proto == SK_IPPROTO_TCP &&
	    (void *)(l4 + 20) <= end && !(l4[13] & SK_TCP_SYN) &&
	    (verdict == SK_FARM_PASS_OWNED || owner->drain_from == node_id)) {
		struct sk_farm_flow f = {};

		if (family == 4) {
			f.tuple.ipv4.saddr = key[0];
			f.tuple.ipv4.daddr = dst[0];
			f.tuple.ipv4.sport = sport;
			f.tuple.ipv4.dport = dport;
			f.tuple_len = sizeof(f.tuple.ipv4);
		} else {
			__builtin_memcpy(f.tuple.ipv6.saddr, key, 16);
			__builtin_memcpy(f.tuple.ipv6.daddr, dst, 16);
			f.tuple.ipv6.sport = sport;
			f.tuple.ipv6.dport = dport;
			f.tuple_len = sizeof(f.tuple.ipv6);
		}
		__builtin_memcpy(f.th, l4, 20);
		if (sk_farm_flow_here(ctx, &f)) {
			if (verdict != SK_FARM_PASS_OWNED)
				verdict = SK_FARM_PASS_FLOW_HERE;
		} else if (verdict == SK_FARM_PASS_OWNED) {
			verdict = SK_FARM_DROP_FLOW_ELSEWHERE;
		}
	}
	if (verdict == SK_FARM_DROP_NOT_OWNED)
		goto drop;
	if (verdict == SK_FARM_DROP_FLOW_ELSEWHERE)
		return verdict;
	/* Byte by byte: memcpy would drop the volatile and fold in the zero initializer. */
	eth->h_dest[0] = own_mac[0];
	eth->h_dest[1] = own_mac[1];
	eth->h_dest[2] = own_mac[2];
	eth->h_dest[3] = own_mac[3];
	eth->h_dest[4] = own_mac[4];
	eth->h_dest[5] = own_mac[5];
	if (verdict == SK_FARM_PASS_OWNED && counts)
		counts->kept++;
	return verdict;
drop:
	if (counts)
		counts->dropped++;
	return SK_FARM_DROP_NOT_OWNED;
}

/* Fast path: TCP/UDP with ports visible, addresses read in place. */
static __always_inline __u32 classify_ports(struct xdp_md *ctx, struct ethhdr *eth, void *end, __u8 family,
					    const __u32 *src, const __u32 *dst, __u8 proto, const __u16 *ports)
{
	struct sk_farm_config *cfg;
	__u32 zero = 0;
	int flags;

	cfg = bpf_map_lookup_elem(&farm_config, &zero);
	if (!cfg)
		return SK_FARM_PASS_NOT_VIP;
	flags = vip_flags(cfg, family, dst);
	if (flags < 0)
		return SK_FARM_PASS_NOT_VIP;
	if ((flags & (SK_FARM_VIP_PORTS_OWN | SK_FARM_VIP_PORTS_GLOBAL)) &&
	    !port_listed(family, dst, flags, proto, ports[1]))
		return SK_FARM_PASS_PORT_UNLISTED;
	return balance(ctx, cfg, eth, end, src, family, 1, ports[0], dst, ports[1], proto, (const __u8 *)ports);
}

/*
 * The general path after its L3 parse: l3 as parsed, the L4 header (or what
 * follows the last IPv6 extension header walked) at l4_off from the packet's
 * start. A global function: the verifier checks it once, not once for every
 * path through the VLAN tags and the extension header walk (inline, those
 * multiplied its work about threefold).
 */
__noinline int sk_farm_decide(struct xdp_md *ctx, const struct sk_l3 *l3, __u32 l4_off)
{
	struct sk_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct ethhdr *eth = c.pos;
	struct sk_farm_config *cfg;
	__u32 key[4], zero = 0;
	__u16 sport = 0, dport = 0;
	const __u8 *l4;
	int has_port = 0, flags;

	/* The bound lets the verifier add header lengths to the offset (XDP sees at most a page anyway). */
	if (!l3 || l4_off > 0x7fff)
		return SK_FARM_PASS_MALFORMED;
	c.pos += l4_off;
	l4 = c.pos;
	cfg = bpf_map_lookup_elem(&farm_config, &zero);
	if (!cfg)
		return SK_FARM_PASS_NOT_VIP;
	flags = vip_flags(cfg, l3->family, l3->dst);
	if (flags < 0)
		return SK_FARM_PASS_NOT_VIP;

	/* Default key: the client (outer source); ports only when visible and not a fragment. */
	__builtin_memcpy(key, l3->src, 16);
	if (!l3->frag && l3->l4_here) {
		if (l3->proto == SK_IPPROTO_TCP || l3->proto == SK_IPPROTO_UDP) {
			if (!read_ports(&c, &sport, &dport)) {
				has_port = 1;
				if ((flags & (SK_FARM_VIP_PORTS_OWN | SK_FARM_VIP_PORTS_GLOBAL)) &&
				    !port_listed(l3->family, l3->dst, flags, l3->proto, dport))
					return SK_FARM_PASS_PORT_UNLISTED;
			}
		} else if (l3->proto == SK_IPPROTO_ICMP && l3->family == 4) {
			__u8 *icmp;

			if (!sk_pull(&c, 8, (void **)&icmp) && sk_icmp4_is_error(icmp[0]))
				quoted_client(&c, 4, key, &sport, &has_port);
		} else if (l3->proto == SK_IPPROTO_ICMPV6 && l3->family == 6) {
			__u8 *icmp;

			if (!sk_pull(&c, 8, (void **)&icmp)) {
				if (sk_icmp6_is_nd(icmp[0]))
					return SK_FARM_PASS_NOT_VIP;	/* NUD probes to the VIP: every node answers for itself */
				if (sk_icmp6_is_error(icmp[0]))
					quoted_client(&c, 6, key, &sport, &has_port);
			}
		}
	}
	/* quoted_client stores the client port in sport; outer TCP/UDP has it there too. */
	return balance(ctx, cfg, eth, c.end, key, l3->family, has_port, sport, l3->dst, dport, l3->proto, l4);
}

/* The verdict for one packet (enum sk_farm_verdict); rewrites the destination MAC of kept ones. */
static __always_inline __u32 classify(struct xdp_md *ctx)
{
	struct sk_cursor c = {
		.pos = (void *)(long)ctx->data,
		.end = (void *)(long)ctx->data_end,
	};
	struct ethhdr *eth = c.pos;
	struct sk_l3 l3;
	__u16 eth_proto;

	/*
	 * Fast paths, the bulk of the traffic: untagged IPv4 without options and
	 * IPv6 without extension headers, to TCP or UDP, not fragmented. Fixed
	 * offsets and one bounds check; the verdict is the one the general path
	 * below reaches for the same packet.
	 */
	if (c.pos + sizeof(struct ethhdr) + sizeof(struct iphdr) + 4 <= c.end &&
	    eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if (*(__u8 *)iph == 0x45 && !(iph->frag_off & bpf_htons(SK_IP_MF | SK_IP_OFFSET)) &&
		    (iph->protocol == SK_IPPROTO_TCP || iph->protocol == SK_IPPROTO_UDP))
			return classify_ports(ctx, eth, c.end, 4, (__u32 *)&iph->saddr, (__u32 *)&iph->daddr,
					      iph->protocol, (__u16 *)(iph + 1));
	}
	if (c.pos + sizeof(struct ethhdr) + sizeof(struct ipv6hdr) + 4 <= c.end &&
	    eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);

		if (ip6h->version == 6 && (ip6h->nexthdr == SK_IPPROTO_TCP || ip6h->nexthdr == SK_IPPROTO_UDP))
			return classify_ports(ctx, eth, c.end, 6, (__u32 *)&ip6h->saddr, (__u32 *)&ip6h->daddr,
					      ip6h->nexthdr, (__u16 *)(ip6h + 1));
	}

	/* The general path: VLAN tags, IPv4 options, extension headers, fragments, ICMP, short packets. */
	if (sk_parse_eth(&c, &eth_proto))
		return SK_FARM_PASS_MALFORMED;
	if (eth_proto == bpf_htons(ETH_P_IP)) {
		if (sk_parse_ipv4(&c, &l3))
			return SK_FARM_PASS_MALFORMED;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		if (sk_parse_ipv6(&c, &l3))
			return SK_FARM_PASS_MALFORMED;
	} else {
		return SK_FARM_PASS_NOT_VIP;
	}
	return sk_farm_decide(ctx, &l3, (__u32)(c.pos - (void *)(long)ctx->data));
}

SEC("xdp")
int sk_farm_filter(struct xdp_md *ctx)
{
	__u32 verdict = classify(ctx);

	/* The one exit. Balanced verdicts were counted per bucket (see enum sk_farm_verdict). */
	if (verdict == SK_FARM_DROP_NOT_OWNED)
		return XDP_DROP;
	if (verdict != SK_FARM_PASS_OWNED)
		count(&farm_verdicts, verdict);
	return verdict == SK_FARM_DROP_FLOW_ELSEWHERE ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
