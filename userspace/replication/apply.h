/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Applies replication ops, in order, to a target tree given as a directory fd (on
 * the SECOND). Every path is resolved beneath that fd with openat2, so a hostile
 * peer or hostile symlinks in the target can never reach anything outside it.
 */
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <set>
#include <string>
#include <unordered_map>

#include "core/result.h"
#include "replication/op.h"
#include "replication/write_behind.h"

namespace sk::repl {

/*
 * Path resolution: every component is resolved with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS | RESOLVE_NO_SYMLINKS) and the last one is never followed.
 * NO_SYMLINKS is stricter than BENEATH alone on purpose: capture produces paths the
 * kernel already resolved (a FUSE or fanotify path never goes through a symlink),
 * so a symlink met while resolving on the target is either divergence or an attack.
 *
 * Idempotency (replay after a reconnect). The receiver never applies the same seq
 * twice within a stream epoch; what can happen is that an op was applied but its ack
 * was lost with the connection, and the sender resends it: each op is therefore safe
 * to apply again right after itself:
 *   Create      the file is (re)made empty with mode/owner: same result.
 *   Mkdir       an existing directory is fine (mode/owner reapplied).
 *   Symlink     an existing symlink with the same target is fine; an existing
 *               non-directory in the way is replaced (the primary had none there).
 *   Link        an existing name for the same inode is fine; another non-directory
 *               in the way is replaced.
 *   Unlink/Rmdir  absent is fine.
 *   Rename      source absent and destination present = already done. EXCHANGE is
 *               not idempotent: it relies on the never-twice rule above.
 *   Setattr, Write, Fallocate(except collapse/insert), Setxattr (applied with
 *               flags 0: the primary already enforced CREATE/REPLACE), Removexattr
 *               (absent is fine): idempotent by nature.
 *   Mknod       an existing node of the same type is fine.
 * Anything else the target refuses (EIO, ENOSPC, EEXIST on a directory in the way,
 * ENOENT for a Write) is an error: apply() reports it and the caller must stop the
 * stream; an op is never skipped silently.
 */
class Applier
{
public:
	enum class Durability {
		FsyncDirty,	/* fsync the files and directories touched since the last durable barrier */
		Syncfs,		/* syncfs() the whole target file system */
	};

	struct Options {
		/* Measured on the build machine (ext4, busy with other jobs; 4 KiB write +
		 * durable barrier, 4 x 300 runs): median 4.2-6.3 ms with FsyncDirty, 4.0-7.3 ms
		 * with syncfs: no clear winner. FsyncDirty is the default because its cost is
		 * bounded by what we wrote, while syncfs also waits for every other writer on
		 * that file system. It falls back to syncfs when the dirty set overflows or a
		 * directory moved (dirty paths under it changed names). */
		Durability durability = Durability::FsyncDirty;
		size_t fdCacheSize = 64;
		size_t maxDirty = 4096;
		/* Apply owner changes (off when not running as root, e.g. in tests). */
		bool applyOwner = true;
	};

	struct Counters {
		uint64_t ops = 0;
		uint64_t bytesWritten = 0;
		uint64_t durableFlushes = 0;
		uint64_t syncfsFlushes = 0;
		uint64_t fsyncs = 0;
		uint64_t fdCacheHits = 0;
		uint64_t fdCacheMisses = 0;
		uint64_t missingSkipped = 0;	/* see setResyncing() */
		uint64_t writeBehindDropped = 0;	/* bytes written back and dropped early (WriteBehind) */
	};

	/* Takes its own duplicate of rootFd (which must be a directory). */
	static Result<std::unique_ptr<Applier>> create(int rootFd, const Options &options);
	~Applier();
	Applier(const Applier &) = delete;
	Applier &operator=(const Applier &) = delete;

	/*
	 * Applies one op; a Barrier with durable set flushes everything applied so far
	 * to stable storage before returning. The error names the op, the path and the
	 * errno; the target is then unchanged by this op or partially changed (a Write
	 * may have written a prefix): the caller must not continue the stream.
	 */
	Status apply(const Op &op) { return apply(op, op.data); }
	/* With a Write's bytes apart from op (decodeOp's writeData: no copy). */
	Status apply(const Op &op, std::string_view data);

	/* Makes everything applied so far durable (what a durable Barrier does). */
	Status flush();

	const Counters &counters() const { return counters_; }

	/*
	 * While a resync runs, a Write, Setattr, Fallocate or xattr op whose file is
	 * missing here is skipped: the source read the file after a local re-creation
	 * (e.g. unlink + create) whose op is sequenced after the step's ops, and that op
	 * and the live writes after it rebuild the file. A Rename that does not fit this
	 * half-resynced tree (source or destination directory missing, destination in
	 * the way) is skipped too: every rename during a resync is tracked by the source
	 * (GatedSink::trackRenames), which compares both of its paths again in another
	 * round before the target is in sync. In sync these are errors again.
	 */
	void setResyncing(bool on) { resyncing_ = on; }

private:
	std::atomic<bool> resyncing_{ false };
	Applier(int rootFd, const Options &options);

	/* Opens the parent directory of path (O_PATH) and returns the last component. */
	int openParent(const std::string &path, std::string *leaf, int *err);
	int resolve(const std::string &path, uint64_t flags, uint32_t mode, int *err);
	struct CachedFd;
	/* Writable fd for path from the LRU (not owned by the caller). */
	CachedFd *cachedEntry(const std::string &path, int *err);
	int cachedFd(const std::string &path, int *err);
	void invalidate(const std::string &path);
	void markDirty(const std::string &path);
	void markParentDirty(const std::string &path);

	int doCreate(const Op &op);
	int doMkdir(const Op &op);
	int doSymlink(const Op &op);
	int doLink(const Op &op);
	int doUnlink(const Op &op, bool dir);
	int doRename(const Op &op);
	int doSetattr(const Op &op);
	int doSetxattr(const Op &op);
	int doRemovexattr(const Op &op);
	int doWrite(const Op &op, std::string_view data);
	int doFallocate(const Op &op);
	int doMknod(const Op &op);
	int setOwner(int dirFd, const std::string &leaf, uint32_t uid, uint32_t gid);

	int rootFd_;
	Options options_;
	Counters counters_;

	/* LRU of writable fds by path: front = most recent. */
	struct CachedFd {
		std::string path;
		int fd;
		WriteBehind writeBehind;
	};
	std::list<CachedFd> lru_;
	std::unordered_map<std::string, std::list<CachedFd>::iterator> lruIndex_;

	/* Paths (files and directories, "." = root) to fsync at the next durable barrier. */
	std::set<std::string> dirty_;
	/* A directory moved or the set overflowed: the next flush uses syncfs. */
	bool dirtyOverflow_ = false;
	/* The first write-behind kick error since the last flush, which reports it. */
	int kickError_ = 0;
};

} /* namespace sk::repl */
