/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Replication stream tests over loopback TCP (127.0.0.1 only): random op streams
 * end up identical on both sides, backpressure, forged frames, ack waits, ALONE,
 * reconnect/resume, apply failures reported to the sender, io_uring and its
 * plain-call fallback.
 */
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <filesystem>
#include <functional>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <liburing.h>

#include "cluster/wire.h"
#include "replication/op_codec.h"
#include "replication/stream.h"
#include "test_apply_util.h"

using namespace sk::repl;
using namespace std::chrono_literals;
using sk::test::TempDir;

namespace {

sk::ClusterKey testKey(uint8_t fill = 0x5a)
{
	std::vector<uint8_t> bytes(32, fill);
	auto key = sk::ClusterKey::fromBytes(bytes);
	REQUIRE(key.ok());
	return std::move(key.value());
}

StreamConfig testConfig(sk::NodeId local, sk::NodeId peer)
{
	StreamConfig c;
	c.clusterId = sk::clusterIdFromName("stream-test");
	c.module = "mod";
	c.localNode = local;
	c.peerNode = peer;
	return c;
}

Applier::Options applierOptions()
{
	Applier::Options o;
	o.applyOwner = getuid() == 0;
	return o;
}

/* Polls cond every 5 ms for at most `limit`: bounded waits, never timing assertions. */
template<typename F>
bool eventually(F cond, std::chrono::milliseconds limit = 10s)
{
	auto end = std::chrono::steady_clock::now() + limit;
	while (std::chrono::steady_clock::now() < end) {
		if (cond())
			return true;
		std::this_thread::sleep_for(5ms);
	}
	return cond();
}

/* A receiver on a loopback listener applying into its own temp dir. */
struct ReceiverSide {
	TempDir dir;
	int listenFd = -1;
	uint16_t port = 0;
	std::unique_ptr<ReplicationReceiver> receiver;

	explicit ReceiverSide(std::chrono::milliseconds handshakeTimeout = 10s, std::function<void()> onVerifyAsked = {})
	{
		auto l = listenTcp("127.0.0.1", 0, &port);
		REQUIRE(l.ok());
		listenFd = l.value();
		auto a = Applier::create(dir.fd(), applierOptions());
		REQUIRE(a.ok());
		ReplicationReceiver::Options o;
		o.stream = testConfig(2, 1);
		o.handshakeTimeout = handshakeTimeout;
		auto r = ReplicationReceiver::create(testKey(), o, std::move(a.value()));
		REQUIRE(r.ok());
		receiver = std::move(r.value());
		if (onVerifyAsked)
			receiver->setOnVerifyAsked(std::move(onVerifyAsked));
		REQUIRE(receiver->start(listenFd) == 0);
	}
	~ReceiverSide()
	{
		receiver->stop();
		close(listenFd);
	}
	int dial() const
	{
		auto c = connectTcp("127.0.0.1", port);
		REQUIRE(c.ok());
		return c.value();
	}
};

Op mkdirOp(const std::string &path)
{
	Op m;
	m.type = OpType::Mkdir;
	m.path = path;
	m.mode = 0755;
	return m;
}

std::unique_ptr<ReplicationSender> makeSender(size_t queueLimit = 64u << 20,
					      std::chrono::microseconds corkDelay = ReplicationSender::Options{}.corkDelay)
{
	ReplicationSender::Options o;
	o.stream = testConfig(1, 2);
	o.queueLimitBytes = queueLimit;
	o.corkDelay = corkDelay;
	auto s = ReplicationSender::create(testKey(), o);
	REQUIRE(s.ok());
	return std::move(s.value());
}

/*
 * Random op source: keeps a model of what exists so most ops are meaningful; each
 * op is applied to the source tree first and only submitted when that succeeded
 * (an op that failed on the primary never happened).
 */
class RandomOps
{
public:
	explicit RandomOps(uint32_t seed) : rng_(seed) {}

