/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Applier tests on temporary directories: every op type, rename flags, replay
 * idempotency, reported errors, the fd cache, durable barriers, and hostile
 * paths/symlinks that must never let an op reach outside the target root.
 */
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "replication/apply.h"
#include "test_apply_util.h"

using namespace sk::repl;
using sk::test::TempDir;
using sk::test::readFile;
using sk::test::writeFile;

namespace {

struct Target {
	TempDir dir;
	std::unique_ptr<Applier> applier;
	uint64_t seq = 0;
	std::string lastError;

	explicit Target(Applier::Options opts = {})
	{
		auto a = Applier::create(dir.fd(), opts);
		REQUIRE(a.ok());
		applier = std::move(a.value());
	}

	/* Applies op; returns 0 or the negative errno the applier reported. */
	int apply(Op op)
	{
		op.seq = ++seq;
		sk::Status s = applier->apply(op);
		lastError = s.ok() ? "" : s.error().message;
		return s.code();
	}
	std::string operator/(const std::string &rel) const { return dir / rel; }
};

Op mk(OpType t, const std::string &path, uint32_t mode = 0)
{
	Op op;
	op.type = t;
	op.path = path;
	op.mode = mode;
	op.uid = getuid();
	op.gid = getgid();
	return op;
}

Op writeOp(const std::string &path, uint64_t offset, const std::string &data)
{
	Op op = mk(OpType::Write, path);
	op.offset = offset;
	op.data = data;
	return op;
}

Op renameOp(const std::string &from, const std::string &to, uint32_t flags = 0)
{
	Op op = mk(OpType::Rename, from);
	op.path2 = to;
	op.flags = flags;
	return op;
}

mode_t modeOf(const std::string &path)
{
	struct stat st;
	return lstat(path.c_str(), &st) == 0 ? st.st_mode : 0;
}

bool exists(const std::string &path)
{
	struct stat st;
	return lstat(path.c_str(), &st) == 0;
}

} /* namespace */

TEST_CASE("create, write, mkdir, setattr and truncate")
{
	Target t;
	CHECK(t.apply(mk(OpType::Mkdir, "d", 0750)) == 0);
	CHECK(modeOf(t / "d") == (S_IFDIR | 0750));
	CHECK(t.apply(mk(OpType::Create, "d/f", 0604)) == 0);
	CHECK(modeOf(t / "d/f") == (S_IFREG | 0604));
	CHECK(t.apply(writeOp("d/f", 0, "hello world")) == 0);
	CHECK(t.apply(writeOp("d/f", 6, "WORLD!")) == 0);
	CHECK(readFile(t / "d/f") == "hello WORLD!");

	Op sa = mk(OpType::Setattr, "d/f");
	sa.valid = kSetMode | kSetSize | kSetMtime | kSetAtime;
	sa.mode = 0611;
	sa.size = 5;
	sa.atime = { 1000, 5 };
	sa.mtime = { 2000, 7 };
	CHECK(t.apply(sa) == 0);
	struct stat st;
	REQUIRE(stat((t / "d/f").c_str(), &st) == 0);
	CHECK(st.st_mode == (S_IFREG | 0611));
	CHECK(st.st_size == 5);
	CHECK(st.st_atim.tv_sec == 1000);
	CHECK(st.st_mtim.tv_sec == 2000);
	CHECK(st.st_mtim.tv_nsec == 7);
	CHECK(readFile(t / "d/f") == "hello");

	/* Create of an existing file makes it empty again. */
	CHECK(t.apply(mk(OpType::Create, "d/f", 0644)) == 0);
	CHECK(readFile(t / "d/f") == "");
	CHECK(modeOf(t / "d/f") == (S_IFREG | 0644));

	/* Times "now", and chmod of the root itself ("."). */
	Op now = mk(OpType::Setattr, "d/f");
	now.valid = kSetMtimeNow;
	CHECK(t.apply(now) == 0);
	REQUIRE(stat((t / "d/f").c_str(), &st) == 0);
	CHECK(st.st_mtim.tv_sec > 2000);
	Op root = mk(OpType::Setattr, ".");
	root.valid = kSetMode;
	root.mode = 0711;
	CHECK(t.apply(root) == 0);
	CHECK(modeOf(t.dir.path()) == (S_IFDIR | 0711));

	if (getuid() == 0) {
		Op own = mk(OpType::Setattr, "d/f");
		own.valid = kSetUid | kSetGid;
		own.uid = 4242;
		own.gid = 4343;
		CHECK(t.apply(own) == 0);
		REQUIRE(stat((t / "d/f").c_str(), &st) == 0);
		CHECK(st.st_uid == 4242u);
		CHECK(st.st_gid == 4343u);
	}
}

