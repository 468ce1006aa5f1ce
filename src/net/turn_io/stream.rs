//! STUN/TURN over TCP and TLS: accept, frame, and hand whole messages to the shard.
//!
//! Each connection is a 5-tuple of its own; its allocation ends when it closes. A
//! connection costs one task for reading, one for writing, one receive buffer that grows
//! only as far as the largest message (64 KiB), and a bounded queue of outgoing messages
//! filled by the [shard](super::stream_shard): a slow reader loses relayed packets instead
//! of holding up the relay. Connections that send garbage are closed at once; connections
//! that stall in the middle of a message, never send one, or sit idle without an allocation
//! are closed after the configured timeouts.
//!
//! Behind a load balancer in `[connections] proxy-protocol-from`, a connection's client is
//! the one its PROXY header names, read before anything else (before the TLS ClientHello),
//! in the connection's own task like the handshake, so the accept loop never waits on it.
//!
//! A ConnectionBind (RFC 6062) turns a connection into a TCP relay's data connection: the
//! reader stops framing after the request and waits for the shard's answer; if the core
//! binds it, the writer task hands its half back once the success response is written,
//! and the connection's task pumps bytes between it and the peer until either side ends
//! (see [`super::tcp_relay`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::stream_shard::{Input, ShardHandle};
use super::tcp_relay::{self, Bridge};
use crate::config::ConnectionsConfig;
use crate::net::limits::{ConnectionLimits, Permit};
use crate::net::proxy_protocol::{self, Origin, TrustedProxies};
use crate::net::tls;
use crate::stun::{stream_frame, Frame};
use crate::turn::{FiveTuple, Transport};

/// Outgoing messages queued per connection before new ones are dropped: at most about
/// 256 KiB (relayed datagrams to stream clients are at most 4 KiB) per slow reader.
const OUTBOUND_QUEUE: usize = 64;
/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 4096;
/// The most a connection keeps of its write-coalescing buffer between bursts.
const COALESCE_KEEP: usize = 16 * 1024;
/// The first two bytes of a ConnectionBind request: its message type (RFC 6062 §6.1).
const CONNECTION_BIND_REQUEST: [u8; 2] = [0x00, 0x0B];

/// Accepts connections until stopped. `tls` turns this into a `turns:` listener.
/// Connections from `settings.proxy_protocol_from` begin with a PROXY header.
pub(crate) async fn accept(
    shard: ShardHandle,
    tracker: TaskTracker,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Arc<ConnectionLimits>,
    settings: ConnectionsConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    let proxies = TrustedProxies::new(settings.proxy_protocol_from.clone());
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // A balancer's connection counts under the client its header names, once read.
        let Some((permit, behind_proxy)) = limits.try_admit_from(peer.ip(), &proxies) else {
            tracing::debug!(%peer, "connection refused: connection cap reached");
            continue;
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            shard: shard.clone(),
            tracker: tracker.clone(),
            tuple: FiveTuple {
                transport,
                client: peer,
                server,
            },
            permit,
            timeouts: settings.clone(),
            stopped: stopped.clone(),
        };
        tracker.spawn(connection.open(stream, behind_proxy, tls.clone()));
    }
}

/// TURN on a port shared with other services ([`crate::net::shared_port`]): serves
/// connections the shared port accepted, admitted, read the PROXY header of and routed here,
/// in the clear or already TLS-terminated.
#[derive(Clone)]
pub(crate) struct TurnRoute {
    pub shard: ShardHandle,
    pub tracker: TaskTracker,
    pub settings: ConnectionsConfig,
    pub stopped: watch::Receiver<bool>,
}

impl TurnRoute {
    /// Serves one routed connection as `tuple` until it ends, counted by `permit`.
    pub async fn serve<S>(self, stream: S, tuple: FiveTuple, permit: Permit)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let connection = Connection {
            shard: self.shard,
            tracker: self.tracker,
            tuple,
            permit,
            timeouts: self.settings,
            stopped: self.stopped,
        };
        connection.serve(stream).await;
    }
}

/// How reading a connection's messages ended.
enum Ended {
    Closed(Closed),
    /// A ConnectionBind made it a data connection: relay it to `bridge`'s peer, starting
    /// with the `early` bytes the client sent behind its request.
    Bridged {
        bridge: Bridge,
        early: BytesMut,
    },
}

/// Why a connection ended (for the debug log).
#[derive(Debug)]
enum Closed {
    ByPeer,
    Garbage,
    Stalled,
    Idle,
    ReadError,
    Shutdown,
}

/// One accepted connection: what its task needs.
struct Connection {
    shard: ShardHandle,
    tracker: TaskTracker,
    /// The client's address is the peer's until a PROXY header names another.
    tuple: FiveTuple,
    permit: Permit,
    timeouts: ConnectionsConfig,
    stopped: watch::Receiver<bool>,
}

