/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XdpFilter: lifecycle of the farm XDP program (open, knobs, load, pin, attach,
 * detach, unpin) and the control-plane writes into its maps.
 */
#include "farm/xdp_filter.h"

#include <arpa/inet.h>
#include <linux/ethtool.h>
#include <linux/if_link.h>
#include <linux/magic.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <map>
#include <set>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>

#include "bpf/farm_hash.h"
#include "core/log.h"
#include "farm_filter.skel.h"

namespace sk {

namespace {

const LogCategory kLog("farm.xdp");

/* mkdir -p; 0 or -errno. */
int makeDirs(const std::string &path)
{
	std::string cur;
	size_t pos = 0;
	while (pos != std::string::npos) {
		pos = path.find('/', pos + 1);
		cur = path.substr(0, pos);
		if (cur.empty())
			continue;
		if (mkdir(cur.c_str(), 0700) < 0 && errno != EEXIST)
			return -errno;
	}
	return 0;
}

sk_farm_vip_key vipKey(const FarmAddress &a)
{
	sk_farm_vip_key k{};
	k.family = a.family;
	std::memcpy(k.addr, a.bytes.data(), a.family == 4 ? 4 : 16);
	return k;
}

uint32_t homeSlot(uint32_t salt, const sk_farm_vip_key &k)
{
	return sk_farm_vip_home(salt, k.addr[0], k.addr[1], k.addr[2], k.addr[3], SK_FARM_VIP_SLOTS_LOG2);
}

/* Word and bit of a global port rule in farm_port_bits (see SK_FARM_PORT_WORDS). */
std::pair<uint32_t, uint64_t> portBit(const FarmPortRule &r)
{
	const uint32_t half = r.proto == IPPROTO_UDP ? SK_FARM_PORT_WORDS / 2 : 0;
	return { half + r.port / 64u, 1ull << (r.port % 64u) };
}

/* Driver name of an interface (ETHTOOL_GDRVINFO); "" when unknown. */
std::string driverName(int ifindex)
{
	char name[IF_NAMESIZE] = {};
	if (!if_indextoname(static_cast<unsigned>(ifindex), name))
		return "";
	const int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return "";
	struct ethtool_drvinfo info {};
	info.cmd = ETHTOOL_GDRVINFO;
	struct ifreq ifr {};
	std::memcpy(ifr.ifr_name, name, sizeof(ifr.ifr_name) - 1);
	ifr.ifr_data = reinterpret_cast<char *>(&info);
	const int rc = ioctl(fd, SIOCETHTOOL, &ifr);
	close(fd);
	if (rc < 0)
		return "";
	return std::string(info.driver, strnlen(info.driver, sizeof(info.driver)));
}

/*
 * Writes entries [first, first + n) of an array map from values (value_size
 * bytes each): one batch call, or entry by entry where batches are missing.
 */
int writeArray(int fd, uint32_t first, const void *values, uint32_t n, size_t valueSize)
{
	std::vector<uint32_t> keys(n);
	for (uint32_t i = 0; i < n; i++)
		keys[i] = first + i;
	uint32_t count = n;
	if (bpf_map_update_batch(fd, keys.data(), values, &count, nullptr) == 0)
		return 0;
	const auto *bytes = static_cast<const uint8_t *>(values);
	for (uint32_t i = 0; i < n; i++) {
		if (int err = bpf_map_update_elem(fd, &keys[i], bytes + i * valueSize, BPF_ANY); err)
			return err;
	}
	return 0;
}

sk_farm_port_key portKey(const sk_farm_vip_key &vip, const FarmPortRule &r)
{
	sk_farm_port_key k{};
	k.vip = vip;
	k.proto = r.proto;
	k.port = htons(r.port);
	return k;
}

struct KeyLess {
	template<typename Key>
	bool operator()(const Key &a, const Key &b) const
	{
		return std::memcmp(&a, &b, sizeof(Key)) < 0;
	}
};

/* All keys currently in a hash map. */
template<typename Key>
std::vector<Key> mapKeys(int fd)
{
	std::vector<Key> keys;
	Key cur{}, next{};
	const Key *prev = nullptr;
	while (bpf_map_get_next_key(fd, prev, &next) == 0) {
		keys.push_back(next);
		cur = next;
		prev = &cur;
	}
	return keys;
}

} /* namespace */

Result<FarmAddress> FarmAddress::parse(std::string_view text)
{
	std::string s(text);
	FarmAddress a;
	if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
		a.family = 4;
		return a;
	}
	if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
		a.family = 6;
		return a;
	}
	return makeError(-EINVAL, fmt::format("'{}' is not an IPv4 or IPv6 address", s));
}

