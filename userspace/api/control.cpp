/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Control socket server and client. Every connection is non-blocking; replies
 * are queued and flushed on POLLOUT so a slow client never stalls the loop.
 * A connection idle for kIdleMs is closed.
 */
#include "api/control.h"
#include "core/log.h"

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

namespace sk {

namespace {

LogCategory kLog("control");
constexpr int kIdleMs = 10000;
constexpr size_t kMaxConnections = 64;

Result<sockaddr_un> makeAddress(const std::string &path)
{
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	if (path.empty() || path.size() >= sizeof(addr.sun_path))
		return makeError(-ENAMETOOLONG,
				 "control socket path '" + path + "' is empty or longer than " +
					 std::to_string(sizeof(addr.sun_path) - 1) + " bytes");
	memcpy(addr.sun_path, path.c_str(), path.size() + 1);
	return addr;
}

} /* namespace */

struct ControlServer::Conn {
	int fd = -1;
	EventLoop::WatchId watch = 0;
	EventLoop::TimerId idle = 0;
	std::string in;
	std::string out;
	bool closeAfterFlush = false;
	bool busy = false;	/* a request is being handled: no pipelining */
};

Result<std::unique_ptr<ControlServer>> ControlServer::create(EventLoop *loop, const std::string &path)
{
	auto addr = makeAddress(path);
	if (!addr)
		return addr.error();

	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return makeError(-errno, errnoMessage("control socket", errno));

	/* A leftover socket file from a crashed skd: replace it only if nobody listens. */
	struct stat st;
	if (lstat(path.c_str(), &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			close(fd);
			return makeError(-EEXIST, "control socket path '" + path +
							  "' exists and is not a socket; remove it or choose --socket");
		}
		int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		bool live = probe >= 0 &&
			    connect(probe, reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr)) == 0;
		if (probe >= 0)
			close(probe);
		if (live) {
			close(fd);
			return makeError(-EADDRINUSE, "another skd is already serving '" + path + "'");
		}
		unlink(path.c_str());
	}

	/* Create the socket 0600 from the start: no window where others may connect. */
	mode_t old = umask(0177);
	int ret = bind(fd, reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr));
	int err = errno;
	umask(old);
	if (ret < 0) {
		close(fd);
		return makeError(-err, errnoMessage("bind " + path, err));
	}
	if (chmod(path.c_str(), 0600) < 0 || listen(fd, 16) < 0) {
		err = errno;
		close(fd);
		unlink(path.c_str());
		return makeError(-err, errnoMessage("listen " + path, err));
	}

	std::unique_ptr<ControlServer> server(new ControlServer(loop, path, fd));
	ControlServer *self = server.get();
	server->acceptWatch_ = loop->watchFd(fd, POLLIN, [self](uint32_t) { self->onAccept(); });
	return server;
}

ControlServer::ControlServer(EventLoop *loop, std::string path, int fd)
	: loop_(loop), path_(std::move(path)), fd_(fd)
{
}

ControlServer::~ControlServer()
{
	while (!conns_.empty())
		closeConn(conns_.begin()->first);
	loop_->unwatch(acceptWatch_);
	close(fd_);
	unlink(path_.c_str());
}

void ControlServer::handle(const std::string &cmd, ControlHandler handler)
{
	handlers_[cmd] = std::move(handler);
}

