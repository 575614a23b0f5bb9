/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CheckerPolicy unit tests: pure, time given as ticks (ms). Covers maxloop
 * escalation, the stable-period reset, `when` gating, wait/resume and none.
 */
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "checkers/policy.h"

using namespace sk;

namespace {

constexpr uint64_t kS = 1000;

PolicyConfig config(uint32_t maxLoop, uint64_t loopIntervalS)
{
	PolicyConfig c;
	c.maxLoop = maxLoop;
	c.loopIntervalMs = loopIntervalS * kS;
	return c;
}

/* Kinds of the decisions, as names, for readable expected-vs-got output. */
std::vector<std::string> kinds(const std::vector<PolicyDecision> &ds)
{
	std::vector<std::string> out;
	for (const auto &d : ds)
		out.push_back(decisionName(d.kind));
	return out;
}

using Kinds = std::vector<std::string>;

} /* namespace */

TEST_CASE("role gating: prim, both, always")
{
	CHECK(checkerActive(CheckerWhen::Prim, ModuleRole::Prim));
	CHECK(checkerActive(CheckerWhen::Prim, ModuleRole::Alone));
	CHECK(checkerActive(CheckerWhen::Prim, ModuleRole::Up));
	CHECK_FALSE(checkerActive(CheckerWhen::Prim, ModuleRole::Second));
	CHECK_FALSE(checkerActive(CheckerWhen::Prim, ModuleRole::Wait));
	CHECK_FALSE(checkerActive(CheckerWhen::Prim, ModuleRole::Prim, false));
	CHECK(checkerActive(CheckerWhen::Both, ModuleRole::Second));
	CHECK(checkerActive(CheckerWhen::Both, ModuleRole::Prim));
	CHECK_FALSE(checkerActive(CheckerWhen::Both, ModuleRole::Wait));
	CHECK(checkerActive(CheckerWhen::Always, ModuleRole::Wait));
	CHECK(checkerActive(CheckerWhen::Always, ModuleRole::Prim, false));
	CHECK_FALSE(checkerActive(CheckerWhen::Always, ModuleRole::Stop));
	for (const char *n : { "STOP", "WAIT", "ALONE", "PRIM", "SECOND", "UP" }) {
		auto r = parseModuleRole(n);
		REQUIRE(r.has_value());
		CHECK(std::string(roleName(*r)) == n);
	}
	CHECK_FALSE(parseModuleRole("prim").has_value());
}

TEST_CASE("restart: maxloop local restarts within loop_interval, then stopstart")
{
	CheckerPolicy p(config(3, 600));
	p.addChecker("app", CheckerWhen::Prim, CheckerAction::Restart);
	CHECK(p.setRole(ModuleRole::Prim, true, 0).empty());

	for (uint32_t i = 1; i <= 3; i++) {
		auto d = p.onFailed("app", "0 processes", i * 10 * kS);
		REQUIRE(kinds(d) == Kinds{ "restart" });
		CHECK(d[0].action() == CheckerAction::Restart);
		CHECK(d[0].checker == "app");
		CHECK(d[0].cause.find(std::to_string(i) + " of 3") != std::string::npos);
		CHECK(p.restartsUsed() == i);
		CHECK(p.onCleared("app", i * 10 * kS + 5 * kS).size() == 1);
	}
	auto d = p.onFailed("app", "0 processes", 40 * kS);
	REQUIRE(kinds(d) == Kinds{ "stopstart" });
	CHECK(d[0].action() == CheckerAction::StopStart);
	CHECK(d[0].cause.find("escalating to stopstart") != std::string::npos);
	CHECK(d[0].cause.find("0 processes") != std::string::npos);
	REQUIRE(p.lastDecision().has_value());
	CHECK(p.lastDecision()->kind == PolicyDecisionKind::StopStart);
	CHECK(p.status()["restarts_used"] == 3);
	CHECK(p.status()["last_decision"]["kind"] == "stopstart");
}

