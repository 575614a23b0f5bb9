/* SPDX-License-Identifier: Apache-2.0 */
/*
 * HttpServer against a fake backend on 127.0.0.1 (ephemeral port), with a real
 * EventLoop on its own thread: routes, status codes, bearer token, request
 * limits, timeouts, TLS, and that the backend only ever runs on the loop thread.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <httplib.h>
#include <nlohmann/json.hpp>

#include "api/http.h"
#include "core/event_loop.h"

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

const char *kToken = "s3cret-token-0123456789abcdef";

struct TempDir {
	fs::path path;
	TempDir()
	{
		char tmpl[] = "/tmp/sk-http-test-XXXXXX";
		REQUIRE(mkdtemp(tmpl) != nullptr);
		path = tmpl;
	}
	~TempDir()
	{
		std::error_code ec;
		fs::remove_all(path, ec);
	}
	std::string write(const std::string &name, const std::string &text, mode_t mode)
	{
		fs::path p = path / name;
		std::ofstream(p) << text;
		chmod(p.c_str(), mode);
		return p.string();
	}
};

/* A fake skd: a real EventLoop on a thread, and a backend that records its calls. */
struct Fixture {
	std::unique_ptr<sk::EventLoop> loop;
	std::thread loopThread;
	std::thread::id loopId;
	TempDir dir;

	std::mutex lock;
	std::vector<json> actions;		/* {action, module, origin} */
	std::atomic<int> statusCalls{ 0 };
	std::atomic<int> offLoopCalls{ 0 };	/* backend calls not on the loop thread: must stay 0 */
	bool actionFails = false;
	bool actionNeverReplies = false;
	json statusDoc = {
		{ "schema", "sk.status/1" },
		{ "version", "0.1.0" },
		{ "cluster", "c1" },
		{ "node", { { "name", "n1" }, { "id", 1 } } },
		{ "modules", json::array({ { { "name", "db" }, { "type", "mirror" }, { "state", "PRIM" } },
					   { { "name", "web" }, { "type", "farm" }, { "state", "WAIT" } } }) },
	};

	Fixture()
	{
		auto l = sk::EventLoop::create();
		REQUIRE_MESSAGE(l.ok(), "event loop: ", l.ok() ? "" : l.error().message);
		loop = std::move(l.value());
		loopThread = std::thread([this] {
			loopId = std::this_thread::get_id();
			/* Keeps run() busy-free but alive until stop(). */
			loop->addPeriodic(std::chrono::milliseconds(1000), [] {});
			loop->run();
		});
		while (loopId == std::thread::id())
			std::this_thread::yield();
	}

	~Fixture()
	{
		loop->post([this] { loop->stop(); });
		loopThread.join();
	}

	void onLoop()
	{
		if (std::this_thread::get_id() != loopId)
			offLoopCalls++;
	}

	sk::HttpBackend backend()
	{
		sk::HttpBackend b;
		b.status = [this] {
			onLoop();
			statusCalls++;
			return statusDoc;
		};
		b.serving = [this](const std::string &module) -> std::optional<bool> {
			onLoop();
			for (const json &m : statusDoc["modules"])
				if (m["name"] == module)
					return m["state"] == "PRIM" || m["state"] == "ALONE" || m["state"] == "UP";
			return std::nullopt;
		};
		b.action = [this](const std::string &action, const std::string &module, const std::string &origin,
				  std::function<void(sk::Result<json>)> reply) {
			onLoop();
			{
				std::lock_guard<std::mutex> g(lock);
				actions.push_back({ { "action", action }, { "module", module }, { "origin", origin } });
			}
			if (actionNeverReplies)
				return;
			if (actionFails)
				reply(sk::makeError(-EBUSY, module + ": " + action + " refused: peer not in sync"));
			else
				reply(json{ { "module", module }, { "command", action } });
		};
		return b;
	}

	sk::HttpPostFn post()
	{
		return [this](std::function<void()> cb) { loop->post(std::move(cb)); };
	}

	sk::HttpServerOptions options(bool withToken = true)
	{
		sk::HttpServerOptions o;
		o.listen = "127.0.0.1";
		o.port = 0;
		o.maxBody = 4096;
		o.readTimeout = std::chrono::milliseconds(500);
		o.loopTimeout = std::chrono::milliseconds(2000);
		o.actionTimeout = std::chrono::milliseconds(2000);
		if (withToken)
			o.tokenFile = dir.write("token", std::string(kToken) + "\n", 0600);
		o.consoleDir = SK_CONSOLE_SRC_DIR;
		return o;
	}

