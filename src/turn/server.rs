//! The TURN server state machine: dispatch, the request handlers and the timers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::time::{Duration, Instant};

use super::allocation::{PendingAllocate, PortChoice, RelayProtocol, State};
use super::alternates::{Alternate, Alternates};
use super::auth::{Authenticator, Credentials, Rejection, UserSecret, OFFERED_PASSWORD_ALGORITHMS};
use super::binding::NatDiscovery;
use super::challenge_limit::ChallengeLimiter;
use super::deliver::{frame_in_place, ClientFraming, PEER_HEADROOM, PEER_TAILROOM};
use super::peer_connections::{ConnectionId, PeerConnections};
use super::policy::{HostAddresses, PeerPolicy};
use super::ports::{PortClaims, PortPool};
use super::quota::Quotas;
use super::requests::DefaultFamily;
use super::reservation::{ReservationTimers, Reservations};
use super::stats::{DropReason, Gauges, RequestMethod, Stats};
use super::table::AllocationTable;
use super::tcp_relay::{open_relay, TcpRelayLimits};
use super::{
    ChannelNumbers, FiveTuple, Output, PeerAddr, RelayAddr, RelayAddress, ToClient, ToPeer,
    Transport,
};
use crate::random::Rng;
use crate::stun::{
    classify, AttrType, ChannelData, Class, Dialect, ErrorCode, Framing, IntegrityAlgorithm,
    LongTermKey, Message, MessageBuilder, Method, TransactionId,
};

/// How many ports to try when the I/O layer finds the chosen one taken by another program.
const RELAY_BIND_ATTEMPTS: u8 = 8;
/// How long an allocation may wait for its relay socket before it is dropped.
pub(super) const RELAY_BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the core needs to know from the configuration.
#[derive(Clone)]
pub struct ServerConfig {
    pub realm: String,
    /// At most one relay address per IP family; the first is the default family.
    pub relays: Vec<RelayAddress>,
    /// The relay family of an Allocate that does not ask for one.
    pub default_family: DefaultFamily,
    pub relay_ports: RangeInclusive<u16>,
    /// This host's own addresses. Peers there are refused (but for the relay ports of
    /// `server_relay_ports`, where other allocations live) unless an `allow` range of
    /// `peers` names one exactly: a relay must not reach services that trust local traffic.
    pub own_addresses: Vec<std::net::IpAddr>,
    /// The whole relay port range of the server (all shards).
    pub server_relay_ports: RangeInclusive<u16>,
    pub users: Vec<(String, UserSecret)>,
    pub secrets: Vec<String>,
    pub peers: PeerPolicy,
    /// Lifetime granted when a request asks for none or less (RFC 8656 §7.2: 10 minutes).
    pub default_lifetime: Duration,
    /// The longest lifetime granted (RFC 8656 §7.2: 1 hour).
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// The longest a TURN REST credential may still have to live; later expiries are
    /// refused (a credential minted to last for ever).
    pub max_credential_ttl: Duration,
    /// Allocation counts shared by every shard of the server.
    pub quotas: Quotas,
    /// Unauthenticated error replies (400, 401, 438) per UDP source per second, shared by
    /// every shard; `None`: no limit.
    pub challenge_limit: Option<ChallengeLimiter>,
    /// Binding responses per UDP source per second, shared by every shard; `None`: no limit.
    pub binding_limit: Option<ChallengeLimiter>,
    /// Bytes per second one allocation relays in each direction; 0: no limit.
    pub bandwidth_per_allocation: u64,
    /// Where new allocations go (300 Try Alternate) while the server drains or is full
    /// (`allocations-total` reached, relay ports exhausted), named in turn.
    pub alternate_servers: Vec<Alternate>,
    /// Which channel numbers ChannelBind accepts.
    pub channel_numbers: ChannelNumbers,
    /// Relay ports taken on every shard: share one between shards of one server.
    pub port_claims: PortClaims,
    /// EVEN-PORT reservations of every shard: share one between shards of one server.
    pub reservations: Reservations,
    /// SOFTWARE in every response (RFC 8489 §14.14); `None`: the version is not advertised.
    pub software: Option<String>,
    /// The four addresses of NAT behaviour discovery (RFC 5780), when `other-address` is
    /// set; the I/O layer listens for STUN on each over UDP.
    pub nat_discovery: Option<NatDiscovery>,
    /// Peer connections of TCP allocations (RFC 6062).
    pub tcp_relays: TcpRelayLimits,
    /// A kernel fast path relays bound channels beside this core: announce which are
    /// eligible with [`Output::FastPath`] (see [`FastPathChange`](super::FastPathChange)).
    /// Fixed at start; off, nothing is announced.
    pub fast_path: bool,
}

