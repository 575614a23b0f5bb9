/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Wire format: round trips, the exact byte layout, every decode failure reason, the
 * replay guard, payload codecs and incarnation persistence.
 */
#include <doctest/doctest.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "cluster/wire.h"

using namespace sk;

namespace {

const std::string kHexA = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const std::string kHexB = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

std::unique_ptr<WireCodec> makeCodec(const std::string &hex = kHexA, const char *cluster = "c1")
{
	auto key = ClusterKey::parse(hex);
	REQUIRE(key.ok());
	auto codec = WireCodec::create(*key, clusterIdFromName(cluster));
	REQUIRE(codec.ok());
	return std::move(codec.value());
}

FrameHeader sampleHeader()
{
	FrameHeader h;
	h.type = static_cast<uint8_t>(FrameType::Heartbeat);
	h.sender = 0x01020304;
	h.incarnation = 0x1122334455667788ull;
	h.sequence = 42;
	h.module = "postgres";
	return h;
}

std::vector<uint8_t> encodeFrame(WireCodec &codec, const FrameHeader &h, const std::vector<uint8_t> &payload)
{
	std::vector<uint8_t> out;
	REQUIRE(codec.encode(h, payload, &out) == 0);
	return out;
}

/* Recomputes the trailing HMAC after a test edited the header on purpose. */
void reseal(std::vector<uint8_t> &frame, const std::string &hex = kHexA)
{
	auto key = ClusterKey::parse(hex);
	REQUIRE(key.ok());
	unsigned int len = 0;
	size_t body = frame.size() - kWireMacSize;
	HMAC(EVP_sha256(), key->bytes().data(), static_cast<int>(key->bytes().size()), frame.data(), body,
	     frame.data() + body, &len);
	REQUIRE(len == kWireMacSize);
}

} /* namespace */

TEST_CASE("encode then decode gives back header and payload")
{
	auto codec = makeCodec();
	std::vector<uint8_t> payload = { 1, 2, 3, 4, 5 };
	FrameHeader h = sampleHeader();
	auto frame = encodeFrame(*codec, h, payload);
	CHECK(frame.size() == kWireOverhead + payload.size());

	DecodedFrame d;
	REQUIRE(codec->decode(frame, &d) == DropReason::None);
	CHECK(d.header.type == h.type);
	CHECK(d.header.sender == h.sender);
	CHECK(d.header.incarnation == h.incarnation);
	CHECK(d.header.sequence == h.sequence);
	CHECK(d.header.module == h.module);
	CHECK(std::vector<uint8_t>(d.payload.begin(), d.payload.end()) == payload);

	/* Empty payload, empty module, longest module. */
	h.module = "";
	auto empty = encodeFrame(*codec, h, {});
	REQUIRE(codec->decode(empty, &d) == DropReason::None);
	CHECK(d.header.module.empty());
	CHECK(d.payload.empty());
	h.module = std::string(kMaxModuleName, 'm');
	auto longest = encodeFrame(*codec, h, {});
	REQUIRE(codec->decode(longest, &d) == DropReason::None);
	CHECK(d.header.module == h.module);
}

TEST_CASE("seal gives the header and MAC of the frame encode makes, for a payload in parts")
{
	auto codec = makeCodec();
	FrameHeader h = sampleHeader();
	std::vector<uint8_t> a(1000, 0xa1), b(3, 0xb2), c(70000, 0xc3);
	std::vector<uint8_t> whole = a;
	whole.insert(whole.end(), b.begin(), b.end());
	whole.insert(whole.end(), c.begin(), c.end());
	std::vector<uint8_t> frame;
	REQUIRE(codec->encode(h, whole, &frame, kMaxStreamPayload) == 0);

	std::vector<std::span<const uint8_t>> parts = { a, {}, b, c };
	uint8_t header[kWireHeaderSize], mac[kWireMacSize];
	REQUIRE(codec->seal(h, parts, header, mac) == 0);
	std::vector<uint8_t> sealed(header, header + kWireHeaderSize);
	sealed.insert(sealed.end(), whole.begin(), whole.end());
	sealed.insert(sealed.end(), mac, mac + kWireMacSize);
	CHECK(sealed == frame);

	/* A header-only frame, and the same limits as encode. */
	REQUIRE(codec->seal(h, {}, header, mac) == 0);
	std::vector<uint8_t> empty(header, header + kWireHeaderSize);
	empty.insert(empty.end(), mac, mac + kWireMacSize);
	CHECK(empty == encodeFrame(*codec, h, {}));
	CHECK(codec->seal(h, parts, header, mac, whole.size() - 1) == -EMSGSIZE);
	h.module = std::string(kMaxModuleName + 1, 'm');
	CHECK(codec->seal(h, parts, header, mac) == -EINVAL);
}

