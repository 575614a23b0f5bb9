/* SPDX-License-Identifier: Apache-2.0 */
/*
 * rtnetlink address management for VIPs (libmnl). Requests carry NLM_F_ACK and
 * extended acks are enabled so a kernel refusal reaches the user with its reason.
 */
#include "net/vip.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <arpa/inet.h>
#include <linux/if_addr.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <libmnl/libmnl.h>

#include "core/log.h"

namespace sk::net {

namespace {

LogCategory kLog("vip");

/* Dumps of many addresses come in several datagrams; 32 KiB avoids truncation (MSG_TRUNC). */
constexpr size_t kRecvBufferSize = 32768;
/* The kernel answers synchronously; this only bounds a wait that should never happen. */
constexpr int kRecvTimeoutSeconds = 5;
constexpr const char *kLabelSuffix = ":sk";

struct ExtAck {
	std::string message;
};

int parseExtAckAttr(const struct nlattr *attr, void *data)
{
	auto *ack = static_cast<ExtAck *>(data);
	if (mnl_attr_get_type(attr) == NLMSGERR_ATTR_MSG &&
	    mnl_attr_validate(attr, MNL_TYPE_NUL_STRING) >= 0)
		ack->message = mnl_attr_get_str(attr);
	return MNL_CB_OK;
}

/* The kernel's own explanation, when it sent one (NETLINK_EXT_ACK). */
std::string extAckMessage(const struct nlmsghdr *nlh)
{
	if (!(nlh->nlmsg_flags & NLM_F_ACK_TLVS))
		return {};
	const auto *err = static_cast<const struct nlmsgerr *>(mnl_nlmsg_get_payload(nlh));
	size_t offset = sizeof(*err);
	if (!(nlh->nlmsg_flags & NLM_F_CAPPED))
		offset += err->msg.nlmsg_len - sizeof(struct nlmsghdr);
	if (offset >= mnl_nlmsg_get_payload_len(nlh))
		return {};
	ExtAck ack;
	mnl_attr_parse(nlh, offset, parseExtAckAttr, &ack);
	return ack.message;
}

struct AddrAttrs {
	const struct nlattr *tb[IFA_MAX + 1] = {};
};

int collectAddrAttr(const struct nlattr *attr, void *data)
{
	auto *attrs = static_cast<AddrAttrs *>(data);
	int type = mnl_attr_get_type(attr);
	if (mnl_attr_type_valid(attr, IFA_MAX) < 0)
		return MNL_CB_OK;
	attrs->tb[type] = attr;
	return MNL_CB_OK;
}

struct LinkAttrs {
	const struct nlattr *tb[IFLA_MAX + 1] = {};
};

int collectLinkAttr(const struct nlattr *attr, void *data)
{
	auto *attrs = static_cast<LinkAttrs *>(data);
	int type = mnl_attr_get_type(attr);
	if (mnl_attr_type_valid(attr, IFLA_MAX) < 0)
		return MNL_CB_OK;
	attrs->tb[type] = attr;
	return MNL_CB_OK;
}

bool validPrefix(const IpPrefix &prefix)
{
	if (prefix.address.family == AF_INET)
		return prefix.prefixLen <= 32;
	if (prefix.address.family == AF_INET6)
		return prefix.prefixLen <= 128;
	return false;
}

} /* namespace */

size_t IpAddress::size() const
{
	return family == AF_INET ? 4 : family == AF_INET6 ? 16 : 0;
}

bool IpAddress::operator==(const IpAddress &other) const
{
	return family == other.family &&
	       std::equal(bytes.begin(), bytes.begin() + size(), other.bytes.begin());
}

Result<IpAddress> parseIpAddress(std::string_view text)
{
	std::string s(text);
	IpAddress a;
	if (inet_pton(AF_INET, s.c_str(), a.bytes.data()) == 1) {
		a.family = AF_INET;
		return a;
	}
	if (inet_pton(AF_INET6, s.c_str(), a.bytes.data()) == 1) {
		a.family = AF_INET6;
		return a;
	}
	return makeError(-EINVAL, "'" + s + "' is not an IPv4 or IPv6 address");
}

Result<IpPrefix> parseIpPrefix(std::string_view text)
{
	size_t slash = text.find('/');
	auto address = parseIpAddress(text.substr(0, slash));
	if (!address)
		return address.error();
	IpPrefix p{ *address, static_cast<uint8_t>(address->size() * 8) };
	if (slash == std::string_view::npos)
		return p;
	std::string_view len = text.substr(slash + 1);
	unsigned value = 0;
	if (len.empty() || len.size() > 3 ||
	    !std::all_of(len.begin(), len.end(), [](char c) { return c >= '0' && c <= '9'; }))
		return makeError(-EINVAL, "bad prefix length in '" + std::string(text) + "'");
	for (char c : len)
		value = value * 10 + static_cast<unsigned>(c - '0');
	if (value > address->size() * 8)
		return makeError(-EINVAL, "prefix length " + std::to_string(value) +
						  " too long in '" + std::string(text) + "'");
	p.prefixLen = static_cast<uint8_t>(value);
	return p;
}

std::string formatIpAddress(const IpAddress &address)
{
	char buf[INET6_ADDRSTRLEN] = "?";
	if (address.family == AF_INET || address.family == AF_INET6)
		inet_ntop(address.family, address.bytes.data(), buf, sizeof(buf));
	return buf;
}

std::string formatIpPrefix(const IpPrefix &prefix)
{
	return formatIpAddress(prefix.address) + "/" + std::to_string(prefix.prefixLen);
}

Result<int> interfaceIndex(std::string_view ifname)
{
	std::string name(ifname);
	unsigned index = if_nametoindex(name.c_str());
	if (index == 0)
		return makeError(-ENODEV, "no such interface '" + name + "'");
	return static_cast<int>(index);
}

Result<bool> AddressOps::has(int ifindex, const IpAddress &address)
{
	auto addrs = list(address.family, ifindex);
	if (!addrs)
		return addrs.error();
	return std::any_of(addrs->begin(), addrs->end(),
			   [&](const InterfaceAddress &a) { return a.prefix.address == address; });
}

Status AddressOps::removeEverywhere(const IpAddress &address)
{
	auto addrs = list(address.family, 0);
	if (!addrs)
		return addrs.error();
	for (const InterfaceAddress &a : *addrs) {
		if (!(a.prefix.address == address))
			continue;
		logInfo(kLog, "removing leftover {} from interface index {}",
			formatIpPrefix(a.prefix), a.ifindex);
		Status s = remove(a.ifindex, address);
		if (!s)
			return s;
	}
	return {};
}

Result<std::unique_ptr<NetlinkAddressOps>> NetlinkAddressOps::open()
{
	std::unique_ptr<NetlinkAddressOps> ops(new NetlinkAddressOps());
	ops->nl_ = mnl_socket_open2(NETLINK_ROUTE, SOCK_CLOEXEC);
	if (!ops->nl_)
		return makeError(-errno, errnoMessage("netlink socket", errno));
	if (mnl_socket_bind(ops->nl_, 0, MNL_SOCKET_AUTOPID) < 0)
		return makeError(-errno, errnoMessage("netlink bind", errno));
	ops->portId_ = mnl_socket_get_portid(ops->nl_);

	/* Best effort: older kernels lack them and we then report errno alone. */
	int one = 1;
	mnl_socket_setsockopt(ops->nl_, NETLINK_CAP_ACK, &one, sizeof(one));
	mnl_socket_setsockopt(ops->nl_, NETLINK_EXT_ACK, &one, sizeof(one));
	struct timeval tv = { kRecvTimeoutSeconds, 0 };
	setsockopt(mnl_socket_get_fd(ops->nl_), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	ops->seq_ = static_cast<uint32_t>(time(nullptr));
	return ops;
}

NetlinkAddressOps::~NetlinkAddressOps()
{
	if (nl_)
		mnl_socket_close(nl_);
}

Status NetlinkAddressOps::transact(void *request, const std::string &what,
				   const std::function<void(const void *nlh)> &onMessage)
{
	auto *req = static_cast<struct nlmsghdr *>(request);
	req->nlmsg_seq = ++seq_;
	if (mnl_socket_sendto(nl_, req, req->nlmsg_len) < 0)
		return makeError(-errno, errnoMessage(what + ": netlink send", errno));

	std::vector<char> buf(kRecvBufferSize);
	for (;;) {
		ssize_t n = mnl_socket_recvfrom(nl_, buf.data(), buf.size());
		if (n < 0) {
			int err = errno;
			if (err == EAGAIN || err == EWOULDBLOCK)
				return makeError(-ETIMEDOUT, what + ": no answer from the kernel");
			return makeError(-err, errnoMessage(what + ": netlink receive", err));
		}
		int len = static_cast<int>(n);
		for (auto *nlh = reinterpret_cast<const struct nlmsghdr *>(buf.data());
		     mnl_nlmsg_ok(nlh, len); nlh = mnl_nlmsg_next(nlh, &len)) {
			/* Stale answers from an earlier timed-out request are skipped. */
			if (nlh->nlmsg_seq != seq_ || (nlh->nlmsg_pid && nlh->nlmsg_pid != portId_))
				continue;
			if (nlh->nlmsg_type == NLMSG_DONE) {
				/* A dump that failed part way carries its error here. */
				int err = 0;
				if (mnl_nlmsg_get_payload_len(nlh) >= sizeof(int))
					memcpy(&err, mnl_nlmsg_get_payload(nlh), sizeof(err));
				if (err < 0)
					return makeError(err, errnoMessage(what, err));
				return {};
			}
			if (nlh->nlmsg_type == NLMSG_ERROR) {
				const auto *err = static_cast<const struct nlmsgerr *>(
					mnl_nlmsg_get_payload(nlh));
				if (err->error == 0)
					return {};
				std::string detail = extAckMessage(nlh);
				std::string msg = errnoMessage(what, err->error);
				if (!detail.empty())
					msg += " (" + detail + ")";
				return makeError(err->error, msg);
			}
			if (onMessage)
				onMessage(nlh);
		}
	}
}

Result<std::string> NetlinkAddressOps::linkName(int ifindex)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	auto *ifi = static_cast<struct ifinfomsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifinfomsg)));
	ifi->ifi_family = AF_UNSPEC;
	ifi->ifi_index = ifindex;
	std::string name;
	Status s = transact(nlh, "interface index " + std::to_string(ifindex), [&](const void *m) {
		LinkAttrs attrs;
		mnl_attr_parse(static_cast<const struct nlmsghdr *>(m), sizeof(struct ifinfomsg),
			       collectLinkAttr, &attrs);
		if (attrs.tb[IFLA_IFNAME])
			name = mnl_attr_get_str(attrs.tb[IFLA_IFNAME]);
	});
	if (!s) {
		if (s.code() == -ENODEV)
			return makeError(-ENODEV, "no such interface (index " + std::to_string(ifindex) + ")");
		return s.error();
	}
	return name;
}

