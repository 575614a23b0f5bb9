/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Interface checker: rtnetlink link events through LinkMonitor, no polling.
 * Failed while the link is absent or not usable (admin down, no carrier,
 * operstate not up); one event is enough either way.
 */
#include <fmt/format.h>

#include "checkers/checker_types.h"
#include "core/log.h"
#include "net/link_monitor.h"

namespace sk {

namespace {

const LogCategory kLog("checker");

/* Until the first dump completes, a missing interface may just not be listed yet. */
constexpr std::chrono::milliseconds kSyncRecheck{ 50 };

class InterfaceChecker : public Checker
{
public:
	InterfaceChecker(EventLoop &loop, const CheckerConfig &config, uint32_t n) : Checker(loop, config, n) {}
	~InterfaceChecker() override { stopWatching(); }

protected:
	bool polled() const override { return false; }
	void beginCheck() override {}
	void cancelCheck() override {}

	void startWatching() override
	{
		lastVerdict_.clear();
		auto monitor = net::LinkMonitor::create(loop_, [this](const net::LinkState &s) { onLink(s); });
		if (!monitor.ok()) {
			std::string why = "cannot watch links: " + monitor.error().message;
			logError(kLog, "{}/interface: {}", config_.name, why);
			/* Deferred: no callback from inside start(). */
			timer_ = loop_.addTimer(std::chrono::milliseconds(0), [this, why] {
				timer_ = 0;
				record(false, why);
			});
			return;
		}
		monitor_ = std::move(monitor.value());
		timer_ = loop_.addTimer(kSyncRecheck, [this] { waitSync(); });
	}

	void stopWatching() override
	{
		if (timer_)
			loop_.cancelTimer(timer_);
		timer_ = 0;
		monitor_.reset();
	}

private:
	void waitSync()
	{
		timer_ = 0;
		if (!monitor_)
			return;
		if (!monitor_->synced()) {
			timer_ = loop_.addTimer(kSyncRecheck, [this] { waitSync(); });
			return;
		}
		evaluate();
	}

	void onLink(const net::LinkState &s)
	{
		if (s.name == config_.interface || (ifindex_ && s.ifindex == ifindex_))
			evaluate();
	}

	void evaluate()
	{
		if (!monitor_)
			return;
		const net::LinkState *s = monitor_->table().find(config_.interface);
		if (!s && !monitor_->synced())
			return;	/* not listed yet */
		bool ok = false;
		std::string detail;
		if (!s || s->removed) {
			ifindex_ = 0;
			detail = fmt::format("interface {} not present", config_.interface);
		} else {
			ifindex_ = s->ifindex;
			ok = s->usable();
			if (ok)
				detail = fmt::format("interface {} is up", config_.interface);
			else if (!s->adminUp())
				detail = fmt::format("interface {} is administratively down", config_.interface);
			else if (!s->lowerUp())
				detail = fmt::format("interface {} has no carrier", config_.interface);
			else
				detail = fmt::format("interface {} is not usable (operstate {})", config_.interface,
						     net::operStateName(s->operState));
		}
		/* The kernel repeats RTM_NEWLINK for other reasons: count verdict changes only. */
		if (detail == lastVerdict_)
			return;
		lastVerdict_ = detail;
		record(ok, detail);
	}

	std::unique_ptr<net::LinkMonitor> monitor_;
	EventLoop::TimerId timer_ = 0;
	int ifindex_ = 0;
	std::string lastVerdict_;
};

} /* namespace */

std::unique_ptr<Checker> makeInterfaceChecker(EventLoop &loop, const CheckerConfig &config,
					      uint32_t failuresToDeclare)
{
	return std::make_unique<InterfaceChecker>(loop, config, failuresToDeclare);
}

} /* namespace sk */