TEST_CASE("session keys: per connection and direction, GMAC after the hellos, no IV twice")
{
	auto a = makeCodec(), b = makeCodec(), plain = makeCodec();
	REQUIRE(a->startSession(1, 2) == 0);
	REQUIRE(b->startSession(2, 1) == 0);
	CHECK(a->inSession());
	CHECK(a->startSession(1, 2) == -EINVAL);
	CHECK(makeCodec()->startSession(5, 5) == -EINVAL);

	FrameHeader h = sampleHeader();
	std::vector<uint8_t> payload(3000, 0x5a);
	h.sequence = 1;
	std::vector<uint8_t> frame;
	REQUIRE(a->encode(h, payload, &frame, kMaxStreamPayload) == 0);
	DecodedFrame d;
	CHECK(b->decode(frame, &d, kMaxStreamPayload) == DropReason::None);
	CHECK(d.header.sequence == 1);
	/* Not the cluster key's HMAC; not the other direction's key; not another connection's. */
	CHECK(plain->decode(frame, &d, kMaxStreamPayload) == DropReason::BadHmac);
	CHECK(a->decode(frame, &d, kMaxStreamPayload) == DropReason::BadHmac);
	auto other = makeCodec();
	REQUIRE(other->startSession(3, 1) == 0);
	CHECK(other->decode(frame, &d, kMaxStreamPayload) == DropReason::BadHmac);
	/* The tag is 16 bytes, then 16 zero bytes, all checked. */
	for (size_t i = 16; i < kWireMacSize; i++)
		CHECK(frame[frame.size() - kWireMacSize + i] == 0);
	for (size_t at : { size_t{ 33 }, kWireHeaderSize + 100, frame.size() - 1, frame.size() - 20 }) {
		auto bad = frame;
		bad[at] ^= 1;
		CAPTURE(at);
		CHECK(b->decode(bad, &d, kMaxStreamPayload) != DropReason::None);
	}

	/* The IV is the sequence: never sealed twice, never backwards. */
	std::vector<uint8_t> again;
	CHECK(a->encode(h, payload, &again, kMaxStreamPayload) == -EINVAL);
	h.sequence = 0x100000000ull;
	uint8_t header[kWireHeaderSize], mac[kWireMacSize];
	std::vector<std::span<const uint8_t>> parts = { payload };
	REQUIRE(a->seal(h, parts, header, mac) == 0);
	h.sequence = 7;
	CHECK(a->seal(h, parts, header, mac) == -EINVAL);

	/* A receive-only codec checks the peer's frames but cannot seal any. */
	auto reader = makeCodec();
	REQUIRE(reader->startSession(2, 1, WireCodec::Ways::Receive) == 0);
	CHECK(reader->inSession());
	CHECK(reader->decode(frame, &d, kMaxStreamPayload) == DropReason::None);
	h.sequence = 1;
	std::vector<uint8_t> none;
	CHECK(reader->encode(h, payload, &none, kMaxStreamPayload) == -EINVAL);

	/* Hellos (sequence 0) stay HMAC with the cluster key; once in a session, none is
	 * accepted any more (the peer's one came before). */
	h.sequence = 0;
	std::vector<uint8_t> hello;
	REQUIRE(a->encode(h, payload, &hello, kMaxStreamPayload) == 0);
	CHECK(plain->decode(hello, &d, kMaxStreamPayload) == DropReason::None);
	CHECK(b->decode(hello, &d, kMaxStreamPayload) == DropReason::BadHmac);
}

