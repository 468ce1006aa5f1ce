//! The one sans-IO harness of the TURN core: an [`Io`] that records what
//! [`Server::drive`](rendez::turn::Server::drive) asks of it, in order, and answers relay
//! binds from a plan. `scenarios.rs`, `properties.rs` and `zero_alloc.rs` drive the core
//! through it, exactly as the UDP workers and the TCP/TLS shard do through their own `Io`.

#![allow(dead_code)] // each test file uses part of it

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;

use rendez::turn::{
    ConnectionId, FastPathChange, FastPathEntry, FiveTuple, Io, PeerAddr, RelayAddr, RelayBind,
    RelayOptions, RelayPace, Traffic,
};

/// One thing the core asked for, in the order it asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Transmit(FiveTuple, Vec<u8>),
    /// A relay bind and how it was answered.
    Bind(SocketAddr, RelayBind),
    Release(SocketAddr),
    /// A TCP relay's listening socket (RFC 6062), answered like a bind.
    Listen(SocketAddr, RelayBind),
    /// A connection to open from a relay to a peer; the test answers it with
    /// `handle_peer_connected`.
    Connect(ConnectionId, SocketAddr, SocketAddr),
    /// A peer connection to relay through a client's data connection.
    Bridge(ConnectionId, FiveTuple),
    ClosePeer(ConnectionId),
    /// A channel the kernel fast path may relay from now on, or no longer.
    FastPath(FastPathChange),
}

/// Records the core's outputs and answers binds: first from `script`, then by cycling
/// through `cycle`.
pub struct RecordingIo {
    log: Vec<Event>,
    script: VecDeque<RelayBind>,
    cycle: Vec<RelayBind>,
    answered: usize,
    /// Relays the core asked to open with "don't fragment", in order.
    pub dont_fragment: Vec<SocketAddr>,
    /// How fast each bridged TCP relay may go, in the order they were bridged.
    pub paces: Vec<RelayPace>,
    /// The fast path as the core's insertions and removals left it, with the traffic each
    /// entry will report when it is removed (set by the test).
    pub fast_path: BTreeMap<FastPathEntry, (Traffic, Traffic)>,
}

impl Default for RecordingIo {
    fn default() -> Self {
        Self::answering(vec![RelayBind::Bound])
    }
}

impl RecordingIo {
    /// Answers binds by cycling through `answers` (which must not be empty).
    pub fn answering(answers: Vec<RelayBind>) -> Self {
        assert!(!answers.is_empty(), "a bind needs an answer");
        Self {
            log: Vec::new(),
            script: VecDeque::new(),
            cycle: answers,
            answered: 0,
            dont_fragment: Vec::new(),
            paces: Vec::new(),
            fast_path: BTreeMap::new(),
        }
    }

    /// From now on, answer binds by cycling through `answers`.
    pub fn set_answers(&mut self, answers: Vec<RelayBind>) {
        assert!(!answers.is_empty(), "a bind needs an answer");
        self.cycle = answers;
        self.answered = 0;
    }

    /// The next `count` binds fail as if the port were taken; later ones follow the cycle.
    pub fn fail_next_binds(&mut self, count: usize) {
        self.script = std::iter::repeat_n(RelayBind::Unavailable, count).collect();
    }

    /// What the core asked for since the last call, in order.
    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.log)
    }

    /// The answer to the next bind or listen: the script first, then the cycle.
    fn next_answer(&mut self) -> RelayBind {
        self.script.pop_front().unwrap_or_else(|| {
            let answer = self.cycle[self.answered % self.cycle.len()];
            self.answered += 1;
            answer
        })
    }
}

impl Io for RecordingIo {
    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>) {
        self.log.push(Event::Transmit(to, bytes));
    }

    fn bind_relay(&mut self, RelayAddr(relay): RelayAddr, options: RelayOptions) -> RelayBind {
        if options.dont_fragment {
            self.dont_fragment.push(relay);
        }
        let answer = self.next_answer();
        self.log.push(Event::Bind(relay, answer));
        answer
    }

    fn release_relay(&mut self, RelayAddr(relay): RelayAddr) {
        self.log.push(Event::Release(relay));
    }

    fn listen_relay(&mut self, RelayAddr(relay): RelayAddr) -> RelayBind {
        let answer = self.next_answer();
        self.log.push(Event::Listen(relay, answer));
        answer
    }

    fn connect_peer(&mut self, connection: ConnectionId, relay: RelayAddr, peer: PeerAddr) {
        self.log.push(Event::Connect(connection, relay.0, peer.0));
    }

    fn bridge_peer(&mut self, connection: ConnectionId, client: FiveTuple, pace: RelayPace) {
        self.paces.push(pace);
        self.log.push(Event::Bridge(connection, client));
    }

    fn close_peer(&mut self, connection: ConnectionId) {
        self.log.push(Event::ClosePeer(connection));
    }

    fn insert_fast_path(&mut self, entry: FastPathEntry) {
        let fresh = self.fast_path.insert(entry, Default::default()).is_none();
        assert!(fresh, "{entry:?} inserted twice");
        self.log
            .push(Event::FastPath(FastPathChange::Insert(entry)));
    }

    fn remove_fast_path(&mut self, entry: FastPathEntry) -> (Traffic, Traffic) {
        let traffic = self.fast_path.remove(&entry);
        assert!(traffic.is_some(), "{entry:?} removed but never inserted");
        self.log
            .push(Event::FastPath(FastPathChange::Remove(entry)));
        traffic.unwrap_or_default()
    }
}
