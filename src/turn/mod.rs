//! The TURN protocol core (RFC 8656 over RFC 8489), sans-IO.
//!
//! [`Server`] never touches a socket, a clock or the OS RNG: the I/O layer feeds it packets
//! with the current `Instant`, asks it when to wake up, and carries out what it returns.
//!
//! - `handle_client_packet` takes a datagram (or a frame from a stream) from a client. The
//!   hot path — ChannelData and Send indications — returns where to forward the payload,
//!   borrowing it from the input; requests queue their responses.
//! - `handle_peer_packet` takes a datagram that arrived on a relay socket and returns the
//!   framed bytes (ChannelData or a Data indication) to send to the client.
//! - `poll_output` yields queued responses and requests to bind or release relay sockets;
//!   binding is answered with `handle_relay_bound`, because only the I/O layer can learn
//!   that a port is taken by another process.
//! - `poll_timeout` / `handle_timeout` expire allocations, permissions and channels.
//! - TCP allocations (RFC 6062) add peer connections: see `tcp_relay` for how their work
//!   is split between the core and the I/O layer.
//! - [`Server::drive`] carries the outputs out through an [`Io`]: the one loop every I/O
//!   layer, test and benchmark uses (see [`drive`](self::drive) for the contract).

mod allocation;
mod alternates;
mod auth;
mod binding;
mod challenge_limit;
mod deliver;
pub mod drive;
mod fast_path;
mod meter;
pub use meter::BURST as BANDWIDTH_BURST;
mod nonce;
mod peer_connections;
mod policy;
mod ports;
mod quota;
mod requests;
mod reservation;
mod server;
mod stats;
mod table;
mod tcp_relay;

pub use alternates::Alternate;
pub use auth::{
    quota_name, rest_expiry, rest_password, Credentials, Rejection, UserSecret,
    OFFERED_PASSWORD_ALGORITHMS,
};
pub use binding::NatDiscovery;
pub use challenge_limit::ChallengeLimiter;
pub use deliver::{PEER_HEADROOM, PEER_TAILROOM};
pub use drive::{Io, RelayBind};
pub use fast_path::{FastPathChange, FastPathEntry};
pub use nonce::{nonce_key_from_secret, NONCE_COOKIE};
pub use peer_connections::{ConnectionCounts, ConnectionId};
pub use policy::PeerPolicy;
pub use ports::PortClaims;
pub use quota::{QuotaExceeded, QuotaKey, QuotaLimits, Quotas};
pub use requests::DefaultFamily;
pub use reservation::{ReservationToken, Reservations, RESERVATION_LIFETIME};
pub use server::{Server, ServerConfig};
pub use stats::{
    DropReason, Gauges, Outcomes, Relayed, RequestMethod, Stats, TcpRelayStats, Traffic,
};
pub use tcp_relay::{TcpRelayLimits, CONNECTION_BIND_TIMEOUT, CONNECT_TIMEOUT};

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// Every channel number a ChannelData message can carry: the top two bits 01, so
/// 0x4000–0x7FFF (RFC 5766 §11). Which of them a client may bind is [`ChannelNumbers`].
pub const CHANNEL_NUMBERS: RangeInclusive<u16> = 0x4000..=0x7FFF;

/// Which channel numbers ChannelBind accepts (config `channel-numbers`).
///
/// RFC 5766 allowed 0x4000–0x7FFF; RFC 8656 §12 narrowed it to 0x4000–0x4FFF, keeping
/// 0x5000–0x7FFF apart for DTLS-SRTP multiplexing (RFC 7983) on the client's side. Clients
/// written to RFC 5766 (coturn's tools, SIP stacks, older libraries) still pick numbers from
/// the whole old range, and coturn and pion accept them, so rendez does too by default: a
/// deliberate compatibility choice. A number outside the setting gets 400; ChannelData on a
/// number that cannot be bound is dropped like any on an unbound channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ChannelNumbers {
    /// 0x4000–0x7FFF (RFC 5766 §11).
    #[default]
    Rfc5766,
    /// 0x4000–0x4FFF only (RFC 8656 §12).
    Rfc8656,
}

impl ChannelNumbers {
    /// The numbers a ChannelBind may name.
    pub fn range(self) -> RangeInclusive<u16> {
        match self {
            ChannelNumbers::Rfc5766 => CHANNEL_NUMBERS,
            ChannelNumbers::Rfc8656 => 0x4000..=0x4FFF,
        }
    }
}

