//! Which addresses relay sockets bind to and which ones clients are told.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::Config;
use crate::turn::RelayAddress;

/// One relay address per IP family the server can relay on, IPv4 first.
///
/// Bind addresses are `relay-ip` if set; otherwise, per family, the first specific `listen`
/// address, else a detected interface address (IPv4 always, falling back to loopback;
/// IPv6 only when the host has a global address). Each is advertised as the `external-ip`
/// of its family when one is set.
pub fn resolve_relay_addresses(config: &Config) -> anyhow::Result<Vec<RelayAddress>> {
    let binds: Vec<IpAddr> = if config.relay_ip.is_empty() {
        [false, true]
            .into_iter()
            .filter_map(|v6| {
                config
                    .listen
                    .iter()
                    .map(|a| a.ip())
                    .find(|ip| ip.is_ipv6() == v6 && !ip.is_unspecified())
                    .or_else(|| detect_interface_ip(v6))
            })
            .collect()
    } else {
        config.relay_ip.clone()
    };
    let mut relays: Vec<RelayAddress> = binds
        .into_iter()
        .map(|bind| {
            let public = config
                .external_ip
                .iter()
                .copied()
                .find(|ip| ip.is_ipv4() == bind.is_ipv4())
                .unwrap_or(bind);
            RelayAddress { bind, public }
        })
        .collect();
    relays.sort_by_key(|r| r.bind.is_ipv6());
    for ip in &config.external_ip {
        if !relays.iter().any(|r| r.bind.is_ipv4() == ip.is_ipv4()) {
            anyhow::bail!(
                "`external-ip` {ip} has no relay address of its IP family: add one to `relay-ip`"
            );
        }
    }
    if relays.is_empty() {
        anyhow::bail!(
            "cannot find an address for relay sockets: set `relay-ip` (config) or --relay-ip"
        );
    }
    for relay in &relays {
        if relay.public == relay.bind && is_private(relay.bind) {
            tracing::warn!(relay = %relay.bind, "relay address is not public; set `external-ip` if this host is behind NAT");
        }
    }
    Ok(relays)
}

/// An interface address of the wanted family: a public one if any, else a private one;
/// for IPv4, loopback as the last resort so `rendez serve` always starts.
fn detect_interface_ip(v6: bool) -> Option<IpAddr> {
    let interfaces = if_addrs::get_if_addrs().unwrap_or_default();
    let mut candidates: Vec<IpAddr> = interfaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv6() == v6 && !ip.is_loopback() && !is_link_local(*ip))
        .filter(|ip| !v6 || is_global_v6(*ip))
        .collect();
    candidates.sort_by_key(|ip| is_private(*ip));
    candidates
        .first()
        .copied()
        .or((!v6).then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_loopback() || a == 100 && (b & 0xC0) == 64
        }
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    }
}

fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// 2000::/3, the global unicast space.
fn is_global_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xe000) == 0x2000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_addresses_pair_with_external_ones_by_family() {
        let config = Config::from_toml(
            r#"relay-ip = ["2001:db8::4", "10.0.0.4"]
               external-ip = "203.0.113.7""#,
        )
        .unwrap();
        let relays = resolve_relay_addresses(&config).unwrap();
        assert_eq!(relays.len(), 2);
        assert_eq!(relays[0].bind, "10.0.0.4".parse::<IpAddr>().unwrap());
        assert_eq!(relays[0].public, "203.0.113.7".parse::<IpAddr>().unwrap());
        assert_eq!(relays[1].public, relays[1].bind);
    }

    #[test]
    fn specific_listen_address_is_the_default_relay() {
        let config = Config::from_toml(r#"listen = ["127.0.0.1:3478", "[::1]:3478"]"#).unwrap();
        let relays = resolve_relay_addresses(&config).unwrap();
        assert_eq!(relays[0].bind, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(relays[1].bind, "::1".parse::<IpAddr>().unwrap());
    }
}
