//! STUN/TURN over TCP and TLS: accept, frame, and hand messages to the core.
//!
//! Each connection is a 5-tuple of its own; its allocation ends when it closes. A
//! connection costs one task, one receive buffer that grows only as far as the largest
//! message (64 KiB), and a bounded queue of outgoing messages: a slow reader loses relayed
//! packets instead of holding up the relay. Connections that send garbage are closed at
//! once; connections that stall in the middle of a message, never send one, or sit idle
//! without an allocation are closed after the configured timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::limits::{ConnectionLimits, Permit};
use super::{drain_outputs, Shared};
use crate::config::ConnectionsConfig;
use crate::stun::{stream_frame, Frame};
use crate::turn::{FiveTuple, Transport};

/// Outgoing messages queued per connection before new ones are dropped: at most about
/// 256 KiB (relayed datagrams to stream clients are at most 4 KiB) per slow reader.
const OUTBOUND_QUEUE: usize = 64;
/// Bytes requested from the socket per read.
const READ_CHUNK: usize = 4096;

/// Accepts connections until stopped. `tls` turns this into a `turns:` listener.
pub(super) async fn accept(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: Arc<ConnectionLimits>,
    timeouts: ConnectionsConfig,
    mut stopped: watch::Receiver<bool>,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
    };
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.changed() => return,
        };
        let (stream, client) = match accepted {
            Ok(a) => a,
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = limits.try_admit(client.ip()) else {
            tracing::debug!(%client, "connection refused: connection cap reached");
            continue;
        };
        let Ok(server) = stream.local_addr() else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tuple = FiveTuple {
            transport,
            client,
            server,
        };
        let shared = shared.clone();
        let tls = tls.clone();
        let timeouts = timeouts.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(shared, stream, tuple, permit, timeouts, stopped).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(timeouts.message_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve(shared, stream, tuple, permit, timeouts, stopped).await
                        }
                        Ok(Err(error)) => tracing::debug!(%client, %error, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%client, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
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

async fn serve<S>(
    shared: Arc<Shared>,
    stream: S,
    tuple: FiveTuple,
    _permit: Permit,
    timeouts: ConnectionsConfig,
    mut stopped: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (outbound, queue) = mpsc::channel(OUTBOUND_QUEUE);
    shared.register_stream(tuple, outbound);
    let writer = tokio::spawn(write_queue(writer, queue));

    let mut buffer: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let opened = Instant::now();
    let mut last_message: Option<Instant> = None;
    // When the first byte of the message now in the buffer arrived.
    let mut partial_since: Option<Instant> = None;
    let reason = loop {
        // No channel can be bound before a STUN message: ChannelData (or text such as
        // "GET /", which looks like it) as the first message is garbage.
        if last_message.is_none() && buffer.first().is_some_and(|b| b >> 6 == 0b01) {
            break Closed::Garbage;
        }
        // Hand every complete message in the buffer to the core.
        let mut consumed = 0;
        let invalid = loop {
            match stream_frame(&buffer[consumed..]) {
                Frame::Complete(len) => {
                    handle_message(&shared, tuple, &buffer[consumed..consumed + len]).await;
                    consumed += len;
                    last_message = Some(Instant::now());
                }
                Frame::Incomplete => break false,
                Frame::Invalid => break true,
            }
        };
        if invalid {
            break Closed::Garbage;
        }
        buffer.drain(..consumed);
        if buffer.is_empty() {
            partial_since = None;
        } else if partial_since.is_none() || consumed > 0 {
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
                Ok(0) => break Closed::ByPeer,
                Ok(_) => {}
                Err(_) => break Closed::ReadError,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {
                if !idle {
                    break Closed::Stalled;
                }
                if !shared.lock().server.has_allocation(&tuple) {
                    break Closed::Idle;
                }
                // An allocation keeps the connection; its own lifetime ends it.
                last_message = Some(Instant::now());
            },
            _ = stopped.changed() => break Closed::Shutdown,
        }
    };
    tracing::debug!(client = %tuple.client, transport = ?tuple.transport, ?reason, "connection closed");
    shared.unregister_stream(&tuple);
    writer.abort();
    let transmits = {
        let mut state = shared.lock();
        state.server.handle_connection_closed(tuple);
        drain_outputs(&shared, &mut state)
    };
    shared.transmit(transmits);
}

async fn handle_message(shared: &Arc<Shared>, tuple: FiveTuple, message: &[u8]) {
    let (forward, transmits) = {
        let mut state = shared.lock();
        let forward = state
            .server
            .handle_client_packet(Instant::now(), tuple, message)
            .and_then(|to_peer| {
                let relay = state.relays.get(&to_peer.relay)?.socket.clone();
                Some((relay, to_peer.peer, to_peer.payload))
            });
        (forward, drain_outputs(shared, &mut state))
    };
    if let Some((relay, peer, payload)) = forward {
        if let Err(error) = relay.send_to(payload, peer).await {
            tracing::debug!(%peer, %error, "send to peer failed");
        }
    }
    shared.transmit(transmits);
}

async fn write_queue<W: AsyncWrite>(writer: W, mut queue: mpsc::Receiver<Vec<u8>>) {
    tokio::pin!(writer);
    while let Some(bytes) = queue.recv().await {
        if writer.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// Binds a TCP listener on `addr` (IPv6-only for IPv6, so it can share a port number with
/// an IPv4 listener).
pub(super) fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
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
