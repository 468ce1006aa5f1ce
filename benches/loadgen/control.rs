//! The control plane: opening allocations (with the 401 dance), permissions, channels,
//! and deleting them. One transaction in flight per client socket (or TCP/TLS connection),
//! a window of them at a time, retransmission on timeout (UDP only: on a stream a request
//! is sent once and only its timeout runs, RFC 8489 §6.2.2).

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use rendez::net::batch::RecvBatch;
use rendez::stun::{
    long_term_key, AttrType, Class, ErrorCode, IntegrityAlgorithm, Message, MessageBuilder, Method,
    TransactionId,
};

use crate::measure::Histogram;
use crate::stream::{tls_config, Stream};
use crate::udp_sockets::{recv_batch, Epoll};
use crate::{client_socket, client_socket_on, Args, Transport};

/// One request of a session's plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Request {
    Allocate,
    /// CreatePermission for every echo peer.
    Permission,
    /// ChannelBind of channel `0x4000 + i` to echo peer `i`.
    ChannelBind(u16),
    /// Refresh with LIFETIME 0: deletes the allocation.
    Delete,
}

impl Request {
    fn method(self) -> Method {
        match self {
            Request::Allocate => Method::ALLOCATE,
            Request::Permission => Method::CREATE_PERMISSION,
            Request::ChannelBind(_) => Method::CHANNEL_BIND,
            Request::Delete => Method::REFRESH,
        }
    }
}

/// The first channel number (RFC 8656 §12: 0x4000–0x4FFF, valid under either setting).
pub(crate) const FIRST_CHANNEL: u16 = 0x4000;
/// REQUESTED-TRANSPORT value for UDP (RFC 8656 §18.7: protocol 17, then RFFU).
const REQUESTED_TRANSPORT_UDP: [u8; 4] = [17, 0, 0, 0];
/// First retransmission timeout; doubled on each retry (RFC 8489 §6.2.1 uses 500 ms; on
/// loopback a lost request is a dropped one, so retry sooner).
const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Tries per transaction before the session counts as failed.
const MAX_TRIES: u32 = 6;
/// Client ports for churn's fresh 5-tuples: inside the kernel's ephemeral range, outside
/// the relay ranges compare.sh gives the servers (10000–29999).
const CHURN_PORTS: std::ops::RangeInclusive<u16> = 40_000..=60_999;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SessionState {
    Idle,
    Active,
    Done,
    Failed,
}

/// What a session talks to the server over.
enum Link {
    Udp(UdpSocket),
    Stream(Box<Stream>),
}

impl Link {
    fn fd(&self) -> RawFd {
        match self {
            Link::Udp(socket) => socket.as_raw_fd(),
            Link::Stream(stream) => stream.fd(),
        }
    }

    /// Sends one request. A failed send is handled like a lost datagram: the transaction's
    /// timer retries (UDP) or fails the session (a closed stream).
    fn send(&mut self, bytes: &[u8]) {
        let _ = match self {
            Link::Udp(socket) => socket.send(bytes).map(drop),
            Link::Stream(stream) => stream.send(bytes),
        };
    }
}

/// One client socket or connection (one 5-tuple, so at most one allocation).
struct Session {
    link: Link,
    state: SessionState,
    step: usize,
    nonce: Option<Vec<u8>>,
    pending: Option<Pending>,
    allocated: bool,
    /// When the current Allocate began (first try, before the 401), for its latency.
    allocate_started: Option<Instant>,
}

struct Pending {
    transaction_id: TransactionId,
    request: Request,
    bytes: Vec<u8>,
    sent_at: Instant,
    tries: u32,
    authenticated: bool,
}

#[derive(Default)]
pub(crate) struct ControlStats {
    /// Allocate success responses.
    pub(crate) allocations: u64,
    /// Delete success responses.
    pub(crate) deletions: u64,
    pub(crate) retransmits: u64,
    /// Final failures by reason ("timeout", "error 403", ...).
    pub(crate) errors: BTreeMap<String, u64>,
    /// First Allocate sent → success, 401 round trip included.
    pub(crate) allocate_latency: Histogram,
}