Result<int> NetlinkAddressOps::linkIndex(std::string_view ifname)
{
	std::string nameStr(ifname);
	if (nameStr.empty() || nameStr.size() >= IFNAMSIZ)
		return makeError(-EINVAL, "invalid interface name '" + nameStr + "'");
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETLINK;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	auto *ifi = static_cast<struct ifinfomsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifinfomsg)));
	ifi->ifi_family = AF_UNSPEC;
	mnl_attr_put_strz(nlh, IFLA_IFNAME, nameStr.c_str());
	int index = 0;
	Status s = transact(nlh, "interface '" + nameStr + "'", [&](const void *m) {
		const auto *reply = static_cast<const struct ifinfomsg *>(
			mnl_nlmsg_get_payload(static_cast<const struct nlmsghdr *>(m)));
		index = reply->ifi_index;
	});
	if (!s) {
		if (s.code() == -ENODEV)
			return makeError(-ENODEV, "no such interface '" + nameStr + "'");
		return s.error();
	}
	if (index <= 0)
		return makeError(-ENODEV, "no such interface '" + nameStr + "'");
	return index;
}

Result<std::vector<InterfaceAddress>> NetlinkAddressOps::list(int family, int ifindex)
{
	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_GETADDR;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	auto *ifa = static_cast<struct ifaddrmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifaddrmsg)));
	ifa->ifa_family = static_cast<uint8_t>(family);

	std::vector<InterfaceAddress> out;
	Status s = transact(nlh, "listing addresses", [&](const void *m) {
		const auto *msg = static_cast<const struct nlmsghdr *>(m);
		if (msg->nlmsg_type != RTM_NEWADDR)
			return;
		const auto *reply = static_cast<const struct ifaddrmsg *>(mnl_nlmsg_get_payload(msg));
		if (family != AF_UNSPEC && reply->ifa_family != family)
			return;
		if (ifindex != 0 && static_cast<int>(reply->ifa_index) != ifindex)
			return;
		if (reply->ifa_family != AF_INET && reply->ifa_family != AF_INET6)
			return;
		AddrAttrs attrs;
		mnl_attr_parse(msg, sizeof(struct ifaddrmsg), collectAddrAttr, &attrs);
		/* IFA_LOCAL is our address on point-to-point links, where IFA_ADDRESS is the peer. */
		const struct nlattr *addr = attrs.tb[IFA_LOCAL] ? attrs.tb[IFA_LOCAL] : attrs.tb[IFA_ADDRESS];
		if (!addr)
			return;
		InterfaceAddress a;
		a.ifindex = static_cast<int>(reply->ifa_index);
		a.prefix.address.family = reply->ifa_family;
		a.prefix.prefixLen = reply->ifa_prefixlen;
		size_t len = std::min<size_t>(mnl_attr_get_payload_len(addr), a.prefix.address.size());
		memcpy(a.prefix.address.bytes.data(), mnl_attr_get_payload(addr), len);
		a.flags = attrs.tb[IFA_FLAGS] ? mnl_attr_get_u32(attrs.tb[IFA_FLAGS]) : reply->ifa_flags;
		if (attrs.tb[IFA_LABEL])
			a.label = mnl_attr_get_str(attrs.tb[IFA_LABEL]);
		out.push_back(std::move(a));
	});
	if (!s)
		return s.error();
	return out;
}