impl ServerConfig {
    /// A configuration with the RFC's lifetimes and no users, relaying on `relay`.
    pub fn new(realm: &str, relay: RelayAddress, relay_ports: RangeInclusive<u16>) -> Self {
        Self {
            realm: realm.to_owned(),
            relays: vec![relay],
            default_family: DefaultFamily::default(),
            own_addresses: vec![relay.bind, relay.public],
            server_relay_ports: relay_ports.clone(),
            relay_ports,
            users: Vec::new(),
            secrets: Vec::new(),
            peers: PeerPolicy::default(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(3600),
            max_credential_ttl: Duration::from_secs(365 * 24 * 3600),
            quotas: Quotas::default(),
            challenge_limit: None,
            binding_limit: None,
            bandwidth_per_allocation: 0,
            alternate_servers: Vec::new(),
            channel_numbers: ChannelNumbers::default(),
            port_claims: PortClaims::default(),
            reservations: Reservations::default(),
            software: None,
            nat_discovery: None,
            tcp_relays: TcpRelayLimits::default(),
            fast_path: false,
        }
    }
}

/// The sans-IO TURN server. See the module documentation of [`crate::turn`].
pub struct Server {
    auth: Authenticator,
    pub(super) peers: PeerPolicy,
    /// This host's addresses: only relay ports there are peers.
    pub(super) host: HostAddresses,
    pub(super) default_lifetime: Duration,
    pub(super) max_lifetime: Duration,
    pub(super) default_family: DefaultFamily,
    pub(super) relays: Vec<RelayPool>,
    pub(super) quotas: Quotas,
    challenge_limit: Option<ChallengeLimiter>,
    binding_limit: Option<ChallengeLimiter>,
    pub(super) bandwidth_per_allocation: u64,
    pub(super) alternates: Alternates,
    pub(super) channel_numbers: ChannelNumbers,
    software: Option<String>,
    pub(super) nat_discovery: Option<NatDiscovery>,
    /// Whether a kernel fast path mirrors the eligible channels (see `fast_path`).
    pub(super) fast_path: bool,
    /// Set by [`Server::start_draining`]: new allocations are refused.
    pub(super) draining: bool,
    pub(super) allocations: AllocationTable,
    pub(super) reservations: Reservations,
    /// When the reservations this shard made expire.
    pub(super) reservation_timers: ReservationTimers,
    /// The peer connections of TCP allocations (RFC 6062).
    pub(super) peer_connections: PeerConnections,
    pub(super) tcp_limits: TcpRelayLimits,
    pub(super) outputs: VecDeque<Output>,
    /// Chooses relay ports and Data indication transaction ids.
    pub(super) rng: Rng,
    wall_clock: WallClock,
    /// Reused for every peer → client packet, so the hot path does not allocate.
    scratch: Vec<u8>,
    pub(super) stats: Stats,
}

/// A relay address and the ports in use on it.
pub(super) struct RelayPool {
    pub address: RelayAddress,
    pub ports: PortPool,
}

/// Maps the monotonic `Instant`s the core runs on to unix seconds, which REST usernames
/// and nonces carry.
#[derive(Clone, Copy)]
struct WallClock {
    at: Instant,
    unix_secs: u64,
}

/// Where a client's payload should go: a Send indication names the peer, ChannelData its
/// channel.
#[derive(Clone, Copy)]
enum PeerTarget {
    Address(SocketAddr),
    Channel(u16),
}

/// The kinds of reply sent without authentication, each with its own per-source limit.
#[derive(Clone, Copy)]
enum Unauthenticated {
    /// 400, 401, 438 before authentication (`unauthorized-per-ip`).
    Error,
    /// A Binding response or its 420 (`binding-per-ip`).
    Binding,
}

/// How to answer one request.
#[derive(Clone)]
pub(super) struct Reply {
    /// The client, and the server address the answer leaves from.
    pub to: FiveTuple,
    pub method: Method,
    pub transaction: TransactionId,
    pub dialect: Dialect,
    pub fingerprint: bool,
    pub integrity: Option<(IntegrityAlgorithm, LongTermKey)>,
}

impl Server {
    /// `rng` chooses relay ports and transaction ids; `nonce_key` signs nonces (share it
    /// between nodes that sit behind one name); `unix_secs` is the wall-clock time at `now`.
    pub fn new(
        config: ServerConfig,
        now: Instant,
        unix_secs: u64,
        rng: Rng,
        nonce_key: [u8; 32],
    ) -> Self {
        let mut auth = Authenticator::new(
            &config.realm,
            &config.users,
            &config.secrets,
            &nonce_key,
            config.nonce_lifetime.as_secs().max(1),
        );
        auth.set_max_rest_lifetime(config.max_credential_ttl.as_secs());
        let relays = config
            .relays
            .iter()
            .map(|&address| RelayPool {
                address,
                ports: PortPool::new(
                    config.relay_ports.clone(),
                    &config.port_claims,
                    address.bind.is_ipv6(),
                ),
            })
            .collect();
        Self {
            auth,
            host: HostAddresses::new(
                &config.own_addresses,
                &config.peers,
                config.server_relay_ports,
            ),
            peers: config.peers,
            default_lifetime: config.default_lifetime,
            max_lifetime: config.max_lifetime,
            default_family: config.default_family,
            relays,
            quotas: config.quotas,
            challenge_limit: config.challenge_limit,
            binding_limit: config.binding_limit,
            bandwidth_per_allocation: config.bandwidth_per_allocation,
            alternates: Alternates::new(config.alternate_servers),
            channel_numbers: config.channel_numbers,
            software: config.software,
            nat_discovery: config.nat_discovery,
            fast_path: config.fast_path,
            draining: false,
            allocations: AllocationTable::default(),
            reservations: config.reservations,
            reservation_timers: ReservationTimers::default(),
            peer_connections: PeerConnections::default(),
            tcp_limits: config.tcp_relays,
            outputs: VecDeque::new(),
            rng,
            wall_clock: WallClock { at: now, unix_secs },
            scratch: Vec::with_capacity(2048),
            stats: Stats::default(),
        }
    }