/// The transport a client reached us over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// A label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// Stream transports pad ChannelData to a multiple of 4 bytes (RFC 8656 §12.5).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

/// The 5-tuple that identifies a client and owns at most one allocation (RFC 8656 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    pub transport: Transport,
    /// The client's address as we see it (its server-reflexive address).
    pub client: SocketAddr,
    /// The address the client sent to: our listening address (for a wildcard UDP listener,
    /// the host address the datagram came to, as the kernel reports it), or for a client
    /// behind a load balancer the balancer's, as its PROXY header says (so the tuple is the
    /// connection the client made, unique like any other).
    pub server: SocketAddr,
}

/// A relayed transport address as bound on this host (what relay sockets bind to, not what
/// clients are told): the name of a relay socket between the core and the I/O layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayAddr(pub SocketAddr);

/// A peer's transport address, as a relay socket sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr(pub SocketAddr);

impl std::fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A relay address pair: where relay sockets are bound, and what clients are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayAddress {
    pub bind: std::net::IpAddr,
    pub public: std::net::IpAddr,
}

/// Payload to send from a relay socket to a peer (the hot path, client → peer).
#[derive(Debug, PartialEq, Eq)]
pub struct ToPeer<'a> {
    pub relay: RelayAddr,
    pub peer: PeerAddr,
    pub payload: &'a [u8],
    /// This datagram must leave with the DF bit set: a Send indication with DONT-FRAGMENT
    /// (RFC 8656 §11.2). (An allocation that asked for DF in its Allocate has a relay
    /// socket that sets it on everything; see [`RelayOptions`].)
    pub dont_fragment: bool,
}

/// How to open a relay socket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayOptions {
    /// Every datagram leaves with the DF bit set and is never fragmented by this host
    /// (`IP_PMTUDISC_DO`, `IPV6_DONTFRAG`): the Allocate carried DONT-FRAGMENT (RFC 8656
    /// §7.2, §14.8). One larger than the path MTU is dropped, not sent in pieces.
    pub dont_fragment: bool,
}

/// Framed bytes to send to a client (the hot path, peer → client).
#[derive(Debug, PartialEq, Eq)]
pub struct ToClient<'a> {
    pub client: FiveTuple,
    pub bytes: &'a [u8],
}

/// Work for the I/O layer, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `bytes` to the client on `to`, from `to.server`: the address the request came
    /// to, or for a Binding with CHANGE-REQUEST another of this host's (RFC 5780).
    Transmit { to: FiveTuple, bytes: Vec<u8> },
    /// Bind a UDP socket on `relay`, then call [`Server::handle_relay_bound`].
    BindRelay {
        relay: RelayAddr,
        options: RelayOptions,
    },
    /// Close the relay socket (or listening socket) on `relay`.
    ReleaseRelay { relay: RelayAddr },
    /// Listen for TCP connections from peers on `relay` (a TCP allocation, RFC 6062), then
    /// call [`Server::handle_relay_bound`]; report each connection with
    /// [`Server::handle_incoming_peer`].
    ListenRelay { relay: RelayAddr },
    /// Open a TCP connection from `relay` to `peer`, then call
    /// [`Server::handle_peer_connected`].
    ConnectPeer {
        connection: ConnectionId,
        relay: RelayAddr,
        peer: PeerAddr,
    },
    /// Relay raw bytes both ways between peer connection `connection` and the client's
    /// data connection `client`, once the response queued for `client` just before this
    /// is sent; when either side ends, call [`Server::handle_connection_closed`] for
    /// `client`.
    BridgePeer {
        connection: ConnectionId,
        client: FiveTuple,
        pace: RelayPace,
    },
    /// Close peer connection `connection`, whatever it is doing (connecting, waiting,
    /// relaying); an unknown one is ignored.
    ClosePeer { connection: ConnectionId },
    /// A bound channel became eligible for the kernel fast path, or stopped being so
    /// (only with [`ServerConfig::fast_path`]; see [`FastPathChange`]).
    FastPath(FastPathChange),
}

/// How fast a TCP relay of an allocation may go: `bandwidth-per-allocation` (0: no limit),
/// shared by every relay of `allocation` and applied each way, as for UDP relays. The bytes
/// are not dropped but paced: the relay reads no faster than the rate allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayPace {
    pub allocation: FiveTuple,
    pub bytes_per_second: u64,
}
