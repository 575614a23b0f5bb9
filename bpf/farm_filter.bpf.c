// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Farm filter: placeholder program proving the BPF build pipeline. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "farm_shared.h"

SEC("xdp")
int sk_farm_filter(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