TEST_CASE("the byte layout is fixed and little-endian, and the MAC is HMAC-SHA256")
{
	auto codec = makeCodec();
	FrameHeader h = sampleHeader();
	auto f = encodeFrame(*codec, h, { 0xaa });
	CHECK(std::memcmp(f.data(), "SKNW", 4) == 0);
	CHECK(f[4] == kWireVersion);
	CHECK(f[5] == 1);
	CHECK(f[6] == 8);
	CHECK(f[7] == 0);
	uint64_t cid = clusterIdFromName("c1");
	for (int i = 0; i < 8; i++)
		CHECK(f[8 + i] == static_cast<uint8_t>(cid >> (8 * i)));
	CHECK(f[16] == 0x04);
	CHECK(f[19] == 0x01);
	CHECK(f[20] == 1);
	CHECK(f[24] == 0x88);
	CHECK(f[31] == 0x11);
	CHECK(f[32] == 42);
	CHECK(std::memcmp(f.data() + 40, "postgres", 8) == 0);
	CHECK(f[48] == 0);
	CHECK(f[72] == 0xaa);

	/* Independent HMAC computation over header + payload. */
	std::vector<uint8_t> copy = f;
	reseal(copy);
	CHECK(copy == f);

	/* Consecutive frames reuse the codec's context: each MAC must still be right. */
	h.sequence++;
	auto g = encodeFrame(*codec, h, { 0xbb, 0xcc });
	copy = g;
	reseal(copy);
	CHECK(copy == g);
}

TEST_CASE("encode refuses a long module name and an oversized payload")
{
	auto codec = makeCodec();
	FrameHeader h = sampleHeader();
	std::vector<uint8_t> out;
	h.module = std::string(kMaxModuleName + 1, 'm');
	CHECK(codec->encode(h, {}, &out) == -EINVAL);
	h.module = "m";
	std::vector<uint8_t> big(kMaxDatagramPayload + 1);
	CHECK(codec->encode(h, big, &out) == -EMSGSIZE);
	CHECK(out.empty());
	big.pop_back();
	CHECK(codec->encode(h, big, &out) == 0);
	CHECK(out.size() == kMaxDatagram);
}

TEST_CASE("every truncation is reported as truncated")
{
	auto codec = makeCodec();
	auto frame = encodeFrame(*codec, sampleHeader(), std::vector<uint8_t>(40, 7));
	DecodedFrame d;
	for (size_t len = 0; len < frame.size(); len++) {
		CAPTURE(len);
		CHECK(codec->decode({ frame.data(), len }, &d) == DropReason::Truncated);
	}
	CHECK(codec->decode(frame, &d) == DropReason::None);
}

TEST_CASE("oversized: announced length over the limit, or trailing bytes")
{
	auto codec = makeCodec();
	DecodedFrame d;
	auto frame = encodeFrame(*codec, sampleHeader(), { 1, 2, 3 });
	std::vector<uint8_t> trailing = frame;
	trailing.push_back(0);
	CHECK(codec->decode(trailing, &d) == DropReason::Oversized);

	/* Announce a payload over the datagram limit (bytes present, properly sealed). */
	std::vector<uint8_t> big;
	REQUIRE(codec->encode(sampleHeader(), std::vector<uint8_t>(2000), &big, kMaxStreamPayload) == 0);
	CHECK(codec->decode(big, &d) == DropReason::Oversized);
	/* ...which a stream reader allowing more accepts. */
	CHECK(codec->decode(big, &d, kMaxStreamPayload) == DropReason::None);

	/* A header announcing 4 GiB must not make anyone wait for it. */
	std::vector<uint8_t> huge = frame;
	huge[20] = huge[21] = huge[22] = huge[23] = 0xff;
	size_t size = 0;
	CHECK(WireCodec::frameSize(huge, &size) == DropReason::Oversized);
	CHECK(codec->decode(huge, &d) == DropReason::Oversized);
}