	Op next()
	{
		for (;;) {
			unsigned kind = pick(100);
			Op op;
			op.uid = getuid();
			op.gid = getgid();
			if (kind < 10 || files_.empty()) {
				op.type = OpType::Create;
				op.path = newName();
				op.mode = 0600 | pick(0200);
			} else if (kind < 14) {
				op.type = OpType::Mkdir;
				op.path = newName();
				op.mode = 0700 | pick(077);
			} else if (kind < 45) {
				op.type = OpType::Write;
				op.path = anyFile();
				op.offset = pick(3) == 0 ? pick(200000) : pick(5000);
				size_t len = pick(10) == 0 ? 1 + pick(100000) : 1 + pick(3000);
				op.data.resize(len);
				char c = static_cast<char>('a' + pick(26));
				for (size_t i = 0; i < len; i++)
					op.data[i] = static_cast<char>(c + i % 7);
			} else if (kind < 53) {
				op.type = OpType::Setattr;
				op.path = pick(5) ? anyFile() : anyDir();
				op.valid = kSetMode;
				op.mode = 0400 | pick(0377);
				if (pick(2) && !isDir(op.path)) {
					op.valid |= kSetSize;
					op.size = pick(150000);
				}
				if (pick(2)) {
					op.valid |= kSetMtime | kSetAtime;
					op.mtime = { 1600000000 + pick(1000000), static_cast<uint32_t>(pick(1000000000)) };
					op.atime = { 1600000000 + pick(1000000), 0 };
				}
				if (getuid() == 0 && pick(4) == 0) {
					op.valid |= kSetUid | kSetGid;
					op.uid = 1000 + pick(3);
					op.gid = 1000 + pick(3);
				}
			} else if (kind < 63) {
				op.type = OpType::Rename;
				op.path = pick(6) ? anyFile() : anyDir();
				op.path2 = pick(3) == 0 && !files_.empty() ? anyFile() : newName();
				unsigned f = pick(10);
				op.flags = f == 0 ? RENAME_NOREPLACE : f == 1 ? RENAME_EXCHANGE : 0;
			} else if (kind < 71) {
				op.type = OpType::Unlink;
				op.path = pick(8) ? anyFile() : anyOther();
			} else if (kind < 74) {
				op.type = OpType::Rmdir;
				op.path = anyDir();
			} else if (kind < 78) {
				op.type = OpType::Link;
				op.path = anyFile();
				op.path2 = newName();
			} else if (kind < 82) {
				op.type = OpType::Symlink;
				op.path = newName();
				op.target = pick(2) ? "../x/" + std::to_string(pick(100)) : "/etc/passwd";
			} else if (kind < 88) {
				op.type = OpType::Setxattr;
				op.path = pick(4) ? anyFile() : anyDir();
				op.name = "user.k" + std::to_string(pick(4));
				op.data = std::string(pick(200), static_cast<char>('A' + pick(26)));
			} else if (kind < 91) {
				op.type = OpType::Removexattr;
				op.path = anyFile();
				op.name = "user.k" + std::to_string(pick(4));
			} else if (kind < 95) {
				op.type = OpType::Fallocate;
				op.path = anyFile();
				op.offset = pick(100000);
				op.length = 1 + pick(50000);
				op.flags = pick(2) ? 0 : (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
			} else if (kind < 97) {
				op.type = OpType::Mknod;
				op.path = newName();
				op.mode = S_IFIFO | 0640;
			} else {
				op.type = OpType::Barrier;
				op.durable = pick(2);
			}
			if (op.type == OpType::Barrier || isValidOpPath(op.path, false))
				return op;
		}
	}

	/* Updates the model after the op succeeded on the source. */
	void applied(const Op &op)
	{
		switch (op.type) {
		case OpType::Create: add(files_, op.path); break;
		case OpType::Mkdir: add(dirs_, op.path); break;
		case OpType::Link: add(files_, op.path2); break;
		case OpType::Symlink:
		case OpType::Mknod: add(others_, op.path); break;
		case OpType::Unlink: remove(files_, op.path); remove(others_, op.path); break;
		case OpType::Rmdir: remove(dirs_, op.path); break;
		case OpType::Rename: {
			auto move = [&](const std::string &from, const std::string &to) {
				for (auto *v : { &files_, &dirs_, &others_ }) {
					for (std::string &p : *v) {
						if (p == from)
							p = to;
						else if (p.size() > from.size() && p.compare(0, from.size(), from) == 0 &&
							 p[from.size()] == '/')
							p = to + p.substr(from.size());
					}
				}
			};
			if (op.flags == RENAME_EXCHANGE) {
				move(op.path, "\x01tmp");
				move(op.path2, op.path);
				move("\x01tmp", op.path2);
			} else {
				remove(files_, op.path2);
				remove(others_, op.path2);
				move(op.path, op.path2);
			}
			break;
		}
		default:
			break;
		}
	}

private:
	unsigned pick(unsigned n) { return n ? static_cast<unsigned>(rng_() % n) : 0; }
	bool isDir(const std::string &p) const { return std::find(dirs_.begin(), dirs_.end(), p) != dirs_.end(); }
	std::string anyDir() { return dirs_.empty() ? "nodir" : dirs_[pick(dirs_.size())]; }
	std::string anyFile() { return files_.empty() ? "nofile" : files_[pick(files_.size())]; }
	std::string anyOther() { return others_.empty() ? "noother" : others_[pick(others_.size())]; }
	std::string newName()
	{
		std::string base = dirs_.empty() || pick(3) == 0 ? "" : anyDir() + "/";
		return base + "n" + std::to_string(counter_++);
	}
	static void add(std::vector<std::string> &v, const std::string &p)
	{
		if (std::find(v.begin(), v.end(), p) == v.end())
			v.push_back(p);
	}
	static void remove(std::vector<std::string> &v, const std::string &p)
	{
		v.erase(std::remove(v.begin(), v.end(), p), v.end());
	}

	std::mt19937 rng_;
	std::vector<std::string> files_, dirs_, others_;
	unsigned counter_ = 0;
};

} /* namespace */

TEST_CASE("10,000 random ops applied locally and streamed leave identical trees")
{
	ReceiverSide rx;
	auto sender = makeSender();
	REQUIRE(sender->attach(rx.dial()) == 0);

	TempDir source;
	auto local = Applier::create(source.fd(), applierOptions());
	REQUIRE(local.ok());
	RandomOps gen(20261125);
	uint64_t localSeq = 0;
	int submitted = 0;
	for (int i = 0; i < 10000; i++) {
		Op op = gen.next();
		op.seq = ++localSeq;
		if (!(*local)->apply(op))
			continue;
		gen.applied(op);
		uint64_t seq = sender->submit(Op(op));
		REQUIRE(seq != 0);
		submitted++;
	}
	uint64_t last = sender->submitBarrier(true);
	REQUIRE(sender->waitAckedFor(last, 60s) == 0);

	CHECK(submitted > 5000);
	std::string diff = sk::test::compareTrees(source.path(), rx.dir.path());
	CHECK(diff == "");
	auto sc = sender->counters();
	auto rc = rx.receiver->counters();
	CHECK(sc.appliedSeq == last);
	CHECK(sc.durableSeq == last);
	CHECK(sc.lagOps == 0);
	CHECK(sc.lagBytes == 0);
	CHECK(sc.frames < sc.ops); /* small ops were batched */
	CHECK(rc.rejectedFrames == 0);
	CHECK(rc.applyErrors == 0);
	CHECK(rx.receiver->lastApplied() == last);
	MESSAGE("ops " << sc.ops << ", frames " << sc.frames << ", acks " << sc.acks << ", barriers acked "
		<< sc.barriersAcked);
}

TEST_CASE("barrier latency quantiles interpolate within their bucket")
{
	BarrierLatencyHist h{};
	CHECK(barrierLatencyQuantileUs(h, 0.5) == 0);
	h[0] = 10; /* <= 50 us */
	h[2] = 10; /* 100..150 us */
	CHECK(barrierLatencyQuantileUs(h, 0.25) == doctest::Approx(25));
	CHECK(barrierLatencyQuantileUs(h, 0.5) == doctest::Approx(50));
	CHECK(barrierLatencyQuantileUs(h, 0.75) == doctest::Approx(125));
	CHECK(barrierLatencyQuantileUs(h, 1.0) == doctest::Approx(150));
	h[h.size() - 1] = 1000; /* slower than the last bound: reported as that bound */
	CHECK(barrierLatencyQuantileUs(h, 0.99) == doctest::Approx(kBarrierBucketsUs.back()));
}

TEST_CASE("waitAcked blocks until the ack, and returns after goneAlone")
{
	auto sender = makeSender();
	std::vector<Op> seen;
	std::mutex seenLock;
	sender->setOnOpWhileAlone([&](const Op &op) {
		std::lock_guard<std::mutex> l(seenLock);
		seen.push_back(op);
	});

	/* No connection at all: the wait must not complete by itself. */
	Op c;
	c.type = OpType::Create;
	c.path = "f";
	c.mode = 0644;
	REQUIRE(sender->submit(Op(c)) == 1);
	uint64_t b = sender->submitBarrier(true);
	CHECK(sender->waitAckedFor(b, 200ms) == -ETIMEDOUT);
	auto waiter = std::async(std::launch::async, [&] { return sender->waitAcked(b); });
	CHECK(waiter.wait_for(100ms) == std::future_status::timeout);

	/* Now connect: the ack completes it. */
	ReceiverSide rx;
	REQUIRE(sender->attach(rx.dial()) == 0);
	REQUIRE(waiter.wait_for(10s) == std::future_status::ready);
	CHECK(waiter.get() == 0);
	CHECK(sender->counters().durableSeq >= b);

	/* Connection lost but not ALONE: a new wait keeps waiting. */
	sender->detach();
	uint64_t b2 = sender->submitBarrier(false);
	auto waiter2 = std::async(std::launch::async, [&] { return sender->waitAcked(b2); });
	CHECK(waiter2.wait_for(200ms) == std::future_status::timeout);

	/* goneAlone releases it with 0; later ops are handed to the hook, not queued.
	 * The wait it ended is in the latency counters, as the stall it was. */
	auto before = sender->counters();
	sender->goneAlone();
	REQUIRE(waiter2.wait_for(10s) == std::future_status::ready);
	CHECK(waiter2.get() == 0);
	auto after = sender->counters();
	CHECK(after.barriersReleasedAlone == before.barriersReleasedAlone + 1);
	CHECK(after.barriersAcked == before.barriersAcked);
	CHECK(after.barrierLatencyNsMax >= 200'000'000);
	uint64_t histogrammed = 0;
	for (uint64_t n : after.barrierLatencyHist)
		histogrammed += n;
	CHECK(histogrammed == after.barriersAcked + after.barriersReleasedAlone);
	Op w;
	w.type = OpType::Write;
	w.path = "f";
	w.data = "x";
	uint64_t ws = sender->submit(Op(w));
	CHECK(ws == b2 + 1);
	CHECK(sender->waitAcked(sender->submitBarrier(true)) == 0);
	CHECK(sender->counters().lagOps == 0);
	std::lock_guard<std::mutex> l(seenLock);
	REQUIRE(seen.size() == 2);
	CHECK(seen[0].type == OpType::Write);
	CHECK(seen[0].seq == ws);
	CHECK(seen[1].type == OpType::Barrier);
	CHECK(sender->alone());
	CHECK(sender->attach(rx.dial()) == -EPERM);
}

TEST_CASE("ops nobody waits for are corked until a barrier, a wait, a full frame or the delay")
{
	ReceiverSide rx;
	auto sender = makeSender(64u << 20, 30s);
	REQUIRE(sender->attach(rx.dial()) == 0);
	auto frames = [&] { return rx.receiver->counters().frames; };
	auto waitFrames = [&](uint64_t n) {
		for (int i = 0; i < 1000 && frames() < n; i++)
			std::this_thread::sleep_for(10ms);
		return frames();
	};

	/* Held: nothing reaches the peer while nobody needs it there. */
	REQUIRE(sender->submit(mkdirOp("a")) > 0);
	REQUIRE(sender->submit(mkdirOp("b")) > 0);
	std::this_thread::sleep_for(200ms);
	CHECK(frames() == 0);
	/* A barrier takes them along, all in one frame. */
	REQUIRE(sender->waitAckedFor(sender->submitBarrier(false), 10s) == 0);
	CHECK(frames() == 1);
	CHECK(sender->counters().frames == 1);

	/* Waiting on a held op sends it. */
	uint64_t c = sender->submit(mkdirOp("c"));
	REQUIRE(c > 0);
	std::this_thread::sleep_for(100ms);
	CHECK(frames() == 1);
	CHECK(sender->waitAckedFor(c, 10s) == 0);
	CHECK(frames() == 2);

	/* A full frame goes without waiting for anyone. */
	Op w;
	w.type = OpType::Write;
	w.path = "c/big";
	w.data.assign(1u << 20, 'w');
	Op create;
	create.type = OpType::Create;
	create.path = "c/big";
	create.mode = 0644;
	REQUIRE(sender->submit(std::move(create)) > 0);
	REQUIRE(sender->submit(std::move(w)) > 0);
	CHECK(waitFrames(3) >= 3);
	struct stat st;
	CHECK(stat((rx.dir / "a").c_str(), &st) == 0);
	CHECK(stat((rx.dir / "c").c_str(), &st) == 0);

	/* With the default delay an op nobody waits for still arrives by itself. */
	ReceiverSide rx2;
	auto quick = makeSender();
	REQUIRE(quick->attach(rx2.dial()) == 0);
	REQUIRE(quick->submit(mkdirOp("d")) > 0);
	for (int i = 0; i < 1000 && rx2.receiver->counters().frames == 0; i++)
		std::this_thread::sleep_for(10ms);
	CHECK(rx2.receiver->counters().frames == 1);
	CHECK(stat((rx2.dir / "d").c_str(), &st) == 0);
}

TEST_CASE("a lost connection resumes where the receiver stopped, without loss or repeats")
{
	ReceiverSide rx;
	auto sender = makeSender();
	REQUIRE(sender->attach(rx.dial()) == 0);
	Op c;
	c.type = OpType::Create;
	c.path = "log";
	c.mode = 0644;
	sender->submit(Op(c));
	std::string expect;
	for (int i = 0; i < 100; i++) {
		Op w;
		w.type = OpType::Write;
		w.path = "log";
		w.offset = expect.size();
		w.data = "line " + std::to_string(i) + "\n";
		expect += w.data;
		sender->submit(std::move(w));
		if (i == 50) {
			REQUIRE(sender->waitAckedFor(sender->submitBarrier(false), 10s) == 0);
			sender->detach();
		}
	}
	uint64_t b = sender->submitBarrier(true);
	CHECK(sender->waitAckedFor(b, 100ms) == -ETIMEDOUT);
	uint64_t epoch = sender->epoch();
	std::atomic<bool> resyncAsked{ false };
	sender->setOnResyncNeeded([&](uint64_t, uint64_t) { resyncAsked = true; });
	REQUIRE(sender->attach(rx.dial()) == 0);
	REQUIRE(sender->waitAckedFor(b, 10s) == 0);
	CHECK(sk::test::readFile(rx.dir / "log") == expect);
	CHECK(rx.receiver->epoch() == epoch);
	CHECK(rx.receiver->lastApplied() == b);
	CHECK_FALSE(resyncAsked);
	CHECK(sender->counters().connections == 2);

	/* After ALONE and back, the new epoch makes the receiver's position useless. */
	sender->goneAlone();
	sender->endAlone();
	CHECK(sender->epoch() != epoch);
	REQUIRE(sender->attach(rx.dial()) == 0);
	CHECK(eventually([&] { return resyncAsked.load(); }));
}

/*
 * A loopback TCP proxy between a sender and a receiver: forwards both ways until
 * muteAcks, then drops what the receiver sends (its acks) and keeps forwarding
 * the sender's frames. Closing it ends both connections.
 */
class AckDroppingProxy
{
public:
	explicit AckDroppingProxy(const ReceiverSide &rx)
	{
		auto l = listenTcp("127.0.0.1", 0, &port);
		REQUIRE(l.ok());
		listenFd_ = l.value();
		thread_ = std::thread([this, &rx] {
			int a = accept(listenFd_, nullptr, nullptr);
			int b = rx.dial();
			char buf[65536];
			for (;;) {
				pollfd p[2] = { { a, POLLIN, 0 }, { b, POLLIN, 0 } };
				if (poll(p, 2, 50) < 0 || stop_)
					break;
				if (p[0].revents) {
					ssize_t n = read(a, buf, sizeof(buf));
					if (n <= 0 || write(b, buf, static_cast<size_t>(n)) != n)
						break;
				}
				if (p[1].revents) {
					ssize_t n = read(b, buf, sizeof(buf));
					if (n <= 0 || (!muteAcks && write(a, buf, static_cast<size_t>(n)) != n))
						break;
				}
			}
			close(a);
			close(b);
		});
	}
	~AckDroppingProxy()
	{
		stop_ = true;
		thread_.join();
		close(listenFd_);
	}