TEST_CASE("during a resync, data, attribute and rename ops that miss their file are skipped; in sync they fail")
{
	Target t;
	Op sa = mk(OpType::Setattr, "gone");
	sa.valid = kSetSize;
	sa.size = 3;
	CHECK(t.apply(writeOp("gone", 0, "x")) == -ENOENT);
	t.applier->setResyncing(true);
	CHECK(t.apply(writeOp("gone", 0, "x")) == 0);
	CHECK(t.apply(sa) == 0);
	CHECK(t.applier->counters().missingSkipped == 2);
	/* A rename that does not fit is skipped (the source compares both paths again)... */
	CHECK(t.apply(renameOp("gone", "other")) == 0);
	CHECK(t.applier->counters().missingSkipped == 3);
	/* ...other namespace ops are never. */
	Op ln = mk(OpType::Link, "gone");
	ln.path2 = "other";
	CHECK(t.apply(ln) == -ENOENT);
	t.applier->setResyncing(false);
	CHECK(t.apply(sa) == -ENOENT);
	CHECK(t.apply(renameOp("gone", "other")) == -ENOENT);
}

TEST_CASE("symlink, link, mknod, unlink, rmdir")
{
	Target t;
	Op s = mk(OpType::Symlink, "ln");
	s.target = "../../outside/target";
	CHECK(t.apply(s) == 0);
	char buf[256] = {};
	REQUIRE(readlink((t / "ln").c_str(), buf, sizeof(buf) - 1) > 0);
	CHECK(std::string(buf) == "../../outside/target");

	CHECK(t.apply(mk(OpType::Create, "f", 0644)) == 0);
	CHECK(t.apply(writeOp("f", 0, "data")) == 0);
	Op l = mk(OpType::Link, "f");
	l.path2 = "f2";
	CHECK(t.apply(l) == 0);
	struct stat a, b;
	REQUIRE(stat((t / "f").c_str(), &a) == 0);
	REQUIRE(stat((t / "f2").c_str(), &b) == 0);
	CHECK(a.st_ino == b.st_ino);

	/* A link of a symlink links the symlink, not what it points to. */
	Op ls = mk(OpType::Link, "ln");
	ls.path2 = "ln2";
	CHECK(t.apply(ls) == 0);
	CHECK(S_ISLNK(modeOf(t / "ln2")));

	CHECK(t.apply(mk(OpType::Mknod, "fifo", S_IFIFO | 0620)) == 0);
	CHECK(modeOf(t / "fifo") == (S_IFIFO | 0620));
	/* A write to a FIFO fails at once instead of blocking the stream. */
	CHECK(t.apply(writeOp("fifo", 0, "x")) != 0);

	CHECK(t.apply(mk(OpType::Unlink, "f")) == 0);
	CHECK_FALSE(exists(t / "f"));
	CHECK(readFile(t / "f2") == "data");
	CHECK(t.apply(mk(OpType::Mkdir, "d", 0755)) == 0);
	CHECK(t.apply(mk(OpType::Rmdir, "d")) == 0);
	CHECK_FALSE(exists(t / "d"));
}

TEST_CASE("rename with flags")
{
	Target t;
	writeFile(t / "a", "A");
	writeFile(t / "b", "B");
	CHECK(t.apply(renameOp("a", "b", RENAME_NOREPLACE)) == -EEXIST);
	CHECK(readFile(t / "a") == "A");
	CHECK(t.apply(renameOp("a", "b", RENAME_EXCHANGE)) == 0);
	CHECK(readFile(t / "a") == "B");
	CHECK(readFile(t / "b") == "A");
	CHECK(t.apply(renameOp("a", "c", RENAME_NOREPLACE)) == 0);
	CHECK(readFile(t / "c") == "B");
	CHECK(t.apply(renameOp("c", "b")) == 0);
	CHECK(readFile(t / "b") == "B");
	CHECK_FALSE(exists(t / "c"));

	/* Directories move with their content. */
	CHECK(t.apply(mk(OpType::Mkdir, "d", 0755)) == 0);
	CHECK(t.apply(mk(OpType::Mkdir, "e", 0755)) == 0);
	CHECK(t.apply(renameOp("b", "d/b")) == 0);
	CHECK(t.apply(renameOp("d", "e/d")) == 0);
	CHECK(readFile(t / "e/d/b") == "B");
}

