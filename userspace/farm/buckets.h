/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm bucket ownership: weighted rendezvous (highest-random-weight) hashing,
 * pure and deterministic, so every node computes the same owner table from the
 * same set of UP nodes. A node leaving moves only its own buckets.
 */
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "core/result.h"

namespace sk {

struct FarmNodeWeight {
	uint32_t id = 0;	/* node id, never 0 (SK_FARM_NODE_NONE) */
	uint32_t weight = 1;	/* 0: takes no bucket */
};

/*
 * owner[bucket] for bucket in [0, buckets): argmax over nodes of
 * weight / -ln(u), u = uniform(hash(seed, bucket, node)), in integer fixed
 * point so results never depend on the platform's libm. Ties go to the lowest
 * id. Input order does not matter. With no node of weight > 0, every bucket is
 * SK_FARM_NODE_NONE. Errors: buckets not a power of two in [1, max], node id 0
 * or duplicated.
 */
Result<std::vector<uint32_t>> farmAssignBuckets(uint32_t seed, uint32_t buckets,
						std::span<const FarmNodeWeight> nodes);

/* 64-bit digest of an owner table, carried in heartbeats to compare views. */
uint64_t farmAssignmentDigest(std::span<const uint32_t> owners);

/* Exposed for tests: -log2(u) of the rendezvous draw for (seed, bucket, node), Q32 fixed point. */
uint64_t farmRendezvousCost(uint32_t seed, uint32_t bucket, uint32_t node);

} /* namespace sk */
