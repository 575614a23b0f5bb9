/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Op codec tests: every op type round-trips with every field it carries, and
 * every invalid input decode must refuse is refused with the right reason.
 */
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "replication/op_codec.h"

using namespace sk::repl;

namespace doctest {
template<> struct StringMaker<OpDecodeError> {
	static String convert(OpDecodeError e) { return opDecodeErrorName(e); }
};
} /* namespace doctest */

namespace {

/* One op of each type with every field that type carries set to a distinct value. */
std::vector<Op> sampleOps()
{
	std::vector<Op> ops;
	auto add = [&](OpType t) -> Op & {
		Op op;
		op.type = t;
		op.seq = 1000 + ops.size();
		op.dir = static_cast<uint16_t>(ops.size() + 1);
		op.path = "dir/file-" + std::to_string(ops.size());
		ops.push_back(op);
		return ops.back();
	};
	{ Op &o = add(OpType::Create); o.mode = S_IFREG | 0640; o.uid = 1001; o.gid = 1002; }
	{ Op &o = add(OpType::Mkdir); o.mode = 0755; o.uid = 7; o.gid = 8; }
	{ Op &o = add(OpType::Symlink); o.target = "/absolute/../is/fine/for/targets"; o.uid = 3; o.gid = 4; }
	{ Op &o = add(OpType::Link); o.path2 = "other/name"; }
	add(OpType::Unlink);
	add(OpType::Rmdir);
	{ Op &o = add(OpType::Rename); o.path2 = "b/c"; o.flags = RENAME_EXCHANGE; }
	{
		Op &o = add(OpType::Setattr);
		o.valid = kSetMode | kSetUid | kSetGid | kSetSize | kSetAtime | kSetMtime;
		o.mode = 04755;
		o.uid = 0xfffffffe;
		o.gid = 12345;
		o.size = 1ull << 40;
		o.atime = { -5, 999999999 };
		o.mtime = { 1700000000, 42 };
	}
	{ Op &o = add(OpType::Setxattr); o.name = "user.k"; o.data = std::string("v\0al", 4); o.flags = XATTR_CREATE; }
	{ Op &o = add(OpType::Removexattr); o.name = "trusted.x"; }
	{ Op &o = add(OpType::Write); o.offset = 1ull << 33; o.data = std::string(70000, 'x') + std::string(1, '\0'); }
	{ Op &o = add(OpType::Fallocate); o.flags = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE; o.offset = 4096; o.length = 8192; }
	{ Op &o = add(OpType::Mknod); o.mode = S_IFIFO | 0600; o.uid = 9; o.gid = 10; }
	{ Op &o = add(OpType::Barrier); o.path.clear(); o.durable = true; }
	return ops;
}

std::vector<uint8_t> encodeOk(const Op &op)
{
	std::vector<uint8_t> out;
	int ret = encodeOp(op, &out);
	REQUIRE(ret == 0);
	return out;
}

/* Decodes both ways (a Write's bytes copied, or viewed in place): same verdict. */
OpDecodeError decodeBytes(const std::vector<uint8_t> &bytes, Op *op = nullptr)
{
	Op tmp, viewed;
	size_t consumed = 0, viewedConsumed = 0;
	std::string_view data;
	OpDecodeError err = decodeOp(bytes, op ? op : &tmp, &consumed);
	CHECK(decodeOp(bytes, &viewed, &viewedConsumed, &data) == err);
	return err;
}

/* Encodes a valid op then patches it, to produce inputs encodeOp refuses to make. */
void putU16(std::vector<uint8_t> *b, size_t at, uint16_t v)
{
	(*b)[at] = static_cast<uint8_t>(v);
	(*b)[at + 1] = static_cast<uint8_t>(v >> 8);
}

constexpr size_t kCommon = 12;

} /* namespace */