	std::unique_ptr<sk::HttpServer> start(const sk::HttpServerOptions &o)
	{
		auto s = sk::HttpServer::create(o, backend(), post());
		REQUIRE_MESSAGE(s.ok(), "HttpServer::create: ", s.ok() ? "" : s.error().message);
		return std::move(s.value());
	}

	size_t actionCount()
	{
		std::lock_guard<std::mutex> g(lock);
		return actions.size();
	}
};

/* Connects a raw TCP socket to 127.0.0.1:port. */
int rawConnect(uint16_t port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(fd >= 0);
	sockaddr_in a{};
	a.sin_family = AF_INET;
	a.sin_port = htons(port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	REQUIRE(connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) == 0);
	return fd;
}

/* Reads until the peer closes or limitMs passes; returns what came and whether it closed. */
std::pair<std::string, bool> readUntilClose(int fd, int limitMs)
{
	std::string got;
	auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limitMs);
	while (std::chrono::steady_clock::now() < deadline) {
		pollfd p{ fd, POLLIN, 0 };
		if (poll(&p, 1, 100) <= 0)
			continue;
		char buf[4096];
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		if (n <= 0)
			return { got, true };
		got.append(buf, n);
	}
	return { got, false };
}

std::string bearer(const std::string &t)
{
	return "Bearer " + t;
}

} /* namespace */

TEST_CASE("GET /api/v1/status returns the document, with CORS, from the loop thread")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	auto r = c.Get("/api/v1/status");
	REQUIRE(r);
	CHECK(r->status == 200);
	CHECK(r->get_header_value("Content-Type") == "application/json");
	CHECK(r->get_header_value("Access-Control-Allow-Origin") == "*");
	json j = json::parse(r->body);
	CHECK(j["schema"] == "sk.status/1");
	CHECK(j["node"]["name"] == "n1");
	CHECK(j["modules"].size() == 2);
	CHECK(f.statusCalls == 1);
	CHECK(f.offLoopCalls == 0);

	/* CORS only on the status document. */
	auto m = c.Get("/metrics");
	REQUIRE(m);
	CHECK(m->get_header_value("Access-Control-Allow-Origin") == "");
}

TEST_CASE("GET /metrics is Prometheus text 0.0.4 rendered from the status")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	auto r = c.Get("/metrics");
	REQUIRE(r);
	CHECK(r->status == 200);
	CHECK(r->get_header_value("Content-Type") == "text/plain; version=0.0.4; charset=utf-8");
	CHECK(r->body.find("sk_module_state{module=\"db\",state=\"PRIM\"} 1\n") != std::string::npos);
	CHECK(r->body.find("# TYPE sk_module_state gauge\n") != std::string::npos);
	CHECK(f.offLoopCalls == 0);
}

TEST_CASE("GET /health/<module>: 200 serving, 503 not serving, 404 unknown")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	auto prim = c.Get("/health/db");
	REQUIRE(prim);
	CHECK(prim->status == 200);
	CHECK(prim->body == "serving\n");
	auto wait = c.Get("/health/web");
	REQUIRE(wait);
	CHECK(wait->status == 503);
	auto none = c.Get("/health/nosuch");
	REQUIRE(none);
	CHECK(none->status == 404);
	CHECK(f.offLoopCalls == 0);
}

TEST_CASE("actions need the bearer token: 401 and nothing done without it")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());

	auto none = c.Post("/api/v1/modules/db/swap");
	REQUIRE(none);
	CHECK(none->status == 401);
	CHECK(none->get_header_value("WWW-Authenticate").rfind("Bearer", 0) == 0);

	auto wrong = c.Post("/api/v1/modules/db/swap", { { "Authorization", bearer("s3cret-token-0123456789abcdeX") } }, "",
			    "text/plain");
	REQUIRE(wrong);
	CHECK(wrong->status == 401);
	auto prefix = c.Post("/api/v1/modules/db/swap", { { "Authorization", bearer("s3cret") } }, "", "text/plain");
	REQUIRE(prefix);
	CHECK(prefix->status == 401);
	auto basic = c.Post("/api/v1/modules/db/swap", { { "Authorization", std::string("Basic ") + kToken } }, "",
			    "text/plain");
	REQUIRE(basic);
	CHECK(basic->status == 401);
	CHECK(f.actionCount() == 0);

	auto ok = c.Post("/api/v1/modules/db/swap", { { "Authorization", bearer(kToken) } }, "", "text/plain");
	REQUIRE(ok);
	CHECK(ok->status == 200);
	CHECK(json::parse(ok->body)["result"]["command"] == "swap");
	REQUIRE(f.actionCount() == 1);
	CHECK(f.actions[0]["action"] == "swap");
	CHECK(f.actions[0]["module"] == "db");
	CHECK(f.actions[0]["origin"].get<std::string>().rfind("127.0.0.1:", 0) == 0);
	CHECK(f.offLoopCalls == 0);
}

