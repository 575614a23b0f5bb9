/* SPDX-License-Identifier: Apache-2.0 */
/*
 * verify: manifest comparison for `skctl verify` and the tests' "both sides are
 * identical" checks; differing blocks are merged into byte ranges for the report.
 */
#include "replication/verify.h"

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>

namespace sk::repl {

namespace {

const char *typeText(EntryType t)
{
	switch (t) {
	case EntryType::File: return "file";
	case EntryType::Dir: return "directory";
	case EntryType::Symlink: return "symlink";
	case EntryType::Other: return "special file";
	}
	return "?";
}

} /* namespace */

nlohmann::json VerifyReport::toJson() const
{
	nlohmann::json diffs = nlohmann::json::array();
	for (const auto &d : differences) {
		nlohmann::json r = nlohmann::json::array();
		for (const auto &[off, len] : d.ranges)
			r.push_back({ { "offset", off }, { "length", len } });
		diffs.push_back({ { "path", d.path }, { "what", d.what }, { "ranges", r } });
	}
	return { { "identical", identical() },
		 { "source_entries", sourceEntries },
		 { "target_entries", targetEntries },
		 { "differences", diffs },
		 { "changing", changing } };
}

VerifyReport compareManifests(const std::vector<ManifestEntry> &source, const std::vector<ManifestEntry> &target,
			      uint32_t blockSize)
{
	VerifyReport rep;
	rep.sourceEntries = source.size();
	rep.targetEntries = target.size();
	std::map<std::string, const ManifestEntry *> tgt;
	for (const auto &e : target)
		tgt[e.path] = &e;
	for (const auto &s : source) {
		auto it = tgt.find(s.path);
		if (it == tgt.end()) {
			rep.differences.push_back({ s.path, "missing on target", {} });
			continue;
		}
		const ManifestEntry &t = *it->second;
		tgt.erase(it);
		if (s.type != t.type) {
			rep.differences.push_back(
				{ s.path, fmt::format("{} on source, {} on target", typeText(s.type), typeText(t.type)), {} });
			continue;
		}
		std::vector<std::string> what;
		if ((s.mode & 07777) != (t.mode & 07777))
			what.push_back(fmt::format("mode {:o} != {:o}", s.mode & 07777, t.mode & 07777));
		if (s.uid != t.uid || s.gid != t.gid)
			what.push_back(fmt::format("owner {}:{} != {}:{}", s.uid, s.gid, t.uid, t.gid));
		if (s.type == EntryType::Symlink && s.target != t.target)
			what.push_back("link target '" + s.target + "' != '" + t.target + "'");
		if (s.type == EntryType::Other && s.rdev != t.rdev)
			what.push_back("device number");
		VerifyDifference d{ s.path, "", {} };
		if (s.type == EntryType::File) {
			if (s.size != t.size)
				what.push_back(fmt::format("size {} != {}", s.size, t.size));
			size_t n = std::max(s.blocks.size(), t.blocks.size());
			for (size_t i = 0; i < n; i++) {
				if (i < s.blocks.size() && i < t.blocks.size() && s.blocks[i] == t.blocks[i])
					continue;
				uint64_t off = static_cast<uint64_t>(i) * blockSize;
				if (!d.ranges.empty() && d.ranges.back().first + d.ranges.back().second == off)
					d.ranges.back().second += blockSize;
				else
					d.ranges.push_back({ off, blockSize });
			}
			if (!d.ranges.empty())
				what.push_back("content");
		}
		if (what.empty())
			continue;
		for (size_t i = 0; i < what.size(); i++)
			d.what += (i ? ", " : "") + what[i];
		rep.differences.push_back(std::move(d));
	}
	for (const auto &[path, e] : tgt)
		rep.differences.push_back({ path, std::string("extra ") + typeText(e->type) + " on target", {} });
	std::sort(rep.differences.begin(), rep.differences.end(),
		  [](const VerifyDifference &a, const VerifyDifference &b) { return a.path < b.path; });
	return rep;
}

namespace {

/* The same content and metadata but for mtime (which follows every write). */
bool sameEntry(const ManifestEntry &a, const ManifestEntry &b)
{
	return a.type == b.type && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.size == b.size &&
	       a.rdev == b.rdev && a.target == b.target && a.blocks == b.blocks;
}

std::map<std::string, const ManifestEntry *> byPath(const std::vector<ManifestEntry> &entries,
						    const std::set<std::string> &wanted)
{
	std::map<std::string, const ManifestEntry *> out;
	for (const auto &e : entries)
		if (wanted.count(e.path))
			out[e.path] = &e;
	return out;
}

} /* namespace */

VerifyReport confirmDifferences(const VerifyReport &first, const std::vector<ManifestEntry> &source1,
				const std::vector<ManifestEntry> &source2, const std::vector<ManifestEntry> &target2,
				uint32_t blockSize)
{
	std::set<std::string> wanted;
	for (const auto &d : first.differences)
		wanted.insert(d.path);
	auto s1 = byPath(source1, wanted), s2 = byPath(source2, wanted);
	VerifyReport rep;
	rep.sourceEntries = first.sourceEntries;
	rep.targetEntries = first.targetEntries;
	/* Judged: every path the source left alone between the passes (present in
	 * both, the same, or gone in both: then the target's leftover is judged). */
	std::set<std::string> judged;
	std::vector<ManifestEntry> src, tgt;
	for (const std::string &path : wanted) {
		auto a = s1.find(path), b = s2.find(path);
		bool inA = a != s1.end(), inB = b != s2.end();
		if (inA != inB || (inA && !sameEntry(*a->second, *b->second))) {
			rep.changing.push_back(path);
			continue;
		}
		judged.insert(path);
		if (inB)
			src.push_back(*b->second);
	}
	for (const auto &e : target2)
		if (judged.count(e.path))
			tgt.push_back(e);
	rep.differences = compareManifests(src, tgt, blockSize).differences;
	return rep;
}

Result<VerifyReport> verifyTrees(int sourceFd, int targetFd, const ScanOptions &options)
{
	ScanOptions o = options;
	o.hashes = true;
	auto s = scanTree(sourceFd, o);
	if (!s)
		return s.error();
	auto t = scanTree(targetFd, o);
	if (!t)
		return t.error();
	return compareManifests(*s, *t, o.blockSize);
}

} /* namespace sk::repl */
