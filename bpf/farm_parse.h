/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Header-only packet parse helpers for the farm XDP filter: a cursor over the
 * packet and one helper per header. Each helper returns 0 and advances the
 * cursor, or -1 when the header is truncated or invalid (cursor then unusable).
 * Helpers hand headers out through a pointer argument and report failure in
 * their return value: a NULL-returning pull costs a pointer test per header.
 */
#ifndef SK_FARM_PARSE_H
#define SK_FARM_PARSE_H

#include <bpf/bpf_endian.h>

#ifndef ETH_P_IP
#define ETH_P_IP 0x0800
#endif
#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif
#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define SK_IP_MF 0x2000
#define SK_IP_OFFSET 0x1FFF
#define SK_IPPROTO_HOPOPTS 0
#define SK_IPPROTO_ICMP 1
#define SK_IPPROTO_TCP 6
#define SK_IPPROTO_UDP 17
#define SK_TCP_SYN 0x02	/* in byte 13 of the TCP header */
#define SK_IPPROTO_ROUTING 43
#define SK_IPPROTO_FRAGMENT 44
#define SK_IPPROTO_AH 51
#define SK_IPPROTO_ICMPV6 58
#define SK_IPPROTO_DSTOPTS 60
#define SK_MAX_VLAN_TAGS 2

struct sk_cursor {
	void *pos;
	void *end;
};

/*
 * What the L3 parse found; addresses as raw network-order words (IPv4: word 0,
 * the rest zero). Copies, not pointers into the packet: a pointer's packet
 * range differs on every path through the extension header walk, which
 * multiplies the states the verifier explores about threefold.
 */
struct sk_l3 {
	__u32 src[4];
	__u32 dst[4];
	__u8 family;	/* 4 or 6 */
	__u8 proto;	/* L4 protocol, or the last unwalked IPv6 extension header */
	__u8 frag;	/* part of a fragmented datagram (first fragment included) */
	__u8 l4_here;	/* cursor is at the L4 header (not a non-first fragment) */
};

/* *hdr = the next len bytes, advancing the cursor past them; -1 when the packet is shorter. */
static __always_inline int sk_pull(struct sk_cursor *c, __u32 len, void **hdr)
{
	void *p = c->pos;

	if (p + len > c->end)
		return -1;
	c->pos = p + len;
	*hdr = p;
	return 0;
}

/* Ethernet plus up to two 802.1Q / 802.1ad tags; *proto gets the inner ethertype (network order). */
static __always_inline int sk_parse_eth(struct sk_cursor *c, __u16 *proto)
{
	struct ethhdr *eth;
	__u16 type;
	int i;

	if (sk_pull(c, sizeof(*eth), (void **)&eth))
		return -1;
	type = eth->h_proto;
#pragma unroll
	for (i = 0; i < SK_MAX_VLAN_TAGS; i++) {
		struct vlan_hdr *vh;

		if (type != bpf_htons(ETH_P_8021Q) && type != bpf_htons(ETH_P_8021AD))
			break;
		if (sk_pull(c, sizeof(*vh), (void **)&vh))
			return -1;
		type = vh->h_vlan_encapsulated_proto;
	}
	*proto = type;
	return 0;
}

static __always_inline int sk_parse_ipv4(struct sk_cursor *c, struct sk_l3 *l3)
{
	struct iphdr *iph;
	__u32 vihl, hlen;
	__u16 frag_off;

	if (sk_pull(c, sizeof(*iph), (void **)&iph))
		return -1;
	/* Version and IHL share a byte: one load, one range check (version 4, IHL >= 5). */
	vihl = *(__u8 *)iph;
	if (vihl - 0x45 > 0x0a)
		return -1;
	hlen = (vihl & 0x0f) * 4;
	/* Options: skip them (the verifier sees hlen bounded to 60). */
	if ((void *)iph + hlen > c->end)
		return -1;
	c->pos = (void *)iph + hlen;
	l3->family = 4;
	l3->src[0] = iph->saddr;
	l3->dst[0] = iph->daddr;
	l3->src[1] = l3->src[2] = l3->src[3] = 0;
	l3->dst[1] = l3->dst[2] = l3->dst[3] = 0;
	l3->proto = iph->protocol;
	frag_off = iph->frag_off;
	l3->frag = (frag_off & bpf_htons(SK_IP_MF | SK_IP_OFFSET)) != 0;
	l3->l4_here = (frag_off & bpf_htons(SK_IP_OFFSET)) == 0;
	return 0;
}

