/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Resync tests over loopback TCP without FUSE (no root): a real sender + receiver pair,
 * the gated diff of resync.cpp, live writes racing the resync (emulating capture:
 * local effect, then submit), block-hash skipping measured in bytes, verify.
 */
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "cluster/wire.h"
#include "replication/resync.h"
#include "replication/stream.h"
#include "replication/verify.h"
#include "test_apply_util.h"

using namespace sk::repl;
using namespace std::chrono_literals;
using sk::test::TempDir;
using sk::test::readFile;
using sk::test::writeFile;

namespace {

sk::ClusterKey testKey()
{
	std::vector<uint8_t> bytes(32, 0x3c);
	auto key = sk::ClusterKey::fromBytes(bytes);
	REQUIRE(key.ok());
	return std::move(key.value());
}

StreamConfig streamConfig(sk::NodeId local, sk::NodeId peer)
{
	StreamConfig c;
	c.clusterId = sk::clusterIdFromName("resync-test");
	c.module = "mod";
	c.localNode = local;
	c.peerNode = peer;
	return c;
}

/*
 * Independent of scanTree: walks both trees with std::filesystem and names every path
 * whose type, permission bits, content or link target differ.
 */
std::vector<std::string> treeDifferences(const std::string &a, const std::string &b)
{
	namespace fs = std::filesystem;
	auto describe = [](const std::string &root) {
		std::map<std::string, std::string> m;
		for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
			std::string rel = fs::relative(it->path(), root).string();
			struct stat s;
			if (lstat(it->path().c_str(), &s) < 0)
				continue;
			std::string d = std::to_string(s.st_mode);
			if (S_ISREG(s.st_mode))
				d += ":" + readFile(it->path().string());
			else if (S_ISLNK(s.st_mode))
				d += ":" + fs::read_symlink(it->path()).string();
			m[rel] = d;
		}
		return m;
	};
	auto ma = describe(a), mb = describe(b);
	std::vector<std::string> diff;
	for (const auto &[p, d] : ma) {
		auto it = mb.find(p);
		if (it == mb.end())
			diff.push_back(p + " (missing on target)");
		else if (it->second != d)
			diff.push_back(p + " (differs)");
	}
	for (const auto &[p, d] : mb)
		if (!ma.count(p))
			diff.push_back(p + " (extra on target)");
	return diff;
}

/* A source dir streaming into a target dir over loopback, as the mirror wires it. */
struct Pair {
	TempDir src, dst;
	int listenFd = -1;
	std::unique_ptr<ReplicationReceiver> rx;
	std::unique_ptr<ReplicationSender> tx;
	std::unique_ptr<GatedSink> gate;
	uint16_t port = 0;
	bool attached = false;

	/* Like a source that served alone until the target came: live ops before the
	 * resync's start are not queued (their effects are on disk, the resync sends them). */
	Pair()
	{
		auto l = listenTcp("127.0.0.1", 0, &port);
		REQUIRE(l.ok());
		listenFd = *l;
		Applier::Options ao;
		ao.applyOwner = getuid() == 0;
		auto applier = Applier::create(dst.fd(), ao);
		REQUIRE(applier.ok());
		ReplicationReceiver::Options ro;
		ro.stream = streamConfig(2, 1);
		auto r = ReplicationReceiver::create(testKey(), ro, std::move(*applier));
		REQUIRE(r.ok());
		rx = std::move(*r);
		rx->setResyncing(true);	/* as SyncReplication's target until Done */
		REQUIRE(rx->start(listenFd) == 0);
		ReplicationSender::Options so;
		so.stream = streamConfig(1, 2);
		auto t = ReplicationSender::create(testKey(), so);
		REQUIRE(t.ok());
		tx = std::move(*t);
		gate = std::make_unique<GatedSink>(tx.get());
		tx->goneAlone();
	}
	~Pair()
	{
		gate.reset();
		tx.reset();
		rx->stop();
		close(listenFd);
	}