TEST_CASE("restart counters reset after a stable period with no failure")
{
	CheckerPolicy p(config(2, 100));
	p.addChecker("app", CheckerWhen::Prim, CheckerAction::Restart);
	(void)p.setRole(ModuleRole::Alone, true, 0);
	CHECK(kinds(p.onFailed("app", "x", 1 * kS)) == Kinds{ "restart" });
	(void)p.onCleared("app", 2 * kS);
	CHECK(kinds(p.onFailed("app", "x", 50 * kS)) == Kinds{ "restart" });
	(void)p.onCleared("app", 51 * kS);
	CHECK(p.restartsUsed() == 2);

	/* Quiet, but not for a full loop_interval since the last failure. */
	CHECK(p.tick(149 * kS).empty());
	CHECK(p.restartsUsed() == 2);
	auto r = p.tick(150 * kS);
	REQUIRE(kinds(r) == Kinds{ "report" });
	CHECK(r[0].cause.find("restart count reset") != std::string::npos);
	CHECK(p.restartsUsed() == 0);
	CHECK(p.tick(151 * kS).empty());

	/* A fresh budget: two restarts again before escalating. */
	CHECK(kinds(p.onFailed("app", "x", 200 * kS)) == Kinds{ "restart" });
	(void)p.onCleared("app", 201 * kS);
	CHECK(kinds(p.onFailed("app", "x", 202 * kS)) == Kinds{ "restart" });
	(void)p.onCleared("app", 203 * kS);
	CHECK(kinds(p.onFailed("app", "x", 204 * kS)) == Kinds{ "stopstart" });
}

TEST_CASE("restart window: a failure after the window has expired starts a new one")
{
	CheckerPolicy p(config(1, 100));
	p.addChecker("app", CheckerWhen::Prim, CheckerAction::Restart);
	(void)p.setRole(ModuleRole::Prim, true, 0);
	CHECK(kinds(p.onFailed("app", "x", 0)) == Kinds{ "restart" });
	(void)p.onCleared("app", 1 * kS);
	/* No tick ran (the driver was busy), but the window is over. */
	CHECK(kinds(p.onFailed("app", "x", 100 * kS)) == Kinds{ "restart" });
	(void)p.onCleared("app", 101 * kS);
	CHECK(kinds(p.onFailed("app", "x", 102 * kS)) == Kinds{ "stopstart" });
}

TEST_CASE("maxloop 0 escalates at once")
{
	CheckerPolicy p(config(0, 100));
	p.addChecker("app", CheckerWhen::Prim, CheckerAction::Restart);
	(void)p.setRole(ModuleRole::Prim, true, 0);
	CHECK(kinds(p.onFailed("app", "x", 1)) == Kinds{ "stopstart" });
}

TEST_CASE("when gating: failures of inactive checkers are reported, not acted on")
{
	CheckerPolicy p(config(3, 100));
	p.addChecker("app", CheckerWhen::Prim, CheckerAction::Restart);
	p.addChecker("disk", CheckerWhen::Both, CheckerAction::StopStart);
	p.addChecker("net", CheckerWhen::Always, CheckerAction::Wait);

	(void)p.setRole(ModuleRole::Second, true, 0);
	CHECK_FALSE(p.shouldRun("app"));
	CHECK(p.shouldRun("disk"));
	CHECK(p.shouldRun("net"));
	auto d = p.onFailed("app", "x", 1 * kS);
	REQUIRE(kinds(d) == Kinds{ "report" });
	CHECK(d[0].cause.find("ignored") != std::string::npos);
	CHECK(p.restartsUsed() == 0);
	CHECK(kinds(p.onFailed("disk", "disk full", 2 * kS)) == Kinds{ "report" });
	(void)p.onCleared("disk", 2 * kS);

	(void)p.setRole(ModuleRole::Stop, false, 3 * kS);
	CHECK_FALSE(p.shouldRun("net"));
	CHECK_FALSE(p.shouldRun("disk"));
	(void)p.setRole(ModuleRole::Wait, true, 4 * kS);
	CHECK(p.shouldRun("net"));
	CHECK_FALSE(p.shouldRun("disk"));

	/* App restarting on a serving node: prim checkers pause. */
	(void)p.setRole(ModuleRole::Prim, false, 5 * kS);
	CHECK_FALSE(p.shouldRun("app"));
	CHECK(kinds(p.onFailed("app", "starting", 6 * kS)) == Kinds{ "report" });
	(void)p.setRole(ModuleRole::Prim, true, 7 * kS);
	CHECK(p.shouldRun("app"));
}

TEST_CASE("a both checker already failed on the SECOND acts when the node starts serving")
{
	CheckerPolicy p(config(3, 100));
	p.addChecker("disk", CheckerWhen::Both, CheckerAction::Restart);
	(void)p.setRole(ModuleRole::Second, true, 0);
	/* On the SECOND there is nothing to restart: reported, not counted. */
	auto r = p.onFailed("disk", "disk full", 1 * kS);
	REQUIRE(kinds(r) == Kinds{ "report" });
	CHECK(r[0].cause.find("module is SECOND: nothing to restart") != std::string::npos);
	CHECK(p.restartsUsed() == 0);
	auto d = p.setRole(ModuleRole::Prim, true, 2 * kS);
	REQUIRE(kinds(d) == Kinds{ "restart" });
	CHECK(d[0].cause.find("still failing as the module becomes PRIM") != std::string::npos);
	CHECK(p.restartsUsed() == 1);
	/* Staying PRIM does not repeat it. */
	CHECK(p.setRole(ModuleRole::Prim, true, 3 * kS).empty());
}

