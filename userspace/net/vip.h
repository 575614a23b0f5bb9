/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Virtual IP addresses through rtnetlink (RTM_NEWADDR/DELADDR/GETADDR), never
 * by running `ip`. Add/remove are idempotent so a driver can simply re-apply
 * its desired state, e.g. to clean up a VIP left by a crashed skd.
 */
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/result.h"

struct mnl_socket;

namespace sk::net {

/* An IPv4 or IPv6 address; bytes_ holds 4 or 16 bytes in network order. */
struct IpAddress {
	int family = 0;	/* AF_INET or AF_INET6; 0 = unset */
	std::array<uint8_t, 16> bytes{};

	size_t size() const;
	bool operator==(const IpAddress &other) const;
};

struct IpPrefix {
	IpAddress address;
	uint8_t prefixLen = 0;
};

/* One address as the kernel reports it (RTM_GETADDR). */
struct InterfaceAddress {
	int ifindex = 0;
	IpPrefix prefix;
	uint32_t flags = 0;	/* IFA_F_*, from IFA_FLAGS when present */
	std::string label;	/* IPv4 only */
};

/* "198.18.0.1" or "fd00:5c::1". */
Result<IpAddress> parseIpAddress(std::string_view text);
/* "198.18.0.1/24"; without "/len" the prefix is a host prefix (32 or 128). */
Result<IpPrefix> parseIpPrefix(std::string_view text);
std::string formatIpAddress(const IpAddress &address);
std::string formatIpPrefix(const IpPrefix &prefix);

/* if_nametoindex with a message; resolved in the caller thread's netns. */
Result<int> interfaceIndex(std::string_view ifname);

struct AddOptions {
	/* IPv4: label the address "<ifname>:sk" when that fits IFNAMSIZ. */
	bool label = true;
};

/*
 * Address operations, behind an interface so VIP policy can be tested
 * without root. Errors are -errno with an actionable message:
 * -ENODEV (no such interface), -EADDRINUSE (address present on another
 * interface), -EPERM (needs CAP_NET_ADMIN), -EINVAL (bad prefix).
 */
class AddressOps
{
public:
	virtual ~AddressOps() = default;

	/* Success if the address is already on ifindex (any prefix length). */
	virtual Status add(int ifindex, const IpPrefix &prefix, const AddOptions &options = {}) = 0;
	/* Success if the address is absent; removes whatever prefix length it has. */
	virtual Status remove(int ifindex, const IpAddress &address) = 0;
	/* family: AF_INET, AF_INET6 or AF_UNSPEC; ifindex 0 = all interfaces. */
	virtual Result<std::vector<InterfaceAddress>> list(int family, int ifindex) = 0;

	/* Built on list(): is address on ifindex (0 = on any interface)? */
	Result<bool> has(int ifindex, const IpAddress &address);
	/* Removes address from every interface holding it (crash leftovers). */
	Status removeEverywhere(const IpAddress &address);
};

/*
 * AddressOps over one NETLINK_ROUTE socket. The socket belongs to the netns
 * of the thread that called open(); later calls act there whatever thread
 * uses it. Not thread-safe: one user at a time.
 */
class NetlinkAddressOps : public AddressOps
{
public:
	static Result<std::unique_ptr<NetlinkAddressOps>> open();
	~NetlinkAddressOps() override;

	NetlinkAddressOps(const NetlinkAddressOps &) = delete;
	NetlinkAddressOps &operator=(const NetlinkAddressOps &) = delete;

	Status add(int ifindex, const IpPrefix &prefix, const AddOptions &options = {}) override;
	Status remove(int ifindex, const IpAddress &address) override;
	Result<std::vector<InterfaceAddress>> list(int family, int ifindex) override;

	/* RTM_GETLINK in the socket's netns: -ENODEV when the interface is missing. */
	Result<int> linkIndex(std::string_view ifname);
	Result<std::string> linkName(int ifindex);

private:
	NetlinkAddressOps() = default;

	/* Sends one request and reads until its ack/done; dump messages go to onMessage. */
	Status transact(void *request, const std::string &what,
			const std::function<void(const void *nlh)> &onMessage);

	::mnl_socket *nl_ = nullptr;
	uint32_t portId_ = 0;
	uint32_t seq_ = 0;
};

/* Convenience wrappers taking an interface name (one netlink socket per call). */
Status addVip(std::string_view ifname, const IpPrefix &prefix, const AddOptions &options = {});
Status removeVip(std::string_view ifname, const IpAddress &address);
Result<bool> hasVip(std::string_view ifname, const IpAddress &address);

} /* namespace sk::net */
