/* SPDX-License-Identifier: Apache-2.0 */
/*
 * HttpServer on cpp-httplib. Threads: one listener thread plus a small worker
 * pool (httplib's), none of which touches skd state: backend calls are posted
 * to the loop and awaited with a bound, in slices so that a stopping server
 * never waits for a loop that is itself waiting to destroy it.
 */
#include "api/http.h"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include <httplib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "api/metrics.h"
#include "core/config.h"
#include "core/log.h"

#ifndef SK_CONSOLE_DIR
#define SK_CONSOLE_DIR "/usr/local/share/sk/console"
#endif

namespace sk {

namespace {

const LogCategory kLog("http");

/* The console loads only its own files; it reads other nodes' status (connect-src). */
const char *const kConsolePolicy = "default-src 'self'; connect-src *; img-src 'self' data:; "
				   "style-src 'self'; script-src 'self'; frame-ancestors 'none'";

const std::set<std::string> kActions = { "start", "stop", "swap", "prim", "second", "restart" };

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string dumpJson(const json &j)
{
	/* Replace, not throw, on invalid UTF-8 (paths and script output can hold anything). */
	return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
}

void sendJson(httplib::Response &res, int code, const json &body)
{
	res.status = code;
	res.set_content(dumpJson(body), "application/json");
}

void sendError(httplib::Response &res, int code, const std::string &message)
{
	sendJson(res, code, json{ { "error", message } });
}

/* SHA-256 of s, so that token comparison is constant time whatever the lengths. */
bool digest(const std::string &s, unsigned char out[32])
{
	unsigned int len = 0;
	return EVP_Digest(s.data(), s.size(), out, &len, EVP_sha256(), nullptr) == 1 && len == 32;
}

Result<std::string> readTokenFile(const std::string &path)
{
	struct stat st;
	if (stat(path.c_str(), &st) < 0)
		return makeError(-errno, errnoMessage("http token file " + path, -errno));
	if (!S_ISREG(st.st_mode))
		return makeError(-EINVAL, "http token file " + path + " is not a regular file");
	if (st.st_mode & 077)
		return makeError(-EPERM, "http token file " + path + " must not be readable by group or others " +
						 "(chmod 600 " + path + ")");
	std::ifstream in(path);
	if (!in)
		return makeError(-EIO, "cannot read http token file " + path);
	std::stringstream ss;
	ss << in.rdbuf();
	std::string token = ss.str();
	while (!token.empty() && std::isspace(static_cast<unsigned char>(token.back())))
		token.pop_back();
	while (!token.empty() && std::isspace(static_cast<unsigned char>(token.front())))
		token.erase(token.begin());
	if (token.size() < 16)
		return makeError(-EINVAL, "http token file " + path + " holds " +
						  (token.empty() ? std::string("no token") : "a token shorter than 16 characters"));
	return token;
}

std::string readSmallFile(const std::string &path)
{
	std::ifstream in(path, std::ios::binary);
	if (!in)
		return {};
	std::stringstream ss;
	ss << in.rdbuf();
	return ss.str();
}

} /* namespace */

/* State shared with work posted to the loop, which may outlive the server. */
struct LoopShared {
	HttpBackend backend;
	std::atomic<bool> alive{ true };
};

struct HttpServer::Impl {
	HttpServerOptions options;
	HttpPostFn post;
	std::shared_ptr<LoopShared> shared;
	std::unique_ptr<httplib::Server> server;
	std::thread listener;
	std::atomic<bool> stopping{ false };
	std::atomic<bool> listenerDone{ false };
	bool tokenSet = false;
	unsigned char tokenDigest[32] = {};

	/* Waits for f until timeout or the server stops; nullopt then. */
	template<typename T>
	std::optional<T> await(std::future<T> &f, std::chrono::milliseconds timeout)
	{
		auto deadline = Clock::now() + timeout;
		while (!stopping) {
			auto left = deadline - Clock::now();
			if (left <= Clock::duration::zero())
				return std::nullopt;
			auto slice = std::min<Clock::duration>(left, std::chrono::milliseconds(50));
			if (f.wait_for(slice) == std::future_status::ready)
				return f.get();
		}
		return std::nullopt;
	}

	/* Runs fn on the loop thread and returns its value, or an error (timeout: -ETIMEDOUT). */
	template<typename T>
	Result<T> onLoop(std::function<T(const HttpBackend &)> fn, std::chrono::milliseconds timeout)
	{
		auto p = std::make_shared<std::promise<Result<T>>>();
		auto f = p->get_future();
		post([sh = shared, p, fn = std::move(fn)] {
			if (!sh->alive) {
				p->set_value(makeError(-ESHUTDOWN, "http server stopped"));
				return;
			}
			try {
				p->set_value(fn(sh->backend));
			} catch (const std::exception &e) {
				p->set_value(makeError(-EIO, std::string("internal error: ") + e.what()));
			} catch (...) {
				p->set_value(makeError(-EIO, "internal error"));
			}
		});
		auto r = await(f, timeout);
		if (!r)
			return makeError(-ETIMEDOUT, "skd did not answer in time");
		return std::move(*r);
	}

