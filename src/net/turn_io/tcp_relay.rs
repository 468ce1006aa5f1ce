//! The sockets of RFC 6062 TCP relays: a TCP allocation's listening socket, connections to
//! peers made from its port, and the byte pump of a bound pair.
//!
//! The core decides everything (see `turn::tcp_relay`); this module only does what the
//! stream shard asks. Peer connections wait unread until they are bound, so what a peer
//! sends early stays in the kernel, under TCP's flow control. A bound pair is pumped by
//! the data connection's own task: each direction reads into one fixed buffer and writes
//! it all out before it reads again, so a slow side stops the other from being read and
//! memory per relay is bounded.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use super::stream_shard::Input;
use crate::turn::{ConnectionId, PeerAddr, RelayAddr, BANDWIDTH_BURST};

/// Connections a relay's listening socket lets the kernel queue before we accept them.
const LISTEN_BACKLOG: i32 = 128;
/// Bytes each direction of a relay reads at once: the most a relay holds in memory.
const PUMP_BUFFER: usize = 16 * 1024;

/// Bytes relayed by every TCP relay of a shard, counted as they go.
#[derive(Debug, Default)]
pub(crate) struct TcpRelayCounters {
    to_peers: AtomicU64,
    to_clients: AtomicU64,
}

/// A snapshot of [`TcpRelayCounters`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TcpRelayBytes {
    pub to_peers: u64,
    pub to_clients: u64,
}

impl TcpRelayCounters {
    pub fn read(&self) -> TcpRelayBytes {
        TcpRelayBytes {
            to_peers: self.to_peers.load(Ordering::Relaxed),
            to_clients: self.to_clients.load(Ordering::Relaxed),
        }
    }
}

/// What a data connection's task needs to become a relay: the peer's connection, and a
/// receiver that ends the relay when the shard drops its sender (the allocation ended).
pub(crate) struct Bridge {
    pub peer: TcpStream,
    pub stop: oneshot::Receiver<()>,
    pub counters: Arc<TcpRelayCounters>,
    pub pace: Arc<Pace>,
}

/// `bandwidth-per-allocation` for an allocation's TCP relays, shared by all of them: one
/// token bucket each way, with the burst of UDP relays (`turn::meter`). A relayed stream
/// cannot drop bytes as a UDP relay drops datagrams, so a relay over its rate waits
/// before it writes what it read, and reads nothing meanwhile: TCP's flow control slows
/// the sender down.
pub(crate) struct Pace {
    bytes_per_second: u64,
    /// When everything admitted so far will have drained at the rate, each way.
    to_peers: Mutex<Instant>,
    to_clients: Mutex<Instant>,
}

impl Pace {
    /// `bytes_per_second` 0: no limit.
    pub fn new(bytes_per_second: u64) -> Self {
        let now = Instant::now();
        Self {
            bytes_per_second,
            to_peers: Mutex::new(now),
            to_clients: Mutex::new(now),
        }
    }

    /// How long to wait before sending `bytes` more through `paid_until`'s direction.
    fn wait_for(&self, paid_until: &Mutex<Instant>, bytes: usize) -> Duration {
        let Some(nanos) = (bytes as u64)
            .saturating_mul(1_000_000_000)
            .checked_div(self.bytes_per_second)
        else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut paid_until = paid_until.lock().unwrap_or_else(|e| e.into_inner());
        *paid_until = (*paid_until).max(now) + Duration::from_nanos(nanos);
        paid_until
            .saturating_duration_since(now)
            .saturating_sub(BANDWIDTH_BURST)
    }
}

/// Where the shard keeps a peer connection, by its id, until the core closes it; dropping
/// it closes the connection whatever it was doing.
pub(crate) enum PeerSide {
    /// The connection is being opened by this task.
    Connecting { _attempt: AbortOnDrop },
    /// Open and unread, waiting for its ConnectionBind.
    Waiting(TcpStream),
    /// Handed to a data connection's task; dropping this sender ends that relay.
    Relaying { _stop: oneshot::Sender<()> },
}