TEST_CASE("xattrs and fallocate")
{
	Target t;
	CHECK(t.apply(mk(OpType::Create, "f", 0644)) == 0);
	Op x = mk(OpType::Setxattr, "f");
	x.name = "user.color";
	x.data = std::string("bl\0ue", 5);
	x.flags = XATTR_CREATE;
	CHECK(t.apply(x) == 0);
	char v[16] = {};
	CHECK(getxattr((t / "f").c_str(), "user.color", v, sizeof(v)) == 5);
	CHECK(std::string(v, 5) == std::string("bl\0ue", 5));
	/* Replay of an XATTR_CREATE succeeds (the primary enforced the flag). */
	CHECK(t.apply(x) == 0);
	Op rx = mk(OpType::Removexattr, "f");
	rx.name = "user.color";
	CHECK(t.apply(rx) == 0);
	CHECK(getxattr((t / "f").c_str(), "user.color", v, sizeof(v)) < 0);
	CHECK(t.apply(rx) == 0);

	/* On the root and on a directory. */
	CHECK(t.apply(mk(OpType::Mkdir, "d", 0755)) == 0);
	x.path = "d";
	CHECK(t.apply(x) == 0);
	x.path = ".";
	CHECK(t.apply(x) == 0);
	CHECK(getxattr(t.dir.path().c_str(), "user.color", v, sizeof(v)) == 5);

	Op fa = mk(OpType::Fallocate, "f");
	fa.offset = 0;
	fa.length = 8192;
	CHECK(t.apply(fa) == 0);
	struct stat st;
	REQUIRE(stat((t / "f").c_str(), &st) == 0);
	CHECK(st.st_size == 8192);
	CHECK(t.apply(writeOp("f", 0, std::string(8192, 'z'))) == 0);
	Op punch = mk(OpType::Fallocate, "f");
	punch.flags = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	punch.offset = 0;
	punch.length = 4096;
	CHECK(t.apply(punch) == 0);
	CHECK(readFile(t / "f") == std::string(4096, '\0') + std::string(4096, 'z'));
}

TEST_CASE("each op can be applied again right after itself (replay)")
{
	Target t;
	Op ops[] = {
		mk(OpType::Mkdir, "d", 0755),
		mk(OpType::Create, "d/f", 0644),
		writeOp("d/f", 0, "xyz"),
		mk(OpType::Mknod, "p", S_IFIFO | 0600),
		[] { Op s = mk(OpType::Symlink, "s"); s.target = "d/f"; return s; }(),
		[] { Op l = mk(OpType::Link, "d/f"); l.path2 = "h"; return l; }(),
		renameOp("h", "h2"),
		mk(OpType::Unlink, "h2"),
		mk(OpType::Mkdir, "e", 0700),
		mk(OpType::Rmdir, "e"),
	};
	for (const Op &op : ops) {
		CAPTURE(opTypeName(op.type));
		CHECK(t.apply(op) == 0);
		CHECK(t.apply(op) == 0);
	}
	CHECK(readFile(t / "d/f") == "xyz");
	CHECK_FALSE(exists(t / "h2"));
	CHECK_FALSE(exists(t / "e"));
}

TEST_CASE("failures are reported, never skipped")
{
	Target t;
	/* Write to a file that does not exist. */
	CHECK(t.apply(writeOp("missing", 0, "x")) == -ENOENT);
	/* Mkdir over a regular file. */
	writeFile(t / "f", "x");
	CHECK(t.apply(mk(OpType::Mkdir, "f", 0755)) == -EEXIST);
	/* A write past the largest file offset the file system allows. */
	CHECK(t.apply(writeOp("f", (1ull << 62), "x")) < 0);
	/* Create under a missing directory. */
	CHECK(t.apply(mk(OpType::Create, "no/such/f", 0644)) == -ENOENT);
	/* Rename of a missing source with no destination. */
	CHECK(t.apply(renameOp("nope", "nope2")) == -ENOENT);
	/* Rmdir of a non-empty directory. */
	CHECK(t.apply(mk(OpType::Mkdir, "d", 0755)) == 0);
	writeFile(t / "d/x", "x");
	CHECK(t.apply(mk(OpType::Rmdir, "d")) == -ENOTEMPTY);
	/* The error message names the op and the path. */
	Op w = writeOp("missing", 0, "x");
	w.seq = 77;
	sk::Status s = t.applier->apply(w);
	REQUIRE_FALSE(s.ok());
	CHECK(s.error().message.find("write #77 missing") != std::string::npos);
}

