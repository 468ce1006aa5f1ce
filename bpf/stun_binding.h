// SPDX-License-Identifier: MIT OR Apache-2.0
//
// STUN Binding requests answered in XDP (issue 15's stretch goal), so a Binding flood never
// reaches user space. Included by relay.bpf.c after its helpers (parse, next_hop, way_out,
// write_headers, transmit), which this reuses.
//
// Answered here only what the sockets path (src/turn/binding.rs) would answer the same way,
// and only at rendez's own STUN listen addresses (`binding_listeners`, filled by user space;
// a relay port is never one): message type 0x0001 with the magic cookie, a length that is
// a multiple of 4 and agrees with the UDP length, at most MAX_BINDING_REQUEST bytes, and
// no attribute but SOFTWARE and a FINGERPRINT that is last and matches. Everything else
// (MESSAGE-INTEGRITY, USERNAME, RFC 5780's CHANGE-REQUEST / RESPONSE-PORT / PADDING,
// unknown attributes, RFC 3489's cookie-less requests) goes up untouched.
//
// The response is the one user space builds: XOR-MAPPED-ADDRESS, then SOFTWARE when
// `software` is configured (the bytes are in `binding_reply`, which user space rewrites on
// reload), then FINGERPRINT when the request had one. It leaves from the address and port
// the request came to, to the request's source, with fresh headers and checksums, by the
// same way_out rule as relayed datagrams. User space leaves `binding_listeners` empty with
// `[xdp] binding = false` and with `other-address` (NAT behaviour discovery adds
// attributes this does not write).
//
// These answers bypass `[limits] binding-per-ip`, which user space applies to the Binding
// requests it answers so that a spoofed flood cannot use the server as an amplifier. Here
// the response's IP datagram is never more than twice the request's (a minimal request's
// is 1.25x over IPv4, 1.35x over IPv6, without SOFTWARE): larger answers go up to the
// limit. A flood is reflected at about its own size, never amplified (README "Kernel fast
// path (XDP)").

#define STUN_HEADER 20
#define STUN_MAGIC_COOKIE 0x2112A442
#define STUN_BINDING_REQUEST 0x0001
#define STUN_BINDING_SUCCESS 0x0101
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_SOFTWARE 0x8022
#define ATTR_FINGERPRINT 0x8028
#define FINGERPRINT_XOR 0x5354554e
// SOFTWARE is at most 763 bytes (RFC 8489 §14.14), 764 padded.
#define MAX_SOFTWARE 764
// A header, a longest SOFTWARE and a FINGERPRINT; longer requests go up.
#define MAX_BINDING_REQUEST (STUN_HEADER + 4 + MAX_SOFTWARE + 8)
#define MAX_REQUEST_ATTRIBUTES 8
// XOR-MAPPED-ADDRESS of IPv6, SOFTWARE, FINGERPRINT.
#define MAX_BINDING_RESPONSE (STUN_HEADER + 24 + 4 + MAX_SOFTWARE + 8)

// One STUN listen address: IP (16 bytes, IPv4 in the first 4) and port in network order.
// Shared with src/net/xdp/binding.rs.
struct listen_key {
    __u8 ip[16];
    __u16 port;
    __u16 family; // 4 or 6
};

// Sized by user space to the number of addresses before loading.
struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 1);
    __type(key, struct listen_key);
    __type(value, __u32);
} binding_listeners SEC(".maps");

// What a response adds after XOR-MAPPED-ADDRESS: SOFTWARE (`software_len` 0: none).
struct binding_reply {
    __u32 software_len;
    __u8 software[MAX_SOFTWARE];
};

struct {
    __uint(type, BPF_MAP_TYPE_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, struct binding_reply);
} binding_reply SEC(".maps");

// Binding responses sent from here, read back into rendez_xdp_binding_responses_total.
struct {
    __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
    __uint(max_entries, 1);
    __type(key, __u32);
    __type(value, __u64);
} binding_responses SEC(".maps");

// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), one entry per byte value.
static const __u32 crc_table[256] = {
    0x00000000, 0x77073096, 0xee0e612c, 0x990951ba, 0x076dc419, 0x706af48f,
    0xe963a535, 0x9e6495a3, 0x0edb8832, 0x79dcb8a4, 0xe0d5e91e, 0x97d2d988,
    0x09b64c2b, 0x7eb17cbd, 0xe7b82d07, 0x90bf1d91, 0x1db71064, 0x6ab020f2,
    0xf3b97148, 0x84be41de, 0x1adad47d, 0x6ddde4eb, 0xf4d4b551, 0x83d385c7,
    0x136c9856, 0x646ba8c0, 0xfd62f97a, 0x8a65c9ec, 0x14015c4f, 0x63066cd9,
    0xfa0f3d63, 0x8d080df5, 0x3b6e20c8, 0x4c69105e, 0xd56041e4, 0xa2677172,
    0x3c03e4d1, 0x4b04d447, 0xd20d85fd, 0xa50ab56b, 0x35b5a8fa, 0x42b2986c,
    0xdbbbc9d6, 0xacbcf940, 0x32d86ce3, 0x45df5c75, 0xdcd60dcf, 0xabd13d59,
    0x26d930ac, 0x51de003a, 0xc8d75180, 0xbfd06116, 0x21b4f4b5, 0x56b3c423,
    0xcfba9599, 0xb8bda50f, 0x2802b89e, 0x5f058808, 0xc60cd9b2, 0xb10be924,
    0x2f6f7c87, 0x58684c11, 0xc1611dab, 0xb6662d3d, 0x76dc4190, 0x01db7106,
    0x98d220bc, 0xefd5102a, 0x71b18589, 0x06b6b51f, 0x9fbfe4a5, 0xe8b8d433,
    0x7807c9a2, 0x0f00f934, 0x9609a88e, 0xe10e9818, 0x7f6a0dbb, 0x086d3d2d,
    0x91646c97, 0xe6635c01, 0x6b6b51f4, 0x1c6c6162, 0x856530d8, 0xf262004e,
    0x6c0695ed, 0x1b01a57b, 0x8208f4c1, 0xf50fc457, 0x65b0d9c6, 0x12b7e950,
    0x8bbeb8ea, 0xfcb9887c, 0x62dd1ddf, 0x15da2d49, 0x8cd37cf3, 0xfbd44c65,
    0x4db26158, 0x3ab551ce, 0xa3bc0074, 0xd4bb30e2, 0x4adfa541, 0x3dd895d7,
    0xa4d1c46d, 0xd3d6f4fb, 0x4369e96a, 0x346ed9fc, 0xad678846, 0xda60b8d0,
    0x44042d73, 0x33031de5, 0xaa0a4c5f, 0xdd0d7cc9, 0x5005713c, 0x270241aa,
    0xbe0b1010, 0xc90c2086, 0x5768b525, 0x206f85b3, 0xb966d409, 0xce61e49f,
    0x5edef90e, 0x29d9c998, 0xb0d09822, 0xc7d7a8b4, 0x59b33d17, 0x2eb40d81,
    0xb7bd5c3b, 0xc0ba6cad, 0xedb88320, 0x9abfb3b6, 0x03b6e20c, 0x74b1d29a,
    0xead54739, 0x9dd277af, 0x04db2615, 0x73dc1683, 0xe3630b12, 0x94643b84,
    0x0d6d6a3e, 0x7a6a5aa8, 0xe40ecf0b, 0x9309ff9d, 0x0a00ae27, 0x7d079eb1,
    0xf00f9344, 0x8708a3d2, 0x1e01f268, 0x6906c2fe, 0xf762575d, 0x806567cb,
    0x196c3671, 0x6e6b06e7, 0xfed41b76, 0x89d32be0, 0x10da7a5a, 0x67dd4acc,
    0xf9b9df6f, 0x8ebeeff9, 0x17b7be43, 0x60b08ed5, 0xd6d6a3e8, 0xa1d1937e,
    0x38d8c2c4, 0x4fdff252, 0xd1bb67f1, 0xa6bc5767, 0x3fb506dd, 0x48b2364b,
    0xd80d2bda, 0xaf0a1b4c, 0x36034af6, 0x41047a60, 0xdf60efc3, 0xa867df55,
    0x316e8eef, 0x4669be79, 0xcb61b38c, 0xbc66831a, 0x256fd2a0, 0x5268e236,
    0xcc0c7795, 0xbb0b4703, 0x220216b9, 0x5505262f, 0xc5ba3bbe, 0xb2bd0b28,
    0x2bb45a92, 0x5cb36a04, 0xc2d7ffa7, 0xb5d0cf31, 0x2cd99e8b, 0x5bdeae1d,
    0x9b64c2b0, 0xec63f226, 0x756aa39c, 0x026d930a, 0x9c0906a9, 0xeb0e363f,
    0x72076785, 0x05005713, 0x95bf4a82, 0xe2b87a14, 0x7bb12bae, 0x0cb61b38,
    0x92d28e9b, 0xe5d5be0d, 0x7cdcefb7, 0x0bdbdf21, 0x86d3d2d4, 0xf1d4e242,
    0x68ddb3f8, 0x1fda836e, 0x81be16cd, 0xf6b9265b, 0x6fb077e1, 0x18b74777,
    0x88085ae6, 0xff0f6a70, 0x66063bca, 0x11010b5c, 0x8f659eff, 0xf862ae69,
    0x616bffd3, 0x166ccf45, 0xa00ae278, 0xd70dd2ee, 0x4e048354, 0x3903b3c2,
    0xa7672661, 0xd06016f7, 0x4969474d, 0x3e6e77db, 0xaed16a4a, 0xd9d65adc,
    0x40df0b66, 0x37d83bf0, 0xa9bcae53, 0xdebb9ec5, 0x47b2cf7f, 0x30b5ffe9,
    0xbdbdf21c, 0xcabac28a, 0x53b39330, 0x24b4a3a6, 0xbad03605, 0xcdd70693,
    0x54de5729, 0x23d967bf, 0xb3667a2e, 0xc4614ab8, 0x5d681b02, 0x2a6f2b94,
    0xb40bbe37, 0xc30c8ea1, 0x5a05df1b, 0x2d02ef8d,
};