	uint16_t port = 0;
	std::atomic<bool> muteAcks{ false };

private:
	int listenFd_ = -1;
	std::atomic<bool> stop_{ false };
	std::thread thread_;
};

TEST_CASE("a barrier whose ack the connection lost is released when the stream resumes")
{
	/* Applied: the receiver's hello acks it; durable: the ack it sends on resuming. */
	bool durable = false;
	SUBCASE("ack = applied") { durable = false; }
	SUBCASE("ack = durable") { durable = true; }
	ReceiverSide rx;
	auto sender = makeSender();
	uint64_t b = 0;
	{
		AckDroppingProxy proxy(rx);
		auto c = connectTcp("127.0.0.1", proxy.port);
		REQUIRE(c.ok());
		REQUIRE(sender->attach(c.value()) == 0);
		REQUIRE(sender->waitAckedFor(sender->submit(mkdirOp("before")), 10s) == 0);
		proxy.muteAcks = true;
		b = sender->submitBarrier(durable);
		/* Applied there (its ack dropped on the way back). */
		REQUIRE(eventually([&] { return rx.receiver->lastApplied() == b; }));
		CHECK(sender->waitAckedFor(b, 100ms) == -ETIMEDOUT);
	}
	/* A caller still waiting, with no bound, when the connection is replaced. */
	auto waiter = std::async(std::launch::async, [&] { return sender->waitAcked(b); });
	CHECK(eventually([&] { return !sender->streaming(); }));
	REQUIRE(sender->attach(rx.dial()) == 0);
	/* Nothing is left to send: no ack of a later op would release b. */
	bool released = waiter.wait_for(10s) == std::future_status::ready;
	CHECK(released);
	if (!released) {
		/* Let the waiter go (a later durable barrier acks b too) before the
		 * future's destructor joins it. */
		sender->submitBarrier(true);
	}
	CHECK(waiter.get() == 0);
}

TEST_CASE("backpressure: a stalled receiver makes submit block, bounded by the queue")
{
	/* A peer that accepts the TCP connection and never reads or answers. */
	uint16_t port = 0;
	auto l = listenTcp("127.0.0.1", 0, &port);
	REQUIRE(l.ok());
	auto c = connectTcp("127.0.0.1", port);
	REQUIRE(c.ok());
	int peer = accept(l.value(), nullptr, nullptr);
	REQUIRE(peer >= 0);

	auto sender = makeSender(256u << 10);
	REQUIRE(sender->attach(c.value()) == 0);
	std::atomic<int> done{ 0 };
	auto writer = std::async(std::launch::async, [&] {
		for (int i = 0; i < 64; i++) {
			Op w;
			w.type = OpType::Write;
			w.path = "f";
			w.offset = static_cast<uint64_t>(i) * 16384;
			w.data = std::string(16384, 'x');
			sender->submit(std::move(w));
			done++;
		}
	});
	REQUIRE(eventually([&] { return sender->counters().blockedSubmits > 0; }));
	CHECK(done.load() < 64);
	auto sc = sender->counters();
	CHECK(sc.lagBytes <= (256u << 10));
	CHECK(sc.lagBytes > (200u << 10));
	CHECK(writer.wait_for(100ms) == std::future_status::timeout);

	/* Going ALONE unblocks the writer (its ops go to dirty tracking). */
	sender->goneAlone();
	REQUIRE(writer.wait_for(10s) == std::future_status::ready);
	CHECK(done.load() == 64);
	CHECK(sender->counters().opsWhileAlone > 0);
	close(peer);
	close(l.value());
}

TEST_CASE("forged, unbound and garbage frames close the connection")
{
	ReceiverSide rx;
	auto sendRaw = [&](const std::vector<uint8_t> &bytes) {
		int fd = rx.dial();
		REQUIRE(send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(bytes.size()));
		/* The receiver says hello, then must close: read until EOF (bounded by a timeout). */
		struct timeval tv = { 10, 0 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		char buf[4096];
		ssize_t n;
		while ((n = recv(fd, buf, sizeof(buf), 0)) > 0) {
		}
		/* Closed (FIN, or RST because our bytes were left unread) = 0; a timeout = -1. */
		int ret = n == 0 || errno == ECONNRESET ? 0 : -1;
		close(fd);
		return ret;
	};
	auto frame = [&](const sk::ClusterKey &key, StreamFrame type, uint64_t inc, uint64_t seq,
			 std::vector<uint8_t> payload) {
		auto codec = sk::WireCodec::create(key, testConfig(1, 2).clusterId);
		REQUIRE(codec.ok());
		sk::FrameHeader h;
		h.type = static_cast<uint8_t>(type);
		h.sender = 1;
		h.module = "mod";
		h.incarnation = inc;
		h.sequence = seq;
		std::vector<uint8_t> out;
		REQUIRE((*codec)->encode(h, payload, &out, sk::kMaxStreamPayload) == 0);
		return out;
	};
	std::vector<uint8_t> hello = { uint8_t(kStreamVersion), uint8_t(kStreamVersion >> 8), 1, 0 };
	auto le = [](std::vector<uint8_t> *v, uint64_t x) {
		for (int i = 0; i < 8; i++)
			v->push_back(static_cast<uint8_t>(x >> (8 * i)));
	};
	le(&hello, 77);
	le(&hello, 99);
	le(&hello, 1);

	/* A hello signed with another key. */
	auto wrong = testKey(0x11);
	CHECK(sendRaw(frame(wrong, StreamFrame::Hello, 77, 0, hello)) == 0);
	CHECK(eventually([&] { return rx.receiver->counters().rejectedFrames == 1; }));
	CHECK(rx.receiver->lastCloseReason().find("hmac") != std::string::npos);

	/* A valid hello followed by a start not bound to the receiver's nonce. */
	auto good = testKey();
	std::vector<uint8_t> both = frame(good, StreamFrame::Hello, 77, 0, hello);
	std::vector<uint8_t> start;
	le(&start, 99);
	le(&start, 1);
	auto s = frame(good, StreamFrame::Start, 12345, 1, start);
	both.insert(both.end(), s.begin(), s.end());
	CHECK(sendRaw(both) == 0);
	CHECK(eventually([&] { return rx.receiver->counters().rejectedFrames == 2; }));
	/* Frames after the hellos need this connection's session key, which a frame made
	 * for another connection (or forged without the receiver's nonce) cannot have. */
	CHECK(rx.receiver->lastCloseReason().find("hmac") != std::string::npos);

	/* Garbage. */
	CHECK(sendRaw(std::vector<uint8_t>(200, 0xab)) == 0);
	CHECK(eventually([&] { return rx.receiver->counters().rejectedFrames == 3; }));

	/* A hello for another module. */
	auto codec = sk::WireCodec::create(good, testConfig(1, 2).clusterId);
	sk::FrameHeader h;
	h.type = static_cast<uint8_t>(StreamFrame::Hello);
	h.sender = 1;
	h.module = "other";
	h.incarnation = 77;
	std::vector<uint8_t> out;
	REQUIRE((*codec)->encode(h, hello, &out, sk::kMaxStreamPayload) == 0);
	CHECK(sendRaw(out) == 0);
	CHECK(eventually([&] { return rx.receiver->counters().rejectedFrames == 4; }));
	CHECK(rx.receiver->lastCloseReason().find("module") != std::string::npos);

	/* After all that, a genuine sender still gets through. */
	auto sender = makeSender();
	REQUIRE(sender->attach(rx.dial()) == 0);
	sender->submit(mkdirOp("ok"));
	CHECK(sender->waitAckedFor(sender->submitBarrier(false), 10s) == 0);
	struct stat st;
	CHECK(stat((rx.dir / "ok").c_str(), &st) == 0);
}

TEST_CASE("a verify request reaches the receiver's owner between ops, only while streaming")
{
	std::atomic<int> asked{ 0 };
	ReceiverSide rx(10s, [&] { asked++; });
	auto sender = makeSender();
	CHECK(sender->requestVerify() == -ENOTCONN);
	REQUIRE(sender->attach(rx.dial()) == 0);
	REQUIRE(eventually([&] { return sender->streaming(); }));
	sender->submit(mkdirOp("before"));
	REQUIRE(sender->requestVerify() == 0);
	CHECK(eventually([&] { return asked.load() == 1; }));
	/* The stream goes on: later ops are applied and acked. */
	sender->submit(mkdirOp("after"));
	CHECK(sender->waitAckedFor(sender->submitBarrier(false), 10s) == 0);
	struct stat st;
	CHECK(stat((rx.dir / "after").c_str(), &st) == 0);
	CHECK(asked.load() == 1);
	CHECK(rx.receiver->counters().rejectedFrames == 0);
	sender->goneAlone();
	CHECK(sender->requestVerify() == -ENOTCONN);
}

TEST_CASE("an op the target cannot apply is reported to the sender, not skipped")
{
	ReceiverSide rx;
	auto sender = makeSender();
	std::atomic<uint64_t> failedSeq{ 0 };
	std::atomic<int> failedErr{ 0 };
	sender->setOnPeerError([&](uint64_t seq, int err, const std::string &) {
		failedErr = err;
		failedSeq = seq;
	});
	REQUIRE(sender->attach(rx.dial()) == 0);
	Op ok;
	ok.type = OpType::Mkdir;
	ok.path = "d";
	ok.mode = 0755;
	uint64_t s1 = sender->submit(std::move(ok));
	Op bad;
	bad.type = OpType::Write;
	bad.path = "d/missing";
	bad.data = "x";
	uint64_t s2 = sender->submit(std::move(bad));
	uint64_t b = sender->submitBarrier(true);
	REQUIRE(eventually([&] { return failedSeq.load() != 0; }));
	CHECK(failedSeq.load() == s2);
	CHECK(failedErr.load() == -ENOENT);
	CHECK(sender->waitAckedFor(s1, 1s) == 0);
	/* The barrier after the failed op is not acknowledged... */
	CHECK(sender->waitAckedFor(b, 200ms) == -ETIMEDOUT);
	CHECK(rx.receiver->lastApplied() == s1);
	CHECK(rx.receiver->counters().applyErrors == 1);
	/* ...until the node is declared ALONE. */
	sender->goneAlone();
	CHECK(sender->waitAcked(b) == 0);
}

TEST_CASE("a hook may declare ALONE from the stream's own thread")
{
	auto rx = std::make_unique<ReceiverSide>();
	auto sender = makeSender();
	ReplicationSender *s = sender.get();
	std::atomic<int> calls{ 0 };
	sender->setOnDisconnected([&](const std::string &) {
		calls++;
		s->goneAlone();
	});
	REQUIRE(sender->attach(rx->dial()) == 0);
	REQUIRE(sender->waitAckedFor(sender->submitBarrier(false), 10s) == 0);
	rx.reset();
	uint64_t b = sender->submitBarrier(true);
	CHECK(sender->waitAckedFor(b, 10s) == 0);
	CHECK(sender->alone());
	CHECK(calls.load() >= 1);
}

/* A Create (seq 1) of path through sender; returns an empty Write of path at offset. */
static Op createThenWrite(ReplicationSender &sender, const std::string &path, uint64_t offset)
{
	Op c;
	c.type = OpType::Create;
	c.path = path;
	c.mode = 0644;
	REQUIRE(sender.submit(std::move(c)) == 1);
	Op w;
	w.type = OpType::Write;
	w.path = path;
	w.offset = offset;
	return w;
}

TEST_CASE("a write larger than one op's limit is split and arrives whole")
{
	ReceiverSide rx;
	auto sender = makeSender();
	REQUIRE(sender->attach(rx.dial()) == 0);
	Op w = createThenWrite(*sender, "big", 100);
	for (size_t i = 0; i < 3 * kMaxWriteData + 12345; i++)
		w.data.push_back(static_cast<char>(i * 7 % 251));
	std::string expect = std::string(100, '\0') + w.data;
	uint64_t seq = sender->submit(std::move(w));
	CHECK(seq == 5); /* create + 4 parts */
	REQUIRE(sender->waitAckedFor(sender->submitBarrier(true), 30s) == 0);
	CHECK(sk::test::readFile(rx.dir / "big") == expect);
}

TEST_CASE("writes submitted from the caller's buffer arrive whole, with encode buffers reused")
{
	ReceiverSide rx;
	auto sender = makeSender();
	REQUIRE(sender->attach(rx.dial()) == 0);
	Op first = createThenWrite(*sender, "stream", 0);
	std::string expect;
	std::string buf(kMaxWriteData, '\0');
	uint64_t last = 1;
	for (size_t i = 0; i < 40; i++) {
		for (size_t k = 0; k < buf.size(); k += 4096)
			buf[k] = static_cast<char>(i + k / 4096);
		Op w = first;
		w.offset = expect.size();
		uint64_t seq = sender->submitWrite(std::move(w), buf);
		CHECK(seq > last);
		last = seq;
		expect += buf;
		/* The buffer is the caller's again: changing it must not change what was sent. */
		buf.assign(buf.size(), 'x');
		if (i % 8 == 7)
			REQUIRE(sender->waitAckedFor(sender->submitBarrier(false), 30s) == 0);
	}
	/* Small and oversized writes through the same call. */
	Op small = first;
	small.offset = expect.size();
	CHECK(sender->submitWrite(std::move(small), "tail") > 0);
	expect += "tail";
	std::string huge(2 * kMaxWriteData + 3, 'h');
	Op big = first;
	big.offset = expect.size();
	CHECK(sender->submitWrite(std::move(big), huge) > 0);
	expect += huge;
	REQUIRE(sender->waitAckedFor(sender->submitBarrier(true), 30s) == 0);
	CHECK(sk::test::readFile(rx.dir / "stream") == expect);
	auto counters = sender->counters();
	uint64_t histogrammed = 0;
	for (uint64_t n : counters.barrierLatencyHist)
		histogrammed += n;
	CHECK(histogrammed == counters.barriersAcked);
	CHECK(counters.barriersAcked == 6);
	/* Acked every 8 writes: the later ones were encoded into recycled buffers. */
	CHECK(sender->counters().reusedBuffers >= 16);
}

TEST_CASE("a client that never completes the handshake is dropped")
{
	ReceiverSide rx(300ms);
	int silent = rx.dial();
	struct timeval tv = { 10, 0 };
	setsockopt(silent, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	char buf[4096];
	ssize_t n;
	while ((n = recv(silent, buf, sizeof(buf), 0)) > 0) {
	}
	/* Closed by the receiver (EOF), not by our own 10 s bound. */
	int recvErr = n < 0 ? errno : 0;
	INFO("recv errno " << recvErr);
	CHECK(n == 0);
	close(silent);
	CHECK(eventually([&] { return rx.receiver->counters().connections == 1 &&
				      !rx.receiver->lastCloseReason().empty(); }));

	auto sender = makeSender();
	REQUIRE(sender->attach(rx.dial()) == 0);
	CHECK(sender->waitAckedFor(sender->submitBarrier(true), 10s) == 0);
	/* Once authenticated, an idle stream is not dropped. */
	std::this_thread::sleep_for(600ms);
	CHECK(sender->streaming());
	CHECK(sender->waitAckedFor(sender->submitBarrier(true), 10s) == 0);
}

namespace {

/* Ring fds of this process (anon_inode:[io_uring]). */
int ringFds()
{
	int n = 0;
	for (const auto &e : std::filesystem::directory_iterator("/proc/self/fd")) {
		std::error_code ec;
		auto target = std::filesystem::read_symlink(e.path(), ec);
		n += !ec && target.string() == "anon_inode:[io_uring]";
	}
	return n;
}

/* From here on io_uring_setup fails with ENOSYS in this (single-threaded) process
 * and the threads it starts, as under a seccomp policy that refuses io_uring. */
bool refuseIoUring()
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = { static_cast<unsigned short>(sizeof(filter) / sizeof(filter[0])), filter };
	return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 && prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
}

/* A create, a write and a durable barrier over a fresh pair: 0 when the write
 * arrived, else which step failed. */
int streamOneWrite()
{
	ReceiverSide rx;
	auto sender = makeSender();
	if (sender->attach(rx.dial()) != 0)
		return 1;
	Op w = createThenWrite(*sender, "f", 0);
	w.data = "sent and received";
	if (sender->submit(std::move(w)) == 0)
		return 2;
	if (sender->waitAckedFor(sender->submitBarrier(true), 10s) != 0)
		return 3;
	return sk::test::readFile(rx.dir / "f") == "sent and received" ? 0 : 4;
}

} /* namespace */

TEST_CASE("stream sockets run on io_uring, and on plain calls where io_uring is refused")
{
	SUBCASE("io_uring: one ring per stream thread")
	{
		int before = ringFds();
		ReceiverSide rx;
		auto sender = makeSender();
		REQUIRE(sender->attach(rx.dial()) == 0);
		REQUIRE(sender->waitAckedFor(sender->submitBarrier(true), 10s) == 0);
		/* The sender's writer and ack reader, the receiver's connection thread. */
		CHECK(ringFds() - before == 3);
	}
	SUBCASE("io_uring refused: the same stream over send/recv")
	{
		pid_t pid = fork();
		REQUIRE(pid >= 0);
		if (pid == 0) {
			int code = 10;
			try {
				struct io_uring ring;
				if (!refuseIoUring())
					code = 11;
				else if (io_uring_queue_init(2, &ring, 0) != -ENOSYS)
					code = 12;
				else
					code = streamOneWrite();
			} catch (...) {
				code = 13;
			}
			_exit(code);
		}
		int status = 0;
		REQUIRE(waitpid(pid, &status, 0) == pid);
		REQUIRE(WIFEXITED(status));
		/* 0: arrived; 1-4: a stream step failed; 11-13: the setup. */
		CHECK(WEXITSTATUS(status) == 0);
	}
}