    /// Applies a reloaded configuration: credentials, realm, peer policy, lifetimes and
    /// limits. Existing allocations keep their relays, permissions and channels (their
    /// next request is authenticated under the new credentials). Relay addresses and
    /// ports are fixed at start and not taken from `config`.
    pub fn reconfigure(&mut self, config: &ServerConfig) {
        self.auth
            .set_credentials(&config.realm, &config.users, &config.secrets);
        self.host = self.host.reconfigured(&config.own_addresses, &config.peers);
        self.peers = config.peers.clone();
        self.default_lifetime = config.default_lifetime;
        self.max_lifetime = config.max_lifetime;
        self.default_family = config.default_family;
        self.quotas = config.quotas.clone();
        self.challenge_limit = config.challenge_limit.clone();
        self.binding_limit = config.binding_limit.clone();
        self.bandwidth_per_allocation = config.bandwidth_per_allocation;
        self.alternates.replace(config.alternate_servers.clone());
        self.channel_numbers = config.channel_numbers;
        self.software.clone_from(&config.software);
        self.tcp_limits = config.tcp_relays;
    }

    /// Re-checks every channel the fast path relays against the policy and limits in
    /// force at `now` (call after [`Server::reconfigure`], then [`Server::drive`]).
    pub fn reconsider_fast_path(&mut self, now: Instant) {
        self.sync_all_fast_paths(now);
    }

    /// Signs and checks nonces with `key` from now on (a reload that changes `nonce-secret`):
    /// nonces handed out before get 438 Stale Nonce with a fresh one, and clients retry.
    pub fn set_nonce_key(&mut self, key: &[u8; 32]) {
        self.auth.set_nonce_key(key);
    }

    /// Stops taking new allocations (300 Try Alternate, or 486 without alternates);
    /// existing ones go on until they end.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    /// Re-anchors wall-clock time (call now and then: `Instant` and the wall clock drift).
    pub fn set_wall_clock(&mut self, now: Instant, unix_secs: u64) {
        self.wall_clock = WallClock { at: now, unix_secs };
    }

