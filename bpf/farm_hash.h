/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Farm hashes, shared verbatim by the XDP filter and C++ (loader, tests):
 * plain C, static inline, fixed-width types. Address words and port are taken
 * as stored in memory (network order), which is the same in BPF and userspace
 * since BPF runs in host byte order.
 */
#ifndef SK_FARM_HASH_H
#define SK_FARM_HASH_H

#ifndef __VMLINUX_H__
#include <stdint.h>
typedef uint8_t sk_u8_t;
typedef uint16_t sk_u16_t;
typedef uint32_t sk_u32_t;
typedef uint64_t sk_u64_t;
#else
typedef __u8 sk_u8_t;
typedef __u16 sk_u16_t;
typedef __u32 sk_u32_t;
typedef __u64 sk_u64_t;
#endif

/* The 64-bit finalizer of MurmurHash3 (fmix64): every input bit reaches every output bit. */
static inline sk_u64_t sk_farm_fmix64(sk_u64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53ull;
	h ^= h >> 33;
	return h;
}

/*
 * Bucket hash of a client: words is 1 (IPv4) or 4 (IPv6) address words;
 * with_port 0 hashes the address only (the length differs, so IP-only and
 * IP+port never alias by design). The address, as 64-bit lanes, and the port
 * are multiplied by distinct odd constants independently (no serial chain:
 * the CPU runs them in parallel, unlike a word-by-word mix, which cost the
 * XDP filter ~5 ns more per IPv6 packet), folded with the seed and the length,
 * then finalized by fmix64. Each lane product is a bijection of the lane.
 */
static inline sk_u32_t sk_farm_hash(sk_u32_t seed, const sk_u32_t *addr, int words,
				    int with_port, sk_u16_t port)
{
	sk_u64_t h = ((sk_u64_t)seed << 32) | (4u * (sk_u32_t)words + (with_port ? 2u : 0u));

	if (words == 4) {
		h ^= ((sk_u64_t)addr[1] << 32 | addr[0]) * 0x9e3779b97f4a7c15ull;
		h ^= ((sk_u64_t)addr[3] << 32 | addr[2]) * 0xc2b2ae3d27d4eb4full;
	} else {
		h ^= (sk_u64_t)addr[0] * 0x9e3779b97f4a7c15ull;
	}
	if (with_port)
		h ^= (sk_u64_t)port * 0x165667b19e3779f9ull;
	return (sk_u32_t)sk_farm_fmix64(h);
}

/*
 * Home slot of a VIP in a table of 2^slots_log2 slots: the top bits of a sum
 * of independent products of the address words (IPv4: a1..a3 zero), salted
 * so that the loader can pick a salt under which its VIPs do not collide.
 */
static inline sk_u32_t sk_farm_vip_home(sk_u32_t salt, sk_u32_t a0, sk_u32_t a1, sk_u32_t a2,
					 sk_u32_t a3, int slots_log2)
{
	sk_u32_t h = (salt ^ a0) * 0x9e3779b1u + a1 * 0x85ebca6bu + a2 * 0xc2b2ae35u + a3 * 0x27d4eb2fu;

	return h >> (32 - slots_log2);
}

#endif