TEST_CASE("every op type round-trips with all its fields")
{
	for (const Op &op : sampleOps()) {
		CAPTURE(opTypeName(op.type));
		std::vector<uint8_t> bytes = encodeOk(op);
		Op got;
		size_t consumed = 0;
		CHECK(decodeOp(bytes, &got, &consumed) == OpDecodeError::None);
		CHECK(consumed == bytes.size());
		CHECK(got == op);

		/* A Write's bytes viewed inside the input instead of copied. */
		Op viewed;
		std::string_view data;
		consumed = 0;
		CHECK(decodeOp(bytes, &viewed, &consumed, &data) == OpDecodeError::None);
		CHECK(consumed == bytes.size());
		CHECK(data == op.data);
		if (op.type == OpType::Write) {
			CHECK(viewed.data.empty());
			CHECK(reinterpret_cast<const uint8_t *>(data.data()) >= bytes.data());
			CHECK(reinterpret_cast<const uint8_t *>(data.data() + data.size()) <= bytes.data() + bytes.size());
			viewed.data = data;
		}
		CHECK(viewed == op);

		/* Encoding a Write from the caller's buffer gives the same bytes. */
		Op bare = op;
		std::string_view apart = op.data;
		if (op.type == OpType::Write)
			bare.data.clear();
		std::vector<uint8_t> fromView;
		CHECK(encodeOp(bare, apart, &fromView) == 0);
		CHECK(fromView == bytes);
	}
}

TEST_CASE("a batch of ops decodes one after the other")
{
	std::vector<Op> ops = sampleOps();
	std::vector<uint8_t> batch;
	for (const Op &op : ops)
		REQUIRE(encodeOp(op, &batch) == 0);
	std::span<const uint8_t> rest(batch);
	for (const Op &want : ops) {
		Op got;
		size_t consumed = 0;
		REQUIRE(decodeOp(rest, &got, &consumed) == OpDecodeError::None);
		CHECK(got == want);
		rest = rest.subspan(consumed);
	}
	CHECK(rest.empty());
}

TEST_CASE("every truncation of every op is refused")
{
	for (const Op &op : sampleOps()) {
		std::vector<uint8_t> bytes = encodeOk(op);
		/* The big Write is checked at a few cut points only, to keep the test quick. */
		for (size_t n = 0; n < bytes.size(); n = n < 64 ? n + 1 : n * 2 + 1) {
			CAPTURE(opTypeName(op.type));
			CAPTURE(n);
			std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + n);
			CHECK(decodeBytes(cut) == OpDecodeError::Truncated);
		}
	}
}

TEST_CASE("unknown types and flags are refused")
{
	Op op;
	op.type = OpType::Unlink;
	op.seq = 1;
	op.path = "a";
	std::vector<uint8_t> bytes = encodeOk(op);
	for (uint8_t t : { 0, 15, 200, 255 }) {
		std::vector<uint8_t> b = bytes;
		b[0] = t;
		CAPTURE(int(t));
		CHECK(decodeBytes(b) == OpDecodeError::UnknownType);
	}
	std::vector<uint8_t> b = bytes;
	b[1] = 0x80;
	CHECK(decodeBytes(b) == OpDecodeError::BadFlags);
	b[1] = 0x01; /* durable on a non-Barrier */
	CHECK(decodeBytes(b) == OpDecodeError::BadFlags);

	std::vector<uint8_t> zeroSeq = bytes;
	for (size_t i = 4; i < 12; i++)
		zeroSeq[i] = 0;
	CHECK(decodeBytes(zeroSeq) == OpDecodeError::BadField);
}