std::string FarmAddress::str() const
{
	char buf[INET6_ADDRSTRLEN] = {};
	if (family != 4 && family != 6)
		return "(none)";
	inet_ntop(family == 4 ? AF_INET : AF_INET6, bytes.data(), buf, sizeof(buf));
	return buf;
}

const char *xdpModeName(XdpMode mode)
{
	switch (mode) {
	case XdpMode::Auto:
		return "auto";
	case XdpMode::Native:
		return "native";
	case XdpMode::Generic:
		return "generic";
	}
	return "?";
}

/*
 * At most 256 VIPs in 1024 slots: a salt that puts every VIP at home exists for
 * small sets (the common case: no out-of-line probe per packet); for large sets
 * the best of kSaltTries keeps searches far below the bound.
 */
Result<FarmVipTable> farmBuildVipTable(const std::vector<sk_farm_vip_slot> &vips)
{
	constexpr uint32_t kSaltTries = 256;
	if (vips.size() > SK_FARM_MAX_VIPS)
		return makeError(-E2BIG, fmt::format("farm: at most {} VIPs, got {}", SK_FARM_MAX_VIPS, vips.size()));
	FarmVipTable best;
	best.maxProbe = UINT32_MAX;
	for (uint32_t t = 0; t < kSaltTries && best.maxProbe > 1; t++) {
		FarmVipTable cand;
		cand.salt = t * 0x9e3779b9u;	/* spread the tries over the salt space */
		cand.slots.assign(SK_FARM_VIP_SLOTS, sk_farm_vip_slot{});
		for (const sk_farm_vip_slot &v : vips) {
			uint32_t probe = 0, at = homeSlot(cand.salt, v.vip);
			while (cand.slots[at].vip.family != 0) {
				if (std::memcmp(&cand.slots[at].vip, &v.vip, sizeof(v.vip)) == 0)
					return makeError(-EINVAL, "farm: the same VIP twice in a VIP table");
				at = (at + 1) & (SK_FARM_VIP_SLOTS - 1);
				probe++;
			}
			cand.slots[at] = v;
			cand.maxProbe = std::max(cand.maxProbe, probe + 1);
		}
		if (vips.empty())
			cand.maxProbe = 1;
		if (cand.maxProbe < best.maxProbe)
			best = std::move(cand);
	}
	if (best.maxProbe > SK_FARM_VIP_MAX_PROBE)
		return makeError(-E2BIG, fmt::format("farm: cannot lay out {} VIPs within {} probes",
						     vips.size(), SK_FARM_VIP_MAX_PROBE));
	return best;
}

Result<std::unique_ptr<XdpFilter>> XdpFilter::create(const XdpFilterOptions &options)
{
	if (options.buckets == 0 || options.buckets > SK_FARM_MAX_BUCKETS ||
	    !std::has_single_bit(options.buckets))
		return makeError(-EINVAL, fmt::format("farm buckets must be a power of two in [1, {}], got {}",
						      SK_FARM_MAX_BUCKETS, options.buckets));
	if (!options.pinRoot.empty() &&
	    (options.module.empty() || options.module.find('/') != std::string::npos ||
	     options.module == "." || options.module == ".."))
		return makeError(-EINVAL, fmt::format("bad module name '{}' for a pin directory", options.module));

	std::unique_ptr<XdpFilter> f(new XdpFilter(options));
	if (Status s = f->load(); !s)
		return s.error();
	if (options.ifindex > 0) {
		if (Status s = f->attach(); !s)
			return s.error();
	}
	return f;
}