// The CRC-32 of `len` bytes from `start` (at most MAX_BINDING_RESPONSE, which covers every
// request accepted too), bounded by `data_end` for the verifier. 0 with `*ok` cleared when
// the bytes are not all there.
static __always_inline __u32 crc32(__u8 *start, __u32 len, void *data_end, int *ok)
{
    __u32 crc = 0xffffffff;
    __u32 i;
    *ok = 0;
    for (i = 0; i < MAX_BINDING_RESPONSE; i++) {
        if (i >= len)
            break;
        // Keeps clang from turning the index into pointer arithmetic the verifier refuses.
        asm volatile("" : "+r"(i));
        __u8 *byte = start + i;
        if ((void *)(byte + 1) > data_end)
            return 0;
        crc = crc_table[(crc ^ *byte) & 0xff] ^ (crc >> 8);
    }
    if (i < len)
        return 0;
    *ok = 1;
    return crc ^ 0xffffffff;
}

static __always_inline __u16 read_u16(const __u8 *at)
{
    return ((__u16)at[0] << 8) | at[1];
}

// Whether the payload is a Binding request this program may answer; sets `*fingerprint`
// when it carries a (matching) FINGERPRINT. Reads only: nothing in the packet changes.
static __always_inline int answerable_binding(struct packet *p, int *fingerprint)
{
    __u8 *m = p->payload;
    __u32 len = p->payload_len;
    void *end = p->data_end;
    if (len < STUN_HEADER || len > MAX_BINDING_REQUEST)
        return 0;
    if ((void *)(m + STUN_HEADER) > end)
        return 0;
    if (read_u16(m) != STUN_BINDING_REQUEST || *(__u32 *)(m + 4) != bpf_htonl(STUN_MAGIC_COOKIE))
        return 0;
    __u32 stated = read_u16(m + 2);
    if (stated % 4 != 0 || STUN_HEADER + stated != len)
        return 0;
    __u64 at = STUN_HEADER; // 64 bits: the bound checked is the offset used
    for (int i = 0; i < MAX_REQUEST_ATTRIBUTES; i++) {
        if (at >= len)
            return 1;
        if (at > MAX_BINDING_REQUEST - 4)
            return 0;
        asm volatile("" : "+r"(at)); // one register for the check and the reads
        __u8 *attribute = m + at;
        if ((void *)(attribute + 4) > end)
            return 0;
        __u16 type = read_u16(attribute);
        __u32 value_len = read_u16(attribute + 2);
        __u64 next = at + 4 + ((value_len + 3) & ~3U);
        if (next > len)
            return 0;
        if (type == ATTR_FINGERPRINT) {
            // Last, 4 bytes, and the CRC of everything before it (whose length field
            // already counts it), as user space checks.
            if (value_len != 4 || next != len || (void *)(attribute + 8) > end)
                return 0;
            int ok;
            __u32 crc = crc32(m, at, end, &ok) ^ FINGERPRINT_XOR;
            if (!ok || *(__u32 *)(attribute + 4) != bpf_htonl(crc))
                return 0;
            *fingerprint = 1;
            return 1;
        }
        // SOFTWARE is ignored by the sockets path; anything else may change its answer.
        if (type != ATTR_SOFTWARE)
            return 0;
        at = next;
    }
    return at >= len;
}

