//! The I/O layer: tokio sockets around the sans-IO [`turn::Server`].
//!
//! One `turn::Server` sits behind a mutex that is held only for the synchronous core call
//! (never across an `.await`). Tasks:
//! - one per UDP listener: receive, hand the packet to the core, forward or answer;
//! - one per TCP/TLS listener, and one per connection (see [`stream`]);
//! - one per relay socket: receive from peers, hand to the core, send to the client;
//! - one timer task that drives expiry.
//!
//! This is the portable data plane; the batched thread-per-core one replaces the inner
//! loops without touching the core.

mod address;
mod http;
mod limits;
mod relay;
mod stream;
mod tls;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, RelayFamily};
use crate::turn::{
    self, DefaultFamily, FiveTuple, Output, PeerPolicy, RelayAddress, ServerConfig, Stats,
    Transport,
};

pub use address::resolve_relay_addresses;

/// A running server. Dropping it does not stop the server; call [`Handle::shutdown`].
pub struct Handle {
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    signal_addr: Option<SocketAddr>,
    relays: Vec<RelayAddress>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    /// The bound UDP listener addresses (with port 0 resolved).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The bound TCP listener addresses: the same addresses and ports as UDP.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The bound TLS listener addresses (empty without `[tls]`).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// The bound address of the call page and signaling (None when `[signal]` is off).
    pub fn signal_addr(&self) -> Option<SocketAddr> {
        self.signal_addr
    }

    /// Where relay sockets bind and what clients are told, one per IP family.
    pub fn relay_addresses(&self) -> &[RelayAddress] {
        &self.relays
    }

    /// A snapshot of the core's counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().server.stats().clone()
    }

    /// Stops every task and closes every socket.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        let relays = std::mem::take(&mut self.shared.lock().relays);
        for (_, relay) in relays {
            relay.task.abort();
        }
    }
}

/// Binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Handle> {
    config.validate()?;
    let relays = resolve_relay_addresses(&config)?;
    let tls = config.tls.as_ref().map(tls::acceptor).transpose()?;
    let (udp_sockets, udp_addrs) = udp::bind_listeners(&config.listen)?;
    // TCP listens on exactly the UDP addresses, ports included (port 0 resolved by UDP).
    let tcp_listeners = udp_addrs
        .iter()
        .map(|&addr| {
            stream::bind_tcp(addr).with_context(|| {
                format!("cannot listen on TCP {addr} (config key `listen`): is another server using the port?")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tls_listeners = match tls {
        None => Vec::new(),
        Some(_) => config
            .tls_listen
            .iter()
            .filter_map(|&addr| match stream::bind_tcp(addr) {
                Ok(listener) => Some(Ok(listener)),
                Err(error) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                    tracing::warn!(%addr, %error, "no IPv6 on this host; skipping this TLS listener");
                    None
                }
                Err(error) => Some(Err(anyhow::Error::new(error).context(format!(
                    "cannot listen on TLS {addr} (config key `tls-listen`): is another server using the port?"
                )))),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let tcp_addrs = local_addrs(&tcp_listeners)?;
    let tls_addrs = local_addrs(&tls_listeners)?;
    let signal_listener = config
        .signal
        .enabled
        .then(|| {
            stream::bind_tcp(config.signal.listen).with_context(|| {
                format!(
                    "cannot listen for HTTP on {} (config key `signal.listen`): is another server using the port?",
                    config.signal.listen
                )
            })
        })
        .transpose()?;
    let signal_addr = signal_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;

    let server = turn::Server::new(
        core_config(&config, &relays),
        Instant::now(),
        unix_now(),
        random_u64()?,
        random_key()?,
    );
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            server,
            relays: HashMap::new(),
        }),
        listeners: udp_sockets
            .iter()
            .map(|s| Ok((s.local_addr()?, s.clone())))
            .collect::<std::io::Result<_>>()?,
        streams: Mutex::new(HashMap::new()),
    });
    let limits =
        limits::ConnectionLimits::new(config.connections.max, config.connections.max_per_ip);
    let mut tasks: Vec<JoinHandle<()>> = udp_sockets
        .into_iter()
        .map(|socket| tokio::spawn(udp::serve(shared.clone(), socket, stopped.clone())))
        .collect();
    let stream_listeners = tcp_listeners
        .into_iter()
        .map(|l| (l, None))
        .chain(tls_listeners.into_iter().map(|l| (l, tls.clone())));
    for (listener, acceptor) in stream_listeners {
        tasks.push(tokio::spawn(stream::accept(
            shared.clone(),
            listener,
            acceptor,
            limits.clone(),
            config.connections.clone(),
            stopped.clone(),
        )));
    }
    if let Some(listener) = signal_listener {
        // The page must point browsers at the ports actually bound (port 0 in tests).
        let mut bound = config.clone();
        bound.listen = udp_addrs.clone();
        bound.tls_listen = tls_addrs.clone();
        let hub = http::Hub::new(&bound, random_u64()?);
        tasks.push(tokio::spawn(http::serve(
            listener,
            tls.clone(),
            hub,
            stopped.clone(),
        )));
    }
    tasks.push(tokio::spawn(drive_timers(shared.clone(), stopped)));
    tracing::info!(
        udp = ?udp_addrs,
        tcp = ?tcp_addrs,
        tls = ?tls_addrs,
        signal = ?signal_addr,
        relays = ?relays,
        ports = %config.relay_ports,
        "rendez serving STUN/TURN"
    );
    Ok(Handle {
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        signal_addr,
        relays,
        shared,
        stop,
        tasks,
    })
}

/// Runs until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let handle = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// The TURN core's view of the configuration.
fn core_config(config: &Config, relays: &[RelayAddress]) -> ServerConfig {
    let mut core = ServerConfig::new(&config.realm, relays[0], config.relay_ports.0.clone());
    core.relays = relays.to_vec();
    core.default_family = match config.default_relay_family {
        RelayFamily::Ipv4 => DefaultFamily::Ipv4,
        RelayFamily::Ipv6 => DefaultFamily::Ipv6,
        RelayFamily::MatchClient => DefaultFamily::MatchClient,
    };
    core.users = config.static_users();
    core.secrets = config.auth.secrets.clone();
    core.peers = PeerPolicy::new(config.peers.allow.clone(), config.peers.deny.clone());
    core
}

/// State shared by the socket tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// UDP listener sockets by local address, to answer a client on the socket it used.
    listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
    /// Outgoing queues of TCP/TLS connections.
    streams: Mutex<HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>>,
}

