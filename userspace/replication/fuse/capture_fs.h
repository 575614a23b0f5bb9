/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CaptureFs: the FUSE over-mount of a replicated directory on the primary. It
 * passes every operation through to the real directory (opened before mounting)
 * and submits each mutation that took effect to an OpSink, in local order.
 */
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/result.h"
#include "replication/op.h"

namespace sk::repl {

class DirtyLog;

struct CaptureOptions {
	std::string mountpoint;		/* the replicated directory; over-mounted in place */
	uint16_t dirIndex = 0;		/* Op::dir of every op */
	OpSink *sink = nullptr;		/* borrowed; null = plain passthrough, no ops */
	bool writebackCache = true;	/* false when per_write */
	bool perWrite = false;		/* every write() waits for the peer's ack */
	/* The peer acks a durability point once it fsynced it ("ack": "durable"), or once
	 * applied ("applied"). */
	bool ackDurable = true;
	bool readOnly = false;		/* SECOND side: every mutation fails with EROFS, no caching */
	/*
	 * fnmatch(3) patterns (flags 0: '*' also matches '/') on the path relative to
	 * the root. A path is excluded when it or one of its ancestors matches an
	 * exclude pattern and it matches no include pattern. Excluded paths are
	 * served locally but produce no ops.
	 */
	std::vector<std::string> exclude;
	std::vector<std::string> include;
	unsigned threads = 4;		/* FUSE worker threads (max) */
	/* O_PATH fds the Inodes of all mounts may hold before the least recently used
	 * are dropped; 1.5x it, new Inodes keep a file handle instead of an fd.
	 * 0: half the soft RLIMIT_NOFILE at mount time. */
	uint64_t inodeFdBudget = 0;
	/* Borrowed, optional: every write, truncate and fallocate is recorded here before
	 * its local effect (see dirty_log.h), its Guard held until the op is submitted. */
	DirtyLog *dirtyLog = nullptr;
};

struct CaptureCounters {
	std::array<uint64_t, 16> opsByType{};	/* indexed by OpType value */
	uint64_t barriers = 0;			/* barriers submitted (incl. per-write ones) */
	uint64_t barrierWaitNs = 0;		/* total time spent in waitAcked() */
	uint64_t barrierFailures = 0;		/* waitAcked() < 0: durability call failed with EIO */
	uint64_t skipped = 0;			/* mutations with no op: excluded or unlinked-open */
	uint64_t prunedEntries = 0;		/* entries the kernel was asked to drop (fd budget) */
	uint64_t cachedInodes = 0;		/* inodes (one O_PATH fd each) of all mounts in the process */
	uint64_t handleOnlyInodes = 0;		/* inodes made with a file handle when out of fds */
	uint64_t writeBehindDropped = 0;	/* backing bytes written back and dropped early */
	uint64_t getxattrRequests = 0;		/* GETXATTR requests served */
	uint64_t flushRequests = 0;		/* FLUSH requests (the first one turns them off) */
	bool killprivV2 = false;		/* FUSE_HANDLE_KILLPRIV_V2 negotiated (suid/sgid stripped here) */
};

class CaptureFs
{
public:
	/* Detaches a dead mount left on mountpoint (ENOTCONN), opens the directory,
	 * mounts over it and starts the worker threads. Needs root (or CAP_SYS_ADMIN). */
	static Result<std::unique_ptr<CaptureFs>> mount(const CaptureOptions &options);

	~CaptureFs();
	CaptureFs(const CaptureFs &) = delete;
	CaptureFs &operator=(const CaptureFs &) = delete;

	/* Lazily unmounts, stops and joins the workers. Idempotent. Open files of
	 * applications keep the connection alive; after a grace period (5 s) it is
	 * aborted (their next uncached access fails with ENOTCONN). A worker blocked
	 * in OpSink::waitAcked()/submit() must be released by the sink first (e.g. the
	 * node going ALONE), or the join waits for it. Switching SECOND -> primary
	 * means unmount + mount with readOnly = false (caching differs). */
	Status unmount();

	CaptureCounters counters() const;
	const std::string &mountpoint() const;

	class Impl;

private:
	explicit CaptureFs(std::unique_ptr<Impl> impl);
	std::unique_ptr<Impl> impl_;
};

/* True when relPath produces no ops under these patterns (see CaptureOptions). */
bool captureExcluded(const std::vector<std::string> &exclude,
		     const std::vector<std::string> &include, const std::string &relPath);

} /* namespace sk::repl */
