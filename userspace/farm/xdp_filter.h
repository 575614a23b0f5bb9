/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Farm XDP filter loader: FarmFilter is what the farm driver talks to (a fake
 * can stand in for it in tests); XdpFilter is the real one, owning the BPF
 * skeleton, its attachment to one interface and its pinned maps.
 */
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bpf/farm_shared.h"
#include "core/result.h"

struct farm_filter;

namespace sk {

enum class FarmHashMode : uint32_t {
	Ip = SK_FARM_HASH_IP,		/* session affinity per client address */
	IpPort = SK_FARM_HASH_IP_PORT,	/* per client address and source port */
};

struct FarmAddress {
	uint8_t family = 0;			/* 4 or 6 */
	std::array<uint8_t, 16> bytes{};	/* network order; IPv4 in bytes[0..3] */

	/* "198.18.0.1" or "fd00:5c::1". */
	static Result<FarmAddress> parse(std::string_view text);
	std::string str() const;
	bool operator==(const FarmAddress &) const = default;
};

struct FarmPortRule {
	uint8_t proto = 6;	/* IPPROTO_TCP or IPPROTO_UDP */
	uint16_t port = 0;	/* host order */
	bool operator==(const FarmPortRule &) const = default;
};

/*
 * A VIP balances every packet sent to it unless port rules narrow it: a VIP's
 * own rules and the global rules (which apply to every VIP) are unioned; TCP/UDP
 * to an unlisted port then passes untouched on every node. See farm_shared.h.
 */
struct FarmVip {
	FarmAddress address;
	std::vector<FarmPortRule> ports;
};

struct FarmVipSet {
	std::vector<FarmVip> vips;
	std::vector<FarmPortRule> globalPorts;
};

struct FarmCounters {
	std::array<uint64_t, SK_FARM_VERDICT_MAX> verdicts{};	/* by enum sk_farm_verdict */
	std::vector<uint64_t> bucketPackets;			/* by bucket, all nodes' share */
};

/*
 * The VIP table the filter searches (see SK_FARM_VIP_SLOTS in farm_shared.h):
 * SK_FARM_VIP_SLOTS slots and the salt of their home-slot hash.
 */
struct FarmVipTable {
	uint32_t salt = 0;
	std::vector<sk_farm_vip_slot> slots;
	uint32_t maxProbe = 0;	/* slots the worst-placed VIP needs searched (1: all at home) */
};

/*
 * Lays out vips (distinct, at most SK_FARM_MAX_VIPS) with linear probing,
 * trying salts until every VIP sits at its home slot or, failing that, taking
 * the salt with the shortest worst search; -E2BIG if none stays within
 * SK_FARM_VIP_MAX_PROBE. Pure: the unit tests replay the filter's search on it.
 */
Result<FarmVipTable> farmBuildVipTable(const std::vector<sk_farm_vip_slot> &vips);

/* The data plane as the farm driver sees it. */
class FarmFilter
{
public:
	virtual ~FarmFilter() = default;

	/* Replaces the VIP set (and port rules) with vips; entries not in it are removed. */
	virtual Status setVips(const FarmVipSet &vips) = 0;
	/*
	 * Installs a whole owner table (owners.size() == buckets()) atomically for
	 * readers, with each bucket's previous owner while its connections drain
	 * (drainFrom: empty, or one node id per bucket, SK_FARM_NODE_NONE for none;
	 * see struct sk_farm_owner).
	 */
	virtual Status setOwnerTable(const std::vector<uint32_t> &owners, const std::vector<uint32_t> &drainFrom) = 0;
	/* An owner table without draining buckets. */
	Status setOwners(const std::vector<uint32_t> &owners) { return setOwnerTable(owners, {}); }
	/* Per-verdict and per-bucket packet counts, summed over CPUs. */
	virtual Result<FarmCounters> counters() = 0;
	virtual uint32_t buckets() const = 0;
};

/* How the filter attaches to its interface. */
enum class XdpMode {
	/*
	 * Native (driver) mode, generic where native cannot work: on veth (whose
	 * native XDP sees an skb already classified for another host, so packets
	 * kept by a MAC rewrite are dropped by the IP layer) and when the native
	 * attach fails (no XDP in the driver).
	 */
	Auto,
	Native,		/* driver mode or nothing */
	Generic,	/* skb mode: any interface, slower */
};

const char *xdpModeName(XdpMode mode);

struct XdpFilterOptions {
	std::string module;			/* names the pin directory */
	std::string pinRoot = "/sys/fs/bpf/sk";	/* maps under <pinRoot>/<module>/; "" = no pins */
	int ifindex = 0;			/* 0: load only (BPF_PROG_RUN tests, benchmarks) */
	XdpMode mode = XdpMode::Auto;
	/*
	 * XDP stays attached when its process dies. With this set, a farm filter
	 * already on the interface (same program name) is taken over atomically;
	 * set it only when no other skd can be running (skd holds its lock).
	 * Any other program there is never replaced.
	 */
	bool replaceStale = false;
	FarmHashMode hashMode = FarmHashMode::Ip;
	uint32_t buckets = SK_FARM_DEFAULT_BUCKETS;	/* power of two */
	uint32_t seed = 0;			/* per cluster, same on every node */
	uint32_t nodeId = SK_FARM_NODE_NONE;	/* this node */
	std::array<uint8_t, 6> mac{};		/* this node's MAC: dest of kept packets */
};

class XdpFilter final : public FarmFilter
{
public:
	/*
	 * Opens the skeleton, sets the knobs, loads (reusing compatible pinned maps
	 * left by a previous run), pins, attaches. Everything is undone on failure.
	 */
	static Result<std::unique_ptr<XdpFilter>> create(const XdpFilterOptions &options);
	/* Detaches (only if our program is still the one attached) and removes our pins. */
	~XdpFilter() override;

	XdpFilter(const XdpFilter &) = delete;
	XdpFilter &operator=(const XdpFilter &) = delete;

	Status setVips(const FarmVipSet &vips) override;
	Status setOwnerTable(const std::vector<uint32_t> &owners, const std::vector<uint32_t> &drainFrom) override;
	Result<FarmCounters> counters() override;
	uint32_t buckets() const override { return options_.buckets; }

	/* For BPF_PROG_RUN (tests, benchmarks). */
	int programFd() const;
	/* "<pinRoot>/<module>", or "" when not pinning. */
	const std::string &pinDir() const { return pinDir_; }
	/* True when attached in native (driver) mode, false for generic or not attached. */
	bool nativeMode() const { return attachFlags_ != 0 && nativeMode_; }

private:
	explicit XdpFilter(const XdpFilterOptions &options) : options_(options) {}
	Status load();
	Status attach();
	XdpMode resolveMode() const;	/* Auto made concrete for options_.ifindex */
	int staleFilterFd(uint32_t mode) const;
	Status writeConfig(const sk_farm_config &config);
	void unpinAll();

	XdpFilterOptions options_;
	std::string pinDir_;
	struct farm_filter *skel_ = nullptr;
	uint32_t attachFlags_ = 0;	/* flags used to attach; 0 when not attached */
	bool nativeMode_ = false;
	sk_farm_config config_{};	/* mirror of farm_config (read back when pins are reused) */
	std::vector<uint64_t> portBits_;	/* mirror of farm_port_bits */
};

} /* namespace sk */