pub(crate) struct State {
    pub server: turn::Server,
    pub relays: HashMap<SocketAddr, relay::RelaySocket>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the core; keep serving with
        // its state rather than take every socket task down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn streams(&self) -> MutexGuard<'_, HashMap<FiveTuple, mpsc::Sender<Vec<u8>>>> {
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn register_stream(&self, tuple: FiveTuple, queue: mpsc::Sender<Vec<u8>>) {
        self.streams().insert(tuple, queue);
    }

    pub(crate) fn unregister_stream(&self, tuple: &FiveTuple) {
        self.streams().remove(tuple);
    }

    /// Sends `bytes` to a client: on the UDP listener it used, or queued on its connection.
    pub(crate) async fn send_to_client(&self, to: FiveTuple, bytes: &[u8]) {
        if to.transport == Transport::Udp {
            let Some(socket) = self.listeners.get(&to.server) else {
                return;
            };
            if let Err(error) = socket.send_to(bytes, to.client).await {
                tracing::debug!(client = %to.client, %error, "send to client failed");
            }
            return;
        }
        let queue = self.streams().get(&to).cloned();
        if let Some(queue) = queue {
            // A full queue means the client reads slower than its peers send: drop.
            let _ = queue.try_send(bytes.to_vec());
        }
    }

    pub(crate) async fn transmit(&self, transmits: Vec<(FiveTuple, Vec<u8>)>) {
        for (to, bytes) in transmits {
            self.send_to_client(to, &bytes).await;
        }
    }
}

/// Carries out the core's queued outputs that need the lock (binding and releasing relay
/// sockets) and returns the transmissions, to be sent after the lock is released.
pub(crate) fn drain_outputs(shared: &Arc<Shared>, state: &mut State) -> Vec<(FiveTuple, Vec<u8>)> {
    let mut transmits = Vec::new();
    while let Some(output) = state.server.poll_output() {
        match output {
            Output::Transmit { to, bytes } => transmits.push((to, bytes)),
            Output::BindRelay { relay } => {
                let bound = match relay::RelaySocket::bind(shared.clone(), relay) {
                    Ok(socket) => {
                        state.relays.insert(relay, socket);
                        true
                    }
                    Err(error) => {
                        tracing::debug!(%relay, %error, "relay port unavailable");
                        false
                    }
                };
                state
                    .server
                    .handle_relay_bound(Instant::now(), relay, bound);
            }
            Output::ReleaseRelay { relay } => {
                if let Some(socket) = state.relays.remove(&relay) {
                    socket.task.abort();
                }
            }
        }
    }
    transmits
}

/// Wakes the core when a deadline passes, and at least once a second to keep its wall
/// clock anchored.
async fn drive_timers(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    const MAX_SLEEP: Duration = Duration::from_secs(1);
    loop {
        let now = Instant::now();
        let deadline = shared
            .lock()
            .server
            .poll_timeout()
            .map_or(now + MAX_SLEEP, |at| at.min(now + MAX_SLEEP));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = stopped.changed() => return,
        }
        let transmits = {
            let mut state = shared.lock();
            let now = Instant::now();
            state.server.set_wall_clock(now, unix_now());
            state.server.handle_timeout(now);
            drain_outputs(&shared, &mut state)
        };
        shared.transmit(transmits).await;
    }
}

fn local_addrs(listeners: &[tokio::net::TcpListener]) -> std::io::Result<Vec<SocketAddr>> {
    listeners.iter().map(|l| l.local_addr()).collect()
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_u64() -> anyhow::Result<u64> {
    let mut seed = [0u8; 8];
    fill_random(&mut seed)?;
    Ok(u64::from_le_bytes(seed))
}

fn random_key() -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    fill_random(&mut key)?;
    Ok(key)
}

fn fill_random(bytes: &mut [u8]) -> anyhow::Result<()> {
    SystemRandom::new()
        .fill(bytes)
        .map_err(|_| anyhow::anyhow!("the OS random number generator failed"))
}
