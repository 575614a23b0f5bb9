/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Write-behind for streaming writes into a replicated tree: once a file is written
 * sequentially past one chunk, writeback of each full chunk starts at once and the
 * page cache is asked to drop a chunk a few chunks behind.
 */
#pragma once

#include <cstdint>

namespace sk::repl {

/*
 * Why. A replica's copy (the SECOND's target, the PRIM's backing files under the
 * FUSE cache, which keeps the application's own view) is write-only data: caching
 * it costs memory and, at the next durable barrier, one big fdatasync of
 * everything written since the last one. With write-behind a large sequential
 * write has its disk writes started chunk by chunk, the barrier finds little left
 * to flush, and the page cache mostly recycles the same memory instead of taking
 * fresh pages (on our build VMs, whose fresh pages cost a host fault each,
 * buffered 1 GiB writes ran at 200-250 MiB/s without it and 760-900 MiB/s with it).
 *
 * Nothing here waits for writeback: the kick (SYNC_FILE_RANGE_WRITE) only starts
 * it, and POSIX_FADV_DONTNEED drops the pages already clean and leaves the rest
 * (still dirty or under writeback: a writer faster than the disk meets the
 * kernel's dirty throttling as usual). No call consumes the file's recorded
 * writeback error: the next fsync/fdatasync of any of its fds still reports it.
 * An error the kick itself returns (the file system's writepages failed right
 * there, and may have dropped the pages: then no later sync would see it) is
 * wrote()'s result, and the owner's next durability point for the file must
 * report it. Callers may hold locks across wrote().
 *
 * Only runs of (nearly) sequential writes of at least one chunk are handled;
 * random or small writes are left to the kernel. The state is per file and not
 * thread-safe: the caller serialises writes to one file.
 */
class WriteBehind
{
public:
	static constexpr uint64_t kChunk = 8u << 20;
	/* Chunks kicked and not yet dropped: the drop lags the kick by this much. */
	static constexpr uint64_t kWindow = 4;

	/* After [offset, offset + length) was written to fd. The first error a kick
	 * returned (a positive errno, see kickWriteback), or 0. */
	int wrote(int fd, uint64_t offset, uint64_t length);

	/* Bytes asked to be dropped (those still dirty then stay cached). */
	uint64_t droppedBytes() const { return droppedTotal_; }

private:
	uint64_t end_ = 0;	/* end of the current sequential run */
	uint64_t started_ = 0;	/* writeback kicked up to here (page aligned) */
	uint64_t dropped_ = 0;	/* dropped up to here */
	uint64_t droppedTotal_ = 0;
};

/*
 * Starts writeback of [offset, offset + length) of fd (0, 0: all of it) without
 * waiting. Returns the error the file system's writepages returned right there
 * (a positive errno), which a later fsync may no longer see (see above), or 0.
 * Not a sync: EINVAL and ESPIPE (a file type without writeback) and the transient
 * ENOMEM, EINTR and EAGAIN (the pages stay dirty) count as 0.
 */
int kickWriteback(int fd, uint64_t offset, uint64_t length);

} /* namespace sk::repl */
