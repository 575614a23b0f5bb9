/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rtnetlink link monitor: RTMGRP_LINK notifications plus a dump on start and
 * after overruns, folded into a LinkTable that filters out no-op updates.
 */
#include "net/link_monitor.h"

#include <cerrno>
#include <cstring>

#include <linux/if.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sys/socket.h>

#include <libmnl/libmnl.h>

#include "core/log.h"

namespace sk::net {

namespace {

LogCategory kLog("link");

/* Flags a checker decides on; others (PROMISC, ALLMULTI...) change often and mean nothing here. */
constexpr uint32_t kWatchedFlags = IFF_UP | IFF_RUNNING | IFF_LOWER_UP;
/* A dump of a few hundred links spans several datagrams of up to a page each. */
constexpr size_t kRecvBufferSize = 32768;
constexpr auto kDumpRetry = std::chrono::milliseconds(20);

struct LinkAttrs {
	const struct nlattr *tb[IFLA_MAX + 1] = {};
};

int collectLinkAttr(const struct nlattr *attr, void *data)
{
	auto *attrs = static_cast<LinkAttrs *>(data);
	if (mnl_attr_type_valid(attr, IFLA_MAX) < 0)
		return MNL_CB_OK;
	attrs->tb[mnl_attr_get_type(attr)] = attr;
	return MNL_CB_OK;
}

} /* namespace */

bool LinkState::adminUp() const
{
	return flags & IFF_UP;
}

bool LinkState::lowerUp() const
{
	return flags & IFF_LOWER_UP;
}

bool LinkState::usable() const
{
	return !removed && (flags & IFF_UP) && (flags & IFF_RUNNING) &&
	       (operState == IF_OPER_UP || operState == IF_OPER_UNKNOWN);
}

const char *operStateName(uint8_t operState)
{
	static const char *const kNames[] = {
		"unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up",
	};
	if (operState < std::size(kNames))
		return kNames[operState];
	return "invalid";
}

std::optional<LinkState> parseLinkMessage(const struct nlmsghdr *nlh)
{
	if (nlh->nlmsg_type != RTM_NEWLINK && nlh->nlmsg_type != RTM_DELLINK)
		return std::nullopt;
	if (mnl_nlmsg_get_payload_len(nlh) < sizeof(struct ifinfomsg))
		return std::nullopt;
	const auto *ifi = static_cast<const struct ifinfomsg *>(mnl_nlmsg_get_payload(nlh));
	LinkAttrs attrs;
	if (mnl_attr_parse(nlh, sizeof(struct ifinfomsg), collectLinkAttr, &attrs) < 0)
		return std::nullopt;
	LinkState s;
	s.ifindex = ifi->ifi_index;
	s.flags = ifi->ifi_flags;
	s.removed = nlh->nlmsg_type == RTM_DELLINK;
	if (attrs.tb[IFLA_IFNAME] && mnl_attr_validate(attrs.tb[IFLA_IFNAME], MNL_TYPE_NUL_STRING) >= 0)
		s.name = mnl_attr_get_str(attrs.tb[IFLA_IFNAME]);
	if (attrs.tb[IFLA_OPERSTATE] && mnl_attr_validate(attrs.tb[IFLA_OPERSTATE], MNL_TYPE_U8) >= 0)
		s.operState = mnl_attr_get_u8(attrs.tb[IFLA_OPERSTATE]);
	if (s.ifindex <= 0)
		return std::nullopt;
	return s;
}

bool LinkTable::apply(const LinkState &state)
{
	auto it = links_.find(state.ifindex);
	if (state.removed) {
		if (it == links_.end())
			return false;
		links_.erase(it);
		return true;
	}
	if (it == links_.end()) {
		links_.emplace(state.ifindex, state);
		return true;
	}
	LinkState &old = it->second;
	bool changed = old.name != state.name ||
		       (old.flags & kWatchedFlags) != (state.flags & kWatchedFlags) ||
		       old.operState != state.operState;
	old = state;
	return changed;
}

const LinkState *LinkTable::find(int ifindex) const
{
	auto it = links_.find(ifindex);
	return it == links_.end() ? nullptr : &it->second;
}

const LinkState *LinkTable::find(const std::string &name) const
{
	for (const auto &[index, state] : links_)
		if (state.name == name)
			return &state;
	return nullptr;
}

std::vector<LinkState> LinkTable::all() const
{
	std::vector<LinkState> out;
	for (const auto &[index, state] : links_)
		out.push_back(state);
	return out;
}

Result<std::unique_ptr<LinkMonitor>> LinkMonitor::create(EventLoop &loop, Callback callback)
{
	std::unique_ptr<LinkMonitor> m(new LinkMonitor(loop, std::move(callback)));
	m->nl_ = mnl_socket_open2(NETLINK_ROUTE, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (!m->nl_)
		return makeError(-errno, errnoMessage("netlink socket", errno));
	if (mnl_socket_bind(m->nl_, RTMGRP_LINK, MNL_SOCKET_AUTOPID) < 0)
		return makeError(-errno, errnoMessage("netlink bind to RTMGRP_LINK", errno));
	int ret = m->requestDump();
	if (ret < 0)
		return makeError(ret, errnoMessage("requesting the link dump", ret));
	LinkMonitor *self = m.get();
	m->watch_ = loop.watchFd(mnl_socket_get_fd(m->nl_), POLLIN,
				 [self](uint32_t) { self->onReadable(); });
	return m;
}

LinkMonitor::~LinkMonitor()
{
	if (retryTimer_)
		loop_.cancelTimer(retryTimer_);
	if (watch_)
		loop_.unwatch(watch_);
	if (nl_)
		mnl_socket_close(nl_);
}

int LinkMonitor::requestDump()
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	nlh->nlmsg_seq = ++dumpSeq_;
	auto *ifi = static_cast<struct ifinfomsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifinfomsg)));
	ifi->ifi_family = AF_UNSPEC;
	dumpSeen_.clear();
	dumping_ = true;
	if (mnl_socket_sendto(nl_, nlh, nlh->nlmsg_len) < 0)
		return -errno;
	return 0;
}

