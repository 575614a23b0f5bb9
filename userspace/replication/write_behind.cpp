/* SPDX-License-Identifier: Apache-2.0 */
/* Write-behind for streaming writes (see write_behind.h). */

#include "replication/write_behind.h"

#include <algorithm>
#include <cerrno>
#include <fcntl.h>

namespace sk::repl {

int kickWriteback(int fd, uint64_t offset, uint64_t length)
{
	if (sync_file_range(fd, static_cast<off_t>(offset), static_cast<off_t>(length), SYNC_FILE_RANGE_WRITE) == 0)
		return 0;
	switch (errno) {
	case EINVAL: /* no writeback for this file type */
	case ESPIPE:
	case ENOMEM: /* the pages stay dirty: the next sync writes them */
	case EINTR:
	case EAGAIN:
		return 0;
	default:
		return errno;
	}
}

int WriteBehind::wrote(int fd, uint64_t offset, uint64_t length)
{
	if (length == 0)
		return 0;
	/* Writes of a run may come a little out of order (the FUSE kernel module's
	 * writeback requests, served by several threads). One more than a chunk past
	 * the end, or before what the window still covers, starts a new run; a late
	 * one just behind the dropped part is left alone. */
	uint64_t windowStart = dropped_ > kWindow * kChunk ? dropped_ - kWindow * kChunk : 0;
	if (offset < windowStart || offset > end_ + kChunk) {
		started_ = dropped_ = offset & ~uint64_t(4095);
		end_ = offset + length;
	} else if (offset >= dropped_) {
		end_ = std::max(end_, offset + length);
	} else {
		return 0;
	}
	int error = 0;
	while (end_ - started_ >= kChunk) {
		if (int err = kickWriteback(fd, started_, kChunk); err && !error)
			error = err;
		started_ += kChunk;
	}
	while (started_ - dropped_ > kWindow * kChunk) {
		(void)posix_fadvise(fd, static_cast<off_t>(dropped_), kChunk, POSIX_FADV_DONTNEED);
		dropped_ += kChunk;
		droppedTotal_ += kChunk;
	}
	return error;
}

} /* namespace sk::repl */