	/* select: what both dirty logs name (null: compare everything). As SyncReplication
	 * does, target files changed outside the logs are hashed whole on request. */
	/* defer: pass runResyncRound a deferred selection and run the piece round it asks
	 * for (as SyncReplication always does); by default only for a full compare. */
	ResyncStats resync(uint32_t blockSize = 65536, const BlockSelection *select = nullptr, bool subBlocks = false,
			   std::optional<bool> defer = std::nullopt)
	{
		ScanOptions o;
		o.blockSize = blockSize;
		o.select = select;
		o.subBlocks = subBlocks;
		auto manifest = scanTree(dst.fd(), o);
		REQUIRE(manifest.ok());
		if (select) {
			ScanOptions lo = o;
			lo.hashes = false;
			auto local = scanTree(src.fd(), lo);
			REQUIRE(local.ok());
			BlockSelection ask;
			for (const auto &path : unexplainedFiles(*local, *manifest))
				ask.byPath[path];
			if (!ask.empty()) {
				ScanOptions ho = o;
				ho.select = &ask;
				auto hashed = scanTree(dst.fd(), ho);
				REQUIRE(hashed.ok());
				std::vector<ManifestEntry> update;
				for (auto &e : *hashed)
					if (ask.byPath.count(e.path))
						update.push_back(std::move(e));
				mergeManifest(&*manifest, std::move(update));
			}
		}
		o.select = nullptr;
		/* A full compare defers differing blocks to a round with their piece hashes. */
		BlockSelection deferred;
		auto stats = runResyncRound(src.fd(), 0, o, *manifest, gate.get(), nullptr, [this]() -> sk::Status {
			/* What SyncReplication does under the gate: leave ALONE, let the stream in. */
			if (attached)
				return {};
			tx->endAlone();
			auto c = connectTcp("127.0.0.1", port);
			if (!c.ok())
				return c.error();
			attached = tx->attach(*c) == 0;
			return {};
		}, nullptr, defer.value_or(select == nullptr) ? &deferred : nullptr);
		if (!stats.ok())
			FAIL("resync round failed: " << stats.error().message);
		barrier();
		if (deferred.empty())
			return *stats;
		/* As SyncReplication's Rescan: a fresh target manifest of those blocks, with pieces. */
		ScanOptions po = o;
		po.select = &deferred;
		po.subBlocks = true;
		auto pieces = scanTree(dst.fd(), po);
		REQUIRE(pieces.ok());
		auto second = runResyncRound(src.fd(), 0, o, *pieces, gate.get(), nullptr);
		if (!second.ok())
			FAIL("piece round failed: " << second.error().message);
		barrier();
		ResyncStats sum = *stats;
		sum.bytesSent += second->bytesSent;
		sum.blocksSent += second->blocksSent;
		sum.blocksSkipped += second->blocksSkipped;
		sum.piecesSkipped += second->piecesSkipped;
		sum.bytesRead += second->bytesRead;
		sum.ops += second->ops;
		return sum;
	}
	/* Files f0..f(files-1) of size bytes each, the same on both sides (pattern seeded by i). */
	void seed(int files, size_t size);
	void barrier()
	{
		uint64_t seq = gate->submitBarrier(true);
		int r = tx->waitAckedFor(seq, 60s);
		INFO("receiver closed: " << rx->lastCloseReason());
		REQUIRE(r == 0);
	}
};

std::string pattern(size_t n, uint32_t seed)
{
	std::mt19937 rng(seed);
	std::string s(n, '\0');
	for (auto &c : s)
		c = static_cast<char>(rng());
	return s;
}

void Pair::seed(int files, size_t size)
{
	for (int i = 0; i < files; i++) {
		std::string data = pattern(size, static_cast<uint32_t>(i));
		writeFile(src / ("f" + std::to_string(i)), data);
		writeFile(dst / ("f" + std::to_string(i)), data);
	}
}

} /* namespace */

TEST_CASE("manifest entries survive encode/decode, long block lists continue across entries")
{
	ManifestEntry a;
	a.path = "dir/file";
	a.type = EntryType::File;
	a.mode = 0100640;
	a.size = 123456789;
	a.mtime = { 1700000000, 42 };
	for (uint64_t i = 0; i < 40000; i++)
		a.blocks.push_back({ i, ~i });
	ManifestEntry b;
	b.path = "link";
	b.type = EntryType::Symlink;
	b.target = "dir/file";
	std::vector<uint8_t> buf;
	encodeManifestEntry(a, &buf);
	encodeManifestEntry(b, &buf);
	std::vector<ManifestEntry> out;
	REQUIRE(decodeManifestEntries(buf, &out));
	REQUIRE(out.size() == 2);
	CHECK(out[0] == a);
	CHECK(out[1] == b);

	std::vector<ManifestEntry> bad;
	std::vector<uint8_t> truncated(buf.begin(), buf.begin() + 20);
	CHECK_FALSE(decodeManifestEntries(truncated, &bad));
	ManifestEntry evil = b;
	evil.path = "../etc/passwd";
	std::vector<uint8_t> e;
	encodeManifestEntry(evil, &e);
	CHECK_FALSE(decodeManifestEntries(e, &bad));
}

