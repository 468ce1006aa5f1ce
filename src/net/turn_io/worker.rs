//! The UDP data plane: one thread per worker, each with its own `SO_REUSEPORT` socket on
//! every listen address, its own [`turn::Server`] shard, and the relay sockets of the
//! allocations it created.
//!
//! The kernel hashes a client's 5-tuple to one listener socket, so a client's packets always
//! reach the worker that owns its allocation, and peers' packets arrive on that worker's relay
//! sockets: no lock and no cross-thread hand-off on the packet path. Each wake-up drains
//! sockets with `recvmmsg`, peer → client datagrams are framed in place and leave with one
//! `sendmmsg` per listener, and nothing on the relay path allocates.
//!
//! With the kernel fast path (`[xdp]`), the worker also owns its shard's entries in the
//! program's maps: it writes and deletes them as its core announces (through
//! [`turn::Server::drive`], like everything else the core asks), and once a second reads
//! back what the program relayed, so the core counts it and applies the bandwidth limit.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};

use super::batch::{self, OutgoingFrom, RecvBatch, BATCH};
use super::sockets::{Ready, Sockets};
use super::{Control, IoDrops, PublishedFigures};
use crate::net::xdp::ChannelMaps;
use crate::turn::{self, FiveTuple, PeerAddr, RelayAddr, Transport, PEER_HEADROOM, PEER_TAILROOM};

const WAKER: Token = Token(usize::MAX);
/// The longest the loop sleeps without checking timers and publishing stats.
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Receive batches taken from one socket per turn of the loop, so a flood on one socket
/// cannot starve the others, the timers or a shutdown; what is left is read next turn.
const MAX_BATCHES_PER_TURN: usize = 8;
/// Consecutive receive errors tolerated on one socket before the worker moves on.
const MAX_RECV_ERRORS: usize = 16;
/// Give freed memory back to the OS after this many allocations have ended.
const TRIM_AFTER_ENDED: u64 = 1024;
/// How often the fast path's counters are read back into the core (statistics, metrics
/// and the bandwidth limit lag the kernel by at most this).
const FAST_PATH_REPORT: Duration = Duration::from_secs(1);

/// The parts of a running worker the rest of the server holds.
pub(crate) struct WorkerHandle {
    thread: Option<JoinHandle<()>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    figures: PublishedFigures,
    control: mpsc::Sender<Control>,
}

impl WorkerHandle {
    /// Where the worker publishes its counters and gauges (every 100 ms).
    pub fn published(&self) -> PublishedFigures {
        self.figures.clone()
    }

    /// Hands the worker an order; it runs it at its next wake-up, which this causes.
    pub fn send(&self, control: Control) {
        if self.control.send(control).is_ok() {
            let _ = self.waker.wake();
        }
    }

    /// Whether the worker's thread is still running (it ends on a fatal poll error).
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Asks the worker to stop, without waiting.
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.waker.wake();
    }

    /// Asks the worker to stop and waits for it.
    pub fn stop(mut self) {
        self.signal_stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts worker `id` on its own thread with its listener sockets (already bound) and its
/// handle on the fast path's maps, if there is a fast path.
pub(crate) fn spawn(
    id: usize,
    server: turn::Server,
    listeners: Vec<std::net::UdpSocket>,
    fast_path: Option<ChannelMaps>,
) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let stop = Arc::new(AtomicBool::new(false));
    let figures = PublishedFigures::default();
    let (control, orders) = mpsc::channel();
    let worker = Worker {
        server,
        sockets: Sockets::new(poll, listeners, fast_path)?,
        recv: RecvBatch::new(PEER_HEADROOM, PEER_TAILROOM),
        stop: stop.clone(),
        figures: figures.clone(),
        drops: IoDrops::default(),
        orders,
        ended_at_last_trim: 0,
        unfinished: Vec::new(),
        resuming: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("rendez-udp-{id}"))
        .spawn(move || worker.run())?;
    Ok(WorkerHandle {
        thread: Some(thread),
        waker,
        stop,
        figures,
        control,
    })
}

