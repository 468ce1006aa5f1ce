//! A UDP worker's socket set: its listener sockets and the relay sockets of its
//! allocations, registered with the worker's poll, and its share of the kernel fast path's
//! maps when there is one. It is the worker's [`Io`]: the core's responses leave through
//! the listener the request came to, from the address it came to, relay binds and releases
//! open and close sockets here, and fast path insertions and removals go to the maps.
//!
//! A listener on a wildcard address serves every address of the host: the server side of
//! its clients' 5-tuples is the address each client sent to (as the kernel reports it), and
//! everything sent to such a client names that address as its source.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};

use mio::net::UdpSocket;
use mio::{Interest, Poll, Token};

use super::batch::{self, OutgoingFrom};
use super::udp::{bind_relay_socket, set_dont_fragment};
use crate::net::xdp::ChannelMaps;
use crate::turn::{
    ConnectionId, FastPathEntry, FiveTuple, Io, PeerAddr, RelayAddr, RelayBind, RelayOptions,
    RelayPace, ToPeer, Traffic,
};

/// Relay sockets get tokens from here up; listeners get 0, 1, ...
const FIRST_RELAY_TOKEN: usize = 1 << 16;

/// What a poll token stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Ready {
    Listener(usize),
    Relay(SocketAddr),
    /// A relay socket closed since the event was queued, or a token of someone else's.
    Unknown,
}

pub(super) struct Sockets {
    poll: Poll,
    listeners: Vec<Listener>,
    relays: HashMap<SocketAddr, Relay>,
    /// Relay address by token index (token - FIRST_RELAY_TOKEN).
    relay_tokens: Vec<Option<SocketAddr>>,
    free_tokens: Vec<usize>,
    /// This worker's entries in the kernel fast path's maps (with `[xdp]`).
    pub fast_path: Option<ChannelMaps>,
}

pub(super) struct Listener {
    pub socket: UdpSocket,
    pub local: SocketAddr,
}

impl Listener {
    /// The server side of the 5-tuple of a datagram that came to `destination` (as
    /// [`batch::RecvBatch::destination`] reports it): on a wildcard listener the address the
    /// client sent to, else (or if the kernel did not say) the listener's own.
    pub fn server_address(&self, destination: Option<IpAddr>) -> SocketAddr {
        match destination {
            Some(ip) if self.is_wildcard() && ip.is_ipv4() == self.local.is_ipv4() => {
                SocketAddr::new(ip, self.local.port())
            }
            _ => self.local,
        }
    }

    /// Whether datagrams to `server` arrive here: its own address, or on a wildcard
    /// listener any address of its family on its port.
    fn serves(&self, server: SocketAddr) -> bool {
        self.local == server
            || (self.is_wildcard()
                && self.local.port() == server.port()
                && self.local.is_ipv4() == server.is_ipv4())
    }

    /// The source address for what is sent to a client whose 5-tuple's server side is
    /// `server`: named only on a wildcard listener, where the kernel would otherwise pick
    /// one by route; a listener on one address always sends from it.
    fn source_for(&self, server: SocketAddr) -> Option<IpAddr> {
        (self.is_wildcard() && !server.ip().is_unspecified()).then_some(server.ip())
    }

    fn is_wildcard(&self) -> bool {
        self.local.ip().is_unspecified()
    }
}

/// How to reach a client: through which listener, and from which source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Route {
    /// Index of the listener, as in [`Sockets::listeners`].
    pub listener: usize,
    /// The source to name, if the kernel should not choose it (see [`OutgoingFrom::from`]).
    pub from: Option<IpAddr>,
}

struct Relay {
    socket: UdpSocket,
    token: usize,
    /// Opened with "don't fragment" (the allocation asked for DF on everything).
    dont_fragment: bool,
}

impl Sockets {
    /// Registers `listeners` (already bound) with `poll`.
    pub fn new(
        poll: Poll,
        listeners: Vec<std::net::UdpSocket>,
        fast_path: Option<ChannelMaps>,
    ) -> io::Result<Self> {
        let mut sockets = Self {
            poll,
            listeners: Vec::with_capacity(listeners.len()),
            relays: HashMap::new(),
            relay_tokens: Vec::new(),
            free_tokens: Vec::new(),
            fast_path,
        };
        for (index, socket) in listeners.into_iter().enumerate() {
            let local = socket.local_addr()?;
            let mut socket = UdpSocket::from_std(socket);
            sockets
                .poll
                .registry()
                .register(&mut socket, Token(index), Interest::READABLE)?;
            sockets.listeners.push(Listener { socket, local });
        }
        Ok(sockets)
    }

    pub fn poll(&mut self) -> &mut Poll {
        &mut self.poll
    }

    pub fn ready(&self, token: Token) -> Ready {
        match token.0 {
            index if index < self.listeners.len() => Ready::Listener(index),
            index if index >= FIRST_RELAY_TOKEN => self
                .relay_tokens
                .get(index - FIRST_RELAY_TOKEN)
                .copied()
                .flatten()
                .map_or(Ready::Unknown, Ready::Relay),
            _ => Ready::Unknown,
        }
    }

    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    pub fn listener(&self, index: usize) -> Option<&Listener> {
        self.listeners.get(index)
    }