void ControlServer::onAccept()
{
	for (;;) {
		int cfd = accept4(fd_, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (cfd < 0) {
			if (errno != EAGAIN && errno != EINTR)
				logWarn(kLog, "accept on {}: {}", path_, strerror(errno));
			return;
		}
		if (conns_.size() >= kMaxConnections) {
			logWarn(kLog, "too many control connections ({}), refusing one", conns_.size());
			close(cfd);
			continue;
		}
		uint64_t id = nextConn_++;
		auto conn = std::make_unique<Conn>();
		conn->fd = cfd;
		conn->watch = loop_->watchFd(cfd, POLLIN | POLLRDHUP,
					     [this, id](uint32_t) { onReadable(id); });
		conn->idle = loop_->addTimer(std::chrono::milliseconds(kIdleMs), [this, id] {
			logDebug(kLog, "closing idle control connection {}", id);
			closeConn(id);
		});
		conns_.emplace(id, std::move(conn));
	}
}

void ControlServer::onReadable(uint64_t id)
{
	auto it = conns_.find(id);
	if (it == conns_.end())
		return;
	Conn &c = *it->second;
	char buf[8192];
	bool eof = false;
	for (;;) {
		ssize_t n = read(c.fd, buf, sizeof(buf));
		if (n == 0) {
			eof = true;
			break;
		}
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				break;
			closeConn(id);
			return;
		}
		c.in.append(buf, static_cast<size_t>(n));
		if (c.in.size() > kControlMaxRequest && c.in.find('\n') == std::string::npos) {
			logWarn(kLog, "control request over {} bytes, closing connection", kControlMaxRequest);
			sendReply(id, { { "ok", false },
					{ "error", "request larger than " + std::to_string(kControlMaxRequest) +
							   " bytes" } },
				  true);
			return;
		}
	}
	/* One request at a time per connection, in order; a half-closed client still gets its replies. */
	while (!c.busy) {
		size_t nl = c.in.find('\n');
		if (nl == std::string::npos)
			break;
		std::string line = c.in.substr(0, nl);
		c.in.erase(0, nl + 1);
		dispatch(id, line);
		if (!conns_.count(id))
			return;
	}
	if (eof) {
		if (c.watch) {
			loop_->unwatch(c.watch);
			c.watch = 0;
		}
		if (c.busy || !c.out.empty())
			c.closeAfterFlush = true;
		else
			closeConn(id);
	}
}

void ControlServer::dispatch(uint64_t id, const std::string &line)
{
	nlohmann::json req = nlohmann::json::parse(line, nullptr, false);
	if (req.is_discarded() || !req.is_object()) {
		sendReply(id, { { "ok", false }, { "error", "malformed request: expected one JSON object per line" } },
			  false);
		return;
	}
	auto cmdIt = req.find("cmd");
	if (cmdIt == req.end() || !cmdIt->is_string()) {
		sendReply(id, { { "ok", false }, { "error", "malformed request: missing string field \"cmd\"" } },
			  false);
		return;
	}
	std::string cmd = cmdIt->get<std::string>();
	auto h = handlers_.find(cmd);
	if (h == handlers_.end()) {
		sendReply(id, { { "ok", false }, { "error", "unknown command \"" + cmd + "\"" } }, false);
		return;
	}

	conns_[id]->busy = true;
	/* The responder may run later (or never, if the connection died first). */
	h->second(req, [this, id](Result<nlohmann::json> result) {
		auto it = conns_.find(id);
		if (it == conns_.end())
			return;
		it->second->busy = false;
		if (result)
			sendReply(id, { { "ok", true }, { "result", std::move(result.value()) } }, false);
		else
			sendReply(id, { { "ok", false }, { "error", result.error().message } }, false);
		if (conns_.count(id) && !conns_[id]->busy && conns_[id]->in.find('\n') != std::string::npos)
			loop_->post([this, id] { onReadable(id); });
	});
}

void ControlServer::sendReply(uint64_t id, const nlohmann::json &reply, bool closeAfter)
{
	auto it = conns_.find(id);
	if (it == conns_.end())
		return;
	Conn &c = *it->second;
	std::string text = reply.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
	if (text.size() > kControlMaxReply)
		text = nlohmann::json{ { "ok", false }, { "error", "reply too large" } }.dump();
	c.out += text;
	c.out += '\n';
	c.closeAfterFlush = c.closeAfterFlush || closeAfter;
	onWritable(id);
}

