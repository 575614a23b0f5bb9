/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tls_pipe over real loopback TCP: both directions at once through the pump
 * threads, nothing readable on the wire (a recording relay in the middle), a
 * peer with another cluster key refused, and a close on either side seen by the
 * other.
 */
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>

#include "replication/stream.h"
#include "replication/tls_pipe.h"

using namespace sk::repl;
using namespace std::chrono_literals;

namespace {

sk::ClusterKey key(uint8_t fill)
{
	std::vector<uint8_t> bytes(32, fill);
	auto k = sk::ClusterKey::fromBytes(bytes);
	REQUIRE(k.ok());
	return std::move(k.value());
}

struct Listener {
	int fd = -1;
	uint16_t port = 0;
	Listener()
	{
		auto l = listenTcp("127.0.0.1", 0, &port);
		REQUIRE(l.ok());
		fd = *l;
	}
	~Listener() { close(fd); }
	int accept() const { return accept4(fd, nullptr, nullptr, SOCK_CLOEXEC); }
};

/* Server and client wrapped with keys a and b; either result may be an error. */
std::pair<sk::Result<int>, sk::Result<int>> wrapPair(uint8_t a, uint8_t b, uint16_t port = 0,
						     const Listener *l = nullptr)
{
	Listener own;
	const Listener &lis = l ? *l : own;
	auto server = std::async(std::launch::async, [&] {
		sk::ClusterKey k = key(a);
		return tlsWrap(lis.accept(), k, true, 5s);
	});
	auto c = connectTcp("127.0.0.1", port ? port : lis.port);
	REQUIRE(c.ok());
	sk::ClusterKey k = key(b);
	auto client = tlsWrap(*c, k, false, 5s);
	return { server.get(), std::move(client) };
}

bool writeAll(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			return false;
		p += w;
		n -= static_cast<size_t>(w);
	}
	return true;
}

std::vector<uint8_t> readN(int fd, size_t n)
{
	std::vector<uint8_t> out(n);
	size_t got = 0;
	while (got < n) {
		ssize_t r = read(fd, out.data() + got, n - got);
		if (r <= 0)
			break;
		got += static_cast<size_t>(r);
	}
	out.resize(got);
	return out;
}

} /* namespace */

TEST_CASE("tls pipe: 16 MiB each way at once arrive intact")
{
	auto [s, c] = wrapPair(7, 7);
	REQUIRE(s.ok());
	REQUIRE(c.ok());
	constexpr size_t kSize = 16u << 20;
	std::vector<uint8_t> a(kSize), b(kSize);
	std::mt19937_64 rng(42);
	for (auto &x : a)
		x = static_cast<uint8_t>(rng());
	for (auto &x : b)
		x = static_cast<uint8_t>(rng());
	auto w1 = std::async(std::launch::async, [&] { return writeAll(*c, a.data(), a.size()); });
	auto w2 = std::async(std::launch::async, [&] { return writeAll(*s, b.data(), b.size()); });
	auto r1 = std::async(std::launch::async, [&] { return readN(*s, kSize); });
	std::vector<uint8_t> gotB = readN(*c, kSize);
	CHECK(w1.get());
	CHECK(w2.get());
	CHECK((r1.get() == a));
	CHECK((gotB == b));
	/* A close on one side ends the other's reads. */
	close(*c);
	pollfd p{ *s, POLLIN, 0 };
	REQUIRE(poll(&p, 1, 5000) == 1);
	char x;
	CHECK(read(*s, &x, 1) == 0);
	close(*s);
	CHECK(tlsCounters().handshakes >= 2);
}

TEST_CASE("tls pipe: another cluster key is refused at the handshake")
{
	auto before = tlsCounters().failures;
	auto [s, c] = wrapPair(7, 8);
	CHECK_FALSE(s.ok());
	CHECK_FALSE(c.ok());
	if (!c.ok())
		CHECK(c.error().message.find("TLS connect") != std::string::npos);
	if (s.ok())
		close(*s);
	if (c.ok())
		close(*c);
	CHECK(tlsCounters().failures >= before + 2);
}

TEST_CASE("tls pipe: the bytes on the wire are TLS records, never the plaintext")
{
	/* client -> relay (records everything) -> server */
	Listener server, relay;
	std::vector<uint8_t> wire;
	std::atomic<bool> stop{ false };
	std::thread relayThread([&] {
		int in = relay.accept();
		auto o = connectTcp("127.0.0.1", server.port);
		REQUIRE(o.ok());
		int out = *o;
		std::vector<uint8_t> buf(65536);
		while (!stop) {
			pollfd fds[2] = { { in, POLLIN, 0 }, { out, POLLIN, 0 } };
			if (poll(fds, 2, 100) <= 0)
				continue;
			for (int i = 0; i < 2; i++) {
				if (!(fds[i].revents & (POLLIN | POLLHUP)))
					continue;
				ssize_t n = read(fds[i].fd, buf.data(), buf.size());
				if (n <= 0) {
					stop = true;
					break;
				}
				wire.insert(wire.end(), buf.begin(), buf.begin() + n);
				writeAll(i == 0 ? out : in, buf.data(), static_cast<size_t>(n));
			}
		}
		close(in);
		close(out);
	});
	auto [s, c] = wrapPair(3, 3, relay.port, &server);
	REQUIRE(s.ok());
	REQUIRE(c.ok());
	const std::string secret = "replicated-secret-payload-0123456789";
	std::string msg;
	for (int i = 0; i < 100; i++)
		msg += secret;
	REQUIRE(writeAll(*c, reinterpret_cast<const uint8_t *>(msg.data()), msg.size()));
	auto got = readN(*s, msg.size());
	CHECK(std::string(got.begin(), got.end()) == msg);
	close(*c);
	close(*s);
	stop = true;
	relayThread.join();
	REQUIRE(wire.size() > msg.size());
	CHECK(wire[0] == 0x16);	/* handshake record */
	std::string w(wire.begin(), wire.end());
	CHECK(w.find("replicated-secret") == std::string::npos);
}

TEST_CASE("tls pipe: shutting the app's end ends its pump even while the peer reads nothing")
{
	auto gone = [&](uint64_t want) {
		for (int i = 0; i < 200; i++) {
			if (tlsCounters().live == want)
				return true;
			std::this_thread::sleep_for(10ms);
		}
		return false;
	};
	/* The pumps of the cases before end on their own after their closes. */
	REQUIRE(gone(0));
	uint64_t live0 = 0;
	auto [s, c] = wrapPair(5, 5);
	REQUIRE(s.ok());
	REQUIRE(c.ok());
	CHECK(tlsCounters().live == live0 + 2);
	/* Fill every buffer between the two apps: the server side never reads. */
	REQUIRE(fcntl(*c, F_SETFL, fcntl(*c, F_GETFL) | O_NONBLOCK) == 0);
	std::vector<uint8_t> chunk(65536, 0x42);
	size_t queued = 0;
	for (auto until = std::chrono::steady_clock::now() + 3s; std::chrono::steady_clock::now() < until;) {
		ssize_t n = write(*c, chunk.data(), chunk.size());
		if (n > 0) {
			queued += static_cast<size_t>(n);
			continue;
		}
		REQUIRE(errno == EAGAIN);
		std::this_thread::sleep_for(50ms);
		if (write(*c, chunk.data(), chunk.size()) < 0 && errno == EAGAIN)
			break;
	}
	CHECK(queued > 0);
	shutdown(*c, SHUT_RDWR);
	CHECK(gone(live0 + 1));	/* the client's pump, with records still unsent */
	close(*c);
	close(*s);
	CHECK(gone(live0));
}