TEST_CASE("initial resync makes a divergent target identical to a populated source")
{
	Pair p;
	mkdir((p.src / "a").c_str(), 0755);
	mkdir((p.src / "a/b").c_str(), 0750);
	writeFile(p.src / "empty", "");
	writeFile(p.src / "one-block", pattern(65536, 1));
	writeFile(p.src / "a/odd", pattern(65537, 2));
	writeFile(p.src / "a/b/big", pattern(300000, 3));
	writeFile(p.src / "f1", "source version");
	chmod((p.src / "f1").c_str(), 0600);
	symlink("a/odd", (p.src / "lnk").c_str());
	link((p.src / "a/odd").c_str(), (p.src / "hard").c_str());

	/* Stale target: wrong content, extra files, a file where the source has a dir, a
	 * dir where the source has a file. */
	writeFile(p.dst / "f1", "an old and longer target version");
	mkdir((p.dst / "a").c_str(), 0755);
	writeFile(p.dst / "a/b", "file in the way of a dir");
	writeFile(p.dst / "a/extra", "x");
	mkdir((p.dst / "one-block").c_str(), 0755);
	writeFile(p.dst / "one-block/inner", "y");
	mkdir((p.dst / "zz").c_str(), 0755);
	writeFile(p.dst / "zz/deep", "z");

	ResyncStats s = p.resync();
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
	struct stat st1, st2;
	REQUIRE(lstat((p.dst / "hard").c_str(), &st1) == 0);
	REQUIRE(lstat((p.dst / "a/odd").c_str(), &st2) == 0);
	CHECK(st1.st_ino == st2.st_ino);	/* hard links stay links */
	CHECK(s.removed >= 5);

	ScanOptions o;
	auto v = verifyTrees(p.src.fd(), p.dst.fd(), o);
	REQUIRE(v.ok());
	CHECK(v->toJson().dump() == nlohmann::json(VerifyReport{ v->sourceEntries, v->targetEntries, {}, {} }.toJson()).dump());

	/* A second resync of identical trees sends no data at all. */
	ResyncStats again = p.resync();
	CHECK(again.bytesSent == 0);
	CHECK(again.removed == 0);
}

TEST_CASE("a full compare of a tree with 1% of its blocks changed sends only the changed pieces")
{
	Pair p;
	constexpr uint32_t kBlock = 16384;
	constexpr int kFiles = 100, kBlocksPerFile = 4;
	p.seed(kFiles, kBlock * kBlocksPerFile);
	/* 4 of 400 blocks: one byte each. */
	for (int i : { 3, 27, 51, 99 }) {
		int fd = open((p.src / ("f" + std::to_string(i))).c_str(), O_WRONLY);
		REQUIRE(fd >= 0);
		REQUIRE(pwrite(fd, "!", 1, (i % kBlocksPerFile) * kBlock + 100) == 1);
		close(fd);
	}
	uint64_t before = p.rx->counters().bytes;
	ResyncStats s = p.resync(kBlock);
	uint64_t wire = p.rx->counters().bytes - before;
	uint64_t total = uint64_t(kFiles) * kBlocksPerFile * kBlock;
	MESSAGE("tree " << total << " bytes, resync payload " << s.bytesSent << " bytes, stream bytes " << wire
			<< " (" << (100.0 * double(wire) / double(total)) << "% of the tree)");
	/* The full compare leaves the 4 differing blocks to a piece compare: one 4 KiB
	 * piece of each is sent, its other 3 are equal. */
	CHECK(s.blocksDeferred == 4);
	CHECK(s.blocksSent == 4);
	CHECK(s.blocksSkipped == 396);
	CHECK(s.piecesSkipped == 12);
	CHECK(s.bytesSent == 4 * kSubBlockSize);
	CHECK(wire < total / 50);	/* 1% changed: well under 2% on the wire, ops and attrs included */
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
}

