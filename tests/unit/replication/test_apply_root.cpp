/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Disk-full tests (suite 'root'): the target is a small tmpfs mounted in a private
 * mount namespace of this test process, so ENOSPC is real and nothing leaks out.
 * An op that fails with ENOSPC must be reported by the applier and by the stream.
 */
#include <sched.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>

#include <doctest/doctest.h>

#include "cluster/wire.h"
#include "replication/apply.h"
#include "replication/stream.h"
#include "test_apply_util.h"

using namespace sk::repl;
using namespace std::chrono_literals;

namespace {

/* A 256 KiB tmpfs on a fresh temp dir, visible only to this process. */
struct SmallFs {
	sk::test::TempDir dir;
	int fd = -1;
	bool ok = false;

	SmallFs()
	{
		/* Must run before any thread exists: CLONE_NEWNS needs an unshared fs_struct. */
		static bool unshared = unshare(CLONE_NEWNS) == 0 &&
				       mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) == 0;
		REQUIRE_MESSAGE(unshared, "needs root (CAP_SYS_ADMIN) for a private mount namespace");
		REQUIRE(mount("sk-test", dir.path().c_str(), "tmpfs", 0, "size=256k,mode=0755") == 0);
		fd = open(dir.path().c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);
		REQUIRE(fd >= 0);
		ok = true;
	}
	~SmallFs()
	{
		if (fd >= 0)
			close(fd);
		if (ok)
			umount2(dir.path().c_str(), MNT_DETACH);
	}
};

Op makeWrite(const std::string &path, uint64_t offset, size_t size)
{
	Op w;
	w.type = OpType::Write;
	w.path = path;
	w.offset = offset;
	w.data = std::string(size, 'd');
	return w;
}

} /* namespace */

TEST_CASE("ENOSPC on the target is reported by the applier")
{
	SmallFs fs;
	auto a = Applier::create(fs.fd, {});
	REQUIRE(a.ok());
	Applier &applier = *a.value();
	Op c;
	c.type = OpType::Create;
	c.path = "f";
	c.mode = 0644;
	c.seq = 1;
	REQUIRE(applier.apply(c).ok());
	sk::Status last;
	int i = 0;
	for (; i < 64 && last.ok(); i++) {
		Op w = makeWrite("f", static_cast<uint64_t>(i) * 65536, 65536);
		w.seq = 2 + i;
		last = applier.apply(w);
	}
	REQUIRE_FALSE(last.ok());
	CHECK(last.code() == -ENOSPC);
	CHECK(last.error().message.find("No space left") != std::string::npos);
}

TEST_CASE("ENOSPC on the receiver reaches the sender as a peer error")
{
	SmallFs fs;
	auto a = Applier::create(fs.fd, {});
	REQUIRE(a.ok());
	StreamConfig cfg;
	cfg.clusterId = sk::clusterIdFromName("stream-root-test");
	cfg.module = "full";
	std::vector<uint8_t> keyBytes(32, 0x33);
	auto key = sk::ClusterKey::fromBytes(keyBytes);
	REQUIRE(key.ok());

	uint16_t port = 0;
	auto l = listenTcp("127.0.0.1", 0, &port);
	REQUIRE(l.ok());
	ReplicationReceiver::Options ro;
	ro.stream = cfg;
	auto rx = ReplicationReceiver::create(*key, ro, std::move(a.value()));
	REQUIRE(rx.ok());
	REQUIRE((*rx)->start(l.value()) == 0);

	ReplicationSender::Options so;
	so.stream = cfg;
	auto tx = ReplicationSender::create(*key, so);
	REQUIRE(tx.ok());
	std::atomic<int> peerErr{ 0 };
	std::atomic<uint64_t> peerSeq{ 0 };
	(*tx)->setOnPeerError([&](uint64_t seq, int err, const std::string &) {
		peerErr = err;
		peerSeq = seq;
	});
	auto conn = connectTcp("127.0.0.1", port);
	REQUIRE(conn.ok());
	REQUIRE((*tx)->attach(conn.value()) == 0);

	Op c;
	c.type = OpType::Create;
	c.path = "f";
	c.mode = 0644;
	(*tx)->submit(std::move(c));
	for (int i = 0; i < 8; i++)
		(*tx)->submit(makeWrite("f", static_cast<uint64_t>(i) * 65536, 65536));
	uint64_t b = (*tx)->submitBarrier(true);

	auto end = std::chrono::steady_clock::now() + 10s;
	while (peerErr.load() == 0 && std::chrono::steady_clock::now() < end)
		std::this_thread::sleep_for(10ms);
	CHECK(peerErr.load() == -ENOSPC);
	CHECK(peerSeq.load() > 1);
	CHECK(peerSeq.load() < b);
	/* The durable barrier after the failed write is never acknowledged by itself. */
	CHECK((*tx)->waitAckedFor(b, 200ms) == -ETIMEDOUT);
	CHECK((*rx)->lastApplied() == peerSeq.load() - 1);
	(*tx)->goneAlone();
	CHECK((*tx)->waitAcked(b) == 0);
	(*rx)->stop();
	close(l.value());
}
