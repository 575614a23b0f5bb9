/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CaptureFs through real FUSE mounts over temp dirs (suite 'root'): every
 * operation's local effect, the op(s) it produces, errno fidelity, durability
 * waits, exclusion, read-only mode and dead-mount recovery.
 */
#include "test_capture_support.h"

#include <csignal>
#include <linux/capability.h>
#include <linux/falloc.h>
#include <sys/file.h>
#include <sys/fsuid.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>

using namespace sk::repl;
using namespace sk::repl::test;

namespace {

std::string join(const std::vector<std::string> &v)
{
	std::string s;
	for (const std::string &x : v)
		s += x + "; ";
	return s;
}

#define SKIP_UNLESS_ROOT()                                                    \
	do {                                                                  \
		if (!canMount()) {                                            \
			MESSAGE("skipped: needs root and /dev/fuse");         \
			return;                                               \
		}                                                             \
	} while (0)

std::vector<Op> opsOfType(RecordingSink &sink, OpType t)
{
	std::vector<Op> out;
	for (const Op &op : sink.ops())
		if (op.type == t)
			out.push_back(op);
	return out;
}

/* Concatenated Write bytes for path, applied in order to an empty buffer. */
std::string writtenContent(RecordingSink &sink, const std::string &path)
{
	std::string s;
	for (const Op &op : sink.ops()) {
		if (op.path != path)
			continue;
		if (op.type == OpType::Write) {
			if (s.size() < op.offset + op.data.size())
				s.resize(op.offset + op.data.size(), '\0');
			s.replace(op.offset, op.data.size(), op.data);
		} else if (op.type == OpType::Setattr && (op.valid & kSetSize)) {
			s.resize(op.size, '\0');
		}
	}
	return s;
}

CaptureOptions noWriteback()
{
	CaptureOptions o;
	o.writebackCache = false;
	return o;
}

} /* namespace */

TEST_CASE("capture: create, write, fsync produce Create, Write, durable Barrier in order")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	int fd = open(m.mnt("a.txt").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0640);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, "hello", 5) == 5);
	REQUIRE(fsync(fd) == 0);
	close(fd);

	CHECK(readAll(m.back("a.txt")) == "hello");
	auto ops = m.sink.ops();
	REQUIRE(ops.size() >= 3);
	CHECK(describe(ops[0]) == "Create a.txt");
	CHECK(ops[0].mode == 0640);
	CHECK(writtenContent(m.sink, "a.txt") == "hello");
	/* The barrier comes after every write of the file. */
	size_t lastWrite = 0, barrier = 0;
	for (size_t i = 0; i < ops.size(); i++) {
		if (ops[i].type == OpType::Write)
			lastWrite = i;
		if (ops[i].type == OpType::Barrier && !barrier)
			barrier = i;
	}
	CHECK(barrier > lastWrite);
	CHECK(ops[barrier].durable);
	for (size_t i = 1; i < ops.size(); i++)
		CHECK(ops[i].seq == ops[i - 1].seq + 1);
	auto c = m.fs->counters();
	CHECK(c.opsByType[static_cast<size_t>(OpType::Create)] == 1);
	CHECK(c.barriers >= 1);
}

TEST_CASE("capture: a streaming write is dropped behind from the backing cache and replicated whole")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	int fd = open(m.mnt("stream").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
	REQUIRE(fd >= 0);
	std::string expect;
	std::string block(1u << 20, '\0');
	for (int i = 0; i < 48; i++) {
		for (size_t k = 0; k < block.size(); k += 512)
			block[k] = static_cast<char>(i * 3 + k / 512);
		REQUIRE(write(fd, block.data(), block.size()) == static_cast<ssize_t>(block.size()));
		expect += block;
	}
	REQUIRE(fsync(fd) == 0);
	close(fd);
	/* Out-of-order writeback requests still make one run: most chunks went. */
	CHECK(m.fs->counters().writeBehindDropped >= 16u << 20);
	CHECK(readAll(m.back("stream")) == expect);
	CHECK(readAll(m.mnt("stream")) == expect);
	CHECK(writtenContent(m.sink, "stream") == expect);
}

TEST_CASE("capture: with ack = applied, fsync and O_DSYNC writes submit barriers the peer need not fsync")
{
	SKIP_UNLESS_ROOT();
	CaptureOptions o;
	o.ackDurable = false;
	Mounted m(o);
	int fd = open(m.mnt("a.txt").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0640);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, "hello", 5) == 5);
	REQUIRE(fdatasync(fd) == 0);
	close(fd);
	fd = open(m.mnt("b.txt").c_str(), O_WRONLY | O_CREAT | O_DSYNC, 0640);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, "world", 5) == 5);
	close(fd);

	CHECK(readAll(m.back("a.txt")) == "hello");
	CHECK(writtenContent(m.sink, "b.txt") == "world");
	auto barriers = opsOfType(m.sink, OpType::Barrier);
	CHECK(barriers.size() >= 2);
	for (const Op &b : barriers)
		CHECK_FALSE(b.durable);
}

TEST_CASE("capture: fsync blocks until the peer acknowledges")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	m.sink.setMode(RecordingSink::Mode::Never);
	int fd = open(m.mnt("f").c_str(), O_RDWR | O_CREAT, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, "x", 1) == 1);
	std::atomic<int> result{ 1 };
	std::thread t([&] { result = fsync(fd) == 0 ? 0 : errno; });
	/* Bounded wait for the fsync to reach waitAcked, then check it is still blocked. */
	for (int i = 0; i < 200 && m.sink.waiting() == 0; i++)
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	CHECK(m.sink.waiting() == 1);
	std::this_thread::sleep_for(std::chrono::milliseconds(100));
	CHECK(result.load() == 1);
	m.sink.ackAll();
	t.join();
	CHECK(result.load() == 0);
	close(fd);
}

TEST_CASE("capture: fsync with a delayed ack succeeds; a failed ack gives EIO")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	m.sink.setMode(RecordingSink::Mode::Delay);
	m.sink.setDelay(std::chrono::milliseconds(30));
	int fd = open(m.mnt("f").c_str(), O_RDWR | O_CREAT, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, "x", 1) == 1);
	CHECK(fsync(fd) == 0);
	CHECK(m.fs->counters().barrierWaitNs >= 30'000'000u);
	m.sink.setMode(RecordingSink::Mode::Fail);
	REQUIRE(write(fd, "y", 1) == 1);
	CHECK(errOf([&] { return fsync(fd); }) == EIO);
	CHECK(errOf([&] { return fdatasync(fd); }) == EIO);
	CHECK(m.fs->counters().barrierFailures >= 2);
	close(fd);
}