// Whether the datagram went to one of rendez's STUN listen addresses.
static __always_inline int to_stun_listener(struct packet *p)
{
    struct listen_key key = {};
    read_ip(key.ip, p, 0);
    key.port = p->udp->dest;
    key.family = p->family;
    return bpf_map_lookup_elem(&binding_listeners, &key) != 0;
}

// Sets the packet to exactly `len` bytes: cut at the tail (a trailer, a longer request),
// or grown at the head, where XDP always has room (XDP_PACKET_HEADROOM; drivers and veth
// often leave a small frame no tailroom). Returns how far the request moved back (its
// header is then that many bytes after where the response's goes), or -1.
static __always_inline long resize_to(struct xdp_md *ctx, __u32 len)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    long delta = (long)len - (long)(end - data);
    if (delta <= 0)
        return delta == 0 || bpf_xdp_adjust_tail(ctx, (int)delta) == 0 ? 0 : -1;
    if (delta > MAX_BINDING_RESPONSE || bpf_xdp_adjust_head(ctx, (int)-delta))
        return -1;
    return delta;
}

// Writes the response where the request was (`moved` bytes further back when the packet
// grew at the head), keeping its cookie and transaction ID: `len` bytes in all, for a
// client at `route->dst_*`.
static __always_inline int write_binding_response(struct xdp_md *ctx, __u32 headers,
                                                  __u32 moved, const struct route *route,
                                                  const struct binding_reply *reply,
                                                  __u32 software_padded, int fingerprint,
                                                  __u32 len)
{
    void *data = (void *)(long)ctx->data;
    void *end = (void *)(long)ctx->data_end;
    if (headers > 62 || moved > MAX_BINDING_RESPONSE)
        return 0;
    __u8 *m = data + headers;
    // The header and XOR-MAPPED-ADDRESS's first 8 bytes (an IPv4 one's address follows).
    if ((void *)(m + STUN_HEADER + 8) > end)
        return 0;
    if (moved) {
        __u8 *request = m + moved;
        if ((void *)(request + STUN_HEADER) > end)
            return 0;
        // Forward, byte by byte: the two may overlap, the copy's source is the later one.
        for (int i = 4; i < STUN_HEADER; i++)
            m[i] = request[i];
    }
    m[0] = STUN_BINDING_SUCCESS >> 8;
    m[1] = STUN_BINDING_SUCCESS & 0xff;
    m[2] = (len - STUN_HEADER) >> 8;
    m[3] = (len - STUN_HEADER) & 0xff;
    // XOR-MAPPED-ADDRESS: port XORed with the cookie's top half, the address with the
    // cookie (IPv4) or the cookie and transaction ID (IPv6): bytes 4..20 of the header.
    __u8 *a = m + STUN_HEADER;
    __u32 address_len = route->family == 4 ? 4 : 16;
    a[0] = ATTR_XOR_MAPPED_ADDRESS >> 8;
    a[1] = ATTR_XOR_MAPPED_ADDRESS & 0xff;
    a[2] = 0;
    a[3] = 4 + address_len;
    a[4] = 0;
    a[5] = route->family == 4 ? 0x01 : 0x02;
    *(__u16 *)(a + 6) = route->dst_port ^ bpf_htons(STUN_MAGIC_COOKIE >> 16);
    for (int i = 0; i < 16; i++) {
        if (i >= address_len)
            break;
        if ((void *)(a + 8 + i + 1) > end)
            return 0;
        a[8 + i] = route->dst_ip[i] ^ m[4 + i];
    }
    __u32 at = STUN_HEADER + 8 + address_len;
    if (software_padded) {
        __u8 *s = m + at;
        if ((void *)(s + 4) > end)
            return 0;
        s[0] = ATTR_SOFTWARE >> 8;
        s[1] = ATTR_SOFTWARE & 0xff;
        s[2] = reply->software_len >> 8;
        s[3] = reply->software_len & 0xff;
        for (__u32 i = 0; i < MAX_SOFTWARE; i++) {
            if (i >= software_padded)
                break;
            __u8 *byte = s + 4 + i;
            if ((void *)(byte + 1) > end)
                return 0;
            // Padding is zeros, as MessageBuilder writes it.
            *byte = i < reply->software_len ? reply->software[i] : 0;
        }
        at += 4 + software_padded;
    }
    if (fingerprint) {
        if (at > MAX_BINDING_RESPONSE - 8)
            return 0;
        __u8 *f = m + at;
        if ((void *)(f + 8) > end)
            return 0;
        int ok;
        __u32 crc = crc32(m, at, end, &ok) ^ FINGERPRINT_XOR;
        if (!ok)
            return 0;
        f[0] = ATTR_FINGERPRINT >> 8;
        f[1] = ATTR_FINGERPRINT & 0xff;
        f[2] = 0;
        f[3] = 4;
        *(__u32 *)(f + 4) = bpf_htonl(crc);
    }
    return 1;
}

