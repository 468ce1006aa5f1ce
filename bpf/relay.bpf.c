// SPDX-License-Identifier: MIT OR Apache-2.0
//
// rendez's kernel fast path: relays ChannelData on bound channels in XDP (issue 15).
//
// Client -> server: a UDP datagram to a listen address whose payload is ChannelData on a
// channel the TURN core has put into `client_channels` leaves as a plain datagram from the
// relay address to the peer (header and padding stripped). Peer -> relay: a datagram from
// a peer to a relay address, found in `peer_channels` by relay and peer address and port,
// leaves to the client from the server address, framed as ChannelData.
//
// Binding requests to rendez's own STUN listen addresses are answered here too: see
// stun_binding.h.
//
// Everything that does not match exactly goes up to the sockets path unchanged (XDP_PASS):
// other protocols, fragments, IPv4 options, IPv6 extension headers, STUN, unbound channels,
// lengths that do not add up, datagrams too large for the checksum loop, destinations
// without a resolved next hop. The maps are written only by rendez's UDP workers, which
// mirror the TURN core's decisions, so nothing is relayed here that the core would refuse.
//
// Every rewritten datagram is a fresh one: new IP header (TTL / hop limit 64, DF on IPv4),
// full IPv4 header and UDP checksums computed here (locally sent packets on veth carry
// only a partial checksum, so an incremental update would be wrong), next hop's MAC from
// bpf_fib_lookup. It leaves by XDP_TX when the next hop is out of the interface it came in
// on, by bpf_redirect_map when it is out of another interface rendez attached this program
// to (`attached_devices`), and otherwise goes up untouched: see way_out.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define CHANNEL_DATA_HEADER 4
// The checksum loop covers at most this many payload bytes; larger datagrams go up.
#define MAX_PAYLOAD 1500
#define FRESH_TTL 64
#define IPV4_DF 0x4000

// The maps' layouts are shared with src/net/xdp/maps.rs (#[repr(C)], same order). IP
// addresses are 16 bytes: IPv6, or IPv4 in the first 4 (the rest zero). Ports and the
// channel number are in network byte order.

struct client_key {
    __u8 client_ip[16];
    __u8 server_ip[16];
    __u16 client_port;
    __u16 server_port;
    __u16 channel;
    __u16 family; // 4 or 6
};

struct peer_key {
    __u8 relay_ip[16];
    __u8 peer_ip[16];
    __u16 relay_port;
    __u16 peer_port;
    __u32 family;
};

// Where a datagram goes, and what went there (updated atomically: several CPUs may
// receive one flow's packets).
struct route {
    __u8 src_ip[16];
    __u8 dst_ip[16];
    __u16 src_port;
    __u16 dst_port;
    __u16 channel; // peer -> client: the channel to frame on; client -> peer: unused
    __u16 family;
    __u64 packets;
    __u64 bytes; // payload bytes (what the sockets path counts)
};

// Sized by user space from `[xdp] max-channels` before loading.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct client_key);
    __type(value, struct route);
} client_channels SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 65536);
    __type(key, struct peer_key);
    __type(value, struct route);
} peer_channels SEC(".maps");

// The interfaces rendez attached this program to (ifindex -> the same ifindex), filled by
// user space after attaching; sized by it to their number. Only these are redirect targets:
// a device must be able to transmit XDP frames, and a redirect into one that cannot (a
// tunnel, a bridge, a NIC without XDP) drops them silently. (User space leaves out an
// interface that got only generic XDP while another got native: src/net/xdp/attach.rs.)
// The value is what the kernel keeps per device (its ifindex and an optional program,
// unused here).
struct {
    __uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct bpf_devmap_val);
} attached_devices SEC(".maps");

// Where a packet's layers begin, once checked.
struct packet {
    void *data_end;
    struct ethhdr *eth;
    void *ip;
    struct udphdr *udp;
    __u8 *payload;
    __u32 payload_len; // from the UDP length
    __u16 family;
};

static __always_inline __u16 fold(__u64 sum)
{
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffffffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)sum;
}

// The one's complement sum of `len` bytes from `start`, summed in 4-byte words (the
// result folds to the same 16-bit sum), bounded by `data_end` for the verifier.
static __always_inline __u64 sum_bytes(__u8 *start, __u32 len, void *data_end)
{
    __u64 sum = 0;
    __u32 i;
    // The UDP header, a ChannelData header and MAX_PAYLOAD bytes at most.
    for (i = 0; i < (8 + CHANNEL_DATA_HEADER + MAX_PAYLOAD) / 4 + 1; i++) {
        if (len < 4)
            break;
        if ((void *)(start + 4) > data_end)
            break;
        sum += *(__u32 *)start;
        start += 4;
        len -= 4;
    }
    if (len >= 2 && (void *)(start + 2) <= data_end) {
        sum += *(__u16 *)start;
        start += 2;
        len -= 2;
    }
    if (len >= 1 && (void *)(start + 1) <= data_end) {
        // The odd byte is the high half of a zero-padded 16-bit word (network order).
        __u16 last = 0;
        *(__u8 *)&last = *start;
        sum += last;
    }
    return sum;
}