TEST_CASE("capture: namespace operations and their ops")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(mkdir(m.mnt("d").c_str(), 0750) == 0);
	REQUIRE(writeAll(m.mnt("d/f"), "data"));
	REQUIRE(symlink("f", m.mnt("d/s").c_str()) == 0);
	char target[64] = {};
	CHECK(readlink(m.mnt("d/s").c_str(), target, sizeof(target)) == 1);
	CHECK(std::string(target) == "f");
	REQUIRE(link(m.mnt("d/f").c_str(), m.mnt("d/h").c_str()) == 0);
	REQUIRE(mkfifo(m.mnt("d/p").c_str(), 0600) == 0);
	REQUIRE(rename(m.mnt("d/h").c_str(), m.mnt("h2").c_str()) == 0);
	REQUIRE(unlink(m.mnt("h2").c_str()) == 0);
	REQUIRE(unlink(m.mnt("d/p").c_str()) == 0);
	REQUIRE(unlink(m.mnt("d/s").c_str()) == 0);
	REQUIRE(unlink(m.mnt("d/f").c_str()) == 0);
	REQUIRE(rmdir(m.mnt("d").c_str()) == 0);

	std::string expected = "Mkdir d; Create d/f; Write d/f; Symlink d/s; Link d/f -> d/h; Mknod d/p; "
			       "Rename d/h -> h2; Unlink h2; Unlink d/p; Unlink d/s; Unlink d/f; Rmdir d; ";
	CHECK(join(m.sink.described()) == expected);
	auto mk = opsOfType(m.sink, OpType::Mkdir);
	REQUIRE(mk.size() == 1);
	CHECK(mk[0].mode == 0750);
	auto sl = opsOfType(m.sink, OpType::Symlink);
	REQUIRE(sl.size() == 1);
	CHECK(sl[0].target == "f");
	auto mn = opsOfType(m.sink, OpType::Mknod);
	REQUIRE(mn.size() == 1);
	CHECK(S_ISFIFO(mn[0].mode));
	CHECK((mn[0].mode & 07777) == 0600);
	CHECK(treeOf(m.dir.path()) == "");
}

/* truncate(2) of dirFd/name (through /proc: the full path is too long): 0 or an errno. */
int truncateat_helper(int dirFd, const std::string &name)
{
	int fd = openat(dirFd, name.c_str(), O_PATH | O_CLOEXEC);
	if (fd < 0)
		return errno;
	std::string proc = "/proc/self/fd/" + std::to_string(fd);
	int err = truncate(proc.c_str(), 0) == 0 ? 0 : errno;
	close(fd);
	return err;
}