struct Worker {
    server: turn::Server,
    sockets: Sockets,
    recv: RecvBatch,
    stop: Arc<AtomicBool>,
    figures: PublishedFigures,
    drops: IoDrops,
    orders: mpsc::Receiver<Control>,
    ended_at_last_trim: u64,
    /// Sockets left unread after [`MAX_BATCHES_PER_TURN`] batches, to read next turn.
    unfinished: Vec<Token>,
    /// The previous turn's `unfinished`, being read this turn (kept to reuse its memory).
    resuming: Vec<Token>,
}

/// A framed datagram waiting in receive slot `slot` for the batched send to its client.
#[derive(Clone, Copy)]
struct ToClient {
    listener: usize,
    /// The source address to name, for a client of a wildcard listener.
    from: Option<IpAddr>,
    client: SocketAddr,
    slot: usize,
    range: (usize, usize),
}

impl Worker {
    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut last_stats = Instant::now();
        let mut last_fast_path_report = last_stats;
        while !self.stop.load(Ordering::Acquire) {
            let now = Instant::now();
            let sleep = if self.unfinished.is_empty() {
                // Awake for the next publishing round at the latest, so the published
                // figures are never more than MAX_SLEEP old.
                let publish_at = last_stats + MAX_SLEEP;
                let wake = self
                    .server
                    .poll_timeout()
                    .map_or(publish_at, |at| at.min(publish_at));
                wake.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(error) = self.sockets.poll().poll(&mut events, Some(sleep)) {
                if error.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(%error, "UDP worker poll failed; stopping");
                    return;
                }
            }
            while let Ok(order) = self.orders.try_recv() {
                order.apply(&mut self.server);
                self.server.drive(Instant::now(), &mut self.sockets);
            }
            std::mem::swap(&mut self.unfinished, &mut self.resuming);
            for event in events.iter() {
                self.read(event.token());
            }
            while let Some(token) = self.resuming.pop() {
                self.read(token);
            }
            let now = Instant::now();
            if self.server.poll_timeout().is_some_and(|at| at <= now) {
                self.server.handle_timeout(now);
                self.server.drive(now, &mut self.sockets);
            }
            if now.duration_since(last_fast_path_report) >= FAST_PATH_REPORT {
                last_fast_path_report = now;
                self.report_fast_path(now);
            }
            if now.duration_since(last_stats) >= MAX_SLEEP {
                last_stats = now;
                self.server.set_wall_clock(now, crate::net::unix_now());
                self.figures.publish(&self.server, self.drops, true);
                self.trim_memory();
            }
        }
        self.leave_fast_path();
        self.figures.publish(&self.server, self.drops, true);
    }

    /// Hands what the fast path relayed since the last report to the core.
    fn report_fast_path(&mut self, now: Instant) {
        let Some(maps) = &mut self.sockets.fast_path else {
            return;
        };
        for (entry, to_peer, to_client) in maps.traffic() {
            self.server.count_fast_path(now, entry, to_peer, to_client);
        }
        self.figures.publish_xdp(maps.figures());
        // Traffic over a bandwidth limit takes channels off the fast path.
        self.server.drive(now, &mut self.sockets);
    }

    /// The worker stops: its entries leave the maps first, so the program relays nothing
    /// for allocations no socket serves any more.
    fn leave_fast_path(&mut self) {
        let Some(maps) = &mut self.sockets.fast_path else {
            return;
        };
        let now = Instant::now();
        for (entry, to_peer, to_client) in maps.clear() {
            self.server.count_fast_path(now, entry, to_peer, to_client);
        }
        self.figures.publish_xdp(maps.figures());
    }

    /// Reads a socket that is ready, remembering it if it still has data after this turn.
    fn read(&mut self, token: Token) {
        let finished = match self.sockets.ready(token) {
            Ready::Listener(index) => self.drain_listener(index),
            Ready::Relay(relay) => self.drain_relay(relay),
            Ready::Unknown => true,
        };
        if !finished && !self.unfinished.contains(&token) {
            self.unfinished.push(token);
        }
    }

    /// Client datagrams: requests are answered after the batch, relayed data goes straight
    /// out of the receive slot to the peer. Returns whether the socket was drained.
    fn drain_listener(&mut self, index: usize) -> bool {
        let mut errors = 0;
        for _ in 0..MAX_BATCHES_PER_TURN {
            let Some(listener) = self.sockets.listener(index) else {
                return true;
            };
            let received = match self.recv.recv(&listener.socket) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) => {
                    // ICMP errors from earlier sends surface here, one per error; anything
                    // that keeps failing must not spin the worker.
                    tracing::debug!(%error, "UDP receive error");
                    errors += 1;
                    if errors > MAX_RECV_ERRORS {
                        return true;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let headroom = self.recv.headroom();
            for i in 0..received {
                let destination = self.recv.destination(i);
                let Some((client, slot, len)) = self.recv.datagram(i) else {
                    continue;
                };
                let from = FiveTuple {
                    transport: Transport::Udp,
                    client,
                    server: listener.server_address(destination),
                };
                let packet = &slot[headroom..headroom + len];
                if let Some(to_peer) = self.server.handle_client_packet(now, from, packet) {
                    let sent = self.sockets.send_to_peer(&to_peer);
                    self.drops.send_failed += u64::from(!sent);
                }
            }
            self.server.drive(now, &mut self.sockets);
            if drained(received) {
                return true;
            }
        }
        false
    }

    /// Peer datagrams on one relay socket: framed in place, sent to clients in batches.
    /// Returns whether the socket was drained.
    fn drain_relay(&mut self, relay_addr: SocketAddr) -> bool {
        let relay_name = RelayAddr(relay_addr);
        let mut errors = 0;
        for _ in 0..MAX_BATCHES_PER_TURN {
            let Some(relay) = self.sockets.relay(relay_addr) else {
                return true;
            };
            let received = match self.recv.recv(relay) {
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) => {
                    tracing::debug!(%error, relay = %relay_addr, "relay receive error");
                    errors += 1;
                    if errors > MAX_RECV_ERRORS {
                        return true;
                    }
                    continue;
                }
            };
            let now = Instant::now();
            let headroom = self.recv.headroom();
            let mut to_clients = [None::<ToClient>; BATCH];
            for (i, entry) in to_clients.iter_mut().enumerate().take(received) {
                let Some((peer, slot, len)) = self.recv.datagram(i) else {
                    continue;
                };
                let framed = self.server.handle_peer_packet_in_place(
                    now,
                    relay_name,
                    PeerAddr(peer),
                    slot,
                    headroom,
                    len,
                );
                *entry = framed.and_then(|(client, range)| {
                    let route = self.sockets.route_to(client.server)?;
                    Some(ToClient {
                        listener: route.listener,
                        from: route.from,
                        client: client.client,
                        slot: i,
                        range: (range.start, range.end),
                    })
                });
            }
            self.send_to_clients(&to_clients[..received]);
            if drained(received) {
                return true;
            }
        }
        false
    }

    /// One `sendmmsg` per listener for everything framed from the last receive batch.
    fn send_to_clients(&mut self, framed: &[Option<ToClient>]) {
        for (index, listener) in self.sockets.listeners().iter().enumerate() {
            let unused = OutgoingFrom {
                from: None,
                to: listener.local,
                bytes: &[],
            };
            let mut outgoing = [unused; BATCH];
            let mut count = 0;
            for entry in framed.iter().flatten().filter(|e| e.listener == index) {
                let (start, end) = entry.range;
                let Some(bytes) = self.recv.slot(entry.slot).get(start..end) else {
                    continue;
                };
                outgoing[count] = OutgoingFrom {
                    from: entry.from,
                    to: entry.client,
                    bytes,
                };
                count += 1;
            }
            if count > 0 {
                let sent = batch::send_all_from(&listener.socket, &outgoing[..count]);
                self.drops.send_failed += (count - sent) as u64;
            }
        }
    }

    /// After many allocations end, hand freed heap back to the OS: allocators keep it
    /// otherwise, and resident memory would only ever grow.
    fn trim_memory(&mut self) {
        let ended = self.server.stats().allocations_ended;
        if ended - self.ended_at_last_trim < TRIM_AFTER_ENDED {
            return;
        }
        self.ended_at_last_trim = ended;
        self.sockets.shrink();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// Whether a receive of `received` datagrams emptied the socket. The poll is edge-triggered,
/// and on Linux every datagram that arrives later raises a new edge, so a short batch means
/// drained: skipping the extra receive that would only say `WouldBlock` halves the system
/// calls of a relay socket that gets one datagram per wake-up. Elsewhere, read on until
/// `WouldBlock` as usual.
fn drained(received: usize) -> bool {
    cfg!(target_os = "linux") && received < BATCH
}