// Answers the Binding request in `p` if it may (see the top of this file); else XDP_PASS
// with the packet untouched.
static __always_inline int answer_binding(struct xdp_md *ctx, struct packet *p)
{
    int fingerprint = 0;
    // Source port 0 cannot be answered: user space drops it (InvalidSource).
    if (p->udp->source == 0)
        return XDP_PASS;
    // The header first: most datagrams that get here are not Binding requests, and that
    // costs two comparisons rather than a map lookup.
    if (!answerable_binding(p, &fingerprint) || !to_stun_listener(p))
        return XDP_PASS;
    __u32 zero = 0;
    struct binding_reply *reply = bpf_map_lookup_elem(&binding_reply, &zero);
    if (!reply || reply->software_len > MAX_SOFTWARE)
        return XDP_PASS;
    __u32 software_padded = (reply->software_len + 3) & ~3U;
    __u32 len = STUN_HEADER + (p->family == 4 ? 12 : 24) +
                (software_padded ? 4 + software_padded : 0) + (fingerprint ? 8 : 0);
    __u32 headers = header_len(p->family);
    __u32 ip_and_udp = headers - sizeof(struct ethhdr);
    // No amplifier: the answer's IP datagram is at most twice the request's. A longer one
    // (a long SOFTWARE answering a short request) goes up, to `binding-per-ip`.
    if (ip_and_udp + len > 2 * (ip_and_udp + p->payload_len))
        return XDP_PASS;
    // Back where it came from: from the address it was sent to, to its source.
    struct route route = {};
    read_ip(route.src_ip, p, 0);
    read_ip(route.dst_ip, p, 1);
    route.src_port = p->udp->dest;
    route.dst_port = p->udp->source;
    route.family = p->family;
    __u8 smac[6], dmac[6];
    __u32 out = next_hop(ctx, &route, ip_and_udp + len, smac, dmac);
    int way = way_out(ctx, out);
    if (way == XDP_PASS)
        return XDP_PASS;
    long moved = resize_to(ctx, headers + len);
    if (moved < 0)
        return XDP_PASS;
    if (!write_binding_response(ctx, headers, moved, &route, reply, software_padded, fingerprint,
                                len))
        return XDP_DROP; // half rewritten: it cannot go up any more
    if (!write_headers(ctx, &route, len, smac, dmac))
        return XDP_DROP;
    __u64 *count = bpf_map_lookup_elem(&binding_responses, &zero);
    if (count)
        *count += 1;
    return transmit(way, out);
}