TEST_CASE("every admin action is accepted; unknown actions are 404 and not run")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	httplib::Headers auth{ { "Authorization", bearer(kToken) } };
	for (const char *a : { "start", "stop", "swap", "prim", "second", "restart" }) {
		auto r = c.Post((std::string("/api/v1/modules/db/") + a).c_str(), auth, "", "text/plain");
		REQUIRE(r);
		CHECK_MESSAGE(r->status == 200, a);
	}
	CHECK(f.actionCount() == 6);
	auto bad = c.Post("/api/v1/modules/db/primforce", auth, "", "text/plain");
	REQUIRE(bad);
	CHECK(bad->status == 404);
	CHECK(f.actionCount() == 6);
}

TEST_CASE("a refused action is 409 with the module's reason")
{
	Fixture f;
	f.actionFails = true;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	auto r = c.Post("/api/v1/modules/db/swap", { { "Authorization", bearer(kToken) } }, "", "text/plain");
	REQUIRE(r);
	CHECK(r->status == 409);
	CHECK(json::parse(r->body)["error"] == "db: swap refused: peer not in sync");
}

TEST_CASE("without a token file actions are disabled (403); a group-readable token file is refused")
{
	Fixture f;
	auto s = f.start(f.options(false));
	httplib::Client c("127.0.0.1", s->port());
	auto r = c.Post("/api/v1/modules/db/stop", { { "Authorization", bearer(kToken) } }, "", "text/plain");
	REQUIRE(r);
	CHECK(r->status == 403);
	CHECK(f.actionCount() == 0);

	sk::HttpServerOptions o = f.options(false);
	o.tokenFile = f.dir.write("token644", std::string(kToken) + "\n", 0644);
	auto bad = sk::HttpServer::create(o, f.backend(), f.post());
	REQUIRE(!bad.ok());
	CHECK(bad.error().code == -EPERM);
	o.tokenFile = f.dir.write("short", "abc\n", 0600);
	auto shortToken = sk::HttpServer::create(o, f.backend(), f.post());
	REQUIRE(!shortToken.ok());
	CHECK(shortToken.error().code == -EINVAL);
}

TEST_CASE("a POST without Content-Length (curl -X POST) has no body and is served")
{
	Fixture f;
	auto s = f.start(f.options());
	int fd = rawConnect(s->port());
	std::string req = std::string("POST /api/v1/modules/db/stop HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ") +
			  kToken + "\r\nConnection: close\r\n\r\n";
	REQUIRE(send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size()));
	auto [got, closed] = readUntilClose(fd, 10000);
	close(fd);
	CHECK(got.substr(0, 12) == "HTTP/1.1 200");
	CHECK(f.actionCount() == 1);

	/* A small body is read and ignored. */
	httplib::Client c("127.0.0.1", s->port());
	auto r = c.Post("/api/v1/modules/db/start", { { "Authorization", bearer(kToken) } }, "{}", "application/json");
	REQUIRE(r);
	CHECK(r->status == 200);
	CHECK(f.actionCount() == 2);
}

TEST_CASE("an oversized body is 413 and the action is not run")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	std::string big(64 * 1024, 'x');
	auto r = c.Post("/api/v1/modules/db/stop", { { "Authorization", bearer(kToken) } }, big, "text/plain");
	REQUIRE(r);
	CHECK(r->status == 413);
	CHECK(f.actionCount() == 0);
}