	/* Checks "Authorization: Bearer <token>" in constant time. */
	bool authorized(const httplib::Request &req) const
	{
		if (!tokenSet)
			return false;
		std::string h = req.get_header_value("Authorization");
		const std::string scheme = "bearer ";
		if (h.size() <= scheme.size())
			return false;
		for (size_t i = 0; i < scheme.size(); i++)
			if (std::tolower(static_cast<unsigned char>(h[i])) != scheme[i])
				return false;
		std::string given = h.substr(scheme.size());
		while (!given.empty() && given.front() == ' ')
			given.erase(given.begin());
		unsigned char d[32];
		if (!digest(given, d))
			return false;
		return CRYPTO_memcmp(d, tokenDigest, sizeof d) == 0;
	}

	void routes();
	void status(const httplib::Request &req, httplib::Response &res);
	void metrics(const httplib::Request &req, httplib::Response &res);
	void health(const httplib::Request &req, httplib::Response &res);
	void action(const httplib::Request &req, httplib::Response &res);
	void index(const httplib::Request &req, httplib::Response &res);
};

bool isHttpAction(const std::string &action)
{
	return kActions.count(action) > 0;
}

const char *defaultConsoleDir()
{
	return SK_CONSOLE_DIR;
}

HttpServerOptions httpOptionsFromConfig(const HttpConfig &config, uint16_t port, const std::string &consoleDir)
{
	HttpServerOptions o;
	o.listen = config.listen;
	o.port = port;
	o.tlsCert = config.tlsCert;
	o.tlsKey = config.tlsKey;
	o.tokenFile = config.tokenFile;
	o.consoleDir = consoleDir;
	return o;
}

void HttpServer::Impl::status(const httplib::Request &, httplib::Response &res)
{
	auto r = onLoop<json>([](const HttpBackend &b) { return b.status ? b.status() : json::object(); },
			      options.loopTimeout);
	/* Other nodes' consoles read this document; nothing else is cross-origin. */
	res.set_header("Access-Control-Allow-Origin", "*");
	if (!r) {
		sendError(res, 503, r.error().message);
		return;
	}
	sendJson(res, 200, r.value());
}

void HttpServer::Impl::metrics(const httplib::Request &, httplib::Response &res)
{
	/* Only the document is taken on the loop; rendering it is pure and happens here. */
	auto r = onLoop<std::string>(
		[](const HttpBackend &b) {
			if (b.metrics)
				return b.metrics();
			return statusToMetrics(b.status ? b.status() : json::object());
		},
		options.loopTimeout);
	if (!r) {
		sendError(res, 503, r.error().message);
		return;
	}
	res.status = 200;
	res.set_content(r.value(), std::string(kMetricsContentType).c_str());
}

void HttpServer::Impl::health(const httplib::Request &req, httplib::Response &res)
{
	std::string module = req.matches[1];
	auto r = onLoop<std::optional<bool>>(
		[module](const HttpBackend &b) { return b.serving ? b.serving(module) : std::nullopt; },
		options.loopTimeout);
	if (!r) {
		res.status = 503;
		res.set_content("unknown: " + r.error().message + "\n", "text/plain");
		return;
	}
	if (!r.value()) {
		res.status = 404;
		res.set_content("no module named " + module + "\n", "text/plain");
		return;
	}
	res.status = *r.value() ? 200 : 503;
	res.set_content(*r.value() ? "serving\n" : "not serving\n", "text/plain");
}

void HttpServer::Impl::action(const httplib::Request &req, httplib::Response &res)
{
	std::string module = req.matches[1];
	std::string act = req.matches[2];
	std::string origin = req.remote_addr + ":" + std::to_string(req.remote_port);
	if (!authorized(req)) {
		logWarn(kLog, "refused {} {} from {}: {}", act, module, origin,
			tokenSet ? "missing or wrong bearer token" : "no token file configured");
		if (!tokenSet) {
			sendError(res, 403, "admin actions are disabled: no http token_file is configured");
			return;
		}
		res.set_header("WWW-Authenticate", "Bearer realm=\"sk\"");
		sendError(res, 401, "missing or wrong bearer token");
		return;
	}
	if (!isHttpAction(act)) {
		sendError(res, 404, "unknown action '" + act + "' (start, stop, swap, prim, second, restart)");
		return;
	}
	logInfo(kLog, "{} {} requested from {}", act, module, origin);

	auto p = std::make_shared<std::promise<Result<json>>>();
	auto replied = std::make_shared<std::atomic<bool>>(false);
	auto f = p->get_future();
	post([sh = shared, p, replied, act, module, origin] {
		auto reply = [p, replied](Result<json> r) {
			/* Exactly once, even if a module answers twice or the request gave up. */
			if (!replied->exchange(true))
				p->set_value(std::move(r));
		};
		if (!sh->alive || !sh->backend.action) {
			reply(makeError(-ESHUTDOWN, "http server stopped"));
			return;
		}
		try {
			sh->backend.action(act, module, origin, reply);
		} catch (const std::exception &e) {
			reply(makeError(-EIO, std::string("internal error: ") + e.what()));
		} catch (...) {
			reply(makeError(-EIO, "internal error"));
		}
	});
	auto r = await(f, options.actionTimeout);
	if (!r) {
		if (stopping)
			logWarn(kLog, "{} {} from {}: http server stopping before the answer", act, module, origin);
		else
			logWarn(kLog, "{} {} from {}: no answer within {} ms", act, module, origin,
				options.actionTimeout.count());
		sendError(res, 503, "skd did not answer in time; the action may still complete (see the status)");
		return;
	}
	if (!*r) {
		int code = r->error().code;
		logInfo(kLog, "{} {} from {} refused: {}", act, module, origin, r->error().message);
		sendError(res, code == -ENOENT ? 404 : code == -ESHUTDOWN ? 503 : 409, r->error().message);
		return;
	}
	logInfo(kLog, "{} {} from {} done", act, module, origin);
	sendJson(res, 200, json{ { "result", r->value() } });
}

void HttpServer::Impl::index(const httplib::Request &, httplib::Response &res)
{
	std::string page = options.consoleDir.empty() ? "" : readSmallFile(options.consoleDir + "/index.html");
	if (page.empty()) {
		sendError(res, 404, "no web console installed");
		return;
	}
	res.status = 200;
	res.set_header("Content-Security-Policy", kConsolePolicy);
	res.set_content(page, "text/html; charset=utf-8");
}

void HttpServer::Impl::routes()
{
	httplib::Server &s = *server;
	s.set_default_headers({ { "X-Content-Type-Options", "nosniff" },
				{ "Cache-Control", "no-store" },
				{ "X-Frame-Options", "DENY" } });
	s.Get("/api/v1/status", [this](const httplib::Request &q, httplib::Response &r) { status(q, r); });
	s.Get("/metrics", [this](const httplib::Request &q, httplib::Response &r) { metrics(q, r); });
	s.Get(R"(/health/([A-Za-z0-9_.\-]+))",
	      [this](const httplib::Request &q, httplib::Response &r) { health(q, r); });
	/*
	 * With a content reader: httplib would otherwise wait for a body that a POST
	 * without Content-Length (curl -X POST) never sends, then answer 400. Actions
	 * take no body; one that is sent is drained, bounded by maxBody (413).
	 */
	s.Post(R"(/api/v1/modules/([A-Za-z0-9_.\-]+)/([a-z]+))",
	       [this](const httplib::Request &q, httplib::Response &r, const httplib::ContentReader &reader) {
		       if (q.has_header("Content-Length") || q.has_header("Transfer-Encoding")) {
			       size_t got = 0;
			       bool ok = reader([&got, this](const char *, size_t n) {
				       got += n;
				       return got <= options.maxBody;
			       });
			       if (!ok) {
				       r.set_header("Connection", "close");
				       sendError(r, r.status == 413 || got > options.maxBody ? 413 : 400,
						 r.status == 413 || got > options.maxBody ? "request too large"
											  : "malformed request body");
				       return;
			       }
		       }
		       action(q, r);
	       });
	s.Get("/", [this](const httplib::Request &q, httplib::Response &r) { index(q, r); });
	if (!options.consoleDir.empty())
		s.set_mount_point("/console", options.consoleDir, { { "Content-Security-Policy", kConsolePolicy } });

	/* httplib leaves bodies of its own errors (400, 404, 413...) empty: say what happened. */
	s.set_error_handler(httplib::Server::HandlerWithResponse([](const httplib::Request &, httplib::Response &res) {
		if (!res.body.empty())
			return httplib::Server::HandlerResponse::Unhandled;
		const char *what = res.status == 404   ? "not found"
				   : res.status == 413 ? "request too large"
				   : res.status == 414 ? "request URI too long"
				   : res.status == 400 ? "malformed request"
						       : "request failed";
		sendError(res, res.status, what);
		return httplib::Server::HandlerResponse::Handled;
	}));
	s.set_exception_handler([](const httplib::Request &, httplib::Response &res, std::exception_ptr ep) {
		std::string what = "internal error";
		try {
			if (ep)
				std::rethrow_exception(ep);
		} catch (const std::exception &e) {
			what += std::string(": ") + e.what();
		} catch (...) {
		}
		logError(kLog, "{}", what);
		sendError(res, 500, what);
	});
	s.set_logger([](const httplib::Request &req, const httplib::Response &res) {
		logDebug(kLog, "{} {} {} from {}:{}", req.method, req.path, res.status, req.remote_addr,
			 req.remote_port);
	});
}

Result<std::unique_ptr<HttpServer>> HttpServer::create(const HttpServerOptions &options, HttpBackend backend,
						       HttpPostFn post)
{
	if (!post)
		return makeError(-EINVAL, "http server needs a post function (the event loop)");
	std::unique_ptr<HttpServer> self(new HttpServer());
	self->impl_ = std::make_unique<Impl>();
	Impl &impl = *self->impl_;
	impl.options = options;
	impl.post = std::move(post);
	impl.shared = std::make_shared<LoopShared>();
	impl.shared->backend = std::move(backend);

	if (!options.tokenFile.empty()) {
		auto token = readTokenFile(options.tokenFile);
		if (!token)
			return token.error();
		if (!digest(token.value(), impl.tokenDigest))
			return makeError(-EIO, "cannot hash the http token");
		impl.tokenSet = true;
	}

	if (options.tlsCert.empty() != options.tlsKey.empty())
		return makeError(-EINVAL, "http: tls_cert and tls_key go together (both or neither)");
	if (!options.tlsCert.empty()) {
		for (const std::string &f : { options.tlsCert, options.tlsKey })
			if (access(f.c_str(), R_OK) < 0)
				return makeError(-errno, errnoMessage("http TLS file " + f, -errno));
		auto ssl = std::make_unique<httplib::SSLServer>(options.tlsCert.c_str(), options.tlsKey.c_str());
		if (!ssl->is_valid())
			return makeError(-EINVAL, "http: cannot load the TLS certificate " + options.tlsCert + " and key " +
							  options.tlsKey + " (PEM, matching pair?)");
		impl.server = std::move(ssl);
		self->tls_ = true;
	} else {
		impl.server = std::make_unique<httplib::Server>();
	}

	httplib::Server &s = *impl.server;
	size_t threads = std::max<size_t>(options.threads, 1);
	s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
	auto secUsec = [](std::chrono::milliseconds ms) {
		return std::make_pair(static_cast<time_t>(ms.count() / 1000), static_cast<time_t>(ms.count() % 1000 * 1000));
	};
	auto [rs, ru] = secUsec(options.readTimeout);
	auto [ws, wu] = secUsec(options.writeTimeout);
	s.set_read_timeout(rs, ru);
	s.set_write_timeout(ws, wu);
	s.set_keep_alive_timeout(options.keepAlive.count());
	s.set_keep_alive_max_count(100);
	s.set_payload_max_length(options.maxBody);
	impl.routes();

	int port;
	if (options.port == 0) {
		port = s.bind_to_any_port(options.listen);
	} else {
		port = options.port;
		if (!s.bind_to_port(options.listen, options.port))
			port = -1;
	}
	if (port <= 0)
		return makeError(-EADDRNOTAVAIL, "http: cannot listen on " + options.listen + " port " +
							 std::to_string(options.port) +
							 " (address not local, or port in use?)");
	self->port_ = static_cast<uint16_t>(port);
	impl.listener = std::thread([&impl] {
		impl.server->listen_after_bind();
		impl.listenerDone = true;
	});
	/*
	 * httplib's stop() is a no-op until the listener runs, so destroying us before
	 * would hang the join: wait until it runs, or has already given up.
	 */
	while (!s.is_running() && !impl.listenerDone)
		std::this_thread::sleep_for(std::chrono::milliseconds(1));
	if (impl.listenerDone) {
		impl.listener.join();
		return makeError(-EIO, "http: the listener stopped at once");
	}
	logInfo(kLog, "listening on {}://{}:{}{}", self->tls_ ? "https" : "http", options.listen, self->port_,
		impl.tokenSet ? "" : " (admin actions disabled: no token file)");
	return self;
}

HttpServer::~HttpServer()
{
	if (!impl_)
		return;
	impl_->stopping = true;
	impl_->shared->alive = false;
	if (impl_->server)
		impl_->server->stop();
	if (impl_->listener.joinable())
		impl_->listener.join();
}

} /* namespace sk */
