//! The I/O layer: tokio sockets around the sans-IO [`turn::Server`].
//!
//! One `turn::Server` sits behind a mutex that is held only for the synchronous core call
//! (never across an `.await`). Tasks:
//! - one per UDP listener: receive, hand the packet to the core, forward or answer;
//! - one per relay socket: receive from peers, hand to the core, send to the client;
//! - one timer task that drives expiry.
//!
//! This is the portable data plane; the batched thread-per-core one replaces the inner
//! loops without touching the core.

mod address;
mod relay;
mod udp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use ring::rand::{SecureRandom, SystemRandom};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::turn::{self, FiveTuple, Output, PeerPolicy, RelayAddress, ServerConfig, Stats};

pub use address::resolve_relay_address;

/// A running server. Dropping it does not stop the server; call [`Handle::shutdown`].
pub struct Handle {
    udp_addrs: Vec<SocketAddr>,
    relay: RelayAddress,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Handle {
    /// The bound UDP listener addresses (with port 0 resolved).
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// Where relay sockets bind and what clients are told.
    pub fn relay_address(&self) -> RelayAddress {
        self.relay
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
    let relay = resolve_relay_address(&config)?;
    let (listeners, udp_addrs) = udp::bind_listeners(&config.listen)?;

    let mut core = ServerConfig::new(&config.realm, relay, config.relay_ports.0.clone());
    core.users = config.static_users();
    core.secrets = config.auth.secrets.clone();
    core.peers = PeerPolicy::new(config.peers.allow.clone(), config.peers.deny.clone());
    let (seed, nonce_key) = random_seed_and_key()?;
    let server = turn::Server::new(core, Instant::now(), unix_now(), seed, nonce_key);

    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            server,
            relays: HashMap::new(),
        }),
        listeners: listeners
            .iter()
            .map(|s| Ok((s.local_addr()?, s.clone())))
            .collect::<std::io::Result<_>>()?,
    });
    let mut tasks: Vec<JoinHandle<()>> = listeners
        .into_iter()
        .map(|socket| tokio::spawn(udp::serve(shared.clone(), socket, stopped.clone())))
        .collect();
    tasks.push(tokio::spawn(drive_timers(shared.clone(), stopped)));
    tracing::info!(
        listen = ?udp_addrs,
        relay = %relay.bind,
        advertised = %relay.public,
        ports = %config.relay_ports,
        "rendez serving STUN/TURN over UDP"
    );
    Ok(Handle {
        udp_addrs,
        relay,
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

/// State shared by the socket tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Listener sockets by local address, to answer a client on the socket it used.
    listeners: HashMap<SocketAddr, Arc<UdpSocket>>,
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

    /// Sends `bytes` to a client on the listener it used.
    pub(crate) async fn send_to_client(&self, to: FiveTuple, bytes: &[u8]) {
        let Some(socket) = self.listeners.get(&to.server) else {
            return;
        };
        if let Err(error) = socket.send_to(bytes, to.client).await {
            tracing::debug!(client = %to.client, %error, "send to client failed");
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

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_seed_and_key() -> anyhow::Result<(u64, [u8; 32])> {
    let rng = SystemRandom::new();
    let mut seed = [0u8; 8];
    let mut key = [0u8; 32];
    rng.fill(&mut seed)
        .and_then(|()| rng.fill(&mut key))
        .map_err(|_| anyhow::anyhow!("the OS random number generator failed"))
        .context("seeding the TURN core")?;
    Ok((u64::from_le_bytes(seed), key))
}