TEST_CASE("capture: a change at a path longer than an op carries is refused before it is made")
{
	SKIP_UNLESS_ROOT();
	Mounted m(noWriteback());
	/* 20 levels of 200-byte names: a 4019-byte path, reached by *at() calls
	 * (it is longer than PATH_MAX from /). */
	std::vector<int> fds{ open(m.mnt("").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC) };
	std::string deep;
	for (int i = 0; i < 20; i++) {
		std::string name(200, static_cast<char>('a' + i));
		REQUIRE(mkdirat(fds.back(), name.c_str(), 0755) == 0);
		fds.push_back(openat(fds.back(), name.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
		REQUIRE(fds.back() >= 0);
		deep += (deep.empty() ? "" : "/") + name;
	}
	int d = fds.back();
	REQUIRE(deep.size() == 4019);
	REQUIRE(writeAll(m.mnt("top"), "t"));
	REQUIRE(mkdir(m.mnt("sub").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.mnt("sub/f"), "f"));
	m.sink.clear();

	std::string tooLong(100, 'z');	/* 4019 + 1 + 100 > 4096 */
	CHECK(mkdirat(d, tooLong.c_str(), 0755) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(openat(d, tooLong.c_str(), O_WRONLY | O_CREAT, 0644) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(mknodat(d, tooLong.c_str(), S_IFIFO | 0600, 0) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(symlinkat("top", d, tooLong.c_str()) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(linkat(fds[0], "top", d, tooLong.c_str(), 0) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(renameat(fds[0], "top", d, tooLong.c_str()) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(faccessat(fds[0], "top", F_OK, 0) == 0);
	struct stat st;
	CHECK(fstatat(d, tooLong.c_str(), &st, AT_SYMLINK_NOFOLLOW) == -1);
	CHECK(m.sink.ops().empty());

	/* A name that fits still works, at the limit; a directory moved there
	 * whose entries would end over it does not move. */
	std::string fits(4096 - 4020, 'y');
	REQUIRE(renameat(fds[0], "top", d, fits.c_str()) == 0);
	auto renames = opsOfType(m.sink, OpType::Rename);
	REQUIRE(renames.size() == 1);
	CHECK(renames[0].path2.size() == 4096);
	std::string almost(4096 - 4020 - 2, 'x');	/* almost/f: 4096 exactly */
	REQUIRE(renameat(fds[0], "sub", d, almost.c_str()) == 0);
	REQUIRE(renameat(d, almost.c_str(), fds[0], "sub") == 0);
	std::string over(4096 - 4020 - 1, 'w');	/* over/f: 4097 */
	CHECK(renameat(fds[0], "sub", d, over.c_str()) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(faccessat(fds[0], "sub/f", F_OK, 0) == 0);
	m.sink.clear();

	/* A file that was there over the limit before the mount (made below it):
	 * read, never changed. */
	std::string before(100, 'q');	/* not looked up yet (no negative entry) */
	int backDeep = m.backFd;
	std::vector<int> backFds;
	for (int i = 0; i < 20; i++) {
		std::string name(200, static_cast<char>('a' + i));
		backDeep = openat(backDeep, name.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
		REQUIRE(backDeep >= 0);
		backFds.push_back(backDeep);
	}
	int made = openat(backDeep, before.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	REQUIRE(made >= 0);
	REQUIRE(write(made, "f", 1) == 1);
	close(made);
	/* No hard link of it either: the op would carry its path. */
	CHECK(linkat(d, before.c_str(), fds[0], "short", 0) == -1);
	CHECK(errno == ENAMETOOLONG);
	int fd = openat(d, before.c_str(), O_RDONLY);
	REQUIRE(fd >= 0);
	char c = 0;
	CHECK(pread(fd, &c, 1, 0) == 1);
	CHECK(c == 'f');
	CHECK(fchmod(fd, 0600) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(fsetxattr(fd, "user.k", "v", 1, 0) == -1);
	CHECK(errno == ENAMETOOLONG);
	close(fd);
	for (int flags : { O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_CREAT }) {
		CAPTURE(flags);
		CHECK(openat(d, before.c_str(), flags, 0644) == -1);
		CHECK(errno == ENAMETOOLONG);
	}
	CHECK(openat(d, before.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644) == -1);
	CHECK(errno == EEXIST);
	fd = openat(d, before.c_str(), O_RDONLY | O_CREAT, 0644);	/* exists: opened, not created */
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	CHECK(truncateat_helper(d, before) == ENAMETOOLONG);
	CHECK(unlinkat(d, before.c_str(), 0) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(m.sink.ops().empty());
	struct stat back;
	REQUIRE(fstatat(backDeep, before.c_str(), &back, 0) == 0);
	CHECK(back.st_size == 1);
	CHECK(unlinkat(backDeep, before.c_str(), 0) == 0);
	/* Its full path is over PATH_MAX: the temp dir's cleanup could not remove it. */
	CHECK(unlinkat(d, fits.c_str(), 0) == 0);
	for (int f : backFds)
		close(f);
	for (int f : fds)
		close(f);
}

TEST_CASE("capture: a tree moved in from an excluded path must fit the op path limit")
{
	SKIP_UNLESS_ROOT();
	CaptureOptions o;
	o.exclude = { "tmp" };
	Mounted m(o);
	REQUIRE(mkdir(m.mnt("tmp").c_str(), 0755) == 0);
	int dir = open(m.mnt("tmp").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
	REQUIRE(dir >= 0);
	REQUIRE(mkdirat(dir, "t", 0755) == 0);
	int cur = openat(dir, "t", O_PATH | O_DIRECTORY | O_CLOEXEC);
	std::vector<int> fds{ dir, cur };
	for (int i = 0; i < 21; i++) {	/* t/ + 21 x 201: over 4096 below "t" */
		std::string name(200, static_cast<char>('a' + i));
		REQUIRE(mkdirat(cur, name.c_str(), 0755) == 0);
		cur = openat(cur, name.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
		REQUIRE(cur >= 0);
		fds.push_back(cur);
	}
	REQUIRE(mkdir(m.mnt("tmp/small").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.mnt("tmp/small/f"), "s"));
	CHECK(m.sink.ops().empty());

	CHECK(rename(m.mnt("tmp/t").c_str(), m.mnt("t").c_str()) == -1);
	CHECK(errno == ENAMETOOLONG);
	CHECK(m.sink.ops().empty());
	struct stat st;
	CHECK(stat(m.mnt("tmp/t").c_str(), &st) == 0);
	/* One that fits moves and is sent whole. */
	REQUIRE(rename(m.mnt("tmp/small").c_str(), m.mnt("small").c_str()) == 0);
	CHECK(writtenContent(m.sink, "small/f") == "s");
	/* Removed level by level: the whole path is over PATH_MAX. */
	for (int i = 20; i >= 0; i--)
		CHECK(unlinkat(fds[static_cast<size_t>(i) + 1], std::string(200, static_cast<char>('a' + i)).c_str(),
			       AT_REMOVEDIR) == 0);
	for (auto it = fds.rbegin(); it != fds.rend(); ++it)
		close(*it);
}

TEST_CASE("capture: readdir lists entries; statfs works")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	for (int i = 0; i < 300; i++)
		REQUIRE(writeAll(m.mnt("file-with-a-long-name-" + std::to_string(i)), "x"));
	DIR *dp = opendir(m.dir.path().c_str());
	REQUIRE(dp);
	int n = 0;
	while (struct dirent *e = readdir(dp))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(dp);
	CHECK(n == 300);
	struct statvfs sv;
	CHECK(statvfs(m.dir.path().c_str(), &sv) == 0);
	CHECK(sv.f_bsize > 0);
}

TEST_CASE("capture: rename flags NOREPLACE and EXCHANGE")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(writeAll(m.mnt("a"), "A"));
	REQUIRE(writeAll(m.mnt("b"), "B"));
	m.sink.clear();
	CHECK(errOf([&] { return renameat2(AT_FDCWD, m.mnt("a").c_str(), AT_FDCWD, m.mnt("b").c_str(),
					   RENAME_NOREPLACE); }) == EEXIST);
	CHECK(join(m.sink.described(true)) == "");
	REQUIRE(renameat2(AT_FDCWD, m.mnt("a").c_str(), AT_FDCWD, m.mnt("b").c_str(), RENAME_EXCHANGE) == 0);
	CHECK(readAll(m.back("a")) == "B");
	CHECK(readAll(m.back("b")) == "A");
	REQUIRE(renameat2(AT_FDCWD, m.mnt("a").c_str(), AT_FDCWD, m.mnt("c").c_str(), RENAME_NOREPLACE) == 0);
	auto ops = m.sink.opsNoTimes();
	REQUIRE(ops.size() == 2);
	CHECK(describe(ops[0]) == "Rename a -> b");
	CHECK(ops[0].flags == RENAME_EXCHANGE);
	CHECK(describe(ops[1]) == "Rename a -> c");
	CHECK(ops[1].flags == RENAME_NOREPLACE);

	/* Paths follow exchanged inodes: a write through an open fd names the new path. */
	int fd = open(m.mnt("b").c_str(), O_WRONLY);
	REQUIRE(fd >= 0);
	REQUIRE(renameat2(AT_FDCWD, m.mnt("b").c_str(), AT_FDCWD, m.mnt("c").c_str(), RENAME_EXCHANGE) == 0);
	m.sink.clear();
	REQUIRE(pwrite(fd, "Z", 1, 0) == 1);
	REQUIRE(fsync(fd) == 0);
	close(fd);
	CHECK(writtenContent(m.sink, "c") == "Z");
	CHECK(readAll(m.back("c")) == "Z");
}

TEST_CASE("capture: setattr chmod, chown, truncate, ftruncate, utimens")
{
	SKIP_UNLESS_ROOT();
	Mounted m(noWriteback());
	REQUIRE(writeAll(m.mnt("f"), "0123456789"));
	m.sink.clear();
	REQUIRE(chmod(m.mnt("f").c_str(), 0600) == 0);
	REQUIRE(chown(m.mnt("f").c_str(), 1234, 5678) == 0);
	REQUIRE(truncate(m.mnt("f").c_str(), 4) == 0);
	int fd = open(m.mnt("f").c_str(), O_RDWR);
	REQUIRE(fd >= 0);
	REQUIRE(ftruncate(fd, 2) == 0);
	close(fd);
	struct timespec ts[2] = { { 1000, 5 }, { 2000, 7 } };
	REQUIRE(utimensat(AT_FDCWD, m.mnt("f").c_str(), ts, 0) == 0);
	struct timespec now[2] = { { 0, UTIME_NOW }, { 0, UTIME_OMIT } };
	REQUIRE(utimensat(AT_FDCWD, m.mnt("f").c_str(), now, 0) == 0);

	struct stat st;
	REQUIRE(stat(m.back("f").c_str(), &st) == 0);
	CHECK((st.st_mode & 07777) == 0600);
	CHECK(st.st_uid == 1234u);
	CHECK(st.st_gid == 5678u);
	CHECK(st.st_size == 2);
	CHECK(st.st_mtim.tv_sec == 2000);

	auto ops = opsOfType(m.sink, OpType::Setattr);
	REQUIRE(ops.size() == 6);
	CHECK(ops[0].valid == kSetMode);
	CHECK(ops[0].mode == 0600);
	CHECK(ops[1].valid == (kSetUid | kSetGid));
	CHECK(ops[1].uid == 1234u);
	CHECK(ops[2].valid == kSetSize);
	CHECK(ops[2].size == 4);
	CHECK(ops[3].valid == kSetSize);
	CHECK(ops[3].size == 2);
	CHECK((ops[4].valid & (kSetAtime | kSetMtime)) == (kSetAtime | kSetMtime));
	CHECK(ops[4].atime == Timespec{ 1000, 5 });
	CHECK(ops[4].mtime == Timespec{ 2000, 7 });
	/* UTIME_NOW goes out as the resolved time so both sides match exactly. */
	CHECK((ops[5].valid & kSetAtime) != 0);
	CHECK((ops[5].valid & kSetMtime) == 0);
	CHECK(ops[5].atime == Timespec{ st.st_atim.tv_sec, static_cast<uint32_t>(st.st_atim.tv_nsec) });
	for (const Op &op : ops)
		CHECK(op.path == "f");
}

TEST_CASE("capture: open with O_TRUNC emits Setattr size 0")
{
	SKIP_UNLESS_ROOT();
	for (bool wb : { true, false }) {
		CAPTURE(wb);
		CaptureOptions o;
		o.writebackCache = wb;
		Mounted m(o);
		REQUIRE(writeAll(m.mnt("f"), "old content"));
		m.sink.clear();
		int fd = open(m.mnt("f").c_str(), O_WRONLY | O_TRUNC);
		REQUIRE(fd >= 0);
		close(fd);
		auto ops = opsOfType(m.sink, OpType::Setattr);
		REQUIRE(ops.size() >= 1);
		CHECK(ops[0].valid == kSetSize);
		CHECK(ops[0].size == 0);
		CHECK(readAll(m.back("f")) == "");
	}
}

TEST_CASE("capture: errno is the underlying one")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(mkdir(m.mnt("d").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.mnt("d/f"), "x"));
	REQUIRE(writeAll(m.mnt("file"), "x"));
	m.sink.clear();
	CHECK(errOf([&] { return open(m.mnt("missing").c_str(), O_RDONLY); }) == ENOENT);
	CHECK(errOf([&] { return unlink(m.mnt("missing").c_str()); }) == ENOENT);
	CHECK(errOf([&] { return mkdir(m.mnt("d").c_str(), 0755); }) == EEXIST);
	CHECK(errOf([&] { return open(m.mnt("file").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644); }) == EEXIST);
	CHECK(errOf([&] { return rmdir(m.mnt("d").c_str()); }) == ENOTEMPTY);
	CHECK(errOf([&] { return open(m.mnt("d").c_str(), O_WRONLY); }) == EISDIR);
	CHECK(errOf([&] { return unlink(m.mnt("d").c_str()); }) == EISDIR);
	CHECK(errOf([&] { return open(m.mnt("file/x").c_str(), O_RDONLY); }) == ENOTDIR);
	CHECK(errOf([&] { return rmdir(m.mnt("file").c_str()); }) == ENOTDIR);
	CHECK(errOf([&] { return rename(m.mnt("d").c_str(), m.mnt("file").c_str()); }) == ENOTDIR);
	CHECK(errOf([&] { return link(m.mnt("d").c_str(), m.mnt("d2").c_str()); }) == EPERM);
	CHECK(errOf([&] { return getxattr(m.mnt("file").c_str(), "user.nope", nullptr, 0); }) == ENODATA);
	/* Failed mutations produce no ops. */
	CHECK(join(m.sink.described(true)) == "");
}

TEST_CASE("capture: EACCES for a non-root caller; files it creates are its own")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(writeAll(m.mnt("secret"), "s"));
	REQUIRE(chmod(m.mnt("secret").c_str(), 0600) == 0);
	REQUIRE(mkdir(m.mnt("pub").c_str(), 0777) == 0);
	REQUIRE(chmod(m.mnt("pub").c_str(), 0777) == 0);
	m.sink.clear();
	int openErr = -1, createErr = -1;
	/* setfsuid is per thread: the test thread stays root. */
	std::thread t([&] {
		setfsgid(65534);
		setfsuid(65534);
		openErr = errOf([&] { return open(m.mnt("secret").c_str(), O_RDONLY); });
		int fd = open(m.mnt("pub/mine").c_str(), O_CREAT | O_WRONLY, 0644);
		createErr = fd < 0 ? errno : 0;
		if (fd >= 0)
			close(fd);
	});
	t.join();
	CHECK(openErr == EACCES);
	CHECK(createErr == 0);
	struct stat st;
	REQUIRE(stat(m.back("pub/mine").c_str(), &st) == 0);
	CHECK(st.st_uid == 65534u);
	auto cr = opsOfType(m.sink, OpType::Create);
	REQUIRE(cr.size() == 1);
	CHECK(cr[0].uid == 65534u);
	CHECK(cr[0].gid == 65534u);
}

/* Runs fn on a thread whose fsuid/fsgid are 65534 (a non-zero fsuid drops
 * CAP_FSETID for that thread); fn returns 0 or an errno. */
template<typename F>
int asNobody(F fn)
{
	int err = -1;
	std::thread t([&] {
		setfsgid(65534);
		setfsuid(65534);
		err = fn();
	});
	t.join();
	return err;
}

/* Permission bits of the backing file (below the mount). */
mode_t backMode(const Mounted &m, const std::string &name)
{
	struct stat st;
	REQUIRE(stat(m.back(name).c_str(), &st) == 0);
	return st.st_mode & 07777;
}

/* One page-aligned 4 KiB block of c written at offset 0 of path, opened
 * O_WRONLY | flags (O_DIRECT needs the alignment): 0 or an errno. */
int writeBlock(const std::string &path, int flags, char c)
{
	int fd = open(path.c_str(), O_WRONLY | flags);
	if (fd < 0)
		return errno;
	void *buf = nullptr;
	int err = posix_memalign(&buf, 4096, 4096);
	if (err == 0) {
		memset(buf, c, 4096);
		err = pwrite(fd, buf, 4096, 0) == 4096 ? 0 : errno;
		free(buf);
	}
	close(fd);
	return err;
}

TEST_CASE("capture: a write by a caller without CAP_FSETID clears suid and sgid, O_DIRECT too")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	for (const char *name : { "cached", "direct" }) {
		CAPTURE(name);
		REQUIRE(writeAll(m.mnt(name), std::string(4096, 'a')));
		REQUIRE(chmod(m.mnt(name).c_str(), 06777) == 0);
		m.sink.clear();
		bool direct = std::string(name) == "direct";
		REQUIRE(asNobody([&] { return writeBlock(m.mnt(name), direct ? O_DIRECT : 0, 'b'); }) == 0);
		struct stat st;
		REQUIRE(stat(m.back(name).c_str(), &st) == 0);
		CHECK((st.st_mode & 07777) == 0777);
		REQUIRE(stat(m.mnt(name).c_str(), &st) == 0);
		CHECK((st.st_mode & 07777) == 0777);
		/* The peer gets the same mode. */
		bool modeSent = false;
		for (const Op &op : m.sink.ops())
			if (op.type == OpType::Setattr && (op.valid & kSetMode) && (op.mode & 07777) == 0777)
				modeSent = true;
		CHECK(modeSent);
	}
}

TEST_CASE("capture: truncate and O_TRUNC by a caller without CAP_FSETID clear suid/sgid; root's writes keep them")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	auto modeOf = [&](const std::string &name) { return backMode(m, name); };
	REQUIRE(writeAll(m.mnt("trunc"), std::string(8192, 't')));
	REQUIRE(chmod(m.mnt("trunc").c_str(), 06777) == 0);
	CHECK(asNobody([&] { return truncate(m.mnt("trunc").c_str(), 100) == 0 ? 0 : errno; }) == 0);
	CHECK(modeOf("trunc") == 0777);

	REQUIRE(writeAll(m.mnt("otrunc"), std::string(8192, 'o')));
	REQUIRE(chmod(m.mnt("otrunc").c_str(), 06777) == 0);
	CHECK(asNobody([&] {
		int fd = open(m.mnt("otrunc").c_str(), O_WRONLY | O_TRUNC);
		if (fd < 0)
			return errno;
		close(fd);
		return 0;
	}) == 0);
	CHECK(modeOf("otrunc") == 0777);

	/* sgid without group execute stays for a writer in the file's group. */
	REQUIRE(writeAll(m.mnt("sgid"), "g"));
	REQUIRE(chown(m.mnt("sgid").c_str(), 0, 65534) == 0);
	REQUIRE(chmod(m.mnt("sgid").c_str(), 02666) == 0);
	CHECK(asNobody([&] { return writeBlock(m.mnt("sgid"), O_DIRECT, 'g'); }) == 0);
	CHECK(modeOf("sgid") == 02666);

	/* Root (CAP_FSETID) keeps the bits. */
	REQUIRE(writeAll(m.mnt("rootw"), "r"));
	REQUIRE(chmod(m.mnt("rootw").c_str(), 04755) == 0);
	REQUIRE(writeAll(m.mnt("rootw"), "rr", O_WRONLY));
	int fd = open(m.mnt("rootw").c_str(), O_WRONLY);
	REQUIRE(fd >= 0);
	REQUIRE(fsync(fd) == 0);
	close(fd);
	CHECK(modeOf("rootw") == 04755);
}

TEST_CASE("capture: chown, fallocate and O_TRUNC create leave and replicate the modes a local call would")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	auto modeOf = [&](const std::string &name) { return backMode(m, name); };
	auto modeSent = [&](const std::string &name, mode_t mode) {
		for (const Op &op : m.sink.ops())
			if (op.type == OpType::Setattr && op.path == name && (op.valid & kSetMode) &&
			    (op.mode & 07777) == mode)
				return true;
		return false;
	};
	/* Root's chown strips suid (and group-executable sgid) but keeps sgid without
	 * group execute; the peer gets the resulting mode. */
	REQUIRE(writeAll(m.mnt("chown"), "c"));
	REQUIRE(chmod(m.mnt("chown").c_str(), 06755) == 0);
	m.sink.clear();
	REQUIRE(chown(m.mnt("chown").c_str(), 65534, 65534) == 0);
	CHECK(modeOf("chown") == 0755);
	CHECK(modeSent("chown", 0755));
	REQUIRE(writeAll(m.mnt("chgrp"), "g"));
	REQUIRE(chmod(m.mnt("chgrp").c_str(), 02666) == 0);
	REQUIRE(chown(m.mnt("chgrp").c_str(), static_cast<uid_t>(-1), 65534) == 0);
	CHECK(modeOf("chgrp") == 02666);

	/* fallocate by a caller without CAP_FSETID strips like a write. */
	REQUIRE(writeAll(m.mnt("falloc"), std::string(8192, 'f')));
	REQUIRE(chmod(m.mnt("falloc").c_str(), 06777) == 0);
	m.sink.clear();
	CHECK(asNobody([&] {
		int fd = open(m.mnt("falloc").c_str(), O_WRONLY);
		if (fd < 0)
			return errno;
		int err = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0 ? 0 : errno;
		close(fd);
		return err;
	}) == 0);
	if (m.fs->counters().killprivV2) {
		CHECK(modeOf("falloc") == 0777);
		CHECK(modeSent("falloc", 0777));
	} else {
		/* The kernel strips itself without v2. */
		CHECK(modeOf("falloc") == 0777);
	}
	/* Root's fallocate keeps them; root without CAP_FSETID in its effective set
	 * loses them, as on a local fs. */
	auto punch = [&](const std::string &name) {
		int fd = open(m.mnt(name).c_str(), O_WRONLY);
		if (fd < 0)
			return errno;
		int err = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0 ? 0 : errno;
		close(fd);
		return err;
	};
	REQUIRE(writeAll(m.mnt("rootfalloc"), std::string(8192, 'r')));
	REQUIRE(chmod(m.mnt("rootfalloc").c_str(), 06777) == 0);
	CHECK(punch("rootfalloc") == 0);
	CHECK(modeOf("rootfalloc") == 06777);
	REQUIRE(writeAll(m.mnt("nocap"), std::string(8192, 'n')));
	REQUIRE(chmod(m.mnt("nocap").c_str(), 06777) == 0);
	int nocap = -1;
	std::thread([&] {
		__user_cap_header_struct hdr{ _LINUX_CAPABILITY_VERSION_3, 0 };
		__user_cap_data_struct caps[2]{};
		if (syscall(SYS_capget, &hdr, caps) != 0)
			return;
		caps[0].effective &= ~(1u << CAP_FSETID);
		if (syscall(SYS_capset, &hdr, caps) != 0)
			return;
		nocap = punch("nocap");
	}).join();
	CHECK(nocap == 0);
	CHECK(modeOf("nocap") == 0777);

	/* open(O_CREAT | O_TRUNC) of an existing setuid file by a caller without CAP_FSETID. */
	REQUIRE(writeAll(m.mnt("ctrunc"), std::string(100, 'x')));
	REQUIRE(chmod(m.mnt("ctrunc").c_str(), 06777) == 0);
	m.sink.clear();
	CHECK(asNobody([&] {
		int fd = open(m.mnt("ctrunc").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			return errno;
		close(fd);
		return 0;
	}) == 0);
	CHECK(modeOf("ctrunc") == 0777);
	CHECK(modeSent("ctrunc", 0777));
	struct stat st;
	REQUIRE(stat(m.mnt("ctrunc").c_str(), &st) == 0);
	CHECK(st.st_size == 0);
}

TEST_CASE("capture: with KILLPRIV_V2 a stream of writes does not ask for security.capability each time")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	if (!m.fs->counters().killprivV2) {
		MESSAGE("the kernel did not offer FUSE_HANDLE_KILLPRIV_V2: not checked");
		return;
	}
	int fd = open(m.mnt("log").c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
	REQUIRE(fd >= 0);
	uint64_t before = m.fs->counters().getxattrRequests;
	for (int i = 0; i < 200; i++)
		REQUIRE(write(fd, "0123456789abcdef", 16) == 16);
	REQUIRE(fsync(fd) == 0);
	close(fd);
	uint64_t asked = m.fs->counters().getxattrRequests - before;
	CAPTURE(asked);
	/* Once after each attribute refresh at most, never once per write. */
	CHECK(asked < 20);
	CHECK(readAll(m.back("log")).size() == 200u * 16);
}

TEST_CASE("capture: close() costs no FLUSH round trip; its data still reaches the file and the peer")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	for (int i = 0; i < 50; i++) {
		std::string name = "f" + std::to_string(i);
		int fd = open(m.mnt(name).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
		REQUIRE(fd >= 0);
		REQUIRE(write(fd, name.data(), name.size()) == static_cast<ssize_t>(name.size()));
		REQUIRE(close(fd) == 0);
		/* The writeback cache is written at close as before. */
		CHECK(readAll(m.back(name)) == name);
		CHECK(writtenContent(m.sink, name) == name);
	}
	CHECK(m.fs->counters().flushRequests <= 1);
}

TEST_CASE("capture: xattrs")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(writeAll(m.mnt("f"), "x"));
	m.sink.clear();
	REQUIRE(setxattr(m.mnt("f").c_str(), "user.k", "v1", 2, XATTR_CREATE) == 0);
	CHECK(errOf([&] { return setxattr(m.mnt("f").c_str(), "user.k", "v2", 2, XATTR_CREATE); }) == EEXIST);
	char buf[64] = {};
	CHECK(getxattr(m.mnt("f").c_str(), "user.k", buf, sizeof(buf)) == 2);
	CHECK(std::string(buf) == "v1");
	CHECK(getxattr(m.mnt("f").c_str(), "user.k", nullptr, 0) == 2);
	char list[256] = {};
	ssize_t n = listxattr(m.mnt("f").c_str(), list, sizeof(list));
	CHECK(std::string(list, n > 0 ? n : 0).find("user.k") != std::string::npos);
	REQUIRE(removexattr(m.mnt("f").c_str(), "user.k") == 0);
	CHECK(errOf([&] { return getxattr(m.back("f").c_str(), "user.k", buf, sizeof(buf)); }) == ENODATA);
	auto ops = m.sink.opsNoTimes();
	REQUIRE(ops.size() == 2);
	CHECK(describe(ops[0]) == "Setxattr f");
	CHECK(ops[0].name == "user.k");
	CHECK(ops[0].data == "v1");
	CHECK(ops[0].flags == XATTR_CREATE);
	CHECK(describe(ops[1]) == "Removexattr f");
}

TEST_CASE("capture: fallocate punch hole, zero range, SEEK_DATA/SEEK_HOLE")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	std::string data(1 << 20, 'a');
	REQUIRE(writeAll(m.mnt("f"), data));
	m.sink.clear();
	int fd = open(m.mnt("f").c_str(), O_RDWR);
	REQUIRE(fd >= 0);
	REQUIRE(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 512 * 1024) == 0);
	int zr = fallocate(fd, FALLOC_FL_ZERO_RANGE, 600 * 1024, 4096);
	REQUIRE(fallocate(fd, 0, 1 << 20, 1 << 16) == 0);
	off_t dataAt = lseek(fd, 0, SEEK_DATA);
	off_t holeAt = lseek(fd, 0, SEEK_HOLE);
	close(fd);
	CHECK(dataAt == 512 * 1024);
	CHECK(holeAt == 0);
	std::string got = readAll(m.back("f"));
	REQUIRE(got.size() == (1u << 20) + (1u << 16));
	CHECK(got.substr(0, 512 * 1024) == std::string(512 * 1024, '\0'));
	CHECK(got[512 * 1024] == 'a');
	auto ops = opsOfType(m.sink, OpType::Fallocate);
	REQUIRE(ops.size() == (zr == 0 ? 3u : 2u));
	CHECK(ops[0].flags == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE));
	CHECK(ops[0].offset == 0);
	CHECK(ops[0].length == 512 * 1024);
	if (zr == 0) {
		CHECK(ops[1].flags == FALLOC_FL_ZERO_RANGE);
		CHECK(got.substr(600 * 1024, 4096) == std::string(4096, '\0'));
	}
}

TEST_CASE("capture: mmap MAP_SHARED write + msync emits Writes and a durable barrier")
{
	SKIP_UNLESS_ROOT();
	for (bool wb : { true, false }) {
		CAPTURE(wb);
		CaptureOptions o;
		o.writebackCache = wb;
		Mounted m(o);
		REQUIRE(writeAll(m.mnt("f"), std::string(8192, '.')));
		m.sink.clear();
		int fd = open(m.mnt("f").c_str(), O_RDWR);
		REQUIRE(fd >= 0);
		void *p = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		REQUIRE(p != MAP_FAILED);
		memcpy(static_cast<char *>(p) + 4100, "mapped", 6);
		REQUIRE(msync(p, 8192, MS_SYNC) == 0);
		munmap(p, 8192);
		close(fd);
		std::string expect(8192, '.');
		expect.replace(4100, 6, "mapped");
		CHECK(readAll(m.back("f")) == expect);
		auto ops = m.sink.ops();
		bool sawWrite = false, barrierAfterWrite = false;
		for (const Op &op : ops) {
			if (op.type == OpType::Write && op.offset <= 4100 && op.offset + op.data.size() >= 4106)
				sawWrite = true;
			if (op.type == OpType::Barrier && op.durable && sawWrite)
				barrierAfterWrite = true;
		}
		CHECK(sawWrite);
		CHECK(barrierAfterWrite);
	}
}

TEST_CASE("capture: O_DIRECT and O_SYNC writes are durability points")
{
	SKIP_UNLESS_ROOT();
	for (int flag : { O_DIRECT, O_SYNC, O_DSYNC }) {
		CAPTURE(flag);
		Mounted m;
		int fd = open(m.mnt("f").c_str(), O_RDWR | O_CREAT | flag, 0644);
		REQUIRE(fd >= 0);
		void *buf = nullptr;
		REQUIRE(posix_memalign(&buf, 4096, 4096) == 0);
		memset(buf, 'd', 4096);
		m.sink.clear();
		CHECK(pwrite(fd, buf, 4096, 0) == 4096);
		free(buf);
		auto ops = m.sink.ops();
		REQUIRE(ops.size() >= 2);
		CHECK(describe(ops[0]) == "Write f");
		bool durableBarrier = false;
		for (const Op &op : ops)
			durableBarrier |= op.type == OpType::Barrier && op.durable;
		CHECK(durableBarrier);
		close(fd);
		CHECK(readAll(m.back("f")) == std::string(4096, 'd'));
	}
}

TEST_CASE("capture: per_write waits for the peer after every write")
{
	SKIP_UNLESS_ROOT();
	CaptureOptions o;
	o.writebackCache = false;
	o.perWrite = true;
	Mounted m(o);
	int fd = open(m.mnt("f").c_str(), O_RDWR | O_CREAT, 0644);
	REQUIRE(fd >= 0);
	m.sink.clear();
	REQUIRE(write(fd, "a", 1) == 1);
	REQUIRE(write(fd, "b", 1) == 1);
	CHECK(join(m.sink.described(true)) == "Write f; Barrier; Write f; Barrier; ");
	/* A write blocks until acked. */
	m.sink.setMode(RecordingSink::Mode::Never);
	std::atomic<bool> done{ false };
	std::thread t([&] { (void)!write(fd, "c", 1); done = true; });
	for (int i = 0; i < 200 && m.sink.waiting() == 0; i++)
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	CHECK(m.sink.waiting() == 1);
	CHECK_FALSE(done.load());
	m.sink.ackAll();
	t.join();
	CHECK(done.load());
	close(fd);
}

TEST_CASE("capture: POSIX, OFD and flock locks work through the mount")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(writeAll(m.mnt("lock"), "x"));
	int fd1 = open(m.mnt("lock").c_str(), O_RDWR);
	int fd2 = open(m.mnt("lock").c_str(), O_RDWR);
	REQUIRE(fd1 >= 0);
	REQUIRE(fd2 >= 0);
	CHECK(flock(fd1, LOCK_EX | LOCK_NB) == 0);
	CHECK(errOf([&] { return flock(fd2, LOCK_EX | LOCK_NB); }) == EWOULDBLOCK);
	CHECK(flock(fd1, LOCK_UN) == 0);
	CHECK(flock(fd2, LOCK_EX | LOCK_NB) == 0);
	CHECK(flock(fd2, LOCK_UN) == 0);

	struct flock fl = {};
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	fl.l_len = 10;
	CHECK(fcntl(fd1, F_OFD_SETLK, &fl) == 0);
	CHECK(errOf([&] { return fcntl(fd2, F_OFD_SETLK, &fl); }) == EAGAIN);
	fl.l_type = F_UNLCK;
	CHECK(fcntl(fd1, F_OFD_SETLK, &fl) == 0);

	fl.l_type = F_WRLCK;
	REQUIRE(fcntl(fd1, F_SETLK, &fl) == 0);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		struct flock c = {};
		c.l_type = F_WRLCK;
		c.l_whence = SEEK_SET;
		c.l_len = 10;
		int fd = open(m.mnt("lock").c_str(), O_RDWR);
		int r = fcntl(fd, F_SETLK, &c);
		_exit(r < 0 && (errno == EAGAIN || errno == EACCES) ? 0 : 1);
	}
	int status = -1;
	REQUIRE(waitpid(pid, &status, 0) == pid);
	CHECK(WIFEXITED(status));
	CHECK(WEXITSTATUS(status) == 0);
	close(fd1);
	close(fd2);
}

TEST_CASE("capture: writes to an unlinked open file produce no op")
{
	SKIP_UNLESS_ROOT();
	Mounted m(noWriteback());
	int fd = open(m.mnt("tmp").c_str(), O_RDWR | O_CREAT, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(unlink(m.mnt("tmp").c_str()) == 0);
	m.sink.clear();
	CHECK(write(fd, "ghost", 5) == 5);
	CHECK(fsync(fd) == 0);
	close(fd);
	CHECK(join(m.sink.described(true)) == "");
	CHECK(m.fs->counters().skipped >= 1);
}

TEST_CASE("capture: excluded paths produce no ops; renaming into the tree ships the content")
{
	SKIP_UNLESS_ROOT();
	CaptureOptions o;
	o.exclude = { "*.tmp", "cache" };
	Mounted m(o);
	REQUIRE(mkdir(m.mnt("cache").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.mnt("cache/x"), "cached"));
	REQUIRE(writeAll(m.mnt("db.tmp"), "new db"));
	{
		int fd = open(m.mnt("db.tmp").c_str(), O_RDWR);
		REQUIRE(fd >= 0);
		CHECK(fsync(fd) == 0);
		close(fd);
	}
	CHECK(join(m.sink.described(true)) == "");
	CHECK(readAll(m.back("cache/x")) == "cached");
	REQUIRE(rename(m.mnt("db.tmp").c_str(), m.mnt("db").c_str()) == 0);
	CHECK(join(m.sink.described()) == "Create db; Write db; Setattr db; ");
	CHECK(writtenContent(m.sink, "db") == "new db");
	m.sink.clear();
	REQUIRE(rename(m.mnt("db").c_str(), m.mnt("cache/db").c_str()) == 0);
	CHECK(join(m.sink.described()) == "Unlink db; ");

	CHECK_FALSE(captureExcluded(o.exclude, o.include, "data/file"));
	CHECK(captureExcluded(o.exclude, o.include, "a/b.tmp"));
	CHECK(captureExcluded(o.exclude, o.include, "cache/sub/file"));
	CHECK_FALSE(captureExcluded(o.exclude, { "cache/keep*" }, "cache/keep/file"));
}

TEST_CASE("capture: read-only mode fails every mutation with EROFS and serves reads")
{
	SKIP_UNLESS_ROOT();
	CaptureOptions o;
	o.readOnly = true;
	Mounted m(o);
	/* Content that exists below the mount (as the applier would write it). */
	REQUIRE(writeAll(m.back("f"), "replica"));
	REQUIRE(mkdir(m.back("d").c_str(), 0755) == 0);
	CHECK(readAll(m.mnt("f")) == "replica");
	CHECK(errOf([&] { return open(m.mnt("f").c_str(), O_WRONLY); }) == EROFS);
	CHECK(errOf([&] { return open(m.mnt("new").c_str(), O_CREAT | O_WRONLY, 0644); }) == EROFS);
	CHECK(errOf([&] { return mkdir(m.mnt("d2").c_str(), 0755); }) == EROFS);
	CHECK(errOf([&] { return unlink(m.mnt("f").c_str()); }) == EROFS);
	CHECK(errOf([&] { return rmdir(m.mnt("d").c_str()); }) == EROFS);
	CHECK(errOf([&] { return rename(m.mnt("f").c_str(), m.mnt("g").c_str()); }) == EROFS);
	CHECK(errOf([&] { return chmod(m.mnt("f").c_str(), 0600); }) == EROFS);
	CHECK(errOf([&] { return truncate(m.mnt("f").c_str(), 0); }) == EROFS);
	CHECK(errOf([&] { return symlink("f", m.mnt("s").c_str()); }) == EROFS);
	CHECK(errOf([&] { return link(m.mnt("f").c_str(), m.mnt("h").c_str()); }) == EROFS);
	CHECK(errOf([&] { return setxattr(m.mnt("f").c_str(), "user.a", "b", 1, 0); }) == EROFS);
	/* Changes made underneath show through (no stale cache on the SECOND). */
	REQUIRE(writeAll(m.back("f"), "replica v2"));
	CHECK(readAll(m.mnt("f")) == "replica v2");
	CHECK(join(m.sink.described(true)) == "");
}

TEST_CASE("capture: plain passthrough without a sink")
{
	SKIP_UNLESS_ROOT();
	Mounted m(CaptureOptions{}, false);
	REQUIRE(writeAll(m.mnt("f"), "plain"));
	int fd = open(m.mnt("f").c_str(), O_RDWR);
	REQUIRE(fd >= 0);
	CHECK(fsync(fd) == 0);
	close(fd);
	CHECK(readAll(m.back("f")) == "plain");
	CHECK(m.fs->counters().barriers == 0);
}

TEST_CASE("capture: a dead mount left by a killed daemon is detached on mount")
{
	SKIP_UNLESS_ROOT();
	TempDir dir;
	REQUIRE(writeAll(dir / "keep", "underneath"));
	int ready[2];
	REQUIRE(pipe(ready) == 0);
	pid_t pid = fork();
	REQUIRE(pid >= 0);
	if (pid == 0) {
		CaptureOptions o;
		o.mountpoint = dir.path();
		auto r = CaptureFs::mount(o);
		char c = r ? 1 : 0;
		(void)!write(ready[1], &c, 1);
		pause();
		_exit(0);
	}
	close(ready[1]);
	char c = 0;
	REQUIRE(read(ready[0], &c, 1) == 1);
	close(ready[0]);
	REQUIRE(c == 1);
	kill(pid, SIGKILL);
	int status;
	waitpid(pid, &status, 0);
	struct stat st;
	CHECK(errOf([&] { return stat((dir / "keep").c_str(), &st); }) == ENOTCONN);

	CaptureOptions o;
	o.mountpoint = dir.path();
	auto r = CaptureFs::mount(o);
	REQUIRE_MESSAGE(r.ok(), (r.ok() ? "" : r.error().message));
	CHECK(readAll(dir / "keep") == "underneath");
	CHECK(r.value()->unmount().ok());
	/* Mounting twice over a live mount is refused. */
	auto again = CaptureFs::mount(o);
	CHECK(again.ok());
	if (again.ok()) {
		auto third = CaptureFs::mount(o);
		CHECK(third.code() == -EBUSY);
		CHECK(again.value()->unmount().ok());
	}
}

TEST_CASE("capture: fsyncdir is a durability point; copy_file_range replicates as writes")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	REQUIRE(mkdir(m.mnt("d").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.mnt("d/src"), "copy me please"));
	m.sink.clear();
	int dfd = open(m.mnt("d").c_str(), O_RDONLY | O_DIRECTORY);
	REQUIRE(dfd >= 0);
	CHECK(fsync(dfd) == 0);
	close(dfd);
	auto ops = m.sink.ops();
	REQUIRE(ops.size() >= 1);
	CHECK(describe(ops.back()) == "Barrier durable");

	m.sink.clear();
	int in = open(m.mnt("d/src").c_str(), O_RDONLY);
	int out = open(m.mnt("d/dst").c_str(), O_WRONLY | O_CREAT, 0644);
	REQUIRE(in >= 0);
	REQUIRE(out >= 0);
	loff_t offIn = 0, offOut = 0;
	CHECK(copy_file_range(in, &offIn, out, &offOut, 14, 0) == 14);
	CHECK(fsync(out) == 0);
	close(in);
	close(out);
	CHECK(readAll(m.back("d/dst")) == "copy me please");
	CHECK(writtenContent(m.sink, "d/dst") == "copy me please");
}

TEST_CASE("capture: a hard-linked file keeps a valid op path when one name goes")
{
	SKIP_UNLESS_ROOT();
	Mounted m(noWriteback());
	REQUIRE(mkdir(m.mnt("a").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.mnt("a/one"), "1"));
	REQUIRE(link(m.mnt("a/one").c_str(), m.mnt("two").c_str()) == 0);
	int fd = open(m.mnt("a/one").c_str(), O_WRONLY);
	REQUIRE(fd >= 0);
	REQUIRE(unlink(m.mnt("a/one").c_str()) == 0);
	REQUIRE(rename(m.mnt("a").c_str(), m.mnt("b").c_str()) == 0);
	m.sink.clear();
	REQUIRE(pwrite(fd, "X", 1, 0) == 1);
	close(fd);
	CHECK(join(m.sink.described()) == "Write two; ");
	CHECK(readAll(m.back("two")) == "X");

	/* A file inside a renamed directory: ops name the new location. */
	REQUIRE(writeAll(m.mnt("b/in"), "y"));
	fd = open(m.mnt("b/in").c_str(), O_WRONLY);
	REQUIRE(fd >= 0);
	REQUIRE(mkdir(m.mnt("c").c_str(), 0755) == 0);
	REQUIRE(rename(m.mnt("b").c_str(), m.mnt("c/b").c_str()) == 0);
	m.sink.clear();
	REQUIRE(pwrite(fd, "Z", 1, 0) == 1);
	close(fd);
	CHECK(join(m.sink.described()) == "Write c/b/in; ");
}

TEST_CASE("capture: unmount with a file still open aborts the connection after the grace period")
{
	SKIP_UNLESS_ROOT();
	Mounted m;
	int fd = open(m.mnt("held").c_str(), O_RDWR | O_CREAT, 0644);
	REQUIRE(fd >= 0);
	REQUIRE(write(fd, "abc", 3) == 3);
	REQUIRE(fsync(fd) == 0);
	CHECK(m.fs->unmount().ok());
	/* The directory shows the backing content again; the held fd is dead. */
	CHECK(readAll(m.dir / "held") == "abc");
	/* (a read may still hit the page cache; fsync needs the daemon) */
	int err = errOf([&] { return fsync(fd); });
	CAPTURE(err);
	CHECK((err == ENOTCONN || err == EIO || err == ECONNABORTED));
	close(fd);
	CHECK(m.fs->unmount().ok());
}

TEST_CASE("capture: unlinking the only known name of a hard-linked file finds another name")
{
	SKIP_UNLESS_ROOT();
	Mounted m(noWriteback());
	/* Names made below the mount: the kernel only ever looks up "x". */
	REQUIRE(mkdir(m.back("sub").c_str(), 0755) == 0);
	REQUIRE(writeAll(m.back("x"), "old"));
	REQUIRE(link(m.back("x").c_str(), m.back("sub/y").c_str()) == 0);
	int fd = open(m.mnt("x").c_str(), O_WRONLY);
	REQUIRE(fd >= 0);
	REQUIRE(unlink(m.mnt("x").c_str()) == 0);
	m.sink.clear();
	REQUIRE(pwrite(fd, "NEW", 3, 0) == 3);
	close(fd);
	CHECK(join(m.sink.described()) == "Write sub/y; ");
	CHECK(readAll(m.back("sub/y")) == "NEW");
}

TEST_CASE("capture: O_APPEND writes land at the end, with the real offsets in the ops")
{
	SKIP_UNLESS_ROOT();
	for (bool wb : { true, false }) {
		CAPTURE(wb);
		CaptureOptions o;
		o.writebackCache = wb;
		Mounted m(o);
		REQUIRE(writeAll(m.mnt("log"), "one\n"));
		int a = open(m.mnt("log").c_str(), O_WRONLY | O_APPEND);
		int b = open(m.mnt("log").c_str(), O_WRONLY | O_APPEND);
		REQUIRE(a >= 0);
		REQUIRE(b >= 0);
		REQUIRE(write(a, "two\n", 4) == 4);
		REQUIRE(write(b, "three\n", 6) == 6);
		REQUIRE(fsync(a) == 0);
		close(a);
		close(b);
		CHECK(readAll(m.back("log")) == "one\ntwo\nthree\n");
		CHECK(writtenContent(m.sink, "log") == "one\ntwo\nthree\n");
	}
}

namespace {

size_t openFdCount()
{
	size_t n = 0;
	if (DIR *d = opendir("/proc/self/fd")) {
		while (struct dirent *e = readdir(d))
			n += e->d_name[0] != '.';
		closedir(d);
	}
	return n;
}

/* Lowers the soft open file limit for one scope. */
struct SoftFdLimit {
	struct rlimit saved {};
	explicit SoftFdLimit(rlim_t soft)
	{
		REQUIRE(getrlimit(RLIMIT_NOFILE, &saved) == 0);
		struct rlimit rl = saved;
		rl.rlim_cur = soft;
		REQUIRE(setrlimit(RLIMIT_NOFILE, &rl) == 0);
	}
	~SoftFdLimit() { setrlimit(RLIMIT_NOFILE, &saved); }
};

} /* namespace */

TEST_CASE("capture: more cached files than the open file limit allows: the kernel is asked to drop the oldest")
{
	SKIP_UNLESS_ROOT();
	constexpr rlim_t kLimit = 1024;
	constexpr int kFiles = 8000;
	SoftFdLimit limit(kLimit);
	Mounted m;
	REQUIRE(mkdir(m.mnt("d").c_str(), 0755) == 0);
	/* Every file created stays in the kernel's dentry cache (60 s timeouts): one
	 * inode each on our side, ten times the fds this process may open. */
	for (int i = 0; i < kFiles; i++) {
		std::string name = "d/f" + std::to_string(i);
		int fd = open(m.mnt(name).c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
		REQUIRE_MESSAGE(fd >= 0, name << ": " << strerror(errno));
		std::string body = std::to_string(i);
		REQUIRE(write(fd, body.data(), body.size()) == static_cast<ssize_t>(body.size()));
		close(fd);
	}
	CHECK(openFdCount() < kLimit);
	/* readdirplus and lookups of every name again, then the contents. */
	std::vector<std::string> names;
	DIR *d = opendir(m.mnt("d").c_str());
	REQUIRE(d != nullptr);
	while (struct dirent *e = readdir(d)) {
		struct stat st;
		int err = 0;
		if (e->d_name[0] != '.' && fstatat(dirfd(d), e->d_name, &st, 0) < 0)
			err = errno;
		CHECK_MESSAGE(err == 0, e->d_name << ": " << strerror(err));
		names.push_back(e->d_name);
	}
	closedir(d);
	CHECK(names.size() == kFiles + 2);
	int bad = 0;
	std::string firstBad;
	for (int i = 0; i < kFiles; i++) {
		std::string got = readAll(m.mnt("d/f" + std::to_string(i)));
		if (got != std::to_string(i) && !bad++)
			firstBad = "f" + std::to_string(i) + ": " + got;
	}
	CHECK_MESSAGE(bad == 0, firstBad);
	CHECK(openFdCount() < kLimit);
	auto c = m.fs->counters();
	CHECK(c.prunedEntries > 0);
	CHECK(c.cachedInodes <= kLimit);
	CHECK(opsOfType(m.sink, OpType::Create).size() == kFiles);
	CHECK(writtenContent(m.sink, "d/f7999") == "7999");
}
