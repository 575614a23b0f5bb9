/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Shared by the farm BPF tests and benchmark: run an XDP program once over a
 * packet with BPF_PROG_RUN, and compute the bucket the filter should pick.
 */
#pragma once

#include <arpa/inet.h>

#include <cstring>
#include <vector>

#include <bpf/bpf.h>

#include "bpf/farm_hash.h"
#include "bpf/farm_shared.h"
#include "farm/xdp_filter.h"

namespace sk::test {

struct XdpRun {
	int err = 0;		/* bpf_prog_test_run_opts result */
	uint32_t action = 0;	/* XDP_* */
	std::vector<uint8_t> out;
};

inline XdpRun runXdp(int progFd, const std::vector<uint8_t> &in)
{
	XdpRun r;
	r.out.resize(in.size() + 256);
	bpf_test_run_opts o{};
	o.sz = sizeof(o);
	o.data_in = in.data();
	o.data_size_in = static_cast<uint32_t>(in.size());
	o.data_out = r.out.data();
	o.data_size_out = static_cast<uint32_t>(r.out.size());
	o.repeat = 1;
	r.err = bpf_prog_test_run_opts(progFd, &o);
	r.action = o.retval;
	r.out.resize(o.data_size_out);
	return r;
}

/* The client a packet should be hashed on: address and, when visible, its port. */
struct FlowKey {
	FarmAddress addr;
	int port = -1;	/* host order; -1: no port visible */
};

inline uint32_t expectedBucket(const FlowKey &k, FarmHashMode mode, uint32_t seed, uint32_t buckets)
{
	uint32_t words[4];
	std::memcpy(words, k.addr.bytes.data(), sizeof(words));
	const bool withPort = mode == FarmHashMode::IpPort && k.port >= 0;
	const uint16_t port = withPort ? htons(static_cast<uint16_t>(k.port)) : 0;
	return sk_farm_hash(seed, words, k.addr.family == 4 ? 1 : 4, withPort, port) & (buckets - 1);
}

} /* namespace sk::test */
