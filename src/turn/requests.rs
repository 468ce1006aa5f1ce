//! The TURN request handlers: Allocate, Refresh, CreatePermission, ChannelBind
//! (RFC 8656 §7, §9, §12) and the address-family rules of RFC 8656 §7.2 / RFC 6156.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::allocation::{
    Allocation, ChannelBindError, Owner, PendingAllocate, PortChoice, Relay, State, MAX_PERMISSIONS,
};
use super::auth::{quota_name, Credentials};
use super::quota::{QuotaClaim, QuotaExceeded};
use super::server::{Reply, Server, RELAY_BIND_TIMEOUT};
use super::tcp_relay::{open_relay, PROTOCOL_TCP};
use super::{Output, RelayAddr, RelayOptions, Transport};
use crate::stun::{AddressFamily, AttrType, ErrorCode, Message};

/// REQUESTED-TRANSPORT value for UDP (RFC 8656 §14.7: an IANA protocol number).
pub(super) const PROTOCOL_UDP: u8 = 17;

/// Which relay family an Allocate gets when it does not ask (browsers never do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DefaultFamily {
    /// IPv4 when the server has an IPv4 relay address (RFC 8656 §7.2's default).
    #[default]
    Ipv4,
    /// IPv6 when the server has an IPv6 relay address.
    Ipv6,
    /// The family the client reached us over.
    MatchClient,
}

/// The relay families an Allocate asks for.
struct Families {
    /// Bind IPs to reserve a port on, IPv4 first.
    binds: Vec<IpAddr>,
    /// ADDITIONAL-ADDRESS-FAMILY that cannot be served (answered with ADDRESS-ERROR-CODE).
    unserved: Option<AddressFamily>,
}

impl Server {
    /// RFC 8656 §7.2.
    pub(super) fn handle_allocate(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        credentials: Credentials,
        reply: &Reply,
    ) {
        let tuple = reply.to;
        if let Some(existing) = self.allocations.get(&tuple) {
            if existing.allocate_transaction != reply.transaction {
                self.send_error(reply, ErrorCode::ALLOCATION_MISMATCH, |_| {});
            } else if matches!(existing.state, State::Active) {
                // A retransmission: the first response was lost, so send it again.
                let bytes = existing.allocate_response.clone();
                self.outputs
                    .push_back(Output::Transmit { to: tuple, bytes });
            }
            return;
        }
        if self.draining {
            self.stats.refused_draining += 1;
            if !self.redirect(reply) {
                self.send_error(reply, ErrorCode::ALLOCATION_QUOTA_REACHED, |_| {});
            }
            return;
        }
        let protocol = match Self::relay_protocol(message, reply) {
            Ok(protocol) => protocol,
            Err(error) => {
                self.send_error(reply, error, |_| {});
                return;
            }
        };
        // A TCP allocation with a token was refused just above (RFC 6062 §5.1).
        if message.has_reservation_token() {
            self.allocate_reserved(now, message, credentials, reply);
            return;
        }
        let Some(quota) = self.claim_quota(&credentials, reply) else {
            return;
        };
        let families = match self.allocate_families(message, tuple.client.ip()) {
            Ok(families) => families,
            Err(error) => {
                self.send_error(reply, error, |_| {});
                return;
            }
        };
        let ports = match message.even_port() {
            None => PortChoice::Any,
            Some(even) if !even.reserve_next => PortChoice::Even,
            // The token names one relayed address: no pair for a dual allocation.
            Some(_) if families.binds.len() > 1 || families.unserved.is_some() => {
                self.send_error(reply, ErrorCode::BAD_REQUEST, |_| {});
                return;
            }
            Some(_) => PortChoice::EvenPair,
        };
        // The reserved port counts against the quotas like an allocation.
        let reservation_quota = match ports {
            PortChoice::EvenPair => match self.claim_quota(&credentials, reply) {
                Some(claim) => Some(claim),
                None => return,
            },
            _ => None,
        };
        let mut relays = Vec::with_capacity(families.binds.len());
        for &ip in &families.binds {
            match self.reserve_relay(ip, ports) {
                Some(relay) => relays.push(relay),
                None => {
                    for relay in relays {
                        self.release_port(relay.bind);
                    }
                    // Every relay port is in use: another node of the fleet has room.
                    if self.redirect(reply) {
                        self.stats.redirected_full += 1;
                    } else {
                        self.send_error(reply, ErrorCode::INSUFFICIENT_CAPACITY, |_| {});
                    }
                    return;
                }
            }
        }
        let Some((algorithm, _)) = reply.integrity else {
            debug_assert!(false, "an Allocate is handled only once authenticated");
            return;
        };
        let pending = PendingAllocate {
            lifetime: self.granted_lifetime(message).max(self.default_lifetime),
            algorithm,
            fingerprint: reply.fingerprint,
            ports,
            relay_options: relay_options(message),
            attempts: 0,
            unserved_family: families.unserved,
        };
        for relay in &relays {
            self.outputs
                .push_back(open_relay(protocol, relay.bind, pending.relay_options));
        }
        let owner = Owner {
            username: credentials.username,
            key: credentials.key,
            quota,
        };
        let mut allocation = Allocation::new(
            relays,
            owner,
            reply.transaction,
            pending,
            now,
            now + RELAY_BIND_TIMEOUT,
        );
        allocation.reservation_quota = reservation_quota;
        allocation.protocol = protocol;
        self.allocations
            .insert(tuple, allocation, now + RELAY_BIND_TIMEOUT);
    }