impl Connection {
    /// Before anything else, a load balancer's PROXY header names the client; on `turns:`
    /// listeners the TLS handshake follows. Then the connection is served.
    async fn open(mut self, mut stream: TcpStream, behind_proxy: bool, tls: Option<TlsAcceptor>) {
        if behind_proxy && !self.take_proxy_header(&mut stream).await {
            return;
        }
        let client = self.tuple.client;
        match tls {
            None => self.serve(stream).await,
            Some(acceptor) => match self.in_time(acceptor.accept(stream)).await {
                Ok(Ok(stream)) if tls::is_acme_validation(stream.get_ref().1) => {}
                Ok(Ok(stream)) => self.serve(stream).await,
                Ok(Err(error)) => tracing::debug!(%client, %error, "TLS handshake failed"),
                Err(reason) => tracing::debug!(%client, ?reason, "TLS handshake not completed"),
            },
        }
    }

    /// Takes the client's address from a balancer's PROXY header and counts the connection
    /// under it; false (logged) when the connection must close.
    async fn take_proxy_header(&mut self, stream: &mut TcpStream) -> bool {
        let proxy = self.tuple.client;
        match self.in_time(proxy_protocol::read_header(stream)).await {
            Ok(Ok(Origin::Relayed { client, server })) => {
                self.tuple.client = client;
                self.tuple.server = server;
            }
            Ok(Ok(Origin::AsConnected)) => {}
            Ok(Err(error)) => {
                tracing::debug!(%proxy, %error, "connection from a proxy closed");
                return false;
            }
            Err(reason) => {
                tracing::debug!(%proxy, ?reason, "connection from a proxy closed before its header");
                return false;
            }
        }
        let client = self.tuple.client;
        if !self.permit.attribute(client.ip()) {
            tracing::debug!(%client, %proxy, "connection refused: per-IP cap reached");
            return false;
        }
        true
    }

    /// Runs one step of opening a connection within the message timeout, unless the server
    /// stops first.
    async fn in_time<F: Future>(&self, step: F) -> Result<F::Output, Closed> {
        let mut stopped = self.stopped.clone();
        tokio::select! {
            done = tokio::time::timeout(self.timeouts.message_timeout, step) => {
                done.map_err(|_| Closed::Stalled)
            }
            _ = stopped.changed() => Err(Closed::Shutdown),
        }
    }

    async fn serve<S>(mut self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let tuple = self.tuple;
        let (mut reader, writer) = tokio::io::split(stream);
        let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
        let (accepted, answer) = oneshot::channel();
        let opened = Input::Opened {
            tuple,
            outbound,
            accepted,
        };
        if !self.shard.send(opened).await {
            return;
        }
        if answer.await != Ok(true) {
            // Its 5-tuple is another connection's: closing it keeps that one's allocation.
            tracing::debug!(client = %tuple.client, "connection refused: its 5-tuple is already open");
            return;
        }
        let (hand_back, handed_back) = oneshot::channel();
        let writer = self.tracker.spawn(write_queue(writer, queue, handed_back));
        match self.read_messages(&mut reader).await {
            Ended::Closed(reason) => {
                tracing::debug!(client = %tuple.client, transport = ?tuple.transport, ?reason, "connection closed");
                writer.abort();
            }
            Ended::Bridged { bridge, early } => {
                let _ = hand_back.send(());
                self.relay(reader, writer, bridge, &early).await;
            }
        }
        self.shard.send(Input::Closed { tuple }).await;
    }

    /// Relays a data connection to its peer (RFC 6062 §5.4) once the writer has sent the
    /// ConnectionBind response and handed its half back.
    async fn relay<S: AsyncRead + AsyncWrite>(
        &self,
        reader: ReadHalf<S>,
        writer: JoinHandle<Option<WriteHalf<S>>>,
        bridge: Bridge,
        early: &[u8],
    ) {
        let client = self.tuple.client;
        let abort = writer.abort_handle();
        let writer = match tokio::time::timeout(self.timeouts.message_timeout, writer).await {
            Ok(Ok(Some(writer))) => writer,
            _ => {
                abort.abort();
                tracing::debug!(%client, "data connection closed: the bind response was not taken");
                return;
            }
        };
        tracing::debug!(%client, "TCP relay started");
        let ended = tcp_relay::relay(reader, writer, early, bridge, self.stopped.clone()).await;
        tracing::debug!(%client, ?ended, "TCP relay ended");
    }

