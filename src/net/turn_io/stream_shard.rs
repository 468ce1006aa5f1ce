//! The TCP/TLS shard: one task owns the `turn::Server` of every stream client and the
//! relay sockets of their allocations.
//!
//! Connections (see [`super::stream`]) and relay readers never touch the core: they send
//! their input over one bounded channel, and the shard runs it in arrival order, carries
//! out the core's outputs through [`Server::drive`], and queues bytes for each connection.
//! Nothing is locked; a connection whose queue is full loses that message (a slow reader
//! must not hold up the relay); a full input channel slows the readers down, which TCP's
//! flow control and the relay sockets' buffers absorb.
//!
//! TCP allocations (RFC 6062) add listening sockets, peer connections and the hand-over of
//! a data connection to its peer: see [`super::tcp_relay`].

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use super::tcp_relay::{self, AbortOnDrop, Bridge, Pace, PeerSide, TcpRelayCounters};
use super::udp::{bind_relay_socket, set_dont_fragment};
use super::{Control, IoDrops, PublishedFigures};
use crate::stun::{stream_frame, Frame};
use crate::turn::{
    ConnectionId, FiveTuple, Io, PeerAddr, RelayAddr, RelayBind, RelayOptions, RelayPace, Server,
    ToPeer, PEER_HEADROOM, PEER_TAILROOM,
};

/// Inputs waiting for the shard before senders wait.
const INPUT_QUEUE: usize = 1024;
/// Inputs the shard takes per wake-up.
const INPUT_BATCH: usize = 64;
/// The longest the shard sleeps without re-anchoring the core's wall clock.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often the gauges (a walk over the allocations) are published.
const GAUGES_EVERY: Duration = Duration::from_millis(100);
/// Largest peer datagram relayed to a stream client; longer ones (rare: WebRTC keeps packets
/// under the path MTU) are dropped rather than truncated.
const MAX_PEER_DATAGRAM: usize = 4096;
/// Datagrams a relay reader hands over at once: what waits on the socket, up to this.
const PEER_BATCH: usize = 32;

/// Something for the shard to do, from a connection or a relay reader.
pub(crate) enum Input {
    /// A connection opened; the shard queues its outgoing bytes on `outbound`, and answers
    /// `accepted` with false when another open connection has the same 5-tuple (only a
    /// PROXY header can make that happen: a balancer naming one client twice).
    Opened {
        tuple: FiveTuple,
        outbound: mpsc::Sender<Bytes>,
        accepted: oneshot::Sender<bool>,
    },
    /// One or more complete messages (STUN or ChannelData) from a connection, back to back.
    Messages { tuple: FiveTuple, bytes: Bytes },
    /// The connection closed: its allocation ends with it.
    Closed { tuple: FiveTuple },
    /// Whether the connection holds an allocation (an idle connection without one closes).
    HasAllocation {
        tuple: FiveTuple,
        reply: oneshot::Sender<bool>,
    },
    /// Peers' datagrams that were waiting on one relay socket, in arrival order.
    FromPeers {
        relay: RelayAddr,
        datagrams: Vec<PeerDatagram>,
    },
    /// An order from the server (reload, drain).
    Control(Control),
    /// Messages from a connection that end with a ConnectionBind request (RFC 6062): if the
    /// core binds it, `bridge` gets the peer's connection and the connection becomes a
    /// relay; if `bridge` is dropped, it goes on as a STUN connection.
    ConnectionBind {
        tuple: FiveTuple,
        bytes: Bytes,
        bridge: oneshot::Sender<Bridge>,
    },
    /// A peer connected to a TCP allocation's relayed address.
    PeerArrived {
        relay: RelayAddr,
        peer: PeerAddr,
        stream: TcpStream,
    },
    /// A connection to a peer for a Connect request opened (`Some`) or failed.
    PeerConnected {
        connection: ConnectionId,
        stream: Option<TcpStream>,
    },
}

/// A peer's datagram, `buffer[PEER_HEADROOM..][..len]`, with room around it to frame it in
/// place for the client.
pub(crate) struct PeerDatagram {
    peer: PeerAddr,
    buffer: Vec<u8>,
    len: usize,
}

/// The rest of the server's side of the shard.
#[derive(Clone)]
pub(crate) struct ShardHandle {
    input: mpsc::Sender<Input>,
    figures: PublishedFigures,
}

impl ShardHandle {
    /// Hands `input` to the shard, waiting while its queue is full. False once it stopped.
    pub async fn send(&self, input: Input) -> bool {
        self.input.send(input).await.is_ok()
    }

    /// Whether the shard task is still taking input.
    pub fn is_running(&self) -> bool {
        !self.input.is_closed()
    }

    /// Where the shard publishes its counters (after every input) and gauges (every
    /// 100 ms).
    pub fn published(&self) -> PublishedFigures {
        self.figures.clone()
    }
}

