/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm bucket ownership (rendezvous hashing) and the shared packet hash:
 * one owner per bucket, minimal movement on leave/join, weights, determinism.
 */
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>

#include "bpf/farm_hash.h"
#include "bpf/farm_shared.h"
#include "farm/buckets.h"

using sk::FarmNodeWeight;
using sk::farmAssignBuckets;
using sk::farmAssignmentDigest;

namespace {

std::vector<uint32_t> assign(uint32_t seed, uint32_t buckets, std::vector<FarmNodeWeight> nodes)
{
	auto r = farmAssignBuckets(seed, buckets, nodes);
	REQUIRE_MESSAGE(r.ok(), r.error().message);
	return *r;
}

std::map<uint32_t, size_t> shares(const std::vector<uint32_t> &owners)
{
	std::map<uint32_t, size_t> s;
	for (uint32_t o : owners)
		s[o]++;
	return s;
}

} /* namespace */

TEST_CASE("every bucket has exactly one owner, taken from the UP set")
{
	const std::vector<FarmNodeWeight> nodes{ { 3, 1 }, { 7, 1 }, { 9, 1 } };
	auto owners = assign(42, 1024, nodes);
	REQUIRE(owners.size() == 1024);
	for (uint32_t b = 0; b < owners.size(); b++) {
		INFO("bucket ", b);
		CHECK((owners[b] == 3 || owners[b] == 7 || owners[b] == 9));
	}
	auto s = shares(owners);
	CHECK(s.size() == 3);
}

TEST_CASE("assignment is deterministic and independent of input order")
{
	auto a = assign(1, 1024, { { 1, 1 }, { 2, 3 }, { 5, 2 } });
	auto b = assign(1, 1024, { { 5, 2 }, { 1, 1 }, { 2, 3 } });
	CHECK(a == b);
	CHECK(farmAssignmentDigest(a) == farmAssignmentDigest(b));
	auto other = assign(2, 1024, { { 1, 1 }, { 2, 3 }, { 5, 2 } });
	CHECK(other != a);	/* the seed matters */
}

TEST_CASE("a node leaving moves only its own buckets")
{
	std::vector<FarmNodeWeight> all{ { 1, 1 }, { 2, 1 }, { 3, 1 }, { 4, 1 }, { 5, 1 } };
	auto before = assign(7, 4096, all);
	all.erase(all.begin() + 2);	/* node 3 leaves */
	auto after = assign(7, 4096, all);
	size_t moved = 0;
	for (size_t b = 0; b < before.size(); b++) {
		INFO("bucket ", b, " before ", before[b], " after ", after[b]);
		CHECK(after[b] != 3u);
		if (before[b] != 3)
			CHECK(after[b] == before[b]);
		else
			moved++;
	}
	CHECK(moved == shares(before)[3]);
}

TEST_CASE("a node joining takes only its share, from everyone")
{
	std::vector<FarmNodeWeight> nodes{ { 1, 1 }, { 2, 1 }, { 3, 1 } };
	auto before = assign(11, 4096, nodes);
	nodes.push_back({ 4, 1 });
	auto after = assign(11, 4096, nodes);
	std::map<uint32_t, size_t> takenFrom;
	for (size_t b = 0; b < before.size(); b++) {
		if (after[b] != before[b]) {
			INFO("bucket ", b, " before ", before[b], " after ", after[b]);
			CHECK(after[b] == 4u);
			takenFrom[before[b]]++;
		}
	}
	const size_t taken = shares(after)[4];
	CHECK(taken > 4096 / 4 * 85 / 100);
	CHECK(taken < 4096 / 4 * 115 / 100);
	CHECK(takenFrom.size() == 3);
}

TEST_CASE("equal weights give equal shares within tolerance")
{
	auto owners = assign(5, 8192, { { 10, 1 }, { 20, 1 }, { 30, 1 }, { 40, 1 } });
	for (auto [node, n] : shares(owners)) {
		INFO("node ", node, " owns ", n, " of 8192, expected about 2048");
		CHECK(n > 2048 * 90 / 100);
		CHECK(n < 2048 * 110 / 100);
	}
}

TEST_CASE("weights are respected within tolerance")
{
	auto owners = assign(99, 16384, { { 1, 1 }, { 2, 2 }, { 3, 5 } });
	auto s = shares(owners);
	const double expected[] = { 0, 1.0 / 8, 2.0 / 8, 5.0 / 8 };
	for (uint32_t node = 1; node <= 3; node++) {
		const double got = static_cast<double>(s[node]) / 16384;
		INFO("node ", node, " share ", got, " expected ", expected[node]);
		CHECK(got > expected[node] * 0.9);
		CHECK(got < expected[node] * 1.1);
	}
}

TEST_CASE("weight 0 takes nothing; no eligible node means no owner")
{
	auto owners = assign(3, 256, { { 1, 0 }, { 2, 1 } });
	CHECK(shares(owners) == std::map<uint32_t, size_t>{ { 2, 256 } });
	auto none = assign(3, 256, {});
	CHECK(shares(none) == std::map<uint32_t, size_t>{ { SK_FARM_NODE_NONE, 256 } });
}