TEST_CASE("hostile symlinks in the target never let an op escape the root")
{
	TempDir outside;
	writeFile(outside / "secret", "keep");
	REQUIRE(chmod((outside / "secret").c_str(), 0600) == 0);
	Target t;
	REQUIRE(symlink((outside / "secret").c_str(), (t / "evil").c_str()) == 0);
	REQUIRE(symlink(outside.path().c_str(), (t / "evildir").c_str()) == 0);
	REQUIRE(symlink("../../../../../../../../tmp", (t / "up").c_str()) == 0);

	/* Writes, truncates, fallocates through a symlink to an outside file fail. */
	CHECK(t.apply(writeOp("evil", 0, "PWNED")) != 0);
	Op tr = mk(OpType::Setattr, "evil");
	tr.valid = kSetSize;
	tr.size = 0;
	CHECK(t.apply(tr) != 0);
	Op fa = mk(OpType::Fallocate, "evil");
	fa.length = 4096;
	CHECK(t.apply(fa) != 0);
	/* Create over the symlink fails rather than creating/truncating the target. */
	CHECK(t.apply(mk(OpType::Create, "evil", 0666)) != 0);
	/* chmod of the symlink path does not change the outside file. */
	Op ch = mk(OpType::Setattr, "evil");
	ch.valid = kSetMode;
	ch.mode = 0777;
	CHECK(t.apply(ch) == 0);
	/* xattrs on the symlink path do not reach the outside file. */
	Op x = mk(OpType::Setxattr, "evil");
	x.name = "user.pwn";
	x.data = "1";
	t.apply(x);
	char v[4];
	CHECK(getxattr((outside / "secret").c_str(), "user.pwn", v, sizeof(v)) < 0);

	/* Anything under a symlinked directory fails. */
	CHECK(t.apply(mk(OpType::Create, "evildir/new", 0644)) != 0);
	CHECK(t.apply(writeOp("evildir/secret", 0, "PWNED")) != 0);
	CHECK(t.apply(mk(OpType::Unlink, "evildir/secret")) != 0);
	CHECK(t.apply(mk(OpType::Mkdir, "up/sk-repl-escape", 0755)) != 0);
	writeFile(t / "mine", "m");
	CHECK(t.apply(renameOp("mine", "evildir/stolen")) != 0);
	Op l = mk(OpType::Link, "mine");
	l.path2 = "evildir/linked";
	CHECK(t.apply(l) != 0);
	Op s = mk(OpType::Symlink, "evildir/ln");
	s.target = "x";
	CHECK(t.apply(s) != 0);

	CHECK(readFile(outside / "secret") == "keep");
	CHECK(modeOf(outside / "secret") == (S_IFREG | 0600));
	CHECK_FALSE(exists(outside / "new"));
	CHECK_FALSE(exists(outside / "stolen"));
	CHECK_FALSE(exists(outside / "linked"));
	CHECK_FALSE(exists(outside / "ln"));
	CHECK_FALSE(exists("/tmp/sk-repl-escape"));

	/* Unlinking the symlink itself is fine: it removes the link, not the target. */
	CHECK(t.apply(mk(OpType::Unlink, "evil")) == 0);
	CHECK(readFile(outside / "secret") == "keep");
}

TEST_CASE("the fd cache follows renames and unlinks")
{
	Applier::Options opts;
	opts.fdCacheSize = 4;
	Target t(opts);
	for (int i = 0; i < 20; i++) {
		std::string name = "f" + std::to_string(i);
		CHECK(t.apply(mk(OpType::Create, name, 0644)) == 0);
		for (int j = 0; j < 3; j++)
			CHECK(t.apply(writeOp(name, j, std::string(1, static_cast<char>('a' + i)))) == 0);
	}
	for (int i = 0; i < 20; i++)
		CHECK(readFile(t / ("f" + std::to_string(i))) == std::string(3, static_cast<char>('a' + i)));
	CHECK(t.applier->counters().fdCacheHits > 0);

	/* After a rename the old name's cached fd must not be used for a new file. */
	CHECK(t.apply(writeOp("f1", 0, "old")) == 0);
	CHECK(t.apply(renameOp("f1", "moved")) == 0);
	CHECK(t.apply(mk(OpType::Create, "f1", 0644)) == 0);
	CHECK(t.apply(writeOp("f1", 0, "new")) == 0);
	CHECK(readFile(t / "moved") == "old");
	CHECK(readFile(t / "f1") == "new");
	CHECK(t.apply(mk(OpType::Unlink, "f1")) == 0);
	CHECK(t.apply(writeOp("f1", 0, "zombie")) == -ENOENT);

	/* Renaming a directory invalidates the fds of files under it. */
	CHECK(t.apply(mk(OpType::Mkdir, "d", 0755)) == 0);
	CHECK(t.apply(mk(OpType::Create, "d/x", 0644)) == 0);
	CHECK(t.apply(writeOp("d/x", 0, "1")) == 0);
	CHECK(t.apply(renameOp("d", "d2")) == 0);
	CHECK(t.apply(writeOp("d/x", 0, "2")) == -ENOENT);
	CHECK(readFile(t / "d2/x") == "1");
}