TEST_CASE("malformed requests are 400, unknown paths 404")
{
	Fixture f;
	auto s = f.start(f.options());
	int fd = rawConnect(s->port());
	std::string garbage = "THIS IS NOT HTTP\r\n\r\n";
	REQUIRE(send(fd, garbage.data(), garbage.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(garbage.size()));
	auto [got, closed] = readUntilClose(fd, 5000);
	close(fd);
	CHECK(got.rfind("HTTP/1.1 400", 0) == 0);

	httplib::Client c("127.0.0.1", s->port());
	for (const char *path : { "/nope", "/api/v1/statusx", "/api/v2/status", "/health/", "/console/nosuch.js",
				  "/console/../../etc/passwd" }) {
		auto r = c.Get(path);
		REQUIRE(r);
		CHECK_MESSAGE((r->status == 404 || r->status == 400), path, " got ", r->status);
	}
	auto put = c.Put("/api/v1/status", "", "text/plain");
	REQUIRE(put);
	CHECK(put->status == 404);
	CHECK(f.statusCalls == 0);
}

TEST_CASE("a partial (slow-loris) request is dropped after the read timeout")
{
	Fixture f;
	auto s = f.start(f.options());
	int fd = rawConnect(s->port());
	std::string partial = "GET /api/v1/status HTTP/1.1\r\nHost: x\r\n";
	REQUIRE(send(fd, partial.data(), partial.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(partial.size()));
	/* Bounded wait, far above the 500 ms read timeout: a server that never drops it fails here. */
	auto [got, closed] = readUntilClose(fd, 10000);
	close(fd);
	CHECK(closed);
	CHECK(got.find(" 200 ") == std::string::npos);
	CHECK(f.statusCalls == 0);
}

TEST_CASE("a loop that does not answer gives 503, not a hang")
{
	Fixture f;
	sk::HttpServerOptions o = f.options();
	o.loopTimeout = std::chrono::milliseconds(300);
	o.actionTimeout = std::chrono::milliseconds(300);
	/* A post function that loses the work: the loop never runs it. */
	auto s = sk::HttpServer::create(o, f.backend(), [](std::function<void()>) {});
	REQUIRE(s.ok());
	httplib::Client c("127.0.0.1", s.value()->port());
	auto r = c.Get("/api/v1/status");
	REQUIRE(r);
	CHECK(r->status == 503);
	auto h = c.Get("/health/db");
	REQUIRE(h);
	CHECK(h->status == 503);
	auto a = c.Post("/api/v1/modules/db/swap", { { "Authorization", bearer(kToken) } }, "", "text/plain");
	REQUIRE(a);
	CHECK(a->status == 503);
}

TEST_CASE("destroying the server while an action waits does not hang; the late reply is harmless")
{
	Fixture f;
	f.actionNeverReplies = true;
	sk::HttpServerOptions o = f.options();
	o.actionTimeout = std::chrono::milliseconds(30000);
	auto s = f.start(o);
	uint16_t port = s->port();
	std::thread client([port] {
		httplib::Client c("127.0.0.1", port);
		c.set_read_timeout(20, 0);
		auto r = c.Post("/api/v1/modules/db/swap", { { "Authorization", bearer(kToken) } }, "", "text/plain");
		/* Either the 503 made it out before the socket closed, or the connection was cut. */
		CHECK((!r || r->status == 503));
	});
	for (int i = 0; i < 500 && f.actionCount() == 0; i++)
		std::this_thread::sleep_for(std::chrono::milliseconds(10));
	REQUIRE(f.actionCount() == 1);
	s.reset();
	client.join();
}

TEST_CASE("the console is served at / and /console/")
{
	Fixture f;
	auto s = f.start(f.options());
	httplib::Client c("127.0.0.1", s->port());
	auto root = c.Get("/");
	REQUIRE(root);
	CHECK(root->status == 200);
	CHECK(root->get_header_value("Content-Type") == "text/html; charset=utf-8");
	CHECK(root->body.find("/console/app.js") != std::string::npos);
	auto js = c.Get("/console/app.js");
	REQUIRE(js);
	CHECK(js->status == 200);
	CHECK(js->get_header_value("Content-Type").find("javascript") != std::string::npos);
	auto css = c.Get("/console/style.css");
	REQUIRE(css);
	CHECK(css->status == 200);
}

TEST_CASE("TLS: https with a certificate; a bad certificate is refused at create")
{
	Fixture f;
	std::string cert = (f.dir.path / "cert.pem").string(), key = (f.dir.path / "key.pem").string();
	std::string cmd = "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout " + key +
			  " -out " + cert + " >/dev/null 2>&1";
	REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "openssl could not make a test certificate");
	sk::HttpServerOptions o = f.options();
	o.tlsCert = cert;
	o.tlsKey = key;
	auto s = f.start(o);
	CHECK(s->tls());
	httplib::SSLClient c("127.0.0.1", s->port());
	c.enable_server_certificate_verification(false);
	auto r = c.Get("/health/db");
	REQUIRE(r);
	CHECK(r->status == 200);
	/* Plain HTTP to the TLS port does not get the document. */
	httplib::Client plain("127.0.0.1", s->port());
	auto p = plain.Get("/health/db");
	CHECK((!p || p->status != 200));

	o.tlsKey = f.dir.write("bad.pem", "not a key\n", 0600);
	auto bad = sk::HttpServer::create(o, f.backend(), f.post());
	CHECK(!bad.ok());
	o.tlsKey = "";
	auto half = sk::HttpServer::create(o, f.backend(), f.post());
	CHECK(!half.ok());
}
