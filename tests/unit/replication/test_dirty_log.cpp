/* SPDX-License-Identifier: Apache-2.0 */
/*
 * DirtyLog: records survive reopen (crash), torn and damaged files degrade to
 * "covers = false" (a full compare) and never to a silently short list, rotation
 * keeps only the new epoch, concurrent writers group their syncs.
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "replication/dirty_log.h"
#include "test_apply_util.h"

using namespace sk::repl;
using sk::test::TempDir;

namespace {

constexpr uint32_t kBs = 65536;
constexpr uint64_t kExtent = uint64_t(kBs) * DirtyLog::kExtentBlocks;

std::unique_ptr<DirtyLog> openLog(const std::string &file)
{
	auto log = DirtyLog::open(file, kBs);
	REQUIRE_MESSAGE(log, log.error().message);
	return std::move(*log);
}

off_t fileSize(const std::string &file)
{
	struct stat st;
	REQUIRE(stat(file.c_str(), &st) == 0);
	return st.st_size;
}

} /* namespace */

TEST_CASE("a new log does not cover earlier writes; records survive a reopen")
{
	TempDir dir;
	std::string file = dir.path() + "/dirty-0.log";
	{
		auto log = openLog(file);
		auto st = log->state();
		CHECK_FALSE(st.covers);
		CHECK(st.problem.find("new dirty log") != std::string::npos);
		log->mark(42, 0, 10);
		log->mark(42, 3 * kExtent + 5, 2 * kExtent);	/* extents 3..5 */
		log->mark(42, 100, 10);				/* extent 0 again: no record */
		log->mark(7, 0, 0);				/* zero length: its extent */
		CHECK(log->state().records == 3);
	}
	/* No close-time flush exists: what is there was synced by mark(). */
	auto log = openLog(file);
	auto sel = log->selection();
	REQUIRE(sel.byIno.count(42) == 1);
	const auto &r = sel.byIno.at(42);
	CHECK(r.contains(0));
	CHECK(r.contains(DirtyLog::kExtentBlocks - 1));
	CHECK_FALSE(r.contains(DirtyLog::kExtentBlocks));
	CHECK(r.contains(3 * DirtyLog::kExtentBlocks));
	CHECK(r.contains(6 * DirtyLog::kExtentBlocks - 1));
	CHECK_FALSE(r.contains(6 * DirtyLog::kExtentBlocks));
	/* nextFrom: the block itself inside a range, else the next range's first block. */
	CHECK(r.nextFrom(5) == 5);
	CHECK(r.nextFrom(DirtyLog::kExtentBlocks) == 3 * DirtyLog::kExtentBlocks);
	CHECK(r.nextFrom(6 * DirtyLog::kExtentBlocks) == UINT64_MAX);
	CHECK(sel.byIno.at(7).contains(0));
	CHECK(sel.byIno.count(8) == 0);
}

TEST_CASE("rotation keeps only the new epoch and restores coverage")
{
	TempDir dir;
	std::string file = dir.path() + "/dirty-0.log";
	auto log = openLog(file);
	log->mark(1, 0, 1);
	uint64_t epoch = log->switchEpoch();
	log->mark(2, 0, 1);
	log->mark(1, 0, 1);	/* re-recorded in the new epoch */
	REQUIRE(log->dropBefore(epoch));
	auto st = log->state();
	CHECK(st.covers);
	CHECK(st.problem.empty());
	CHECK(st.records == 2);
	log.reset();
	auto again = openLog(file);
	CHECK(again->state().covers);
	auto sel = again->selection();
	CHECK(sel.byIno.count(1) == 1);
	CHECK(sel.byIno.count(2) == 1);
	/* Another rotation with no writes in between empties it. */
	uint64_t e2 = again->switchEpoch();
	REQUIRE(again->dropBefore(e2));
	CHECK(again->selection().empty());
	CHECK(fileSize(file) == 64);
}

