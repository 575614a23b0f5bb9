/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Manifest entries and path selections on the resync control connection: the
 * encoders and the bounded decoders of what the peer sends (fuzzed on their own in
 * tests/fuzz/fuzz_manifest_decode.cpp), and the block range sets they carry.
 */

#include "replication/resync.h"

#include <algorithm>

#include "core/le_bytes.h"
#include "replication/op_codec.h"

namespace sk::repl {

namespace {

constexpr size_t kMaxBlocksPerEntry = 32768;
constexpr uint8_t kEntryContinues = 1;
constexpr uint8_t kEntrySparse = 2;	/* Coverage::Some: u64 block index before each hash */
constexpr uint8_t kEntryUnhashed = 4;	/* Coverage::None */
/* Hashed entries (not kEntryUnhashed): u16 pieces per block after the block count,
 * and that many sub-block hashes after each block's hash. */
constexpr uint8_t kEntrySubBlocks = 8;
constexpr uint32_t kMaxPiecesPerBlock = (16u << 20) / kSubBlockSize;
constexpr uint32_t kMaxRangesPerPath = 1u << 16;

} /* namespace */

void BlockRanges::add(uint64_t first, uint64_t count)
{
	if (!count)
		return;
	/* In order (the usual case): append, or extend the last range; no re-sort. */
	if (ranges.empty() || first > ranges.back().first + ranges.back().second) {
		ranges.emplace_back(first, count);
		return;
	}
	if (first >= ranges.back().first) {
		auto &last = ranges.back();
		last.second = std::max(last.first + last.second, first + count) - last.first;
		return;
	}
	ranges.emplace_back(first, count);
	std::sort(ranges.begin(), ranges.end());
	std::vector<std::pair<uint64_t, uint64_t>> merged;
	for (const auto &r : ranges) {
		if (!merged.empty() && r.first <= merged.back().first + merged.back().second) {
			uint64_t end = std::max(merged.back().first + merged.back().second, r.first + r.second);
			merged.back().second = end - merged.back().first;
		} else {
			merged.push_back(r);
		}
	}
	ranges = std::move(merged);
}

bool BlockRanges::contains(uint64_t block) const
{
	auto it = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(block, UINT64_MAX));
	if (it == ranges.begin())
		return false;
	--it;
	return block < it->first + it->second;
}

uint64_t BlockRanges::nextFrom(uint64_t block) const
{
	if (contains(block))
		return block;
	auto it = std::upper_bound(ranges.begin(), ranges.end(), std::make_pair(block, UINT64_MAX));
	return it == ranges.end() ? UINT64_MAX : it->first;
}

uint64_t BlockRanges::blocks() const
{
	uint64_t n = 0;
	for (const auto &r : ranges)
		n += r.second;
	return n;
}

void encodeManifestEntry(const ManifestEntry &e, std::vector<uint8_t> *out)
{
	size_t first = 0;
	while (encodeManifestChunk(e, &first, out)) {
	}
}

bool encodeManifestChunk(const ManifestEntry &e, size_t *firstBlock, std::vector<uint8_t> *out)
{
	/* Pieces per block (0: none); a chunk then carries fewer blocks, so its size stays put. */
	size_t pieces = e.coverage != Coverage::None && !e.blocks.empty() && !e.subBlocks.empty()
				? e.subBlocks.size() / e.blocks.size()
				: 0;
	if (pieces < 2 || pieces > kMaxPiecesPerBlock || e.subBlocks.size() != e.blocks.size() * pieces)
		pieces = 0;	/* none, or not a whole number per block: sent without */
	size_t perChunk = pieces ? std::max<size_t>(1, kMaxBlocksPerEntry / pieces) : kMaxBlocksPerEntry;
	size_t first = *firstBlock;
	size_t n = std::min(perChunk, e.blocks.size() - first);
	bool more = first + n < e.blocks.size();
	uint8_t flags = more ? kEntryContinues : 0;
	if (e.coverage == Coverage::Some)
		flags |= kEntrySparse;
	else if (e.coverage == Coverage::None)
		flags |= kEntryUnhashed;
	if (pieces)
		flags |= kEntrySubBlocks;
	out->push_back(flags);
	out->push_back(static_cast<uint8_t>(e.type));
	le::append<uint16_t>(out, static_cast<uint16_t>(e.path.size()));
	out->insert(out->end(), e.path.begin(), e.path.end());
	le::append<uint32_t>(out, e.mode);
	le::append<uint32_t>(out, e.uid);
	le::append<uint32_t>(out, e.gid);
	le::append<uint64_t>(out, e.size);
	le::append<uint64_t>(out, static_cast<uint64_t>(e.mtime.sec));
	le::append<uint32_t>(out, e.mtime.nsec);
	le::append<uint64_t>(out, e.rdev);
	le::append<uint16_t>(out, static_cast<uint16_t>(e.target.size()));
	out->insert(out->end(), e.target.begin(), e.target.end());
	le::append<uint32_t>(out, static_cast<uint32_t>(n));
	if (pieces)
		le::append<uint16_t>(out, static_cast<uint16_t>(pieces));
	for (size_t i = first; i < first + n; i++) {
		if (e.coverage == Coverage::Some)
			le::append<uint64_t>(out, e.blockIndex[i]);
		le::append<uint64_t>(out, e.blocks[i].lo);
		le::append<uint64_t>(out, e.blocks[i].hi);
		for (size_t j = i * pieces; j < (i + 1) * pieces; j++) {
			le::append<uint64_t>(out, e.subBlocks[j].lo);
			le::append<uint64_t>(out, e.subBlocks[j].hi);
		}
	}
	*firstBlock = first + n;
	return more;
}