/* Pages of path resident in the page cache within [offset, offset + length). */
size_t residentPages(const std::string &path, size_t offset, size_t length)
{
	int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
	REQUIRE(fd >= 0);
	void *map = mmap(nullptr, length, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(offset));
	close(fd);
	REQUIRE(map != MAP_FAILED);
	std::vector<unsigned char> vec((length + 4095) / 4096);
	REQUIRE(mincore(map, length, vec.data()) == 0);
	munmap(map, length);
	size_t n = 0;
	for (unsigned char v : vec)
		n += v & 1;
	return n;
}

TEST_CASE("a streaming write is written back and dropped behind; small and random writes are not")
{
	Target t;
	CHECK(t.apply(mk(OpType::Create, "big", 0644)) == 0);
	constexpr size_t kMiB = 1u << 20;
	std::string block(kMiB, '\0');
	auto writeMiB = [&](size_t i) {
		std::fill(block.begin(), block.end(), static_cast<char>('A' + i % 26));
		CHECK(t.apply(writeOp("big", i * kMiB, block)) == 0);
	};
	/* 32 MiB, pairs swapped as FUSE writeback served by several threads delivers
	 * them: 4 chunks kicked, none dropped yet (the window). */
	for (size_t k = 0; k < 32; k++)
		writeMiB(k ^ 1);
	CHECK(t.applier->counters().writeBehindDropped == 0);
	/* Everything clean, so the next drops are certain to take. */
	Op sync = mk(OpType::Barrier, "");
	sync.durable = true;
	CHECK(t.apply(sync) == 0);
	for (size_t k = 32; k < 48; k++)
		writeMiB(k ^ 1);
	/* 6 chunks kicked, the window keeps 4: the first 2 were dropped. */
	CHECK(t.applier->counters().writeBehindDropped == 2 * WriteBehind::kChunk);
	struct statfs fs;
	REQUIRE(statfs((t / "big").c_str(), &fs) == 0);
	if (fs.f_type == 0x01021994 /* TMPFS_MAGIC: memory only, nothing to drop */)
		MESSAGE("target on tmpfs: page cache residency not checked");
	else
		CHECK(residentPages(t / "big", 0, 2 * WriteBehind::kChunk) == 0);

	/* Writes behind the dropped part (late ones, or a rewrite) change nothing. */
	CHECK(t.apply(writeOp("big", 3 * kMiB + 5, "random")) == 0);
	CHECK(t.apply(writeOp("big", 7 * kMiB, std::string(4096, 'r'))) == 0);
	CHECK(t.applier->counters().writeBehindDropped == 2 * WriteBehind::kChunk);
	CHECK(t.apply(mk(OpType::Barrier, "")) == 0);

	std::string got = readFile(t / "big");
	REQUIRE(got.size() == 48 * kMiB);
	for (size_t i = 0; i < 48; i++) {
		std::string expect(kMiB, static_cast<char>('A' + i % 26));
		if (i == 3)
			expect.replace(5, 6, "random");
		if (i == 7)
			expect.replace(0, 4096, std::string(4096, 'r'));
		CHECK_MESSAGE(got.compare(i * kMiB, kMiB, expect) == 0, "MiB ", i, " differs");
	}
}