TEST_CASE("hostile and malformed paths are refused by decode and encode")
{
	const std::vector<std::string> bad = {
		"", "/etc/passwd", "..", "../x", "a/../../x", "a/..", "./a", "a/./b", ".", "a//b",
		"a/", std::string("a\0b", 3), std::string(kMaxOpPath + 1, 'a'),
		std::string(256, 'c') + "/x",
	};
	for (const std::string &path : bad) {
		CAPTURE(path);
		Op op;
		op.type = OpType::Unlink;
		op.seq = 1;
		op.path = path;
		std::vector<uint8_t> out;
		CHECK(encodeOp(op, &out) < 0);

		/* Build the bytes by hand from a valid op of the same length. */
		if (path.size() > kMaxOpPath)
			continue;
		Op ok = op;
		ok.path.clear();
		for (size_t i = 0; i < std::max<size_t>(path.size(), 1); i++)
			ok.path.push_back(i % 2 ? '/' : 'a');
		if (ok.path.back() == '/')
			ok.path.back() = 'a';
		std::vector<uint8_t> b = encodeOk(ok);
		if (path.empty()) {
			b.pop_back();
			putU16(&b, kCommon, 0);
		} else {
			std::copy(path.begin(), path.end(), b.begin() + kCommon + 2);
		}
		CHECK(decodeBytes(b) == OpDecodeError::BadPath);
	}

	/* path2 is checked too. */
	Op ren;
	ren.type = OpType::Rename;
	ren.seq = 1;
	ren.path = "a";
	ren.path2 = "xx";
	std::vector<uint8_t> b = encodeOk(ren);
	b[kCommon + 2 + 1 + 2] = '.';
	b[kCommon + 2 + 1 + 3] = '.';
	CHECK(decodeBytes(b) == OpDecodeError::BadPath);

	/* An over-long length prefix is refused before reading it. */
	Op un;
	un.type = OpType::Unlink;
	un.seq = 1;
	un.path = "a";
	std::vector<uint8_t> longLen = encodeOk(un);
	putU16(&longLen, kCommon, kMaxOpPath + 1);
	longLen.resize(longLen.size() + kMaxOpPath + 10, 'a');
	CHECK(decodeBytes(longLen) == OpDecodeError::BadPath);
}

TEST_CASE("the root is a valid subject only for attribute ops")
{
	CHECK(isValidOpPath(".", true));
	CHECK_FALSE(isValidOpPath(".", false));
	CHECK(isValidOpPath("a/b/c", false));
	CHECK(isValidOpPath("...", false));
	CHECK(isValidOpPath(".hidden/..x", false));

	for (OpType t : { OpType::Setattr, OpType::Setxattr, OpType::Removexattr, OpType::Create, OpType::Unlink }) {
		CAPTURE(opTypeName(t));
		Op op;
		op.type = t;
		op.seq = 1;
		op.path = ".";
		op.name = "user.a";
		std::vector<uint8_t> out;
		bool attr = t == OpType::Setattr || t == OpType::Setxattr || t == OpType::Removexattr;
		CHECK((encodeOp(op, &out) == 0) == attr);
	}
}

