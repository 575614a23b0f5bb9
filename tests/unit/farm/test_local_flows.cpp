/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Local flows: the /proc/net/tcp{,6} tables as the kernel prints them, counted
 * per local address and state; and the live tables of this namespace.
 */
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "farm/local_flows.h"

using namespace sk;

namespace {

net::IpAddress ip(const char *text)
{
	auto a = net::parseIpAddress(text);
	REQUIRE_MESSAGE(a.ok(), text);
	return *a;
}

/* Lines as the kernel prints them (fields after the state trimmed). */
const char *kTcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
		   "   0: 640012C6:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1\n"
		   "   1: 640012C6:0050 070112C6:9C40 01 00000000:00000000 00:00000000 00000000     0        0 2\n"
		   "   2: 640012C6:0050 070112C6:9C41 06 00000000:00000000 00:00000000 00000000     0        0 0\n"
		   "   3: 640012C6:0050 070112C6:9C42 08 00000000:00000000 00:00000000 00000000     0        0 3\n"
		   "   4: 640012C6:0050 070112C6:9C43 05 00000000:00000000 00:00000000 00000000     0        0 0\n"
		   "   7: 640012C6:0050 070112C6:9C46 05 00000000:00000000 00:00000000 00000000     0        0 7\n"
		   "   5: 650012C6:0050 070112C6:9C44 01 00000000:00000000 00:00000000 00000000     0        0 5\n"
		   "   6: 640012C6:1F90 070112C6:9C45 03 00000000:00000000 00:00000000 00000000     0        0 6\n";

/* Connects from fromAddr (IPv4, any port) to `to` and accepts on listener: the accepted fd;
 * *client gets the connecting one. */
int connectFrom(const char *fromAddr, const sockaddr_in &to, int listener, int *client)
{
	sockaddr_in from{};
	from.sin_family = AF_INET;
	REQUIRE(inet_pton(AF_INET, fromAddr, &from.sin_addr) == 1);
	*client = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(*client >= 0);
	REQUIRE(bind(*client, reinterpret_cast<sockaddr *>(&from), sizeof(from)) == 0);
	REQUIRE(connect(*client, reinterpret_cast<const sockaddr *>(&to), sizeof(to)) == 0);
	int s = accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
	REQUIRE(s >= 0);
	return s;
}

} /* namespace */

TEST_CASE("a TCP table: connections on the VIPs the peer may still send to")
{
	/* 198.18.0.100 prints as 640012C6: the listener, TIME_WAIT and an orphaned FIN_WAIT2
	 * (inode 0) do not count; a FIN_WAIT2 the app still holds does. */
	auto n = farmCountFlowsInTable(kTcp, { ip("198.18.0.100") });
	REQUIRE(n.ok());
	CHECK(*n == 4);
	n = farmCountFlowsInTable(kTcp, { ip("198.18.0.100"), ip("198.18.0.101") });
	REQUIRE(n.ok());
	CHECK(*n == 5);
	n = farmCountFlowsInTable(kTcp, { ip("198.18.0.99") });
	REQUIRE(n.ok());
	CHECK(*n == 0);
	CHECK(farmCountFlowsInTable("header\n   0: garbage\n", { ip("198.18.0.100") }).code() == -EINVAL);
	CHECK(*farmCountFlowsInTable("", { ip("198.18.0.100") }) == 0);
}

TEST_CASE("an IPv6 table: four words, each printed from memory")
{
	/* ::1 is 00000000000000000000000001000000 on a little-endian machine: built the same way here. */
	net::IpAddress lo = ip("::1");
	uint32_t w[4];
	std::memcpy(w, lo.bytes.data(), 16);
	char hex[40];
	snprintf(hex, sizeof(hex), "%08X%08X%08X%08X", w[0], w[1], w[2], w[3]);
	std::string table = std::string("  sl  local_address remote_address st\n   0: ") + hex +
			    ":0050 00000000000000000000000000000000:9C40 01 00000000:00000000 00:00000000 00000000 0 0 9\n";
	auto n = farmCountFlowsInTable(table, { lo });
	REQUIRE(n.ok());
	CHECK(*n == 1);
}

TEST_CASE("this namespace's tables: a loopback connection counts, both of its ends")
{
	/* An address of 127/8 nobody else uses, so other tests' connections do not count. */
	const char *local = "127.77.13.1";
	sockaddr_in a{};
	a.sin_family = AF_INET;
	REQUIRE(inet_pton(AF_INET, local, &a.sin_addr) == 1);
	int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(l >= 0);
	REQUIRE(bind(l, reinterpret_cast<sockaddr *>(&a), sizeof(a)) == 0);
	REQUIRE(listen(l, 1) == 0);
	socklen_t len = sizeof(a);
	REQUIRE(getsockname(l, reinterpret_cast<sockaddr *>(&a), &len) == 0);
	auto before = farmCountLocalFlows({ ip(local) });
	REQUIRE(before.ok());
	CHECK(*before == 0);	/* the listener does not count */
	int c;
	int s = connectFrom(local, a, l, &c);
	auto during = farmCountLocalFlows({ ip(local) });
	REQUIRE(during.ok());
	CHECK(*during == 2);
	close(c);
	close(s);
	close(l);
	CHECK(farmCountLocalFlows({ ip(local) }, "/nonexistent").code() == -ENOENT);
}

TEST_CASE("a dual-stack listener's IPv4 connections (tcp6, ::ffff:a.b.c.d) count for the IPv4 address")
{
	const char *local = "127.77.13.2";
	sockaddr_in6 any{};
	any.sin6_family = AF_INET6;
	any.sin6_addr = in6addr_any;
	int l = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	REQUIRE(l >= 0);
	int off = 0;
	REQUIRE(setsockopt(l, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off)) == 0);
	REQUIRE(bind(l, reinterpret_cast<sockaddr *>(&any), sizeof(any)) == 0);
	REQUIRE(listen(l, 1) == 0);
	socklen_t len = sizeof(any);
	REQUIRE(getsockname(l, reinterpret_cast<sockaddr *>(&any), &len) == 0);
	sockaddr_in to{};
	to.sin_family = AF_INET;
	to.sin_port = any.sin6_port;
	REQUIRE(inet_pton(AF_INET, local, &to.sin_addr) == 1);
	/* The client from another 127/8 address: only the accepted (mapped) end is on `local`. */
	int c;
	int s = connectFrom("127.77.13.3", to, l, &c);
	auto n = farmCountLocalFlows({ ip(local) });
	REQUIRE(n.ok());
	CHECK(*n == 1);
	close(c);
	close(s);
	close(l);
}