TEST_CASE("sub-block hashes round-trip across continued entries; inconsistent ones are refused")
{
	ManifestEntry a;
	a.path = "db/table";
	a.size = 1ull << 40;
	a.coverage = Coverage::Some;
	for (uint64_t i = 0; i < 5000; i++) {	/* over one chunk of 2048 blocks of 16 pieces */
		a.blockIndex.push_back(i * 5);
		a.blocks.push_back({ i, ~i });
		for (uint64_t j = 0; j < 16; j++)
			a.subBlocks.push_back({ i * 16 + j, j });
	}
	std::vector<uint8_t> buf;
	encodeManifestEntry(a, &buf);
	std::vector<ManifestEntry> out;
	REQUIRE(decodeManifestEntries(buf, &out));
	REQUIRE(out.size() == 1);
	CHECK(out[0] == a);
	/* Chunk by chunk, as frames: the entry continues across them. */
	out.clear();
	size_t first = 0;
	bool more = true, continuing = false;
	int chunks = 0;
	while (more) {
		std::vector<uint8_t> chunk;
		more = encodeManifestChunk(a, &first, &chunk);
		REQUIRE(decodeManifestEntries(chunk, &out, &continuing));
		CHECK(continuing == more);
		chunks++;
	}
	CHECK(chunks == 3);
	REQUIRE(out.size() == 1);
	CHECK(out[0] == a);
	/* Whole-file hashes carry pieces too. */
	ManifestEntry whole;
	whole.path = "whole";
	whole.size = 3 * 65536;
	for (uint64_t i = 0; i < 3; i++) {
		whole.blocks.push_back({ i, i });
		for (uint64_t j = 0; j < 16; j++)
			whole.subBlocks.push_back({ j, i });
	}
	buf.clear();
	encodeManifestEntry(whole, &buf);
	out.clear();
	REQUIRE(decodeManifestEntries(buf, &out));
	REQUIRE(out.size() == 1);
	CHECK(out[0] == whole);
	/* A piece count that is not whole per block is left out, not sent wrong. */
	ManifestEntry odd = a;
	odd.subBlocks.pop_back();
	buf.clear();
	encodeManifestEntry(odd, &buf);
	out.clear();
	REQUIRE(decodeManifestEntries(buf, &out));
	CHECK(out[0].subBlocks.empty());
	/* An entry cut short is refused by the one-input decoder. */
	std::vector<uint8_t> half;
	first = 0;
	encodeManifestChunk(a, &first, &half);
	CHECK_FALSE(decodeManifestEntries(half, &out));
}

TEST_CASE("sparse and unhashed manifest entries round-trip; bad index order is refused")
{
	ManifestEntry a;
	a.path = "db/table";
	a.type = EntryType::File;
	a.size = 1ull << 40;
	a.coverage = Coverage::Some;
	for (uint64_t i = 0; i < 40000; i++) {
		a.blockIndex.push_back(i * 3 + 7);
		a.blocks.push_back({ i, ~i });
	}
	ManifestEntry b;
	b.path = "db/other";
	b.type = EntryType::File;
	b.size = 5;
	b.coverage = Coverage::None;
	std::vector<uint8_t> buf;
	encodeManifestEntry(a, &buf);
	encodeManifestEntry(b, &buf);
	std::vector<ManifestEntry> out;
	REQUIRE(decodeManifestEntries(buf, &out));
	REQUIRE(out.size() == 2);
	CHECK(out[0] == a);
	CHECK(out[1] == b);

	ManifestEntry bad = a;
	bad.blockIndex.resize(2);
	bad.blocks.resize(2);
	bad.blockIndex = { 9, 9 };
	std::vector<uint8_t> e;
	encodeManifestEntry(bad, &e);
	std::vector<ManifestEntry> ignored;
	CHECK_FALSE(decodeManifestEntries(e, &ignored));

	BlockRanges r;
	r.add(10, 5);
	r.add(0, 2);
	r.add(12, 10);	/* merges with 10..14 */
	CHECK(r.ranges == std::vector<std::pair<uint64_t, uint64_t>>{ { 0, 2 }, { 10, 12 } });
	r.add(22, 3);	/* adjacent to the end: extends the last */
	r.add(30, 1);	/* past the end: appended */
	r.add(1, 9);	/* out of order: merged with 0..1, reaching 10: all one range */
	CHECK(r.ranges == std::vector<std::pair<uint64_t, uint64_t>>{ { 0, 25 }, { 30, 1 } });
	r = BlockRanges{};
	r.add(10, 5);
	r.add(0, 2);
	r.add(12, 10);
	std::vector<uint8_t> sel;
	encodePathSelection("a/b", r, &sel);
	encodePathSelection("whole", BlockRanges{}, &sel);
	BlockSelection decoded;
	REQUIRE(decodePathSelection(sel, &decoded));
	CHECK(decoded.byPath.at("a/b").ranges == r.ranges);
	CHECK(decoded.byPath.at("whole").empty());
	std::vector<uint8_t> evil;
	encodePathSelection("../x", r, &evil);
	CHECK_FALSE(decodePathSelection(evil, &decoded));
}