TEST_CASE("names, targets, data and numeric fields are bounded")
{
	auto base = [](OpType t) {
		Op op;
		op.type = t;
		op.seq = 1;
		op.path = "f";
		return op;
	};
	std::vector<uint8_t> out;

	Op x = base(OpType::Setxattr);
	x.name = "";
	CHECK(encodeOp(x, &out) == -EINVAL);
	x.name = std::string("a\0b", 3);
	CHECK(encodeOp(x, &out) == -EINVAL);
	x.name = std::string(256, 'n');
	CHECK(encodeOp(x, &out) == -EMSGSIZE);
	x.name = "user.a";
	x.data = std::string(kMaxXattrValue + 1, 'v');
	CHECK(encodeOp(x, &out) == -EMSGSIZE);
	x.data = std::string(kMaxXattrValue, 'v');
	CHECK(encodeOp(x, &out) == 0);
	x.data = "v";
	x.flags = XATTR_CREATE | XATTR_REPLACE;
	CHECK(encodeOp(x, &out) == -EINVAL);

	/* Decode of an over-long xattr value / write is refused by its length prefix. */
	x.flags = 0;
	std::vector<uint8_t> b = encodeOk(x);
	size_t lenAt = kCommon + 2 + 1 + 1 + 6;
	b[lenAt] = 0x01;
	b[lenAt + 1] = 0x00;
	b[lenAt + 2] = 0x01; /* 64 KiB + 1 */
	CHECK(decodeBytes(b) == OpDecodeError::BadData);

	Op w = base(OpType::Write);
	w.data = std::string(kMaxWriteData + 1, 'w');
	CHECK(encodeOp(w, &out) == -EMSGSIZE);
	w.data = "abc";
	w.offset = ~0ull;
	CHECK(encodeOp(w, &out) == -EINVAL);
	w.offset = 0;
	b = encodeOk(w);
	b[kCommon + 3 + 8 + 2] = 0x11; /* length 0x110003 > 1 MiB */
	CHECK(decodeBytes(b) == OpDecodeError::BadData);

	Op s = base(OpType::Symlink);
	s.target = "";
	CHECK(encodeOp(s, &out) == -EINVAL);
	s.target = std::string("a\0", 2);
	CHECK(encodeOp(s, &out) == -EINVAL);
	s.target = "t";
	b = encodeOk(s);
	b[kCommon + 3 + 2] = 0;
	CHECK(decodeBytes(b) == OpDecodeError::BadTarget);

	Op m = base(OpType::Mknod);
	m.mode = S_IFCHR | 0600;
	CHECK(encodeOp(m, &out) == -EINVAL);
	m.mode = S_IFBLK | 0600;
	CHECK(encodeOp(m, &out) == -EINVAL);
	m.mode = S_IFIFO | 0600;
	m.rdev = 5;
	CHECK(encodeOp(m, &out) == -EINVAL);
	m.rdev = 0;
	b = encodeOk(m);
	b[kCommon + 3 + 1] = 0x21; /* S_IFCHR */
	CHECK(decodeBytes(b) == OpDecodeError::BadField);

	Op c = base(OpType::Create);
	c.mode = S_IFDIR | 0755;
	CHECK(encodeOp(c, &out) == -EINVAL);
	Op d = base(OpType::Mkdir);
	d.mode = S_IFREG | 0755;
	CHECK(encodeOp(d, &out) == -EINVAL);

	Op r = base(OpType::Rename);
	r.path2 = "g";
	r.flags = RENAME_EXCHANGE | RENAME_NOREPLACE;
	CHECK(encodeOp(r, &out) == -EINVAL);
	r.flags = RENAME_WHITEOUT;
	CHECK(encodeOp(r, &out) == -EINVAL);

	Op a = base(OpType::Setattr);
	a.valid = 1u << 8;
	CHECK(encodeOp(a, &out) == -EINVAL);
	a.valid = kSetMtime;
	a.mtime.nsec = 1000000000;
	CHECK(encodeOp(a, &out) == -EINVAL);
	a.mtime.nsec = 0;
	b = encodeOk(a);
	b[kCommon + 3 + 4 + 3] = 0x80; /* mode with bits outside S_IFMT|07777 */
	CHECK(decodeBytes(b) == OpDecodeError::BadField);

	Op f = base(OpType::Fallocate);
	f.length = 0;
	CHECK(encodeOp(f, &out) == -EINVAL);
	f.length = 1;
	f.flags = 0x100;
	CHECK(encodeOp(f, &out) == -EINVAL);
}

TEST_CASE("large writes are split into bounded consecutive writes")
{
	Op w;
	w.type = OpType::Write;
	w.path = "big";
	w.dir = 2;
	w.offset = 10;
	for (size_t i = 0; i < 2 * kMaxWriteData + 5; i++)
		w.data.push_back(static_cast<char>('a' + i % 26));
	std::string all = w.data;
	std::vector<Op> parts;
	splitOp(std::move(w), &parts);
	REQUIRE(parts.size() == 3);
	std::string joined;
	uint64_t expectOffset = 10;
	for (const Op &p : parts) {
		CHECK(p.type == OpType::Write);
		CHECK(p.path == "big");
		CHECK(p.dir == 2);
		CHECK(p.offset == expectOffset);
		CHECK(p.data.size() <= kMaxWriteData);
		expectOffset += p.data.size();
		joined += p.data;
	}
	CHECK(joined == all);

	Op small;
	small.type = OpType::Unlink;
	small.path = "x";
	splitOp(Op(small), &parts);
	CHECK(parts.size() == 4);
	CHECK(parts.back() == small);
}