/// Starts the shard task; it ends when `stopped` changes.
pub(crate) fn spawn(
    server: Server,
    tracker: &TaskTracker,
    stopped: watch::Receiver<bool>,
) -> ShardHandle {
    let (input, inbox) = mpsc::channel(INPUT_QUEUE);
    let figures = PublishedFigures::default();
    figures.publish(&server, IoDrops::default(), true);
    let shard = Shard {
        server,
        io: StreamIo {
            clients: HashMap::new(),
            relays: HashMap::new(),
            listeners: HashMap::new(),
            peers: HashMap::new(),
            binding: HashMap::new(),
            tcp_relayed: Arc::default(),
            paces: HashMap::new(),
            pending: Vec::new(),
            input: input.downgrade(),
            drops: IoDrops::default(),
            tracker: tracker.clone(),
        },
        figures: figures.clone(),
    };
    tracker.spawn(shard.run(inbox, stopped));
    ShardHandle { input, figures }
}

struct Shard {
    server: Server,
    io: StreamIo,
    figures: PublishedFigures,
}

impl Shard {
    async fn run(mut self, mut inbox: mpsc::Receiver<Input>, mut stopped: watch::Receiver<bool>) {
        let mut batch = Vec::with_capacity(INPUT_BATCH);
        let mut gauges_at = Instant::now();
        // Whether inputs were handled since the gauges were last published.
        let mut gauges_behind = false;
        loop {
            let now = Instant::now();
            let mut wake = self
                .server
                .poll_timeout()
                .map_or(now + MAX_SLEEP, |at| at.min(now + MAX_SLEEP));
            if gauges_behind {
                // An idle shard still publishes what its last inputs changed, in time.
                wake = wake.min(gauges_at + GAUGES_EVERY);
            }
            tokio::select! {
                received = inbox.recv_many(&mut batch, INPUT_BATCH) => {
                    if received == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for input in batch.drain(..) {
                        self.handle(now, input);
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.server.set_wall_clock(now, crate::net::unix_now());
                    self.server.handle_timeout(now);
                    self.server.drive(now, &mut self.io);
                }
                _ = stopped.changed() => break,
            }
            let refresh_gauges = gauges_at.elapsed() >= GAUGES_EVERY;
            if refresh_gauges {
                gauges_at = Instant::now();
            }
            gauges_behind = !refresh_gauges;
            self.figures
                .publish(&self.server, self.io.drops, refresh_gauges);
            self.figures.publish_tcp_relayed(self.io.tcp_relayed.read());
            // After the stats: whatever a client sees has been counted.
            self.io.flush();
        }
    }

    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Opened {
                tuple,
                outbound,
                accepted,
            } => {
                let fresh = !self.io.clients.contains_key(&tuple);
                if fresh {
                    self.io.clients.insert(tuple, outbound);
                }
                let _ = accepted.send(fresh);
            }
            Input::Messages { tuple, bytes } => self.handle_messages(now, tuple, &bytes),
            Input::ConnectionBind {
                tuple,
                bytes,
                bridge,
            } => {
                // Answered (by `bridge_peer`) while the core's outputs are carried out;
                // a bind the core refused drops the sender below.
                self.io.binding.insert(tuple, bridge);
                self.handle_messages(now, tuple, &bytes);
                self.server.drive(now, &mut self.io);
                self.io.binding.remove(&tuple);
            }
            Input::PeerArrived {
                relay,
                peer,
                stream,
            } => {
                if let Some(id) = self.server.handle_incoming_peer(now, relay, peer) {
                    self.io.peers.insert(id, PeerSide::Waiting(stream));
                }
            }
            Input::PeerConnected { connection, stream } => {
                let open = stream.is_some();
                match stream {
                    Some(stream) => self.io.peers.insert(connection, PeerSide::Waiting(stream)),
                    None => self.io.peers.remove(&connection),
                };
                self.server.handle_peer_connected(now, connection, open);
            }
            Input::Closed { tuple } => {
                self.io.clients.remove(&tuple);
                self.server.handle_connection_closed(now, tuple);
            }
            Input::HasAllocation { tuple, reply } => {
                let _ = reply.send(self.server.has_allocation(&tuple));
            }
            Input::Control(order) => order.apply(&mut self.server),
            Input::FromPeers { relay, datagrams } => {
                for PeerDatagram {
                    peer,
                    mut buffer,
                    len,
                } in datagrams
                {
                    let framed = self.server.handle_peer_packet_in_place(
                        now,
                        relay,
                        peer,
                        &mut buffer,
                        PEER_HEADROOM,
                        len,
                    );
                    if let Some((client, range)) = framed {
                        self.io
                            .pending
                            .push((client, Bytes::from(buffer).slice(range)));
                    }
                }
            }
        }
        self.server.drive(now, &mut self.io);
    }

    /// Hands every message in `bytes` to the core, relaying what it returns at once.
    fn handle_messages(&mut self, now: Instant, tuple: FiveTuple, bytes: &[u8]) {
        let mut rest = bytes;
        while let Frame::Complete(len) = stream_frame(rest) {
            let (message, next) = rest.split_at(len);
            if let Some(to_peer) = self.server.handle_client_packet(now, tuple, message) {
                self.io.send_to_peer(&to_peer);
            }
            rest = next;
        }
        debug_assert!(rest.is_empty(), "connections send whole messages");
    }
}