TEST_CASE("a torn last record is dropped, a damaged middle record drops coverage")
{
	TempDir dir;
	std::string file = dir.path() + "/dirty-0.log";
	{
		auto log = openLog(file);
		uint64_t e = log->switchEpoch();
		REQUIRE(log->dropBefore(e));	/* covers */
		log->mark(1, 0, 1);
		log->mark(2, 0, 1);
		log->mark(3, 0, 1);
	}
	/* Crash in the middle of an append: half a record at the end. */
	{
		int fd = open(file.c_str(), O_WRONLY | O_APPEND);
		REQUIRE(fd >= 0);
		REQUIRE(write(fd, "0123456789", 10) == 10);
		close(fd);
	}
	{
		auto log = openLog(file);
		CHECK(log->state().covers);
		CHECK(log->state().records == 3);
		CHECK(fileSize(file) == 64 + 3 * 24);
	}
	/* A full-size garbage record at the end is a torn append too. */
	{
		int fd = open(file.c_str(), O_WRONLY | O_APPEND);
		std::string junk(24, 'x');
		REQUIRE(write(fd, junk.data(), junk.size()) == 24);
		close(fd);
		auto log = openLog(file);
		CHECK(log->state().covers);
		CHECK(log->state().records == 3);
	}
	/* Damage in the middle: not explainable by a crash. */
	{
		int fd = open(file.c_str(), O_WRONLY);
		REQUIRE(pwrite(fd, "\xff", 1, 64 + 24 + 3) == 1);
		close(fd);
		auto log = openLog(file);
		auto st = log->state();
		CHECK_FALSE(st.covers);
		CHECK(st.problem.find("damaged record") != std::string::npos);
		CHECK(st.records == 2);	/* what could be read is still a hint */
	}
}

TEST_CASE("a damaged header or another block size starts over without coverage")
{
	TempDir dir;
	std::string file = dir.path() + "/dirty-0.log";
	{
		auto log = openLog(file);
		uint64_t e = log->switchEpoch();
		REQUIRE(log->dropBefore(e));
		log->mark(1, 0, 1);
	}
	{
		auto other = DirtyLog::open(file, kBs * 2);
		REQUIRE(other);
		CHECK_FALSE((*other)->state().covers);
		CHECK((*other)->state().problem.find("block size") != std::string::npos);
		CHECK((*other)->selection().empty());
	}
	{
		int fd = open(file.c_str(), O_WRONLY);
		REQUIRE(pwrite(fd, "X", 1, 0) == 1);
		close(fd);
		auto log = openLog(file);
		CHECK_FALSE(log->state().covers);
		CHECK(log->state().problem.find("header") != std::string::npos);
		/* It is usable again: records land after a fresh header. */
		log->mark(9, 0, 1);
		log.reset();
		auto again = openLog(file);
		CHECK(again->selection().byIno.count(9) == 1);
	}
}

TEST_CASE("a hole in the current epoch survives a rotation that started before it")
{
	TempDir dir;
	std::string file = dir.path() + "/dirty-0.log";
	auto log = openLog(file);	/* new: hole at epoch 1 */
	uint64_t e = log->switchEpoch();
	/* The rotation for epoch 1 completes: the hole was before it. */
	REQUIRE(log->dropBefore(e));
	CHECK(log->state().covers);
	/* A resync as target marks the tree, a finished one clears everything. */
	REQUIRE(log->setResyncing(true));
	log.reset();
	log = openLog(file);
	CHECK(log->state().resyncing);
	log->mark(5, 0, 1);
	REQUIRE(log->resetAfterResync());
	CHECK(log->state().covers);
	CHECK_FALSE(log->state().resyncing);
	CHECK(log->selection().empty());
}

TEST_CASE("appends record extents ahead; concurrent writers share syncs")
{
	TempDir dir;
	std::string file = dir.path() + "/dirty-0.log";
	auto log = openLog(file);
	std::string data = dir.path() + "/data";
	int fd = open(data.c_str(), O_RDWR | O_CREAT, 0600);
	REQUIRE(fd >= 0);
	/* Writing at EOF: the extent and kAppendAhead more are recorded at once. */
	log->mark(77, 0, 4096, fd);
	CHECK(log->selection().byIno.at(77).blocks() == (1 + DirtyLog::kAppendAhead) * DirtyLog::kExtentBlocks);
	close(fd);

	std::atomic<bool> go{ false };
	std::vector<std::thread> threads;
	for (int t = 0; t < 4; t++)
		threads.emplace_back([&, t] {
			while (!go)
				;
			for (uint64_t i = 0; i < 200; i++) {
				auto guard = log->guard();
				log->mark(1000 + static_cast<uint64_t>(t), i * kExtent, 1);
			}
		});
	go = true;
	/* An epoch switch while they write must neither deadlock nor lose a record. */
	(void)log->switchEpoch();
	for (auto &th : threads)
		th.join();
	log.reset();
	auto again = openLog(file);
	auto sel = again->selection();
	for (uint64_t t = 0; t < 4; t++) {
		REQUIRE(sel.byIno.count(1000 + t) == 1);
		CHECK(sel.byIno.at(1000 + t).blocks() == 200 * DirtyLog::kExtentBlocks);
	}
}