TEST_CASE("bad input is rejected with -EINVAL")
{
	const std::vector<FarmNodeWeight> ok{ { 1, 1 } };
	CHECK(farmAssignBuckets(0, 1000, ok).code() == -EINVAL);
	CHECK(farmAssignBuckets(0, 0, ok).code() == -EINVAL);
	CHECK(farmAssignBuckets(0, SK_FARM_MAX_BUCKETS * 2, ok).code() == -EINVAL);
	const std::vector<FarmNodeWeight> zeroId{ { 0, 1 } };
	CHECK(farmAssignBuckets(0, 1024, zeroId).code() == -EINVAL);
	const std::vector<FarmNodeWeight> dup{ { 4, 1 }, { 4, 2 } };
	CHECK(farmAssignBuckets(0, 1024, dup).code() == -EINVAL);
}

TEST_CASE("digest changes with any entry and with the size")
{
	std::vector<uint32_t> a(1024, 1);
	const uint64_t d = farmAssignmentDigest(a);
	a[517] = 2;
	CHECK(farmAssignmentDigest(a) != d);
	a[517] = 1;
	CHECK(farmAssignmentDigest(a) == d);
	a.push_back(1);
	CHECK(farmAssignmentDigest(a) != d);
}

TEST_CASE("rendezvous cost is -log2 of a uniform draw (mean 1/ln 2)")
{
	/* An exponential variable in log2 units has mean 1/ln(2) = 1.4427. */
	double total = 0;
	const int n = 200000;
	for (int i = 0; i < n; i++)
		total += static_cast<double>(sk::farmRendezvousCost(1, static_cast<uint32_t>(i), 7)) / 4294967296.0;
	const double mean = total / n;
	INFO("mean cost ", mean);
	CHECK(mean > 1.4427 * 0.98);
	CHECK(mean < 1.4427 * 1.02);
}

TEST_CASE("farm packet hash: reference vectors and spread")
{
	/*
	 * Reference values from an independent implementation (Python, arbitrary
	 * precision integers masked to 64 bits) of the definition in farm_hash.h:
	 * fmix64(seed << 32 | len ^ lane products), low 32 bits.
	 */
	const uint32_t word = 0x74736574;
	CHECK(sk_farm_hash(0, &word, 1, 0, 0) == 0x29e49e56u);
	CHECK(sk_farm_hash(0x9747b28cu, &word, 1, 0, 0) == 0x2fdd2045u);
	CHECK(sk_farm_hash(1, &word, 1, 1, 80) == 0x7b28ffffu);
	const uint32_t v6[4] = { 1, 2, 3, 4 };
	CHECK(sk_farm_hash(0x5eed, v6, 4, 0, 0) == 0x19193077u);
	CHECK(sk_farm_hash(0x5eed, v6, 4, 1, 0x5000) == 0x0578abb5u);
	/* The port takes part only when asked. */
	CHECK(sk_farm_hash(1, &word, 1, 1, 80) != sk_farm_hash(1, &word, 1, 0, 80));
	CHECK(sk_farm_hash(1, &word, 1, 0, 80) == sk_farm_hash(1, &word, 1, 0, 443));

	/* Consecutive client addresses spread over 1024 buckets. */
	std::vector<int> hits(1024);
	for (uint32_t i = 0; i < 1024 * 64; i++) {
		const uint32_t addr = __builtin_bswap32(0xC6120000u + i);	/* 198.18.x.y in memory order */
		hits[sk_farm_hash(123, &addr, 1, 0, 0) & 1023]++;
	}
	auto [lo, hi] = std::minmax_element(hits.begin(), hits.end());
	INFO("bucket hits min ", *lo, " max ", *hi, " expected about 64");
	CHECK(*lo > 25);
	CHECK(*hi < 110);

	/* Clients of one IPv6 /64 (consecutive interface ids), and one client's consecutive ports. */
	std::vector<int> hits6(1024), hitsPort(1024);
	for (uint32_t i = 0; i < 1024 * 64; i++) {
		const uint32_t addr6[4] = { __builtin_bswap32(0xfd00005c), 0, __builtin_bswap32(i >> 16),
					    __builtin_bswap32(i) };
		hits6[sk_farm_hash(123, addr6, 4, 0, 0) & 1023]++;
		const uint32_t addr = __builtin_bswap32(0xC6120107u);
		hitsPort[sk_farm_hash(123, &addr, 1, 1, static_cast<uint16_t>(__builtin_bswap16(i))) & 1023]++;
	}
	for (const auto *h : { &hits6, &hitsPort }) {
		auto [lo6, hi6] = std::minmax_element(h->begin(), h->end());
		INFO("bucket hits min ", *lo6, " max ", *hi6, " expected about 64");
		CHECK(*lo6 > 25);
		CHECK(*hi6 < 110);
	}
}
