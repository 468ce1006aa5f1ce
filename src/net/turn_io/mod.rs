//! TURN's I/O: UDP workers (each owning a shard, its listeners and its relay sockets),
//! the TCP/TLS connections and the shard task that owns their core, relay sockets, and the
//! batched system calls underneath.

pub mod batch;
#[cfg(target_os = "linux")]
mod pktinfo;
mod sockets;
pub(crate) mod stream;
pub(crate) mod stream_shard;
mod tcp_relay;
pub(crate) mod udp;
pub(crate) mod worker;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::net::xdp::XdpFigures;
use crate::turn::{Gauges, Server, ServerConfig, Stats};

/// Orders from the rest of the server to a shard, carried out between its inputs.
#[derive(Clone)]
pub(crate) enum Control {
    /// A reload: new credentials, policy, limits and alternates (see
    /// [`Server::reconfigure`]), and the nonce key (see [`Server::set_nonce_key`]).
    Reconfigure {
        core: Box<ServerConfig>,
        nonce_key: [u8; 32],
    },
    /// Refuse new allocations from now on (see [`Server::start_draining`]).
    Drain,
}

impl Control {
    fn apply(self, server: &mut Server) {
        match self {
            Control::Reconfigure { core, nonce_key } => {
                server.reconfigure(&core);
                server.set_nonce_key(&nonce_key);
                // A narrower peer policy or a new bandwidth limit may end some channels'
                // fast path (the caller drives the core next).
                server.reconsider_fast_path(Instant::now());
            }
            Control::Drain => server.start_draining(),
        }
    }
}

/// A shard's figures as the rest of the server reads them.
#[derive(Clone, Debug, Default)]
pub(crate) struct Figures {
    pub stats: Stats,
    pub gauges: Gauges,
    pub io: IoDrops,
    /// Bytes relayed by TCP relays (RFC 6062), which the I/O layer pumps itself.
    pub tcp_relayed: tcp_relay::TcpRelayBytes,
    /// A UDP worker's share of the kernel fast path.
    pub xdp: XdpFigures,
}

/// Datagrams the core relayed that the I/O layer could not deliver (each also has a
/// debug log line).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct IoDrops {
    /// The kernel refused a send (a full socket buffer, an unreachable peer).
    pub send_failed: u64,
    /// A TCP/TLS client's outgoing queue was full: it reads slower than its peers send.
    pub client_backlog: u64,
}

/// Where a shard publishes its [`Figures`]; read by metrics, the status line and tests.
#[derive(Clone, Default)]
pub(crate) struct PublishedFigures(Arc<Mutex<Figures>>);

impl PublishedFigures {
    pub fn read(&self) -> Figures {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Publishes the counters, and the gauges too when `gauges` is given (they cost a walk
    /// over the allocations, so shards refresh them less often).
    fn publish(&self, server: &Server, io: IoDrops, gauges: bool) {
        let gauges = gauges.then(|| server.gauges());
        let mut figures = self.0.lock().unwrap_or_else(|p| p.into_inner());
        figures.stats.clone_from(server.stats());
        figures.io = io;
        if let Some(gauges) = gauges {
            figures.gauges = gauges;
        }
    }

    /// Publishes a UDP worker's share of the kernel fast path.
    fn publish_xdp(&self, xdp: XdpFigures) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).xdp = xdp;
    }

    /// Publishes the bytes TCP relays have pumped so far.
    fn publish_tcp_relayed(&self, bytes: tcp_relay::TcpRelayBytes) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).tcp_relayed = bytes;
    }
}
