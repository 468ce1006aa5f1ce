//! Caps on open TCP/TLS and HTTP connections, in all and per client address. IPv6 clients
//! are counted per /64 ([`QuotaKey`], as every per-address limit): one host usually holds a
//! whole /64 and could otherwise open as many connections as it has addresses. A connection from a load balancer that speaks
//! the PROXY protocol is counted under the client its header names, not the balancer's
//! address (which would reach `max-per-ip` at once).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::proxy_protocol::TrustedProxies;
use crate::turn::QuotaKey;

pub(crate) struct ConnectionLimits {
    max: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<QuotaKey, usize>,
}

/// One admitted connection; dropping it frees the slot.
pub(crate) struct Permit {
    limits: Arc<ConnectionLimits>,
    /// The client it is counted under, once known.
    ip: Option<QuotaKey>,
}

impl ConnectionLimits {
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            max_per_ip,
            open: Mutex::new(Open::default()),
        })
    }

    /// Admits a connection from `ip`, or `None` when a cap is reached.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Option<Permit> {
        let ip = QuotaKey::of(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if open.total >= self.max || from_ip >= self.max_per_ip {
            return None;
        }
        open.total += 1;
        open.per_ip.insert(ip, from_ip + 1);
        Some(Permit {
            limits: self.clone(),
            ip: Some(ip),
        })
    }

    /// Admits a connection from `peer`: under its own address, or, from a load balancer in
    /// `proxies`, unattributed until its PROXY header names the client. Returns the permit
    /// and whether a header must be read first; `None` when a cap is reached.
    pub fn try_admit_from(
        self: &Arc<Self>,
        peer: IpAddr,
        proxies: &TrustedProxies,
    ) -> Option<(Permit, bool)> {
        if proxies.trusts(peer) {
            Some((self.try_admit_unattributed()?, true))
        } else {
            Some((self.try_admit(peer)?, false))
        }
    }

    /// Admits a connection whose client is not known yet (a load balancer's, whose PROXY
    /// header will name it): counted in the total now, under its client once
    /// [attributed](Permit::attribute). `None` when the total cap is reached.
    pub fn try_admit_unattributed(self: &Arc<Self>) -> Option<Permit> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max {
            return None;
        }
        open.total += 1;
        Some(Permit {
            limits: self.clone(),
            ip: None,
        })
    }
}

impl Permit {
    /// Counts an unattributed connection under its client `ip`; false (and still
    /// unattributed) when that client already has `max-per-ip` connections.
    pub fn attribute(&mut self, ip: IpAddr) -> bool {
        debug_assert!(self.ip.is_none(), "a connection is attributed once");
        let ip = QuotaKey::of(ip);
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_per_ip {
            return false;
        }
        open.per_ip.insert(ip, from_ip + 1);
        self.ip = Some(ip);
        true
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        let Some(ip) = self.ip else { return };
        if let Some(count) = open.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                open.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_total_and_per_ip_and_frees_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = limits.try_admit(a).unwrap();
        let _p2 = limits.try_admit(a).unwrap();
        assert!(limits.try_admit(a).is_none(), "per-IP cap");
        let _p3 = limits.try_admit(b).unwrap();
        assert!(limits.try_admit(b).is_none(), "total cap");
        drop(p1);
        assert!(limits.try_admit(a).is_some());
    }

    #[test]
    fn proxied_connections_count_under_the_client_their_header_names() {
        let limits = ConnectionLimits::new(3, 1);
        let client: IpAddr = "198.51.100.7".parse().unwrap();
        // Any number of a balancer's connections wait for their headers at once.
        let mut first = limits.try_admit_unattributed().unwrap();
        let mut second = limits.try_admit_unattributed().unwrap();
        assert!(first.attribute(client));
        assert!(!second.attribute(client), "per-IP cap of the named client");
        assert!(limits.try_admit(client).is_none());
        let _third = limits.try_admit_unattributed().unwrap();
        assert!(limits.try_admit_unattributed().is_none(), "total cap");
        drop((first, second));
        assert!(!limits
            .open
            .lock()
            .unwrap()
            .per_ip
            .contains_key(&QuotaKey::of(client)));
        assert!(limits.try_admit(client).is_some());
    }

    #[test]
    fn ipv6_clients_count_per_slash_64() {
        let limits = ConnectionLimits::new(10, 1);
        let _first = limits
            .try_admit("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        assert!(limits
            .try_admit("2001:db8:1:2::ffff".parse().unwrap())
            .is_none());
        assert!(limits
            .try_admit("2001:db8:1:3::1".parse().unwrap())
            .is_some());
    }
}