TEST_CASE("bad magic, bad version and wrong cluster")
{
	auto codec = makeCodec();
	DecodedFrame d;
	auto frame = encodeFrame(*codec, sampleHeader(), { 1 });

	auto badMagic = frame;
	badMagic[0] = 'X';
	CHECK(codec->decode(badMagic, &d) == DropReason::BadMagic);

	auto badVersion = frame;
	badVersion[4] = kWireVersion + 1;
	reseal(badVersion);
	CHECK(codec->decode(badVersion, &d) == DropReason::BadVersion);

	/* Same key, other cluster name. */
	auto other = makeCodec(kHexA, "c2");
	auto foreign = encodeFrame(*other, sampleHeader(), { 1 });
	CHECK(codec->decode(foreign, &d) == DropReason::WrongCluster);
}

TEST_CASE("a forged or altered frame fails the HMAC")
{
	auto codec = makeCodec();
	DecodedFrame d;
	auto frame = encodeFrame(*codec, sampleHeader(), { 1, 2, 3, 4 });

	/* Signed with another key for the same cluster. */
	auto forger = makeCodec(kHexB);
	auto forged = encodeFrame(*forger, sampleHeader(), { 1, 2, 3, 4 });
	CHECK(codec->decode(forged, &d) == DropReason::BadHmac);

	/* Any single flipped bit outside the magic/version/length/cluster fields. */
	for (size_t i = 0; i < frame.size(); i++) {
		if (i < 5 || (i >= 8 && i < 16) || (i >= 20 && i < 24))
			continue;
		CAPTURE(i);
		auto altered = frame;
		altered[i] ^= 0x01;
		CHECK(codec->decode(altered, &d) == DropReason::BadHmac);
	}
}

TEST_CASE("authentic but unknown type or malformed fields")
{
	auto codec = makeCodec();
	DecodedFrame d;
	FrameHeader h = sampleHeader();
	h.type = 0x77;
	auto unknown = encodeFrame(*codec, h, {});
	CHECK(codec->decode(unknown, &d) == DropReason::UnknownType);

	h.type = static_cast<uint8_t>(FrameType::ReplicationFirst) + 1;
	auto repl = encodeFrame(*codec, h, { 9 });
	CHECK(codec->decode(repl, &d) == DropReason::None);
	CHECK(std::string(frameTypeName(d.header.type)) == "replication");

	h.type = static_cast<uint8_t>(FrameType::Probe);
	auto frame = encodeFrame(*codec, h, {});
	auto longName = frame;
	longName[6] = kMaxModuleName + 1;
	reseal(longName);
	CHECK(codec->decode(longName, &d) == DropReason::Malformed);
	auto junkPadding = frame;
	junkPadding[40 + kMaxModuleName - 1] = 'x';
	reseal(junkPadding);
	CHECK(codec->decode(junkPadding, &d) == DropReason::Malformed);
	auto reserved = frame;
	reserved[7] = 1;
	reseal(reserved);
	CHECK(codec->decode(reserved, &d) == DropReason::Malformed);
}

TEST_CASE("frameSize tells a stream reader how much to read")
{
	auto codec = makeCodec();
	std::vector<uint8_t> frame;
	REQUIRE(codec->encode(sampleHeader(), std::vector<uint8_t>(5000, 1), &frame, kMaxStreamPayload) == 0);
	size_t size = 0;
	CHECK(WireCodec::frameSize({ frame.data(), kWireHeaderSize - 1 }, &size) == DropReason::Truncated);
	REQUIRE(WireCodec::frameSize({ frame.data(), kWireHeaderSize }, &size) == DropReason::None);
	CHECK(size == frame.size());
	CHECK(WireCodec::frameSize(frame, &size, 4999) == DropReason::Oversized);
}

