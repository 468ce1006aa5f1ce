//! rendez-forwarder: the machine's ceiling for a relayed UDP round trip, with no STUN.
//!
//! It walks the same path as a TURN relay: a client sends to the listening socket, the
//! forwarder sends the payload from a per-client "relay" socket to one fixed peer, and
//! whatever the peer sends back to that relay socket goes to the client from the listening
//! socket. So one round trip costs two receives and two sends, like ChannelData through a
//! TURN server, but without parsing, permissions or channel lookups — only a hash map from
//! client address to relay socket, created on a client's first packet. Batched with
//! recvmmsg/sendmmsg on one thread (the counterpart of a one-worker server), through the same
//! `rendez::net::batch` layer as rendez's UDP workers.
//!
//! With `--echo` it is the ceiling of a request/response server instead (the Binding
//! scenario): every datagram goes straight back to its sender, one receive and one send.
//!
//! Loopback only and bounded: it refuses non-loopback addresses and exits by itself after
//! `--duration` seconds (or when killed).
//!
//! ```text
//! rendez-forwarder --listen 127.0.0.1:3600 --peer 127.0.0.1:3601 --duration 120
//! rendez-loadgen --mode raw --server 127.0.0.1:3600 --peer 127.0.0.1:3601 ...
//! rendez-forwarder --listen 127.0.0.1:3600 --echo
//! rendez-loadgen --mode echo --server 127.0.0.1:3600 --size 20 ...
//! ```

mod udp_sockets;

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rendez::net::batch::{send_until_full, Outgoing, RecvBatch, BATCH};
use udp_sockets::{bind_udp, recv_batch, Epoll};

/// Command-line options.
#[derive(Parser, Debug)]
#[command(
    about = "Minimal batched UDP forwarder (loopback only): the ceiling line of benches/compare.sh"
)]
struct Args {
    /// Where clients send.
    #[arg(long, default_value = "127.0.0.1:3600")]
    listen: SocketAddrV4,
    /// The one peer every client's packets go to (the load generator's echo peer).
    #[arg(long, required_unless_present = "echo")]
    peer: Option<SocketAddrV4>,
    /// Send every datagram back to its sender instead of forwarding it.
    #[arg(long, conflicts_with = "peer")]
    echo: bool,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Datagrams per recvmmsg call (at most rendez's batch, 32).
    #[arg(long, default_value_t = BATCH)]
    batch: usize,
    /// At most this many relay sockets (clients).
    #[arg(long, default_value_t = 20_000)]
    max_clients: usize,
}

/// Epoll token of the listening socket; relay `i` has token `i + 1`.
const LISTEN_TOKEN: u64 = 0;

/// Filler for the fixed-size send arrays (no heap allocation per batch).
const EMPTY: Outgoing<'static> = (
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    &[],
);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() || args.peer.is_some_and(|p| !p.ip().is_loopback()) {
        bail!("the forwarder runs on loopback only (127.0.0.0/8)");
    }
    if !(0.0..=3600.0).contains(&args.duration) {
        bail!("--duration must be between 0 and 3600 seconds");
    }
    let mut forwarder = Forwarder::new(&args)?;
    forwarder.run(Instant::now() + Duration::from_secs_f64(args.duration))
}

/// One client's relay socket.
struct Relay {
    socket: UdpSocket,
    client: SocketAddr,
}

struct Forwarder {
    listen: UdpSocket,
    /// Relay sockets bind here, beside the listening socket.
    listen_ip: Ipv4Addr,
    /// None in echo mode.
    peer: Option<SocketAddr>,
    batch: usize,
    max_clients: usize,
    relays: Vec<Relay>,
    relay_of: HashMap<SocketAddr, usize>,
    epoll: Epoll,
    received: RecvBatch,
}

impl Forwarder {
    fn new(args: &Args) -> anyhow::Result<Self> {
        let listen = bind_udp(args.listen).with_context(|| format!("bind {}", args.listen))?;
        let epoll = Epoll::new()?;
        epoll.add(listen.as_raw_fd(), LISTEN_TOKEN)?;
        Ok(Self {
            listen,
            listen_ip: *args.listen.ip(),
            peer: args.peer.map(SocketAddr::V4),
            batch: args.batch,
            max_clients: args.max_clients,
            relays: Vec::new(),
            relay_of: HashMap::new(),
            epoll,
            received: recv_batch(),
        })
    }

