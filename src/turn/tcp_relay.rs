//! RFC 6062 TCP relays: TCP allocations, Connect, ConnectionAttempt, ConnectionBind, their
//! timers and limits.
//!
//! A TCP allocation's relayed address is a TCP listening socket. The client asks the server
//! to connect to a peer (Connect), or a peer connects to the relayed address and the client
//! hears of it (a ConnectionAttempt indication, only for peers with a permission). Either
//! way the peer connection gets a CONNECTION-ID, and the client opens a new *data
//! connection* to the server and sends ConnectionBind with that id; from its success
//! response on, the data connection carries the peer's bytes as they are, both ways.
//!
//! The split between this core and the I/O layer (the stream shard):
//! - The core owns every decision and all state: which allocations are TCP, the peer
//!   policy and permissions, connection ids and their states ([`PeerConnections`]), the
//!   timers (30 s to connect, 30 s to bind), the limits, and teardown when an allocation
//!   ends. It asks for sockets through [`Output`]s: `ListenRelay`, `ConnectPeer`,
//!   `BridgePeer`, `ClosePeer`.
//! - The I/O layer owns the sockets: it listens and connects, reports results back
//!   ([`Server::handle_peer_connected`], [`Server::handle_incoming_peer`],
//!   [`Server::handle_connection_closed`]), holds a peer connection unread until it is
//!   bound (so the kernel's window, not our memory, holds what the peer sends early), and
//!   pumps the bytes of a bound pair itself, with backpressure: relayed bytes never pass
//!   through the core.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::allocation::RelayProtocol;
use super::peer_connections::{ConnectionId, ConnectionState};
use super::server::{Reply, Server};
use super::{FiveTuple, Output, PeerAddr, RelayAddr, RelayOptions, RelayPace};
use crate::stun::{AttrType, Class, ErrorCode, Message, MessageBuilder, Method, TransactionId};

/// How long the server tries to reach a peer for a Connect before answering 447
/// (RFC 6062 §5.2: at least 30 seconds).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a peer connection waits for its ConnectionBind before it is closed
/// (RFC 6062 §5.2, §5.3).
pub const CONNECTION_BIND_TIMEOUT: Duration = Duration::from_secs(30);

/// REQUESTED-TRANSPORT value for TCP (an IANA protocol number, RFC 6062 §6.1).
pub(super) const PROTOCOL_TCP: u8 = 6;

/// The limits on TCP relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpRelayLimits {
    /// Peer connections one allocation may have open, in any state (connecting, waiting
    /// for a ConnectionBind, relaying).
    pub per_allocation: usize,
    /// Peer connections in any state on the whole server (TCP allocations live on the one
    /// TCP/TLS shard, so its count is the server's).
    pub total: usize,
}

impl Default for TcpRelayLimits {
    fn default() -> Self {
        Self {
            per_allocation: 16,
            total: 1000,
        }
    }
}

impl Server {
    /// The I/O layer's answer to [`Output::ConnectPeer`]: whether the connection to the
    /// peer is open. The Connect request is answered now (success with CONNECTION-ID, or
    /// 447). A connection the core no longer wants (it timed out, its allocation ended)
    /// is closed again with [`Output::ClosePeer`].
    pub fn handle_peer_connected(&mut self, now: Instant, connection: ConnectionId, open: bool) {
        let connecting = self
            .peer_connections
            .get(connection)
            .is_some_and(|c| matches!(c.state, ConnectionState::Connecting { .. }));
        if !connecting {
            if open {
                self.outputs.push_back(Output::ClosePeer { connection });
            }
            return;
        }
        if !open {
            if let Some(failed) = self.peer_connections.remove(connection) {
                self.stats.tcp.failed += 1;
                if let ConnectionState::Connecting { reply, .. } = failed.state {
                    self.send_error(&reply, ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE, |_| {});
                }
            }
            return;
        }
        let Some(reply) = self.take_connect_reply(connection, now + CONNECTION_BIND_TIMEOUT) else {
            debug_assert!(false, "checked to be connecting above");
            return;
        };
        self.stats.tcp.connected += 1;
        self.send_success(&reply, |b| {
            b.add_u32(AttrType::CONNECTION_ID, connection.0);
        });
    }