// Parses Ethernet, IPv4 (no options, no fragments) or IPv6 (UDP straight after the fixed
// header) and UDP, checking every length against the others. 0: not for us.
static __always_inline int parse(struct xdp_md *ctx, struct packet *p)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 0;
    p->data_end = data_end;
    p->eth = eth;
    __u32 ip_payload;
    if (eth->h_proto == bpf_htons(ETH_P_IP)) {
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return 0;
        if (ip->ihl != 5 || ip->version != 4 || ip->protocol != IPPROTO_UDP)
            return 0;
        // More fragments, or a fragment offset: a fragment.
        if (ip->frag_off & bpf_htons(0x3fff))
            return 0;
        __u16 total = bpf_ntohs(ip->tot_len);
        if (total < sizeof(*ip) + sizeof(struct udphdr))
            return 0;
        ip_payload = total - sizeof(*ip);
        p->ip = ip;
        p->udp = (void *)(ip + 1);
        p->family = 4;
    } else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return 0;
        if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
            return 0;
        ip_payload = bpf_ntohs(ip6->payload_len);
        p->ip = ip6;
        p->udp = (void *)(ip6 + 1);
        p->family = 6;
    } else {
        return 0;
    }
    struct udphdr *udp = p->udp;
    if ((void *)(udp + 1) > data_end)
        return 0;
    __u16 udp_len = bpf_ntohs(udp->len);
    if (udp_len != ip_payload || udp_len < sizeof(*udp))
        return 0;
    // Over IPv6 a zero checksum is invalid (RFC 8200 §8.1): the kernel drops such a datagram,
    // so it goes up for that, rather than out with a fresh, valid checksum.
    if (p->family == 6 && udp->check == 0)
        return 0;
    p->payload = (void *)(udp + 1);
    p->payload_len = udp_len - sizeof(*udp);
    if (p->payload_len > MAX_PAYLOAD)
        return 0;
    // The whole datagram must be there (a trailer after it is allowed, and cut later).
    if ((void *)(p->payload + p->payload_len) > data_end)
        return 0;
    return 1;
}

static __always_inline void read_ip(__u8 to[16], struct packet *p, int source)
{
    __builtin_memset(to, 0, 16);
    if (p->family == 4) {
        struct iphdr *ip = p->ip;
        __builtin_memcpy(to, source ? (void *)&ip->saddr : (void *)&ip->daddr, 4);
    } else {
        struct ipv6hdr *ip6 = p->ip;
        __builtin_memcpy(to, source ? (void *)&ip6->saddr : (void *)&ip6->daddr, 16);
    }
}

// Resolves the next hop for a datagram of `ip_len` bytes from `route->src_ip` to
// `route->dst_ip`. Returns the egress ifindex, or 0 (send it up) when there is no route,
// no resolved neighbour, or the datagram would need fragmenting.
static __always_inline __u32 next_hop(struct xdp_md *ctx, const struct route *route,
                                      __u16 ip_len, __u8 smac[6], __u8 dmac[6])
{
    struct bpf_fib_lookup fib = {};
    fib.l4_protocol = IPPROTO_UDP;
    fib.sport = route->src_port;
    fib.dport = route->dst_port;
    fib.tot_len = ip_len;
    fib.ifindex = ctx->ingress_ifindex;
    if (route->family == 4) {
        fib.family = AF_INET;
        __builtin_memcpy(&fib.ipv4_src, route->src_ip, 4);
        __builtin_memcpy(&fib.ipv4_dst, route->dst_ip, 4);
    } else {
        fib.family = AF_INET6;
        __builtin_memcpy(fib.ipv6_src, route->src_ip, 16);
        __builtin_memcpy(fib.ipv6_dst, route->dst_ip, 16);
    }
    // The kernel answers only where forwarding is on for the interface (IPv4) or the host
    // (IPv6): elsewhere BPF_FIB_LKUP_RET_FWD_DISABLED, and the sockets path relays.
    long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
    if (rc != BPF_FIB_LKUP_RET_SUCCESS)
        return 0;
    __builtin_memcpy(smac, fib.smac, 6);
    __builtin_memcpy(dmac, fib.dmac, 6);
    return fib.ifindex;
}

