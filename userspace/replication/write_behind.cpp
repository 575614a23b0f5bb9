/* SPDX-License-Identifier: Apache-2.0 */
/* Write-behind for streaming writes (see write_behind.h). */

#include "replication/write_behind.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>

namespace sk::repl {

int WriteBehind::wrote(int fd, uint64_t offset, uint64_t length)
{
	if (length == 0)
		return 0;
	/* Writes of a run may come a little out of order (the FUSE kernel module's
	 * writeback requests, served by several threads); one that lands before the
	 * dropped part or more than a chunk past the end starts a new run, and
	 * whatever the old one left in flight is the kernel's again. Pages dirtied
	 * late in a chunk already started are written by its waiting call. */
	if (offset < dropped_ || offset > end_ + kChunk) {
		started_ = dropped_ = offset & ~uint64_t(4095);
		end_ = offset + length;
	} else {
		end_ = std::max(end_, offset + length);
	}
	while (end_ - started_ >= kChunk) {
		if (sync_file_range(fd, static_cast<off_t>(started_), kChunk, SYNC_FILE_RANGE_WRITE) < 0)
			return -errno;
		started_ += kChunk;
	}
	while (started_ - dropped_ > kWindow * kChunk) {
		if (sync_file_range(fd, static_cast<off_t>(dropped_), kChunk,
				    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER) < 0)
			return -errno;
		/* A hint: pages someone dirtied again meanwhile simply stay. */
		(void)posix_fadvise(fd, static_cast<off_t>(dropped_), kChunk, POSIX_FADV_DONTNEED);
		dropped_ += kChunk;
		droppedTotal_ += kChunk;
	}
	return 0;
}

} /* namespace sk::repl */