    /// One allocation's place in the quotas, or `None` after answering 486 (or 300 when
    /// the server is full and has alternates).
    fn claim_quota(&mut self, credentials: &Credentials, reply: &Reply) -> Option<QuotaClaim> {
        let client = reply.to.client;
        match self
            .quotas
            .claim(quota_name(&credentials.username), client.ip())
        {
            Ok(claim) => Some(claim),
            Err(exceeded) => {
                // The node is full, so another node of the fleet takes the client. A user's
                // or an address's quota is no reason to move: it would be reached there too.
                if exceeded == QuotaExceeded::Total && self.redirect(reply) {
                    self.stats.redirected_full += 1;
                    return None;
                }
                self.stats.quota_refusals[exceeded as usize] += 1;
                tracing::info!(
                    %client,
                    user = %credentials.username,
                    quota = exceeded.name(),
                    "allocation refused: quota reached"
                );
                self.send_error(reply, ErrorCode::ALLOCATION_QUOTA_REACHED, |_| {});
                None
            }
        }
    }

    /// Sends an Allocate that this server will not take (draining, or full) to the next
    /// alternate server of the client's family: 300 Try Alternate (RFC 8489 §10), after
    /// authentication, so it carries MESSAGE-INTEGRITY. Returns false, having answered
    /// nothing, when no alternate has an address of the client's family.
    fn redirect(&mut self, reply: &Reply) -> bool {
        let Some(redirect) = self.alternates.choose(reply.to.client.ip()) else {
            return false;
        };
        // Only a TLS client checks a certificate, and only it needs the name (§14.16).
        let domain = redirect
            .domain
            .filter(|_| reply.to.transport == Transport::Tls);
        tracing::debug!(
            client = %reply.to.client,
            alternate = %redirect.server,
            "allocation sent to an alternate server"
        );
        self.send_error(reply, ErrorCode::TRY_ALTERNATE, |b| {
            b.add_plain_address(AttrType::ALTERNATE_SERVER, redirect.server);
            if let Some(other) = redirect.other_family {
                b.add_plain_address(AttrType::ALTERNATE_SERVER, other);
            }
            if let Some(domain) = &domain {
                b.add(AttrType::ALTERNATE_DOMAIN, domain.as_bytes());
            }
        });
        true
    }

