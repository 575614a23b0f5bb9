/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Data generations (DRBD-style UUIDs): which node's replicated data is current,
 * and the crash-safe store that persists them in the module's state directory.
 */
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

namespace sk {

/*
 * One node's data identity. current == 0 means "no data generation" (a new
 * node, or one whose data was never declared authoritative): it is behind any
 * peer that has one. A node rotates to a fresh current UUID each time it starts
 * serving without an in-sync peer, so two nodes that served independently end
 * up with UUIDs unknown to each other: that is how split brain is detected.
 */
struct Generation {
	static constexpr size_t kHistorySize = 8;

	uint64_t current = 0;
	std::vector<uint64_t> history;	/* newest first, at most kHistorySize */
	bool inSync = false;		/* data is a complete, consistent copy of `current` */
	bool wasPrimary = false;	/* this node served last (PRIM/ALONE) */

	bool empty() const { return current == 0; }
	bool inHistory(uint64_t uuid) const;
	/* Starts a new generation: current goes to history (newest first). */
	void rotate(uint64_t newUuid);
	/* Adopts the peer's current after a completed resync. */
	void adopt(uint64_t peerUuid);

	bool operator==(const Generation &) const = default;
};

enum class GenerationRelation {
	BothEmpty,	/* neither node has data: an admin must pick one (`prim`) */
	Same,		/* same current UUID: same data, resync only dirty ranges */
	LocalBehind,	/* the peer has newer data: this node resyncs from it */
	PeerBehind,	/* this node has newer data: the peer resyncs from it */
	Diverged,	/* split brain: both changed data independently */
};

GenerationRelation compareGenerations(const Generation &local, const Generation &peer);
const char *generationRelationName(GenerationRelation relation);

/* "cur=a1 hist=[a0] in_sync=1 was_prim=1": used in logs, transcripts and causes. */
std::string formatGeneration(const Generation &generation);

/* The on-disk text, checksum line included, and its parser (-EBADMSG when torn/corrupt). */
std::string serializeGeneration(const Generation &generation);
Result<Generation> parseGeneration(std::string_view text);

/*
 * Persists one Generation as <stateDir>/generation. save() is atomic and
 * durable (temp file, fsync, rename, fsync dir), so after a crash load() sees
 * either the old or the new state. A missing file is a new node (empty
 * Generation); a file whose checksum does not match is an error, never
 * silently treated as empty, because that would lose "was primary".
 */
class GenerationStore
{
public:
	static constexpr const char *kFileName = "generation";

	explicit GenerationStore(std::string stateDir) : dir_(std::move(stateDir)) {}

	Result<Generation> load() const;
	Status save(const Generation &generation) const;
	std::string path() const { return dir_ + "/" + kFileName; }

private:
	std::string dir_;
};

} /* namespace sk */
