/* SPDX-License-Identifier: Apache-2.0 */
/*
 * verify: compares two trees (or their manifests) by type, mode, owner, size, link
 * target and XXH3-128 block hashes, and names every differing path and byte range.
 * Backs `skctl verify`; never modifies either side.
 */
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/result.h"
#include "replication/resync.h"

namespace sk::repl {

struct VerifyDifference {
	std::string path;
	std::string what;	/* "missing on target", "size 10 != 12", "content", ... */
	std::vector<std::pair<uint64_t, uint64_t>> ranges;	/* [offset, length) that differ */
};

struct VerifyReport {
	uint64_t sourceEntries = 0;
	uint64_t targetEntries = 0;
	std::vector<VerifyDifference> differences;
	bool identical() const { return differences.empty(); }
	nlohmann::json toJson() const;
};

/* Mtimes are not compared: the target's change as ops are applied. */
VerifyReport compareManifests(const std::vector<ManifestEntry> &source, const std::vector<ManifestEntry> &target,
			      uint32_t blockSize);

/* Scans both trees (hashing) and compares them: both dirs must be readable here. */
Result<VerifyReport> verifyTrees(int sourceFd, int targetFd, const ScanOptions &options);

} /* namespace sk::repl */