TEST_CASE("with sub-block hashes a dirty-log resync sends the changed 4 KiB pieces only")
{
	Pair p;
	constexpr uint32_t kBlock = 65536;
	constexpr int kFiles = 8, kBlocksPerFile = 16;
	p.seed(kFiles, kBlock * kBlocksPerFile + 1000);
	p.resync(kBlock);
	/* Per file: 4 KiB at a piece boundary, 2 bytes across two pieces, and the last
	 * (short) block changed in its tail piece; the logs name those blocks. */
	BlockSelection sel;
	uint64_t changed = 0;
	auto poke = [&](int file, uint64_t off, const std::string &bytes) {
		int fd = open((p.src / ("f" + std::to_string(file))).c_str(), O_WRONLY);
		REQUIRE(fd >= 0);
		REQUIRE(pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(off)) == ssize_t(bytes.size()));
		close(fd);
		sel.byPath["f" + std::to_string(file)].add(off / kBlock, (off + bytes.size() - 1) / kBlock - off / kBlock + 1);
	};
	for (int i = 0; i < kFiles; i++) {
		poke(i, 3 * kBlock + 5 * kSubBlockSize, pattern(kSubBlockSize, 100 + i));
		poke(i, 9 * kBlock + 2 * kSubBlockSize - 1, "ab");
		poke(i, 16 * kBlock + 900, "z");
		changed += kSubBlockSize + 2 * kSubBlockSize + 1000;	/* pieces that differ */
	}
	/* A file the logs name whole (hashed as a whole file) gets its pieces too. */
	writeFile(p.src / "small", pattern(2 * kBlock, 7));
	writeFile(p.dst / "small", pattern(2 * kBlock, 7));
	{
		int fd = open((p.src / "small").c_str(), O_WRONLY);
		REQUIRE(fd >= 0);
		REQUIRE(pwrite(fd, "q", 1, kBlock + 10) == 1);
		close(fd);
	}
	sel.byPath["small"].add(0, 2);
	changed += kSubBlockSize;
	/* Sizes that differ inside a sub-hashed block: the source appended into the
	 * target's partial last piece, or cut the file inside a piece. */
	std::string base = pattern(kBlock + 30000, 8);
	writeFile(p.dst / "grew", base);
	writeFile(p.src / "grew", base + pattern(2048, 9));
	sel.byPath["grew"].add(1, 1);
	changed += (kBlock + 32048) - (kBlock + 7 * kSubBlockSize);	/* piece 7 of block 1, to the end */
	writeFile(p.dst / "shrank", base);
	writeFile(p.src / "shrank", base.substr(0, kBlock + 10000));
	sel.byPath["shrank"].add(1, 1);
	changed += 10000 - 2 * kSubBlockSize;	/* piece 2 of block 1: shorter than the target's */
	ResyncStats s = p.resync(kBlock, &sel, true);
	MESSAGE("sub-block resync: sent " << s.bytesSent << " bytes in " << s.blocksSent << " writes, "
					  << s.piecesSkipped << " pieces skipped");
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
	CHECK(s.bytesSent == changed);
	CHECK(s.blocksSent == 3 * kFiles + 3);
	/* The tail block has one piece; grew: 7 equal pieces; shrank: 2. */
	CHECK(s.piecesSkipped == uint64_t(kFiles) * (15 + 14) + 15 + 7 + 2);

	/* Without them: whole blocks. */
	for (int i = 0; i < kFiles; i++)
		poke(i, 3 * kBlock + 5 * kSubBlockSize, pattern(kSubBlockSize, 200 + i));
	s = p.resync(kBlock, &sel, false);
	CHECK(s.bytesSent >= uint64_t(kFiles) * kBlock);
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
}

