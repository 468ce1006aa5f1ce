//! The TURN server state machine: dispatch, the request handlers and the timers.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::time::{Duration, Instant};

use super::allocation::{PendingAllocate, State};
use super::auth::{Authenticator, Rejection, UserSecret};
use super::deliver::{frame_in_place, ClientFraming, PEER_HEADROOM, PEER_TAILROOM};
use super::policy::PeerPolicy;
use super::ports::PortPool;
use super::requests::DefaultFamily;
use super::table::AllocationTable;
use super::{FiveTuple, Output, PeerAddr, RelayAddr, RelayAddress, ToClient, ToPeer};
use crate::random::Rng;
use crate::stun::{
    classify, AttrType, ChannelData, Class, ErrorCode, Framing, IntegrityAlgorithm, Message,
    MessageBuilder, Method, TransactionId,
};

/// How many ports to try when the I/O layer finds the chosen one taken by another program.
const RELAY_BIND_ATTEMPTS: u8 = 8;
/// How long an allocation may wait for its relay socket before it is dropped.
pub(super) const RELAY_BIND_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the core needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub realm: String,
    /// At most one relay address per IP family; the first is the default family.
    pub relays: Vec<RelayAddress>,
    /// The relay family of an Allocate that does not ask for one.
    pub default_family: DefaultFamily,
    pub relay_ports: RangeInclusive<u16>,
    /// This host's own addresses. Peers there are refused (but for the relay ports of
    /// `server_relay_ports`, where other allocations live) unless `peers` allows them
    /// explicitly: a relay must not reach services that trust local traffic.
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
        }
    }
}

/// Counters for what happened to traffic; never labelled with users or addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets that were neither STUN nor ChannelData, or failed to parse.
    pub malformed: u64,
    /// Packets from a source that cannot be a client (port 0).
    pub invalid_source: u64,
    pub requests: u64,
    pub error_responses: u64,
    pub auth_rejections: u64,
    pub allocations_created: u64,
    pub allocations_ended: u64,
    pub relayed_to_peers: u64,
    pub relayed_to_clients: u64,
    /// Data for an allocation that does not exist or has expired.
    pub dropped_no_allocation: u64,
    /// Data to or from a peer without a permission.
    pub dropped_no_permission: u64,
    /// ChannelData on a channel that is not bound.
    pub dropped_unbound_channel: u64,
}

impl Stats {
    /// Adds another shard's counters to these.
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            malformed,
            invalid_source,
            requests,
            error_responses,
            auth_rejections,
            allocations_created,
            allocations_ended,
            relayed_to_peers,
            relayed_to_clients,
            dropped_no_allocation,
            dropped_no_permission,
            dropped_unbound_channel,
        } = other;
        self.malformed += malformed;
        self.invalid_source += invalid_source;
        self.requests += requests;
        self.error_responses += error_responses;
        self.auth_rejections += auth_rejections;
        self.allocations_created += allocations_created;
        self.allocations_ended += allocations_ended;
        self.relayed_to_peers += relayed_to_peers;
        self.relayed_to_clients += relayed_to_clients;
        self.dropped_no_allocation += dropped_no_allocation;
        self.dropped_no_permission += dropped_no_permission;
        self.dropped_unbound_channel += dropped_unbound_channel;
    }
}