TEST_CASE("wait: the module waits until the condition clears, then resume")
{
	CheckerPolicy p(config(3, 100));
	p.addChecker("gw", CheckerWhen::Prim, CheckerAction::Wait);
	p.addChecker("nfs", CheckerWhen::Prim, CheckerAction::Wait);
	(void)p.setRole(ModuleRole::Prim, true, 0);

	auto d = p.onFailed("gw", "ping 198.18.0.1: timeout", 1 * kS);
	REQUIRE(kinds(d) == Kinds{ "wait" });
	CHECK(d[0].action() == CheckerAction::Wait);
	CHECK(p.waiting());
	/* The driver puts the module in WAIT: the holder keeps running although when = prim. */
	(void)p.setRole(ModuleRole::Wait, true, 2 * kS);
	CHECK(p.shouldRun("gw"));
	CHECK_FALSE(p.shouldRun("nfs"));
	/* A repeated failure of the holder says nothing new. */
	CHECK(p.onFailed("gw", "timeout", 3 * kS).empty());

	auto r = p.onCleared("gw", 4 * kS);
	REQUIRE(kinds(r) == Kinds{ "resume" });
	CHECK(r[0].cause.find("condition cleared") != std::string::npos);
	CHECK_FALSE(p.waiting());
	CHECK_FALSE(p.shouldRun("gw"));
	CHECK(p.status()["waiting_on"].empty());
}

TEST_CASE("wait with two holders resumes only when both cleared; stop drops the wait")
{
	CheckerPolicy p(config(3, 100));
	p.addChecker("a", CheckerWhen::Always, CheckerAction::Wait);
	p.addChecker("b", CheckerWhen::Always, CheckerAction::Wait);
	(void)p.setRole(ModuleRole::Prim, true, 0);
	CHECK(kinds(p.onFailed("a", "x", 1)) == Kinds{ "wait" });
	(void)p.setRole(ModuleRole::Wait, true, 2);
	CHECK(kinds(p.onFailed("b", "y", 3)) == Kinds{ "wait" });
	CHECK(p.status()["waiting_on"] == nlohmann::json({ "a", "b" }));
	CHECK(kinds(p.onCleared("a", 4)) == Kinds{ "report" });
	CHECK(p.waiting());
	CHECK(kinds(p.onCleared("b", 5)) == Kinds{ "resume" });

	CHECK(kinds(p.onFailed("a", "x", 6)) == Kinds{ "wait" });
	auto s = p.setRole(ModuleRole::Stop, false, 7);
	CHECK(kinds(s) == Kinds{ "report" });
	CHECK_FALSE(p.waiting());
}

TEST_CASE("none: report only, no counters")
{
	CheckerPolicy p(config(1, 100));
	p.addChecker("info", CheckerWhen::Prim, CheckerAction::None);
	(void)p.setRole(ModuleRole::Prim, true, 0);
	for (int i = 0; i < 3; i++) {
		auto d = p.onFailed("info", "slow", uint64_t(i));
		REQUIRE(kinds(d) == Kinds{ "report" });
		CHECK_FALSE(d[0].action().has_value());
		CHECK(d[0].cause.find("action none") != std::string::npos);
	}
	CHECK(p.restartsUsed() == 0);
	CHECK(kinds(p.onCleared("info", 4)) == Kinds{ "report" });
	CHECK(p.onCleared("info", 5).empty());
}

TEST_CASE("stopstart acts at once; unknown checkers are reported")
{
	CheckerPolicy p(PolicyConfig::fromFailover(FailoverConfig{}));
	p.addChecker("vital", CheckerWhen::Prim, CheckerAction::StopStart);
	(void)p.setRole(ModuleRole::Up, true, 0);
	CHECK(kinds(p.onFailed("vital", "x", 1)) == Kinds{ "stopstart" });
	CHECK(kinds(p.onFailed("nosuch", "x", 2)) == Kinds{ "report" });
	CHECK(p.status()["loop_interval_ms"] == 86400000);
}