    /// A packet from a client. Returns payload to relay to a peer (ChannelData, Send
    /// indication); anything else is answered through [`Server::poll_output`] or dropped.
    pub fn handle_client_packet<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        bytes: &'a [u8],
    ) -> Option<ToPeer<'a>> {
        if from.client.port() == 0 {
            self.stats.drop(DropReason::InvalidSource);
            return None;
        }
        match classify(bytes) {
            Framing::ChannelData => self.handle_channel_data(now, from, bytes),
            Framing::Stun => match Message::parse(bytes) {
                Ok(message) => self.handle_stun(now, from, &message),
                Err(error) => {
                    tracing::debug!(client = %from.client, %error, "dropped malformed STUN");
                    self.stats.drop(DropReason::Malformed);
                    None
                }
            },
            Framing::Other => {
                self.stats.drop(DropReason::Malformed);
                None
            }
        }
    }

    /// A datagram from `peer` on the relay socket bound to `relay`. Returns the framed
    /// bytes for the client, or `None` when it must be dropped. Copies the payload once;
    /// [`Server::handle_peer_packet_in_place`] is the zero-copy form.
    pub fn handle_peer_packet(
        &mut self,
        now: Instant,
        relay: RelayAddr,
        peer: PeerAddr,
        payload: &[u8],
    ) -> Option<ToClient<'_>> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        scratch.resize(PEER_HEADROOM, 0);
        scratch.extend_from_slice(payload);
        scratch.extend_from_slice(&[0; PEER_TAILROOM]);
        let framed = self.handle_peer_packet_in_place(
            now,
            relay,
            peer,
            &mut scratch,
            PEER_HEADROOM,
            payload.len(),
        );
        self.scratch = scratch;
        let (client, range) = framed?;
        Some(ToClient {
            client,
            bytes: &self.scratch[range],
        })
    }

    /// The zero-copy hot path, peer → client: the payload is `buffer[headroom..headroom +
    /// len]`, with at least [`PEER_HEADROOM`] bytes before it and [`PEER_TAILROOM`] after.
    /// Writes the ChannelData or Data indication framing around it and returns the client
    /// and the range of `buffer` to send.
    pub fn handle_peer_packet_in_place(
        &mut self,
        now: Instant,
        RelayAddr(relay): RelayAddr,
        PeerAddr(peer): PeerAddr,
        buffer: &mut [u8],
        headroom: usize,
        len: usize,
    ) -> Option<(FiveTuple, Range<usize>)> {
        let own_service = self.host.is_own_service(peer);
        let Some((tuple, allocation)) = self
            .allocations
            .by_relay_mut(&relay)
            .filter(|(_, a)| a.is_active(now))
        else {
            self.stats.drop(DropReason::NoAllocation);
            return None;
        };
        if !allocation.has_permission(now, peer.ip()) || own_service {
            self.stats.drop(DropReason::NoPermission);
            return None;
        }
        if !allocation
            .to_clients
            .admit(now, len, self.bandwidth_per_allocation)
        {
            self.stats.drop(DropReason::OverBandwidth);
            return None;
        }
        let framing = match allocation.channel_for_peer(now, peer) {
            Some(channel) => ClientFraming::Channel(channel),
            None => ClientFraming::Indication {
                peer,
                transaction: random_transaction(&mut self.rng),
            },
        };
        let stream = tuple.transport.is_stream();
        let Some(range) = frame_in_place(buffer, headroom, len, framing, stream) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        self.stats.relayed[tuple.transport as usize]
            .to_clients
            .count(len);
        Some((tuple, range))
    }

    /// The I/O layer's answer to [`Output::BindRelay`].
    pub fn handle_relay_bound(&mut self, now: Instant, RelayAddr(relay): RelayAddr, bound: bool) {
        let Some((tuple, allocation)) = self.allocations.by_relay(&relay) else {
            // The allocation gave up before the answer came: close what was bound.
            if bound {
                self.outputs.push_back(Output::ReleaseRelay {
                    relay: RelayAddr(relay),
                });
            }
            return;
        };
        let State::Binding(pending) = allocation.state else {
            // A second answer for a socket already confirmed: nothing is waiting for it.
            return;
        };
        let protocol = allocation.protocol;
        let reply = Reply {
            to: tuple,
            method: Method::ALLOCATE,
            transaction: allocation.allocate_transaction,
            dialect: Dialect::Rfc8489,
            fingerprint: pending.fingerprint,
            integrity: Some((pending.algorithm, allocation.key)),
        };
        if bound {
            let Some(allocation) = self.allocations.get_mut(&tuple) else {
                debug_assert!(false, "found by its relay a moment ago");
                return;
            };
            for r in allocation.relays.iter_mut().filter(|r| r.bind == relay) {
                r.bound = true;
            }
            if allocation.relays.iter().all(|r| r.bound) {
                self.activate(now, tuple, &reply, pending);
            }
            return;
        }
        // The port is taken by another program: release our claim and try another (a
        // reserved port has no other: `reserve_relay` gives none).
        self.release_port(relay);
        if pending.ports == PortChoice::EvenPair {
            self.release_pair_partner(relay);
        }
        let attempts = pending.attempts + 1;
        let retry = (attempts < RELAY_BIND_ATTEMPTS)
            .then(|| self.reserve_relay(relay.ip(), pending.ports))
            .flatten();
        let Some(replacement) = retry else {
            self.allocations.remove_relay(&tuple, relay);
            self.remove_allocation(now, &tuple);
            self.send_error(&reply, ErrorCode::INSUFFICIENT_CAPACITY, |_| {});
            return;
        };
        self.allocations.replace_relay(&tuple, relay, replacement);
        if let Some(allocation) = self.allocations.get_mut(&tuple) {
            allocation.state = State::Binding(PendingAllocate {
                attempts,
                ..pending
            });
        }
        self.outputs.push_back(open_relay(
            protocol,
            replacement.bind,
            pending.relay_options,
        ));
    }

    /// A stream connection closed: its allocation ends with it (RFC 8656 §3.1), and so
    /// does the peer connection of a data connection (RFC 6062 §5.5).
    pub fn handle_connection_closed(&mut self, now: Instant, tuple: FiveTuple) {
        self.remove_allocation(now, &tuple);
        self.data_connection_closed(&tuple);
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.expire_reservations(now);
        while let Some(tuple) = self.allocations.pop_due(now) {
            let Some(allocation) = self.allocations.get_mut(&tuple) else {
                continue;
            };
            if now >= allocation.expires_at {
                self.remove_allocation(now, &tuple);
                continue;
            }
            self.sync_fast_path(now, tuple);
            let Some(allocation) = self.allocations.get_mut(&tuple) else {
                continue;
            };
            let next = allocation.sweep(now);
            self.allocations.schedule(tuple, next);
        }
        self.expire_peer_connections(now);
    }

    /// When [`Server::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let allocations = self.allocations.next_wake();
        let reservations = self.reservation_timers.next_wake();
        let connections = self.peer_connections.next_wake();
        allocations
            .into_iter()
            .chain(reservations)
            .chain(connections)
            .min()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// What exists now: allocations, permissions, channels, relay ports. A walk over the
    /// allocations: call it when publishing, not per packet.
    pub fn gauges(&self) -> Gauges {
        let mut gauges = Gauges {
            allocations: self.allocations.len() as u64,
            ..Gauges::default()
        };
        for allocation in self.allocations.iter() {
            let (permissions, channels) = allocation.permission_and_channel_counts();
            gauges.permissions += permissions as u64;
            gauges.channels += channels as u64;
        }
        gauges.tcp_connections = self.peer_connections.counts();
        for pool in &self.relays {
            gauges.relay_ports_in_use += pool.ports.in_use() as u64;
            gauges.relay_ports_free += (pool.ports.capacity() - pool.ports.in_use()) as u64;
        }
        gauges
    }

    /// Whether `tuple` holds an allocation (live or waiting for its relay sockets).
    pub fn has_allocation(&self, tuple: &FiveTuple) -> bool {
        self.allocations.contains(tuple)
    }

    /// Allocations that exist now (including those waiting for their relay socket).
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    // ---- dispatch ----

    fn handle_stun<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'a>,
    ) -> Option<ToPeer<'a>> {
        match (message.class(), message.method()) {
            (Class::Request, _) => {
                self.handle_request(now, from, message);
                None
            }
            (Class::Indication, Method::SEND) => self.handle_send(now, from, message),
            _ => {
                // Responses and other indications are not for a server.
                self.stats.drop(DropReason::Malformed);
                None
            }
        }
    }

    fn handle_request(&mut self, now: Instant, from: FiveTuple, message: &Message<'_>) {
        let mut reply = Reply {
            to: from,
            method: message.method(),
            transaction: message.transaction_id(),
            dialect: message.dialect(),
            fingerprint: message.has_fingerprint(),
            integrity: None,
        };
        let method = message.method();
        let unix_now = self.unix_secs(now);
        if method == Method::BINDING {
            if self.may_answer_unauthenticated(&reply, Unauthenticated::Binding, unix_now) {
                self.answer_binding(message, &reply);
            }
            return;
        }
        let known = [
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
            Method::CONNECT,
            Method::CONNECTION_BIND,
        ]
        .contains(&method);
        // An Allocate that could never succeed is refused before any challenge, so it earns
        // only a short 400, and that only within the per-source limit.
        let hopeless = method == Method::ALLOCATE && message.requested_transport().is_none();
        if !known || hopeless {
            if self.may_answer_unauthenticated(&reply, Unauthenticated::Error, unix_now) {
                self.send_error(&reply, ErrorCode::BAD_REQUEST, |_| {});
            }
            return;
        }
        let credentials = match self.authenticate(message, &from, unix_now) {
            Ok(credentials) => credentials,
            Err(rejection) => {
                self.stats.auth_failures[rejection as usize] += 1;
                self.reject(&reply, rejection, unix_now);
                return;
            }
        };
        reply.integrity = Some((credentials.algorithm, credentials.key));
        // After authentication, so the 420 carries MESSAGE-INTEGRITY (RFC 8489 §9.2.4).
        if self.refuse_unknown_attributes(message, &reply) {
            return;
        }
        if method == Method::ALLOCATE {
            self.handle_allocate(now, message, credentials, &reply);
            return;
        }
        if method == Method::CONNECTION_BIND {
            // Comes on a new data connection, which has no allocation of its own.
            self.handle_connection_bind(now, message, &credentials.username, &reply);
            return;
        }
        let result = match self.allocations.get(&from) {
            Some(a) if a.is_active(now) && a.username == credentials.username => Ok(()),
            Some(a) if a.is_active(now) => Err(ErrorCode::WRONG_CREDENTIALS),
            _ => Err(ErrorCode::ALLOCATION_MISMATCH),
        };
        let result = result
            .and_then(|()| self.method_fits_allocation(method, &from))
            .and_then(|()| match method {
                Method::REFRESH => self.handle_refresh(now, message, &reply),
                Method::CREATE_PERMISSION => self.handle_create_permission(now, message, &reply),
                Method::CONNECT => self.handle_connect(now, message, &reply),
                _ => self.handle_channel_bind(now, message, &reply),
            });
        if let Err(error) = result {
            self.send_error(&reply, error, |_| {});
        }
        // A bind or a renewed permission may have made a channel eligible. (What a request
        // ends, it withdraws itself, before its response.)
        self.sync_fast_path_and_schedule(now, from);
    }

    /// Answers 420 with UNKNOWN-ATTRIBUTES when the request has comprehension-required
    /// attributes this server does not know (RFC 8489 §6.3.1); returns whether it did.
    fn refuse_unknown_attributes(&mut self, message: &Message<'_>, reply: &Reply) -> bool {
        let unknown = message.unknown_required_attributes();
        if unknown.is_empty() {
            return false;
        }
        self.send_error(reply, ErrorCode::UNKNOWN_ATTRIBUTE, |b| {
            b.add_unknown_attributes(&unknown);
        });
        true
    }

    /// 401 and 438 carry a fresh challenge (RFC 8489 §9.2.4); 400 does not. Challenges
    /// beyond `unauthorized-per-ip` are dropped: they are what a reflection attack buys.
    fn reject(&mut self, reply: &Reply, rejection: Rejection, unix_now: u64) {
        if !self.may_answer_unauthenticated(reply, Unauthenticated::Error, unix_now) {
            return;
        }
        let error = match rejection {
            Rejection::BadRequest | Rejection::Downgrade => {
                if rejection == Rejection::Downgrade {
                    tracing::debug!(
                        client = %reply.to.client,
                        reason = rejection.name(),
                        "password algorithms not echoed as offered"
                    );
                }
                self.send_error(reply, ErrorCode::BAD_REQUEST, |_| {});
                return;
            }
            Rejection::StaleNonce => ErrorCode::STALE_NONCE,
            _ => ErrorCode::UNAUTHORIZED,
        };
        if !matches!(rejection, Rejection::Challenge | Rejection::StaleNonce) {
            tracing::debug!(
                client = %reply.to.client,
                reason = rejection.name(),
                "authentication failed"
            );
        }
        let nonce = self.auth.nonce(reply.to.client, unix_now);
        let realm = self.auth.realm().to_owned();
        self.send_error(reply, error, |b| {
            b.add(AttrType::REALM, realm.as_bytes())
                .add(AttrType::NONCE, nonce.as_bytes())
                .add_password_algorithms(&OFFERED_PASSWORD_ALGORITHMS);
        });
    }

    /// Checks a request's credentials. A nonce is bound to the client's address and port
    /// (the 5-tuple's client side), so it is good only where it was handed out: a nonce
    /// sniffed from plain TCP cannot be replayed from another connection. One exception:
    /// an RFC 6062 ConnectionBind comes on a new data connection, and clients (coturn's)
    /// sign it with the nonce of their control connection; it is accepted when the
    /// connection it names belongs to a control connection from the same IP address.
    fn authenticate(
        &self,
        message: &Message<'_>,
        from: &FiveTuple,
        unix_now: u64,
    ) -> Result<Credentials, Rejection> {
        let result = self.auth.authenticate(message, from.client, unix_now);
        if !matches!(result, Err(Rejection::StaleNonce))
            || message.method() != Method::CONNECTION_BIND
        {
            return result;
        }
        let control = message
            .connection_id()
            .and_then(|id| self.peer_connections.get(ConnectionId(id)))
            .map(|connection| connection.owner.client)
            .filter(|control| control.ip() == from.client.ip());
        match control {
            Some(control) => self.auth.authenticate(message, control, unix_now),
            None => result,
        }
    }

    /// Whether an unauthenticated reply may go to `reply.to`: it costs an attacker nothing to
    /// trigger, so over UDP (where the source may be spoofed, making us a reflector) each
    /// source gets only so many per second; the rest are dropped and counted. Stream
    /// sources have completed a handshake and are not limited (nor could a stream client
    /// recover a dropped reply: it does not retransmit).
    fn may_answer_unauthenticated(
        &mut self,
        reply: &Reply,
        kind: Unauthenticated,
        unix_now: u64,
    ) -> bool {
        if reply.to.transport != Transport::Udp {
            return true;
        }
        let (limiter, reason) = match kind {
            Unauthenticated::Error => (&self.challenge_limit, DropReason::UnauthorizedRate),
            Unauthenticated::Binding => (&self.binding_limit, DropReason::BindingRate),
        };
        let allowed = limiter
            .as_ref()
            .is_none_or(|l| l.allow(reply.to.client.ip(), unix_now));
        if !allowed {
            self.stats.drop(reason);
        }
        allowed
    }

    /// Every relay socket is bound: answer the Allocate and start the lifetime.
    fn activate(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        reply: &Reply,
        pending: PendingAllocate,
    ) {
        let token = match pending.ports {
            PortChoice::EvenPair => self.hold_reservation(now, &tuple),
            _ => None,
        };
        let Some(allocation) = self.allocations.get_mut(&tuple) else {
            debug_assert!(false, "activating a missing allocation");
            return;
        };
        allocation.state = State::Active;
        allocation.expires_at = now + pending.lifetime;
        let relays = allocation.relays.clone();
        let response = build(reply, Class::Success, self.software.as_deref(), |b| {
            for relay in &relays {
                b.add_xor_address(AttrType::XOR_RELAYED_ADDRESS, relay.public);
            }
            if let Some(family) = pending.unserved_family {
                b.add_address_error(family, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
            }
            if let Some(token) = token {
                b.add(AttrType::RESERVATION_TOKEN, &token.0);
            }
            b.add_u32(AttrType::LIFETIME, pending.lifetime.as_secs() as u32)
                .add_xor_address(AttrType::XOR_MAPPED_ADDRESS, tuple.client);
        });
        allocation.allocate_response = response.clone();
        let deadline = allocation.next_deadline();
        self.stats.allocations_created += 1;
        self.stats.request(RequestMethod::Allocate).success += 1;
        tracing::info!(
            client = %tuple.client,
            transport = tuple.transport.name(),
            user = %allocation.username,
            relayed = %relays
                .iter()
                .map(|r| r.public.to_string())
                .collect::<Vec<_>>()
                .join(","),
            relay = allocation.protocol.name(),
            lifetime_s = pending.lifetime.as_secs(),
            "allocation created"
        );
        self.outputs.push_back(Output::Transmit {
            to: tuple,
            bytes: response,
        });
        self.allocations.schedule(tuple, deadline);
    }

    // ---- data ----

    /// RFC 8656 §11.2: a Send indication is relayed if a permission exists.
    fn handle_send<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        message: &Message<'a>,
    ) -> Option<ToPeer<'a>> {
        let (Some(peer), Some(payload)) = (message.xor_peer_address(), message.data()) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        // RFC 8489 §6.3.2: an indication with unknown comprehension-required attributes is
        // discarded, not acted on.
        if message.has_unknown_required_attributes() {
            self.stats.drop(DropReason::UnknownAttribute);
            return None;
        }
        let dont_fragment = message.has_dont_fragment();
        self.relay_to_peer(now, from, PeerTarget::Address(peer), payload)
            .map(|to_peer| ToPeer {
                dont_fragment,
                ..to_peer
            })
    }

    /// RFC 8656 §12.6: ChannelData on a bound channel is relayed to its peer.
    fn handle_channel_data<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        bytes: &'a [u8],
    ) -> Option<ToPeer<'a>> {
        let Some(data) = ChannelData::parse(bytes) else {
            self.stats.drop(DropReason::Malformed);
            return None;
        };
        self.relay_to_peer(now, from, PeerTarget::Channel(data.channel), data.payload)
    }

    /// The hot path, client → peer: one allocation lookup decides the relay socket, the
    /// peer and whether the allocation is within its bandwidth, or why the payload is
    /// dropped.
    fn relay_to_peer<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        target: PeerTarget,
        payload: &'a [u8],
    ) -> Option<ToPeer<'a>> {
        match self.route_to_peer(now, from, target, payload.len()) {
            Ok((relay, peer)) => {
                self.stats.relayed[from.transport as usize]
                    .to_peers
                    .count(payload.len());
                Some(ToPeer {
                    relay: RelayAddr(relay),
                    peer: PeerAddr(peer),
                    payload,
                    dont_fragment: false,
                })
            }
            Err(reason) => {
                self.stats.drop(reason);
                None
            }
        }
    }

    /// The relay socket and peer address for `target`, checked against the allocation's
    /// channels, permissions, bandwidth and this host's own services.
    fn route_to_peer(
        &mut self,
        now: Instant,
        from: FiveTuple,
        target: PeerTarget,
        len: usize,
    ) -> Result<(SocketAddr, SocketAddr), DropReason> {
        let allocation = self
            .allocations
            .get_mut(&from)
            .filter(|a| a.is_active(now))
            .ok_or(DropReason::NoAllocation)?;
        if allocation.protocol != RelayProtocol::Udp {
            return Err(DropReason::TcpAllocation);
        }
        let peer = match target {
            PeerTarget::Address(peer) => SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            PeerTarget::Channel(number) => allocation
                .channel_peer(now, number)
                .ok_or(DropReason::UnboundChannel)?,
        };
        let own_service = self.host.is_own_service(peer);
        let relay = allocation
            .relay_for(peer.ip())
            .filter(|_| allocation.has_permission(now, peer.ip()) && !own_service)
            .ok_or(DropReason::NoPermission)?
            .bind;
        if !allocation
            .to_peers
            .admit(now, len, self.bandwidth_per_allocation)
        {
            return Err(DropReason::OverBandwidth);
        }
        Ok((relay, peer))
    }

    // ---- helpers ----

    /// Ends an allocation and gives back its ports and sockets.
    pub(super) fn remove_allocation(&mut self, now: Instant, tuple: &FiveTuple) {
        let Some(mut allocation) = self.allocations.remove(tuple) else {
            return;
        };
        // Before anything else leaves: the fast path must stop relaying for it first.
        self.withdraw_fast_path(&mut allocation);
        self.close_peer_connections_of(tuple);
        for relay in &allocation.relays {
            self.release_port(relay.bind);
            // Also for relays not confirmed yet: a BindRelay may still be queued ahead of
            // this, and the I/O layer ignores a release of a socket it does not have.
            self.outputs.push_back(Output::ReleaseRelay {
                relay: RelayAddr(relay.bind),
            });
        }
        // An R=1 allocation that never became active has not reserved its partner yet.
        if let State::Binding(pending) = &allocation.state {
            if pending.ports == PortChoice::EvenPair {
                if let Some(relay) = allocation.relays.first() {
                    self.release_pair_partner(relay.bind);
                }
            }
        }
        if matches!(allocation.state, State::Active) {
            self.stats.allocations_ended += 1;
            let (to_peers, to_clients) =
                (allocation.to_peers.traffic, allocation.to_clients.traffic);
            tracing::info!(
                client = %tuple.client,
                transport = tuple.transport.name(),
                user = %allocation.username,
                duration_s = now.saturating_duration_since(allocation.created_at).as_secs(),
                to_peers_packets = to_peers.packets,
                to_peers_bytes = to_peers.bytes,
                to_clients_packets = to_clients.packets,
                to_clients_bytes = to_clients.bytes,
                "allocation ended"
            );
        }
    }

    pub(super) fn release_port(&mut self, relay: SocketAddr) {
        if let Some(pool) = self
            .relays
            .iter_mut()
            .find(|p| p.address.bind == relay.ip())
        {
            pool.ports.release(relay.port());
        }
    }

    fn unix_secs(&self, now: Instant) -> u64 {
        let elapsed = now
            .checked_duration_since(self.wall_clock.at)
            .unwrap_or_default();
        self.wall_clock.unix_secs + elapsed.as_secs()
    }

    pub(super) fn send_success(
        &mut self,
        reply: &Reply,
        attributes: impl FnOnce(&mut MessageBuilder),
    ) {
        self.stats.request(RequestMethod::of(reply.method)).success += 1;
        let bytes = build(reply, Class::Success, self.software.as_deref(), attributes);
        self.outputs.push_back(Output::Transmit {
            to: reply.to,
            bytes,
        });
    }

    pub(super) fn send_error(
        &mut self,
        reply: &Reply,
        error: ErrorCode,
        attributes: impl FnOnce(&mut MessageBuilder),
    ) {
        self.stats.request(RequestMethod::of(reply.method)).error += 1;
        let bytes = build(reply, Class::Error, self.software.as_deref(), |b| {
            b.add_error(error);
            attributes(b);
        });
        self.outputs.push_back(Output::Transmit {
            to: reply.to,
            bytes,
        });
    }
}

/// A response in the request's dialect, with SOFTWARE when configured, integrity when the
/// request was authenticated and FINGERPRINT when the request carried one.
fn build(
    reply: &Reply,
    class: Class,
    software: Option<&str>,
    attributes: impl FnOnce(&mut MessageBuilder),
) -> Vec<u8> {
    let buffer = Vec::with_capacity(128);
    let mut b = MessageBuilder::in_dialect(
        buffer,
        reply.dialect,
        class,
        reply.method,
        reply.transaction,
    );
    attributes(&mut b);
    if let Some(software) = software {
        b.add_software(software);
    }
    if let Some((algorithm, key)) = reply.integrity {
        b.add_integrity(algorithm, key.as_bytes());
    }
    if reply.fingerprint {
        b.add_fingerprint();
    }
    b.finish()
}

fn random_transaction(rng: &mut Rng) -> TransactionId {
    let mut id = [0u8; 12];
    rng.fill(&mut id);
    TransactionId(id)
}
