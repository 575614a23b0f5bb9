/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Farm bucket hash, shared verbatim by the XDP filter and C++ (tests, tools):
 * plain C, static inline, fixed-width types. Murmur3-style 32-bit mixing of
 * seed, address words and optionally the port, then the murmur3 finalizer.
 * Address words and port are taken as stored in memory (network order), which
 * is the same in BPF and userspace since BPF runs in host byte order.
 */
#ifndef SK_FARM_HASH_H
#define SK_FARM_HASH_H

#ifndef __VMLINUX_H__
#include <stdint.h>
typedef uint8_t sk_u8_t;
typedef uint16_t sk_u16_t;
typedef uint32_t sk_u32_t;
#else
typedef __u8 sk_u8_t;
typedef __u16 sk_u16_t;
typedef __u32 sk_u32_t;
#endif

static inline sk_u32_t sk_farm_rotl32(sk_u32_t x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static inline sk_u32_t sk_farm_hash_mix(sk_u32_t h, sk_u32_t k)
{
	k *= 0xcc9e2d51u;
	k = sk_farm_rotl32(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = sk_farm_rotl32(h, 13);
	return h * 5u + 0xe6546b64u;
}

static inline sk_u32_t sk_farm_hash_final(sk_u32_t h, sk_u32_t len)
{
	h ^= len;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/*
 * words: 1 (IPv4) or 4 (IPv6) address words. with_port: 0 hashes the address
 * only (the length differs, so IP-only and IP+port never alias by design).
 */
static inline sk_u32_t sk_farm_hash(sk_u32_t seed, const sk_u32_t *addr, int words,
				    int with_port, sk_u16_t port)
{
	sk_u32_t h = seed;
	sk_u32_t len = 4u * (sk_u32_t)words;

	h = sk_farm_hash_mix(h, addr[0]);
	if (words == 4) {
		h = sk_farm_hash_mix(h, addr[1]);
		h = sk_farm_hash_mix(h, addr[2]);
		h = sk_farm_hash_mix(h, addr[3]);
	}
	if (with_port) {
		h = sk_farm_hash_mix(h, (sk_u32_t)port);
		len += 2;
	}
	return sk_farm_hash_final(h, len);
}

#endif