// Writes fresh Ethernet, IP and UDP headers for `payload_len` payload bytes at the start
// of the packet, then the UDP checksum over everything. The payload is already in place.
static __always_inline int write_headers(struct xdp_md *ctx, const struct route *route,
                                         __u32 payload_len, const __u8 smac[6],
                                         const __u8 dmac[6])
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    if ((void *)(eth + 1) > data_end)
        return 0;
    __builtin_memcpy(eth->h_dest, dmac, 6);
    __builtin_memcpy(eth->h_source, smac, 6);
    __u16 udp_len = sizeof(struct udphdr) + payload_len;
    struct udphdr *udp;
    __u64 sum = 0;
    if (route->family == 4) {
        eth->h_proto = bpf_htons(ETH_P_IP);
        struct iphdr *ip = (void *)(eth + 1);
        if ((void *)(ip + 1) > data_end)
            return 0;
        ip->version = 4;
        ip->ihl = 5;
        ip->tos = 0;
        ip->tot_len = bpf_htons(sizeof(*ip) + udp_len);
        ip->id = 0;
        ip->frag_off = bpf_htons(IPV4_DF);
        ip->ttl = FRESH_TTL;
        ip->protocol = IPPROTO_UDP;
        ip->check = 0;
        __builtin_memcpy(&ip->saddr, route->src_ip, 4);
        __builtin_memcpy(&ip->daddr, route->dst_ip, 4);
        ip->check = ~fold(sum_bytes((__u8 *)ip, sizeof(*ip), data_end));
        sum += ip->saddr;
        sum += ip->daddr;
        udp = (void *)(ip + 1);
    } else {
        eth->h_proto = bpf_htons(ETH_P_IPV6);
        struct ipv6hdr *ip6 = (void *)(eth + 1);
        if ((void *)(ip6 + 1) > data_end)
            return 0;
        ip6->version = 6;
        ip6->priority = 0;
        ip6->flow_lbl[0] = 0;
        ip6->flow_lbl[1] = 0;
        ip6->flow_lbl[2] = 0;
        ip6->payload_len = bpf_htons(udp_len);
        ip6->nexthdr = IPPROTO_UDP;
        ip6->hop_limit = FRESH_TTL;
        __builtin_memcpy(&ip6->saddr, route->src_ip, 16);
        __builtin_memcpy(&ip6->daddr, route->dst_ip, 16);
        sum += sum_bytes((__u8 *)&ip6->saddr, 32, data_end);
        udp = (void *)(ip6 + 1);
    }
    if ((void *)(udp + 1) > data_end)
        return 0;
    udp->source = route->src_port;
    udp->dest = route->dst_port;
    udp->len = bpf_htons(udp_len);
    udp->check = 0;
    // Pseudo-header: protocol and UDP length (network order, as 16-bit words).
    sum += bpf_htons(IPPROTO_UDP);
    sum += bpf_htons(udp_len);
    sum += sum_bytes((__u8 *)udp, udp_len, data_end);
    __u16 check = ~fold(sum);
    // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
    udp->check = check ? check : 0xffff;
    return 1;
}

// How a datagram whose next hop is out of interface `out` (0: no next hop) leaves, decided
// before anything in the packet changes: XDP_TX when that is the interface it came in on,
// XDP_REDIRECT when it is another interface in `attached_devices`, else XDP_PASS (the
// sockets path sends it). A redirect into a device that cannot transmit XDP frames drops
// them silently; the devices rendez attached this program to are the ones known to take
// them (a veth also needs an XDP program on its peer, README says so).
static __always_inline int way_out(struct xdp_md *ctx, __u32 out)
{
    if (out == 0)
        return XDP_PASS;
    if (out == ctx->ingress_ifindex)
        return XDP_TX;
    if (bpf_map_lookup_elem(&attached_devices, &out))
        return XDP_REDIRECT;
    return XDP_PASS;
}

// Sends the rewritten packet the way way_out chose. The redirect cannot miss (`out` was
// just found in the map, and user space never removes it); were it to, flags 0 make it
// XDP_ABORTED, which the xdp_exception tracepoint shows.
static __always_inline int transmit(int way, __u32 out)
{
    if (way == XDP_TX)
        return XDP_TX;
    return bpf_redirect_map(&attached_devices, out, 0);
}

static __always_inline __u32 header_len(__u16 family)
{
    return sizeof(struct ethhdr) +
           (family == 4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr)) +
           sizeof(struct udphdr);
}

