/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for everything that parses bytes from the network: frame decode,
 * frameSize, heartbeat and probe payloads, and the replay guard. Inputs whose first byte
 * is odd are sealed with a valid HMAC first, so the fuzzer also reaches the code behind
 * the authentication check (type, module name, payload decoders).
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cluster/wire.h"

namespace {

const char kHex[] = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

struct Fixture {
	sk::ClusterKey key;
	std::unique_ptr<sk::WireCodec> codec;
};

Fixture &fixture()
{
	static Fixture *f = [] {
		auto key = sk::ClusterKey::parse(kHex);
		if (!key.ok())
			abort();
		auto codec = sk::WireCodec::create(*key, sk::clusterIdFromName("fuzz"));
		if (!codec.ok())
			abort();
		return new Fixture{ std::move(key.value()), std::move(codec.value()) };
	}();
	return *f;
}

void check(bool cond)
{
	if (!cond)
		abort();
}

} /* namespace */

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	Fixture &fx = fixture();
	bool seal = data[0] & 1;
	std::vector<uint8_t> in(data + 1, data + size);

	if (seal) {
		/* Force magic, version and cluster id, fix the length, append a valid HMAC. */
		if (in.size() < sk::kWireHeaderSize)
			in.resize(sk::kWireHeaderSize, 0);
		in[0] = 'S';
		in[1] = 'K';
		in[2] = 'N';
		in[3] = 'W';
		in[4] = sk::kWireVersion;
		uint64_t cid = sk::clusterIdFromName("fuzz");
		for (int i = 0; i < 8; i++)
			in[8 + i] = static_cast<uint8_t>(cid >> (8 * i));
		size_t payload = in.size() - sk::kWireHeaderSize;
		for (int i = 0; i < 4; i++)
			in[20 + i] = static_cast<uint8_t>(payload >> (8 * i));
		in.resize(in.size() + sk::kWireMacSize);
		unsigned int len = 0;
		auto k = fx.key.bytes();
		HMAC(EVP_sha256(), k.data(), static_cast<int>(k.size()), in.data(), in.size() - sk::kWireMacSize,
		     in.data() + in.size() - sk::kWireMacSize, &len);
	}

	size_t frameSize = 0;
	sk::DropReason sizeReason = sk::WireCodec::frameSize(in, &frameSize, sk::kMaxStreamPayload);
	if (sizeReason == sk::DropReason::None)
		check(frameSize >= sk::kWireOverhead && frameSize <= sk::kWireOverhead + sk::kMaxStreamPayload);

	sk::DecodedFrame f;
	sk::DropReason r = fx.codec->decode(in, &f);
	if (r != sk::DropReason::None)
		return 0;

	/* Whatever decodes must re-encode to the very same bytes (canonical format). */
	check(f.header.module.size() <= sk::kMaxModuleName);
	check(f.payload.size() <= sk::kMaxDatagramPayload);
	std::vector<uint8_t> again;
	check(fx.codec->encode(f.header, f.payload, &again) == 0);
	check(again == in);

	sk::HeartbeatPayload hb;
	if (sk::HeartbeatPayload::decode(f.payload, &hb) == sk::DropReason::None) {
		check(hb.members.size() <= sk::HeartbeatPayload::kMaxMembers);
		std::vector<uint8_t> p;
		check(hb.encode(&p) == 0);
		check(std::vector<uint8_t>(f.payload.begin(), f.payload.end()) == p);
	}
	sk::ProbePayload probe;
	(void)sk::ProbePayload::decode(f.payload, &probe);

	/* The guard must never accept the same (incarnation, sequence) twice. */
	static sk::ReplayGuard guard(sk::ReplayGuard::kMaxWindow);
	if (guard.check(f.header.incarnation, f.header.sequence) == sk::DropReason::None)
		check(guard.check(f.header.incarnation, f.header.sequence) != sk::DropReason::None);
	return 0;
}
