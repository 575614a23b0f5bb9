/* SPDX-License-Identifier: Apache-2.0 */
/* Configure-time probe: does this clang++ build and link -fsanitize=fuzzer binaries? */
#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *, size_t)
{
	return 0;
}
