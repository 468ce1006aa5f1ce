//! Which peer addresses a client may reach through a relay.
//!
//! A TURN relay with an open policy is an open proxy into the operator's own network: a
//! client could create a permission for 127.0.0.1, 10.0.0.5 or the cloud metadata service at
//! 169.254.169.254 and talk to it from the server's address. So every peer address passes
//! this check before a permission is installed, and the default denies everything that is not
//! a public unicast address, including the IPv6 spellings that embed a denied IPv4 address
//! (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo).
//!
//! Operators add `allow` and `deny` ranges. Among the operator's ranges the most specific one
//! that contains the address decides (a tie goes to deny); only when none contains it does the
//! default list apply. Every spelling of an address is judged this way — the address itself
//! and each IPv4 address it embeds — and all of them must pass: `deny = ["1.2.3.0/24"]` also
//! refuses `::ffff:1.2.3.4`, `::1.2.3.4`, `64:ff9b::102:304`, `2002:102:304::` and the
//! Teredo form.
//!
//! [`HostAddresses`] is the other half: this host's own addresses, where only relay ports are
//! peers (never the services that trust local traffic), again in every spelling. An operator
//! lifts that protection only for an address an `allow` range names exactly (/32, /128).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

#[derive(Clone, Debug, Default)]
pub struct PeerPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl PeerPolicy {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    /// The addresses `allow` names exactly (/32, /128): the one way an operator opens one of
    /// the host's own addresses to clients.
    pub fn exact_allows(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.allow
            .iter()
            .filter(|net| net.prefix_len() == net.max_prefix_len())
            .map(|net| net.addr().to_canonical())
    }

    /// Whether the relay may send to and accept from `ip`: every spelling of it passes.
    pub fn permits(&self, ip: IpAddr) -> bool {
        spellings(ip).all(|spelling| self.permits_spelling(spelling))
    }

    /// The operator's most specific range decides; without one, the default list.
    fn permits_spelling(&self, ip: IpAddr) -> bool {
        let most_specific = |ranges: &[IpNet]| {
            ranges
                .iter()
                .filter(|net| net.contains(&ip))
                .map(|net| net.prefix_len())
                .max()
        };
        match (most_specific(&self.allow), most_specific(&self.deny)) {
            (Some(allow), Some(deny)) => allow > deny,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => !denied_by_default(ip),
        }
    }
}

/// This host's own addresses: a peer there may only be a relay port (another allocation on
/// this server), never a local service. Loopback counts as own whatever the interfaces say
/// (the kernel delivers all of 127.0.0.0/8 locally).
#[derive(Clone, Debug)]
pub struct HostAddresses {
    own: Vec<IpAddr>,
    /// Own addresses an operator's `allow` names exactly.
    opened: Vec<IpAddr>,
    /// The whole relay port range of the server (all shards): the one kind of port here
    /// that is a peer.
    relay_ports: RangeInclusive<u16>,
}

impl HostAddresses {
    pub fn new(own: &[IpAddr], policy: &PeerPolicy, relay_ports: RangeInclusive<u16>) -> Self {
        Self {
            own: own.iter().map(|ip| ip.to_canonical()).collect(),
            opened: policy.exact_allows().collect(),
            relay_ports,
        }
    }

    /// This host with the addresses and openings of a reloaded configuration; the relay
    /// ports are fixed at start.
    pub fn reconfigured(&self, own: &[IpAddr], policy: &PeerPolicy) -> Self {
        Self::new(own, policy, self.relay_ports.clone())
    }

    /// A port of this host that is not a relay port: a local service, never a peer.
    pub fn is_own_service(&self, peer: SocketAddr) -> bool {
        self.protects(peer.ip()) && !self.relay_ports.contains(&peer.port())
    }

    /// Whether traffic to `ip`, in any of its spellings, reaches this host (and the operator
    /// has not opened that address). On the packet path: no allocation.
    pub fn protects(&self, ip: IpAddr) -> bool {
        spellings(ip)
            .any(|s| (s.is_loopback() || self.own.contains(&s)) && !self.opened.contains(&s))
    }
}

