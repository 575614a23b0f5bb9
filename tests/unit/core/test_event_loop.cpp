/* SPDX-License-Identifier: Apache-2.0 */
/* EventLoop: timers fire in order, cancel works, fd watches, posts, signals. */
#include <doctest/doctest.h>

#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <thread>
#include <vector>

#include "core/event_loop.h"

using namespace std::chrono_literals;
using sk::EventLoop;

TEST_CASE("timers fire in deadline order and cancelled timers never fire")
{
	auto loop = EventLoop::create();
	REQUIRE(loop.ok());
	EventLoop &l = **loop;
	std::vector<int> fired;
	l.addTimer(30ms, [&] { fired.push_back(3); });
	l.addTimer(10ms, [&] { fired.push_back(1); });
	auto cancelled = l.addTimer(20ms, [&] { fired.push_back(2); });
	l.cancelTimer(cancelled);
	l.addTimer(40ms, [&] { l.stop(); });
	CHECK(l.run() == 0);
	CHECK(fired == std::vector<int>{ 1, 3 });
}

TEST_CASE("periodic timer repeats until cancelled")
{
	auto loop = EventLoop::create();
	REQUIRE(loop.ok());
	EventLoop &l = **loop;
	int count = 0;
	EventLoop::TimerId id = 0;
	id = l.addPeriodic(5ms, [&] {
		if (++count == 4) {
			l.cancelTimer(id);
			l.addTimer(20ms, [&] { l.stop(); });
		}
	});
	CHECK(l.run() == 0);
	CHECK(count == 4);
}

TEST_CASE("fd watch reports readability and unwatch stops it")
{
	auto loop = EventLoop::create();
	REQUIRE(loop.ok());
	EventLoop &l = **loop;
	int fds[2];
	REQUIRE(pipe(fds) == 0);
	int reads = 0;
	EventLoop::WatchId w = 0;
	w = l.watchFd(fds[0], POLLIN, [&](uint32_t ev) {
		CHECK((ev & POLLIN) != 0);
		char buf[16];
		CHECK(read(fds[0], buf, sizeof(buf)) > 0);
		if (++reads == 2) {
			l.unwatch(w);
			/* Written after unwatch: must not be reported. */
			CHECK(write(fds[1], "z", 1) == 1);
			l.addTimer(30ms, [&] { l.stop(); });
		}
	});
	l.addTimer(5ms, [&] { CHECK(write(fds[1], "x", 1) == 1); });
	l.addTimer(15ms, [&] { CHECK(write(fds[1], "y", 1) == 1); });
	CHECK(l.run() == 0);
	CHECK(reads == 2);
	close(fds[0]);
	close(fds[1]);
}

TEST_CASE("post from another thread runs on the loop")
{
	auto loop = EventLoop::create();
	REQUIRE(loop.ok());
	EventLoop &l = **loop;
	std::thread::id loopThread = std::this_thread::get_id();
	bool ran = false;
	std::thread t([&] {
		l.post([&] {
			ran = std::this_thread::get_id() == loopThread;
			l.stop();
		});
	});
	l.addTimer(2000ms, [&] { l.stop(); });
	CHECK(l.run() == 0);
	t.join();
	CHECK(ran);
}

TEST_CASE("signals arrive through the loop")
{
	auto loop = EventLoop::create();
	REQUIRE(loop.ok());
	EventLoop &l = **loop;
	int got = 0;
	REQUIRE(l.watchSignal(SIGUSR1, [&] {
		got++;
		l.stop();
	}) == 0);
	l.addTimer(5ms, [] { kill(getpid(), SIGUSR1); });
	l.addTimer(2000ms, [&] { l.stop(); });
	CHECK(l.run() == 0);
	CHECK(got == 1);
}
