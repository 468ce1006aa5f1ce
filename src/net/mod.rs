//! The I/O layer around the sans-IO cores.
//!
//! - UDP: `workers` threads (default: one per core), each a [`worker`] with its own
//!   `SO_REUSEPORT` listener sockets, its own [`turn::Server`] shard and its own relay
//!   sockets, driven by batched system calls. No lock on the packet path.
//! - TCP and TLS: tokio tasks (see [`stream`]) sharing one more `turn::Server` shard behind
//!   a mutex held only for the synchronous core call, never across an `.await`.
//! - HTTP and WebSocket signaling: tokio tasks (see [`http`]).
//!
//! Every shard gets its own slice of the relay port range, so ports never collide.

mod address;
pub mod batch;
mod http;
mod limits;
mod relay;
mod stream;
mod tls;
mod udp;
mod worker;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{Config, RelayFamily};
use crate::turn::{
    self, DefaultFamily, FiveTuple, Output, PeerPolicy, RelayAddress, ServerConfig, Stats,
};

pub use address::resolve_relay_addresses;

/// A running server. Dropping it stops the server without waiting; [`Handle::shutdown`]
/// stops it and waits until every socket is closed.
pub struct Handle {
    udp_addrs: Vec<SocketAddr>,
    tcp_addrs: Vec<SocketAddr>,
    tls_addrs: Vec<SocketAddr>,
    signal_addr: Option<SocketAddr>,
    relays: Vec<RelayAddress>,
    shared: Arc<Shared>,
    workers: Vec<worker::WorkerHandle>,
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

    /// The number of UDP worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Each UDP worker's counters, in worker order (at most 100 ms old).
    pub fn worker_stats(&self) -> Vec<Stats> {
        self.workers
            .iter()
            .map(worker::WorkerHandle::stats)
            .collect()
    }

    /// The counters of every shard, added up (UDP workers' are at most 100 ms old).
    pub fn stats(&self) -> Stats {
        let mut total = self.shared.lock().server.stats().clone();
        for worker in &self.workers {
            total.add(&worker.stats());
        }
        total
    }

    /// Stops every task and thread and closes every socket.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let workers = std::mem::take(&mut self.workers);
        let _ = tokio::task::spawn_blocking(move || {
            workers.into_iter().for_each(worker::WorkerHandle::stop)
        })
        .await;
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        let relays = std::mem::take(&mut self.shared.lock().relays);
        for (_, relay) in relays {
            relay.task.abort();
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for worker in &self.workers {
            worker.signal_stop();
        }
    }
}

/// Binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Handle> {
    config.validate()?;
    let relays = resolve_relay_addresses(&config)?;
    let tls = config.tls.as_ref().map(tls::turn_acceptor).transpose()?;
    let https = config.tls.as_ref().map(tls::http_acceptor).transpose()?;
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One slice of the relay ports per UDP worker, and one for TCP/TLS clients.
    let port_slices = split_ports(&config.relay_ports.0, workers + 1)?;
    let BoundListeners {
        udp_sets: listener_sets,
        udp_addrs,
        tcp: tcp_listeners,
    } = bind_udp_and_tcp(&config.listen, workers)?;
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

    // Every shard signs nonces with the same key, so a nonce from one is good at another.
    let nonce_key = random_key()?;
    let shard = |ports: &RangeInclusive<u16>| -> anyhow::Result<turn::Server> {
        let mut core = core_config(&config, &relays);
        core.relay_ports = ports.clone();
        Ok(turn::Server::new(
            core,
            Instant::now(),
            unix_now(),
            random_u64()?,
            nonce_key,
        ))
    };
    let mut worker_handles = Vec::with_capacity(workers);
    for (id, sockets) in listener_sets.into_iter().enumerate() {
        let server = shard(&port_slices[id])?;
        worker_handles.push(worker::spawn(id, server, sockets).context("starting a UDP worker")?);
    }
    let stream_server = shard(&port_slices[workers])?;

    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            server: stream_server,
            relays: HashMap::new(),
        }),
        streams: Mutex::new(HashMap::new()),
    });
    let limits =
        limits::ConnectionLimits::new(config.connections.max, config.connections.max_per_ip);
    let mut tasks = Vec::new();
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
        // The page server has caps of its own, so it cannot use up the TURN connections'.
        let http_limits =
            limits::ConnectionLimits::new(config.connections.max, config.connections.max_per_ip);
        tasks.push(tokio::spawn(http::serve(
            listener,
            https,
            hub,
            http_limits,
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
        workers,
        "rendez serving STUN/TURN"
    );
    Ok(Handle {
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        signal_addr,
        relays,
        shared,
        workers: worker_handles,
        stop,
        tasks,
    })
}

struct BoundListeners {
    /// One socket per listen address for each worker.
    udp_sets: Vec<Vec<std::net::UdpSocket>>,
    udp_addrs: Vec<SocketAddr>,
    tcp: Vec<tokio::net::TcpListener>,
}

/// UDP listener sets for the workers, and TCP listeners on exactly the same addresses and
/// ports. Port 0 is resolved by UDP; if TCP finds that port taken (the two port spaces are
/// separate), the whole set is bound again on another port.
fn bind_udp_and_tcp(listen: &[SocketAddr], workers: usize) -> anyhow::Result<BoundListeners> {
    const ATTEMPTS_WITH_PORT_ZERO: usize = 16;
    let any_port_zero = listen.iter().any(|a| a.port() == 0);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (sets, udp_addrs) = udp::bind_listener_sets(listen, workers)?;
        let tcp: Result<Vec<_>, _> = udp_addrs
            .iter()
            .map(|&addr| stream::bind_tcp(addr).map_err(|e| (addr, e)))
            .collect();
        match tcp {
            Ok(tcp) => {
                return Ok(BoundListeners {
                    udp_sets: sets,
                    udp_addrs,
                    tcp,
                })
            }
            Err((_, error))
                if any_port_zero
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS_WITH_PORT_ZERO => {}
            Err((addr, error)) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot listen on TCP {addr} (config key `listen`): is another server using the port?"
                )))
            }
        }
    }
}

/// Splits the relay port range into `shards` contiguous slices.
fn split_ports(
    range: &RangeInclusive<u16>,
    shards: usize,
) -> anyhow::Result<Vec<RangeInclusive<u16>>> {
    let (start, end) = (usize::from(*range.start()), usize::from(*range.end()));
    let size = end - start + 1;
    if size < shards * 2 {
        anyhow::bail!(
            "`relay-ports` has {size} ports; {shards} shards ({} UDP workers and one for TCP/TLS) need at least {}: widen the range or lower `workers`",
            shards - 1,
            shards * 2
        );
    }
    Ok((0..shards)
        .map(|i| {
            let first = start + size * i / shards;
            let last = start + size * (i + 1) / shards - 1;
            first as u16..=last as u16
        })
        .collect())
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
    core.own_addresses = own_addresses(config, relays);
    core.server_relay_ports = config.relay_ports.0.clone();
    core.default_lifetime = config.allocation_lifetime;
    core.max_lifetime = config.max_allocation_lifetime;
    core.users = config.static_users();
    core.secrets = config.auth.secrets.clone();
    core.peers = PeerPolicy::new(config.peers.allow.clone(), config.peers.deny.clone());
    core
}

/// Every address of this host: relay and advertised addresses, specific listen addresses
/// and the interfaces' addresses.
fn own_addresses(config: &Config, relays: &[RelayAddress]) -> Vec<std::net::IpAddr> {
    let mut own: Vec<std::net::IpAddr> = relays.iter().flat_map(|r| [r.bind, r.public]).collect();
    own.extend(
        config
            .listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified()),
    );
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        own.extend(interfaces.iter().map(|i| i.ip()));
    }
    own.sort();
    own.dedup();
    own
}

/// The TCP/TLS shard, shared by its tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
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

    /// Queues `bytes` on a stream client's connection.
    pub(crate) fn send_to_client(&self, to: FiveTuple, bytes: Vec<u8>) {
        if let Some(queue) = self.streams().get(&to) {
            // A full queue means the client reads slower than its peers send: drop.
            let _ = queue.try_send(bytes);
        }
    }

    pub(crate) fn transmit(&self, transmits: Vec<(FiveTuple, Vec<u8>)>) {
        for (to, bytes) in transmits {
            self.send_to_client(to, bytes);
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
        shared.transmit(transmits);
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