Status XdpFilter::load()
{
	bpf_object_open_opts opts{};
	opts.sz = sizeof(opts);
	if (!options_.pinRoot.empty()) {
		pinDir_ = options_.pinRoot + "/" + options_.module;
		if (int err = makeDirs(pinDir_); err < 0)
			return makeError(err, errnoMessage("cannot create pin directory " + pinDir_, err));
		struct statfs st {};
		if (statfs(pinDir_.c_str(), &st) < 0 || st.f_type != BPF_FS_MAGIC)
			return makeError(-ENOTSUP, fmt::format("{} is not on a bpf file system "
							       "(mount -t bpf bpf /sys/fs/bpf)", pinDir_));
		opts.pin_root_path = pinDir_.c_str();
	}
	skel_ = farm_filter__open_opts(&opts);
	if (!skel_) {
		int err = -errno;
		return makeError(err, errnoMessage("cannot open the farm BPF object", err));
	}
	skel_->rodata->hash_mode = static_cast<uint32_t>(options_.hashMode);
	skel_->rodata->bucket_count = options_.buckets;
	skel_->rodata->hash_seed = options_.seed;
	skel_->rodata->node_id = options_.nodeId;
	std::memcpy(skel_->rodata->own_mac, options_.mac.data(), 6);

	int err = bpf_map__set_max_entries(skel_->maps.farm_owners, 2 * options_.buckets);
	if (!err)
		err = bpf_map__set_max_entries(skel_->maps.farm_bkt_pkts, options_.buckets);
	if (err)
		return makeError(err, errnoMessage("cannot size farm maps", err));
	if (pinDir_.empty()) {
		/* libbpf would pin PIN_BY_NAME maps under /sys/fs/bpf by default. */
		bpf_map *m;
		bpf_object__for_each_map(m, skel_->obj)
			bpf_map__set_pin_path(m, nullptr);
	}

	err = farm_filter__load(skel_);
	if (err)
		return makeError(err, errnoMessage(pinDir_.empty() ? "cannot load the farm XDP program" :
					   "cannot load the farm XDP program (pins left in " + pinDir_ +
					   " by a run with another bucket count or an older map layout? "
					   "remove them while the module is stopped)", err));

	/* Reused pins carry the tables in use: continue from them. */
	uint32_t zero = 0;
	if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.farm_config), &zero, &config_) < 0)
		config_ = {};
	config_.active_table &= 1;
	config_.vip_table &= 1;
	portBits_.assign(SK_FARM_PORT_WORDS, 0);
	const int bitsFd = bpf_map__fd(skel_->maps.farm_port_bits);
	for (uint32_t i = 0; i < SK_FARM_PORT_WORDS; i++)
		(void)bpf_map_lookup_elem(bitsFd, &i, &portBits_[i]);
	logInfo(kLog, "{}: farm filter loaded (node {}, {} buckets, hash {}, maps {})", options_.module,
		options_.nodeId, options_.buckets,
		options_.hashMode == FarmHashMode::Ip ? "ip" : "ip+port",
		pinDir_.empty() ? "not pinned" : pinDir_);
	return {};
}

/* fd of the farm filter attached in `mode` on ifindex (left by a dead skd), or -errno. */
int XdpFilter::staleFilterFd(uint32_t mode) const
{
	uint32_t id = 0;
	if (bpf_xdp_query_id(options_.ifindex, static_cast<int>(mode), &id) < 0 || id == 0)
		return -ENOENT;
	const int fd = bpf_prog_get_fd_by_id(id);
	if (fd < 0)
		return -errno;
	bpf_prog_info info{};
	uint32_t len = sizeof(info);
	if (bpf_obj_get_info_by_fd(fd, &info, &len) < 0 ||
	    std::strncmp(info.name, bpf_program__name(skel_->progs.sk_farm_filter),
			 sizeof(info.name) - 1) != 0) {
		close(fd);
		return -EBUSY;
	}
	return fd;
}

XdpMode XdpFilter::resolveMode() const
{
	if (options_.mode != XdpMode::Auto)
		return options_.mode;
	const std::string driver = driverName(options_.ifindex);
	if (driver == "veth") {
		logInfo(kLog, "{}: ifindex {} is a veth: generic XDP (native XDP there cannot keep "
			"packets to another MAC)", options_.module, options_.ifindex);
		return XdpMode::Generic;
	}
	return XdpMode::Native;
}