TEST_CASE("with dirty logs only the named blocks are read; changes outside them are asked for")
{
	Pair p;
	constexpr uint32_t kBlock = 16384;
	constexpr int kFiles = 50, kBlocksPerFile = 32;
	p.seed(kFiles, kBlock * kBlocksPerFile);
	p.resync(kBlock);	/* equal trees, equal mtimes */

	BlockSelection sel;
	auto poke = [](const std::string &file, uint64_t off, const char *byte) {
		int fd = open(file.c_str(), O_WRONLY);
		REQUIRE(fd >= 0);
		REQUIRE(pwrite(fd, byte, 1, static_cast<off_t>(off)) == 1);
		close(fd);
	};
	/* Source wrote block 5 of f3 and appended to f7 (its log names them by path here,
	 * as SyncReplication maps its inodes to paths before the Want). */
	poke(p.src / "f3", 5 * kBlock + 1, "S");
	sel.byPath["f3"].add(4, 4);
	{
		int fd = open((p.src / "f7").c_str(), O_WRONLY | O_APPEND);
		std::string more = pattern(kBlock + 10, 99);
		REQUIRE(write(fd, more.data(), more.size()) == static_cast<ssize_t>(more.size()));
		close(fd);
	}
	sel.byPath["f7"].add(kBlocksPerFile, 4);
	/* The target (an old primary) wrote block 9 of f11 before it crashed: its own log
	 * names the inode. */
	poke(p.dst / "f11", 9 * kBlock, "T");
	struct stat st;
	REQUIRE(stat((p.dst / "f11").c_str(), &st) == 0);
	sel.byIno[st.st_ino].add(8, 4);
	/* Someone changed f20 on the target while SK was not running: in no log, but its
	 * mtime differs, so the source asks for its hashes. */
	poke(p.dst / "f20", 0, "X");
	struct timespec later[2] = { { 0, UTIME_OMIT }, { 2000000000, 0 } };
	utimensat(p.dst.fd(), "f20", later, 0);

	ResyncStats s = p.resync(kBlock, &sel);
	uint64_t tree = uint64_t(kFiles) * kBlocksPerFile * kBlock;
	MESSAGE("partial resync read " << s.bytesRead << " of " << tree << " source bytes, sent " << s.bytesSent);
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
	CHECK(s.blocksSent == 1 + 2 + 1 + 1);	/* f3 b5, f7 tail (2 blocks), f11 b9, f20 b0 */
	/* Read: 4 + 2 + 4 blocks named, the f7 tail's first block, f20 whole. */
	CHECK(s.bytesRead <= uint64_t(4 + 3 + 4 + kBlocksPerFile) * kBlock + 10);
	CHECK(s.bytesRead < tree / 10);
}

TEST_CASE("named blocks hashed without pieces (past the target's budget) still send only changed pieces")
{
	Pair p;
	constexpr uint32_t kBlock = 65536;
	constexpr int kFiles = 6, kBlocksPerFile = 8;
	p.seed(kFiles, kBlock * kBlocksPerFile);
	p.resync(kBlock);
	/* Both logs name blocks 0-3 of every file; one byte changed in block 2 of three. */
	BlockSelection sel;
	for (int i = 0; i < kFiles; i++)
		sel.byPath["f" + std::to_string(i)].add(0, 4);
	for (int i : { 1, 3, 5 }) {
		int fd = open((p.src / ("f" + std::to_string(i))).c_str(), O_WRONLY);
		REQUIRE(fd >= 0);
		REQUIRE(pwrite(fd, "#", 1, 2 * kBlock + 5000) == 1);
		close(fd);
	}
	/* The target's manifest has block hashes but no pieces, as past its piece budget. */
	ResyncStats s = p.resync(kBlock, &sel, false, true);
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
	CHECK(s.blocksDeferred == 3);
	CHECK(s.bytesSent == 3 * kSubBlockSize);
	CHECK(s.piecesSkipped == 3 * (kBlock / kSubBlockSize - 1));
}

