/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Resync: tree manifests with XXH3-128 block hashes, the gated source-side diff that
 * turns "target manifest vs source tree" into ops on the ordered stream, and the
 * authenticated control connection that carries manifests, progress and completion.
 */
#include "replication/resync.h"

#include <algorithm>
#include <cstring>
#include <dirent.h>
#include <fcntl.h>
#include <map>
#include <set>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <openssl/rand.h>
#include <xxhash.h>

#include "core/le_bytes.h"
#include "core/log.h"
#include "replication/fuse/capture_fs.h"

namespace sk::repl {

namespace {

const LogCategory kLog("resync");

/* Bound on one Manifest frame; an entry with more blocks continues in the next entry. */
constexpr size_t kManifestFrameBytes = 1u << 20;
constexpr int kMaxFileAttempts = 50;

EntryType typeOf(mode_t mode)
{
	if (S_ISREG(mode))
		return EntryType::File;
	if (S_ISDIR(mode))
		return EntryType::Dir;
	if (S_ISLNK(mode))
		return EntryType::Symlink;
	return EntryType::Other;
}

std::string joinPath(const std::string &dir, const char *name)
{
	return dir.empty() ? std::string(name) : dir + "/" + name;
}

struct ScanState {
	const ScanOptions &options;
	std::vector<ManifestEntry> *out;
	uint64_t subBudget = kMaxSubBlocks;
};

/* The kSubBlockSize pieces of a block of blockSize bytes, data being its first part. */
void hashPieces(std::span<const uint8_t> data, uint32_t blockSize, std::vector<Hash128> *out)
{
	for (size_t at = 0; at < blockSize; at += kSubBlockSize) {
		size_t from = std::min(at, data.size());
		out->push_back(hashBlock(data.subspan(from, std::min(data.size(), at + kSubBlockSize) - from)));
	}
}

/* Hashes every block, or only those in ranges (then indices go to *index, and with
 * subs the pieces of each block to *subs). */
int hashFile(int fd, uint32_t blockSize, uint64_t size, std::vector<Hash128> *blocks,
	     const std::atomic<bool> *stop, const BlockRanges *ranges = nullptr,
	     std::vector<uint64_t> *index = nullptr, std::vector<Hash128> *subs = nullptr)
{
	std::vector<uint8_t> buf(blockSize);
	for (uint64_t off = 0; off < size; off += blockSize) {
		if (stop && stop->load())
			return -ECANCELED;
		if (ranges) {
			uint64_t block = off / blockSize;
			if (!ranges->contains(block)) {
				/* Jump to the next selected range. */
				auto it = std::upper_bound(ranges->ranges.begin(), ranges->ranges.end(),
							   std::make_pair(block, UINT64_MAX));
				if (it == ranges->ranges.end() || it->first >= (size + blockSize - 1) / blockSize)
					break;
				off = it->first * blockSize - blockSize;	/* loop adds one block */
				continue;
			}
		}
		size_t want = static_cast<size_t>(std::min<uint64_t>(blockSize, size - off));
		ssize_t n = pread(fd, buf.data(), want, static_cast<off_t>(off));
		if (n < 0)
			return -errno;
		if (n == 0)
			break;	/* shrank while we read: the stream's later ops cover it */
		blocks->push_back(hashBlock({ buf.data(), static_cast<size_t>(n) }));
		if (index)
			index->push_back(off / blockSize);
		if (subs)
			hashPieces({ buf.data(), static_cast<size_t>(n) }, blockSize, subs);
	}
	return 0;
}

int scanDir(ScanState &st, int dirFd, const std::string &rel, int depth)
{
	if (depth > 256)
		return -ELOOP;
	int dupFd = dup(dirFd);
	if (dupFd < 0)
		return -errno;
	DIR *d = fdopendir(dupFd);
	if (!d) {
		int err = -errno;
		close(dupFd);
		return err;
	}
	/* A dup shares the file offset with rootFd: an earlier walk left it at the end. */
	rewinddir(d);
	std::vector<std::string> names;
	while (dirent *de = readdir(d)) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		names.emplace_back(de->d_name);
	}
	closedir(d);
	std::sort(names.begin(), names.end());

