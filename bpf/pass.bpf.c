// SPDX-License-Identifier: MIT OR Apache-2.0
//
// Passes every packet. Not part of rendez: tests/xdp.rs attaches it to the far end of a veth
// pair, because a veth delivers frames sent with XDP_TX or bpf_redirect only to a peer
// that runs an XDP program itself.

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int pass(struct xdp_md *ctx)
{
    return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