/* The fixed IPv6 header only: proto is its next header, extension headers not walked. */
static __always_inline int sk_parse_ipv6_fixed(struct sk_cursor *c, struct sk_l3 *l3)
{
	struct ipv6hdr *ip6h;

	if (sk_pull(c, sizeof(*ip6h), (void **)&ip6h) || ip6h->version != 6)
		return -1;
	l3->family = 6;
	__builtin_memcpy(l3->src, &ip6h->saddr, 16);
	__builtin_memcpy(l3->dst, &ip6h->daddr, 16);
	l3->frag = ip6h->nexthdr == SK_IPPROTO_FRAGMENT;
	l3->l4_here = 1;
	l3->proto = ip6h->nexthdr;
	return 0;
}

/*
 * IPv6 plus at most SK_FARM_MAX_IPV6_EXT extension headers (hop-by-hop,
 * routing, destination options, fragment, AH). When the bound is hit, proto is
 * left on the extension header and the caller treats the packet as having no
 * visible ports.
 */
static __always_inline int sk_parse_ipv6(struct sk_cursor *c, struct sk_l3 *l3)
{
	struct ipv6hdr *ip6h;
	__u8 next;
	int i;

	if (sk_pull(c, sizeof(*ip6h), (void **)&ip6h) || ip6h->version != 6)
		return -1;
	l3->family = 6;
	__builtin_memcpy(l3->src, &ip6h->saddr, 16);
	__builtin_memcpy(l3->dst, &ip6h->daddr, 16);
	l3->frag = 0;
	l3->l4_here = 1;
	next = ip6h->nexthdr;
	for (i = 0; i < SK_FARM_MAX_IPV6_EXT; i++) {
		__u8 *hdr;
		__u32 len;

		if (next == SK_IPPROTO_FRAGMENT) {
			struct frag_hdr *fh;

			if (sk_pull(c, sizeof(*fh), (void **)&fh))
				return -1;
			next = fh->nexthdr;
			/* Offset in the upper 13 bits, M flag in bit 0. */
			if (fh->frag_off & bpf_htons(0xFFF9))
				l3->frag = 1;
			if (fh->frag_off & bpf_htons(0xFFF8)) {
				l3->l4_here = 0;
				break;
			}
			continue;
		}
		if (next != SK_IPPROTO_HOPOPTS && next != SK_IPPROTO_ROUTING &&
		    next != SK_IPPROTO_DSTOPTS && next != SK_IPPROTO_AH)
			break;
		hdr = c->pos;
		if ((void *)(hdr + 2) > c->end)
			return -1;
		if (next == SK_IPPROTO_AH)
			len = ((__u32)hdr[1] + 2) * 4;
		else
			len = ((__u32)hdr[1] + 1) * 8;
		if ((void *)hdr + len > c->end)
			return -1;
		next = hdr[0];
		c->pos = (void *)hdr + len;
	}
	l3->proto = next;
	return 0;
}

/* ICMPv4 error types that quote the offending datagram. */
static __always_inline int sk_icmp4_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* ICMPv6 errors (1..4: unreachable, packet too big, time exceeded, parameter problem). */
static __always_inline int sk_icmp6_is_error(__u8 type)
{
	return type >= 1 && type <= 4;
}

/* Neighbour discovery (RS, RA, NS, NA, redirect): always left to the kernel. */
static __always_inline int sk_icmp6_is_nd(__u8 type)
{
	return type >= 133 && type <= 137;
}

#endif