Status NetlinkAddressOps::add(int ifindex, const IpPrefix &prefix, const AddOptions &options)
{
	const std::string text = formatIpPrefix(prefix);
	if (!validPrefix(prefix))
		return makeError(-EINVAL, "invalid address or prefix length: " + text);
	auto ifname = linkName(ifindex);
	if (!ifname)
		return makeError(ifname.code(), "cannot add " + text + ": " + ifname.error().message);

	/*
	 * Checked first because the kernel happily puts the same IPv4 address on
	 * two interfaces, and a VIP there would answer from the wrong place.
	 */
	auto present = list(prefix.address.family, 0);
	if (!present)
		return present.error();
	for (const InterfaceAddress &a : *present) {
		if (!(a.prefix.address == prefix.address))
			continue;
		if (a.ifindex != ifindex) {
			auto other = linkName(a.ifindex);
			return makeError(-EADDRINUSE, "cannot add " + text + " to " + *ifname +
							      ": address already on interface " +
							      (other ? *other : std::to_string(a.ifindex)));
		}
		if (a.prefix.prefixLen != prefix.prefixLen)
			logWarn(kLog, "{} already on {} as {}: keeping it", text, *ifname,
				formatIpPrefix(a.prefix));
		else
			logDebug(kLog, "{} already on {}", text, *ifname);
		return {};
	}

	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_NEWADDR;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
	auto *ifa = static_cast<struct ifaddrmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifaddrmsg)));
	ifa->ifa_family = static_cast<uint8_t>(prefix.address.family);
	ifa->ifa_prefixlen = prefix.prefixLen;
	ifa->ifa_scope = RT_SCOPE_UNIVERSE;
	ifa->ifa_index = static_cast<uint32_t>(ifindex);
	const size_t alen = prefix.address.size();
	if (prefix.address.family == AF_INET) {
		mnl_attr_put(nlh, IFA_LOCAL, alen, prefix.address.bytes.data());
		mnl_attr_put(nlh, IFA_ADDRESS, alen, prefix.address.bytes.data());
		std::string label = *ifname + kLabelSuffix;
		/* The kernel requires labels to start with the device name and fit IFNAMSIZ. */
		if (options.label && label.size() < IFNAMSIZ)
			mnl_attr_put_strz(nlh, IFA_LABEL, label.c_str());
	} else {
		/*
		 * NODAD: a VIP moving between nodes must serve at once; DAD would hold
		 * it tentative for a second and fail it if the old owner still answers.
		 * No IFA_F_NOPREFIXROUTE: the on-link prefix route is wanted.
		 */
		ifa->ifa_flags = IFA_F_NODAD;
		mnl_attr_put(nlh, IFA_ADDRESS, alen, prefix.address.bytes.data());
		mnl_attr_put_u32(nlh, IFA_FLAGS, IFA_F_NODAD);
	}

	Status s = transact(nlh, "adding " + text + " to " + *ifname, nullptr);
	if (!s) {
		switch (-s.code()) {
		case EEXIST:
			/* Raced with another writer: the address is there, which is what we want. */
			return {};
		case EPERM:
		case EACCES:
			return makeError(s.code(), s.error().message + ": needs root or CAP_NET_ADMIN");
		case ENODEV:
			return makeError(s.code(), "cannot add " + text + ": interface " + *ifname + " is gone");
		default:
			return s;
		}
	}
	logInfo(kLog, "added {} to {}", text, *ifname);
	return {};
}