TEST_CASE("replay guard: strictly newer within an incarnation")
{
	ReplayGuard g;
	CHECK(g.check(100, 5) == DropReason::None);
	CHECK(g.check(100, 5) == DropReason::Replayed);
	CHECK(g.check(100, 4) == DropReason::Replayed);
	CHECK(g.check(100, 6) == DropReason::None);
	CHECK(g.check(100, 1000) == DropReason::None);
	CHECK(g.check(100, 999) == DropReason::Replayed);
	CHECK(g.highest() == 1000);
}

TEST_CASE("replay guard: a restarted peer (larger incarnation) is accepted, an old one never")
{
	ReplayGuard g(8);
	CHECK(g.check(100, 50) == DropReason::None);
	/* Restart: sequence numbers start again from 0. */
	CHECK(g.check(200, 0) == DropReason::None);
	CHECK(g.incarnation() == 200);
	CHECK(g.check(200, 1) == DropReason::None);
	/* Replaying the old run's frames, even with sequence numbers never seen. */
	CHECK(g.check(100, 51) == DropReason::OldIncarnation);
	CHECK(g.check(100, 1000000) == DropReason::OldIncarnation);
	CHECK(g.check(199, 5) == DropReason::OldIncarnation);
	CHECK(g.check(200, 1) == DropReason::Replayed);
}

TEST_CASE("replay guard: window accepts reordered frames once")
{
	ReplayGuard g(16);
	CHECK(g.check(1, 10) == DropReason::None);
	CHECK(g.check(1, 12) == DropReason::None);
	CHECK(g.check(1, 11) == DropReason::None);	/* overtaken on another network */
	CHECK(g.check(1, 11) == DropReason::Replayed);
	CHECK(g.check(1, 10) == DropReason::Replayed);
	CHECK(g.peek(1, 9) == DropReason::None);
	CHECK(g.check(1, 30) == DropReason::None);
	CHECK(g.check(1, 14) == DropReason::None);	/* 16 behind: inside */
	CHECK(g.check(1, 13) == DropReason::Replayed);	/* 17 behind: outside */
	CHECK(g.check(1, 12) == DropReason::Replayed);	/* seen, and outside */
	CHECK(g.check(1, 100) == DropReason::None);	/* big jump clears the window */
	CHECK(g.check(1, 99) == DropReason::None);
	CHECK(g.check(1, 99) == DropReason::Replayed);

	ReplayGuard full(ReplayGuard::kMaxWindow);
	CHECK(full.check(1, 100) == DropReason::None);
	CHECK(full.check(1, 37) == DropReason::None);	/* 63 behind */
	CHECK(full.check(1, 36) == DropReason::Replayed);	/* 64 behind: outside the bitmap */
}

