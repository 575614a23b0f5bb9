/* SPDX-License-Identifier: Apache-2.0 */
/* PeerLink: idle TCP connections whose breakage reveals a dead peer skd at once. */
#include "cluster/peer_link.h"
#include "core/log.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cstring>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <unistd.h>

namespace sk {

namespace {

LogCategory kLog("peerlink");
constexpr size_t kMaxInbound = 32;

bool makeAddress(const std::string &text, uint16_t port, sockaddr_storage *ss, socklen_t *len)
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

} /* namespace */

PeerLink::PeerLink(EventLoop &loop, PeerLinkConfig config, BrokenCallback broken)
	: loop_(loop), config_(std::move(config)), broken_(std::move(broken))
{
}

Result<std::unique_ptr<PeerLink>> PeerLink::create(EventLoop &loop, PeerLinkConfig config, BrokenCallback broken)
{
	std::unique_ptr<PeerLink> p(new PeerLink(loop, std::move(config), std::move(broken)));
	for (const std::string &addr : p->config_.localAddresses) {
		sockaddr_storage ss;
		socklen_t len;
		if (!makeAddress(addr, p->config_.port, &ss, &len))
			return makeError(-EINVAL, "peer link: not an IP address: " + addr);
		int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return makeError(-errno, errnoMessage("peer link socket", errno));
		int one = 1;
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		/* The address may not be configured yet (interface still coming up): bind anyway. */
		if (ss.ss_family == AF_INET)
			setsockopt(fd, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one));
		else
			setsockopt(fd, IPPROTO_IPV6, IPV6_FREEBIND, &one, sizeof(one));
		if (bind(fd, reinterpret_cast<sockaddr *>(&ss), len) < 0 || listen(fd, 16) < 0) {
			int err = errno;
			close(fd);
			return makeError(-err, errnoMessage("peer link listen on " + addr + " port " +
								    std::to_string(p->config_.port),
							    err));
		}
		PeerLink *self = p.get();
		auto w = loop.watchFd(fd, POLLIN, [self, fd](uint32_t) { self->onAccept(fd); });
		p->listeners_.push_back({ fd, w });
	}
	for (const PeerLinkConfig::Peer &peer : p->config_.peers) {
		auto o = std::make_unique<Outbound>();
		o->peer = peer;
		p->outbound_.push_back(std::move(o));
	}
	for (auto &o : p->outbound_)
		p->connect(*o);
	return p;
}

PeerLink::~PeerLink()
{
	for (auto &o : outbound_) {
		loop_.cancelTimer(o->retryTimer);
		closeOutbound(*o, false);
	}
	while (!inbound_.empty())
		dropInbound(inbound_.begin()->first);
	for (auto &[fd, w] : listeners_) {
		loop_.unwatch(w);
		close(fd);
	}
}

bool PeerLink::connected(NodeId peer) const
{
	for (const auto &o : outbound_)
		if (o->peer.id == peer)
			return o->established;
	return false;
}

void PeerLink::connect(Outbound &o)
{
	o.retryTimer = 0;
	if (o.peer.addresses.empty())
		return;
	const std::string &addr = o.peer.addresses[o.nextAddress % o.peer.addresses.size()];
	o.nextAddress++;
	sockaddr_storage ss;
	socklen_t len;
	uint16_t port = o.peer.port ? o.peer.port : config_.port;
	if (!makeAddress(addr, port, &ss, &len))
		return;
	o.fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (o.fd < 0) {
		closeOutbound(o, true);
		return;
	}
	/*
	 * Keepalive would only add a slower way to find what heartbeats already
	 * find; what matters is the FIN/RST a dying process's kernel sends.
	 */
	int one = 1;
	setsockopt(o.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	int ret = ::connect(o.fd, reinterpret_cast<sockaddr *>(&ss), len);
	if (ret < 0 && errno != EINPROGRESS) {
		closeOutbound(o, true);
		return;
	}
	Outbound *op = &o;
	o.watch = loop_.watchFd(o.fd, POLLOUT | POLLIN | POLLRDHUP, [this, op](uint32_t ev) { onOutbound(*op, ev); });
}

void PeerLink::onOutbound(Outbound &o, uint32_t events)
{
	if (!o.established) {
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(o.fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err != 0 || (events & (POLLERR | POLLHUP))) {
			closeOutbound(o, true);
			return;
		}
		if (!(events & POLLOUT))
			return;
		o.established = true;
		logDebug(kLog, "link to node {} established", o.peer.id);
		/* From now on only readability (EOF/RST) matters. */
		loop_.unwatch(o.watch);
		Outbound *op = &o;
		o.watch = loop_.watchFd(o.fd, POLLIN | POLLRDHUP, [this, op](uint32_t ev) { onOutbound(*op, ev); });
		return;
	}
	char buf[256];
	ssize_t n = recv(o.fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (n > 0)
		return;	/* the peer sends nothing; ignore whatever arrives */
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	std::string why = n == 0 ? "connection closed by the peer" : std::string("connection ") + strerror(errno);
	NodeId id = o.peer.id;
	closeOutbound(o, true);
	logInfo(kLog, "link to node {} broken: {}", id, why);
	if (broken_)
		broken_(id, why);
}

void PeerLink::closeOutbound(Outbound &o, bool scheduleRetry)
{
	if (o.watch) {
		loop_.unwatch(o.watch);
		o.watch = 0;
	}
	if (o.fd >= 0) {
		close(o.fd);
		o.fd = -1;
	}
	o.established = false;
	if (scheduleRetry && !o.retryTimer) {
		Outbound *op = &o;
		o.retryTimer = loop_.addTimer(config_.retry, [this, op] { connect(*op); });
	}
}

void PeerLink::onAccept(int listenFd)
{
	for (;;) {
		int fd = accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		/* Bounded: the oldest inbound connection makes room for a new one. */
		if (inbound_.size() >= kMaxInbound)
			dropInbound(inbound_.begin()->first);
		uint64_t id = nextInbound_++;
		Inbound in;
		in.fd = fd;
		in.watch = loop_.watchFd(fd, POLLIN | POLLRDHUP, [this, id](uint32_t) {
			auto it = inbound_.find(id);
			if (it == inbound_.end())
				return;
			char buf[256];
			ssize_t n = recv(it->second.fd, buf, sizeof(buf), MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				dropInbound(id);
		});
		inbound_[id] = in;
	}
}

void PeerLink::dropInbound(uint64_t id)
{
	auto it = inbound_.find(id);
	if (it == inbound_.end())
		return;
	loop_.unwatch(it->second.watch);
	close(it->second.fd);
	inbound_.erase(it);
}

} /* namespace sk */