/// The shard's [`Io`]: connections' queues and relay sockets.
struct StreamIo {
    clients: HashMap<FiveTuple, mpsc::Sender<Bytes>>,
    relays: HashMap<RelayAddr, RelaySocket>,
    /// The accept loops of TCP allocations' listening sockets.
    listeners: HashMap<RelayAddr, AbortOnDrop>,
    /// Peer connections of TCP allocations, by the id the core gave them.
    peers: HashMap<ConnectionId, PeerSide>,
    /// Connections whose ConnectionBind the core is handling now, waiting for their peer.
    binding: HashMap<FiveTuple, oneshot::Sender<Bridge>>,
    tcp_relayed: Arc<TcpRelayCounters>,
    /// The bandwidth bucket of each allocation with TCP relays, while any of them relays.
    paces: HashMap<FiveTuple, Weak<Pace>>,
    /// Bytes for clients, queued when the current inputs are done (see [`Shard::run`]).
    pending: Vec<(FiveTuple, Bytes)>,
    /// For new relay readers; weak, so the shard's own copy never keeps its inbox open.
    input: mpsc::WeakSender<Input>,
    drops: IoDrops,
    tracker: TaskTracker,
}

impl StreamIo {
    /// The bucket every TCP relay of `pace.allocation` shares (a new one when none relays).
    fn pace_of(&mut self, pace: RelayPace) -> Arc<Pace> {
        self.paces.retain(|_, shared| shared.strong_count() > 0);
        if let Some(shared) = self.paces.get(&pace.allocation).and_then(Weak::upgrade) {
            return shared;
        }
        let shared = Arc::new(Pace::new(pace.bytes_per_second));
        self.paces.insert(pace.allocation, Arc::downgrade(&shared));
        shared
    }

    fn send_to_peer(&mut self, to_peer: &ToPeer<'_>) {
        let Some(relay) = self.relays.get(&to_peer.relay) else {
            return;
        };
        let peer = to_peer.peer;
        let send = || relay.socket.try_send_to(to_peer.payload, peer.0);
        // A datagram that asks for DF on a socket without it (a Send indication with
        // DONT-FRAGMENT, which is rare) gets it around this send only.
        let once = to_peer.dont_fragment && !relay.dont_fragment;
        let sent = if once {
            let v6 = to_peer.relay.0.is_ipv6();
            set_dont_fragment(&*relay.socket, v6, true).and_then(|()| {
                let sent = send();
                let _ = set_dont_fragment(&*relay.socket, v6, false);
                sent
            })
        } else {
            send()
        };
        // A full socket buffer drops the datagram, as a router would; so does a DF
        // datagram larger than the path MTU.
        if let Err(error) = sent {
            self.drops.send_failed += 1;
            tracing::debug!(%peer, %error, "send to peer failed");
        }
    }

    /// Queues pending bytes on their connections; a full queue drops the message.
    fn flush(&mut self) {
        for (to, bytes) in self.pending.drain(..) {
            if let Some(queue) = self.clients.get(&to) {
                if queue.try_send(bytes).is_err() {
                    self.drops.client_backlog += 1;
                }
            }
        }
    }

    /// Queues now what is pending for `client` alone (ahead of [`StreamIo::flush`]).
    fn flush_to(&mut self, client: FiveTuple) {
        let Some(queue) = self.clients.get(&client) else {
            return;
        };
        let (now, later) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|(to, _)| *to == client);
        self.pending = later;
        for (_, bytes) in now {
            if queue.try_send(bytes).is_err() {
                self.drops.client_backlog += 1;
            }
        }
    }
}

impl Io for StreamIo {
    fn transmit(&mut self, to: FiveTuple, bytes: Vec<u8>) {
        self.pending.push((to, Bytes::from(bytes)));
    }

    fn bind_relay(&mut self, relay: RelayAddr, options: RelayOptions) -> RelayBind {
        let Some(input) = self.input.upgrade() else {
            return RelayBind::Unavailable;
        };
        match RelaySocket::bind(relay, options, input, &self.tracker) {
            Ok(socket) => {
                self.relays.insert(relay, socket);
                RelayBind::Bound
            }
            Err(error) => {
                tracing::debug!(%relay, %error, "relay port unavailable");
                RelayBind::Unavailable
            }
        }
    }

