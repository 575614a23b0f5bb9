/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tcp and ping checkers: one Probe (TCP connect / ICMP echo) per interval, bounded
 * by the checker's timeout inside the probe itself, so a dead peer costs a timer,
 * never a blocked loop.
 */
#include <fmt/format.h>

#include "checkers/checker_types.h"
#include "checkers/probe.h"

namespace sk {

namespace {

class ProbeChecker : public Checker
{
public:
	ProbeChecker(EventLoop &loop, const CheckerConfig &config, uint32_t n, bool tcp)
		: Checker(loop, config, n), tcp_(tcp)
	{
	}
	~ProbeChecker() override { probe_.reset(); }

protected:
	void beginCheck() override
	{
		std::chrono::milliseconds timeout(config_.timeoutMs);
		auto done = [this](const ProbeReport &r) {
			/* Probe reports from a timer holding its own copy of this callback: safe to free. */
			probe_.reset();
			std::string target = tcp_ ? fmt::format("{}:{}", config_.address, config_.port)
						  : config_.address;
			if (r.reachable)
				finishCheck(true, fmt::format("{} answered in {} us", target, r.rtt.count()));
			else
				finishCheck(false, fmt::format("{} {}: {}", tcp_ ? "tcp" : "ping", target,
							       r.detail.empty() ? "unreachable" : r.detail));
		};
		if (tcp_)
			probe_ = Probe::tcp(loop_, config_.address, config_.port, timeout, done);
		else
			probe_ = Probe::icmp(loop_, config_.address, timeout, done);
	}
	void cancelCheck() override { probe_.reset(); }

private:
	bool tcp_;
	std::unique_ptr<Probe> probe_;
};

} /* namespace */

std::unique_ptr<Checker> makeTcpChecker(EventLoop &loop, const CheckerConfig &config, uint32_t failuresToDeclare)
{
	return std::make_unique<ProbeChecker>(loop, config, failuresToDeclare, true);
}

std::unique_ptr<Checker> makePingChecker(EventLoop &loop, const CheckerConfig &config, uint32_t failuresToDeclare)
{
	return std::make_unique<ProbeChecker>(loop, config, failuresToDeclare, false);
}

} /* namespace sk */
