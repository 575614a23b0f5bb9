/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the resync control decoders (manifest_codec.cpp): the target's
 * manifest as the source reads it, and the path selections (Want, HashRequest) as the
 * target reads them. The first input byte picks the decoder. Whatever a decoder
 * accepts must hold its invariants and survive encode + decode unchanged.
 */
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "replication/resync.h"

namespace {

using namespace sk::repl;

void check(bool cond)
{
	if (!cond)
		abort();
}

bool sameEntry(const ManifestEntry &a, const ManifestEntry &b)
{
	return a.path == b.path && a.type == b.type && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid &&
	       a.size == b.size && a.mtime == b.mtime && a.rdev == b.rdev && a.target == b.target &&
	       a.coverage == b.coverage && a.blocks == b.blocks && a.blockIndex == b.blockIndex &&
	       a.subBlocks == b.subBlocks;
}

/*
 * The manifest as frames: `split` bytes, then the rest (an entry may continue across
 * them, as ControlChannel::recvManifest reads it).
 */
void manifest(std::span<const uint8_t> in, size_t split)
{
	std::vector<ManifestEntry> entries;
	bool continuing = false;
	split = std::min(split, in.size());
	if (!decodeManifestEntries(in.first(split), &entries, &continuing) ||
	    !decodeManifestEntries(in.subspan(split), &entries, &continuing) || continuing)
		return;
	std::vector<uint8_t> again;
	for (const auto &e : entries) {
		check(!e.path.empty() && e.path[0] != '/');
		check(e.coverage != Coverage::None || e.blocks.empty());
		check(e.coverage != Coverage::Some || e.blockIndex.size() == e.blocks.size());
		/* Sub-block hashes: none, or 2..4096 per block for every block. */
		if (!e.subBlocks.empty()) {
			check(!e.blocks.empty() && e.subBlocks.size() % e.blocks.size() == 0);
			size_t pieces = e.subBlocks.size() / e.blocks.size();
			check(pieces >= 2 && pieces <= 4096);
		}
		for (size_t i = 1; i < e.blockIndex.size(); i++)
			check(e.blockIndex[i - 1] < e.blockIndex[i]);
		encodeManifestEntry(e, &again);
	}
	std::vector<ManifestEntry> back;
	check(decodeManifestEntries(again, &back));
	check(back.size() == entries.size());
	for (size_t i = 0; i < back.size(); i++)
		check(sameEntry(back[i], entries[i]));
}

void selection(std::span<const uint8_t> in)
{
	BlockSelection sel;
	if (!decodePathSelection(in, &sel))
		return;
	std::vector<uint8_t> again;
	for (const auto &[path, ranges] : sel.byPath) {
		check(!path.empty() && path[0] != '/');
		uint64_t end = 0;
		for (const auto &r : ranges.ranges) {
			check(r.second > 0 && r.first >= end);
			end = r.first + r.second;
		}
		encodePathSelection(path, ranges, &again);
	}
	BlockSelection back;
	check(decodePathSelection(again, &back));
	check(back.byPath.size() == sel.byPath.size());
	for (const auto &[path, ranges] : sel.byPath)
		check(back.byPath.count(path) && back.byPath.at(path).ranges == ranges.ranges);
}

} /* namespace */

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	std::span<const uint8_t> rest(data + 1, size - 1);
	if (data[0] & 1)
		selection(rest);
	else
		manifest(rest, data[0] >> 1 ? static_cast<size_t>(data[0] >> 1) * 8 : rest.size());	/* frame cut */
	return 0;
}