TEST_CASE("heartbeat payload round trip and bounds")
{
	HeartbeatPayload p;
	p.state = 3;
	p.subState = 7;
	p.inSync = true;
	for (int i = 0; i < 16; i++)
		p.generation[i] = static_cast<uint8_t>(i * 3);
	p.viewDigest = 0xdeadbeefcafef00dull;
	p.sendTimeNs = 123456789012ull;
	p.echoTimeNs = 5;
	p.echoDelayNs = 6;
	for (NodeId n = 0; n < HeartbeatPayload::kMaxMembers; n++)
		p.members.push_back({ n * 1000 + 1, static_cast<uint8_t>(n % 3) });
	for (size_t i = 0; i < HeartbeatPayload::kMaxModuleData; i++)
		p.moduleData.push_back(static_cast<uint8_t>(i * 7));

	std::vector<uint8_t> buf;
	REQUIRE(p.encode(&buf) == 0);
	CHECK(buf.size() == HeartbeatPayload::kMaxSize);
	CHECK(buf.size() <= kMaxDatagramPayload);
	HeartbeatPayload q;
	REQUIRE(HeartbeatPayload::decode(buf, &q) == DropReason::None);
	CHECK(q == p);

	for (size_t len = 0; len < buf.size(); len++) {
		CAPTURE(len);
		CHECK(HeartbeatPayload::decode({ buf.data(), len }, &q) == DropReason::Malformed);
	}
	auto extra = buf;
	extra.push_back(0);
	CHECK(HeartbeatPayload::decode(extra, &q) == DropReason::Malformed);
	auto flags = buf;
	flags[2] |= 0x02;
	CHECK(HeartbeatPayload::decode(flags, &q) == DropReason::Malformed);
	auto count = buf;
	count[52] = HeartbeatPayload::kMaxMembers + 1;
	CHECK(HeartbeatPayload::decode(count, &q) == DropReason::Malformed);

	auto dataLen = buf;
	dataLen[54] = static_cast<uint8_t>((HeartbeatPayload::kMaxModuleData + 1) & 0xff);
	dataLen[55] = static_cast<uint8_t>((HeartbeatPayload::kMaxModuleData + 1) >> 8);
	CHECK(HeartbeatPayload::decode(dataLen, &q) == DropReason::Malformed);
	auto reserved = buf;
	reserved[53] = 1;
	CHECK(HeartbeatPayload::decode(reserved, &q) == DropReason::Malformed);

	HeartbeatPayload bigData = p;
	bigData.moduleData.push_back(1);
	std::vector<uint8_t> tooBig;
	CHECK(bigData.encode(&tooBig) == -EMSGSIZE);

	p.members.push_back({ 9, 9 });
	std::vector<uint8_t> tooMany;
	CHECK(p.encode(&tooMany) == -EMSGSIZE);

	HeartbeatPayload empty;
	std::vector<uint8_t> small;
	REQUIRE(empty.encode(&small) == 0);
	CHECK(small.size() == HeartbeatPayload::kFixedSize);
	REQUIRE(HeartbeatPayload::decode(small, &q) == DropReason::None);
	CHECK(q == empty);
}

TEST_CASE("probe payload round trip")
{
	ProbePayload p{ 0x0102030405060708ull, 99 };
	std::vector<uint8_t> buf;
	p.encode(&buf);
	CHECK(buf.size() == ProbePayload::kSize);
	ProbePayload q;
	REQUIRE(ProbePayload::decode(buf, &q) == DropReason::None);
	CHECK(q == p);
	buf.pop_back();
	CHECK(ProbePayload::decode(buf, &q) == DropReason::Malformed);
}

TEST_CASE("cluster ids are stable and distinct")
{
	CHECK(clusterIdFromName("c1") == clusterIdFromName("c1"));
	CHECK(clusterIdFromName("c1") != clusterIdFromName("c2"));
	CHECK(clusterIdFromName("") != 0);
	CHECK(std::string(dropReasonName(DropReason::BadHmac)) == "bad-hmac");
	CHECK(std::string(dropReasonName(DropReason::UnknownModule)) == "unknown-module");
}

TEST_CASE("persisted incarnations strictly increase even if the clock goes back")
{
	char tmpl[] = "/tmp/sk-inc-test-XXXXXX";
	REQUIRE(mkdtemp(tmpl) != nullptr);
	std::string path = std::string(tmpl) + "/incarnation";
	auto a = nextIncarnation(path);
	REQUIRE(a.ok());
	auto b = nextIncarnation(path);
	REQUIRE(b.ok());
	CHECK(*b > *a);
	/* A stored value far in the future stands for a wall clock that went backwards. */
	FILE *f = fopen(path.c_str(), "w");
	REQUIRE(f != nullptr);
	fprintf(f, "%llu\n", 9000000000000000000ull);
	fclose(f);
	auto c = nextIncarnation(path);
	REQUIRE(c.ok());
	CHECK(*c == 9000000000000000001ull);
	unlink(path.c_str());
	rmdir(tmpl);

	auto plain = nextIncarnation("");
	REQUIRE(plain.ok());
	CHECK(*plain > 1600000000ull * 1000000000ull);
}
