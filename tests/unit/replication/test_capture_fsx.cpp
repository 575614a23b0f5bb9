/* SPDX-License-Identifier: Apache-2.0 */
/*
 * fsx-style check of CaptureFs (suite 'root'): thousands of random operations
 * applied both through the mount and to a plain reference directory must give
 * the same results and trees; replaying the recorded op stream onto a third
 * directory with the real Applier must rebuild the backing tree exactly (the
 * stream is complete and correctly ordered).
 */
#include "test_capture_support.h"
#include "replication/apply.h"

#include <cstdlib>
#include <functional>
#include <linux/falloc.h>
#include <random>
#include <sys/mman.h>

using namespace sk::repl;
using namespace sk::repl::test;

namespace {

const char *const kNames[] = { "f0", "f1", "f2", "f3", "f4", "f5", "d0/f0", "d0/f1", "d0/f2",
	"d1/f0", "d1/f1", "d0", "d1", "d2", "d2/f0" };
constexpr size_t kNameCount = sizeof(kNames) / sizeof(kNames[0]);

struct Fsx {
	std::mt19937_64 rng;
	std::string mntRoot;
	std::string refRoot;
	std::string log;	/* last ops, for failure messages */

	uint64_t pick(uint64_t n) { return std::uniform_int_distribution<uint64_t>(0, n - 1)(rng); }
	std::string name() { return kNames[pick(kNameCount)]; }
	std::string bytes(size_t n)
	{
		std::string s(n, '\0');
		for (char &c : s)
			c = static_cast<char>('a' + pick(26));
		return s;
	}

	/* Runs op on both roots; the two results (0 or errno) must match. */
	void both(const std::string &what, const std::function<int(const std::string &root)> &op)
	{
		log += what + "\n";
		if (log.size() > 4000)
			log.erase(0, log.size() - 4000);
		int a = op(mntRoot);
		if (refRoot.empty())
			return;	/* concurrent run: no reference to compare with */
		int b = op(refRoot);
		if (a != b)
			FAIL_CHECK("op '" << what << "': through mount errno " << a << " (" << std::string(strerror(a))
					  << "), reference errno " << b << " (" << std::string(strerror(b)) << ")");
	}