TEST_CASE("live writes racing the resync end identical on both sides")
{
	Pair p;
	constexpr int kFiles = 40;
	constexpr size_t kSize = 256 * 1024;
	for (int i = 0; i < kFiles; i++)
		writeFile(p.src / ("f" + std::to_string(i)), pattern(kSize, static_cast<uint32_t>(i)));
	for (int i = 0; i < kFiles; i += 3)	/* a stale target: some files, other content */
		writeFile(p.dst / ("f" + std::to_string(i)), pattern(kSize / 2, 1000u + i));

	/* The writer does what capture does: the local change first, then its op. */
	std::atomic<bool> stop{ false };
	std::atomic<uint64_t> liveOps{ 0 };
	std::thread writer([&] {
		std::mt19937 rng(7);
		while (!stop) {
			std::string name = "f" + std::to_string(rng() % (kFiles + 10));
			std::string path = p.src / name;
			unsigned what = rng() % 10;
			Op op;
			op.path = name;
			if (what < 6) {
				int fd = open(path.c_str(), O_WRONLY);
				if (fd < 0)
					continue;
				uint64_t off = rng() % (kSize + 4096);
				std::string data = pattern(1 + rng() % 9000, static_cast<uint32_t>(rng()));
				if (pwrite(fd, data.data(), data.size(), static_cast<off_t>(off)) < 0) {
					close(fd);
					continue;
				}
				close(fd);
				op.type = OpType::Write;
				op.offset = off;
				op.data = data;
			} else if (what < 7) {
				if (truncate(path.c_str(), static_cast<off_t>(rng() % kSize)) < 0)
					continue;
				struct stat st;
				stat(path.c_str(), &st);
				op.type = OpType::Setattr;
				op.valid = sk::repl::kSetSize;
				op.size = static_cast<uint64_t>(st.st_size);
			} else if (what < 8) {
				if (unlink(path.c_str()) < 0)
					continue;
				op.type = OpType::Unlink;
			} else {
				int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0644);
				if (fd < 0)
					continue;
				close(fd);
				op.type = OpType::Create;
				op.mode = 0644;
				op.uid = getuid();
				op.gid = getgid();
			}
			CHECK(p.gate->submit(std::move(op)) != 0);
			liveOps++;
		}
	});
	while (liveOps.load() < 50)	/* the writer is running before the resync starts */
		std::this_thread::sleep_for(1ms);
	uint64_t atStart = liveOps.load();
	ResyncStats s = p.resync(16384);
	uint64_t during = liveOps.load() - atStart;
	/* Keep writing a little after the resync too, then settle. */
	std::this_thread::sleep_for(50ms);
	stop = true;
	writer.join();
	p.barrier();
	MESSAGE("live ops during the resync: " << during << ", resync ops " << s.ops);
	CHECK(during > 0);
	CHECK(treeDifferences(p.src.path(), p.dst.path()) == std::vector<std::string>{});
}

TEST_CASE("verify names the range holding a corrupted byte")
{
	TempDir a, b;
	std::string data = pattern(200000, 9);
	writeFile(a / "data", data);
	data[70000] ^= 1;
	writeFile(b / "data", data);
	writeFile(a / "same", "same");
	writeFile(b / "same", "same");
	writeFile(b / "only-target", "t");
	ScanOptions o;
	auto v = verifyTrees(a.fd(), b.fd(), o);
	REQUIRE(v.ok());
	REQUIRE(v->differences.size() == 2);
	CHECK(v->differences[0].path == "data");
	CHECK(v->differences[0].what == "content");
	REQUIRE(v->differences[0].ranges.size() == 1);
	CHECK(v->differences[0].ranges[0] == std::make_pair<uint64_t, uint64_t>(65536, 65536));
	CHECK(v->differences[1].path == "only-target");
	CHECK_FALSE(v->identical());
}

TEST_CASE("online verify: a difference stands only if the source did not change between the passes")
{
	auto file = [](const std::string &path, uint64_t h) {
		ManifestEntry e;
		e.path = path;
		e.size = 10;
		e.mode = S_IFREG | 0644;
		e.blocks = { { h, h } };
		return e;
	};
	/* Pass 1: four paths differ. */
	std::vector<ManifestEntry> src1 = { file("bad", 1), file("busy", 1), file("flight", 1), file("gone", 1) };
	std::vector<ManifestEntry> tgt1 = { file("bad", 9), file("busy", 9), file("flight", 0), file("extra", 5) };
	VerifyReport first = compareManifests(src1, tgt1, 65536);
	REQUIRE(first.differences.size() == 5);
	/* Pass 2: "busy" changed on the source, "flight" arrived, "gone" still missing,
	 * "extra" still there, "bad" still differs. */
	std::vector<ManifestEntry> src2 = { file("bad", 1), file("busy", 2), file("flight", 1), file("gone", 1) };
	src2[0].mtime = { 99, 0 };	/* mtime alone is not a change */
	std::vector<ManifestEntry> tgt2 = { file("bad", 9), file("busy", 9), file("flight", 1), file("extra", 5) };
	VerifyReport r = confirmDifferences(first, src1, src2, tgt2, 65536);
	std::vector<std::string> paths;
	for (const auto &d : r.differences)
		paths.push_back(d.path + ": " + d.what);
	CHECK(paths == std::vector<std::string>{ "bad: content", "extra: extra file on target", "gone: missing on target" });
	CHECK(r.changing == std::vector<std::string>{ "busy" });
	CHECK_FALSE(r.identical());
	CHECK(r.toJson()["changing"][0] == "busy");
}

