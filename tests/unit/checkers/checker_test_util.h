/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Helpers shared by the checker tests: run a loop until a condition holds (bounded),
 * record a checker's state changes, build configs.
 */
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#include "checkers/checker.h"
#include "core/event_loop.h"

namespace sk::test {

using namespace std::chrono_literals;

/* Runs the loop until pred() holds or limit passes; returns pred(). Never hangs. */
inline bool runUntil(EventLoop &loop, const std::function<bool()> &pred, std::chrono::milliseconds limit)
{
	if (pred())
		return true;
	auto deadline = loop.addTimer(limit, [&] { loop.stop(); });
	auto poll = loop.addPeriodic(10ms, [&] {
		if (pred())
			loop.stop();
	});
	int rc = loop.run();
	loop.cancelTimer(deadline);
	loop.cancelTimer(poll);
	REQUIRE(rc == 0);
	return pred();
}

/* Runs the loop for a fixed time (to show that something does NOT happen). */
inline void runFor(EventLoop &loop, std::chrono::milliseconds d)
{
	auto t = loop.addTimer(d, [&] { loop.stop(); });
	REQUIRE(loop.run() == 0);
	loop.cancelTimer(t);
}

/* "unknown->ok ok->failed ..." in order (a string, so a failed CHECK prints it). */
struct Transitions {
	std::string seen;
	void attach(Checker &c)
	{
		c.setStateCallback([this](Checker &, CheckerState from, CheckerState to) {
			seen += std::string(seen.empty() ? "" : " ") + checkerStateName(from) + "->" + checkerStateName(to);
		});
	}
};

inline CheckerConfig baseConfig(const std::string &name, CheckerType type, uint32_t intervalMs = 100,
				uint32_t timeoutMs = 200)
{
	CheckerConfig c;
	c.name = name;
	c.type = type;
	c.intervalMs = intervalMs;
	c.timeoutMs = timeoutMs;
	return c;
}

} /* namespace sk::test */
