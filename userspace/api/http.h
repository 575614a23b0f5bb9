/* SPDX-License-Identifier: Apache-2.0 */
/*
 * HTTP API of skd (cpp-httplib): JSON status, Prometheus metrics, a health URL
 * for cloud load balancers, token-guarded admin actions and the web console.
 * Requests are served on the server's own threads, but skd's state lives on its
 * single-threaded EventLoop: every backend call is posted there and awaited.
 */
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "core/result.h"

namespace sk {

struct HttpConfig;

/* What the server needs of skd. Every member is called on the loop thread only. */
struct HttpBackend {
	/* The status document (same as `skctl status --json`). */
	std::function<nlohmann::json()> status;
	/* Runs an admin action; reply may be called later (a swap waits), exactly once. */
	std::function<void(const std::string &action, const std::string &module, const std::string &origin,
			   std::function<void(Result<nlohmann::json>)> reply)>
		action;
	/* PRIM/ALONE/UP -> true, other states -> false, no such module -> nullopt. */
	std::function<std::optional<bool>(const std::string &module)> serving;
	/* Prometheus text; when empty, statusToMetrics(status()) is used. */
	std::function<std::string()> metrics;
};

/* Runs a function on the loop thread (EventLoop::post); must be thread-safe. */
using HttpPostFn = std::function<void(std::function<void()>)>;

struct HttpServerOptions {
	std::string listen = "127.0.0.1";
	uint16_t port = 7480;			/* 0: an ephemeral port (tests), see HttpServer::port() */
	std::string tlsCert;			/* PEM; both or neither */
	std::string tlsKey;
	std::string tokenFile;			/* empty: admin actions are refused (403) */
	std::string consoleDir;			/* empty: no console (GET / is 404) */
	size_t maxBody = 16 * 1024;		/* larger request bodies: 413 */
	size_t threads = 8;			/* worker threads (each holds one connection) */
	std::chrono::milliseconds readTimeout{ 5000 };	/* per read: a stalled request is dropped */
	std::chrono::milliseconds writeTimeout{ 5000 };
	std::chrono::seconds keepAlive{ 2 };	/* idle keep-alive connections hold a worker */
	std::chrono::milliseconds loopTimeout{ 3000 };	/* status/metrics/health wait: 503 after */
	std::chrono::milliseconds actionTimeout{ 60000 };	/* admin action wait: 503 after */
};

/* The admin actions POST /api/v1/modules/<module>/<action> accepts. */
bool isHttpAction(const std::string &action);

/* Options from cluster.json's "http" section and ports.http. */
HttpServerOptions httpOptionsFromConfig(const HttpConfig &config, uint16_t port, const std::string &consoleDir);

/* Where meson installs the console (datadir/sk/console); set by the build. */
const char *defaultConsoleDir();

class HttpServer
{
public:
	/*
	 * Reads the token file (must be mode 0600, not group/other accessible),
	 * loads the TLS certificate when configured, binds and starts serving.
	 */
	static Result<std::unique_ptr<HttpServer>> create(const HttpServerOptions &options, HttpBackend backend,
							   HttpPostFn post);
	/*
	 * Stops accepting and joins the server threads (requests waiting on the loop
	 * get 503 at once); work already posted becomes a no-op. Destroy it before the
	 * EventLoop that post() feeds, preferably on the loop thread.
	 */
	~HttpServer();

	HttpServer(const HttpServer &) = delete;
	HttpServer &operator=(const HttpServer &) = delete;

	/* The bound port (useful with port 0). */
	uint16_t port() const { return port_; }
	bool tls() const { return tls_; }

	struct Impl;

private:
	HttpServer() = default;

	std::unique_ptr<Impl> impl_;
	uint16_t port_ = 0;
	bool tls_ = false;
};

} /* namespace sk */
