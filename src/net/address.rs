//! Which address relay sockets bind to and which one clients are told.

use std::net::{IpAddr, Ipv4Addr};

use crate::config::Config;
use crate::turn::RelayAddress;

/// `relay-ip` if set; else the first specific listen address; else the first global-looking
/// address of this host's interfaces. The advertised address is `external-ip` if set.
pub fn resolve_relay_address(config: &Config) -> anyhow::Result<RelayAddress> {
    let bind = match config.relay_ip {
        Some(ip) => ip,
        None => config
            .listen
            .iter()
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified())
            .or_else(|| detect_interface_ip(config.external_ip.is_none_or(|e| e.is_ipv4())))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "cannot find an address for relay sockets: set `relay-ip` (config) or --relay-ip"
                )
            })?,
    };
    let public = config.external_ip.unwrap_or(bind);
    if public.is_ipv4() != bind.is_ipv4() {
        anyhow::bail!("`external-ip` {public} and the relay address {bind} are of different IP families: set `relay-ip` to match");
    }
    if config.external_ip.is_none() && is_private(bind) {
        tracing::warn!(relay = %bind, "relay address is not public; set `external-ip` if this host is behind NAT");
    }
    Ok(RelayAddress { bind, public })
}

/// The first non-loopback interface address of the wanted family (IPv4 by default).
fn detect_interface_ip(want_v4: bool) -> Option<IpAddr> {
    let interfaces = if_addrs::get_if_addrs().ok()?;
    let mut candidates: Vec<IpAddr> = interfaces
        .iter()
        .map(|i| i.ip())
        .filter(|ip| ip.is_ipv4() == want_v4 && !ip.is_loopback() && !is_link_local(*ip))
        .collect();
    // Prefer a public address, then a private one.
    candidates.sort_by_key(|ip| is_private(*ip));
    candidates
        .first()
        .copied()
        .or(want_v4.then_some(IpAddr::V4(Ipv4Addr::LOCALHOST)))
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xC0) == 64
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
