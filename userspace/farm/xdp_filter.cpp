/* SPDX-License-Identifier: Apache-2.0 */
/*
 * XdpFilter: lifecycle of the farm XDP program (open, knobs, load, pin, attach,
 * detach, unpin) and the control-plane writes into its maps.
 */
#include "farm/xdp_filter.h"

#include <arpa/inet.h>
#include <linux/if_link.h>
#include <linux/magic.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <bit>
#include <cstring>
#include <set>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <fmt/format.h>

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
					   "cannot load the farm XDP program (stale pins from another "
					   "bucket count in " + pinDir_ + "?)", err));

	sk_farm_config cfg{};
	uint32_t zero = 0;
	if (bpf_map_lookup_elem(bpf_map__fd(skel_->maps.farm_config), &zero, &cfg) == 0)
		activeTable_ = cfg.active_table & 1;
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

Status XdpFilter::attach()
{
	const int fd = programFd();
	/* UPDATE_IF_NOEXIST: never replace someone else's XDP program silently. */
	uint32_t flags = XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_DRV_MODE;
	int err = bpf_xdp_attach(options_.ifindex, fd, flags, nullptr);
	if ((err == -EBUSY || err == -EEXIST) && options_.replaceStale) {
		for (uint32_t mode : { XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE }) {
			const int old = staleFilterFd(mode);
			if (old < 0)
				continue;
			bpf_xdp_attach_opts opts{};
			opts.sz = sizeof(opts);
			opts.old_prog_fd = old;
			flags = mode | XDP_FLAGS_REPLACE;
			err = bpf_xdp_attach(options_.ifindex, fd, flags, &opts);
			close(old);
			if (!err)
				logWarn(kLog, "{}: replaced a farm filter left on ifindex {} by a previous run",
					options_.module, options_.ifindex);
			break;
		}
	}
	if (err && options_.allowGeneric && err != -EBUSY && err != -EEXIST) {
		logWarn(kLog, "{}: native XDP attach on ifindex {} failed ({}), using generic mode",
			options_.module, options_.ifindex, strerror(-err));
		flags = XDP_FLAGS_UPDATE_IF_NOEXIST | XDP_FLAGS_SKB_MODE;
		err = bpf_xdp_attach(options_.ifindex, fd, flags, nullptr);
	}
	if (err)
		return makeError(err, errnoMessage(fmt::format("cannot attach the farm XDP program to ifindex {}",
							       options_.ifindex), err));
	attachFlags_ = flags;
	nativeMode_ = (flags & XDP_FLAGS_DRV_MODE) != 0;
	logInfo(kLog, "{}: farm filter attached to ifindex {} ({} mode)", options_.module,
		options_.ifindex, nativeMode_ ? "native" : "generic");
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

/*
 * Order: new port rules, then VIPs (a VIP never refers to missing rules), then
 * removal of stale VIPs, then of stale rules. Each map write is atomic per key.
 */
Status XdpFilter::setVips(const FarmVipSet &set)
{
	const int vipFd = bpf_map__fd(skel_->maps.farm_vips);
	const int portFd = bpf_map__fd(skel_->maps.farm_ports);
	std::set<sk_farm_vip_key, KeyLess> wantVips;
	std::set<sk_farm_port_key, KeyLess> wantPorts;
	std::vector<std::pair<sk_farm_vip_key, sk_farm_vip_value>> vipValues;

	for (const FarmPortRule &r : set.globalPorts)
		wantPorts.insert(portKey(sk_farm_vip_key{}, r));
	for (const FarmVip &v : set.vips) {
		if (v.address.family != 4 && v.address.family != 6)
			return makeError(-EINVAL, "farm VIP without an address family");
		const sk_farm_vip_key k = vipKey(v.address);
		sk_farm_vip_value val{};
		if (!v.ports.empty())
			val.flags |= SK_FARM_VIP_PORTS_OWN;
		if (!set.globalPorts.empty())
			val.flags |= SK_FARM_VIP_PORTS_GLOBAL;
		for (const FarmPortRule &r : v.ports)
			wantPorts.insert(portKey(k, r));
		if (wantVips.insert(k).second)
			vipValues.emplace_back(k, val);
	}
	if (wantVips.size() > SK_FARM_MAX_VIPS || wantPorts.size() > SK_FARM_MAX_PORT_RULES)
		return makeError(-E2BIG, fmt::format("farm: at most {} VIPs and {} port rules",
						     SK_FARM_MAX_VIPS, SK_FARM_MAX_PORT_RULES));

	const uint8_t one = 1;
	for (const sk_farm_port_key &k : wantPorts) {
		if (int err = bpf_map_update_elem(portFd, &k, &one, BPF_ANY); err)
			return makeError(err, errnoMessage("farm: cannot add a port rule", err));
	}
	for (const auto &[k, val] : vipValues) {
		if (int err = bpf_map_update_elem(vipFd, &k, &val, BPF_ANY); err)
			return makeError(err, errnoMessage("farm: cannot add a VIP", err));
	}
	for (const sk_farm_vip_key &k : mapKeys<sk_farm_vip_key>(vipFd)) {
		if (!wantVips.count(k))
			bpf_map_delete_elem(vipFd, &k);
	}
	for (const sk_farm_port_key &k : mapKeys<sk_farm_port_key>(portFd)) {
		if (!wantPorts.count(k))
			bpf_map_delete_elem(portFd, &k);
	}
	logInfo(kLog, "{}: {} VIPs, {} port rules", options_.module, wantVips.size(), wantPorts.size());
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
Status XdpFilter::setOwners(const std::vector<uint32_t> &owners)
{
	if (owners.size() != options_.buckets)
		return makeError(-EINVAL, fmt::format("farm: owner table has {} entries, expected {}",
						      owners.size(), options_.buckets));
	const int ownFd = bpf_map__fd(skel_->maps.farm_owners);
	const uint32_t next = activeTable_ ^ 1;
	const uint32_t base = next * options_.buckets;
	std::vector<uint32_t> keys(owners.size());
	for (uint32_t i = 0; i < options_.buckets; i++)
		keys[i] = base + i;
	uint32_t count = options_.buckets;
	int err = bpf_map_update_batch(ownFd, keys.data(), owners.data(), &count, nullptr);
	if (err) {
		/* Older kernels lack batch ops on arrays: entry by entry is just as safe here. */
		for (uint32_t i = 0; i < options_.buckets; i++) {
			err = bpf_map_update_elem(ownFd, &keys[i], &owners[i], BPF_ANY);
			if (err)
				return makeError(err, errnoMessage("farm: cannot write the owner table", err));
		}
	}
	sk_farm_config cfg{};
	cfg.active_table = next;
	uint32_t zero = 0;
	err = bpf_map_update_elem(bpf_map__fd(skel_->maps.farm_config), &zero, &cfg, BPF_ANY);
	if (err)
		return makeError(err, errnoMessage("farm: cannot switch owner tables", err));
	activeTable_ = next;
	size_t mine = 0;
	for (uint32_t o : owners)
		mine += o == options_.nodeId;
	logInfo(kLog, "{}: owner table {} active, node {} owns {}/{} buckets", options_.module, next,
		options_.nodeId, mine, options_.buckets);
	return {};
}

Result<FarmCounters> XdpFilter::counters()
{
	const int ncpu = libbpf_num_possible_cpus();
	if (ncpu <= 0)
		return makeError(ncpu, errnoMessage("cannot count CPUs", ncpu));
	std::vector<uint64_t> perCpu(static_cast<size_t>(ncpu));
	auto sum = [&](int fd, uint32_t key, uint64_t *out) -> int {
		if (bpf_map_lookup_elem(fd, &key, perCpu.data()) < 0)
			return -errno;
		uint64_t total = 0;
		for (uint64_t v : perCpu)
			total += v;
		*out = total;
		return 0;
	};
	FarmCounters c;
	const int vfd = bpf_map__fd(skel_->maps.farm_verdicts);
	for (uint32_t i = 0; i < SK_FARM_VERDICT_MAX; i++) {
		if (int err = sum(vfd, i, &c.verdicts[i]); err)
			return makeError(err, errnoMessage("farm: cannot read verdict counters", err));
	}
	const int bfd = bpf_map__fd(skel_->maps.farm_bkt_pkts);
	c.bucketPackets.resize(options_.buckets);
	for (uint32_t i = 0; i < options_.buckets; i++) {
		if (int err = sum(bfd, i, &c.bucketPackets[i]); err)
			return makeError(err, errnoMessage("farm: cannot read bucket counters", err));
	}
	return c;
}

} /* namespace sk */