TEST_CASE("control channel: handshake, manifest, and frames from another connection refused")
{
	int sv[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	uint64_t cid = sk::clusterIdFromName("resync-test");
	auto t = ControlChannel::create(sv[0], testKey(), cid, "mod", 2);
	auto s = ControlChannel::create(sv[1], testKey(), cid, "mod", 1);
	REQUIRE(t.ok());
	REQUIRE(s.ok());
	std::thread tgt([&] { CHECK((*t)->handshakeTarget(5000ms).ok()); });
	CHECK(peekHello(sv[1], 1000ms) == static_cast<uint8_t>(ControlFrame::Hello));
	REQUIRE((*s)->handshakeSource(5000ms).ok());
	tgt.join();
	ManifestEntry e;
	e.path = "x";
	e.blocks = { { 1, 2 } };
	/* A file whose hashes need several frames (over 16 GiB of 64 KiB blocks), and
	 * sparse hashes with sub-blocks. */
	ManifestEntry big;
	big.path = "big";
	big.size = 300000ull << 16;
	for (uint64_t i = 0; i < 300000; i++)
		big.blocks.push_back({ i, i * 7 });
	ManifestEntry subs;
	subs.path = "subs";
	subs.size = 1ull << 34;
	subs.coverage = Coverage::Some;
	for (uint64_t i = 0; i < 5000; i++) {
		subs.blockIndex.push_back(i * 2);
		subs.blocks.push_back({ i, ~i });
		for (uint64_t j = 0; j < 16; j++)
			subs.subBlocks.push_back({ i, j });
	}
	std::thread sender([&] { CHECK((*t)->sendManifest({ e, big, subs }, 7).ok()); });
	std::vector<ManifestEntry> got;
	uint64_t applied = 0;
	REQUIRE((*s)->recvManifest(&got, &applied, 5000ms).ok());
	sender.join();
	CHECK(applied == 7);
	REQUIRE(got.size() == 3);
	CHECK(got[0] == e);
	CHECK(got[1] == big);
	CHECK(got[2] == subs);

	/* A frame made for another connection (other nonce) is refused. */
	auto codec = sk::WireCodec::create(testKey(), cid);
	REQUIRE(codec.ok());
	sk::FrameHeader h;
	h.type = static_cast<uint8_t>(ControlFrame::Done);
	h.sender = 1;
	h.module = "mod";
	h.incarnation = 12345;
	h.sequence = 1;
	std::vector<uint8_t> frame;
	REQUIRE((*codec)->encode(h, {}, &frame, sk::kMaxStreamPayload) == 0);
	REQUIRE(write(sv[1], frame.data(), frame.size()) == ssize_t(frame.size()));
	ControlFrame type;
	std::vector<uint8_t> payload;
	auto r = (*t)->recv(&type, &payload, 5000ms);
	CHECK_FALSE(r.ok());
	CHECK(r.code() == -EPROTO);

	/* A peer of an older version (no version in its hello) is told so. */
	int old[2];
	REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, old) == 0);
	auto ot = ControlChannel::create(old[0], testKey(), cid, "mod", 2);
	auto os = ControlChannel::create(old[1], testKey(), cid, "mod", 1);
	REQUIRE(ot.ok());
	REQUIRE(os.ok());
	REQUIRE((*ot)->send(ControlFrame::Hello, {}).ok());
	auto v = (*os)->handshakeSource(5000ms);
	CHECK_FALSE(v.ok());
	CHECK(v.error().message.find("another SK version (control protocol 1") != std::string::npos);
}
