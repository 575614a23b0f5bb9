/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The replication op stream's unit: one mutation of a replicated tree, named by
 * paths relative to the tree's root ("a/b.txt", never absolute, never "..").
 * Capture (fuse/, fanotify/) produces ops in the order the local file system
 * applied them; the peer applies them in the same order.
 */
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sk::repl {

enum class OpType : uint8_t {
	Create = 1,	/* path, mode, uid, gid: a new empty regular file (O_EXCL semantics not needed) */
	Mkdir = 2,	/* path, mode, uid, gid */
	Symlink = 3,	/* path (the link), target, uid, gid */
	Link = 4,	/* path (existing), path2 (new name) */
	Unlink = 5,	/* path */
	Rmdir = 6,	/* path */
	Rename = 7,	/* path -> path2, flags (RENAME_NOREPLACE / RENAME_EXCHANGE) */
	Setattr = 8,	/* path, valid (kSet* bits), mode, uid, gid, size, atime, mtime */
	Setxattr = 9,	/* path, name, data (value), flags (XATTR_CREATE / XATTR_REPLACE) */
	Removexattr = 10,	/* path, name */
	Write = 11,	/* path, offset, data */
	Fallocate = 12,	/* path, flags (FALLOC_FL_*), offset, length */
	Mknod = 13,	/* path, mode (FIFO/socket/device), rdev, uid, gid */
	Barrier = 14,	/* no payload: ack everything up to here (durable if requested) */
};

/* Setattr.valid bits. */
constexpr uint32_t kSetMode = 1u << 0;
constexpr uint32_t kSetUid = 1u << 1;
constexpr uint32_t kSetGid = 1u << 2;
constexpr uint32_t kSetSize = 1u << 3;
constexpr uint32_t kSetAtime = 1u << 4;
constexpr uint32_t kSetMtime = 1u << 5;
constexpr uint32_t kSetAtimeNow = 1u << 6;
constexpr uint32_t kSetMtimeNow = 1u << 7;

struct Timespec {
	int64_t sec = 0;
	uint32_t nsec = 0;
	bool operator==(const Timespec &) const = default;
};

struct Op {
	OpType type = OpType::Barrier;
	uint64_t seq = 0;		/* position in the stream, set by the stream, 1-based */
	std::string path;		/* relative to the replicated root */
	std::string path2;		/* Link: new name; Rename: destination */
	std::string name;		/* xattr name */
	std::string target;		/* Symlink target */
	std::string data;		/* Write bytes; Setxattr value */
	uint32_t mode = 0;
	uint32_t uid = 0;
	uint32_t gid = 0;
	uint64_t rdev = 0;
	uint32_t flags = 0;
	uint32_t valid = 0;		/* Setattr */
	uint64_t offset = 0;
	uint64_t length = 0;		/* Fallocate; Setattr size goes in `size` */
	uint64_t size = 0;
	Timespec atime;
	Timespec mtime;
	bool durable = false;		/* Barrier: peer must fsync before acking */
	uint16_t dir = 0;		/* which replicated directory of the module (index) */

	bool operator==(const Op &) const = default;
};

const char *opTypeName(OpType type);

/*
 * Where capture sends ops. submit() assigns the op's seq and queues it in
 * order; it may block the calling (FUSE worker) thread while the stream is full
 * (backpressure). A durability call (fsync...) does:
 *     seq = submitBarrier(durable); <local fsync>; ret = waitAcked(seq);
 * so the local flush and the network round trip overlap. waitAcked() blocks
 * the calling thread until the peer has acknowledged every op up to seq, or
 * until the node has gone ALONE (the ops are then covered by dirty tracking):
 * 0 either way; -errno only when the data could not be made safe, and the
 * caller then fails the durability call (EIO). Thread-safe.
 */
class OpSink
{
public:
	virtual ~OpSink() = default;
	virtual uint64_t submit(Op &&op) = 0;
	/* A Write whose bytes are still in the caller's buffer (op.data empty); valid
	 * only during the call. A sink that encodes at once skips the copy into op. */
	virtual uint64_t submitWrite(Op &&op, std::string_view data)
	{
		op.data.assign(data);
		return submit(std::move(op));
	}
	virtual uint64_t submitBarrier(bool durable) = 0;
	virtual int waitAcked(uint64_t seq) = 0;
	/* True while waitAcked() does not wait for the peer: a durability point must
	 * then make the local effect durable itself. */
	virtual bool acksLocal() const { return false; }
	/* Around each rename: called before its local effect and after its submit. A
	 * sink may hold renames back in beginRename() (the resync's rename fence). */
	virtual void beginRename() {}
	virtual void endRename() {}
};

} /* namespace sk::repl */
