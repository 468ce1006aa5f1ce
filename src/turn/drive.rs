//! The driving contract between the core and an I/O layer, and the one function that
//! carries out the core's outputs.
//!
//! Every I/O layer (the UDP workers, the TCP/TLS shard, the test harness, the benchmarks
//! and the fuzz targets) runs the same loop:
//!
//! 1. Feed one input: [`Server::handle_client_packet`] (relay the returned payload to its
//!    peer at once), [`Server::handle_peer_packet_in_place`] (send the framed bytes to the
//!    client at once), [`Server::handle_connection_closed`], the TCP relay inputs
//!    ([`Server::handle_peer_connected`], [`Server::handle_incoming_peer`]), or
//!    [`Server::handle_timeout`] when [`Server::poll_timeout`] has passed.
//! 2. Call [`Server::drive`] with an [`Io`]: it hands every queued output to the I/O layer
//!    in the order the core produced it, and feeds each relay bind's result straight back,
//!    so no I/O layer can forget to answer one.
//! 3. Sleep until the next input or [`Server::poll_timeout`], whichever comes first.
//!
//! Only step 1 mutates the core's state from outside; outputs never re-enter it except
//! through the bind answers of step 2.

use std::time::Instant;

use super::stats::Traffic;
use super::{
    ConnectionId, FastPathChange, FastPathEntry, FiveTuple, Output, PeerAddr, RelayAddr,
    RelayOptions, RelayPace, Server,
};

/// What the core needs an I/O layer to do.
pub trait Io {
    /// Sends `bytes` to the client on `to` (a response, never relayed data).
    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>);
    /// Binds a UDP relay socket on `relay` for peers' datagrams, with `options`.
    fn bind_relay(&mut self, relay: RelayAddr, options: RelayOptions) -> RelayBind;
    /// Closes the relay socket (or TCP listening socket) on `relay`; a relay that is not
    /// open is ignored.
    fn release_relay(&mut self, relay: RelayAddr);

    // RFC 6062 TCP relays. Only stream clients have TCP allocations, so an I/O layer that
    // serves only UDP clients is never asked for these.

    /// Listens for peers' TCP connections on `relay`.
    fn listen_relay(&mut self, relay: RelayAddr) -> RelayBind;
    /// Starts connecting from `relay` to `peer`; the outcome goes to
    /// [`Server::handle_peer_connected`] later.
    fn connect_peer(&mut self, connection: ConnectionId, relay: RelayAddr, peer: PeerAddr);
    /// Relays bytes between peer connection `connection` and data connection `client`
    /// (see [`Output::BridgePeer`]).
    fn bridge_peer(&mut self, connection: ConnectionId, client: FiveTuple, pace: RelayPace);
    /// Closes peer connection `connection`; an unknown one is ignored.
    fn close_peer(&mut self, connection: ConnectionId);

    // The kernel fast path. The core asks only when its config says a fast path exists
    // (`ServerConfig::fast_path`), so an I/O layer without one keeps these defaults.

    /// Lets the fast path relay `entry` (it may refuse, e.g. when its maps are full: the
    /// channel then simply stays on the sockets path).
    fn insert_fast_path(&mut self, entry: FastPathEntry) {
        let _ = entry;
    }
    /// Stops the fast path relaying `entry` (unknown: ignored) and returns what it relayed
    /// since last reported: (client → peer, peer → client).
    fn remove_fast_path(&mut self, entry: FastPathEntry) -> (Traffic, Traffic) {
        let _ = entry;
        (Traffic::default(), Traffic::default())
    }
}

/// The outcome of [`Io::bind_relay`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayBind {
    /// The socket is open and reading.
    Bound,
    /// The port is taken (by another program): the core tries another.
    Unavailable,
    /// The I/O layer answers later with [`Server::handle_relay_bound`] (an I/O layer that
    /// binds off-thread; the tests use it to hold a bind back).
    Deferred,
}

impl Server {
    /// Carries out every queued output through `io`, in order (step 2 of the loop above).
    pub fn drive(&mut self, now: Instant, io: &mut impl Io) {
        while let Some(output) = self.poll_output() {
            match output {
                Output::Transmit { to, bytes } => io.transmit(to, bytes),
                Output::BindRelay { relay, options } => match io.bind_relay(relay, options) {
                    RelayBind::Bound => self.handle_relay_bound(now, relay, true),
                    RelayBind::Unavailable => self.handle_relay_bound(now, relay, false),
                    RelayBind::Deferred => {}
                },
                Output::ReleaseRelay { relay } => io.release_relay(relay),
                Output::ListenRelay { relay } => match io.listen_relay(relay) {
                    RelayBind::Bound => self.handle_relay_bound(now, relay, true),
                    RelayBind::Unavailable => self.handle_relay_bound(now, relay, false),
                    RelayBind::Deferred => {}
                },
                Output::ConnectPeer {
                    connection,
                    relay,
                    peer,
                } => io.connect_peer(connection, relay, peer),
                Output::BridgePeer {
                    connection,
                    client,
                    pace,
                } => io.bridge_peer(connection, client, pace),
                Output::ClosePeer { connection } => io.close_peer(connection),
                Output::FastPath(FastPathChange::Insert(entry)) => io.insert_fast_path(entry),
                Output::FastPath(FastPathChange::Remove(entry)) => {
                    let (to_peer, to_client) = io.remove_fast_path(entry);
                    self.count_fast_path(now, entry, to_peer, to_client);
                }
            }
        }
    }
}