TEST_CASE("durable barriers flush with either strategy")
{
	for (auto mode : { Applier::Durability::FsyncDirty, Applier::Durability::Syncfs }) {
		Applier::Options opts;
		opts.durability = mode;
		Target t(opts);
		CHECK(t.apply(mk(OpType::Mkdir, "d", 0755)) == 0);
		CHECK(t.apply(mk(OpType::Create, "d/f", 0644)) == 0);
		CHECK(t.apply(writeOp("d/f", 0, "x")) == 0);
		Op b;
		b.type = OpType::Barrier;
		b.durable = true;
		CHECK(t.apply(b) == 0);
		CHECK(t.applier->counters().durableFlushes == 1);
		if (mode == Applier::Durability::FsyncDirty) {
			/* d/f, d and the root. */
			CHECK(t.applier->counters().fsyncs == 3);
			CHECK(t.applier->counters().syncfsFlushes == 0);
			/* A directory rename falls back to syncfs. */
			CHECK(t.apply(renameOp("d", "e")) == 0);
			CHECK(t.apply(b) == 0);
			CHECK(t.applier->counters().syncfsFlushes == 1);
		} else {
			CHECK(t.applier->counters().syncfsFlushes == 1);
		}
		/* A non-durable barrier flushes nothing. */
		b.durable = false;
		uint64_t flushes = t.applier->counters().durableFlushes;
		CHECK(t.apply(b) == 0);
		CHECK(t.applier->counters().durableFlushes == flushes);
	}
}

TEST_CASE("the tree comparison used by the stream tests sees every kind of difference")
{
	TempDir a, b;
	auto same = [&] { return sk::test::compareTrees(a.path(), b.path()); };
	CHECK(same() == "");
	writeFile(a / "f", "one");
	CHECK(same().find("f") != std::string::npos);
	writeFile(b / "f", "one");
	REQUIRE(chmod((a / "f").c_str(), 0600) == 0);
	REQUIRE(chmod((b / "f").c_str(), 0600) == 0);
	CHECK(same() == "");
	writeFile(b / "f", "two");
	CHECK(same() == "f: content differs");
	writeFile(b / "f", "one!");
	CHECK(same() == "f: size 3 vs 4");
	writeFile(b / "f", "one");
	REQUIRE(chmod((b / "f").c_str(), 0644) == 0);
	CHECK(same().find("f: mode") == 0);
	REQUIRE(chmod((b / "f").c_str(), 0600) == 0);
	REQUIRE(setxattr((a / "f").c_str(), "user.x", "1", 1, 0) == 0);
	CHECK(same() == "f: xattrs differ");
	REQUIRE(setxattr((b / "f").c_str(), "user.x", "1", 1, 0) == 0);
	REQUIRE(symlink("t1", (a / "l").c_str()) == 0);
	REQUIRE(symlink("t2", (b / "l").c_str()) == 0);
	CHECK(same().find("l: symlink target") == 0);
	REQUIRE(unlink((b / "l").c_str()) == 0);
	REQUIRE(symlink("t1", (b / "l").c_str()) == 0);
	CHECK(same() == "");
	REQUIRE(link((a / "f").c_str(), (a / "h").c_str()) == 0);
	writeFile(b / "h", "one");
	REQUIRE(chmod((b / "h").c_str(), 0600) == 0);
	CHECK(same().find("nlink") != std::string::npos);
}

TEST_CASE("a write-behind kick's own error is returned once, by the write that made it")
{
	/* Nothing to write back, or no writeback for the file type: not errors. */
	TempDir dir;
	int fd = open((dir / "f").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	REQUIRE(fd >= 0);
	CHECK(kickWriteback(fd, 0, 0) == 0);
	int pipeFds[2];
	REQUIRE(pipe(pipeFds) == 0);
	CHECK(kickWriteback(pipeFds[1], 0, 0) == 0);
	close(pipeFds[0]);
	close(pipeFds[1]);
	close(fd);
	/* A kick that fails (here EBADF, standing in for a file system's writepages
	 * failing) is reported by the write that made it, and by no other. */
	CHECK(kickWriteback(-1, 0, 0) == EBADF);
	WriteBehind wb;
	int reports = 0;
	for (uint64_t off = 0; off < 3 * WriteBehind::kChunk; off += 1u << 20) {
		int err = wb.wrote(-1, off, 1u << 20);
		/* Only the writes that complete a chunk kick it. */
		bool kicks = (off + (1u << 20)) % WriteBehind::kChunk == 0;
		CHECK(err == (kicks ? EBADF : 0));
		reports += err != 0;
	}
	CHECK(reports == 3);
	/* A write that kicks no chunk reports nothing. */
	CHECK(wb.wrote(-1, 3 * WriteBehind::kChunk, 4096) == 0);
}
