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

/* The largest verify report a target sends its source (one control frame, under
 * kMaxStreamPayload); longer lists are cut and say so. */
constexpr size_t kMaxVerifyReport = 3u << 20;

struct VerifyDifference {
	std::string path;
	std::string what;	/* "missing on target", "size 10 != 12", "content", ... */
	std::vector<std::pair<uint64_t, uint64_t>> ranges;	/* [offset, length) that differ */
};

struct VerifyReport {
	uint64_t sourceEntries = 0;
	uint64_t targetEntries = 0;
	std::vector<VerifyDifference> differences;
	/* Online verify: paths the source changed between the two passes (being written):
	 * not judged. */
	std::vector<std::string> changing;
	bool identical() const { return differences.empty(); }
	nlohmann::json toJson() const;
};

/* Mtimes are not compared: the target's change as ops are applied. */
VerifyReport compareManifests(const std::vector<ManifestEntry> &source, const std::vector<ManifestEntry> &target,
			      uint32_t blockSize);

/*
 * Online verify, second pass. first: pass 1's report; source1: pass 1's source
 * manifest; source2/target2: both sides hashed again (at least the paths first
 * found differing). A first difference stands when the source's entry did not
 * change between the passes and still differs from the target's; where the source
 * changed, the path is listed as changing; the rest were ops in flight (resolved).
 */
VerifyReport confirmDifferences(const VerifyReport &first, const std::vector<ManifestEntry> &source1,
				const std::vector<ManifestEntry> &source2, const std::vector<ManifestEntry> &target2,
				uint32_t blockSize);

/* Scans both trees (hashing) and compares them: both dirs must be readable here. */
Result<VerifyReport> verifyTrees(int sourceFd, int targetFd, const ScanOptions &options);

} /* namespace sk::repl */
