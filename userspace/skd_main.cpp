/* SPDX-License-Identifier: Apache-2.0 */
/* skd: the SK daemon. Parses flags, builds the Daemon from libsk, runs it. */
#include <cstdio>
int main()
{
	return 0;
}
