/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Control socket: a unix stream socket (mode 0600) on which skctl sends one
 * JSON request per line and reads one JSON reply per line. Requests are
 * bounded in size and time; a malformed request gets an error reply, never a
 * crash. Handlers run on the event loop thread.
 */
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/event_loop.h"
#include "core/result.h"

namespace sk {

/* Largest request line accepted, and largest reply sent. */
constexpr size_t kControlMaxRequest = 64 * 1024;
constexpr size_t kControlMaxReply = 4 * 1024 * 1024;

/*
 * A handler gets the request object and returns the reply's "result", or an
 * Error whose message is shown to the user. Handlers that must wait (a swap)
 * reply later through the Responder.
 */
using ControlResponder = std::function<void(Result<nlohmann::json>)>;
using ControlHandler = std::function<void(const nlohmann::json &request, ControlResponder reply)>;

class ControlServer
{
public:
	/* Binds path (replacing a stale socket file) with mode 0600, and listens. */
	static Result<std::unique_ptr<ControlServer>> create(EventLoop *loop, const std::string &path);
	~ControlServer();

	/* Registers the handler for {"cmd": name, ...}. */
	void handle(const std::string &cmd, ControlHandler handler);

	const std::string &path() const { return path_; }
	size_t connections() const { return conns_.size(); }

private:
	struct Conn;

	ControlServer(EventLoop *loop, std::string path, int fd);
	void onAccept();
	void onReadable(uint64_t id);
	void onWritable(uint64_t id);
	void dispatch(uint64_t id, const std::string &line);
	void sendReply(uint64_t id, const nlohmann::json &reply, bool closeAfter);
	void closeConn(uint64_t id);

	EventLoop *loop_;
	std::string path_;
	int fd_;
	EventLoop::WatchId acceptWatch_ = 0;
	uint64_t nextConn_ = 1;
	std::map<uint64_t, std::unique_ptr<Conn>> conns_;
	std::map<std::string, ControlHandler> handlers_;
};

/*
 * Client side (skctl): connects, sends one request, waits for the reply.
 * Errors name the socket and what to do ("is skd running?").
 */
Result<nlohmann::json> controlRequest(const std::string &path, const nlohmann::json &request,
				      int timeoutMs);

} /* namespace sk */
