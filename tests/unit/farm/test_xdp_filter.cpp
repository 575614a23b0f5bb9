/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm filter API without root: address parsing, option validation (refused
 * before any BPF call) and the fake filter other tests use.
 */
#include <doctest/doctest.h>

#include "farm/fake_farm_filter.h"
#include "farm/xdp_filter.h"

using namespace sk;

TEST_CASE("FarmAddress parses IPv4 and IPv6 and prints them back")
{
	auto a = FarmAddress::parse("198.18.0.100");
	REQUIRE(a.ok());
	CHECK(a->family == 4);
	CHECK(a->bytes[0] == 198);
	CHECK(a->bytes[3] == 100);
	CHECK(a->bytes[4] == 0);
	CHECK(a->str() == "198.18.0.100");
	auto b = FarmAddress::parse("fd00:5c::100");
	REQUIRE(b.ok());
	CHECK(b->family == 6);
	CHECK(b->bytes[0] == 0xfd);
	CHECK(b->bytes[15] == 0x00);
	CHECK(b->bytes[14] == 0x01);
	CHECK(b->str() == "fd00:5c::100");
	CHECK(FarmAddress::parse("198.18.0").code() == -EINVAL);
	CHECK(FarmAddress::parse("").code() == -EINVAL);
	CHECK(FarmAddress{}.str() == "(none)");
}

TEST_CASE("XdpFilter refuses bad options before touching BPF")
{
	XdpFilterOptions o;
	o.module = "m";
	o.pinRoot = "";
	o.buckets = 1000;
	auto r = XdpFilter::create(o);
	CHECK(r.code() == -EINVAL);
	CHECK(r.error().message.find("power of two") != std::string::npos);
	o.buckets = SK_FARM_MAX_BUCKETS * 2;
	CHECK(XdpFilter::create(o).code() == -EINVAL);
	o.buckets = 1024;
	o.pinRoot = "/sys/fs/bpf/sk";
	for (const char *bad : { "", "a/b", "..", "." }) {
		CAPTURE(bad);
		o.module = bad;
		CHECK(XdpFilter::create(o).code() == -EINVAL);
	}
}

TEST_CASE("FakeFarmFilter records the tables and enforces the size")
{
	FakeFarmFilter f(16);
	FarmFilter &api = f;
	CHECK(api.buckets() == 16);
	CHECK(api.setOwners(std::vector<uint32_t>(8, 1)).code() == -EINVAL);
	CHECK(api.setOwners(std::vector<uint32_t>(16, 2)).ok());
	CHECK(f.owners() == std::vector<uint32_t>(16, 2));
	FarmVipSet s;
	s.vips.push_back({ *FarmAddress::parse("198.18.0.1"), { { 6, 80 } } });
	CHECK(api.setVips(s).ok());
	CHECK(f.vips().vips.size() == 1);
	f.failWith = -EIO;
	CHECK(api.counters().code() == -EIO);
}