    fn run(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut ready = Vec::with_capacity(1024);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            self.epoll.wait(left.min(Duration::from_millis(100)))?;
            ready.clear();
            ready.extend(self.epoll.tokens());
            for &token in &ready {
                match token {
                    LISTEN_TOKEN if self.peer.is_none() => self.echo_to_clients()?,
                    LISTEN_TOKEN => self.forward_from_clients()?,
                    relay => self.forward_from_peer(relay as usize - 1),
                }
            }
        }
        Ok(())
    }

    /// Client → relay socket → peer. Consecutive datagrams of one client leave in one
    /// sendmmsg from its relay socket.
    fn forward_from_clients(&mut self) -> anyhow::Result<()> {
        let count = self.receive_from_clients()?;
        let Some(peer) = self.peer else {
            return Ok(());
        };
        let mut run_start = 0;
        while run_start < count {
            let Some((client, _)) = self.received.received(run_start) else {
                run_start += 1;
                continue;
            };
            let mut run_end = run_start + 1;
            while run_end < count
                && self
                    .received
                    .received(run_end)
                    .is_some_and(|(from, _)| from == client)
            {
                run_end += 1;
            }
            if let Some(relay) = self.relay_for(client)? {
                let mut datagrams = [EMPTY; BATCH];
                for (slot, i) in datagrams.iter_mut().zip(run_start..run_end) {
                    if let Some((_, payload)) = self.received.received(i) {
                        *slot = (peer, payload);
                    }
                }
                // A full socket buffer drops, as a relay would.
                let sends = &datagrams[..run_end - run_start];
                let _ = send_until_full(&self.relays[relay].socket, sends);
            }
            run_start = run_end;
        }
        Ok(())
    }

    /// Echo mode: client → listening socket → the same client.
    fn echo_to_clients(&mut self) -> anyhow::Result<()> {
        let count = self.receive_from_clients()?;
        let mut datagrams = [EMPTY; BATCH];
        let mut echoes = 0;
        for datagram in (0..count).filter_map(|i| self.received.received(i)) {
            datagrams[echoes] = datagram;
            echoes += 1;
        }
        let _ = send_until_full(&self.listen, &datagrams[..echoes]);
        Ok(())
    }

    /// One batch from the listening socket: how many arrived (0 when none waited).
    fn receive_from_clients(&mut self) -> io::Result<usize> {
        match self.received.recv_at_most(&self.listen, self.batch) {
            Ok(count) => Ok(count),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Peer → relay socket → listening socket → client.
    fn forward_from_peer(&mut self, relay: usize) {
        let Some(Relay { socket, client }) = self.relays.get(relay) else {
            return;
        };
        let Ok(count) = self.received.recv_at_most(socket, self.batch) else {
            return;
        };
        let mut datagrams = [EMPTY; BATCH];
        let mut sends = 0;
        for (_, payload) in (0..count).filter_map(|i| self.received.received(i)) {
            datagrams[sends] = (*client, payload);
            sends += 1;
        }
        let _ = send_until_full(&self.listen, &datagrams[..sends]);
    }

    /// The relay socket of `client`, bound on its first packet (None past `max_clients`).
    fn relay_for(&mut self, client: SocketAddr) -> anyhow::Result<Option<usize>> {
        if let Some(&relay) = self.relay_of.get(&client) {
            return Ok(Some(relay));
        }
        if self.relays.len() >= self.max_clients {
            return Ok(None);
        }
        let socket = bind_udp(SocketAddrV4::new(self.listen_ip, 0))?;
        let relay = self.relays.len();
        self.epoll.add(socket.as_raw_fd(), relay as u64 + 1)?;
        self.relays.push(Relay { socket, client });
        self.relay_of.insert(client, relay);
        Ok(Some(relay))
    }
}