    /// Reads until the connection ends, handing every complete message to the shard, or
    /// until a ConnectionBind makes it a data connection.
    async fn read_messages<R: AsyncRead + Unpin>(&mut self, reader: &mut R) -> Ended {
        let timeouts = self.timeouts.clone();
        let mut buffer = BytesMut::with_capacity(READ_CHUNK);
        let opened = Instant::now();
        let mut last_message: Option<Instant> = None;
        // When the first byte of the message now in the buffer arrived.
        let mut partial_since: Option<Instant> = None;
        loop {
            // No channel can be bound before a STUN message: ChannelData (or text such as
            // "GET /", which looks like it) as the first message is garbage.
            if last_message.is_none() && buffer.first().is_some_and(|b| b >> 6 == 0b01) {
                return Ended::Closed(Closed::Garbage);
            }
            // Every complete message in the buffer goes to the shard in one input; after a
            // ConnectionBind the rest may be the client's first relayed bytes, so framing
            // stops there until the shard has answered.
            let mut complete = 0;
            let mut binds = false;
            let invalid = loop {
                match stream_frame(&buffer[complete..]) {
                    Frame::Complete(len) => {
                        binds = buffer[complete..].starts_with(&CONNECTION_BIND_REQUEST);
                        complete += len;
                        if binds {
                            break false;
                        }
                    }
                    Frame::Incomplete => break false,
                    Frame::Invalid => break true,
                }
            };
            if complete > 0 {
                // Handed over without a copy; the partial message after it stays here.
                let bytes = buffer.split_to(complete).freeze();
                let tuple = self.tuple;
                if binds {
                    let (bridge, bridged) = oneshot::channel();
                    let input = Input::ConnectionBind {
                        tuple,
                        bytes,
                        bridge,
                    };
                    if !self.shard.send(input).await {
                        return Ended::Closed(Closed::Shutdown);
                    }
                    if let Ok(bridge) = bridged.await {
                        return Ended::Bridged {
                            bridge,
                            early: buffer,
                        };
                    }
                    // Refused: the connection goes on as it was.
                } else if !self.shard.send(Input::Messages { tuple, bytes }).await {
                    return Ended::Closed(Closed::Shutdown);
                }
                last_message = Some(Instant::now());
            }
            if invalid {
                return Ended::Closed(Closed::Garbage);
            }
            if buffer.is_empty() {
                partial_since = None;
            } else if partial_since.is_none() || complete > 0 {
                partial_since = Some(Instant::now());
            }

            let (deadline, idle) = match (partial_since, last_message) {
                (Some(since), _) => (since + timeouts.message_timeout, false),
                (None, None) => (opened + timeouts.message_timeout, false),
                (None, Some(at)) => (at + timeouts.idle_timeout, true),
            };
            buffer.reserve(READ_CHUNK);
            tokio::select! {
                read = reader.read_buf(&mut buffer) => match read {
                    Ok(0) => return Ended::Closed(Closed::ByPeer),
                    Ok(_) => {}
                    Err(_) => return Ended::Closed(Closed::ReadError),
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if !idle {
                        return Ended::Closed(Closed::Stalled);
                    }
                    if !self.has_allocation().await {
                        return Ended::Closed(Closed::Idle);
                    }
                    // An allocation keeps the connection; its own lifetime ends it.
                    last_message = Some(Instant::now());
                },
                _ = self.stopped.changed() => return Ended::Closed(Closed::Shutdown),
            }
        }
    }

    async fn has_allocation(&self) -> bool {
        let (reply, answer) = oneshot::channel();
        let tuple = self.tuple;
        self.shard.send(Input::HasAllocation { tuple, reply }).await && answer.await == Ok(true)
    }
}

/// What the writer task does next.
enum Next {
    /// Write what `recv_many` took from the queue (0: the queue closed).
    Queued(usize),
    /// The connection asks for the writer's half back (an error: it will not).
    HandBack(Result<(), oneshot::error::RecvError>),
}

/// Writes what the shard queues, coalescing every message waiting at once into one write:
/// one system call (and over TLS one record) for many relayed packets instead of one each,
/// which is most of a stream relay's cost. When `hand_back` fires (a ConnectionBind made
/// this a data connection), writes what is queued and returns its half of the stream.
async fn write_queue<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Bytes>,
    hand_back: oneshot::Receiver<()>,
) -> Option<W> {
    let mut hand_back = Some(hand_back);
    let mut waiting = Vec::with_capacity(OUTBOUND_QUEUE);
    let mut coalesced: Vec<u8> = Vec::new();
    loop {
        let next = tokio::select! {
            biased;
            taken = queue.recv_many(&mut waiting, OUTBOUND_QUEUE) => Next::Queued(taken),
            asked = async { hand_back.as_mut().expect("guarded").await }, if hand_back.is_some() => {
                Next::HandBack(asked)
            }
        };
        let handing_back = match next {
            Next::Queued(0) => break,
            Next::Queued(_) => false,
            Next::HandBack(asked) => {
                hand_back = None;
                if asked.is_err() {
                    continue;
                }
                while let Ok(bytes) = queue.try_recv() {
                    waiting.push(bytes);
                }
                true
            }
        };
        let written = match &waiting[..] {
            [one] => writer.write_all(one).await,
            many => {
                coalesced.clear();
                for bytes in many {
                    coalesced.extend_from_slice(bytes);
                }
                writer.write_all(&coalesced).await
            }
        };
        waiting.clear();
        if written.and(writer.flush().await).is_err() {
            return None;
        }
        if handing_back {
            return Some(writer);
        }
        // A burst may have grown the buffer; an idle connection should not keep it.
        if coalesced.capacity() > COALESCE_KEEP {
            coalesced = Vec::new();
        }
    }
    let _ = writer.shutdown().await;
    None
}

/// Binds a TCP listener on `addr` (IPv6-only for IPv6, so it can share a port number with
/// an IPv4 listener).
pub(crate) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