Status XdpFilter::attach()
{
	const uint32_t modeFlag = resolveMode() == XdpMode::Generic ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;
	const int fd = programFd();
	/* UPDATE_IF_NOEXIST: never replace someone else's XDP program silently. */
	uint32_t flags = XDP_FLAGS_UPDATE_IF_NOEXIST | modeFlag;
	int err = bpf_xdp_attach(options_.ifindex, fd, flags, nullptr);
	if ((err == -EBUSY || err == -EEXIST) && options_.replaceStale) {
		for (uint32_t staleMode : { XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE }) {
			const int old = staleFilterFd(staleMode);
			if (old < 0)
				continue;
			bpf_xdp_attach_opts opts{};
			opts.sz = sizeof(opts);
			opts.old_prog_fd = old;
			if (staleMode == modeFlag) {
				/* Same mode: swapped atomically. */
				flags = modeFlag | XDP_FLAGS_REPLACE;
				err = bpf_xdp_attach(options_.ifindex, fd, flags, &opts);
			} else {
				/* A kernel holds one mode at a time: detach the stale one (only if still it), then attach. */
				err = bpf_xdp_detach(options_.ifindex, staleMode | XDP_FLAGS_REPLACE, &opts);
				if (!err) {
					flags = XDP_FLAGS_UPDATE_IF_NOEXIST | modeFlag;
					err = bpf_xdp_attach(options_.ifindex, fd, flags, nullptr);
				}
			}
			close(old);
			if (!err)
				logWarn(kLog, "{}: replaced a farm filter left on ifindex {} by a previous run",
					options_.module, options_.ifindex);
			break;
		}
	}
	if (err && options_.mode == XdpMode::Auto && modeFlag == XDP_FLAGS_DRV_MODE && err != -EBUSY &&
	    err != -EEXIST) {
		logWarn(kLog, "{}: native XDP attach on ifindex {} failed ({}), using generic mode",
			options_.module, options_.ifindex, strerror(-err));
		flags = XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_SKB_MODE;
		err = bpf_xdp_attach(options_.ifindex, fd, flags, nullptr);
	}
	if (err)
		return makeError(err, errnoMessage(fmt::format("cannot attach the farm XDP program to ifindex {} "
							       "({} mode)", options_.ifindex,
							       xdpModeName(options_.mode)), err));
	attachFlags_ = flags;
	nativeMode_ = (flags & XDP_FLAGS_DRV_MODE) != 0;
	logInfo(kLog, "{}: farm filter attached to ifindex {} ({} mode, asked {})", options_.module,
		options_.ifindex, nativeMode_ ? "native" : "generic", xdpModeName(options_.mode));
	return {};
}

XdpFilter::~XdpFilter()
{
	if (attachFlags_) {
		/* REPLACE with old_prog_fd: detach only if the program there is still ours. */
		bpf_xdp_attach_opts opts{};
		opts.sz = sizeof(opts);
		opts.old_prog_fd = programFd();
		const uint32_t mode = attachFlags_ & (XDP_FLAGS_DRV_MODE | XDP_FLAGS_SKB_MODE);
		int err = bpf_xdp_detach(options_.ifindex, mode | XDP_FLAGS_REPLACE, &opts);
		if (err)
			logWarn(kLog, "{}: detaching from ifindex {}: {}", options_.module, options_.ifindex,
				strerror(-err));
	}
	if (skel_) {
		unpinAll();
		farm_filter__destroy(skel_);
	}
}

void XdpFilter::unpinAll()
{
	if (pinDir_.empty())
		return;
	bpf_map *m;
	bpf_object__for_each_map(m, skel_->obj) {
		if (bpf_map__pin_path(m) && bpf_map__is_pinned(m))
			bpf_map__unpin(m, nullptr);
	}
	/* Only succeeds when empty: anything else in there is not ours to remove. */
	if (rmdir(pinDir_.c_str()) < 0 && errno != ENOENT && errno != ENOTEMPTY)
		logWarn(kLog, "{}: cannot remove {}: {}", options_.module, pinDir_, strerror(errno));
}

int XdpFilter::programFd() const
{
	return bpf_program__fd(skel_->progs.sk_farm_filter);
}

Status XdpFilter::writeConfig(const sk_farm_config &config)
{
	uint32_t zero = 0;
	if (int err = bpf_map_update_elem(bpf_map__fd(skel_->maps.farm_config), &zero, &config, BPF_ANY); err)
		return makeError(err, errnoMessage("farm: cannot write the filter config", err));
	config_ = config;
	return {};
}

/*
 * Order, so that a packet never sees a VIP whose rules are missing: new per-VIP
 * rules and the union of old and new global port bits; then the new VIP table
 * (written whole while inactive, then switched to); then the global bits
 * without the stale ones, and removal of stale per-VIP rules. Each config write
 * changes one field (the inactive table's salt, then the switch), so readers
 * never pair a table with another table's salt.
 */
