/* SPDX-License-Identifier: Apache-2.0 */
/*
 * FakeFarmFilter: a FarmFilter that records what the farm driver asked for,
 * so driver and state machine tests run without root or BPF.
 */
#pragma once

#include "farm/xdp_filter.h"

namespace sk {

class FakeFarmFilter final : public FarmFilter
{
public:
	explicit FakeFarmFilter(uint32_t buckets = SK_FARM_DEFAULT_BUCKETS) : buckets_(buckets) {}

	Status setVips(const FarmVipSet &vips) override
	{
		if (failWith)
			return makeError(failWith, "fake farm filter failure");
		vips_ = vips;
		setVipsCalls++;
		return {};
	}
	Status setOwnerTable(const std::vector<uint32_t> &owners, const std::vector<uint32_t> &drainFrom) override
	{
		if (failWith)
			return makeError(failWith, "fake farm filter failure");
		if (owners.size() != buckets_ || (!drainFrom.empty() && drainFrom.size() != buckets_))
			return makeError(-EINVAL, "owner table size mismatch");
		owners_ = owners;
		drainFrom_ = drainFrom;
		setOwnersCalls++;
		return {};
	}
	Result<FarmCounters> counters() override
	{
		if (failWith)
			return makeError(failWith, "fake farm filter failure");
		return counters_;
	}
	uint32_t buckets() const override { return buckets_; }

	const FarmVipSet &vips() const { return vips_; }
	const std::vector<uint32_t> &owners() const { return owners_; }
	const std::vector<uint32_t> &drainFrom() const { return drainFrom_; }
	FarmCounters &mutableCounters() { return counters_; }

	int failWith = 0;	/* -errno: every call fails with it */
	int setVipsCalls = 0;
	int setOwnersCalls = 0;

private:
	uint32_t buckets_;
	FarmVipSet vips_;
	std::vector<uint32_t> owners_;
	std::vector<uint32_t> drainFrom_;
	FarmCounters counters_;
};

} /* namespace sk */
