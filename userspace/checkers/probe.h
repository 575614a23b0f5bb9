/* SPDX-License-Identifier: Apache-2.0 */
/*
 * One-shot reachability probes on the event loop: TCP connect and ICMP echo
 * (IPv4 and IPv6), each bounded by a timeout, never blocking. Used by the
 * split-brain witness and by the tcp/ping checkers.
 */
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "core/event_loop.h"

namespace sk {

struct ProbeReport {
	bool reachable = false;
	std::chrono::microseconds rtt{ 0 };
	std::string detail;	/* why not reachable: "timeout", "connection refused", ... */
};

using ProbeDone = std::function<void(const ProbeReport &)>;

/*
 * A probe in flight; destroying it cancels it (done is then never called).
 * done runs on the loop thread, never from inside the start function.
 */
class Probe
{
public:
	virtual ~Probe() = default;

	/* TCP connect to address:port; "connection refused" counts as unreachable. */
	static std::unique_ptr<Probe> tcp(EventLoop &loop, const std::string &address, uint16_t port,
					  std::chrono::milliseconds timeout, ProbeDone done);
	/*
	 * ICMP/ICMPv6 echo: an unprivileged ping socket when the kernel allows it
	 * (net.ipv4.ping_group_range), else a raw socket (needs CAP_NET_RAW).
	 */
	static std::unique_ptr<Probe> icmp(EventLoop &loop, const std::string &address,
					   std::chrono::milliseconds timeout, ProbeDone done);
};

} /* namespace sk */