    /// Checks REQUESTED-TRANSPORT, REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY
    /// (RESERVATION-TOKEN has its own path); returns the relay addresses to reserve.
    fn allocate_families(
        &self,
        message: &Message<'_>,
        client_ip: IpAddr,
    ) -> Result<Families, ErrorCode> {
        let transport = message
            .requested_transport()
            .ok_or(ErrorCode::BAD_REQUEST)?;
        if transport != PROTOCOL_UDP && transport != PROTOCOL_TCP {
            return Err(ErrorCode::UNSUPPORTED_TRANSPORT);
        }
        let requested = message.requested_family();
        let additional = message.additional_family();
        if requested.is_some() && additional.is_some() {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let v4 = self.relay_bind_ip(false);
        let v6 = self.relay_bind_ip(true);
        let single = |ip: Option<IpAddr>| {
            ip.map(|ip| Families {
                binds: vec![ip],
                unserved: None,
            })
            .ok_or(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED)
        };
        if let Some(additional) = additional {
            // Only IPv6 may be the additional family; IPv4 is always the first one.
            if additional != AddressFamily::Ipv6 {
                return Err(ErrorCode::BAD_REQUEST);
            }
            let v4 = v4.ok_or(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED)?;
            return Ok(match v6 {
                Some(v6) => Families {
                    binds: vec![v4, v6],
                    unserved: None,
                },
                None => Families {
                    binds: vec![v4],
                    unserved: Some(AddressFamily::Ipv6),
                },
            });
        }
        match requested {
            Some(AddressFamily::Ipv4) => single(v4),
            Some(AddressFamily::Ipv6) => single(v6),
            Some(AddressFamily::Unknown) => Err(ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED),
            None => {
                let prefer_v6 = match self.default_family {
                    DefaultFamily::Ipv4 => false,
                    DefaultFamily::Ipv6 => true,
                    DefaultFamily::MatchClient => client_ip.to_canonical().is_ipv6(),
                };
                let (first, second) = if prefer_v6 { (v6, v4) } else { (v4, v6) };
                single(first.or(second))
            }
        }
    }

    /// RFC 8656 §7.3: LIFETIME 0 deletes; otherwise the allocation lives on. With
    /// REQUESTED-ADDRESS-FAMILY, LIFETIME 0 deletes only that family's relayed address of a
    /// dual allocation.
    pub(super) fn handle_refresh(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        reply: &Reply,
    ) -> Result<(), ErrorCode> {
        let tuple = reply.to;
        let allocation = self
            .allocations
            .get(&tuple)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let family_v6 = match message.requested_family() {
            None => None,
            Some(AddressFamily::Ipv4) => Some(false),
            Some(AddressFamily::Ipv6) => Some(true),
            Some(AddressFamily::Unknown) => return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH),
        };
        let served = |v6: bool| allocation.relays.iter().any(|r| r.bind.is_ipv6() == v6);
        if family_v6.is_some_and(|v6| !served(v6)) {
            return Err(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH);
        }
        let dual = allocation.relays.len() > 1;
        let lifetime = self.granted_lifetime(message);
        match family_v6 {
            Some(v6) if lifetime.is_zero() && dual => {
                self.remove_family(&tuple, v6);
                // Its channels go with it, before the response.
                self.sync_fast_path_and_schedule(now, tuple);
            }
            _ if lifetime.is_zero() => self.remove_allocation(now, &tuple),
            _ => {
                if let Some(allocation) = self.allocations.get_mut(&tuple) {
                    allocation.expires_at = now + lifetime;
                    // A shorter lifetime must wake the timer earlier than it was queued for.
                    let deadline = allocation.next_deadline();
                    self.allocations.schedule(tuple, deadline);
                }
            }
        }
        self.send_success(reply, |b| {
            b.add_u32(AttrType::LIFETIME, lifetime.as_secs() as u32);
        });
        Ok(())
    }

    /// Drops one family's relayed address of a dual allocation; the other lives on.
    fn remove_family(&mut self, tuple: &super::FiveTuple, v6: bool) {
        let family = self.allocations.get(tuple).and_then(|allocation| {
            let relay = allocation.relays.iter().find(|r| r.bind.is_ipv6() == v6)?;
            Some(relay.bind)
        });
        let Some(relay) = family.and_then(|bind| self.allocations.remove_relay(tuple, bind)) else {
            debug_assert!(false, "the caller checked that the family is served");
            return;
        };
        self.release_port(relay.bind);
        self.outputs.push_back(Output::ReleaseRelay {
            relay: RelayAddr(relay.bind),
        });
    }