pub(crate) struct Control {
    sessions: Vec<Session>,
    epoll: Epoll,
    received: RecvBatch,
    user: String,
    password: String,
    realm: Option<String>,
    key: Option<[u8; 16]>,
    peers: Vec<SocketAddrV4>,
    plan: Vec<Request>,
    cyclic: bool,
    queue: VecDeque<usize>,
    active: Vec<usize>,
    window: usize,
    next_transaction: u64,
    next_churn_port: u16,
    server: SocketAddrV4,
    /// The address client sockets bind to.
    local_ip: Ipv4Addr,
    ready: Vec<u64>,
    pub(crate) stats: ControlStats,
}

/// What opening the allocations achieved.
pub(crate) struct SetupOutcome {
    pub(crate) seconds: f64,
    pub(crate) succeeded: usize,
    pub(crate) failed: usize,
}

impl Control {
    pub(crate) fn new(
        args: &Args,
        sessions: usize,
        peers: Vec<SocketAddrV4>,
    ) -> anyhow::Result<Self> {
        let epoll = Epoll::new()?;
        let tls = match args.transport {
            Transport::Tls => Some(tls_config(args.tls_version)?),
            Transport::Udp | Transport::Tcp => None,
        };
        // Streams are connected (and TLS handshakes done) here, one after the other,
        // within the setup timeout.
        let connect_deadline = args.deadline_after(args.setup_timeout);
        let sessions = (0..sessions)
            .map(|i| {
                let link = match args.transport {
                    Transport::Udp => Link::Udp(client_socket(args.local_ip(), args.server)?),
                    Transport::Tcp | Transport::Tls => Link::Stream(Box::new(Stream::connect(
                        args.server,
                        tls.as_ref(),
                        connect_deadline,
                    )?)),
                };
                epoll.add(link.fd(), i as u64)?;
                Ok(Session {
                    link,
                    state: SessionState::Idle,
                    step: 0,
                    nonce: None,
                    pending: None,
                    allocated: false,
                    allocate_started: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let key = args
            .realm
            .as_deref()
            .map(|realm| long_term_key(&args.user, realm, &args.password));
        Ok(Self {
            sessions,
            epoll,
            received: recv_batch(),
            user: args.user.clone(),
            password: args.password.clone(),
            realm: args.realm.clone(),
            key,
            peers,
            plan: Vec::new(),
            cyclic: false,
            queue: VecDeque::new(),
            active: Vec::new(),
            window: args.setup_window,
            next_transaction: 0,
            next_churn_port: *CHURN_PORTS.start(),
            server: args.server,
            local_ip: args.local_ip(),
            ready: Vec::new(),
            stats: ControlStats::default(),
        })
    }

    /// Opens every session's allocation with a permission and its channels.
    pub(crate) fn run_setup(&mut self, args: &Args) -> anyhow::Result<SetupOutcome> {
        let mut plan = vec![Request::Allocate, Request::Permission];
        plan.extend((0..self.peers.len() as u16).map(Request::ChannelBind));
        if self.peers.is_empty() {
            plan.truncate(1);
        }
        let started = Instant::now();
        self.begin(plan, false, 0..self.sessions.len());
        let deadline = args.deadline_after(args.setup_timeout);
        while !self.phase_done() && Instant::now() < deadline {
            self.poll(Duration::from_millis(20))?;
        }
        let succeeded = self.count(SessionState::Done);
        Ok(SetupOutcome {
            seconds: started.elapsed().as_secs_f64(),
            succeeded,
            failed: self.sessions.len() - succeeded,
        })
    }

    /// Deletes every allocation that was opened; returns how many deletions succeeded.
    pub(crate) fn run_teardown(&mut self, args: &Args) -> u64 {
        let allocated: Vec<usize> = (0..self.sessions.len())
            .filter(|&s| self.sessions[s].allocated)
            .collect();
        let before = self.stats.deletions;
        self.begin(vec![Request::Delete], false, allocated);
        let deadline = args.deadline_after(args.setup_timeout);
        while !self.phase_done() && Instant::now() < deadline {
            if self.poll(Duration::from_millis(20)).is_err() {
                break;
            }
        }
        self.stats.deletions - before
    }

    /// Queues `sessions` to run `plan` (again and again while `cyclic`).
    pub(crate) fn begin(
        &mut self,
        plan: Vec<Request>,
        cyclic: bool,
        sessions: impl IntoIterator<Item = usize>,
    ) {
        self.plan = plan;
        self.cyclic = cyclic;
        self.queue = sessions.into_iter().collect();
        for s in self.queue.clone() {
            if cyclic {
                // Every churn 5-tuple comes from the port sequence (see renew_socket).
                self.renew_socket(s);
            }
            let session = &mut self.sessions[s];
            session.state = SessionState::Idle;
            session.step = 0;
            session.pending = None;
        }
        self.active.clear();
    }

    pub(crate) fn stop_cycling(&mut self) {
        self.cyclic = false;
        self.queue.clear();
    }

    pub(crate) fn phase_done(&self) -> bool {
        self.queue.is_empty() && self.active.is_empty()
    }

    fn count(&self, state: SessionState) -> usize {
        self.sessions.iter().filter(|s| s.state == state).count()
    }

    /// UDP sockets of the sessions whose whole setup succeeded.
    pub(crate) fn ready_sockets(&self) -> Vec<RawFd> {
        self.sessions
            .iter()
            .filter(|s| s.state == SessionState::Done && s.allocated)
            .filter_map(|s| match &s.link {
                Link::Udp(socket) => Some(socket.as_raw_fd()),
                Link::Stream(_) => None,
            })
            .collect()
    }

    /// Connections of the sessions whose whole setup succeeded, lent for the traffic run.
    pub(crate) fn ready_streams(&mut self) -> Vec<&mut Stream> {
        self.sessions
            .iter_mut()
            .filter(|s| s.state == SessionState::Done && s.allocated)
            .filter_map(|s| match &mut s.link {
                Link::Udp(_) => None,
                Link::Stream(stream) => Some(&mut **stream),
            })
            .collect()
    }

    /// The TLS version and cipher suite of the first connection, if TLS.
    pub(crate) fn tls_parameters(&self) -> Option<(String, String)> {
        self.sessions.iter().find_map(|s| match &s.link {
            Link::Stream(stream) => stream.tls_parameters(),
            Link::Udp(_) => None,
        })
    }

    /// One turn: start queued sessions up to the window, wait up to `timeout` for
    /// responses, handle them, retransmit what timed out.
    pub(crate) fn poll(&mut self, timeout: Duration) -> anyhow::Result<()> {
        for &s in &self.active {
            if let Link::Stream(stream) = &mut self.sessions[s].link {
                if stream.has_output() {
                    let _ = stream.flush();
                }
            }
        }
        while self.active.len() < self.window {
            let Some(s) = self.queue.pop_front() else {
                break;
            };
            self.sessions[s].state = SessionState::Active;
            self.active.push(s);
            self.send_step(s, false);
        }
        self.epoll.wait(timeout)?;
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.extend(self.epoll.tokens());
        for &token in &ready {
            self.receive(token as usize);
        }
        self.ready = ready;
        self.retransmit_expired();
        Ok(())
    }

    fn receive(&mut self, s: usize) {
        // Copy out: handling a response borrows `self` mutably.
        let mut messages = Vec::new();
        match &mut self.sessions[s].link {
            Link::Udp(socket) => {
                let Ok(count) = self.received.recv(socket) else {
                    return;
                };
                let received = (0..count).filter_map(|i| self.received.received(i));
                messages.extend(received.map(|(_, payload)| payload.to_vec()));
            }
            Link::Stream(stream) => {
                if stream.closed {
                    return; // failed once, when it closed
                }
                let result = stream.receive(|frame| messages.push(frame.to_vec()));
                if result.is_err() && self.sessions[s].state == SessionState::Active {
                    self.fail(s, "connection closed".into());
                    return;
                }
            }
        }
        for bytes in messages {
            if let Ok(message) = Message::parse(&bytes) {
                self.on_response(s, &message);
            }
        }
    }

    fn on_response(&mut self, s: usize, message: &Message<'_>) {
        let session = &mut self.sessions[s];
        let matches = session
            .pending
            .as_ref()
            .is_some_and(|p| p.transaction_id == message.transaction_id());
        if !matches {
            return; // a late answer to a retransmitted request
        }
        let Some(pending) = session.pending.take() else {
            return;
        };
        match message.class() {
            Class::Success => self.on_success(s, pending.request),
            Class::Error => self.on_error(s, &pending, message),
            _ => session.pending = Some(pending),
        }
    }

    fn on_success(&mut self, s: usize, request: Request) {
        match request {
            Request::Allocate => {
                let session = &mut self.sessions[s];
                session.allocated = true;
                self.stats.allocations += 1;
                if let Some(started) = session.allocate_started.take() {
                    let nanos = started.elapsed().as_nanos() as u64;
                    self.stats.allocate_latency.record(nanos);
                }
            }
            Request::Delete => {
                self.sessions[s].allocated = false;
                self.stats.deletions += 1;
                if self.cyclic {
                    self.renew_socket(s);
                }
            }
            Request::Permission | Request::ChannelBind(_) => {}
        }
        let session = &mut self.sessions[s];
        session.step += 1;
        if session.step == self.plan.len() {
            if !self.cyclic {
                self.finish(s, SessionState::Done);
                return;
            }
            session.step = 0;
        }
        self.send_step(s, false);
    }

    /// 401 and 438 carry a (new) nonce: retry with it. Anything else fails the session.
    fn on_error(&mut self, s: usize, pending: &Pending, message: &Message<'_>) {
        let code = message
            .attribute(AttrType::ERROR_CODE)
            .and_then(ErrorCode::decode_code)
            .unwrap_or(0);
        let nonce = message.attribute(AttrType::NONCE);
        let retry_with_nonce = match code {
            401 => !pending.authenticated,
            438 => pending.tries < MAX_TRIES,
            _ => false,
        };
        if let (true, Some(nonce)) = (retry_with_nonce, nonce) {
            if let Some(realm) = message.attribute(AttrType::REALM) {
                self.learn_realm(realm);
            }
            self.sessions[s].nonce = Some(nonce.to_vec());
            self.send_step(s, true);
            return;
        }
        self.fail(s, format!("error {code}"));
    }

    /// Churn: the next cycle starts like a new client, from a new 5-tuple and without a
    /// nonce. A new 5-tuple because a server may keep a deleted allocation until its next
    /// timer tick (coturn answers 437 to an Allocate from the same 5-tuple for up to a
    /// second). Ports come in sequence from CHURN_PORTS, so one is reused only after
    /// thousands of allocations, not at random soon after.
    fn renew_socket(&mut self, s: usize) {
        for _ in 0..CHURN_PORTS.len() {
            let port = self.next_churn_port;
            self.next_churn_port = if port == *CHURN_PORTS.end() {
                *CHURN_PORTS.start()
            } else {
                port + 1
            };
            let Ok(socket) = client_socket_on(self.local_ip, self.server, port) else {
                continue; // in use by someone else: take the next one
            };
            if self.epoll.add(socket.as_raw_fd(), s as u64).is_err() {
                continue;
            }
            // Dropping the old socket closes it, which also takes it out of the epoll set.
            self.sessions[s].link = Link::Udp(socket);
            self.sessions[s].nonce = None;
            return;
        }
    }

    /// The first 401 tells the realm; the key follows from it.
    fn learn_realm(&mut self, realm: &[u8]) {
        if self.key.is_some() {
            return;
        }
        let realm = String::from_utf8_lossy(realm).into_owned();
        self.key = Some(long_term_key(&self.user, &realm, &self.password));
        self.realm = Some(realm);
    }

    /// Counts the failure. Churn goes on from a fresh 5-tuple (a session's allocation
    /// state on the server is unknown after a failure); otherwise the session is out.
    fn fail(&mut self, s: usize, reason: String) {
        *self.stats.errors.entry(reason).or_default() += 1;
        if self.cyclic {
            self.renew_socket(s);
            self.sessions[s].step = 0;
            self.send_step(s, false);
        } else {
            self.finish(s, SessionState::Failed);
        }
    }

    fn finish(&mut self, s: usize, state: SessionState) {
        self.sessions[s].state = state;
        self.sessions[s].pending = None;
        if let Some(position) = self.active.iter().position(|&a| a == s) {
            self.active.swap_remove(position);
        }
    }

    /// Sends the session's current step as a new transaction. `authenticated_retry`:
    /// this is the same step again after a 401/438, not a new one.
    fn send_step(&mut self, s: usize, authenticated_retry: bool) {
        let request = self.plan[self.sessions[s].step];
        if request == Request::Allocate && !authenticated_retry {
            self.sessions[s].allocate_started = Some(Instant::now());
        }
        let transaction_id = self.new_transaction_id();
        let (bytes, authenticated) = self.build(s, request, transaction_id);
        let session = &mut self.sessions[s];
        session.link.send(&bytes);
        session.pending = Some(Pending {
            transaction_id,
            request,
            bytes,
            sent_at: Instant::now(),
            tries: 1,
            authenticated,
        });
        if matches!(&session.link, Link::Stream(stream) if stream.closed) {
            self.fail(s, "connection closed".into());
        }
    }

    fn retransmit_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<usize> = self
            .active
            .iter()
            .copied()
            .filter(|&s| {
                self.sessions[s].pending.as_ref().is_some_and(|p| {
                    now.duration_since(p.sent_at) >= INITIAL_RTO * 2u32.pow(p.tries - 1)
                })
            })
            .collect();
        for s in expired {
            let session = &mut self.sessions[s];
            let Some(pending) = session.pending.as_mut() else {
                continue;
            };
            if pending.tries >= MAX_TRIES {
                self.fail(s, "timeout".into());
                continue;
            }
            // A stream delivers the request or fails: the timer runs on, nothing is resent.
            if let Link::Udp(socket) = &session.link {
                let _ = socket.send(&pending.bytes);
                self.stats.retransmits += 1;
            }
            pending.sent_at = now;
            pending.tries += 1;
        }
    }

    fn new_transaction_id(&mut self) -> TransactionId {
        self.next_transaction += 1;
        let mut id = [0u8; 12];
        id[..4].copy_from_slice(b"rzlg");
        id[4..].copy_from_slice(&self.next_transaction.to_be_bytes());
        TransactionId(id)
    }

    /// The request bytes; authenticated once the session holds a nonce.
    fn build(&self, s: usize, request: Request, transaction_id: TransactionId) -> (Vec<u8>, bool) {
        let mut b = MessageBuilder::new(Class::Request, request.method(), transaction_id);
        match request {
            Request::Allocate => {
                b.add(AttrType::REQUESTED_TRANSPORT, &REQUESTED_TRANSPORT_UDP);
            }
            Request::Permission => {
                for &peer in &self.peers {
                    b.add_xor_address(AttrType::XOR_PEER_ADDRESS, SocketAddr::V4(peer));
                }
            }
            Request::ChannelBind(i) => {
                b.add_u32(AttrType::CHANNEL_NUMBER, u32::from(FIRST_CHANNEL + i) << 16);
                b.add_xor_address(
                    AttrType::XOR_PEER_ADDRESS,
                    SocketAddr::V4(self.peers[usize::from(i)]),
                );
            }
            Request::Delete => {
                b.add_u32(AttrType::LIFETIME, 0);
            }
        }
        let session = &self.sessions[s];
        let (Some(nonce), Some(realm), Some(key)) = (&session.nonce, &self.realm, &self.key) else {
            return (b.finish(), false);
        };
        b.add(AttrType::USERNAME, self.user.as_bytes())
            .add(AttrType::REALM, realm.as_bytes())
            .add(AttrType::NONCE, nonce)
            .add_integrity(IntegrityAlgorithm::Sha1, key);
        (b.finish(), true)
    }
}
