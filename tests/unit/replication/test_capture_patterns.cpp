/* SPDX-License-Identifier: Apache-2.0 */
/*
 * CaptureFs exclude/include matching (no mount needed): which relative paths
 * produce ops. Runs in the 'unit' suite, unlike the mount tests.
 */
#include <doctest/doctest.h>

#include "replication/fuse/capture_fs.h"

using sk::repl::captureExcluded;

TEST_CASE("capture patterns: exclusion by path or ancestor, include overrides")
{
	const std::vector<std::string> ex = { "*.tmp", "cache", "logs/*.log" };
	struct Case {
		const char *path;
		bool excluded;
	} cases[] = {
		{ "data/file", false },
		{ "a.tmp", true },
		{ "deep/dir/a.tmp", true },	/* '*' matches '/' (fnmatch flags 0) */
		{ "cache", true },
		{ "cache/x/y", true },		/* an excluded ancestor excludes its subtree */
		{ "cachex", false },
		{ "logs/app.log", true },
		{ "logs/app.txt", false },
		{ ".", false },			/* the root is always replicated */
		{ "", false },
	};
	for (const Case &c : cases) {
		CAPTURE(c.path);
		CHECK(captureExcluded(ex, {}, c.path) == c.excluded);
	}
	CHECK_FALSE(captureExcluded({}, {}, "anything.tmp"));
	const std::vector<std::string> inc = { "cache/keep*" };
	CHECK_FALSE(captureExcluded(ex, inc, "cache/keep"));
	CHECK_FALSE(captureExcluded(ex, inc, "cache/keep/inner"));
	CHECK(captureExcluded(ex, inc, "cache/other"));
}