    /// How to reach a client whose 5-tuple's server side is `server`: the listener bound to
    /// that address if there is one, else the wildcard listener that received for it.
    pub fn route_to(&self, server: SocketAddr) -> Option<Route> {
        let listener = self
            .listeners
            .iter()
            .position(|l| l.local == server)
            .or_else(|| self.listeners.iter().position(|l| l.serves(server)))?;
        Some(Route {
            listener,
            from: self.listeners[listener].source_for(server),
        })
    }

    pub fn relay(&self, relay: SocketAddr) -> Option<&UdpSocket> {
        self.relays.get(&relay).map(|r| &r.socket)
    }

    /// Sends `payload` from the relay socket on `relay` to `peer`, with the DF bit if
    /// `dont_fragment`; false when the kernel refused it (a full socket buffer drops it, as
    /// a router would; so does a DF datagram larger than the path MTU).
    pub fn send_to_peer(&self, to_peer: &ToPeer<'_>) -> bool {
        let Some(relay) = self.relays.get(&to_peer.relay.0) else {
            return false;
        };
        let send = || {
            relay
                .socket
                .send_to(to_peer.payload, to_peer.peer.0)
                .is_ok()
        };
        if !to_peer.dont_fragment || relay.dont_fragment {
            return send();
        }
        // One datagram asks for DF on a socket without it (a Send indication with
        // DONT-FRAGMENT, which is rare): set it around this send only.
        let v6 = to_peer.relay.0.is_ipv6();
        if set_dont_fragment(&relay.socket, v6, true).is_err() {
            return false;
        }
        let sent = send();
        let _ = set_dont_fragment(&relay.socket, v6, false);
        sent
    }

    /// Gives spare map memory back after many relays closed.
    pub fn shrink(&mut self) {
        if self.relays.capacity() > 64 && self.relays.len() * 4 < self.relays.capacity() {
            self.relays.shrink_to_fit();
        }
    }

    fn open_relay(&mut self, relay: SocketAddr, options: RelayOptions) -> io::Result<()> {
        let mut socket = UdpSocket::from_std(bind_relay_socket(relay, options)?);
        let token = self.free_tokens.pop().unwrap_or(self.relay_tokens.len());
        self.poll.registry().register(
            &mut socket,
            Token(FIRST_RELAY_TOKEN + token),
            Interest::READABLE,
        )?;
        if token == self.relay_tokens.len() {
            self.relay_tokens.push(Some(relay));
        } else {
            self.relay_tokens[token] = Some(relay);
        }
        let dont_fragment = options.dont_fragment;
        self.relays.insert(
            relay,
            Relay {
                socket,
                token,
                dont_fragment,
            },
        );
        Ok(())
    }
}

impl Io for Sockets {
    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>) {
        debug_assert!(!to.transport.is_stream(), "a UDP shard answers UDP clients");
        if let Some(route) = self.route_to(to.server) {
            let response = OutgoingFrom {
                from: route.from,
                to: to.client,
                bytes: &bytes,
            };
            // A refused send is lost like any datagram; the client retransmits.
            let _ = batch::send_one_from(&self.listeners[route.listener].socket, response);
        }
    }

    fn bind_relay(&mut self, RelayAddr(relay): RelayAddr, options: RelayOptions) -> RelayBind {
        match self.open_relay(relay, options) {
            Ok(()) => RelayBind::Bound,
            Err(error) => {
                tracing::debug!(%relay, %error, "relay port unavailable");
                RelayBind::Unavailable
            }
        }
    }

    fn release_relay(&mut self, RelayAddr(relay): RelayAddr) {
        if let Some(mut entry) = self.relays.remove(&relay) {
            let _ = self.poll.registry().deregister(&mut entry.socket);
            self.relay_tokens[entry.token] = None;
            self.free_tokens.push(entry.token);
        }
    }

    // UDP clients never get a TCP allocation (RFC 6062 §5.1: the core answers 400), so a
    // UDP worker is never asked for TCP relays. Were it asked, the core's timers would
    // still answer the client (508 for the relay, 447 for a Connect).

    fn listen_relay(&mut self, relay: RelayAddr) -> RelayBind {
        debug_assert!(false, "a UDP worker has no TCP allocations ({relay})");
        RelayBind::Unavailable
    }

    fn connect_peer(&mut self, connection: ConnectionId, _: RelayAddr, _: PeerAddr) {
        debug_assert!(false, "a UDP worker has no TCP allocations ({connection})");
    }

    fn bridge_peer(&mut self, connection: ConnectionId, _: FiveTuple, _: RelayPace) {
        debug_assert!(false, "a UDP worker has no TCP allocations ({connection})");
    }

    fn close_peer(&mut self, _: ConnectionId) {}

    fn insert_fast_path(&mut self, entry: FastPathEntry) {
        if let Some(maps) = &mut self.fast_path {
            maps.insert(entry);
        }
    }

    fn remove_fast_path(&mut self, entry: FastPathEntry) -> (Traffic, Traffic) {
        match &mut self.fast_path {
            Some(maps) => maps.remove(entry),
            None => Default::default(),
        }
    }
}