	void step()
	{
		std::string p = name(), q = name();
		switch (pick(16)) {
		case 0:
		case 1:
		case 2: {
			uint64_t off = pick(256 * 1024), len = 1 + pick(64 * 1024);
			std::string data = bytes(len);
			both("write " + p + " @" + std::to_string(off) + " +" + std::to_string(len), [&](const std::string &r) {
				int fd = open((r + "/" + p).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
				if (fd < 0)
					return errno;
				int err = pwrite(fd, data.data(), len, off) < 0 ? errno : 0;
				close(fd);
				return err;
			});
			break;
		}
		case 3: {
			uint64_t size = pick(300 * 1024);
			both("truncate " + p + " " + std::to_string(size),
			     [&](const std::string &r) { return errOf([&] { return truncate((r + "/" + p).c_str(), size); }); });
			break;
		}
		case 4:
		case 5: {
			static const int kModes[] = { FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE,
				0, FALLOC_FL_KEEP_SIZE };
			int mode = kModes[pick(4)];
			uint64_t off = pick(256 * 1024), len = 1 + pick(128 * 1024);
			both("fallocate " + p + " mode " + std::to_string(mode) + " @" + std::to_string(off) + " +" +
				     std::to_string(len),
			     [&](const std::string &r) {
				     int fd = open((r + "/" + p).c_str(), O_RDWR | O_CLOEXEC);
				     if (fd < 0)
					     return errno;
				     int err = fallocate(fd, mode, off, len) < 0 ? errno : 0;
				     close(fd);
				     return err;
			     });
			break;
		}
		case 6: {
			static const unsigned kFlags[] = { 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE };
			unsigned flags = kFlags[pick(4)];
			both("rename " + p + " " + q + " flags " + std::to_string(flags), [&](const std::string &r) {
				return errOf([&] {
					return renameat2(AT_FDCWD, (r + "/" + p).c_str(), AT_FDCWD, (r + "/" + q).c_str(), flags);
				});
			});
			break;
		}
		case 7:
			both("link " + p + " " + q, [&](const std::string &r) {
				return errOf([&] { return link((r + "/" + p).c_str(), (r + "/" + q).c_str()); });
			});
			break;
		case 8:
			both("unlink " + p, [&](const std::string &r) { return errOf([&] { return unlink((r + "/" + p).c_str()); }); });
			break;
		case 9:
		case 10: {
			/* Concurrent runs: another thread's truncate would SIGBUS the store. */
			if (refRoot.empty())
				break;
			uint64_t pageOff = pick(64) * 4096, inPage = pick(4096), len = 1 + pick(8192);
			std::string data = bytes(len);
			both("mmap write " + p + " @" + std::to_string(pageOff + inPage) + " +" + std::to_string(len),
			     [&](const std::string &r) {
				     int fd = open((r + "/" + p).c_str(), O_RDWR | O_CLOEXEC);
				     if (fd < 0)
					     return errno;
				     struct stat st;
				     fstat(fd, &st);
				     /* Only inside the file: a store beyond EOF would be SIGBUS. */
				     uint64_t end = std::min<uint64_t>(pageOff + inPage + len, st.st_size);
				     int err = 0;
				     if (end > pageOff + inPage) {
					     size_t mapLen = end - pageOff;
					     void *m = mmap(nullptr, mapLen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, pageOff);
					     if (m == MAP_FAILED) {
						     err = errno;
					     } else {
						     memcpy(static_cast<char *>(m) + inPage, data.data(), end - pageOff - inPage);
						     if (msync(m, mapLen, MS_SYNC) < 0)
							     err = errno;
						     munmap(m, mapLen);
					     }
				     }
				     close(fd);
				     return err;
			     });
			break;
		}
		case 11: {
			std::string data = bytes(1 + pick(1000));
			both("open-unlink-write " + p, [&](const std::string &r) {
				int fd = open((r + "/" + p).c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
				if (fd < 0)
					return errno;
				int err = unlink((r + "/" + p).c_str()) < 0 ? errno : 0;
				if (!err && write(fd, data.data(), data.size()) < 0)
					err = errno;
				close(fd);
				return err;
			});
			break;
		}
		case 12: {
			static const mode_t kPerms[] = { 0600, 0644, 0755, 0640 };
			mode_t mode = kPerms[pick(4)];
			both("chmod " + p, [&](const std::string &r) { return errOf([&] { return chmod((r + "/" + p).c_str(), mode); }); });
			break;
		}
		case 13: {
			std::string data = bytes(pick(5000));
			both("trunc-write " + p, [&](const std::string &r) {
				int fd = open((r + "/" + p).c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
				if (fd < 0)
					return errno;
				int err = write(fd, data.data(), data.size()) < 0 ? errno : 0;
				close(fd);
				return err;
			});
			break;
		}
		case 14:
			if (pick(2))
				both("mkdir " + p, [&](const std::string &r) { return errOf([&] { return mkdir((r + "/" + p).c_str(), 0755); }); });
			else
				both("rmdir " + p, [&](const std::string &r) { return errOf([&] { return rmdir((r + "/" + p).c_str()); }); });
			break;
		case 15:
			both("symlink " + p, [&](const std::string &r) {
				return errOf([&] { return symlink(q.c_str(), (r + "/" + p).c_str()); });
			});
			break;
		}
	}
};

void runFsx(bool writeback, int batches, int perBatch, uint64_t inodeFdBudget = 0)
{
	TempDir ref("fsx-ref");
	TempDir replay("fsx-replay");
	CaptureOptions o;
	o.writebackCache = writeback;
	o.inodeFdBudget = inodeFdBudget;
	Mounted m(o);
	int replayFd = open(replay.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
	REQUIRE(replayFd >= 0);
	auto applier = Applier::create(replayFd, Applier::Options{});
	REQUIRE_MESSAGE(applier.ok(), (applier.ok() ? "" : applier.error().message));

	uint64_t seed = 12345 + (writeback ? 1 : 0);
	if (const char *s = getenv("SK_FSX_SEED"))
		seed = strtoull(s, nullptr, 0);
	MESSAGE("fsx seed " << seed << " writeback " << writeback);
	Fsx fsx;
	fsx.rng.seed(seed);
	fsx.mntRoot = m.dir.path();
	fsx.refRoot = ref.path();
	for (const char *d : { "d0", "d1" })
		fsx.both(std::string("mkdir ") + d, [&](const std::string &r) {
			return errOf([&] { return mkdir((r + "/" + d).c_str(), 0755); });
		});

	size_t applied = 0;
	for (int b = 0; b < batches; b++) {
		for (int i = 0; i < perBatch; i++)
			fsx.step();
		CAPTURE(b);
		std::string backing = treeOfFd(m.backFd);
		std::string reference = treeOf(ref.path());
		REQUIRE_MESSAGE(backing == reference, "after batch " << b << ", last ops:\n" << fsx.log);
		CHECK(treeOf(m.dir.path()) == backing);

		auto ops = m.sink.ops();
		for (; applied < ops.size(); applied++) {
			/* Durable barriers would only add fsyncs of the replay dir here. */
			if (ops[applied].type == OpType::Barrier)
				continue;
			sk::Status st = applier.value()->apply(ops[applied]);
			if (!st)
				FAIL_CHECK("replaying op " << applied << " '" << describe(ops[applied])
							   << "' failed: " << st.error().message);
		}
		REQUIRE_MESSAGE(treeOfFd(replayFd) == backing, "replay differs after batch " << b << ", last ops:\n"
											  << fsx.log);
	}
	close(replayFd);
	auto c = m.fs->counters();
	CHECK(c.opsByType[static_cast<size_t>(OpType::Write)] > 0);
	CHECK(c.opsByType[static_cast<size_t>(OpType::Rename)] > 0);
	CHECK(c.opsByType[static_cast<size_t>(OpType::Fallocate)] > 0);
	if (inodeFdBudget) {
		CHECK(c.handleOnlyInodes > 0);
		CHECK(c.prunedEntries > 0);
	}
}

} /* namespace */

TEST_CASE("capture fsx: random operations, writeback cache")
{
	if (!canMount()) {
		MESSAGE("skipped: needs root and /dev/fuse");
		return;
	}
	runFsx(true, 40, 100);
}

TEST_CASE("capture fsx: random operations, no writeback cache")
{
	if (!canMount()) {
		MESSAGE("skipped: needs root and /dev/fuse");
		return;
	}
	runFsx(false, 20, 100);
}

/* A budget of 4 fds: nearly every Inode is handle-only and the pruner drops
 * entries all the time, under the same operations and checks. */
TEST_CASE("capture fsx: random operations with almost no fd budget (handle-only inodes, pruning)")
{
	if (!canMount()) {
		MESSAGE("skipped: needs root and /dev/fuse");
		return;
	}
	runFsx(true, 20, 100, 4);
}

TEST_CASE("capture fsx: concurrent random operations on shared names replay exactly")
{
	if (!canMount()) {
		MESSAGE("skipped: needs root and /dev/fuse");
		return;
	}
	TempDir replay("fsx-replay");
	Mounted m;
	REQUIRE(mkdir(m.mnt("d0").c_str(), 0755) == 0);
	REQUIRE(mkdir(m.mnt("d1").c_str(), 0755) == 0);
	std::vector<std::thread> threads;
	for (int t = 0; t < 4; t++) {
		threads.emplace_back([&, t] {
			Fsx fsx;
			fsx.rng.seed(777 + t);
			fsx.mntRoot = m.dir.path();
			for (int i = 0; i < 600; i++)
				fsx.step();
		});
	}
	for (std::thread &t : threads)
		t.join();
	int replayFd = open(replay.path().c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
	REQUIRE(replayFd >= 0);
	auto applier = Applier::create(replayFd, Applier::Options{});
	REQUIRE(applier.ok());
	auto ops = m.sink.ops();
	int failures = 0;
	for (const Op &op : ops) {
		if (op.type == OpType::Barrier)
			continue;
		sk::Status st = applier.value()->apply(op);
		if (!st && failures++ < 5)
			FAIL_CHECK("replaying '" << describe(op) << "' failed: " << st.error().message);
	}
	std::string backing = treeOfFd(m.backFd);
	CHECK(treeOfFd(replayFd) == backing);
	/* Shared names make many operations fail on purpose; hundreds still succeed. */
	CHECK(ops.size() > 400u);
	close(replayFd);
}