	for (const std::string &name : names) {
		if (st.options.stop && st.options.stop->load())
			return -ECANCELED;
		struct stat s;
		if (fstatat(dirFd, name.c_str(), &s, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT)
				continue;	/* removed while we walked */
			return -errno;
		}
		std::string path = joinPath(rel, name.c_str());
		EntryType type = typeOf(s.st_mode);
		if (type != EntryType::Dir && captureExcluded(st.options.exclude, st.options.include, path))
			continue;
		ManifestEntry e;
		e.path = path;
		e.type = type;
		e.mode = s.st_mode;
		e.uid = s.st_uid;
		e.gid = s.st_gid;
		e.size = type == EntryType::Dir ? 0 : static_cast<uint64_t>(s.st_size);
		e.mtime = { s.st_mtim.tv_sec, static_cast<uint32_t>(s.st_mtim.tv_nsec) };
		e.rdev = type == EntryType::Other ? s.st_rdev : 0;
		if (type == EntryType::Symlink) {
			char buf[4097];
			ssize_t n = readlinkat(dirFd, name.c_str(), buf, sizeof(buf) - 1);
			if (n < 0) {
				if (errno == ENOENT)
					continue;
				return -errno;
			}
			e.target.assign(buf, static_cast<size_t>(n));
		}
		if (type == EntryType::File && st.options.onFile)
			st.options.onFile(path, s.st_ino);
		if (type == EntryType::File && st.options.hashes) {
			/* Which blocks: all, or the union of the selection by inode and by path. */
			BlockRanges picked;
			bool all = !st.options.select;
			if (!all) {
				const auto &sel = *st.options.select;
				auto byIno = sel.byIno.find(s.st_ino);
				if (byIno != sel.byIno.end())
					for (const auto &r : byIno->second.ranges)
						picked.add(r.first, r.second);
				auto byPath = sel.byPath.find(path);
				if (byPath != sel.byPath.end()) {
					if (byPath->second.empty())
						all = true;
					for (const auto &r : byPath->second.ranges)
						picked.add(r.first, r.second);
				}
				uint64_t nblocks = (e.size + st.options.blockSize - 1) / st.options.blockSize;
				if (!picked.empty() && picked.ranges.front().first == 0 &&
				    picked.ranges.front().second >= nblocks)
					all = true;
			}
			if (all || !picked.empty()) {
				int fd = openat(dirFd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
				if (fd < 0) {
					if (errno == ENOENT)
						continue;
					return -errno;
				}
				e.coverage = all ? Coverage::All : Coverage::Some;
				/* Sub-blocks of what a selection names (whole file or not at all), within
				 * the scan's budget; never in a full compare (16 times the manifest). */
				uint64_t perBlock = st.options.blockSize / kSubBlockSize;
				uint64_t nblocks = (e.size + st.options.blockSize - 1) / st.options.blockSize;
				/* Blocks named inside the file only (the peer's ranges may run past it). */
				uint64_t named = all ? nblocks : 0;
				for (const auto &[from, count] : picked.ranges)
					if (!all && from < nblocks)
						named += std::min(count, nblocks - from);
				uint64_t pieces = named * perBlock;
				bool subs = st.options.select && st.options.subBlocks && hasPieces(st.options.blockSize) &&
					    pieces <= st.subBudget;
				if (subs)
					st.subBudget -= pieces;
				std::vector<Hash128> *subOut = subs ? &e.subBlocks : nullptr;
				int r = all ? hashFile(fd, st.options.blockSize, e.size, &e.blocks, st.options.stop,
						       nullptr, nullptr, subOut)
					    : hashFile(fd, st.options.blockSize, e.size, &e.blocks, st.options.stop,
						       &picked, &e.blockIndex, subOut);
				close(fd);
				if (r < 0)
					return r;
			} else {
				e.coverage = Coverage::None;
			}
		}
		st.out->push_back(std::move(e));
		if (type == EntryType::Dir) {
			int sub = openat(dirFd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub < 0) {
				if (errno == ENOENT || errno == ENOTDIR)
					continue;
				return -errno;
			}
			int r = scanDir(st, sub, path, depth + 1);
			close(sub);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

} /* namespace */

Hash128 hashBlock(std::span<const uint8_t> data)
{
	XXH128_hash_t h = XXH3_128bits(data.data(), data.size());
	return { h.low64, h.high64 };
}

Result<std::vector<ManifestEntry>> scanTree(int rootFd, const ScanOptions &options)
{
	if (options.blockSize == 0)
		return makeError(-EINVAL, "block size must not be 0");
	std::vector<ManifestEntry> out;
	ScanState st{ options, &out };
	int r = scanDir(st, rootFd, "", 0);
	if (r < 0)
		return makeError(r, std::string("scanning the tree failed: ") + strerror(-r));
	return out;
}

std::vector<std::string> unexplainedFiles(const std::vector<ManifestEntry> &source,
					  const std::vector<ManifestEntry> &target)
{
	std::unordered_map<std::string, const ManifestEntry *> src;
	for (const auto &e : source)
		if (e.type == EntryType::File)
			src[e.path] = &e;
	std::vector<std::string> out;
	for (const auto &t : target) {
		if (t.type != EntryType::File || t.coverage != Coverage::None)
			continue;
		auto it = src.find(t.path);
		if (it != src.end() && (it->second->size != t.size || !(it->second->mtime == t.mtime)))
			out.push_back(t.path);
	}
	return out;
}

void mergeManifest(std::vector<ManifestEntry> *base, std::vector<ManifestEntry> &&update)
{
	std::unordered_map<std::string, size_t> at;
	for (size_t i = 0; i < base->size(); i++)
		at[(*base)[i].path] = i;
	for (auto &u : update) {
		auto it = at.find(u.path);
		if (it != at.end())
			(*base)[it->second] = std::move(u);
	}
}

uint64_t GatedSink::submit(Op &&op)
{
	std::lock_guard<std::mutex> g(gate_);
	return submitLocked(std::move(op));
}

uint64_t GatedSink::submitWrite(Op &&op, std::string_view data)
{
	std::lock_guard<std::mutex> g(gate_);
	return submitLocked(std::move(op), &data);
}

uint64_t GatedSink::submitBarrier(bool durable)
{
	std::lock_guard<std::mutex> g(gate_);
	uint64_t seq = inner_->submitBarrier(durable);
	if (seq)
		lastSeq_.store(seq);
	return seq;
}

uint64_t GatedSink::submitLocked(Op &&op, const std::string_view *writeData)
{
	bool rename = op.type == OpType::Rename;
	if (rename && tracking_ && !renamed_.overflow) {
		renamed_.paths.insert(op.path);
		renamed_.paths.insert(op.path2);
		if (renamed_.paths.size() > kMaxTrackedRenames) {
			renamed_.paths.clear();
			renamed_.overflow = true;
		}
	}
	uint64_t seq = writeData ? inner_->submitWrite(std::move(op), *writeData) : inner_->submit(std::move(op));
	if (rename && seq)
		lastRenameSeq_.store(seq);
	if (seq)
		lastSeq_.store(seq);
	return seq;
}

void GatedSink::trackRenames(bool on)
{
	tracking_ = on;
	renamed_ = {};
}

GatedSink::Renamed GatedSink::takeRenamed()
{
	return std::exchange(renamed_, {});
}

void GatedSink::beginRename()
{
	std::unique_lock<std::mutex> l(fenceMutex_);
	fenceCv_.wait(l, [this] { return !fenced_; });
	renaming_++;
}

void GatedSink::endRename()
{
	std::lock_guard<std::mutex> l(fenceMutex_);
	if (--renaming_ == 0)
		fenceCv_.notify_all();
}

bool GatedSink::raiseRenameFence(std::chrono::milliseconds timeout)
{
	std::unique_lock<std::mutex> l(fenceMutex_);
	fenced_ = true;
	return fenceCv_.wait_for(l, timeout, [this] { return renaming_ == 0; });
}

void GatedSink::lowerRenameFence()
{
	std::lock_guard<std::mutex> l(fenceMutex_);
	fenced_ = false;
	fenceCv_.notify_all();
}

/* ---- the source side of a round ---- */

namespace {

/*
 * Ordering argument (why live writes during the resync cannot be lost).
 * Capture submits a live op after its local effect. Every resync step reads the
 * source and submits what it read while holding the gate, so for a live op L and a
 * step R on the same path:
 *  - L's effect after R's read: L's submit waits for the gate, so L is applied after
 *    R on the target, on top of what R wrote. Correct.
 *  - L's effect before R's read: R already contains L's result. If L is sequenced
 *    after R it is replayed on top of its own result, which is harmless for
 *    overwrites, truncates, unlinks (absent is fine), creates (the file's later
 *    writes follow the create in the stream), mkdir and setattr.
 * A step that meets a different inode under its path (unlink + create in between)
 * restarts the file with a Create, so bytes of the old inode never survive. The
 * target's manifest may be older than ops still queued before the round; replaying
 * those ops on the target likewise converges - except Rename, which moves a target
 * file the manifest saw under another name: the caller repeats the round with a
 * fresh manifest whenever a Rename was sequenced after the manifest was taken.
 */
class RoundRunner
{
public:
	RoundRunner(int rootFd, uint16_t dirIndex, const ScanOptions &options,
		    const std::vector<ManifestEntry> &target, GatedSink *sink, const ResyncProgressFn &progress,
		    const BlockSelection *sendUnhashed, BlockSelection *deferred)
		: rootFd_(rootFd), dir_(dirIndex), options_(options), sink_(sink), progress_(progress),
		  sendUnhashed_(sendUnhashed), deferred_(deferred)
	{
		for (const auto &e : target)
			index_[e.path] = &e;
		lateWholeBudget_ = std::max<uint64_t>(8u << 20, uint64_t(4096) * target.size());
		targetSorted_ = target;
		std::sort(targetSorted_.begin(), targetSorted_.end(),
			  [](const ManifestEntry &a, const ManifestEntry &b) { return a.path > b.path; });
	}

	Result<ResyncStats> run(const std::function<Status()> &atStart)
	{
		std::vector<ManifestEntry> list;
		{
			/* Namespace pass under one gate hold: after it every source path exists on
			 * the target with the right type, so a live op sequenced before a path's
			 * data step (a write into a file the stale target lacked) applies cleanly. */
			auto gate = sink_->hold();
			if (atStart)
				if (Status st = atStart(); !st)
					return st.error();
			if (int r = removeExtras(); r < 0)
				return makeError(r, errorText_.empty() ? strerror(-r) : errorText_);
			ScanOptions listOpts = options_;
			listOpts.hashes = false;
			auto l = scanTree(rootFd_, listOpts);
			if (!l)
				return l.error();
			list = std::move(*l);
			for (const auto &e : list) {
				if (stopped())
					return makeError(-ECANCELED, "resync cancelled");
				int r = 0;
				switch (e.type) {
				case EntryType::Dir: r = syncDir(e); break;
				case EntryType::Symlink: r = syncSymlink(e); break;
				case EntryType::Other: r = syncOther(e); break;
				case EntryType::File:
					stats_.bytesTotal += toCompare(e);
					r = createFile(e);
					break;
				}
				if (r < 0)
					return makeError(r, errorText_.empty() ? std::string("resync of '") + e.path +
										  "' failed: " + strerror(-r)
									       : errorText_);
			}
		}
		report(true);
		for (const auto &e : list) {
			if (e.type != EntryType::File)
				continue;
			if (stopped())
				return makeError(-ECANCELED, "resync cancelled");
			if (int r = syncFile(e); r < 0)
				return makeError(r, errorText_.empty() ? std::string("resync of '") + e.path +
									  "' failed: " + strerror(-r)
								       : errorText_);
		}
		report(true);
		return stats_;
	}

private:
	bool stopped() const { return options_.stop && options_.stop->load(); }
	const ManifestEntry *target(const std::string &path) const
	{
		auto it = index_.find(path);
		return it == index_.end() ? nullptr : it->second;
	}
	void report(bool force)
	{
		if (!progress_)
			return;
		if (force || stats_.bytesDone - lastReport_ >= (8u << 20)) {
			lastReport_ = stats_.bytesDone;
			progress_(stats_.bytesDone, stats_.bytesTotal);
		}
	}
	int put(Op &&op)
	{
		op.dir = dir_;
		std::string what = std::string(opTypeName(op.type)) + " '" + op.path + "'";
		uint64_t seq = sink_->submitLocked(std::move(op));
		if (seq == 0) {
			errorText_ = "the stream refused resync op " + what;
			return -EINVAL;
		}
		stats_.ops++;
		stats_.lastSeq = seq;
		return 0;
	}

	int removeExtras()
	{
		for (const auto &t : targetSorted_) {
			if (stopped())
				return -ECANCELED;
			struct stat s;
			bool present = fstatat(rootFd_, t.path.c_str(), &s, AT_SYMLINK_NOFOLLOW) == 0;
			if (!present && errno != ENOENT && errno != ENOTDIR)
				return -errno;
			if (present && typeOf(s.st_mode) == t.type)
				continue;
			if (present && t.type != EntryType::Dir &&
			    captureExcluded(options_.exclude, options_.include, t.path))
				continue;
			Op op;
			op.type = t.type == EntryType::Dir ? OpType::Rmdir : OpType::Unlink;
			op.path = t.path;
			if (int r = put(std::move(op)); r < 0)
				return r;
			stats_.removed++;
			removed_.insert(t.path);
		}
		return 0;
	}

	/* The target entry to compare with, unless removeExtras() took it away. */
	const ManifestEntry *live(const std::string &path) const
	{
		return removed_.count(path) ? nullptr : target(path);
	}

	int syncDir(const ManifestEntry &e);
	int createFile(const ManifestEntry &e);
	int syncSymlink(const ManifestEntry &e);
	int syncOther(const ManifestEntry &e);
	int syncFile(const ManifestEntry &e);
	int syncFileAttempt(const ManifestEntry &e, bool forceFull, bool *retry);

	/* Bytes of e the data pass reads: all, unless the target's entry (by the dirty
	 * logs) names only some blocks; then those plus the tail past the shorter size. */
	uint64_t toCompare(const ManifestEntry &e) const
	{
		const ManifestEntry *t = live(e.path);
		if (!t || t->type != EntryType::File || t->coverage == Coverage::All)
			return e.size;
		uint64_t bs = options_.blockSize;
		uint64_t n = 0;
		for (uint64_t b : t->blockIndex)
			if (b * bs < e.size)
				n += std::min<uint64_t>(bs, e.size - b * bs);
		if (e.size > t->size)
			n += e.size - t->size / bs * bs;
		return std::min(n, e.size);
	}

	int rootFd_;
	uint16_t dir_;
	const ScanOptions &options_;
	GatedSink *sink_;
	const ResyncProgressFn &progress_;
	const BlockSelection *sendUnhashed_;	/* by inode; read after atStart */
	BlockSelection *deferred_;		/* by path; null: send every differing block */
	uint64_t deferBudget_ = kMaxSubBlocks * kSubBlockSize;	/* bytes deferral may still name */
	/* Late blocks sent whole before deferral starts: a second round walks both trees
	 * again, worth it only past about 4 KiB per entry (8 MiB at least). */
	uint64_t lateWholeBudget_ = 0;
	std::unordered_map<std::string, const ManifestEntry *> index_;
	std::vector<ManifestEntry> targetSorted_;
	std::set<std::string> removed_;
	std::set<std::string> created_;		/* made empty by the namespace pass: send every block */
	std::map<std::pair<dev_t, ino_t>, std::string> linkFirst_;
	ResyncStats stats_;
	uint64_t lastReport_ = 0;
	std::string errorText_;
};

int RoundRunner::syncDir(const ManifestEntry &e)
{
	struct stat s;
	if (fstatat(rootFd_, e.path.c_str(), &s, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(s.st_mode))
		return 0;	/* gone or replaced since the listing: live ops carry it */
	stats_.dirs++;
	const ManifestEntry *t = live(e.path);
	Op op;
	op.path = e.path;
	op.mode = s.st_mode & 07777;
	op.uid = s.st_uid;
	op.gid = s.st_gid;
	if (!t || t->type != EntryType::Dir) {
		op.type = OpType::Mkdir;
		return put(std::move(op));
	}
	if ((t->mode & 07777) == (s.st_mode & 07777) && t->uid == s.st_uid && t->gid == s.st_gid)
		return 0;
	op.type = OpType::Setattr;
	op.valid = kSetMode | kSetUid | kSetGid;
	return put(std::move(op));
}

int RoundRunner::syncSymlink(const ManifestEntry &e)
{
	struct stat s;
	char buf[4097];
	if (fstatat(rootFd_, e.path.c_str(), &s, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISLNK(s.st_mode))
		return 0;
	ssize_t n = readlinkat(rootFd_, e.path.c_str(), buf, sizeof(buf) - 1);
	if (n < 0)
		return 0;
	std::string link(buf, static_cast<size_t>(n));
	const ManifestEntry *t = live(e.path);
	if (t && t->type == EntryType::Symlink && t->target == link && t->uid == s.st_uid && t->gid == s.st_gid)
		return 0;
	Op op;
	op.type = OpType::Symlink;
	op.path = e.path;
	op.target = link;
	op.uid = s.st_uid;
	op.gid = s.st_gid;
	return put(std::move(op));
}

int RoundRunner::syncOther(const ManifestEntry &e)
{
	struct stat s;
	if (fstatat(rootFd_, e.path.c_str(), &s, AT_SYMLINK_NOFOLLOW) < 0 || typeOf(s.st_mode) != EntryType::Other)
		return 0;
	const ManifestEntry *t = live(e.path);
	if (t && t->type == EntryType::Other && t->mode == s.st_mode && t->rdev == s.st_rdev &&
	    t->uid == s.st_uid && t->gid == s.st_gid)
		return 0;
	if (t && t->type == EntryType::Other) {
		/* Mknod keeps an existing node of the same kind: remove it to change it. */
		Op rm;
		rm.type = OpType::Unlink;
		rm.path = e.path;
		if (int r = put(std::move(rm)); r < 0)
			return r;
	}
	Op op;
	op.type = OpType::Mknod;
	op.path = e.path;
	op.mode = s.st_mode;
	op.rdev = s.st_rdev;
	op.uid = s.st_uid;
	op.gid = s.st_gid;
	return put(std::move(op));
}

int RoundRunner::createFile(const ManifestEntry &e)
{
	struct stat s;
	if (fstatat(rootFd_, e.path.c_str(), &s, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISREG(s.st_mode))
		return 0;
	const ManifestEntry *t = live(e.path);
	if (t && t->type == EntryType::File)
		return 0;
	Op op;
	op.type = OpType::Create;
	op.path = e.path;
	op.mode = s.st_mode & 07777;
	op.uid = s.st_uid;
	op.gid = s.st_gid;
	created_.insert(e.path);
	return put(std::move(op));
}

int RoundRunner::syncFile(const ManifestEntry &e)
{
	bool forceFull = false;
	uint64_t counted = toCompare(e);
	for (int attempt = 0; attempt < kMaxFileAttempts; attempt++) {
		bool retry = false;
		int r = syncFileAttempt(e, forceFull, &retry);
		if (r < 0 || !retry) {
			stats_.bytesDone += counted;
			report(false);
			return r;
		}
		/* The path now names another inode: what we sent of the old one must not
		 * survive, so the next attempt recreates the file and sends every block
		 * (none of it waits for pieces then). */
		forceFull = true;
		if (deferred_)
			deferred_->byPath.erase(e.path);
	}
	errorText_ = "'" + e.path + "' kept changing identity during resync";
	return -EAGAIN;
}

int RoundRunner::syncFileAttempt(const ManifestEntry &e, bool forceFull, bool *retry)
{
	int fd = openat(rootFd_, e.path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return 0;	/* gone or no longer a file: live ops carry it */
	struct Closer {
		int fd;
		~Closer() { close(fd); }
	} closer{ fd };
	struct stat opened;
	if (fstat(fd, &opened) < 0 || !S_ISREG(opened.st_mode))
		return 0;
	auto sameInode = [&]() {
		struct stat s;
		return fstatat(rootFd_, e.path.c_str(), &s, AT_SYMLINK_NOFOLLOW) == 0 &&
		       s.st_ino == opened.st_ino && s.st_dev == opened.st_dev;
	};

	const ManifestEntry *t = live(e.path);
	/* A retry always recreates: the namespace pass's Create may predate an unlink. */
	bool created = !forceFull && created_.count(e.path) > 0;
	bool full = forceFull || created || !t || t->type != EntryType::File;
	uint64_t size = 0;
	{
		auto gate = sink_->hold();
		if (!sameInode()) {
			*retry = true;
			return 0;
		}
		struct stat s;
		if (fstat(fd, &s) < 0)
			return -errno;
		size = static_cast<uint64_t>(s.st_size);
		stats_.files++;
		if (s.st_nlink > 1) {
			auto key = std::make_pair(s.st_dev, s.st_ino);
			auto it = linkFirst_.find(key);
			if (it != linkFirst_.end()) {
				/* A second name of a file already sent: the target must share the inode
				 * too, or later writes through one name would miss the other. */
				Op op;
				op.type = OpType::Link;
				op.path = it->second;
				op.path2 = e.path;
				return put(std::move(op));
			}
			linkFirst_[key] = e.path;
		}
		if (full && !created) {
			Op op;
			op.type = OpType::Create;
			op.path = e.path;
			op.mode = s.st_mode & 07777;
			op.uid = s.st_uid;
			op.gid = s.st_gid;
			if (int r = put(std::move(op)); r < 0)
				return r;
		}
	}

	const uint32_t bs = options_.blockSize;
	std::vector<uint8_t> buf(bs);
	bool wrote = false;
	/*
	 * With partial coverage (both dirty logs usable) only the blocks the target
	 * hashed and the tail past the shorter of both sizes can differ; every other
	 * block is equal by the logs and is neither read nor sent.
	 */
	const bool partial = !full && t->coverage != Coverage::All;
	/* Blocks the source's log named only after the target hashed: sent as they are. */
	const BlockRanges *unhashed = nullptr;
	if (partial && sendUnhashed_) {
		auto it = sendUnhashed_->byIno.find(opened.st_ino);
		if (it != sendUnhashed_->byIno.end())
			unhashed = &it->second;
	}
	const uint64_t tailFrom = full || size == t->size ? UINT64_MAX : std::min(size, t->size) / bs;
	/* Sub-block hashes: blockSize / kSubBlockSize per hashed block, if the target sent them. */
	const size_t perBlock = bs / kSubBlockSize;
	const bool withSubs = !full && hasPieces(bs) && t->coverage != Coverage::None &&
			      t->subBlocks.size() == t->blocks.size() * perBlock;
	/*
	 * Blocks that wait for their piece hashes (deferred_): those that differ from a
	 * target hash that came without pieces (a full compare, or named past the target's
	 * piece budget), and those the source changed too late for the target's manifest
	 * (unhashed) where the target has data to compare with.
	 */
	const bool piecesLater = deferred_ && !full && hasPieces(bs);
	const bool deferDiffering = piecesLater && !withSubs && t->coverage != Coverage::None;
	BlockRanges *deferTo = nullptr;
	/* Counted as whole blocks, as the target's scan counts their pieces; at most half
	 * the selection limit of paths (renamed paths may join the same selection). */
	auto defer = [&](uint64_t i) {
		if (deferBudget_ < bs || (!deferTo && deferred_->byPath.size() >= kMaxSelectionPaths / 2))
			return false;
		if (!deferTo)
			deferTo = &deferred_->byPath[e.path];
		deferTo->add(i, 1);
		deferBudget_ -= bs;
		stats_.blocksDeferred++;
		return true;
	};
	/* The target's hash of block i (null: not hashed there), and its pieces' in *subs. */
	auto targetHash = [&](uint64_t i, const Hash128 **subs) -> const Hash128 * {
		*subs = nullptr;
		if (full)
			return nullptr;
		size_t pos = static_cast<size_t>(i);
		if (t->coverage == Coverage::All) {
			if (i >= t->blocks.size())
				return nullptr;
		} else {
			auto it = std::lower_bound(t->blockIndex.begin(), t->blockIndex.end(), i);
			if (it == t->blockIndex.end() || *it != i)
				return nullptr;
			pos = static_cast<size_t>(it - t->blockIndex.begin());
		}
		if (withSubs)
			*subs = &t->subBlocks[pos * perBlock];
		return &t->blocks[pos];
	};
	/* Writes [from, to) of the block at off (bytes from buf). */
	auto send = [&](uint64_t off, size_t from, size_t to) {
		Op op;
		op.type = OpType::Write;
		op.path = e.path;
		op.offset = off + from;
		op.data.assign(reinterpret_cast<const char *>(buf.data() + from), to - from);
		stats_.blocksSent++;
		stats_.bytesSent += to - from;
		return put(std::move(op));
	};
	std::vector<Hash128> pieces;
	for (uint64_t off = 0, i = 0; off < size; off += bs, i++) {
		if (stopped())
			return -ECANCELED;
		const Hash128 *subs = nullptr;
		const Hash128 *th = targetHash(i, &subs);
		if (partial && !th && i < tailFrom && !(unhashed && unhashed->contains(i))) {
			/* Skip to the next hashed or unhashed-named block, or the tail. */
			uint64_t next = tailFrom;
			if (t->coverage == Coverage::Some) {
				auto it = std::upper_bound(t->blockIndex.begin(), t->blockIndex.end(), i);
				if (it != t->blockIndex.end())
					next = std::min(next, *it);
			}
			if (unhashed)
				next = std::min(next, unhashed->nextFrom(i + 1));
			if (next == UINT64_MAX || next * bs >= size)
				break;
			off = next * bs - bs;
			i = next - 1;
			continue;
		}
		/* A few late blocks go whole: a piece round costs another walk of both trees. */
		if (piecesLater && !th && unhashed && unhashed->contains(i) && off < t->size) {
			if (lateWholeBudget_ >= bs)
				lateWholeBudget_ -= bs;
			else if (defer(i))
				continue;
		}
		auto gate = sink_->hold();
		if (!sameInode()) {
			*retry = true;
			return 0;
		}
		ssize_t n = pread(fd, buf.data(), bs, static_cast<off_t>(off));
		if (n < 0)
			return -errno;
		if (n == 0)
			break;	/* truncated meanwhile: the truncate is in the stream after us */
		stats_.bytesRead += static_cast<uint64_t>(n);
		Hash128 h = hashBlock({ buf.data(), static_cast<size_t>(n) });
		if (th && *th == h && off + static_cast<uint64_t>(n) <= t->size) {
			stats_.blocksSkipped++;
			continue;
		}
		/* Only blocks the target has: a piece compare saves nothing on the others. */
		if (deferDiffering && th && defer(i))
			continue;
		wrote = true;
		if (!subs) {
			if (int r = send(off, 0, static_cast<size_t>(n)); r < 0)
				return r;
			continue;
		}
		/* Only the runs of pieces that differ (or lie past the target's size). */
		pieces.clear();
		hashPieces({ buf.data(), static_cast<size_t>(n) }, bs, &pieces);
		size_t runFrom = SIZE_MAX;
		bool sent = false;
		for (size_t j = 0; j <= perBlock; j++) {
			size_t from = std::min(j * kSubBlockSize, static_cast<size_t>(n));
			size_t to = std::min(from + kSubBlockSize, static_cast<size_t>(n));
			bool piece = j < perBlock && from < to;
			bool differs = piece && (pieces[j] != subs[j] || off + to > t->size);
			if (differs && runFrom == SIZE_MAX) {
				runFrom = from;
			} else if (!differs && runFrom != SIZE_MAX) {
				if (int r = send(off, runFrom, from); r < 0)
					return r;
				runFrom = SIZE_MAX;
				sent = true;
			}
			if (piece && !differs)
				stats_.piecesSkipped++;
		}
		/* The block differs but no piece does (not possible with a consistent peer):
		 * send it whole rather than trust the pieces. */
		if (!sent)
			if (int r = send(off, 0, static_cast<size_t>(n)); r < 0)
				return r;
	}

	auto gate = sink_->hold();
	if (!sameInode()) {
		*retry = true;
		return 0;
	}
	struct stat s;
	if (fstat(fd, &s) < 0)
		return -errno;
	Timespec mtime{ s.st_mtim.tv_sec, static_cast<uint32_t>(s.st_mtim.tv_nsec) };
	if (!full && !wrote && t->size == static_cast<uint64_t>(s.st_size) && t->mode == s.st_mode &&
	    t->uid == s.st_uid && t->gid == s.st_gid && t->mtime == mtime)
		return 0;
	Op op;
	op.type = OpType::Setattr;
	op.path = e.path;
	op.valid = kSetMode | kSetUid | kSetGid | kSetSize | kSetMtime;
	op.mode = s.st_mode & 07777;
	op.uid = s.st_uid;
	op.gid = s.st_gid;
	op.size = static_cast<uint64_t>(s.st_size);
	op.atime = { s.st_atim.tv_sec, static_cast<uint32_t>(s.st_atim.tv_nsec) };
	op.mtime = mtime;
	return put(std::move(op));
}

} /* namespace */

Result<ResyncStats> runResyncRound(int rootFd, uint16_t dirIndex, const ScanOptions &options,
				   const std::vector<ManifestEntry> &target, GatedSink *sink,
				   const ResyncProgressFn &progress, const std::function<Status()> &atStart,
				   const BlockSelection *sendUnhashed, BlockSelection *deferred)
{
	if (options.blockSize == 0)
		return makeError(-EINVAL, "block size must not be 0");
	RoundRunner runner(rootFd, dirIndex, options, target, sink, progress, sendUnhashed, deferred);
	return runner.run(atStart);
}

/* ---- control channel ---- */

Result<std::unique_ptr<ControlChannel>> ControlChannel::create(int fd, const ClusterKey &key, uint64_t clusterId,
								const std::string &module, NodeId self)
{
	auto sendCodec = WireCodec::create(key, clusterId);
	auto recvCodec = WireCodec::create(key, clusterId);
	if (!sendCodec || !recvCodec) {
		close(fd);
		return sendCodec ? recvCodec.error() : sendCodec.error();
	}
	std::unique_ptr<ControlChannel> ch(new ControlChannel());
	ch->fd_ = fd;
	ch->sendCodec_ = std::move(*sendCodec);
	ch->recvCodec_ = std::move(*recvCodec);
	ch->module_ = module;
	ch->self_ = self;
	if (RAND_bytes(reinterpret_cast<unsigned char *>(&ch->localNonce_), sizeof(ch->localNonce_)) != 1)
		return makeError(-EIO, "no random nonce (OpenSSL RAND_bytes failed)");
	return ch;
}

ControlChannel::~ControlChannel()
{
	if (fd_ >= 0)
		close(fd_);
}

void ControlChannel::shutdown()
{
	if (fd_ >= 0)
		::shutdown(fd_, SHUT_RDWR);
}

Status ControlChannel::readExact(uint8_t *buf, size_t len, std::chrono::milliseconds timeout)
{
	size_t got = 0;
	auto deadline = std::chrono::steady_clock::now() + timeout;
	while (got < len) {
		int waitMs = -1;
		if (timeout.count() > 0) {
			auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
											  std::chrono::steady_clock::now());
			if (left.count() <= 0)
				return makeError(-ETIMEDOUT, "control connection: peer too slow");
			waitMs = static_cast<int>(left.count());
		}
		pollfd p{ fd_, POLLIN, 0 };
		int r = poll(&p, 1, waitMs);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return makeError(-errno, "control connection: poll failed");
		}
		if (r == 0)
			continue;
		ssize_t n = ::recv(fd_, buf + got, len - got, 0);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return makeError(-errno, std::string("control connection: ") + strerror(errno));
		}
		if (n == 0)
			return makeError(-ECONNRESET, "control connection closed by the peer");
		got += static_cast<size_t>(n);
	}
	return {};
}

namespace {

/* The frames that open a connection: they carry the sender's nonce, sequence 0. */
bool isHello(ControlFrame type)
{
	return type == ControlFrame::Hello || type == ControlFrame::Challenge || type == ControlFrame::VerifyHello;
}

} /* namespace */

Status ControlChannel::send(ControlFrame type, std::span<const uint8_t> payload)
{
	std::lock_guard<std::mutex> g(sendMutex_);
	FrameHeader h;
	h.type = static_cast<uint8_t>(type);
	h.sender = self_;
	h.module = module_;
	if (isHello(type)) {
		h.incarnation = localNonce_;
		h.sequence = 0;
	} else {
		h.incarnation = peerNonce_;
		h.sequence = ++sendSeq_;
	}
	std::vector<uint8_t> out;
	if (int r = sendCodec_->encode(h, payload, &out, kMaxStreamPayload); r < 0)
		return makeError(r, "control frame could not be encoded");
	size_t off = 0;
	while (off < out.size()) {
		ssize_t n = ::send(fd_, out.data() + off, out.size() - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return makeError(-errno, std::string("control connection: ") + strerror(errno));
		}
		off += static_cast<size_t>(n);
	}
	return {};
}

Status ControlChannel::recv(ControlFrame *type, std::vector<uint8_t> *payload, std::chrono::milliseconds timeout)
{
	std::vector<uint8_t> buf(kWireHeaderSize);
	if (auto s = readExact(buf.data(), buf.size(), timeout); !s)
		return s;
	size_t size = 0;
	if (DropReason d = WireCodec::frameSize(buf, &size); d != DropReason::None)
		return makeError(-EPROTO, std::string("control frame refused: ") + dropReasonName(d));
	buf.resize(size);
	if (auto s = readExact(buf.data() + kWireHeaderSize, size - kWireHeaderSize, timeout); !s)
		return s;
	DecodedFrame f;
	if (DropReason d = recvCodec_->decode(buf, &f, kMaxStreamPayload); d != DropReason::None)
		return makeError(-EPROTO, std::string("control frame refused: ") + dropReasonName(d));
	if (f.header.module != module_)
		return makeError(-EPROTO, "control frame for another module");
	if (isHello(static_cast<ControlFrame>(f.header.type))) {
		if (f.header.sequence != 0 || recvCodec_->inSession() || f.header.incarnation == 0)
			return makeError(-EPROTO, "control hello out of place");
		/* Both nonces known: later frames use this connection's session keys. */
		int ret = recvCodec_->startSession(localNonce_, f.header.incarnation, WireCodec::Ways::Receive);
		if (ret == 0) {
			std::lock_guard<std::mutex> g(sendMutex_);
			ret = sendCodec_->startSession(localNonce_, f.header.incarnation);
			peerNonce_ = f.header.incarnation;
		}
		if (ret < 0)
			return makeError(-EPROTO, "control hello with our own nonce");
	} else if (!recvCodec_->inSession()) {
		return makeError(-EPROTO, "control frame before the hello");
	} else if (f.header.incarnation != localNonce_ || f.header.sequence != recvSeq_ + 1) {
		return makeError(-EPROTO, "control frame replayed or from another connection");
	} else {
		recvSeq_++;
	}
	if (f.header.type < static_cast<uint8_t>(ControlFrame::Hello) ||
	    f.header.type > static_cast<uint8_t>(ControlFrame::VerifyReport))
		return makeError(-EPROTO, "unknown control frame");
	*type = static_cast<ControlFrame>(f.header.type);
	payload->assign(f.payload.begin(), f.payload.end());
	if (*type == ControlFrame::Fail)
		return makeError(-ECONNABORTED, "peer failed: " +
						       std::string(payload->begin(), payload->end()));
	return {};
}

namespace {

/* Hello and Challenge carry u16 kControlVersion (none before version 2). */
std::vector<uint8_t> controlVersion()
{
	std::vector<uint8_t> v;
	le::append<uint16_t>(&v, kControlVersion);
	return v;
}

Status checkControlVersion(const std::vector<uint8_t> &payload, const char *peer)
{
	uint16_t v = payload.size() == 2 ? le::get<uint16_t>(payload.data()) : 1;
	if (v != kControlVersion)
		return makeError(-EPROTO, fmt::format("the {} runs another SK version (control protocol {}, "
						      "we speak {}): upgrade both nodes", peer, v, kControlVersion));
	return {};
}

} /* namespace */

Status ControlChannel::handshakeTarget(std::chrono::milliseconds timeout, ControlFrame hello)
{
	if (auto s = send(hello, controlVersion()); !s)
		return s;
	ControlFrame type;
	std::vector<uint8_t> payload;
	if (auto s = recv(&type, &payload, timeout); !s)
		return s;
	if (type != ControlFrame::Challenge)
		return makeError(-EPROTO, "control: expected a challenge");
	return checkControlVersion(payload, "source");
}

Status ControlChannel::handshakeSource(std::chrono::milliseconds timeout, ControlFrame hello)
{
	ControlFrame type;
	std::vector<uint8_t> payload;
	if (auto s = recv(&type, &payload, timeout); !s)
		return s;
	if (type != hello)
		return makeError(-EPROTO, "control: expected a hello");
	if (auto s = checkControlVersion(payload, "target"); !s)
		return s;
	return send(ControlFrame::Challenge, controlVersion());
}

Status ControlChannel::sendManifest(const std::vector<ManifestEntry> &entries, uint64_t lastApplied)
{
	std::vector<uint8_t> frame;
	for (const auto &e : entries) {
		size_t first = 0;
		bool more;
		do {
			more = encodeManifestChunk(e, &first, &frame);
			if (frame.size() >= kManifestFrameBytes) {
				if (auto s = send(ControlFrame::Manifest, frame); !s)
					return s;
				frame.clear();
			}
		} while (more);
	}
	if (!frame.empty())
		if (auto s = send(ControlFrame::Manifest, frame); !s)
			return s;
	std::vector<uint8_t> end;
	le::append<uint64_t>(&end, lastApplied);
	return send(ControlFrame::ManifestEnd, end);
}

Status ControlChannel::sendSelection(ControlFrame frame, ControlFrame end, const BlockSelection &selection,
				     bool full)
{
	std::vector<uint8_t> buf;
	for (const auto &[path, ranges] : selection.byPath) {
		encodePathSelection(path, ranges, &buf);
		if (buf.size() >= kManifestFrameBytes) {
			if (auto s = send(frame, buf); !s)
				return s;
			buf.clear();
		}
	}
	if (!buf.empty())
		if (auto s = send(frame, buf); !s)
			return s;
	uint8_t f = full ? 1 : 0;
	return send(end, { &f, 1 });
}

Status ControlChannel::recvSelection(ControlFrame frame, ControlFrame end, BlockSelection *selection, bool *full,
				     std::chrono::milliseconds timeout)
{
	for (;;) {
		ControlFrame type;
		std::vector<uint8_t> payload;
		if (auto s = recv(&type, &payload, timeout); !s)
			return s;
		if (type == end) {
			if (payload.size() != 1 || payload[0] > 1)
				return makeError(-EPROTO, "malformed selection end");
			*full = payload[0] == 1;
			return {};
		}
		if (type != frame)
			return makeError(-EPROTO, "control: expected a selection");
		if (!decodePathSelection(payload, selection))
			return makeError(-EPROTO, "malformed selection");
		if (selection->byPath.size() > kMaxSelectionPaths)
			return makeError(-EPROTO, "selection names too many paths");
	}
}

Status ControlChannel::recvManifest(std::vector<ManifestEntry> *entries, uint64_t *lastApplied,
				    std::chrono::milliseconds timeout)
{
	entries->clear();
	bool continuing = false;	/* an entry's hashes go on in the next frame */
	for (;;) {
		ControlFrame type;
		std::vector<uint8_t> payload;
		if (auto s = recv(&type, &payload, timeout); !s)
			return s;
		if (type == ControlFrame::ManifestEnd) {
			le::Reader r(payload);
			if (!r.u64(lastApplied) || !r.done() || continuing)
				return makeError(-EPROTO, "malformed manifest end");
			return {};
		}
		if (type != ControlFrame::Manifest)
			return makeError(-EPROTO, "control: expected a manifest");
		if (!decodeManifestEntries(payload, entries, &continuing))
			return makeError(-EPROTO, "malformed manifest");
	}
}

uint8_t peekHello(int fd, std::chrono::milliseconds timeout)
{
	uint8_t hdr[8];
	auto deadline = std::chrono::steady_clock::now() + timeout;
	for (;;) {
		ssize_t n = ::recv(fd, hdr, sizeof(hdr), MSG_PEEK | MSG_DONTWAIT);
		if (n >= 6) {
			auto type = static_cast<ControlFrame>(hdr[5]);
			return type == ControlFrame::Hello || type == ControlFrame::VerifyHello || hdr[5] == kStreamHello
				       ? hdr[5]
				       : 0;
		}
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return 0;
		auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
										  std::chrono::steady_clock::now());
		if (left.count() <= 0)
			return 0;
		pollfd p{ fd, POLLIN, 0 };
		poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 100)));
	}
}

} /* namespace sk::repl */
