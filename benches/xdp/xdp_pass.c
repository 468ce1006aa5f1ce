// SPDX-License-Identifier: GPL-2.0
// benches/xdp/compare.sh attaches this to the world end of its veth pair. A veth delivers
// XDP_TX / bpf_redirect frames from its peer only into a receive ring that NAPI serves;
// an XDP program on the receiving end guarantees that ring (GRO on, which the script also
// sets, does too). It passes every packet on to the normal stack unchanged.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