/// The sans-IO TURN server. See the module documentation of [`crate::turn`].
pub struct Server {
    auth: Authenticator,
    pub(super) peers: PeerPolicy,
    /// Own addresses the operator has not allowed explicitly: only relay ports there.
    own_addresses: Vec<std::net::IpAddr>,
    server_relay_ports: RangeInclusive<u16>,
    pub(super) default_lifetime: Duration,
    pub(super) max_lifetime: Duration,
    pub(super) default_family: DefaultFamily,
    pub(super) relays: Vec<RelayPool>,
    pub(super) allocations: AllocationTable,
    pub(super) outputs: VecDeque<Output>,
    /// Chooses relay ports and Data indication transaction ids.
    pub(super) rng: Rng,
    wall_clock: WallClock,
    /// Reused for every peer → client packet, so the hot path does not allocate.
    scratch: Vec<u8>,
    stats: Stats,
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

/// Why a client's payload was not relayed (each has its counter).
enum Dropped {
    NoAllocation,
    UnboundChannel,
    NoPermission,
}

/// How to answer one request.
pub(super) struct Reply {
    pub to: FiveTuple,
    pub method: Method,
    pub transaction: TransactionId,
    pub fingerprint: bool,
    pub integrity: Option<(IntegrityAlgorithm, [u8; 16])>,
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
        let auth = Authenticator::new(
            &config.realm,
            &config.users,
            &config.secrets,
            &nonce_key,
            config.nonce_lifetime.as_secs().max(1),
        );
        let relays = config
            .relays
            .iter()
            .map(|&address| RelayPool {
                address,
                ports: PortPool::new(config.relay_ports.clone()),
            })
            .collect();
        Self {
            auth,
            own_addresses: config
                .own_addresses
                .iter()
                .map(|ip| ip.to_canonical())
                .filter(|ip| !config.peers.explicitly_allows(*ip))
                .collect(),
            server_relay_ports: config.server_relay_ports,
            peers: config.peers,
            default_lifetime: config.default_lifetime,
            max_lifetime: config.max_lifetime,
            default_family: config.default_family,
            relays,
            allocations: AllocationTable::default(),
            outputs: VecDeque::new(),
            rng,
            wall_clock: WallClock { at: now, unix_secs },
            scratch: Vec::with_capacity(2048),
            stats: Stats::default(),
        }
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
            self.stats.invalid_source += 1;
            return None;
        }
        match classify(bytes) {
            Framing::ChannelData => self.handle_channel_data(now, from, bytes),
            Framing::Stun => match Message::parse(bytes) {
                Ok(message) => self.handle_stun(now, from, &message),
                Err(error) => {
                    tracing::debug!(client = %from.client, %error, "dropped malformed STUN");
                    self.stats.malformed += 1;
                    None
                }
            },
            Framing::Other => {
                self.stats.malformed += 1;
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
        let Some((tuple, allocation)) = self
            .allocations
            .by_relay(&relay)
            .filter(|(_, a)| a.is_active(now))
        else {
            self.stats.dropped_no_allocation += 1;
            return None;
        };
        if !allocation.has_permission(now, peer.ip()) || self.is_own_service(peer) {
            self.stats.dropped_no_permission += 1;
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
            self.stats.malformed += 1;
            return None;
        };
        self.stats.relayed_to_clients += 1;
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
        let reply = Reply {
            to: tuple,
            method: Method::ALLOCATE,
            transaction: allocation.allocate_transaction,
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
        // The port is taken by another program: release our claim and try another.
        self.release_port(relay);
        let attempts = pending.attempts + 1;
        let retry = (attempts < RELAY_BIND_ATTEMPTS)
            .then(|| self.reserve_relay(relay.ip(), pending.even_port))
            .flatten();
        let Some(replacement) = retry else {
            self.allocations.remove_relay(&tuple, relay);
            self.remove_allocation(&tuple);
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
        self.outputs.push_back(Output::BindRelay {
            relay: RelayAddr(replacement.bind),
        });
    }

    /// A stream connection closed: its allocation ends with it (RFC 8656 §3.1).
    pub fn handle_connection_closed(&mut self, tuple: FiveTuple) {
        self.remove_allocation(&tuple);
    }

    /// Expires what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(tuple) = self.allocations.pop_due(now) {
            let Some(allocation) = self.allocations.get_mut(&tuple) else {
                continue;
            };
            if now >= allocation.expires_at {
                self.remove_allocation(&tuple);
                continue;
            }
            let next = allocation.sweep(now);
            self.allocations.schedule(tuple, next);
        }
    }

    /// When [`Server::handle_timeout`] next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.allocations.next_wake()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
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
                self.stats.requests += 1;
                self.handle_request(now, from, message);
                None
            }
            (Class::Indication, Method::SEND) => self.handle_send(now, from, message),
            _ => {
                // Responses and other indications are not for a server.
                self.stats.malformed += 1;
                None
            }
        }
    }

    fn handle_request(&mut self, now: Instant, from: FiveTuple, message: &Message<'_>) {
        let mut reply = Reply {
            to: from,
            method: message.method(),
            transaction: message.transaction_id(),
            fingerprint: message.has_fingerprint(),
            integrity: None,
        };
        let method = message.method();
        if method == Method::BINDING {
            if self.refuse_unknown_attributes(message, &reply) {
                return;
            }
            self.send_success(&reply, |b| {
                b.add_xor_address(AttrType::XOR_MAPPED_ADDRESS, from.client);
            });
            return;
        }
        if ![
            Method::ALLOCATE,
            Method::REFRESH,
            Method::CREATE_PERMISSION,
            Method::CHANNEL_BIND,
        ]
        .contains(&method)
        {
            self.send_error(&reply, ErrorCode::BAD_REQUEST, |_| {});
            return;
        }
        let unix_now = self.unix_secs(now);
        let credentials = match self.auth.authenticate(message, from.client, unix_now) {
            Ok(credentials) => credentials,
            Err(rejection) => {
                self.stats.auth_rejections += 1;
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
        let result = match self.allocations.get(&from) {
            Some(a) if a.is_active(now) && a.username == credentials.username => Ok(()),
            Some(a) if a.is_active(now) => Err(ErrorCode::WRONG_CREDENTIALS),
            _ => Err(ErrorCode::ALLOCATION_MISMATCH),
        };
        let result = result.and_then(|()| match method {
            Method::REFRESH => self.handle_refresh(now, message, &reply),
            Method::CREATE_PERMISSION => self.handle_create_permission(now, message, &reply),
            _ => self.handle_channel_bind(now, message, &reply),
        });
        if let Err(error) = result {
            self.send_error(&reply, error, |_| {});
        }
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

    /// 401 and 438 carry a fresh challenge (RFC 8489 §9.2.4); 400 does not.
    fn reject(&mut self, reply: &Reply, rejection: Rejection, unix_now: u64) {
        let error = match rejection {
            Rejection::BadRequest => {
                self.send_error(reply, ErrorCode::BAD_REQUEST, |_| {});
                return;
            }
            Rejection::Unauthorized => ErrorCode::UNAUTHORIZED,
            Rejection::StaleNonce => ErrorCode::STALE_NONCE,
        };
        let nonce = self.auth.nonce(reply.to.client, unix_now);
        let realm = self.auth.realm().to_owned();
        self.send_error(reply, error, |b| {
            b.add(AttrType::REALM, realm.as_bytes())
                .add(AttrType::NONCE, nonce.as_bytes());
        });
    }

    /// Every relay socket is bound: answer the Allocate and start the lifetime.
    fn activate(
        &mut self,
        now: Instant,
        tuple: FiveTuple,
        reply: &Reply,
        pending: PendingAllocate,
    ) {
        let Some(allocation) = self.allocations.get_mut(&tuple) else {
            debug_assert!(false, "activating a missing allocation");
            return;
        };
        allocation.state = State::Active;
        allocation.expires_at = now + pending.lifetime;
        let relays = allocation.relays.clone();
        let response = build(reply, Class::Success, |b| {
            for relay in &relays {
                b.add_xor_address(AttrType::XOR_RELAYED_ADDRESS, relay.public);
            }
            if let Some(family) = pending.unserved_family {
                b.add_address_error(family, ErrorCode::ADDRESS_FAMILY_NOT_SUPPORTED);
            }
            b.add_u32(AttrType::LIFETIME, pending.lifetime.as_secs() as u32)
                .add_xor_address(AttrType::XOR_MAPPED_ADDRESS, tuple.client);
        });
        allocation.allocate_response = response.clone();
        let deadline = allocation.next_deadline();
        self.stats.allocations_created += 1;
        tracing::debug!(client = %tuple.client, relays = ?relays, "allocation created");
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
            self.stats.malformed += 1;
            return None;
        };
        self.relay_to_peer(now, from, PeerTarget::Address(peer), payload)
    }

    /// RFC 8656 §12.6: ChannelData on a bound channel is relayed to its peer.
    fn handle_channel_data<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        bytes: &'a [u8],
    ) -> Option<ToPeer<'a>> {
        let Some(data) = ChannelData::parse(bytes) else {
            self.stats.malformed += 1;
            return None;
        };
        self.relay_to_peer(now, from, PeerTarget::Channel(data.channel), data.payload)
    }

    /// The hot path, client → peer: one allocation lookup decides the relay socket and the
    /// peer, or why the payload is dropped.
    fn relay_to_peer<'a>(
        &mut self,
        now: Instant,
        from: FiveTuple,
        target: PeerTarget,
        payload: &'a [u8],
    ) -> Option<ToPeer<'a>> {
        match self.route_to_peer(now, from, target) {
            Ok((relay, peer)) => {
                self.stats.relayed_to_peers += 1;
                Some(ToPeer {
                    relay: RelayAddr(relay),
                    peer: PeerAddr(peer),
                    payload,
                })
            }
            Err(dropped) => {
                *match dropped {
                    Dropped::NoAllocation => &mut self.stats.dropped_no_allocation,
                    Dropped::UnboundChannel => &mut self.stats.dropped_unbound_channel,
                    Dropped::NoPermission => &mut self.stats.dropped_no_permission,
                } += 1;
                None
            }
        }
    }

    /// The relay socket and peer address for `target`, checked against the allocation's
    /// channels, permissions and this host's own services.
    fn route_to_peer(
        &self,
        now: Instant,
        from: FiveTuple,
        target: PeerTarget,
    ) -> Result<(SocketAddr, SocketAddr), Dropped> {
        let allocation = self
            .allocations
            .get(&from)
            .filter(|a| a.is_active(now))
            .ok_or(Dropped::NoAllocation)?;
        let peer = match target {
            PeerTarget::Address(peer) => SocketAddr::new(peer.ip().to_canonical(), peer.port()),
            PeerTarget::Channel(number) => allocation
                .channel_peer(now, number)
                .ok_or(Dropped::UnboundChannel)?,
        };
        let relay = allocation
            .relay_for(peer.ip())
            .filter(|_| allocation.has_permission(now, peer.ip()) && !self.is_own_service(peer))
            .ok_or(Dropped::NoPermission)?;
        Ok((relay.bind, peer))
    }

    // ---- helpers ----

    /// A port of this host that is not a relay port: a local service, never a peer.
    pub(super) fn is_own_service(&self, peer: SocketAddr) -> bool {
        self.own_addresses.contains(&peer.ip().to_canonical())
            && !self.server_relay_ports.contains(&peer.port())
    }

    /// Ends an allocation and gives back its ports and sockets.
    pub(super) fn remove_allocation(&mut self, tuple: &FiveTuple) {
        let Some(allocation) = self.allocations.remove(tuple) else {
            return;
        };
        for relay in &allocation.relays {
            self.release_port(relay.bind);
            // Also for relays not confirmed yet: a BindRelay may still be queued ahead of
            // this, and the I/O layer ignores a release of a socket it does not have.
            self.outputs.push_back(Output::ReleaseRelay {
                relay: RelayAddr(relay.bind),
            });
        }
        if matches!(allocation.state, State::Active) {
            self.stats.allocations_ended += 1;
            tracing::debug!(client = %tuple.client, "allocation ended");
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
        let bytes = build(reply, Class::Success, attributes);
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
        self.stats.error_responses += 1;
        let bytes = build(reply, Class::Error, |b| {
            b.add_error(error);
            attributes(b);
        });
        self.outputs.push_back(Output::Transmit {
            to: reply.to,
            bytes,
        });
    }
}

/// A response with integrity when the request was authenticated and FINGERPRINT when the
/// request carried one.
fn build(reply: &Reply, class: Class, attributes: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut b = MessageBuilder::new(class, reply.method, reply.transaction);
    attributes(&mut b);
    if let Some((algorithm, key)) = reply.integrity {
        b.add_integrity(algorithm, &key);
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
