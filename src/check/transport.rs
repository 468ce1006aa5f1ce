//! How the check's messages travel: a connected UDP socket, or a TCP or TLS stream cut into
//! messages by their length fields; and request/response transactions over either, with
//! the RFC's retransmissions on UDP.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use crate::stun::{stream_frame, Class, Frame, Message, TransactionId};

/// Largest datagram read; the check's own messages and echoes are far smaller.
const MAX_DATAGRAM: usize = 4096;

/// Something that carries whole STUN messages to one server and back.
pub trait Wire {
    /// Sends one message.
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// The next message from the server (cancel-safe: a message is never half-consumed).
    async fn recv(&mut self) -> io::Result<Vec<u8>>;
    /// Whether delivery may silently fail, so requests are retransmitted (RFC 8489 §6.2.1).
    fn is_lossy(&self) -> bool;
}

/// The check's connection to the server.
pub enum Connection {
    /// Connected, so an ICMP "port unreachable" comes back as `ConnectionRefused`.
    Udp(UdpSocket),
    Stream {
        stream: Box<dyn Duplex>,
        /// Bytes read but not yet cut into a message; at most one message plus one read.
        buffer: Vec<u8>,
    },
}

/// A byte stream: TCP or TLS over TCP.
pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

impl Connection {
    /// A UDP socket of `server`'s family, connected to it.
    pub async fn udp(server: SocketAddr) -> io::Result<Self> {
        let socket = UdpSocket::bind(unspecified(server)).await?;
        socket.connect(server).await?;
        Ok(Connection::Udp(socket))
    }

    pub fn stream(stream: impl Duplex + 'static) -> Self {
        Connection::Stream {
            stream: Box::new(stream),
            buffer: Vec::new(),
        }
    }
}

impl Wire for Connection {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Connection::Udp(socket) => socket.send(bytes).await.map(drop),
            Connection::Stream { stream, .. } => {
                stream.write_all(bytes).await?;
                stream.flush().await
            }
        }
    }

    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        match self {
            Connection::Udp(socket) => {
                let mut datagram = vec![0u8; MAX_DATAGRAM];
                let len = socket.recv(&mut datagram).await?;
                datagram.truncate(len);
                Ok(datagram)
            }
            Connection::Stream { stream, buffer } => loop {
                match stream_frame(buffer) {
                    Frame::Complete(len) => return Ok(buffer.drain(..len).collect()),
                    Frame::Invalid => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "the server sent bytes that are neither STUN nor ChannelData",
                        ))
                    }
                    Frame::Incomplete => {}
                }
                let mut chunk = [0u8; MAX_DATAGRAM];
                // `read` is cancel-safe, and the buffer only grows after it completes.
                let read = stream.read(&mut chunk).await?;
                if read == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                buffer.extend_from_slice(&chunk[..read]);
            },
        }
    }

    fn is_lossy(&self) -> bool {
        matches!(self, Connection::Udp(_))
    }
}

/// An unconnected UDP socket talking to one address: the check's peer asking the server
/// for its own public address. It stays unconnected so it can later receive the relay's
/// echo from any source, and see where that really came from.
pub struct UdpTo<'a> {
    pub socket: &'a UdpSocket,
    pub server: SocketAddr,
}

impl Wire for UdpTo<'_> {
    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.socket.send_to(bytes, self.server).await.map(drop)
    }

    async fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut datagram = vec![0u8; MAX_DATAGRAM];
        loop {
            let (len, from) = self.socket.recv_from(&mut datagram).await?;
            if from == self.server {
                datagram.truncate(len);
                return Ok(datagram);
            }
        }
    }

    fn is_lossy(&self) -> bool {
        true
    }
}

/// Why a transaction produced no response.
#[derive(Debug)]
pub enum TransactError {
    /// Nothing answered within the time allowed.
    NoAnswer,
    /// The socket or stream failed: refused, reset, closed, not STUN.
    Io(io::Error),
}

/// Sends `request` and returns the response with the same transaction id, waiting at most
/// `timeout`. On a lossy wire the request is sent again on the RFC's schedule. Anything
/// else that arrives meanwhile (a stray indication, a late answer to an earlier request) is
/// skipped.
pub async fn transact(
    wire: &mut impl Wire,
    request: &[u8],
    transaction_id: TransactionId,
    timeout: Duration,
) -> Result<Vec<u8>, TransactError> {
    let deadline = Instant::now() + timeout;
    let mut resend = Resend::starting_at(Instant::now(), wire.is_lossy());
    loop {
        if resend.is_due(Instant::now()) {
            wire.send(request).await.map_err(TransactError::Io)?;
        }
        let wake = resend.next_at().map_or(deadline, |next| next.min(deadline));
        match tokio::time::timeout_at(wake, wire.recv()).await {
            Ok(Ok(bytes)) => {
                let answers = Message::parse(&bytes).is_ok_and(|m| {
                    m.transaction_id() == transaction_id
                        && matches!(m.class(), Class::Success | Class::Error)
                });
                if answers {
                    return Ok(bytes);
                }
            }
            Ok(Err(error)) => return Err(TransactError::Io(error)),
            Err(_) if Instant::now() >= deadline => return Err(TransactError::NoAnswer),
            Err(_) => {}
        }
    }
}

/// When to send something again over a lossy path: RTO 500 ms, doubling, at most 7 sends
/// (RFC 8489 §6.2.1). On a reliable wire: once.
pub struct Resend {
    next: Instant,
    interval: Duration,
    sends_left: u8,
}

impl Resend {
    const INITIAL_RTO: Duration = Duration::from_millis(500);
    const MAX_SENDS: u8 = 7;

    pub fn starting_at(now: Instant, lossy: bool) -> Self {
        Self {
            next: now,
            interval: Self::INITIAL_RTO,
            sends_left: if lossy { Self::MAX_SENDS } else { 1 },
        }
    }

    /// Whether to send at `now`; moves the schedule on when it says yes.
    pub fn is_due(&mut self, now: Instant) -> bool {
        if self.sends_left == 0 || now < self.next {
            return false;
        }
        self.sends_left -= 1;
        self.next += self.interval;
        self.interval *= 2;
        true
    }

    /// When the next send is due; `None` once every send is spent.
    pub fn next_at(&self) -> Option<Instant> {
        (self.sends_left > 0).then_some(self.next)
    }
}

/// The wildcard address of `addr`'s family, port 0.
pub fn unspecified(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lossy_schedule_doubles_and_stops_after_seven_sends() {
        let start = Instant::now();
        let mut resend = Resend::starting_at(start, true);
        let sent_at: Vec<u128> = (0..200u64)
            .map(|tick| start + Duration::from_millis(250 * tick))
            .filter(|&now| resend.is_due(now))
            .map(|now| (now - start).as_millis())
            .collect();
        assert_eq!(sent_at, [0, 500, 1500, 3500, 7500, 15500, 31500]);
        assert_eq!(resend.next_at(), None);
    }

    #[test]
    fn reliable_wire_sends_once() {
        let start = Instant::now();
        let mut resend = Resend::starting_at(start, false);
        assert!(resend.is_due(start));
        assert!(!resend.is_due(start + Duration::from_secs(10)));
        assert_eq!(resend.next_at(), None);
    }
}