    /// A peer connected to the TCP relayed address `relay` (RFC 6062 §5.3). Returns the
    /// id the I/O layer keeps the connection under, unread, until it is bound or closed
    /// ([`Output::BridgePeer`], [`Output::ClosePeer`]); `None`: close it now (no live TCP
    /// allocation there, no permission for the peer, or a limit reached).
    pub fn handle_incoming_peer(
        &mut self,
        now: Instant,
        RelayAddr(relay): RelayAddr,
        PeerAddr(peer): PeerAddr,
    ) -> Option<ConnectionId> {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let own_service = self.host.is_own_service(peer);
        let owner = self
            .allocations
            .by_relay(&relay)
            .filter(|(_, a)| a.is_active(now) && a.protocol == RelayProtocol::Tcp)
            .filter(|(_, a)| a.has_permission(now, peer.ip()) && !own_service)
            .map(|(tuple, _)| tuple);
        let Some(owner) = owner.filter(|owner| self.has_room_for_peer_connection(owner)) else {
            self.stats.tcp.refused += 1;
            return None;
        };
        let deadline = now + CONNECTION_BIND_TIMEOUT;
        let connection = self.peer_connections.insert(
            &mut self.rng,
            owner,
            peer,
            ConnectionState::Pending { deadline },
        );
        self.stats.tcp.accepted += 1;
        let mut id = [0u8; 12];
        self.rng.fill(&mut id);
        let mut b = MessageBuilder::new(
            Class::Indication,
            Method::CONNECTION_ATTEMPT,
            TransactionId(id),
        );
        b.add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
            .add_u32(AttrType::CONNECTION_ID, connection.0);
        self.outputs.push_back(Output::Transmit {
            to: owner,
            bytes: b.finish(),
        });
        Some(connection)
    }

    /// Whether `method` may be used on the allocation of `tuple`: Connect only on a TCP
    /// allocation, ChannelBind only on a UDP one (RFC 6062 §5.2: a TCP allocation has no
    /// datagrams to frame). Either is 400 otherwise.
    pub(super) fn method_fits_allocation(
        &self,
        method: Method,
        tuple: &FiveTuple,
    ) -> Result<(), ErrorCode> {
        let protocol = self
            .allocations
            .get(tuple)
            .map(|a| a.protocol)
            .ok_or(ErrorCode::ALLOCATION_MISMATCH)?;
        match (method, protocol) {
            (Method::CONNECT, RelayProtocol::Udp) | (Method::CHANNEL_BIND, RelayProtocol::Tcp) => {
                Err(ErrorCode::BAD_REQUEST)
            }
            _ => Ok(()),
        }
    }

    /// The RFC 6062 §5.1 rules for an Allocate asking for `REQUESTED-TRANSPORT` TCP: only
    /// over TCP or TLS, and without DONT-FRAGMENT, EVEN-PORT or RESERVATION-TOKEN (400
    /// otherwise). Any other transport is the UDP allocation of RFC 8656.
    pub(super) fn relay_protocol(
        message: &Message<'_>,
        reply: &Reply,
    ) -> Result<RelayProtocol, ErrorCode> {
        if message.requested_transport() != Some(PROTOCOL_TCP) {
            return Ok(RelayProtocol::Udp);
        }
        let datagram_only = message.has_even_port()
            || message.has_reservation_token()
            || message.has_dont_fragment();
        if !reply.to.transport.is_stream() || datagram_only {
            return Err(ErrorCode::BAD_REQUEST);
        }
        Ok(RelayProtocol::Tcp)
    }

    /// RFC 6062 §5.2, on an allocation the caller found live and the client's.
    pub(super) fn handle_connect(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        reply: &Reply,
    ) -> Result<(), ErrorCode> {
        let owner = reply.to;
        let peer = message
            .xor_peer_address()
            .map(|p| SocketAddr::new(p.ip().to_canonical(), p.port()))
            .ok_or(ErrorCode::BAD_REQUEST)?;
        let relay = self.check_peer(reply, peer.ip())?;
        if self.host.is_own_service(peer) {
            return Err(ErrorCode::FORBIDDEN);
        }
        if self.peer_connections.find(&owner, peer).is_some() {
            return Err(ErrorCode::CONNECTION_ALREADY_EXISTS);
        }
        if !self.has_room_for_peer_connection(&owner) {
            return Err(ErrorCode::INSUFFICIENT_CAPACITY);
        }
        let state = ConnectionState::Connecting {
            reply: reply.clone(),
            deadline: now + CONNECT_TIMEOUT,
        };
        let connection = self
            .peer_connections
            .insert(&mut self.rng, owner, peer, state);
        self.outputs.push_back(Output::ConnectPeer {
            connection,
            relay: RelayAddr(relay),
            peer: PeerAddr(peer),
        });
        Ok(())
    }