void ControlServer::onWritable(uint64_t id)
{
	auto it = conns_.find(id);
	if (it == conns_.end())
		return;
	Conn &c = *it->second;
	while (!c.out.empty()) {
		ssize_t n = send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN) {
				/* Wait for room; replace the read watch by a write watch meanwhile. */
				if (c.watch)
					loop_->unwatch(c.watch);
				c.watch = loop_->watchFd(c.fd, POLLOUT, [this, id](uint32_t) {
					auto ci = conns_.find(id);
					if (ci == conns_.end())
						return;
					loop_->unwatch(ci->second->watch);
					ci->second->watch = 0;
					onWritable(id);
				});
				return;
			}
			closeConn(id);
			return;
		}
		c.out.erase(0, static_cast<size_t>(n));
	}
	if (c.closeAfterFlush) {
		closeConn(id);
		return;
	}
	if (!c.watch)
		c.watch = loop_->watchFd(c.fd, POLLIN | POLLRDHUP, [this, id](uint32_t) { onReadable(id); });
}

void ControlServer::closeConn(uint64_t id)
{
	auto it = conns_.find(id);
	if (it == conns_.end())
		return;
	Conn &c = *it->second;
	if (c.watch)
		loop_->unwatch(c.watch);
	loop_->cancelTimer(c.idle);
	close(c.fd);
	conns_.erase(it);
}

Result<nlohmann::json> controlRequest(const std::string &path, const nlohmann::json &request, int timeoutMs)
{
	auto addr = makeAddress(path);
	if (!addr)
		return addr.error();
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return makeError(-errno, errnoMessage("socket", errno));
	if (connect(fd, reinterpret_cast<sockaddr *>(&*addr), sizeof(*addr)) < 0) {
		int err = errno;
		close(fd);
		std::string hint = (err == ENOENT || err == ECONNREFUSED)
					   ? "skd is not running (no daemon listens on " + path +
						     "); start it with 'systemctl start skd' or 'skd'"
				   : err == EACCES ? "permission denied on " + path + ": run skctl as root"
						   : errnoMessage("connect " + path, err);
		return makeError(-err, hint);
	}

	std::string text = request.dump() + "\n";
	size_t off = 0;
	while (off < text.size()) {
		ssize_t n = send(fd, text.data() + off, text.size() - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			int err = errno;
			close(fd);
			return makeError(-err, errnoMessage("send to skd", err));
		}
		off += static_cast<size_t>(n);
	}

	std::string in;
	auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeoutMs);
	for (;;) {
		size_t nl = in.find('\n');
		if (nl != std::string::npos) {
			in.resize(nl);
			break;
		}
		auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
				    deadline - std::chrono::steady_clock::now())
				    .count();
		if (left <= 0) {
			close(fd);
			return makeError(-ETIMEDOUT, "skd did not answer within " +
							     std::to_string(timeoutMs) + " ms");
		}
		struct pollfd pfd = { fd, POLLIN, 0 };
		int pr = poll(&pfd, 1, static_cast<int>(left));
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0)
			continue;
		char buf[65536];
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(fd);
			return makeError(-ECONNRESET, "skd closed the connection without a reply");
		}
		in.append(buf, static_cast<size_t>(n));
		if (in.size() > kControlMaxReply + 1) {
			close(fd);
			return makeError(-EMSGSIZE, "reply from skd too large");
		}
	}
	close(fd);

	nlohmann::json reply = nlohmann::json::parse(in, nullptr, false);
	if (reply.is_discarded() || !reply.is_object() || !reply.contains("ok"))
		return makeError(-EPROTO, "malformed reply from skd");
	if (!reply["ok"].is_boolean() || !reply["ok"].get<bool>()) {
		std::string msg = reply.contains("error") && reply["error"].is_string()
					  ? reply["error"].get<std::string>()
					  : "request failed";
		return makeError(-EINVAL, msg);
	}
	return reply.contains("result") ? reply["result"] : nlohmann::json();
}

} /* namespace sk */
