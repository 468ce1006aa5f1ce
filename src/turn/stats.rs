//! What a shard counts: requests, refusals, relayed traffic and drops, each by a small fixed
//! set of reasons. Never by user, client address or anything else a client chooses, so the
//! counters (and the metrics made of them) stay the same size whatever arrives.

use super::peer_connections::ConnectionCounts;
use super::quota::QuotaExceeded;
use super::{Rejection, Transport};
use crate::stun::Method;

/// Packets and bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

impl Traffic {
    pub fn count(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }

    pub fn add(&mut self, other: &Traffic) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// How requests of one method were answered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub success: u64,
    pub error: u64,
}

/// The request methods counted apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestMethod {
    Binding,
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
    Connect,
    ConnectionBind,
    Other,
}

impl RequestMethod {
    pub const ALL: [RequestMethod; 8] = [
        Self::Binding,
        Self::Allocate,
        Self::Refresh,
        Self::CreatePermission,
        Self::ChannelBind,
        Self::Connect,
        Self::ConnectionBind,
        Self::Other,
    ];

    pub fn of(method: Method) -> Self {
        match method {
            Method::BINDING => Self::Binding,
            Method::ALLOCATE => Self::Allocate,
            Method::REFRESH => Self::Refresh,
            Method::CREATE_PERMISSION => Self::CreatePermission,
            Method::CHANNEL_BIND => Self::ChannelBind,
            Method::CONNECT => Self::Connect,
            Method::CONNECTION_BIND => Self::ConnectionBind,
            _ => Self::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Binding => "binding",
            Self::Allocate => "allocate",
            Self::Refresh => "refresh",
            Self::CreatePermission => "create_permission",
            Self::ChannelBind => "channel_bind",
            Self::Connect => "connect",
            Self::ConnectionBind => "connection_bind",
            Self::Other => "other",
        }
    }
}

/// Why a packet was dropped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Neither STUN nor ChannelData, or failed to parse.
    Malformed,
    /// From a source that cannot be a client (port 0).
    InvalidSource,
    /// Data for an allocation that does not exist or has expired.
    NoAllocation,
    /// Data to or from a peer without a permission.
    NoPermission,
    /// ChannelData on a channel that is not bound.
    UnboundChannel,
    /// Over the allocation's `bandwidth-per-allocation`.
    OverBandwidth,
    /// An unauthenticated error reply (400, 401, 438) over `unauthorized-per-ip`.
    UnauthorizedRate,
    /// A Binding over `binding-per-ip`.
    BindingRate,
    /// An indication with a comprehension-required attribute this server does not know
    /// (RFC 8489 §6.3.2: discarded).
    UnknownAttribute,
    /// A Send indication to a TCP allocation, which relays connections, not datagrams
    /// (RFC 6062).
    TcpAllocation,
}

impl DropReason {
    pub const ALL: [DropReason; 10] = [
        Self::Malformed,
        Self::InvalidSource,
        Self::NoAllocation,
        Self::NoPermission,
        Self::UnboundChannel,
        Self::OverBandwidth,
        Self::UnauthorizedRate,
        Self::BindingRate,
        Self::UnknownAttribute,
        Self::TcpAllocation,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::InvalidSource => "invalid_source",
            Self::NoAllocation => "no_allocation",
            Self::NoPermission => "no_permission",
            Self::UnboundChannel => "unbound_channel",
            Self::OverBandwidth => "over_bandwidth",
            Self::UnauthorizedRate => "unauthorized_rate",
            Self::BindingRate => "binding_rate",
            Self::UnknownAttribute => "unknown_attribute",
            Self::TcpAllocation => "tcp_allocation",
        }
    }
}

/// Relayed traffic of one transport, each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relayed {
    pub to_peers: Traffic,
    pub to_clients: Traffic,
}

/// What exists at the moment the counters were read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Allocations, including those waiting for their relay socket.
    pub allocations: u64,
    pub permissions: u64,
    pub channels: u64,
    pub relay_ports_in_use: u64,
    pub relay_ports_free: u64,
    /// Peer connections of TCP allocations (RFC 6062), by state.
    pub tcp_connections: ConnectionCounts,
}

/// What happened to the peer connections of TCP allocations (RFC 6062).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpRelayStats {
    /// Connect requests that reached their peer.
    pub connected: u64,
    /// Connect requests answered 447: the peer refused, was unreachable or too slow.
    pub failed: u64,
    /// Peers' connections announced with a ConnectionAttempt.
    pub accepted: u64,
    /// Peers' connections closed at once: no permission, no TCP allocation, or a limit.
    pub refused: u64,
    /// Peer connections bound to a data connection (a TCP relay began).
    pub bound: u64,
    /// Peer connections closed because no ConnectionBind came in time.
    pub expired: u64,
}

