/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Weighted rendezvous hashing for farm buckets. Everything is integer math on
 * explicitly little-endian encoded input, so heterogeneous nodes agree bit for bit.
 */
#include "farm/buckets.h"

#include <algorithm>
#include <bit>
#include <cstring>

#include <xxhash.h>

#include "bpf/farm_shared.h"

namespace sk {

namespace {

void putLe32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = static_cast<uint8_t>(v >> (8 * i));
}

/* log2(x) in Q32 for x >= 1, by repeated squaring of the mantissa (exact bits, no libm). */
uint64_t log2Q32(uint64_t x)
{
	const int msb = 63 - std::countl_zero(x);
	/* Mantissa in [1, 2) as Q62; msb <= 53 here so the shift never loses bits. */
	uint64_t m = msb <= 62 ? x << (62 - msb) : x >> (msb - 62);
	uint64_t frac = 0;

	for (int i = 1; i <= 32; i++) {
		__extension__ unsigned __int128 sq = static_cast<unsigned __int128>(m) * m;
		m = static_cast<uint64_t>(sq >> 62);
		if (m >= (uint64_t{ 1 } << 63)) {
			m >>= 1;
			frac |= uint64_t{ 1 } << (32 - i);
		}
	}
	return (static_cast<uint64_t>(msb) << 32) | frac;
}

} /* namespace */

uint64_t farmRendezvousCost(uint32_t seed, uint32_t bucket, uint32_t node)
{
	uint8_t buf[12];

	putLe32(buf, seed);
	putLe32(buf + 4, bucket);
	putLe32(buf + 8, node);
	/* u = (h53 + 1) / 2^53 in (0, 1]; cost = -log2(u) >= 0. */
	const uint64_t u = (XXH64(buf, sizeof(buf), 0) >> 11) + 1;
	const uint64_t cost = (uint64_t{ 53 } << 32) - log2Q32(u);
	return std::max<uint64_t>(cost, 1);	/* u == 1 would mean an infinite score */
}

Result<std::vector<uint32_t>> farmAssignBuckets(uint32_t seed, uint32_t buckets,
						std::span<const FarmNodeWeight> nodes)
{
	if (buckets == 0 || buckets > SK_FARM_MAX_BUCKETS || !std::has_single_bit(buckets))
		return makeError(-EINVAL, "bucket count must be a power of two in [1, " +
						  std::to_string(SK_FARM_MAX_BUCKETS) + "], got " +
						  std::to_string(buckets));
	std::vector<FarmNodeWeight> sorted(nodes.begin(), nodes.end());
	std::sort(sorted.begin(), sorted.end(),
		  [](const FarmNodeWeight &a, const FarmNodeWeight &b) { return a.id < b.id; });
	for (size_t i = 0; i < sorted.size(); i++) {
		if (sorted[i].id == SK_FARM_NODE_NONE)
			return makeError(-EINVAL, "node id 0 is reserved (no owner)");
		if (i > 0 && sorted[i].id == sorted[i - 1].id)
			return makeError(-EINVAL, "node id " + std::to_string(sorted[i].id) +
							  " listed twice");
	}
	std::erase_if(sorted, [](const FarmNodeWeight &n) { return n.weight == 0; });

	std::vector<uint32_t> owners(buckets, SK_FARM_NODE_NONE);
	for (uint32_t b = 0; b < buckets; b++) {
		uint32_t best = SK_FARM_NODE_NONE;
		uint64_t bestWeight = 0, bestCost = 1;
		for (const FarmNodeWeight &n : sorted) {
			const uint64_t cost = farmRendezvousCost(seed, b, n.id);
			/* score = weight / cost; a/b > c/d <=> a*d > c*b (costs < 2^38, weights < 2^32). */
			__extension__ unsigned __int128 lhs = static_cast<unsigned __int128>(n.weight) * bestCost;
			__extension__ unsigned __int128 rhs = static_cast<unsigned __int128>(bestWeight) * cost;
			if (best == SK_FARM_NODE_NONE || lhs > rhs) {
				best = n.id;
				bestWeight = n.weight;
				bestCost = cost;
			}
		}
		owners[b] = best;
	}
	return owners;
}

uint64_t farmAssignmentDigest(std::span<const uint32_t> owners)
{
	std::vector<uint8_t> buf(4 + 4 * owners.size());

	putLe32(buf.data(), static_cast<uint32_t>(owners.size()));
	for (size_t i = 0; i < owners.size(); i++)
		putLe32(buf.data() + 4 + 4 * i, owners[i]);
	return XXH64(buf.data(), buf.size(), 0);
}

} /* namespace sk */
