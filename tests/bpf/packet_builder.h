/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Tiny packet builder for BPF tests and benchmarks: appends headers in wire
 * order. A layer writes the ethertype / next-header field that announces it,
 * so VLAN tags and IPv6 extension chains compose. Checksums are not computed
 * (XDP programs under test do not check them); IP lengths are fixed in bytes().
 */
#pragma once

#include <arpa/inet.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace sk::test {

using Mac = std::array<uint8_t, 6>;

inline std::array<uint8_t, 4> ip4(const char *text)
{
	std::array<uint8_t, 4> a{};
	inet_pton(AF_INET, text, a.data());
	return a;
}

inline std::array<uint8_t, 16> ip6(const char *text)
{
	std::array<uint8_t, 16> a{};
	inet_pton(AF_INET6, text, a.data());
	return a;
}

class PacketBuilder
{
public:
	PacketBuilder &eth(const Mac &dst, const Mac &src)
	{
		append(dst.data(), 6);
		append(src.data(), 6);
		pendingType_ = true;
		return *this;
	}
	/* Writes the pending ethertype (or IPv6 next header) slot. */
	PacketBuilder &ethertype(uint16_t type)
	{
		put16(type);
		pendingType_ = false;
		return *this;
	}
	PacketBuilder &vlan(uint16_t tpid, uint16_t vid)
	{
		ethertype(tpid);
		put16(vid & 0x0fff);
		pendingType_ = true;
		return *this;
	}
	/* fragField: host-order flags|offset (0x2000 = MF, offset in 8-byte units). */
	PacketBuilder &ipv4(std::array<uint8_t, 4> src, std::array<uint8_t, 4> dst, uint8_t proto,
			    const std::vector<uint8_t> &options = {}, uint16_t fragField = 0)
	{
		if (pendingType_)
			ethertype(0x0800);
		ipStarts_.push_back({ b_.size(), 4 });
		b_.push_back(static_cast<uint8_t>(0x40 | (5 + options.size() / 4)));
		b_.push_back(0);
		put16(0);	/* total length, fixed in bytes() */
		put16(0x1234);
		put16(fragField);
		b_.push_back(64);
		b_.push_back(proto);
		put16(0);
		append(src.data(), 4);
		append(dst.data(), 4);
		append(options.data(), options.size());
		return *this;
	}
	PacketBuilder &ipv6(std::array<uint8_t, 16> src, std::array<uint8_t, 16> dst, uint8_t next)
	{
		if (pendingType_)
			ethertype(0x86dd);
		ipStarts_.push_back({ b_.size(), 6 });
		put32(0x60000000);
		put16(0);	/* payload length, fixed in bytes() */
		b_.push_back(next);
		b_.push_back(64);
		append(src.data(), 16);
		append(dst.data(), 16);
		return *this;
	}
	/* Hop-by-hop / routing / destination options: (units + 1) * 8 bytes. */
	PacketBuilder &ipv6Ext(uint8_t next, uint8_t units = 0)
	{
		b_.push_back(next);
		b_.push_back(units);
		b_.resize(b_.size() + (units + 1) * 8 - 2, 0);
		return *this;
	}
	/* offset in 8-byte units. */
	PacketBuilder &ipv6Frag(uint8_t next, uint16_t offset, bool more)
	{
		b_.push_back(next);
		b_.push_back(0);
		put16(static_cast<uint16_t>((offset << 3) | (more ? 1 : 0)));
		put32(0xabcd);
		return *this;
	}
	/* flags: byte 13 of the header (0x02 SYN, 0x10 ACK, 0x18 PSH+ACK...). */
	PacketBuilder &tcp(uint16_t sport, uint16_t dport, uint8_t flags = 0x02, uint32_t seq = 1, uint32_t ack = 0)
	{
		put16(sport);
		put16(dport);
		put32(seq);
		put32(ack);
		put16(static_cast<uint16_t>(0x5000 | flags));	/* data offset 5 */
		put16(65535);
		put32(0);	/* checksum, urgent */
		return *this;
	}
	PacketBuilder &udp(uint16_t sport, uint16_t dport)
	{
		put16(sport);
		put16(dport);
		put16(8);
		put16(0);
		return *this;
	}
	/* ICMP / ICMPv6 header (8 bytes; the last 4 are the type-specific word, e.g. MTU). */
	PacketBuilder &icmp(uint8_t type, uint8_t code, uint32_t rest = 0)
	{
		b_.push_back(type);
		b_.push_back(code);
		put16(0);
		put32(rest);
		return *this;
	}
	PacketBuilder &payload(size_t n, uint8_t fill = 0xa5)
	{
		b_.resize(b_.size() + n, fill);
		return *this;
	}
	PacketBuilder &raw(const std::vector<uint8_t> &bytes)
	{
		append(bytes.data(), bytes.size());
		return *this;
	}

	std::vector<uint8_t> bytes() const
	{
		std::vector<uint8_t> out = b_;
		for (auto [off, family] : ipStarts_) {
			if (family == 4 && off + 4 <= out.size()) {
				const size_t len = out.size() - off;
				out[off + 2] = static_cast<uint8_t>(len >> 8);
				out[off + 3] = static_cast<uint8_t>(len);
			} else if (family == 6 && off + 6 <= out.size()) {
				const size_t len = out.size() - off - 40;
				out[off + 4] = static_cast<uint8_t>(len >> 8);
				out[off + 5] = static_cast<uint8_t>(len);
			}
		}
		return out;
	}

private:
	void append(const uint8_t *p, size_t n) { b_.insert(b_.end(), p, p + n); }
	void put16(uint16_t v)
	{
		b_.push_back(static_cast<uint8_t>(v >> 8));
		b_.push_back(static_cast<uint8_t>(v));
	}
	void put32(uint32_t v)
	{
		put16(static_cast<uint16_t>(v >> 16));
		put16(static_cast<uint16_t>(v));
	}

	std::vector<uint8_t> b_;
	std::vector<std::pair<size_t, int>> ipStarts_;
	bool pendingType_ = false;
};

inline std::vector<uint8_t> truncated(std::vector<uint8_t> p, size_t len)
{
	p.resize(len);
	return p;
}

inline std::vector<uint8_t> withDestMac(std::vector<uint8_t> p, const Mac &mac)
{
	std::memcpy(p.data(), mac.data(), 6);
	return p;
}

inline std::string hex(const std::vector<uint8_t> &p)
{
	static const char d[] = "0123456789abcdef";
	std::string s;
	for (size_t i = 0; i < p.size(); i++) {
		if (i && i % 16 == 0)
			s += '\n';
		else if (i)
			s += ' ';
		s += d[p[i] >> 4];
		s += d[p[i] & 15];
	}
	return s;
}

} /* namespace sk::test */
