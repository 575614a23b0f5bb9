/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Local flows: how many TCP connections this network namespace still has on a
 * set of local addresses (the VIPs), read from /proc/net/tcp and tcp6. A farm
 * node leaving by admin stop waits for them to close before it takes the VIP
 * down (see FarmMachineConfig::drainMs).
 */
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/result.h"
#include "net/vip.h"

namespace sk {

/*
 * Connections whose local address is one of locals, in a state where the peer
 * may still send to it: ESTABLISHED, SYN_RECV, FIN_WAIT1, CLOSE_WAIT, LAST_ACK,
 * CLOSING (not TIME_WAIT, and not FIN_WAIT2, whose app already closed it).
 * An IPv4 address also counts in tcp6 as ::ffff:a.b.c.d (connections accepted
 * by a dual-stack listener). procNet: the directory holding tcp and tcp6 (a
 * missing tcp6 counts none).
 */
Result<uint64_t> farmCountLocalFlows(const std::vector<net::IpAddress> &locals,
				     const std::string &procNet = "/proc/net");

/* One /proc/net/tcp{,6} table's count (the text of the file), for tests. */
Result<uint64_t> farmCountFlowsInTable(const std::string &text, const std::vector<net::IpAddress> &locals);

} /* namespace sk */
