/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Byte format of one replication Op (see op.h): what travels inside stream frames.
 * Decode trusts nothing: it is the first thing that touches bytes from the peer.
 */
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "replication/op.h"

namespace sk::repl {

/*
 * Encoding (all integers little-endian, strings = length + bytes, no NUL):
 *   common: u8 type, u8 opflags (bit 0: durable, Barrier only), u16 dir, u64 seq
 *   then per type, only the fields that type uses, in this order:
 *     Create, Mkdir   path, u32 mode, u32 uid, u32 gid
 *     Symlink         path, target, u32 uid, u32 gid
 *     Link            path, path2
 *     Unlink, Rmdir   path
 *     Rename          path, path2, u32 flags
 *     Setattr         path, u32 valid, u32 mode, u32 uid, u32 gid, u64 size,
 *                     i64 atime.sec, u32 atime.nsec, i64 mtime.sec, u32 mtime.nsec
 *     Setxattr        path, name, data, u32 flags
 *     Removexattr     path, name
 *     Write           path, u64 offset, data
 *     Fallocate       path, u32 flags, u64 offset, u64 length
 *     Mknod           path, u32 mode, u64 rdev, u32 uid, u32 gid
 *     Barrier         (nothing)
 *   string lengths: path, path2, target u16; name u8; data u32.
 * Fields a type does not use are not encoded and decode leaves them zero, so
 * decode(encode(op)) == op for any op whose unused fields are zero.
 */
constexpr size_t kMaxOpPath = 4096;
constexpr size_t kMaxOpName = 255;
constexpr size_t kMaxXattrValue = 64u << 10;
constexpr size_t kMaxWriteData = 1u << 20;
/* Upper bound of one encoded op (a full Write): lets framing size its buffers. */
constexpr size_t kMaxEncodedOp = 12 + 2 + kMaxOpPath + 8 + 4 + kMaxWriteData;

enum class OpDecodeError : uint8_t {
	None = 0,
	Truncated,	/* input ends inside the op */
	UnknownType,
	BadFlags,	/* reserved opflags bits, or durable on a non-Barrier */
	BadPath,	/* absolute, "..", ".", empty component, NUL, or too long */
	BadName,	/* xattr name empty, NUL or too long */
	BadTarget,	/* symlink target empty, NUL or too long */
	BadData,	/* value/write data too long, or data on a type without it */
	BadField,	/* a numeric field out of range (mode type, nsec, valid bits, seq 0) */
};

const char *opDecodeErrorName(OpDecodeError error);

/*
 * Appends op to *out. -EINVAL when the op would not pass decode (bad path,
 * field out of range), -EMSGSIZE when a string is over its limit: the sender
 * checks, so the peer never has to reject what we produced.
 */
int encodeOp(const Op &op, std::vector<uint8_t> *out);
/* The same for a Write whose bytes are writeData instead of op.data (the
 * caller's buffer: no copy into the op first). */
int encodeOp(const Op &op, std::string_view writeData, std::vector<uint8_t> *out);

/*
 * Decodes one op from the start of in. On success fills *op and *consumed and
 * returns None; in may hold more ops after it (a batch). On failure *op is
 * unspecified. With writeData, a Write's bytes are not copied into op->data:
 * *writeData views them inside in (for every other op it is set to op->data).
 */
OpDecodeError decodeOp(std::span<const uint8_t> in, Op *op, size_t *consumed,
		       std::string_view *writeData = nullptr);

/* The checks decode applies to a path ("." = the root, allowed only where rootOk). */
bool isValidOpPath(std::string_view path, bool rootOk);

/*
 * Splits a Write with more than maxChunk bytes into consecutive Writes (same
 * path, contiguous offsets); other ops are moved into *out unchanged.
 */
void splitOp(Op &&op, std::vector<Op> *out, size_t maxChunk = kMaxWriteData);

} /* namespace sk::repl */
