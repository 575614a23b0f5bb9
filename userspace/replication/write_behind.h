/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Write-behind for streaming writes into a replicated tree: once a file is written
 * sequentially past one chunk, writeback of each full chunk starts at once and a
 * chunk a few chunks behind is waited for and dropped from the page cache.
 */
#pragma once

#include <cstdint>

namespace sk::repl {

/*
 * Why. A replica's copy (the SECOND's target, the PRIM's backing files under the
 * FUSE cache, which keeps the application's own view) is write-only data: caching
 * it costs memory and, at the next durable barrier, one big fdatasync of
 * everything written since the last one. With write-behind a large sequential
 * write leaves at most kWindow chunks dirty or cached per file, the barrier finds
 * little left to flush, and the page cache recycles the same memory instead of
 * taking fresh pages (on our build VMs, whose fresh pages cost a host fault each,
 * buffered 1 GiB writes ran at 200-250 MiB/s without it and 1.2-1.5 GiB/s with it).
 *
 * Only runs of (nearly) sequential writes of at least one chunk are handled;
 * random or small writes are left to the kernel. The state is per open file and not
 * thread-safe: the caller serialises writes to one file.
 *
 * Errors. Waiting for writeback consumes the file's writeback error for this fd
 * (the kernel's errseq cursor advances), so a later fsync would not report it:
 * wrote() returns it and the caller must treat it as a failed write.
 */
class WriteBehind
{
public:
	static constexpr uint64_t kChunk = 8u << 20;
	/* Chunks whose writeback may be in flight before the oldest is waited for. */
	static constexpr uint64_t kWindow = 4;

	/* After [offset, offset + length) was written to fd: 0, or -errno. */
	int wrote(int fd, uint64_t offset, uint64_t length);
	/* Forget the run (the file was truncated, replaced or closed). */
	void reset() { end_ = started_ = dropped_ = 0; }

	uint64_t droppedBytes() const { return droppedTotal_; }

private:
	uint64_t end_ = 0;	/* end of the current sequential run */
	uint64_t started_ = 0;	/* writeback started up to here (page aligned) */
	uint64_t dropped_ = 0;	/* waited for and dropped up to here */
	uint64_t droppedTotal_ = 0;
};

} /* namespace sk::repl */
