/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Op encode/decode. Fields are written byte by byte at explicit positions (never a
 * struct memcpy) so the format is independent of padding and host endianness.
 */
#include "replication/op_codec.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cerrno>
#include <cstdint>
#include <limits>
#include <string_view>

#include "core/le_bytes.h"

namespace sk::repl {

const char *opTypeName(OpType type)
{
	switch (type) {
	case OpType::Create: return "create";
	case OpType::Mkdir: return "mkdir";
	case OpType::Symlink: return "symlink";
	case OpType::Link: return "link";
	case OpType::Unlink: return "unlink";
	case OpType::Rmdir: return "rmdir";
	case OpType::Rename: return "rename";
	case OpType::Setattr: return "setattr";
	case OpType::Setxattr: return "setxattr";
	case OpType::Removexattr: return "removexattr";
	case OpType::Write: return "write";
	case OpType::Fallocate: return "fallocate";
	case OpType::Mknod: return "mknod";
	case OpType::Barrier: return "barrier";
	}
	return "unknown";
}

const char *opDecodeErrorName(OpDecodeError error)
{
	switch (error) {
	case OpDecodeError::None: return "none";
	case OpDecodeError::Truncated: return "truncated";
	case OpDecodeError::UnknownType: return "unknown type";
	case OpDecodeError::BadFlags: return "bad op flags";
	case OpDecodeError::BadPath: return "bad path";
	case OpDecodeError::BadName: return "bad xattr name";
	case OpDecodeError::BadTarget: return "bad symlink target";
	case OpDecodeError::BadData: return "bad data length";
	case OpDecodeError::BadField: return "field out of range";
	}
	return "unknown";
}

namespace {

constexpr uint8_t kOpFlagDurable = 1u << 0;
constexpr uint32_t kValidSetattrBits = kSetMode | kSetUid | kSetGid | kSetSize | kSetAtime | kSetMtime |
				       kSetAtimeNow | kSetMtimeNow;
constexpr uint32_t kValidRenameFlags = RENAME_NOREPLACE | RENAME_EXCHANGE;
constexpr uint32_t kValidXattrFlags = XATTR_CREATE | XATTR_REPLACE;
constexpr uint32_t kValidFallocFlags = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_COLLAPSE_RANGE |
				       FALLOC_FL_ZERO_RANGE | FALLOC_FL_INSERT_RANGE | FALLOC_FL_UNSHARE_RANGE;
constexpr uint64_t kMaxFileOffset = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

class Writer
{
public:
	explicit Writer(std::vector<uint8_t> *out) : out_(out) {}

	void u8(uint8_t v) { out_->push_back(v); }
	void u16(uint16_t v) { le(v, 2); }
	void u32(uint32_t v) { le(v, 4); }
	void u64(uint64_t v) { le(v, 8); }
	void bytes(std::string_view s)
	{
		/* As bytes: inserting chars into a byte vector would convert one at a time. */
		const auto *p = reinterpret_cast<const uint8_t *>(s.data());
		out_->insert(out_->end(), p, p + s.size());
	}

private:
	void le(uint64_t v, int n)
	{
		for (int i = 0; i < n; i++)
			out_->push_back(static_cast<uint8_t>(v >> (8 * i)));
	}

