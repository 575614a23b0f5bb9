/* SPDX-License-Identifier: Apache-2.0 */
#include "farm/local_flows.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include <fmt/format.h>


namespace sk {

namespace {

/* How the kernel prints a local address: each 32-bit word as %08X of its in-memory value. */
std::string procHex(const net::IpAddress &a)
{
	std::string out;
	const size_t words = a.family == AF_INET ? 1 : 4;
	for (size_t w = 0; w < words; w++) {
		uint32_t v;
		std::memcpy(&v, a.bytes.data() + 4 * w, 4);
		out += fmt::format("{:08X}", v);
	}
	return out;
}

/* Hex TCP states (include/net/tcp_states.h) where the client may still send: a
 * FIN_WAIT2 socket only while the app holds it (inode not 0; orphans just wait). */
bool peerMaySend(const std::string &st, const std::string &inode)
{
	if (st == "05")
		return inode != "0";
	return st == "01" || st == "03" || st == "04" || st == "08" || st == "09" || st == "0B";
}

} /* namespace */

Result<uint64_t> farmCountFlowsInTable(const std::string &text, const std::vector<net::IpAddress> &locals)
{
	std::vector<std::string> wanted;
	for (const net::IpAddress &a : locals)
		wanted.push_back(procHex(a));
	std::istringstream in(text);
	std::string line;
	uint64_t n = 0;
	bool header = true;
	while (std::getline(in, line)) {
		if (header) {
			header = false;
			continue;
		}
		/* "sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...". */
		std::istringstream fields(line);
		std::string sl, local, remote, st, queues, timer, retransmits, uid, timeout, inode;
		if (!(fields >> sl >> local >> remote >> st >> queues >> timer >> retransmits >> uid >> timeout >> inode))
			return makeError(-EINVAL, fmt::format("unexpected line in a TCP table: '{}'", line.substr(0, 80)));
		const size_t colon = local.find(':');
		if (colon == std::string::npos || !peerMaySend(st, inode))
			continue;
		const std::string addr = local.substr(0, colon);
		for (const std::string &w : wanted) {
			if (addr == w) {
				n++;
				break;
			}
		}
	}
	return n;
}

Result<uint64_t> farmCountLocalFlows(const std::vector<net::IpAddress> &locals, const std::string &procNet)
{
	std::vector<net::IpAddress> v4, v6;
	for (const net::IpAddress &a : locals) {
		if (a.family != AF_INET) {
			v6.push_back(a);
			continue;
		}
		v4.push_back(a);
		/* A dual-stack listener's IPv4 connections are in tcp6, as ::ffff:a.b.c.d. */
		net::IpAddress mapped;
		mapped.family = AF_INET6;
		mapped.bytes[10] = mapped.bytes[11] = 0xff;
		std::memcpy(mapped.bytes.data() + 12, a.bytes.data(), 4);
		v6.push_back(mapped);
	}
	uint64_t total = 0;
	for (const char *name : { "tcp", "tcp6" }) {
		const bool six = name[3] == '6';
		if ((six ? v6 : v4).empty())
			continue;
		const std::string path = procNet + "/" + name;
		int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			if (six && errno == ENOENT)
				continue;	/* no IPv6 in this kernel */
			return makeError(-errno, errnoMessage("cannot read " + path, -errno));
		}
		std::string text;
		char buf[65536];
		ssize_t got;
		while ((got = read(fd, buf, sizeof(buf))) > 0)
			text.append(buf, static_cast<size_t>(got));
		const int err = got < 0 ? -errno : 0;
		close(fd);
		if (err)
			return makeError(err, errnoMessage("cannot read " + path, err));
		auto n = farmCountFlowsInTable(text, six ? v6 : v4);
		if (!n)
			return makeError(n.code(), path + ": " + n.error().message);
		total += *n;
	}
	return total;
}

} /* namespace sk */