/// An address and the IPv4 addresses it embeds: everything traffic to it may reach.
fn spellings(ip: IpAddr) -> impl Iterator<Item = IpAddr> {
    let ip = ip.to_canonical();
    let embedded = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6),
        IpAddr::V4(_) => [None; 2],
    };
    std::iter::once(ip).chain(embedded.into_iter().flatten().map(IpAddr::V4))
}

/// IPv4 ranges that are not public unicast (RFC 6890 and the IANA special-purpose registry).
const DENIED_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),       // "this network", unspecified
    (Ipv4Addr::new(10, 0, 0, 0), 8),      // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10),   // CGNAT, RFC 6598
    (Ipv4Addr::new(127, 0, 0, 0), 8),     // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16),  // link-local, cloud metadata
    (Ipv4Addr::new(172, 16, 0, 0), 12),   // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24),    // IETF protocol assignments
    (Ipv4Addr::new(192, 0, 2, 0), 24),    // TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24),  // 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16),  // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15),   // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24),  // TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4),     // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4),     // reserved, broadcast
];

/// IPv6 ranges that are not public unicast. Ranges that embed an IPv4 address are handled by
/// [`embedded_ipv4`] instead.
const DENIED_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 0), 128), // unspecified
    (Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1), 128), // loopback
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64, RFC 8215
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20), // documentation, RFC 9637
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (deprecated)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast
];

/// The default list for one spelling (embedded IPv4 addresses are spellings of their own).
fn denied_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => denied_v4(v4),
        IpAddr::V6(v6) => DENIED_V6.iter().any(|&(net, len)| in_v6(v6, net, len)),
    }
}

fn denied_v4(ip: Ipv4Addr) -> bool {
    DENIED_V4
        .iter()
        .any(|&(net, len)| Ipv4Net::new(net, len).is_ok_and(|net| net.contains(&ip)))
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    Ipv6Net::new(net, len).is_ok_and(|net| net.contains(&ip))
}