Status XdpFilter::setVips(const FarmVipSet &set)
{
	const int vipFd = bpf_map__fd(skel_->maps.farm_vips);
	const int portFd = bpf_map__fd(skel_->maps.farm_ports);
	const int bitsFd = bpf_map__fd(skel_->maps.farm_port_bits);
	std::set<sk_farm_vip_key, KeyLess> wantVips;
	std::set<sk_farm_port_key, KeyLess> wantPorts;
	std::vector<sk_farm_vip_slot> slots;
	std::vector<uint64_t> bits(SK_FARM_PORT_WORDS, 0);

	for (const FarmPortRule &r : set.globalPorts) {
		if (r.proto != IPPROTO_TCP && r.proto != IPPROTO_UDP)
			return makeError(-EINVAL, fmt::format("farm: port rules are for TCP (6) or UDP (17), got {}",
							      r.proto));
		auto [word, bit] = portBit(r);
		bits[word] |= bit;
	}
	for (const FarmVip &v : set.vips) {
		if (v.address.family != 4 && v.address.family != 6)
			return makeError(-EINVAL, "farm VIP without an address family");
		const sk_farm_vip_key k = vipKey(v.address);
		sk_farm_vip_slot slot{};
		slot.vip = k;
		if (!v.ports.empty())
			slot.flags |= SK_FARM_VIP_PORTS_OWN;
		if (!set.globalPorts.empty())
			slot.flags |= SK_FARM_VIP_PORTS_GLOBAL;
		for (const FarmPortRule &r : v.ports)
			wantPorts.insert(portKey(k, r));
		if (wantVips.insert(k).second)
			slots.push_back(slot);
	}
	if (wantVips.size() > SK_FARM_MAX_VIPS || wantPorts.size() > SK_FARM_MAX_PORT_RULES)
		return makeError(-E2BIG, fmt::format("farm: at most {} VIPs and {} per-VIP port rules",
						     SK_FARM_MAX_VIPS, SK_FARM_MAX_PORT_RULES));
	auto table = farmBuildVipTable(slots);
	if (!table)
		return table.error();

	const uint8_t one = 1;
	for (const sk_farm_port_key &k : wantPorts) {
		if (int err = bpf_map_update_elem(portFd, &k, &one, BPF_ANY); err)
			return makeError(err, errnoMessage("farm: cannot add a port rule", err));
	}
	auto writeBits = [&](const std::vector<uint64_t> &want) -> int {
		for (uint32_t i = 0; i < SK_FARM_PORT_WORDS; i++) {
			if (want[i] == portBits_[i])
				continue;
			if (int err = bpf_map_update_elem(bitsFd, &i, &want[i], BPF_ANY); err)
				return err;
			portBits_[i] = want[i];
		}
		return 0;
	};
	std::vector<uint64_t> both(SK_FARM_PORT_WORDS);
	for (uint32_t i = 0; i < SK_FARM_PORT_WORDS; i++)
		both[i] = bits[i] | portBits_[i];
	if (int err = writeBits(both); err)
		return makeError(err, errnoMessage("farm: cannot write the global port rules", err));

	const uint32_t next = config_.vip_table ^ 1;
	if (int err = writeArray(vipFd, next * SK_FARM_VIP_SLOTS, table->slots.data(), SK_FARM_VIP_SLOTS,
				 sizeof(sk_farm_vip_slot));
	    err)
		return makeError(err, errnoMessage("farm: cannot write the VIP table", err));
	sk_farm_config cfg = config_;
	cfg.vip_salt[next] = table->salt;
	if (Status s = writeConfig(cfg); !s)
		return s;
	cfg.vip_table = next;
	if (Status s = writeConfig(cfg); !s)
		return s;

	if (int err = writeBits(bits); err)
		return makeError(err, errnoMessage("farm: cannot write the global port rules", err));
	for (const sk_farm_port_key &k : mapKeys<sk_farm_port_key>(portFd)) {
		if (!wantPorts.count(k))
			bpf_map_delete_elem(portFd, &k);
	}
	logInfo(kLog, "{}: {} VIPs (VIP table {}, worst search {} slot(s)), {} global and {} per-VIP port rules",
		options_.module, wantVips.size(), next, table->maxProbe, set.globalPorts.size(), wantPorts.size());
	return {};
}

