/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Interface up/down events from rtnetlink (RTMGRP_LINK) on the EventLoop: an
 * initial dump, then kernel notifications; no polling. Interface checkers
 * build on it. LinkTable (pure) decides what counts as a change.
 */
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/event_loop.h"
#include "core/result.h"

struct mnl_socket;
struct nlmsghdr;

namespace sk::net {

struct LinkState {
	int ifindex = 0;
	std::string name;
	uint32_t flags = 0;	/* IFF_* from ifi_flags */
	uint8_t operState = 0;	/* IF_OPER_* (IFLA_OPERSTATE) */
	bool removed = false;	/* RTM_DELLINK */

	bool adminUp() const;	/* IFF_UP */
	bool lowerUp() const;	/* IFF_LOWER_UP: carrier */
	/*
	 * Can carry traffic: admin up, IFF_RUNNING, and operstate UP or UNKNOWN
	 * (drivers without operstate support, e.g. dummy, report UNKNOWN).
	 */
	bool usable() const;
};

/* "up", "down", "lowerlayerdown"... (RFC 2863 names as `ip link` prints them). */
const char *operStateName(uint8_t operState);

/* Parses RTM_NEWLINK/RTM_DELLINK; nullopt for anything else or a malformed message. */
std::optional<LinkState> parseLinkMessage(const struct nlmsghdr *nlh);

/*
 * Last known state per ifindex. apply() returns true when the update changes
 * something a checker cares about (name, IFF_UP/RUNNING/LOWER_UP, operstate,
 * appearance, removal); the kernel sends many RTM_NEWLINK that change nothing.
 */
class LinkTable
{
public:
	bool apply(const LinkState &state);
	const LinkState *find(int ifindex) const;
	const LinkState *find(const std::string &name) const;
	std::vector<LinkState> all() const;

private:
	std::map<int, LinkState> links_;
};

/*
 * Watches one NETLINK_ROUTE socket subscribed to RTMGRP_LINK. The socket
 * belongs to the netns of the thread calling create(). The callback runs on
 * the loop thread: once per interface for the initial dump, then per change.
 * After a netlink overrun (ENOBUFS) it re-dumps, so no change is lost silently.
 */
class LinkMonitor
{
public:
	using Callback = std::function<void(const LinkState &state)>;

	static Result<std::unique_ptr<LinkMonitor>> create(EventLoop &loop, Callback callback);
	~LinkMonitor();

	LinkMonitor(const LinkMonitor &) = delete;
	LinkMonitor &operator=(const LinkMonitor &) = delete;

	const LinkTable &table() const { return table_; }
	/* True once the initial dump has been fully received. */
	bool synced() const { return synced_; }

private:
	LinkMonitor(EventLoop &loop, Callback callback)
		: loop_(loop), callback_(std::move(callback)) {}

	int requestDump();
	void retryDump();
	void finishDump();
	void report(const LinkState &state);
	void onReadable();

	EventLoop &loop_;
	Callback callback_;
	::mnl_socket *nl_ = nullptr;
	EventLoop::WatchId watch_ = 0;
	EventLoop::TimerId retryTimer_ = 0;
	uint32_t dumpSeq_ = 0;
	bool dumping_ = false;
	bool redumpAfter_ = false;	/* a dump was interrupted or overrun: dump again when done */
	std::set<int> dumpSeen_;	/* links seen during the current dump; the rest are gone */
	bool synced_ = false;
	LinkTable table_;
};

} /* namespace sk::net */