/// IPv4 addresses that an IPv6 address carries and that traffic to it may reach (at most
/// two: the prefixes below do not overlap). `::ffff:a.b.c.d` is not here: canonical form
/// already turned it into IPv4.
fn embedded_ipv4(ip: Ipv6Addr) -> [Option<Ipv4Addr>; 2] {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    // ::a.b.c.d (IPv4-compatible, deprecated but still routed by some stacks); :: and ::1
    // are not (RFC 4291 §2.5.5.1): they are spellings of their own, in DENIED_V6.
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return [Some(last32), None];
    }
    // NAT64 well-known prefix 64:ff9b::/96 (RFC 6052).
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return [Some(last32), None];
    }
    // 6to4 2002:AABB:CCDD::/48 (RFC 3056).
    if s[0] == 0x2002 {
        return [Some(Ipv4Addr::new(o[2], o[3], o[4], o[5])), None];
    }
    // Teredo 2001:0::/32 (RFC 4380): server address, and the client's obfuscated address.
    if s[0] == 0x2001 && s[1] == 0 {
        return [
            Some(Ipv4Addr::new(o[4], o[5], o[6], o[7])),
            Some(Ipv4Addr::new(!o[12], !o[13], !o[14], !o[15])),
        ];
    }
    [None; 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_policy() -> PeerPolicy {
        PeerPolicy::default()
    }

    #[test]
    fn default_denies_internal_and_special_addresses() {
        let p = default_policy();
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "2002:7f00:1::1",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe", // Teredo to client 127.0.0.1
        ] {
            assert!(!p.permits(ip.parse().unwrap()), "{ip} should be denied");
        }
    }

    #[test]
    fn default_permits_public_unicast() {
        let p = default_policy();
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(p.permits(ip.parse().unwrap()), "{ip} should be permitted");
        }
    }

    #[test]
    fn operator_ranges_override_defaults_most_specific_wins() {
        let p = PeerPolicy::new(
            vec![
                "127.0.0.0/8".parse().unwrap(),
                "10.0.0.0/8".parse().unwrap(),
            ],
            vec![
                "10.9.0.0/16".parse().unwrap(),
                "8.8.8.0/24".parse().unwrap(),
            ],
        );
        assert!(p.permits("127.0.0.1".parse().unwrap()));
        assert!(p.permits("::ffff:127.0.0.1".parse().unwrap()));
        assert!(p.permits("10.1.1.1".parse().unwrap()));
        assert!(!p.permits("10.9.1.1".parse().unwrap()));
        assert!(!p.permits("8.8.8.8".parse().unwrap()));
        assert!(!p.permits("192.168.1.1".parse().unwrap()));
        let tie = PeerPolicy::new(
            vec!["1.2.3.0/24".parse().unwrap()],
            vec!["1.2.3.0/24".parse().unwrap()],
        );
        assert!(!tie.permits("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn operator_ranges_apply_to_every_spelling() {
        let p = PeerPolicy::new(vec![], vec!["1.2.3.0/24".parse().unwrap()]);
        for ip in [
            "1.2.3.4",
            "::ffff:1.2.3.4",
            "::1.2.3.4",
            "64:ff9b::102:304",
            "2002:102:304::",
            "2002:102:304:1::5",
            "2001:0:102:304::1",                    // Teredo server 1.2.3.4
            "2001:0:4136:e378:8000:63bf:fefd:fcfb", // Teredo client 1.2.3.4
        ] {
            assert!(!p.permits(ip.parse().unwrap()), "{ip} should be denied");
        }
        assert!(p.permits("64:ff9b::808:808".parse().unwrap()));
        // An allow reaches the embedded forms too.
        let p = PeerPolicy::new(vec!["10.1.0.0/16".parse().unwrap()], vec![]);
        assert!(p.permits("64:ff9b::a01:203".parse().unwrap()));
        assert!(!p.permits("64:ff9b::a02:203".parse().unwrap()));
    }

    #[test]
    fn only_relay_ports_of_this_host_are_peers_even_after_a_reload() {
        let host = HostAddresses::new(&[], &PeerPolicy::default(), 49152..=65535);
        let reloaded = host.reconfigured(&["203.0.113.5".parse().unwrap()], &PeerPolicy::default());
        for host in [&host, &reloaded] {
            assert!(host.is_own_service("127.0.0.1:3478".parse().unwrap()));
            assert!(!host.is_own_service("127.0.0.1:50000".parse().unwrap()));
            assert!(!host.is_own_service("8.8.8.8:3478".parse().unwrap()));
        }
        assert!(reloaded.is_own_service("203.0.113.5:22".parse().unwrap()));
        assert!(!reloaded.is_own_service("203.0.113.5:49152".parse().unwrap()));
    }

    #[test]
    fn own_addresses_are_protected_in_every_spelling_unless_named_exactly() {
        let own: Vec<IpAddr> = vec!["203.0.113.5".parse().unwrap(), "10.0.0.4".parse().unwrap()];
        let broad = PeerPolicy::new(vec!["203.0.113.0/24".parse().unwrap()], vec![]);
        let host = HostAddresses::new(&own, &broad, 49152..=65535);
        for ip in [
            "203.0.113.5",
            "::ffff:203.0.113.5",
            "64:ff9b::cb00:7105",
            "2002:cb00:7105::1",
            "10.0.0.4",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "64:ff9b::7f00:1",
        ] {
            assert!(host.protects(ip.parse().unwrap()), "{ip} is this host");
        }
        assert!(!host.protects("203.0.113.6".parse().unwrap()));
        assert!(!host.protects("8.8.8.8".parse().unwrap()));
        let exact = PeerPolicy::new(vec!["203.0.113.5/32".parse().unwrap()], vec![]);
        let host = HostAddresses::new(&own, &exact, 49152..=65535);
        assert!(
            !host.protects("203.0.113.5".parse().unwrap()),
            "named exactly"
        );
        assert!(!host.protects("64:ff9b::cb00:7105".parse().unwrap()));
        assert!(host.protects("10.0.0.4".parse().unwrap()));
    }
}