// Client -> peer: the route of ChannelData on a bound channel, and its payload length.
static __always_inline struct route *client_route(struct packet *p, __u32 *len)
{
    if (p->payload_len < CHANNEL_DATA_HEADER)
        return 0;
    __u8 *cd = p->payload;
    if ((void *)(cd + CHANNEL_DATA_HEADER) > p->data_end)
        return 0;
    // 0x4000-0x7FFF: the top bits 01 say ChannelData (RFC 5766 §11).
    if ((cd[0] & 0xc0) != 0x40)
        return 0;
    __u32 stated = ((__u32)cd[2] << 8) | cd[3];
    __u32 available = p->payload_len - CHANNEL_DATA_HEADER;
    // Only the stated length plus at most 3 bytes of padding; anything else goes up.
    if (stated > available || available - stated > 3)
        return 0;
    struct client_key key = {};
    read_ip(key.client_ip, p, 1);
    read_ip(key.server_ip, p, 0);
    key.client_port = p->udp->source;
    key.server_port = p->udp->dest;
    key.channel = *(__u16 *)cd;
    key.family = p->family;
    *len = stated;
    return bpf_map_lookup_elem(&client_channels, &key);
}

// Peer -> client: the route of a datagram from a peer on a bound channel.
static __always_inline struct route *peer_route(struct packet *p)
{
    if (p->payload_len > MAX_PAYLOAD - CHANNEL_DATA_HEADER)
        return 0;
    struct peer_key key = {};
    read_ip(key.relay_ip, p, 0);
    read_ip(key.peer_ip, p, 1);
    key.relay_port = p->udp->dest;
    key.peer_port = p->udp->source;
    key.family = p->family;
    return bpf_map_lookup_elem(&peer_channels, &key);
}

// Cuts everything after the first `keep` bytes (ChannelData padding, an Ethernet
// trailer). 0 when the packet is shorter than that or cannot be cut.
static __always_inline int cut_after(struct xdp_md *ctx, __u32 keep)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    long tail = (long)(end - data) - (long)keep;
    if (tail < 0)
        return 0;
    return tail == 0 || bpf_xdp_adjust_tail(ctx, (int)-tail) == 0;
}

// Strips the ChannelData header and padding: `len` payload bytes go to the peer.
static __always_inline int to_peer(struct xdp_md *ctx, struct route *route, __u16 family,
                                   __u32 len)
{
    __u32 headers = header_len(family);
    __u8 smac[6], dmac[6];
    __u32 out = next_hop(ctx, route, headers - sizeof(struct ethhdr) + len, smac, dmac);
    int way = way_out(ctx, out);
    if (way == XDP_PASS)
        return XDP_PASS;
    if (!cut_after(ctx, headers + CHANNEL_DATA_HEADER + len))
        return XDP_PASS;
    // The new headers are written over the old ones' last 4 bytes and the ChannelData
    // header, right before the payload.
    if (bpf_xdp_adjust_head(ctx, CHANNEL_DATA_HEADER))
        return XDP_PASS;
    if (!write_headers(ctx, route, len, smac, dmac))
        return XDP_DROP; // half rewritten: it cannot go up any more
    __sync_fetch_and_add(&route->packets, 1);
    __sync_fetch_and_add(&route->bytes, len);
    return transmit(way, out);
}

// Frames `len` payload bytes as ChannelData for the client.
static __always_inline int to_client(struct xdp_md *ctx, struct route *route, __u16 family,
                                     __u32 len)
{
    __u32 headers = header_len(family);
    __u8 smac[6], dmac[6];
    __u32 out = next_hop(ctx, route,
                         headers - sizeof(struct ethhdr) + CHANNEL_DATA_HEADER + len, smac,
                         dmac);
    int way = way_out(ctx, out);
    if (way == XDP_PASS)
        return XDP_PASS;
    if (!cut_after(ctx, headers + len))
        return XDP_PASS;
    // Room for the ChannelData header in front: it goes where the old headers ended.
    if (bpf_xdp_adjust_head(ctx, -CHANNEL_DATA_HEADER))
        return XDP_PASS;
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (headers > 62)
        return XDP_DROP;
    __u8 *cd = data + headers;
    if ((void *)(cd + CHANNEL_DATA_HEADER) > end)
        return XDP_DROP;
    *(__u16 *)cd = route->channel;
    cd[2] = len >> 8;
    cd[3] = len & 0xff;
    if (!write_headers(ctx, route, CHANNEL_DATA_HEADER + len, smac, dmac))
        return XDP_DROP;
    __sync_fetch_and_add(&route->packets, 1);
    __sync_fetch_and_add(&route->bytes, len);
    return transmit(way, out);
}

// STUN Binding requests to rendez's listen addresses, answered here (uses the helpers above).
#include "stun_binding.h"

SEC("xdp")
int rendez_relay(struct xdp_md *ctx)
{
    struct packet p = {};
    if (!parse(ctx, &p))
        return XDP_PASS;
    // Both lookups before anything changes the packet.
    __u32 len = 0;
    struct route *route = client_route(&p, &len);
    if (route)
        return to_peer(ctx, route, p.family, len);
    route = peer_route(&p);
    if (route)
        return to_client(ctx, route, p.family, p.payload_len);
    return answer_binding(ctx, &p);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
