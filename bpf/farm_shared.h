/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Farm filter: structs, map names and constants shared by farm_filter.bpf.c
 * and the C++ loader. The single source of truth: never copy these by hand.
 */
#ifndef SK_FARM_SHARED_H
#define SK_FARM_SHARED_H

#define SK_FARM_MAX_BUCKETS 65536
#define SK_FARM_DEFAULT_BUCKETS 1024

/* Verdict counter indexes (per-CPU array "farm_verdicts"). */
enum sk_farm_verdict {
	SK_FARM_PASS_NOT_VIP = 0,	/* not for a VIP: untouched */
	SK_FARM_PASS_OWNED = 1,		/* for a VIP, bucket owned here */
	SK_FARM_DROP_NOT_OWNED = 2,	/* for a VIP, bucket owned elsewhere */
	SK_FARM_PASS_MALFORMED = 3,	/* could not parse: left to the kernel */
	SK_FARM_VERDICT_MAX = 4,
};

#endif
