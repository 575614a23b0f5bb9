/* SPDX-License-Identifier: Apache-2.0 */
/*
 * stream_bench: where a durability point's time goes in the replication stream
 * alone (no FUSE): a sender and a receiver in one process over loopback TCP,
 * against a plain TCP ping-pong on the same loopback and a local write + fdatasync
 * on the same disk, measured in the same run (medians, ratios).
 * Run by hand: stream_bench [--dir /var/tmp] [--ops 2000]
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "cluster/key.h"
#include "replication/apply.h"
#include "replication/stream.h"

using namespace sk::repl;
using Clock = std::chrono::steady_clock;

namespace {

double usSince(Clock::time_point t)
{
	return std::chrono::duration<double, std::micro>(Clock::now() - t).count();
}

struct Stats {
	double median = 0, p99 = 0;
};

Stats stats(std::vector<double> v)
{
	Stats s;
	if (v.empty())
		return s;
	std::sort(v.begin(), v.end());
	s.median = v[v.size() / 2];
	s.p99 = v[std::min(v.size() - 1, v.size() * 99 / 100)];
	return s;
}

[[noreturn]] void die(const std::string &what)
{
	fprintf(stderr, "stream_bench: %s\n", what.c_str());
	exit(1);
}

/* Plain TCP: 16-byte request, 16-byte answer, echoed by a thread. */
std::vector<double> tcpPingPong(unsigned ops)
{
	uint16_t port = 0;
	auto l = listenTcp("127.0.0.1", 0, &port);
	if (!l)
		die(l.error().message);
	std::thread echo([fd = l.value()] {
		int c = accept(fd, nullptr, nullptr);
		int one = 1;
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		char buf[16];
		while (recv(c, buf, sizeof(buf), MSG_WAITALL) == sizeof(buf))
			if (send(c, buf, sizeof(buf), 0) != sizeof(buf))
				break;
		close(c);
	});
	auto c = connectTcp("127.0.0.1", port);
	if (!c)
		die(c.error().message);
	int one = 1;
	setsockopt(c.value(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	std::vector<double> lat;
	char buf[16] = {};
	for (unsigned i = 0; i < ops; i++) {
		auto t = Clock::now();
		if (send(c.value(), buf, sizeof(buf), 0) != sizeof(buf) ||
		    recv(c.value(), buf, sizeof(buf), MSG_WAITALL) != sizeof(buf))
			die("ping-pong failed");
		lat.push_back(usSince(t));
	}
	close(c.value());
	echo.join();
	close(l.value());
	return lat;
}

/* Local 4 KiB append + fdatasync in dir. */
std::vector<double> localSync(const std::string &dir, unsigned ops)
{
	std::string path = dir + "/local.dat";
	int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("open " + path + ": " + strerror(errno));
	std::string block(4096, 'l');
	std::vector<double> lat;
	for (unsigned i = 0; i < ops; i++) {
		auto t = Clock::now();
		if (write(fd, block.data(), block.size()) != 4096 || fdatasync(fd) < 0)
			die("local write failed");
		lat.push_back(usSince(t));
	}
	close(fd);
	unlink(path.c_str());
	return lat;
}

} /* namespace */

int main(int argc, char **argv)
{
	std::string base = "/var/tmp";
	unsigned ops = 2000;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--dir"))
			base = argv[i + 1];
		else if (!strcmp(argv[i], "--ops"))
			ops = static_cast<unsigned>(atoi(argv[i + 1]));
		else
			die(std::string("unknown option ") + argv[i]);
	}
	std::string tmpl = base + "/sk-stream-bench-XXXXXX";
	if (!mkdtemp(tmpl.data()))
		die("mkdtemp in " + base + ": " + strerror(errno));
	std::string dir = tmpl;
	std::string target = dir + "/target";
	mkdir(target.c_str(), 0755);
	int targetFd = open(target.c_str(), O_DIRECTORY | O_RDONLY | O_CLOEXEC);

	std::vector<uint8_t> keyBytes(32, 0x42);
	auto key = sk::ClusterKey::fromBytes(keyBytes);
	StreamConfig sc;
	sc.clusterId = sk::clusterIdFromName("stream-bench");
	sc.module = "bench";
	sc.localNode = 2;
	sc.peerNode = 1;
	uint16_t port = 0;
	auto l = listenTcp("127.0.0.1", 0, &port);
	auto applier = Applier::create(targetFd, {});
	if (!key || !l || !applier)
		die("setup failed");
	ReplicationReceiver::Options ro;
	ro.stream = sc;
	auto rx = ReplicationReceiver::create(key.value(), ro, std::move(applier.value()));
	if (!rx || rx.value()->start(l.value()) != 0)
		die("receiver failed to start");
	ReplicationSender::Options so;
	so.stream = sc;
	so.stream.localNode = 1;
	so.stream.peerNode = 2;
	auto tx = ReplicationSender::create(key.value(), so);
	auto conn = connectTcp("127.0.0.1", port);
	if (!tx || !conn || tx.value()->attach(conn.value()) != 0)
		die("sender failed to attach");
	ReplicationSender &sender = *tx.value();

	Op create;
	create.type = OpType::Create;
	create.path = "f";
	create.mode = 0644;
	sender.submit(std::move(create));
	if (sender.waitAckedFor(sender.submitBarrier(true), std::chrono::seconds(30)) != 0)
		die("first barrier not acked");

	std::string block(4096, 'r');
	auto round = [&](bool withWrite, bool durable) {
		std::vector<double> lat;
		for (unsigned i = 0; i < ops; i++) {
			auto t = Clock::now();
			if (withWrite) {
				Op w;
				w.type = OpType::Write;
				w.path = "f";
				w.offset = uint64_t(i) * 4096;
				sender.submitWrite(std::move(w), block);
			}
			if (sender.waitAckedFor(sender.submitBarrier(durable), std::chrono::seconds(30)) != 0)
				die("barrier not acked");
			lat.push_back(usSince(t));
		}
		return stats(lat);
	};

	Stats tcp = stats(tcpPingPong(ops));
	Stats bare = round(false, false);
	Stats applied = round(true, false);
	Stats local = stats(localSync(dir, ops));
	Stats durable = round(true, true);

	printf("stream_bench: %u ops each, loopback, target on %s\n", ops, base.c_str());
	printf("%-44s %10s %10s %8s\n", "case", "median us", "p99 us", "ratio");
	printf("%-44s %10.1f %10.1f %8s\n", "TCP ping-pong (16 B, NODELAY)", tcp.median, tcp.p99, "1.00");
	printf("%-44s %10.1f %10.1f %8.2f\n", "barrier (applied), nothing before it", bare.median, bare.p99,
	       bare.median / tcp.median);
	printf("%-44s %10.1f %10.1f %8.2f\n", "4 KiB write + barrier (applied)", applied.median, applied.p99,
	       applied.median / tcp.median);
	printf("%-44s %10.1f %10.1f %8s\n", "local 4 KiB write + fdatasync", local.median, local.p99, "1.00");
	printf("%-44s %10.1f %10.1f %8.2f\n", "4 KiB write + barrier (durable)", durable.median, durable.p99,
	       durable.median / local.median);
	printf("overheads: stream round trip over TCP %.1f us; durable barrier over local sync %.1f us\n",
	       bare.median - tcp.median, durable.median - local.median);

	rx.value()->stop();
	close(l.value());
	close(targetFd);
	std::string cmd = "rm -rf '" + dir + "'";
	return system(cmd.c_str()) == 0 ? 0 : 1;
}