/*
 * Two tables and a switch: the inactive table is written whole, then
 * farm_config.active_table flips with one store. A packet reads the switch
 * once, so it sees either the old or the new table, never a mix, and a bucket
 * never has two owners on one node. Per-entry updates in place could not give
 * that across nodes' transitions. The table written next is the one readers
 * just left; a reader still on it would have to span a whole control-plane
 * round trip (milliseconds) while XDP runs in well under a microsecond.
 */
Status XdpFilter::setOwnerTable(const std::vector<uint32_t> &owners, const std::vector<uint32_t> &drainFrom)
{
	if (owners.size() != options_.buckets || (!drainFrom.empty() && drainFrom.size() != options_.buckets))
		return makeError(-EINVAL, fmt::format("farm: owner table has {} entries ({} previous owners), expected {}",
						      owners.size(), drainFrom.size(), options_.buckets));
	std::vector<sk_farm_owner> table(owners.size());
	for (size_t b = 0; b < owners.size(); b++)
		table[b] = { owners[b], drainFrom.empty() ? SK_FARM_NODE_NONE : drainFrom[b] };
	const uint32_t next = config_.active_table ^ 1;
	if (int err = writeArray(bpf_map__fd(skel_->maps.farm_owners), next * options_.buckets, table.data(),
				 options_.buckets, sizeof(sk_farm_owner));
	    err)
		return makeError(err, errnoMessage("farm: cannot write the owner table", err));
	sk_farm_config cfg = config_;
	cfg.active_table = next;
	if (Status s = writeConfig(cfg); !s)
		return makeError(s.code(), "farm: cannot switch owner tables: " + s.error().message);
	size_t mine = 0, draining = 0;
	for (const sk_farm_owner &o : table) {
		mine += o.node == options_.nodeId;
		draining += o.drain_from != SK_FARM_NODE_NONE;
	}
	logInfo(kLog, "{}: owner table {} active, node {} owns {}/{} buckets, {} draining", options_.module, next,
		options_.nodeId, mine, options_.buckets, draining);
	return {};
}

/* Balanced verdicts are counted per bucket only (see enum sk_farm_verdict): summed here. */
Result<FarmCounters> XdpFilter::counters()
{
	const int ncpu = libbpf_num_possible_cpus();
	if (ncpu <= 0)
		return makeError(ncpu, errnoMessage("cannot count CPUs", ncpu));
	const size_t cpus = static_cast<size_t>(ncpu);
	FarmCounters c;
	std::vector<uint64_t> perCpu(cpus);
	const int vfd = bpf_map__fd(skel_->maps.farm_verdicts);
	for (uint32_t i = 0; i < SK_FARM_VERDICT_MAX; i++) {
		if (bpf_map_lookup_elem(vfd, &i, perCpu.data()) < 0)
			return makeError(-errno, errnoMessage("farm: cannot read verdict counters", -errno));
		for (uint64_t v : perCpu)
			c.verdicts[i] += v;
	}
	/* Per-CPU values are laid out one per CPU, each rounded up to 8 bytes (16 here). */
	const uint32_t n = options_.buckets;
	std::vector<sk_farm_bucket_count> values(static_cast<size_t>(n) * cpus);
	std::vector<uint32_t> keys(n);
	uint32_t count = n, out = 0;
	int err = bpf_map_lookup_batch(bpf_map__fd(skel_->maps.farm_bkt_pkts), nullptr, &out, keys.data(),
				       values.data(), &count, nullptr);
	if ((err && err != -ENOENT) || count != n) {
		/* No batch lookups on this kernel: entry by entry. */
		for (uint32_t i = 0; i < n; i++) {
			if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.farm_bkt_pkts), &i, &values[i * cpus]) < 0)
				return makeError(-errno, errnoMessage("farm: cannot read bucket counters", -errno));
			keys[i] = i;
		}
	}
	c.bucketPackets.assign(n, 0);
	for (uint32_t i = 0; i < n; i++) {
		for (size_t cpu = 0; cpu < cpus; cpu++) {
			const sk_farm_bucket_count &b = values[i * cpus + cpu];
			c.verdicts[SK_FARM_PASS_OWNED] += b.kept;
			c.verdicts[SK_FARM_DROP_NOT_OWNED] += b.dropped;
			c.bucketPackets[keys[i]] += b.kept + b.dropped;
		}
	}
	return c;
}

} /* namespace sk */