impl TcpRelayStats {
    /// Each counter with its name (a fixed metric label).
    pub fn named(&self) -> [(&'static str, u64); 6] {
        [
            ("connected", self.connected),
            ("failed", self.failed),
            ("accepted", self.accepted),
            ("refused", self.refused),
            ("bound", self.bound),
            ("expired", self.expired),
        ]
    }

    fn add(&mut self, other: &TcpRelayStats) {
        self.connected += other.connected;
        self.failed += other.failed;
        self.accepted += other.accepted;
        self.refused += other.refused;
        self.bound += other.bound;
        self.expired += other.expired;
    }
}

/// A shard's counters. Add shards together with [`Stats::add`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// By [`RequestMethod`].
    pub requests: [Outcomes; RequestMethod::ALL.len()],
    /// By [`Rejection`]: requests refused by authentication (a first request without
    /// credentials is a `challenge`).
    pub auth_failures: [u64; Rejection::ALL.len()],
    /// By [`QuotaExceeded`].
    pub quota_refusals: [u64; QuotaExceeded::ALL.len()],
    /// Allocate requests refused because the server is draining.
    pub refused_draining: u64,
    /// Allocate requests sent to an alternate server (300) because this one is full:
    /// `allocations-total` reached or its relay ports all in use.
    pub redirected_full: u64,
    pub allocations_created: u64,
    pub allocations_ended: u64,
    /// By [`Transport`].
    pub relayed: [Relayed; Transport::ALL.len()],
    /// Of `relayed` (UDP), what the kernel fast path carried (reported back by the I/O
    /// layer, see [`Server::count_fast_path`](super::Server::count_fast_path)).
    pub fast_path: Relayed,
    /// By [`DropReason`].
    pub dropped: [u64; DropReason::ALL.len()],
    /// TCP relays (RFC 6062).
    pub tcp: TcpRelayStats,
}

impl Stats {
    pub fn request(&mut self, method: RequestMethod) -> &mut Outcomes {
        &mut self.requests[method as usize]
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    pub fn drop(&mut self, reason: DropReason) {
        self.dropped[reason as usize] += 1;
    }

    pub fn auth_failures(&self, rejection: Rejection) -> u64 {
        self.auth_failures[rejection as usize]
    }

    pub fn quota_refusals(&self, quota: QuotaExceeded) -> u64 {
        self.quota_refusals[quota as usize]
    }

    /// Packets relayed peer → client over every transport.
    pub fn relayed_to_clients(&self) -> u64 {
        self.relayed.iter().map(|r| r.to_clients.packets).sum()
    }

    /// Packets relayed client → peer over every transport.
    pub fn relayed_to_peers(&self) -> u64 {
        self.relayed.iter().map(|r| r.to_peers.packets).sum()
    }

    /// Adds another shard's counters to these.
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            requests,
            auth_failures,
            quota_refusals,
            refused_draining,
            redirected_full,
            allocations_created,
            allocations_ended,
            relayed,
            fast_path,
            dropped,
            tcp,
        } = other;
        for (mine, theirs) in self.requests.iter_mut().zip(requests) {
            mine.success += theirs.success;
            mine.error += theirs.error;
        }
        add_all(&mut self.auth_failures, auth_failures);
        add_all(&mut self.quota_refusals, quota_refusals);
        add_all(&mut self.dropped, dropped);
        for (mine, theirs) in self.relayed.iter_mut().zip(relayed) {
            mine.to_peers.add(&theirs.to_peers);
            mine.to_clients.add(&theirs.to_clients);
        }
        self.fast_path.to_peers.add(&fast_path.to_peers);
        self.fast_path.to_clients.add(&fast_path.to_clients);
        self.refused_draining += refused_draining;
        self.redirected_full += redirected_full;
        self.allocations_created += allocations_created;
        self.allocations_ended += allocations_ended;
        self.tcp.add(tcp);
    }
}

impl Gauges {
    /// Adds another shard's gauges to these.
    pub fn add(&mut self, other: &Gauges) {
        self.allocations += other.allocations;
        self.permissions += other.permissions;
        self.channels += other.channels;
        self.relay_ports_in_use += other.relay_ports_in_use;
        self.relay_ports_free += other.relay_ports_free;
        self.tcp_connections.connecting += other.tcp_connections.connecting;
        self.tcp_connections.pending += other.tcp_connections.pending;
        self.tcp_connections.bound += other.tcp_connections.bound;
    }
}

fn add_all(mine: &mut [u64], theirs: &[u64]) {
    for (m, t) in mine.iter_mut().zip(theirs) {
        *m += t;
    }
}