/// A task that ends when this handle is dropped: a relay's accept loop, a connect attempt.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A TCP allocation's listening socket on `relay`.
///
/// It has `SO_REUSEPORT` so that Connect can open connections from the same port (RFC 6062
/// §5.2: "the local endpoint is the relayed transport address"). `SO_REUSEPORT` would
/// also let another program's socket share the port, so first a plain bind checks that
/// nobody listens there: a port someone else holds is [`io::ErrorKind::AddrInUse`], and
/// the core tries another.
pub(crate) fn listen(relay: RelayAddr) -> io::Result<TcpListener> {
    drop(tcp_socket(relay.0, false)?);
    let socket = tcp_socket(relay.0, true)?;
    socket.listen(LISTEN_BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Accepts peers' connections on a relay's listening socket and hands each to the shard,
/// which asks the core whether to keep it.
pub(crate) async fn accept_peers(
    listener: TcpListener,
    relay: RelayAddr,
    input: mpsc::Sender<Input>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let arrived = Input::PeerArrived {
                    relay,
                    peer: PeerAddr(peer),
                    stream,
                };
                if input.send(arrived).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                // Out of file descriptors and similar: back off instead of spinning.
                tracing::debug!(%relay, %error, "relay accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Opens a connection from `relay` to `peer` and reports the outcome to the shard. The
/// core bounds how long it may take (it closes the attempt, aborting this task).
pub(crate) async fn connect_peer(
    connection: ConnectionId,
    relay: RelayAddr,
    peer: PeerAddr,
    input: mpsc::Sender<Input>,
) {
    let outcome = connect_from(relay.0, peer.0).await;
    if let Err(error) = &outcome {
        tracing::debug!(%relay, %peer, %error, "connect to peer failed");
    }
    let _ = input
        .send(Input::PeerConnected {
            connection,
            stream: outcome.ok(),
        })
        .await;
}

async fn connect_from(relay: SocketAddr, peer: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::from_std_stream(tcp_socket(relay, true)?.into());
    let stream = socket.connect(peer).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A nonblocking TCP socket bound to `addr` with `SO_REUSEADDR` (a relay port's old
/// connections may linger in TIME_WAIT) and, if `share`, `SO_REUSEPORT`.
fn tcp_socket(addr: SocketAddr, share: bool) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    if share {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Relays bytes between a client's data connection (its two halves) and its peer until
/// both directions end, the relay is stopped (the shard dropped its sender) or the server
/// stops. `early` is what the client sent after its ConnectionBind, read before the relay
/// began: it goes to the peer first. An end of stream on one side is passed on as a
/// half-close to the other, so a peer that answers and then closes gets its answer
/// through.
pub(crate) async fn relay<R, W>(
    client_reader: R,
    client_writer: W,
    early: &[u8],
    bridge: Bridge,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    let Bridge {
        peer,
        mut stop,
        counters,
        pace,
    } = bridge;
    let (peer_reader, mut peer_writer) = peer.into_split();
    let both = async {
        peer_writer.write_all(early).await?;
        counters
            .to_peers
            .fetch_add(early.len() as u64, Ordering::Relaxed);
        let to_peer = pump(client_reader, peer_writer, &counters.to_peers, |bytes| {
            pace.wait_for(&pace.to_peers, bytes)
        });
        let to_client = pump(peer_reader, client_writer, &counters.to_clients, |bytes| {
            pace.wait_for(&pace.to_clients, bytes)
        });
        tokio::try_join!(to_peer, to_client).map(|_| ())
    };
    tokio::select! {
        done = both => done,
        _ = &mut stop => Ok(()),
        _ = stopped.changed() => Ok(()),
    }
}

/// Copies `from` to `to` until `from` ends, then half-closes `to`; before writing what it
/// read, waits as long as `pace` says.
async fn pump<R, W>(
    from: R,
    to: W,
    counter: &AtomicU64,
    pace: impl Fn(usize) -> Duration,
) -> io::Result<()>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    tokio::pin!(from);
    tokio::pin!(to);
    let mut buffer = vec![0u8; PUMP_BUFFER];
    loop {
        let read = from.read(&mut buffer).await?;
        if read == 0 {
            return to.shutdown().await;
        }
        let wait = pace(read);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        to.write_all(&buffer[..read]).await?;
        counter.fetch_add(read as u64, Ordering::Relaxed);
    }
}
