/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm filter API without root: address parsing, option validation (refused
 * before any BPF call), the VIP table layout and the fake filter other tests use.
 */
#include <doctest/doctest.h>

#include <cstring>
#include <random>

#include "bpf/farm_hash.h"
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

namespace {

sk_farm_vip_slot vipSlot(const char *text, uint32_t flags = 0)
{
	auto a = FarmAddress::parse(text);
	REQUIRE_MESSAGE(a.ok(), text);
	sk_farm_vip_slot s{};
	s.vip.family = a->family;
	std::memcpy(s.vip.addr, a->bytes.data(), 16);
	s.flags = flags;
	return s;
}

/* The filter's search (farm_filter.bpf.c): home slot, then at most SK_FARM_VIP_MAX_PROBE slots. */
int searchFlags(const FarmVipTable &t, const sk_farm_vip_key &k, uint32_t *probes)
{
	const uint32_t home = sk_farm_vip_home(t.salt, k.addr[0], k.addr[1], k.addr[2], k.addr[3],
					       SK_FARM_VIP_SLOTS_LOG2);
	for (uint32_t i = 0; i < SK_FARM_VIP_MAX_PROBE; i++) {
		const sk_farm_vip_slot &s = t.slots[(home + i) & (SK_FARM_VIP_SLOTS - 1)];
		*probes = i + 1;
		if (!s.vip.family)
			return -1;
		if (std::memcmp(&s.vip, &k, sizeof(k)) == 0)
			return static_cast<int>(s.flags);
	}
	return -1;
}

} /* namespace */

TEST_CASE("VIP table: a few VIPs all sit at home, 256 stay within the probe bound")
{
	std::vector<sk_farm_vip_slot> few{ vipSlot("198.18.0.100", 1), vipSlot("198.18.0.101", 2),
					   vipSlot("fd00:5c::100", 3), vipSlot("fd00:5c::101") };
	auto t = farmBuildVipTable(few);
	REQUIRE(t.ok());
	CHECK(t->slots.size() == SK_FARM_VIP_SLOTS);
	CHECK(t->maxProbe == 1);
	for (const sk_farm_vip_slot &v : few) {
		uint32_t probes = 0;
		CHECK(searchFlags(*t, v.vip, &probes) == static_cast<int>(v.flags));
		CHECK(probes == 1);
	}
	uint32_t probes = 0;
	CHECK(searchFlags(*t, vipSlot("198.18.0.102").vip, &probes) == -1);
	/* Same address, other family: not the same VIP. */
	sk_farm_vip_key v4as6 = vipSlot("198.18.0.100").vip;
	v4as6.family = 6;
	CHECK(searchFlags(*t, v4as6, &probes) == -1);

	/* 256 consecutive addresses (128 of each family) still find a salt that keeps them all at home. */
	std::vector<sk_farm_vip_slot> consecutive;
	for (int i = 0; i < 128; i++) {
		consecutive.push_back(vipSlot(("198.18.4." + std::to_string(i)).c_str(), 1));
		char v6[32];
		snprintf(v6, sizeof(v6), "fd00:5c::4:%x", i);
		consecutive.push_back(vipSlot(v6, 2));
	}
	auto packed = farmBuildVipTable(consecutive);
	REQUIRE(packed.ok());
	CHECK(packed->maxProbe == 1);

	/* 256 random addresses cannot all be at home (1024 slots): some are found by probing. */
	std::mt19937 rng(4242);
	std::vector<sk_farm_vip_slot> many;
	for (int i = 0; i < SK_FARM_MAX_VIPS; i++) {
		sk_farm_vip_slot v{};
		v.vip.family = i % 2 ? 6 : 4;
		v.vip.addr[0] = static_cast<uint32_t>(rng());
		if (v.vip.family == 6) {
			v.vip.addr[1] = static_cast<uint32_t>(rng());
			v.vip.addr[2] = static_cast<uint32_t>(rng());
			v.vip.addr[3] = static_cast<uint32_t>(rng());
		}
		v.flags = static_cast<uint32_t>(i % 3);
		many.push_back(v);
	}
	auto big = farmBuildVipTable(many);
	REQUIRE(big.ok());
	CHECK(big->maxProbe > 1);
	CHECK(big->maxProbe <= SK_FARM_VIP_MAX_PROBE);
	uint32_t worst = 0;
	for (const sk_farm_vip_slot &v : many) {
		CHECK(searchFlags(*big, v.vip, &probes) == static_cast<int>(v.flags));
		worst = std::max(worst, probes);
	}
	CHECK(worst == big->maxProbe);

	auto empty = farmBuildVipTable({});
	REQUIRE(empty.ok());
	CHECK(searchFlags(*empty, vipSlot("198.18.0.100").vip, &probes) == -1);
}

TEST_CASE("VIP table: duplicates and more than SK_FARM_MAX_VIPS are refused")
{
	CHECK(farmBuildVipTable({ vipSlot("198.18.0.1"), vipSlot("198.18.0.1") }).code() == -EINVAL);
	std::vector<sk_farm_vip_slot> tooMany;
	for (int i = 0; i <= SK_FARM_MAX_VIPS; i++)
		tooMany.push_back(vipSlot(("198.18." + std::to_string(i / 256 + 8) + "." + std::to_string(i % 256)).c_str()));
	CHECK(farmBuildVipTable(tooMany).code() == -E2BIG);
}

TEST_CASE("XDP mode names")
{
	CHECK(std::string(xdpModeName(XdpMode::Auto)) == "auto");
	CHECK(std::string(xdpModeName(XdpMode::Native)) == "native");
	CHECK(std::string(xdpModeName(XdpMode::Generic)) == "generic");
}