bool decodeManifestEntries(std::span<const uint8_t> in, std::vector<ManifestEntry> *out)
{
	bool continuing = false;
	return decodeManifestEntries(in, out, &continuing) && !continuing;
}

bool decodeManifestEntries(std::span<const uint8_t> in, std::vector<ManifestEntry> *out, bool *continues)
{
	le::Reader r(in);
	bool &continuing = *continues;
	while (!r.done()) {
		uint8_t flags = 0, type = 0;
		uint16_t plen = 0, tlen = 0;
		uint32_t nblocks = 0;
		uint16_t pieces = 0;
		uint64_t sec = 0;
		ManifestEntry e;
		if (!r.u8(&flags) || (flags & ~(kEntryContinues | kEntrySparse | kEntryUnhashed | kEntrySubBlocks)) ||
		    (flags & kEntrySparse && flags & kEntryUnhashed) ||
		    (flags & kEntrySubBlocks && flags & kEntryUnhashed) || !r.u8(&type) || type < 1 || type > 4 ||
		    !r.u16(&plen) || !r.bytes(&e.path, plen) || !isValidOpPath(e.path, false) || !r.u32(&e.mode) ||
		    !r.u32(&e.uid) || !r.u32(&e.gid) || !r.u64(&e.size) || !r.u64(&sec) ||
		    !r.u32(&e.mtime.nsec) || !r.u64(&e.rdev) || !r.u16(&tlen) || !r.bytes(&e.target, tlen) ||
		    !r.u32(&nblocks) || nblocks > kMaxBlocksPerEntry)
			return false;
		if (flags & kEntrySubBlocks &&
		    (!r.u16(&pieces) || pieces < 2 || pieces > kMaxPiecesPerBlock ||
		     nblocks > std::max<uint32_t>(1, kMaxBlocksPerEntry / pieces)))
			return false;
		e.type = static_cast<EntryType>(type);
		e.mtime.sec = static_cast<int64_t>(sec);
		e.coverage = (flags & kEntrySparse) ? Coverage::Some
			     : (flags & kEntryUnhashed) ? Coverage::None
							 : Coverage::All;
		if (e.coverage == Coverage::None && nblocks)
			return false;
		e.blocks.resize(nblocks);
		for (auto &b : e.blocks) {
			if (e.coverage == Coverage::Some) {
				uint64_t idx = 0;
				if (!r.u64(&idx) || (!e.blockIndex.empty() && idx <= e.blockIndex.back()))
					return false;
				e.blockIndex.push_back(idx);
			}
			if (!r.u64(&b.lo) || !r.u64(&b.hi))
				return false;
			for (uint16_t j = 0; j < pieces; j++) {
				Hash128 h;
				if (!r.u64(&h.lo) || !r.u64(&h.hi))
					return false;
				e.subBlocks.push_back(h);
			}
		}
		if (continuing) {
			if (out->empty())
				return false;
			auto &prev = out->back();
			/* Pieces per block must stay what the first chunk said. */
			if (prev.path != e.path || prev.coverage != e.coverage ||
			    (!e.blockIndex.empty() && !prev.blockIndex.empty() &&
			     e.blockIndex.front() <= prev.blockIndex.back()) ||
			    prev.subBlocks.size() != prev.blocks.size() * pieces)
				return false;
			prev.blocks.insert(prev.blocks.end(), e.blocks.begin(), e.blocks.end());
			prev.blockIndex.insert(prev.blockIndex.end(), e.blockIndex.begin(), e.blockIndex.end());
			prev.subBlocks.insert(prev.subBlocks.end(), e.subBlocks.begin(), e.subBlocks.end());
		} else {
			out->push_back(std::move(e));
		}
		continuing = flags & kEntryContinues;
	}
	return true;
}

void encodePathSelection(const std::string &path, const BlockRanges &ranges, std::vector<uint8_t> *out)
{
	le::append<uint16_t>(out, static_cast<uint16_t>(path.size()));
	out->insert(out->end(), path.begin(), path.end());
	le::append<uint32_t>(out, static_cast<uint32_t>(ranges.ranges.size()));
	for (const auto &r : ranges.ranges) {
		le::append<uint64_t>(out, r.first);
		le::append<uint64_t>(out, r.second);
	}
}

bool decodePathSelection(std::span<const uint8_t> in, BlockSelection *out)
{
	le::Reader r(in);
	while (!r.done()) {
		uint16_t plen = 0;
		uint32_t n = 0;
		std::string path;
		if (!r.u16(&plen) || !r.bytes(&path, plen) || !isValidOpPath(path, false) || !r.u32(&n) ||
		    n > kMaxRangesPerPath)
			return false;
		/* A path once per selection (a map on the sending side). */
		auto [at, fresh] = out->byPath.try_emplace(path);
		if (!fresh)
			return false;
		BlockRanges &ranges = at->second;
		uint64_t end = 0;
		for (uint32_t i = 0; i < n; i++) {
			uint64_t first = 0, count = 0;
			/* Sorted, disjoint, non-empty, no overflow: what encode produces. */
			if (!r.u64(&first) || !r.u64(&count) || count == 0 || first < end ||
			    count > UINT64_MAX / 2 - first)
				return false;
			ranges.ranges.emplace_back(first, count);
			end = first + count;
		}
	}
	return true;
}

} /* namespace sk::repl */