    /// RFC 6062 §5.4, once the request is authenticated as `username`: the connection it
    /// came on becomes the data connection of a pending peer connection of that user's.
    pub(super) fn handle_connection_bind(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        username: &str,
        reply: &Reply,
    ) {
        let data = reply.to;
        match self.bindable(now, message, username, &data) {
            Ok(connection) => {
                let Some(allocation) = self.peer_connections.get(connection).map(|c| c.owner)
                else {
                    debug_assert!(false, "a bindable connection exists");
                    return;
                };
                self.peer_connections
                    .set_state(connection, ConnectionState::Bound { data });
                self.stats.tcp.bound += 1;
                // The response first: the I/O layer sends it before any relayed byte.
                self.send_success(reply, |_| {});
                self.outputs.push_back(Output::BridgePeer {
                    connection,
                    client: data,
                    pace: RelayPace {
                        allocation,
                        bytes_per_second: self.bandwidth_per_allocation,
                    },
                });
            }
            Err(error) => self.send_error(reply, error, |_| {}),
        }
    }

    /// The pending peer connection a ConnectionBind names, if it may be bound to `data`:
    /// over TCP or TLS, on a connection that is not a control or data connection already,
    /// naming a connection that waits for its bind and belongs to a live allocation of the
    /// same user. Anything else is 400, as for an unknown id (RFC 6062 §5.4), so a client
    /// learns nothing of other users' connections.
    fn bindable(
        &self,
        now: Instant,
        message: &Message<'_>,
        username: &str,
        data: &FiveTuple,
    ) -> Result<ConnectionId, ErrorCode> {
        let fresh_stream = data.transport.is_stream()
            && !self.allocations.contains(data)
            && self.peer_connections.by_data(data).is_none();
        let connection = message
            .connection_id()
            .map(ConnectionId)
            .filter(|_| fresh_stream)
            .ok_or(ErrorCode::BAD_REQUEST)?;
        let pending = self.peer_connections.get(connection).filter(|c| {
            matches!(c.state, ConnectionState::Pending { .. })
                && self
                    .allocations
                    .get(&c.owner)
                    .is_some_and(|a| a.is_active(now) && a.username == username)
        });
        pending.map(|_| connection).ok_or(ErrorCode::BAD_REQUEST)
    }

    /// Closes peer connections whose deadline passed: a Connect that got no connection
    /// (447) and connections never bound.
    pub(super) fn expire_peer_connections(&mut self, now: Instant) {
        while let Some(connection) = self.peer_connections.pop_due(now) {
            let Some(expired) = self.peer_connections.remove(connection) else {
                continue;
            };
            self.outputs.push_back(Output::ClosePeer { connection });
            match expired.state {
                ConnectionState::Connecting { reply, .. } => {
                    self.stats.tcp.failed += 1;
                    self.send_error(&reply, ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE, |_| {});
                }
                ConnectionState::Pending { .. } => {
                    self.stats.tcp.expired += 1;
                    tracing::debug!(
                        client = %expired.owner.client,
                        %connection,
                        "peer connection closed: not bound within 30 s"
                    );
                }
                ConnectionState::Bound { .. } => {
                    debug_assert!(false, "a bound connection has no deadline");
                }
            }
        }
    }

    /// Closes every peer connection of the allocation of `owner`, which has ended.
    pub(super) fn close_peer_connections_of(&mut self, owner: &FiveTuple) {
        for (connection, _) in self.peer_connections.remove_owner(owner) {
            self.outputs.push_back(Output::ClosePeer { connection });
        }
    }

    /// A stream connection closed: if it was a data connection, its peer connection ends
    /// with it (RFC 6062 §5.5).
    pub(super) fn data_connection_closed(&mut self, data: &FiveTuple) {
        if let Some(connection) = self.peer_connections.by_data(data) {
            self.peer_connections.remove(connection);
            self.outputs.push_back(Output::ClosePeer { connection });
        }
    }

    /// Moves a connecting connection to pending until `deadline` and hands back its
    /// Connect request's reply.
    fn take_connect_reply(&mut self, connection: ConnectionId, deadline: Instant) -> Option<Reply> {
        let reply = match &self.peer_connections.get(connection)?.state {
            ConnectionState::Connecting { reply, .. } => reply.clone(),
            _ => return None,
        };
        self.peer_connections
            .set_state(connection, ConnectionState::Pending { deadline });
        Some(reply)
    }

    /// Whether `owner` may have one more unbound peer connection, and the server one more
    /// TCP relay.
    fn has_room_for_peer_connection(&self, owner: &FiveTuple) -> bool {
        self.peer_connections.count_of(owner) < self.tcp_limits.per_allocation
            && self.peer_connections.len() < self.tcp_limits.total
    }
}

/// The order that opens relay `relay` of an allocation relaying `protocol` (`options` are for
/// UDP relays: a TCP allocation asking for DONT-FRAGMENT was refused).
pub(super) fn open_relay(
    protocol: RelayProtocol,
    relay: SocketAddr,
    options: RelayOptions,
) -> Output {
    let relay = RelayAddr(relay);
    match protocol {
        RelayProtocol::Udp => Output::BindRelay { relay, options },
        RelayProtocol::Tcp => Output::ListenRelay { relay },
    }
}