    fn release_relay(&mut self, relay: RelayAddr) {
        self.relays.remove(&relay);
        self.listeners.remove(&relay);
    }

    fn listen_relay(&mut self, relay: RelayAddr) -> RelayBind {
        let Some(input) = self.input.upgrade() else {
            return RelayBind::Unavailable;
        };
        match tcp_relay::listen(relay) {
            Ok(listener) => {
                let accept = tcp_relay::accept_peers(listener, relay, input);
                self.listeners
                    .insert(relay, AbortOnDrop(self.tracker.spawn(accept)));
                RelayBind::Bound
            }
            Err(error) => {
                tracing::debug!(%relay, %error, "TCP relay port unavailable");
                RelayBind::Unavailable
            }
        }
    }

    fn connect_peer(&mut self, connection: ConnectionId, relay: RelayAddr, peer: PeerAddr) {
        // Without an inbox the shard is stopping; the core's timer answers the request.
        let Some(input) = self.input.upgrade() else {
            return;
        };
        let task = self
            .tracker
            .spawn(tcp_relay::connect_peer(connection, relay, peer, input));
        self.peers.insert(
            connection,
            PeerSide::Connecting {
                _attempt: AbortOnDrop(task),
            },
        );
    }

    fn bridge_peer(&mut self, connection: ConnectionId, client: FiveTuple, pace: RelayPace) {
        let bridge = self.binding.remove(&client);
        let peer = self.peers.remove(&connection);
        let (Some(bridge), Some(PeerSide::Waiting(peer))) = (bridge, peer) else {
            // The core binds only what waits here, for the connection being handled.
            debug_assert!(false, "bridging {connection} without its two sides");
            return;
        };
        // The ConnectionBind response goes out before any relayed byte: it must be in the
        // connection's queue when its writer is asked for its half back. (Its queue stays
        // open, or the writer would take the close for the end of the connection; the core
        // sends nothing more to a data connection.)
        self.flush_to(client);
        let (stop, stopped) = oneshot::channel();
        let handed = bridge.send(Bridge {
            peer,
            stop: stopped,
            counters: self.tcp_relayed.clone(),
            pace: self.pace_of(pace),
        });
        if handed.is_ok() {
            self.peers
                .insert(connection, PeerSide::Relaying { _stop: stop });
        }
        // Otherwise the connection is gone; its `Closed` input tells the core.
    }

    fn close_peer(&mut self, connection: ConnectionId) {
        self.peers.remove(&connection);
    }
}

/// One allocation's relay socket and the task that reads peers' datagrams from it; dropping
/// it stops the task and closes the socket.
struct RelaySocket {
    socket: Arc<UdpSocket>,
    reader: JoinHandle<()>,
    /// Opened with "don't fragment" (the allocation asked for DF on everything).
    dont_fragment: bool,
}

impl RelaySocket {
    fn bind(
        relay: RelayAddr,
        options: RelayOptions,
        input: mpsc::Sender<Input>,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::from_std(bind_relay_socket(relay.0, options)?)?);
        let reader = tracker.spawn(read_peers(socket.clone(), relay, input));
        Ok(Self {
            socket,
            reader,
            dont_fragment: options.dont_fragment,
        })
    }
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Reads peers' datagrams and hands what waits on the socket to the shard in one input,
/// each with room to frame it in place.
async fn read_peers(socket: Arc<UdpSocket>, relay: RelayAddr, input: mpsc::Sender<Input>) {
    let mut receive = vec![0u8; MAX_PEER_DATAGRAM];
    loop {
        if let Err(error) = socket.readable().await {
            tracing::debug!(%relay, %error, "relay socket failed");
            return;
        }
        let mut datagrams = Vec::new();
        while datagrams.len() < PEER_BATCH {
            let (len, peer) = match socket.try_recv_from(&mut receive) {
                Ok((len, _)) if len == MAX_PEER_DATAGRAM => continue,
                Ok(received) => received,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => {
                    // ICMP errors from earlier sends surface here; the socket lives on.
                    tracing::debug!(%relay, %error, "relay receive error");
                    break;
                }
            };
            let mut buffer = Vec::with_capacity(PEER_HEADROOM + len + PEER_TAILROOM);
            buffer.resize(PEER_HEADROOM, 0);
            buffer.extend_from_slice(&receive[..len]);
            buffer.resize(PEER_HEADROOM + len + PEER_TAILROOM, 0);
            datagrams.push(PeerDatagram {
                peer: PeerAddr(peer),
                buffer,
                len,
            });
        }
        if datagrams.is_empty() {
            continue;
        }
        if input
            .send(Input::FromPeers { relay, datagrams })
            .await
            .is_err()
        {
            return;
        }
    }
}
