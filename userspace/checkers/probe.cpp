/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TCP and ICMP probes. Each owns one non-blocking socket watched by the loop
 * and one timeout timer; whichever fires first reports, the other is dropped.
 */
#include "checkers/probe.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

namespace sk {

namespace {

bool parseAddress(const std::string &text, uint16_t port, sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	auto *in4 = reinterpret_cast<sockaddr_in *>(ss);
	auto *in6 = reinterpret_cast<sockaddr_in6 *>(ss);
	if (inet_pton(AF_INET, text.c_str(), &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons(port);
		*len = sizeof(*in4);
		return true;
	}
	if (inet_pton(AF_INET6, text.c_str(), &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
		return true;
	}
	return false;
}

uint16_t inetChecksum(const uint8_t *data, size_t len)
{
	uint32_t sum = 0;
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += static_cast<uint32_t>(data[i] << 8 | data[i + 1]);
	if (len & 1)
		sum += static_cast<uint32_t>(data[len - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons(static_cast<uint16_t>(~sum));
}

class SocketProbe : public Probe
{
public:
	SocketProbe(EventLoop &loop, ProbeDone done) : loop_(loop), done_(std::move(done)) {}

	~SocketProbe() override { release(); }

protected:
	/* Reports asynchronously (never from inside the factory). */
	void report(bool reachable, std::string detail)
	{
		if (finished_)
			return;
		finished_ = true;
		ProbeReport r;
		r.reachable = reachable;
		r.detail = std::move(detail);
		r.rtt = std::chrono::duration_cast<std::chrono::microseconds>(EventLoop::Clock::now() - start_);
		release();
		/* Through a timer, so a synchronous failure still reports later. */
		auto alive = alive_;
		ProbeDone done = done_;
		loop_.addTimer(std::chrono::milliseconds(0), [alive, done, r] {
			if (*alive)
				done(r);
		});
	}

	void arm(uint32_t events, std::chrono::milliseconds timeout)
	{
		start_ = EventLoop::Clock::now();
		watch_ = loop_.watchFd(fd_, events, [this](uint32_t ev) { onReady(ev); });
		timer_ = loop_.addTimer(timeout, [this] {
			timer_ = 0;
			report(false, "timeout");
		});
	}

	void release()
	{
		if (watch_) {
			loop_.unwatch(watch_);
			watch_ = 0;
		}
		if (timer_) {
			loop_.cancelTimer(timer_);
			timer_ = 0;
		}
		if (fd_ >= 0) {
			close(fd_);
			fd_ = -1;
		}
	}

	virtual void onReady(uint32_t events) = 0;

	EventLoop &loop_;
	ProbeDone done_;
	int fd_ = -1;
	EventLoop::WatchId watch_ = 0;
	EventLoop::TimerId timer_ = 0;
	EventLoop::Clock::time_point start_;
	bool finished_ = false;
	/* Shared with the deferred report: false once the probe is destroyed. */
	std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);

public:
	void detach() { *alive_ = false; }
};

class TcpProbe : public SocketProbe
{
public:
	using SocketProbe::SocketProbe;
	~TcpProbe() override { detach(); }

	void start(const std::string &address, uint16_t port, std::chrono::milliseconds timeout)
	{
		sockaddr_storage ss;
		socklen_t len;
		if (!parseAddress(address, port, &ss, &len)) {
			report(false, "not an IP address: " + address);
			return;
		}
		fd_ = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd_ < 0) {
			report(false, std::string("socket: ") + strerror(errno));
			return;
		}
		int ret = connect(fd_, reinterpret_cast<sockaddr *>(&ss), len);
		if (ret == 0) {
			start_ = EventLoop::Clock::now();
			report(true, "connected");
			return;
		}
		if (errno != EINPROGRESS) {
			report(false, strerror(errno));
			return;
		}
		arm(POLLOUT, timeout);
	}

private:
	void onReady(uint32_t) override
	{
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err == 0)
			report(true, "connected");
		else
			report(false, strerror(err));
	}
};

class IcmpProbe : public SocketProbe
{
public:
	using SocketProbe::SocketProbe;
	~IcmpProbe() override { detach(); }

	void start(const std::string &address, std::chrono::milliseconds timeout)
	{
		socklen_t len;
		if (!parseAddress(address, 0, &dest_, &len)) {
			report(false, "not an IP address: " + address);
			return;
		}
		v6_ = dest_.ss_family == AF_INET6;
		int proto = v6_ ? static_cast<int>(IPPROTO_ICMPV6) : static_cast<int>(IPPROTO_ICMP);
		/* Unprivileged ping socket first: the kernel fills in id and checksum. */
		fd_ = socket(dest_.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
		if (fd_ < 0) {
			raw_ = true;
			fd_ = socket(dest_.ss_family, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, proto);
		}
		if (fd_ < 0) {
			report(false, std::string("icmp socket: ") + strerror(errno));
			return;
		}
		getrandom(&id_, sizeof(id_), 0);
		getrandom(&seq_, sizeof(seq_), 0);

		uint8_t pkt[16] = {};
		pkt[0] = v6_ ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
		pkt[4] = static_cast<uint8_t>(id_ >> 8);
		pkt[5] = static_cast<uint8_t>(id_);
		pkt[6] = static_cast<uint8_t>(seq_ >> 8);
		pkt[7] = static_cast<uint8_t>(seq_);
		memcpy(pkt + 8, "sk-probe", 8);
		if (!v6_) {
			uint16_t c = inetChecksum(pkt, sizeof(pkt));
			memcpy(pkt + 2, &c, 2);
		}
		/* ICMPv6 raw sockets get their checksum from the kernel (RFC 3542). */
		if (sendto(fd_, pkt, sizeof(pkt), 0, reinterpret_cast<sockaddr *>(&dest_), len) < 0) {
			report(false, std::string("send: ") + strerror(errno));
			return;
		}
		arm(POLLIN, timeout);
	}

private:
	void onReady(uint32_t) override
	{
		uint8_t buf[1500];
		sockaddr_storage from;
		for (;;) {
			socklen_t fl = sizeof(from);
			ssize_t n = recvfrom(fd_, buf, sizeof(buf), 0, reinterpret_cast<sockaddr *>(&from), &fl);
			if (n < 0)
				return;
			const uint8_t *icmp = buf;
			size_t left = static_cast<size_t>(n);
			if (raw_ && !v6_) {
				/* IPv4 raw sockets deliver the IP header too. */
				size_t ihl = (buf[0] & 0x0f) * 4u;
				if (left < ihl)
					continue;
				icmp += ihl;
				left -= ihl;
			}
			if (left < 8)
				continue;
			uint8_t reply = v6_ ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY;
			if (icmp[0] != reply)
				continue;
			uint16_t seq = static_cast<uint16_t>(icmp[6] << 8 | icmp[7]);
			uint16_t id = static_cast<uint16_t>(icmp[4] << 8 | icmp[5]);
			/* Ping sockets rewrite the id to their own port: match on seq there. */
			if (seq != seq_ || (raw_ && id != id_))
				continue;
			if (!sameHost(from))
				continue;
			report(true, "echo reply");
			return;
		}
	}

	bool sameHost(const sockaddr_storage &from) const
	{
		if (from.ss_family != dest_.ss_family)
			return false;
		if (v6_)
			return memcmp(&reinterpret_cast<const sockaddr_in6 &>(from).sin6_addr,
				      &reinterpret_cast<const sockaddr_in6 &>(dest_).sin6_addr, 16) == 0;
		return reinterpret_cast<const sockaddr_in &>(from).sin_addr.s_addr ==
		       reinterpret_cast<const sockaddr_in &>(dest_).sin_addr.s_addr;
	}

	sockaddr_storage dest_{};
	bool v6_ = false;
	bool raw_ = false;
	uint16_t id_ = 0;
	uint16_t seq_ = 0;
};

} /* namespace */

std::unique_ptr<Probe> Probe::tcp(EventLoop &loop, const std::string &address, uint16_t port,
				  std::chrono::milliseconds timeout, ProbeDone done)
{
	auto p = std::make_unique<TcpProbe>(loop, std::move(done));
	p->start(address, port, timeout);
	return p;
}

std::unique_ptr<Probe> Probe::icmp(EventLoop &loop, const std::string &address,
				   std::chrono::milliseconds timeout, ProbeDone done)
{
	auto p = std::make_unique<IcmpProbe>(loop, std::move(done));
	p->start(address, timeout);
	return p;
}

} /* namespace sk */