    /// RFC 8656 §9.2: every XOR-PEER-ADDRESS, all or nothing.
    pub(super) fn handle_create_permission(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        reply: &Reply,
    ) -> Result<(), ErrorCode> {
        // The cap first: a request may carry thousands of addresses, and none of them is
        // worth the policy's work once there are more than an allocation may hold.
        let mut peers: Vec<SocketAddr> = Vec::new();
        for peer in message.xor_peer_addresses() {
            if peers.len() == MAX_PERMISSIONS {
                return Err(ErrorCode::INSUFFICIENT_CAPACITY);
            }
            peers.push(peer.ok_or(ErrorCode::BAD_REQUEST)?);
        }
        if peers.is_empty() {
            return Err(ErrorCode::BAD_REQUEST);
        }
        let ips: Vec<IpAddr> = peers.iter().map(|p| p.ip().to_canonical()).collect();
        for &ip in &ips {
            self.check_peer(reply, ip)?;
        }
        let allocation = self
            .allocations
            .get_mut(&reply.to)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        if !allocation.add_permissions(now, &ips) {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let deadline = allocation.next_deadline();
        self.allocations.schedule(reply.to, deadline);
        self.send_success(reply, |_| {});
        Ok(())
    }

    /// RFC 8656 §12.2.
    pub(super) fn handle_channel_bind(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        reply: &Reply,
    ) -> Result<(), ErrorCode> {
        let number = message
            .channel_number()
            .filter(|n| self.channel_numbers.range().contains(n))
            .ok_or(ErrorCode::BAD_REQUEST)?;
        let peer = message
            .xor_peer_address()
            .map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()))
            .ok_or(ErrorCode::BAD_REQUEST)?;
        self.check_peer(reply, peer.ip())?;
        if self.host.is_own_service(peer) {
            return Err(ErrorCode::FORBIDDEN);
        }
        let allocation = self
            .allocations
            .get_mut(&reply.to)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        allocation
            .bind_channel(now, number, peer)
            .map_err(|error| match error {
                ChannelBindError::TooManyChannels => ErrorCode::INSUFFICIENT_CAPACITY,
                _ => ErrorCode::BAD_REQUEST,
            })?;
        let deadline = allocation.next_deadline();
        self.allocations.schedule(reply.to, deadline);
        self.send_success(reply, |_| {});
        Ok(())
    }

    /// The allocation must have a relay of the peer's family (443), then the operator's
    /// policy must allow the peer (403). Returns that relay's bound address.
    pub(super) fn check_peer(&self, reply: &Reply, ip: IpAddr) -> Result<SocketAddr, ErrorCode> {
        let allocation = self
            .allocations
            .get(&reply.to)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        let relay = allocation
            .relay_for(ip)
            .ok_or(ErrorCode::PEER_ADDRESS_FAMILY_MISMATCH)?;
        if !self.peers.permits(ip) {
            return Err(ErrorCode::FORBIDDEN);
        }
        Ok(relay.bind)
    }

    /// The "desired lifetime" of RFC 8656 §7.2 and §7.3: zero when LIFETIME is zero;
    /// otherwise the requested value capped at the maximum and raised to the default; the
    /// default when LIFETIME is absent.
    pub(super) fn granted_lifetime(&self, message: &Message<'_>) -> Duration {
        match message.lifetime() {
            Some(zero) if zero.is_zero() => zero,
            Some(asked) => asked.min(self.max_lifetime).max(self.default_lifetime),
            None => self.default_lifetime,
        }
    }

    /// Claims a free port on the relay address of `family_ip`'s family (for
    /// [`PortChoice::EvenPair`] the one after it too). `None` for [`PortChoice::Reserved`]:
    /// a reserved port is exactly one, with no other to try.
    pub(super) fn reserve_relay(&mut self, family_ip: IpAddr, ports: PortChoice) -> Option<Relay> {
        let random = self.rng.next_u64();
        let pool = self
            .relays
            .iter_mut()
            .find(|r| r.address.bind.is_ipv6() == family_ip.is_ipv6())?;
        let port = match ports {
            PortChoice::Any => pool.ports.acquire(random, false),
            PortChoice::Even => pool.ports.acquire(random, true),
            PortChoice::EvenPair => pool.ports.acquire_pair(random),
            PortChoice::Reserved => None,
        }?;
        Some(Relay {
            bind: SocketAddr::new(pool.address.bind, port),
            public: SocketAddr::new(pool.address.public, port),
            bound: false,
        })
    }

    fn relay_bind_ip(&self, v6: bool) -> Option<IpAddr> {
        self.relays
            .iter()
            .map(|r| r.address.bind)
            .find(|ip| ip.is_ipv6() == v6)
    }
}

/// How an Allocate's relay sockets are opened: DONT-FRAGMENT asks for the DF bit on
/// everything relayed (RFC 8656 §7.2); this server can set it, so it is honoured, never
/// refused.
pub(super) fn relay_options(message: &Message<'_>) -> RelayOptions {
    RelayOptions {
        dont_fragment: message.has_dont_fragment(),
    }
}
