/* SPDX-License-Identifier: Apache-2.0 */
/*
 * libFuzzer target for the replication op decoder (op_codec.h): the first code on the
 * SECOND that touches op bytes from the peer. Input = a batch of ops; every op decode
 * accepts must satisfy the path rules and re-encode to exactly the same bytes.
 */
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <vector>

#include "replication/op_codec.h"

namespace {

void check(bool cond)
{
	if (!cond)
		abort();
}

} /* namespace */

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	std::span<const uint8_t> rest(data, size);
	while (!rest.empty()) {
		sk::repl::Op op;
		size_t used = 0;
		sk::repl::OpDecodeError err = sk::repl::decodeOp(rest, &op, &used);
		if (err != sk::repl::OpDecodeError::None)
			return 0;
		check(used > 0 && used <= rest.size());
		if (op.type != sk::repl::OpType::Barrier) {
			bool rootOk = op.type == sk::repl::OpType::Setattr || op.type == sk::repl::OpType::Setxattr ||
				      op.type == sk::repl::OpType::Removexattr;
			check(sk::repl::isValidOpPath(op.path, rootOk));
			check(op.path.size() <= sk::repl::kMaxOpPath);
		}
		check(op.data.size() <= sk::repl::kMaxWriteData);
		std::vector<uint8_t> again;
		check(sk::repl::encodeOp(op, &again) == 0);
		check(again.size() == used);
		check(std::equal(again.begin(), again.end(), rest.begin()));
		rest = rest.subspan(used);
	}
	return 0;
}