Status NetlinkAddressOps::remove(int ifindex, const IpAddress &address)
{
	const std::string text = formatIpAddress(address);
	if (address.size() == 0)
		return makeError(-EINVAL, "invalid address");
	auto ifname = linkName(ifindex);
	if (!ifname)
		return makeError(ifname.code(), "cannot remove " + text + ": " + ifname.error().message);
	auto present = list(address.family, ifindex);
	if (!present)
		return present.error();
	auto it = std::find_if(present->begin(), present->end(),
			       [&](const InterfaceAddress &a) { return a.prefix.address == address; });
	if (it == present->end()) {
		logDebug(kLog, "{} not on {}: nothing to remove", text, *ifname);
		return {};
	}

	char buf[MNL_SOCKET_BUFFER_SIZE];
	struct nlmsghdr *nlh = mnl_nlmsg_put_header(buf);
	nlh->nlmsg_type = RTM_DELADDR;
	nlh->nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	auto *ifa = static_cast<struct ifaddrmsg *>(mnl_nlmsg_put_extra_header(nlh, sizeof(struct ifaddrmsg)));
	ifa->ifa_family = static_cast<uint8_t>(address.family);
	/* The kernel matches the prefix length too, so use the one it holds. */
	ifa->ifa_prefixlen = it->prefix.prefixLen;
	ifa->ifa_index = static_cast<uint32_t>(ifindex);
	if (address.family == AF_INET)
		mnl_attr_put(nlh, IFA_LOCAL, address.size(), address.bytes.data());
	mnl_attr_put(nlh, IFA_ADDRESS, address.size(), address.bytes.data());

	const std::string prefixText = formatIpPrefix(it->prefix);
	Status s = transact(nlh, "removing " + prefixText + " from " + *ifname, nullptr);
	if (!s) {
		switch (-s.code()) {
		case EADDRNOTAVAIL:
		case ENOENT:
			return {};
		case EPERM:
		case EACCES:
			return makeError(s.code(), s.error().message + ": needs root or CAP_NET_ADMIN");
		default:
			return s;
		}
	}
	logInfo(kLog, "removed {} from {}", prefixText, *ifname);
	return {};
}

namespace {

template<typename Fn>
auto withInterface(std::string_view ifname, Fn fn) -> decltype(fn(std::declval<NetlinkAddressOps &>(), 0))
{
	auto ops = NetlinkAddressOps::open();
	if (!ops)
		return ops.error();
	auto index = (*ops)->linkIndex(ifname);
	if (!index)
		return index.error();
	return fn(**ops, *index);
}

} /* namespace */

Status addVip(std::string_view ifname, const IpPrefix &prefix, const AddOptions &options)
{
	return withInterface(ifname, [&](NetlinkAddressOps &ops, int index) {
		return ops.add(index, prefix, options);
	});
}

Status removeVip(std::string_view ifname, const IpAddress &address)
{
	return withInterface(ifname, [&](NetlinkAddressOps &ops, int index) {
		return ops.remove(index, address);
	});
}

Result<bool> hasVip(std::string_view ifname, const IpAddress &address)
{
	return withInterface(ifname, [&](NetlinkAddressOps &ops, int index) {
		return ops.has(index, address);
	});
}

} /* namespace sk::net */