void LinkMonitor::retryDump()
{
	loop_.cancelTimer(retryTimer_);
	retryTimer_ = loop_.addTimer(kDumpRetry, [this] {
		retryTimer_ = 0;
		int ret = requestDump();
		if (ret < 0) {
			logWarn(kLog, "{}", errnoMessage("re-requesting the link dump", ret));
			retryDump();
		}
	});
}

void LinkMonitor::report(const LinkState &state)
{
	if (!table_.apply(state))
		return;
	logDebug(kLog, "{} (index {}): {}{}{} operstate {}", state.name, state.ifindex,
		 state.removed ? "removed" : state.adminUp() ? "admin up" : "admin down",
		 state.flags & IFF_RUNNING ? ", running" : "", state.lowerUp() ? ", carrier" : "",
		 operStateName(state.operState));
	if (callback_)
		callback_(state);
}

void LinkMonitor::finishDump()
{
	dumping_ = false;
	/* Links deleted while we were overrun never sent us their RTM_DELLINK. */
	for (const LinkState &s : table_.all()) {
		if (dumpSeen_.count(s.ifindex))
			continue;
		LinkState gone = s;
		gone.removed = true;
		report(gone);
	}
	if (!synced_)
		logInfo(kLog, "link table synced: {} interfaces", table_.all().size());
	synced_ = true;
}

void LinkMonitor::onReadable()
{
	std::vector<char> buf(kRecvBufferSize);
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
		if (n < 0) {
			int err = errno;
			if (err == EAGAIN || err == EWOULDBLOCK)
				return;
			if (err == EINTR)
				continue;
			if (err == ENOBUFS) {
				/* The kernel dropped notifications: only a fresh dump tells the truth. */
				logWarn(kLog, "link notifications overran: re-reading all links");
				if (!dumping_) {
					int ret = requestDump();
					if (ret < 0)
						retryDump();
				} else {
					redumpAfter_ = true;
				}
				continue;
			}
			logError(kLog, "{}", errnoMessage("reading link notifications", err));
			return;
		}
		int len = static_cast<int>(n);
		for (auto *nlh = reinterpret_cast<const struct nlmsghdr *>(buf.data());
		     mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
			const bool ofDump = dumping_ && nlh->nlmsg_seq == dumpSeq_ && nlh->nlmsg_seq != 0;
			if (nlh->nlmsg_type == NLMSG_DONE && ofDump) {
				if (nlh->nlmsg_flags & NLM_F_DUMP_INTR)
					redumpAfter_ = true;
				finishDump();
				if (redumpAfter_) {
					redumpAfter_ = false;
					if (requestDump() < 0)
						retryDump();
				}
				continue;
			}
			if (nlh->nlmsg_type == NLMSG_ERROR && ofDump) {
				const auto *e = static_cast<const struct nlmsgerr *>(mnl_nlmsg_get_payload(nlh));
				if (e->error != 0) {
					logWarn(kLog, "{}", errnoMessage("link dump", e->error));
					dumping_ = false;
					retryDump();
				}
				continue;
			}
			auto state = parseLinkMessage(nlh);
			if (!state)
				continue;
			/* Notifications during a dump count too, or a new link would look gone. */
			if (dumping_) {
				if (state->removed)
					dumpSeen_.erase(state->ifindex);
				else
					dumpSeen_.insert(state->ifindex);
			}
			report(*state);
		}
	}
}

} /* namespace sk::net */