	std::vector<uint8_t> *out_;
};

bool hasNul(std::string_view s)
{
	return s.find('\0') != std::string_view::npos;
}

/* The root itself may be the subject of attribute ops (chmod of the replicated dir). */
bool rootAllowed(OpType type)
{
	return type == OpType::Setattr || type == OpType::Setxattr || type == OpType::Removexattr;
}

bool validName(std::string_view name)
{
	return !name.empty() && name.size() <= kMaxOpName && !hasNul(name);
}

bool validTarget(std::string_view target)
{
	return !target.empty() && target.size() <= kMaxOpPath && !hasNul(target);
}

bool validPerm(uint32_t mode, uint32_t allowedType)
{
	uint32_t type = mode & S_IFMT;
	return (mode & ~(S_IFMT | 07777u)) == 0 && (type == 0 || type == allowedType);
}

bool validTime(const Timespec &t)
{
	return t.nsec < 1000000000u;
}

bool knownType(uint8_t t)
{
	return t >= static_cast<uint8_t>(OpType::Create) && t <= static_cast<uint8_t>(OpType::Barrier);
}

/* Field checks shared by encode and decode, after the strings have been read. */
/* data: the op's bytes (op.data, or a view of them on decode). */
OpDecodeError checkOp(const Op &op, std::string_view data)
{
	if (op.seq == 0)
		return OpDecodeError::BadField;
	if (op.durable && op.type != OpType::Barrier)
		return OpDecodeError::BadFlags;
	if (op.type == OpType::Barrier)
		return OpDecodeError::None;

	if (!isValidOpPath(op.path, rootAllowed(op.type)))
		return OpDecodeError::BadPath;
	if ((op.type == OpType::Link || op.type == OpType::Rename) && !isValidOpPath(op.path2, false))
		return OpDecodeError::BadPath;

	switch (op.type) {
	case OpType::Create:
		if (!validPerm(op.mode, S_IFREG))
			return OpDecodeError::BadField;
		break;
	case OpType::Mkdir:
		if (!validPerm(op.mode, S_IFDIR))
			return OpDecodeError::BadField;
		break;
	case OpType::Symlink:
		if (!validTarget(op.target))
			return OpDecodeError::BadTarget;
		break;
	case OpType::Rename:
		if ((op.flags & ~kValidRenameFlags) != 0 ||
		    op.flags == (RENAME_NOREPLACE | RENAME_EXCHANGE))
			return OpDecodeError::BadField;
		break;
	case OpType::Setattr:
		if ((op.valid & ~kValidSetattrBits) != 0 || (op.mode & ~(S_IFMT | 07777u)) != 0 ||
		    op.size > kMaxFileOffset || !validTime(op.atime) || !validTime(op.mtime))
			return OpDecodeError::BadField;
		break;
	case OpType::Setxattr:
		if (!validName(op.name))
			return OpDecodeError::BadName;
		if (data.size() > kMaxXattrValue)
			return OpDecodeError::BadData;
		if ((op.flags & ~kValidXattrFlags) != 0 || op.flags == kValidXattrFlags)
			return OpDecodeError::BadField;
		break;
	case OpType::Removexattr:
		if (!validName(op.name))
			return OpDecodeError::BadName;
		break;
	case OpType::Write:
		if (data.size() > kMaxWriteData)
			return OpDecodeError::BadData;
		if (op.offset > kMaxFileOffset || data.size() > kMaxFileOffset - op.offset)
			return OpDecodeError::BadField;
		break;
	case OpType::Fallocate:
		if ((op.flags & ~kValidFallocFlags) != 0 || op.length == 0 || op.offset > kMaxFileOffset ||
		    op.length > kMaxFileOffset - op.offset)
			return OpDecodeError::BadField;
		break;
	case OpType::Mknod: {
		/* FIFOs and sockets only: a device node from the peer would be a way into the
		 * secondary's hardware. */
		uint32_t type = op.mode & S_IFMT;
		if ((op.mode & ~(S_IFMT | 07777u)) != 0 || (type != S_IFIFO && type != S_IFSOCK) || op.rdev != 0)
			return OpDecodeError::BadField;
		break;
	}
	default:
		break;
	}
	return OpDecodeError::None;
}

} /* namespace */

bool isValidOpPath(std::string_view path, bool rootOk)
{
	if (path == ".")
		return rootOk;
	if (path.empty() || path.size() > kMaxOpPath || path.front() == '/' || hasNul(path))
		return false;
	size_t start = 0;
	while (start <= path.size()) {
		size_t end = path.find('/', start);
		if (end == std::string_view::npos)
			end = path.size();
		std::string_view comp = path.substr(start, end - start);
		if (comp.empty() || comp == "." || comp == ".." || comp.size() > kMaxOpName)
			return false;
		start = end + 1;
	}
	return true;
}

int encodeOp(const Op &op, std::vector<uint8_t> *out)
{
	return encodeOp(op, op.data, out);
}

int encodeOp(const Op &op, std::string_view writeData, std::vector<uint8_t> *out)
{
	/* A Write's bytes are writeData; every other op's are op.data. */
	std::string_view data = op.type == OpType::Write ? writeData : std::string_view(op.data);
	if (op.path.size() > kMaxOpPath || op.path2.size() > kMaxOpPath || op.target.size() > kMaxOpPath ||
	    op.name.size() > kMaxOpName ||
	    (op.type == OpType::Setxattr && data.size() > kMaxXattrValue) ||
	    (op.type == OpType::Write && data.size() > kMaxWriteData))
		return -EMSGSIZE;
	if (!knownType(static_cast<uint8_t>(op.type)) || checkOp(op, data) != OpDecodeError::None)
		return -EINVAL;

	out->reserve(out->size() + 64 + op.path.size() + op.path2.size() + op.name.size() + op.target.size() +
		     data.size());
	Writer w(out);
	w.u8(static_cast<uint8_t>(op.type));
	w.u8(op.durable ? kOpFlagDurable : 0);
	w.u16(op.dir);
	w.u64(op.seq);

	auto str16 = [&](const std::string &s) { w.u16(static_cast<uint16_t>(s.size())); w.bytes(s); };
	auto str8 = [&](const std::string &s) { w.u8(static_cast<uint8_t>(s.size())); w.bytes(s); };
	auto str32 = [&](std::string_view s) { w.u32(static_cast<uint32_t>(s.size())); w.bytes(s); };
	auto time = [&](const Timespec &t) { w.u64(static_cast<uint64_t>(t.sec)); w.u32(t.nsec); };

	switch (op.type) {
	case OpType::Create:
	case OpType::Mkdir:
		str16(op.path); w.u32(op.mode); w.u32(op.uid); w.u32(op.gid);
		break;
	case OpType::Symlink:
		str16(op.path); str16(op.target); w.u32(op.uid); w.u32(op.gid);
		break;
	case OpType::Link:
		str16(op.path); str16(op.path2);
		break;
	case OpType::Unlink:
	case OpType::Rmdir:
		str16(op.path);
		break;
	case OpType::Rename:
		str16(op.path); str16(op.path2); w.u32(op.flags);
		break;
	case OpType::Setattr:
		str16(op.path); w.u32(op.valid); w.u32(op.mode); w.u32(op.uid); w.u32(op.gid);
		w.u64(op.size); time(op.atime); time(op.mtime);
		break;
	case OpType::Setxattr:
		str16(op.path); str8(op.name); str32(data); w.u32(op.flags);
		break;
	case OpType::Removexattr:
		str16(op.path); str8(op.name);
		break;
	case OpType::Write:
		str16(op.path); w.u64(op.offset); str32(data);
		break;
	case OpType::Fallocate:
		str16(op.path); w.u32(op.flags); w.u64(op.offset); w.u64(op.length);
		break;
	case OpType::Mknod:
		str16(op.path); w.u32(op.mode); w.u64(op.rdev); w.u32(op.uid); w.u32(op.gid);
		break;
	case OpType::Barrier:
		break;
	}
	return 0;
}

OpDecodeError decodeOp(std::span<const uint8_t> in, Op *op, size_t *consumed, std::string_view *writeData)
{
	le::Reader r(in);
	*op = Op{};

	uint8_t type = 0, opflags = 0;
	if (!r.u8(&type) || !r.u8(&opflags) || !r.u16(&op->dir) || !r.u64(&op->seq))
		return OpDecodeError::Truncated;
	if (!knownType(type))
		return OpDecodeError::UnknownType;
	if ((opflags & ~kOpFlagDurable) != 0)
		return OpDecodeError::BadFlags;
	op->type = static_cast<OpType>(type);
	op->durable = (opflags & kOpFlagDurable) != 0;

	/* Lengths are checked against their limit before any bytes are copied. */
	bool overLimit = false;
	std::string_view view;
	auto str16 = [&](std::string *s, size_t limit) {
		uint16_t n;
		if (!r.u16(&n))
			return false;
		if (n > limit) {
			overLimit = true;
			return false;
		}
		return r.bytes(s, n);
	};
	auto str8 = [&](std::string *s) {
		uint8_t n;
		return r.u8(&n) && r.bytes(s, n);
	};
	/* Into *s, or with no s into view. */
	auto str32 = [&](std::string *s, size_t limit) {
		uint32_t n;
		if (!r.u32(&n))
			return false;
		if (n > limit) {
			overLimit = true;
			return false;
		}
		return s ? r.bytes(s, n) : r.view(&view, n);
	};
	auto time = [&](Timespec *t) {
		uint64_t sec;
		if (!r.u64(&sec) || !r.u32(&t->nsec))
			return false;
		t->sec = static_cast<int64_t>(sec);
		return true;
	};

	bool ok = true;
	OpDecodeError limitError = OpDecodeError::BadPath;
	switch (op->type) {
	case OpType::Create:
	case OpType::Mkdir:
		ok = str16(&op->path, kMaxOpPath) && r.u32(&op->mode) && r.u32(&op->uid) && r.u32(&op->gid);
		break;
	case OpType::Symlink:
		ok = str16(&op->path, kMaxOpPath);
		if (ok) {
			limitError = OpDecodeError::BadTarget;
			ok = str16(&op->target, kMaxOpPath) && r.u32(&op->uid) && r.u32(&op->gid);
		}
		break;
	case OpType::Link:
		ok = str16(&op->path, kMaxOpPath) && str16(&op->path2, kMaxOpPath);
		break;
	case OpType::Unlink:
	case OpType::Rmdir:
		ok = str16(&op->path, kMaxOpPath);
		break;
	case OpType::Rename:
		ok = str16(&op->path, kMaxOpPath) && str16(&op->path2, kMaxOpPath) && r.u32(&op->flags);
		break;
	case OpType::Setattr:
		ok = str16(&op->path, kMaxOpPath) && r.u32(&op->valid) && r.u32(&op->mode) &&
		     r.u32(&op->uid) && r.u32(&op->gid) && r.u64(&op->size) && time(&op->atime) &&
		     time(&op->mtime);
		break;
	case OpType::Setxattr:
		ok = str16(&op->path, kMaxOpPath) && str8(&op->name);
		if (ok) {
			limitError = OpDecodeError::BadData;
			ok = str32(&op->data, kMaxXattrValue) && r.u32(&op->flags);
		}
		break;
	case OpType::Removexattr:
		ok = str16(&op->path, kMaxOpPath) && str8(&op->name);
		break;
	case OpType::Write:
		ok = str16(&op->path, kMaxOpPath) && r.u64(&op->offset);
		if (ok) {
			limitError = OpDecodeError::BadData;
			ok = writeData ? str32(nullptr, kMaxWriteData) : str32(&op->data, kMaxWriteData);
		}
		break;
	case OpType::Fallocate:
		ok = str16(&op->path, kMaxOpPath) && r.u32(&op->flags) && r.u64(&op->offset) &&
		     r.u64(&op->length);
		break;
	case OpType::Mknod:
		ok = str16(&op->path, kMaxOpPath) && r.u32(&op->mode) && r.u64(&op->rdev) &&
		     r.u32(&op->uid) && r.u32(&op->gid);
		break;
	case OpType::Barrier:
		break;
	}
	if (!ok)
		return overLimit ? limitError : OpDecodeError::Truncated;

	if (!writeData || op->type != OpType::Write)
		view = op->data;
	OpDecodeError err = checkOp(*op, view);
	if (err != OpDecodeError::None)
		return err;
	if (writeData)
		*writeData = view;
	*consumed = r.pos();
	return OpDecodeError::None;
}

void splitOp(Op &&op, std::vector<Op> *out, size_t maxChunk)
{
	if (op.type != OpType::Write || op.data.size() <= maxChunk || maxChunk == 0) {
		out->push_back(std::move(op));
		return;
	}
	for (size_t pos = 0; pos < op.data.size(); pos += maxChunk) {
		Op part;
		part.type = OpType::Write;
		part.dir = op.dir;
		part.path = op.path;
		part.offset = op.offset + pos;
		part.data = op.data.substr(pos, maxChunk);
		out->push_back(std::move(part));
	}
}

} /* namespace sk::repl */
