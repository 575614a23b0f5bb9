/* SPDX-License-Identifier: Apache-2.0 */
/*
 * DirtyLog: what this node wrote into one replicated dir that the peer may lack,
 * kept crash-safe (an activity log in the DRBD sense), so a resync after a failover,
 * a failback or a crash of either node compares only those extents.
 *
 * Every capture write, truncate or fallocate calls mark() before its local effect;
 * the first touch of an extent (kExtentBlocks blocks of the module's block size)
 * appends a 24-byte checksummed record and fdatasyncs it, batched across threads
 * (group commit). A write at or past EOF also records the next extents (appends
 * then sync once per kAppendAhead extents). Records are keyed by the backing inode,
 * so renames cannot hide a dirty file; the resync maps inodes to paths by walking.
 *
 * Two flags in the header qualify the records:
 *  - covers: every local write since the peer was last known equal is recorded.
 *    Cleared when the log is new, lost or damaged, set by rotate() (peer in sync,
 *    durable barrier acked) and by resetAfterResync() (this node's resync as target
 *    completed).
 *  - resyncing: the tree is half-way through a resync as target, so it differs from
 *    its peer in places no record names (a node promoted in that state must send
 *    everything when it becomes a source).
 *
 * Rotation (connected and in sync): switchEpoch() starts a new epoch under the
 * exclusive side of the writers' guard, so every write of the old epoch submitted
 * its op before; the caller then submits a durable barrier and, once acked,
 * dropBefore(epoch) rewrites the file without older records (tmp + fsync + rename).
 *
 * Thread safety: all methods may be called from any thread. Lock order:
 * writersMutex_ (Guard, switch side) -> mutex_.
 */
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/result.h"

namespace sk::repl {

/* Block ranges of one file, [first, first + count), sorted and merged. */
struct BlockRanges {
	std::vector<std::pair<uint64_t, uint64_t>> ranges;

	void add(uint64_t first, uint64_t count);
	bool contains(uint64_t block) const;
	/* The first block >= block in a range, or UINT64_MAX. */
	uint64_t nextFrom(uint64_t block) const;
	bool empty() const { return ranges.empty(); }
	uint64_t blocks() const;
};

/* What a resync should compare: block ranges per backing inode and per path. */
struct BlockSelection {
	std::unordered_map<uint64_t, BlockRanges> byIno;
	std::unordered_map<std::string, BlockRanges> byPath;
	bool empty() const { return byIno.empty() && byPath.empty(); }
};

struct DirtyLogState {
	bool covers = false;
	bool resyncing = false;
	uint64_t epoch = 0;
	uint64_t records = 0;
	std::string problem;		/* why covers is false, for logs and status */
};

class DirtyLog
{
public:
	static constexpr uint32_t kExtentBlocks = 16;	/* 1 MiB at the default 64 KiB */
	static constexpr uint32_t kAppendAhead = 8;	/* extents recorded ahead of an append */

	/*
	 * Opens (or creates, with covers = false) the log file for a dir. A missing file,
	 * a damaged header, a block size change or a damaged record before the last good
	 * one leave a usable empty-or-partial log with covers = false and the reason in
	 * state().problem; a torn last record (crash while appending: its write never
	 * happened) is dropped silently. Errors only when the file cannot be written.
	 */
	static Result<std::unique_ptr<DirtyLog>> open(const std::string &file, uint32_t blockSize);

	~DirtyLog();
	DirtyLog(const DirtyLog &) = delete;
	DirtyLog &operator=(const DirtyLog &) = delete;

	/*
	 * Held by a writer from mark() until its op is submitted (see rotation above).
	 * Writer-preferring on the switch side: a steady stream of writes cannot starve
	 * a rotation (std::shared_mutex on glibc could).
	 */
	class Guard
	{
	public:
		Guard() = default;
		explicit Guard(DirtyLog *log);
		Guard(Guard &&other) noexcept : log_(std::exchange(other.log_, nullptr)) {}
		Guard &operator=(Guard &&other) noexcept;
		~Guard();

	private:
		DirtyLog *log_ = nullptr;
	};
	Guard guard() { return Guard(this); }

	/*
	 * Records [offset, offset + length) of inode ino as dirty; returns once the
	 * records are durable. fd (optional, the open file): when a new extent must be
	 * recorded and the write reaches EOF, the next kAppendAhead extents are recorded
	 * too. Never fails the caller: if the log cannot be written, covers is dropped
	 * (full compare at the next resync).
	 */
	void mark(uint64_t ino, uint64_t offset, uint64_t length, int fd = -1);

	/* The recorded extents as a block selection (by inode). */
	BlockSelection selection() const;
	DirtyLogState state() const;

	/* Rotation, see above. switchEpoch() returns the new epoch. */
	uint64_t switchEpoch();
	Status dropBefore(uint64_t epoch);

	Status setResyncing(bool resyncing);
	/* After this node's resync as target completed: empty, covers, not resyncing. */
	Status resetAfterResync();

private:
	struct Record {
		uint64_t ino;
		uint32_t extent;
		uint32_t count;
		uint32_t epoch;
	};
	DirtyLog(std::string file, int fd, uint32_t blockSize);
	Status load();
	Status rewrite(const std::vector<Record> &keep, bool covers, bool resyncing, uint64_t epoch);
	Status writeHeader();
	void lostCoverage(const std::string &why);

	const std::string file_;
	int fd_;
	const uint32_t blockSize_;

	std::mutex writersMutex_;
	std::condition_variable writersCv_;
	uint64_t writers_ = 0;		/* Guards alive */
	bool switching_ = false;	/* switchEpoch()/resetAfterResync() waiting or running */
	void lockSwitch();
	void unlockSwitch();

	mutable std::mutex mutex_;
	std::condition_variable flushed_;
	bool flushing_ = false;
	uint64_t nextTicket_ = 1;
	uint64_t durableTicket_ = 0;
	std::vector<Record> pending_;
	std::vector<Record> records_;	/* everything in the file, in order */
	struct ExtentHash {
		size_t operator()(const std::pair<uint64_t, uint32_t> &k) const
		{
			return std::hash<uint64_t>()(k.first * 0x9e3779b97f4a7c15ull ^ k.second);
		}
	};
	/* This epoch: (inode, extent) -> ticket. Looked up on every write: hashed. */
	std::unordered_map<std::pair<uint64_t, uint32_t>, uint64_t, ExtentHash> logged_;
	uint64_t fileSize_ = 0;
	bool covers_ = false;
	bool resyncing_ = false;
	uint64_t epoch_ = 1;
	uint64_t salt_ = 0;
	uint64_t holeEpoch_ = 0;	/* newest epoch with unrecorded writes (0: none) */
	std::string problem_;		/* why covers is false */
};

} /* namespace sk::repl */
