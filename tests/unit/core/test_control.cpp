/* SPDX-License-Identifier: Apache-2.0 */
/* Control socket: requests, malformed input, size limit, deferred replies, 0600 mode. */
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <thread>

#include "api/control.h"
#include "core/event_loop.h"

using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::string tempSocketPath()
{
	char dir[] = "/tmp/sk-ctl-test-XXXXXX";
	REQUIRE(mkdtemp(dir) != nullptr);
	return std::string(dir) + "/skd.sock";
}

/* Sends raw bytes and returns the first reply line (or "" on close). */
std::string rawExchange(const std::string &path, const std::string &bytes)
{
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	sockaddr_un addr{};
	addr.sun_family = AF_UNIX;
	snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
	if (connect(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0) {
		close(fd);
		return "connect failed";
	}
	size_t off = 0;
	while (off < bytes.size()) {
		ssize_t n = send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
		if (n <= 0)
			break;
		off += static_cast<size_t>(n);
	}
	std::string in;
	char buf[4096];
	while (in.find('\n') == std::string::npos) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n <= 0)
			break;
		in.append(buf, static_cast<size_t>(n));
	}
	close(fd);
	return in.substr(0, in.find('\n'));
}

struct Fixture {
	std::unique_ptr<sk::EventLoop> loop;
	std::unique_ptr<sk::ControlServer> server;
	std::string path = tempSocketPath();
	std::thread thread;

	Fixture()
	{
		auto l = sk::EventLoop::create();
		REQUIRE(l.ok());
		loop = std::move(l.value());
		auto s = sk::ControlServer::create(loop.get(), path);
		REQUIRE(s.ok());
		server = std::move(s.value());
		server->handle("echo", [](const json &req, sk::ControlResponder reply) {
			reply(json{ { "echo", req.value("text", "") } });
		});
		server->handle("fail", [](const json &, sk::ControlResponder reply) {
			reply(sk::makeError(-EBUSY, "cannot do that: busy"));
		});
		server->handle("later", [this](const json &, sk::ControlResponder reply) {
			loop->addTimer(20ms, [reply] { reply(json("done")); });
		});
	}

	void start()
	{
		thread = std::thread([this] { loop->run(); });
	}

	~Fixture()
	{
		if (thread.joinable()) {
			loop->post([this] { loop->stop(); });
			thread.join();
		}
		server.reset();
		std::string dir = path.substr(0, path.rfind('/'));
		rmdir(dir.c_str());
	}
};

} /* namespace */

TEST_CASE("control socket is created with mode 0600")
{
	Fixture f;
	struct stat st;
	REQUIRE(stat(f.path.c_str(), &st) == 0);
	CHECK(S_ISSOCK(st.st_mode));
	CHECK((st.st_mode & 0777) == 0600);
}

TEST_CASE("requests get replies; errors carry the handler's message")
{
	Fixture f;
	f.start();
	auto r = sk::controlRequest(f.path, json{ { "cmd", "echo" }, { "text", "hi" } }, 2000);
	REQUIRE(r.ok());
	CHECK(r.value()["echo"] == "hi");

	auto e = sk::controlRequest(f.path, json{ { "cmd", "fail" } }, 2000);
	REQUIRE_FALSE(e.ok());
	CHECK(e.error().message == "cannot do that: busy");

	auto u = sk::controlRequest(f.path, json{ { "cmd", "nope" } }, 2000);
	REQUIRE_FALSE(u.ok());
	CHECK(u.error().message == "unknown command \"nope\"");

	auto d = sk::controlRequest(f.path, json{ { "cmd", "later" } }, 2000);
	REQUIRE(d.ok());
	CHECK(d.value() == "done");
}

TEST_CASE("malformed and oversized requests get an error reply and the server survives")
{
	Fixture f;
	f.start();
	CHECK(rawExchange(f.path, "this is not json\n").find("malformed request") != std::string::npos);
	CHECK(rawExchange(f.path, "[1,2,3]\n").find("expected one JSON object") != std::string::npos);
	CHECK(rawExchange(f.path, "{\"cmd\": 5}\n").find("missing string field") != std::string::npos);
	std::string huge(sk::kControlMaxRequest + 10, 'x');
	CHECK(rawExchange(f.path, huge).find("request larger than") != std::string::npos);
	std::string binary("\x00\xff\xfe{\"cmd\"\n", 11);
	CHECK(rawExchange(f.path, binary).find("malformed request") != std::string::npos);
	/* Still serving after all of that. */
	auto r = sk::controlRequest(f.path, json{ { "cmd", "echo" }, { "text", "ok" } }, 2000);
	REQUIRE(r.ok());
	CHECK(r.value()["echo"] == "ok");
}

TEST_CASE("client reports a missing daemon clearly")
{
	auto r = sk::controlRequest("/tmp/sk-no-such-dir/skd.sock", json{ { "cmd", "status" } }, 500);
	REQUIRE_FALSE(r.ok());
	CHECK(r.error().message.find("skd is not running") != std::string::npos);
}

TEST_CASE("a second server on a live socket is refused, a stale socket is replaced")
{
	Fixture f;
	auto second = sk::ControlServer::create(f.loop.get(), f.path);
	REQUIRE_FALSE(second.ok());
	CHECK(second.error().message.find("already serving") != std::string::npos);
}
