//! [`Handle`]: what a caller holds of a running server.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::bootstrap::{core_config, SharedLimits};
use super::fleet::{resolve_alternates, NonceKeys};
use super::http::hub::{HubHandle, SignalFigures};
use super::observe::Observer;
use super::tls::{self, CertStore};
use super::turn_io::stream_shard::{self, ShardHandle};
use super::turn_io::worker::WorkerHandle;
use super::turn_io::Control;
use crate::config::Config;
use crate::turn::{Gauges, NatDiscovery, RelayAddress, Stats};

/// A running server. Dropping it stops the server without waiting; [`Handle::shutdown`]
/// stops it and waits until every socket is closed.
pub struct Handle {
    pub(super) udp_addrs: Vec<SocketAddr>,
    pub(super) tcp_addrs: Vec<SocketAddr>,
    pub(super) tls_addrs: Vec<SocketAddr>,
    pub(super) signal_addr: Option<SocketAddr>,
    pub(super) relays: Vec<RelayAddress>,
    pub(super) stream_shard: ShardHandle,
    pub(super) workers: Vec<WorkerHandle>,
    pub(super) stop: watch::Sender<bool>,
    /// Every task: listeners, connections, sessions, the shard, the hub, relay readers.
    pub(super) tracker: TaskTracker,
    /// The configuration the server started with: what sockets and threads were made of.
    pub(super) started: Config,
    /// Quotas and the challenge limit, shared by every shard.
    pub(super) limits: SharedLimits,
    /// The certificate of every TLS listener (None without `[tls]`).
    pub(super) certs: Option<Arc<CertStore>>,
    pub(super) hub: Option<HubHandle>,
    pub(super) observer: Observer,
    /// Where `/metrics` is served (None unless `[metrics] listen` is set).
    pub(super) metrics_addr: Option<SocketAddr>,
    /// The four addresses of NAT behaviour discovery (with `other-address`).
    pub(super) discovery: Option<NatDiscovery>,
    /// The nonce key of this run when `nonce-secret` is not set, and how to make it when it
    /// is.
    pub(super) nonce_keys: NonceKeys,
    /// The nonce key every shard signs with now (changed only by a reload).
    pub(super) nonce_key: std::sync::Mutex<[u8; 32]>,
    /// One reload at a time, so shards, certificate and hub always end on the same one.
    pub(super) reloading: tokio::sync::Mutex<()>,
    /// The attached XDP program (with `[xdp]`); dropped after the workers, which take
    /// their entries out of its maps as they stop.
    pub(super) fast_path: Option<super::xdp::FastPath>,
}

/// What a reload applied.
#[derive(Debug)]
pub struct Reloaded {
    /// Changed keys that take effect only after a restart (listen addresses, relay ports,
    /// workers, ...); everything else is in effect.
    pub needs_restart: Vec<&'static str>,
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

    /// `other-address` as bound (port 0 resolved): where NAT behaviour discovery's "change
    /// IP and port" answers come from. `None` without the key.
    pub fn other_address(&self) -> Option<SocketAddr> {
        self.discovery.map(|d| d.other())
    }

    /// The number of UDP worker threads.
    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Whether the XDP fast path is attached (`[xdp]`, built with the `xdp` feature).
    pub fn fast_path_attached(&self) -> bool {
        self.fast_path.is_some()
    }

    /// The bound address of `/metrics` (None unless `[metrics] listen` is set).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Each UDP worker's counters, in worker order (at most 100 ms old).
    pub fn worker_stats(&self) -> Vec<Stats> {
        let shards = self.observer.shards();
        shards[..self.workers.len()]
            .iter()
            .map(|s| s.figures.stats.clone())
            .collect()
    }

    /// The counters of every shard, added up (UDP workers' are at most 100 ms old).
    pub fn stats(&self) -> Stats {
        self.observer.stats()
    }

    /// Allocations, permissions, channels and relay ports of every shard, added up (at
    /// most 100 ms old).
    pub fn gauges(&self) -> Gauges {
        self.observer.gauges()
    }

    /// Allocations on every shard at this moment, exactly (the gauges are published
    /// periodically and may lag behind an allocation that just started or ended).
    pub fn allocations_now(&self) -> u64 {
        u64::from(self.limits.allocations())
    }

    /// One line for a status display (systemd's STATUS=): "120 allocations, 3 rooms,
    /// 11 participants".
    pub fn status_line(&self) -> String {
        let count = |n: u64, what: &str| {
            let plural = if n == 1 { "" } else { "s" };
            format!("{n} {what}{plural}")
        };
        let allocations = count(self.gauges().allocations, "allocation");
        match self.signal_figures() {
            Some(signal) => format!(
                "{allocations}, {}, {}",
                count(signal.rooms as u64, "room"),
                count(signal.participants as u64, "participant")
            ),
            None => allocations,
        }
    }

    /// The TCP/TLS shard's counters and gauges.
    pub fn stream_stats(&self) -> (Stats, Gauges) {
        let figures = self.observer.stream.read();
        (figures.stats, figures.gauges)
    }

    /// Rooms, participants and sessions of the signaling service (None when it is off).
    pub fn signal_figures(&self) -> Option<SignalFigures> {
        self.observer.signal()
    }

    /// Applies a new configuration to every shard, the signaling hub and the TLS listeners,
    /// without ending any allocation, connection or session. Nothing is applied unless all
    /// of it is good: an invalid config or an unreadable certificate is an error naming the
    /// key or file, and the running configuration stays. Keys that need a restart are
    /// reported, not applied.
    pub async fn reload(&self, new: Config) -> anyhow::Result<Reloaded> {
        let _one_at_a_time = self.reloading.lock().await;
        new.validate()?;
        // With [acme] the certificate is the ACME task's to replace, not a reload's.
        let certificate = match (&self.certs, &new.tls) {
            (Some(_), Some(tls)) => Some(tls::load_certified_key(tls)?),
            _ => None,
        };
        let alternates = resolve_alternates(&new.alternate_servers).await?;
        let needs_restart = self.started.restart_only_changes(&new);
        // Everything fallible is done: from here on the new configuration is applied.
        self.limits.apply(&new.limits);
        let nonce_key = self.nonce_keys.for_config(&new);
        let old_key = std::mem::replace(
            &mut *self.nonce_key.lock().unwrap_or_else(|p| p.into_inner()),
            nonce_key,
        );
        if old_key != nonce_key {
            tracing::info!("`auth.nonce-secret` changed: nonces handed out before get 438 Stale Nonce with a fresh one, and clients retry");
        }
        let core = Box::new(core_config(&new, &self.relays, &self.limits, alternates));
        let control = Control::Reconfigure { core, nonce_key };
        for worker in &self.workers {
            worker.send(control.clone());
        }
        self.stream_shard
            .send(stream_shard::Input::Control(control))
            .await;
        if let Some(fast_path) = &self.fast_path {
            // The program writes SOFTWARE into its Binding responses as the core does.
            fast_path.set_software(new.software.as_deref());
        }
        if let (Some(store), Some(certificate)) = (&self.certs, certificate) {
            store.replace(certificate);
        }
        if let Some(hub) = &self.hub {
            hub.reconfigure(&new, &self.udp_addrs, &self.tls_addrs)
                .await;
        }
        Ok(Reloaded { needs_restart })
    }

    /// Starts draining: new allocations are refused (300 Try Alternate to the
    /// `alternate-servers` entries in turn, else 486), existing ones go on relaying, and signaling
    /// clients are told to reconnect elsewhere. Wait for [`Handle::allocations_now`] to be
    /// zero (or a timeout), then [`Handle::shutdown`].
    pub async fn drain(&self) {
        for worker in &self.workers {
            worker.send(Control::Drain);
        }
        self.stream_shard
            .send(stream_shard::Input::Control(Control::Drain))
            .await;
        if let Some(hub) = &self.hub {
            hub.drain().await;
        }
    }

    /// Whether every shard is still running: each UDP worker thread and the TCP/TLS shard
    /// task. False means part of the server has died and a restart is due.
    pub fn is_healthy(&self) -> bool {
        self.stream_shard.is_running() && self.workers.iter().all(WorkerHandle::is_running)
    }

    /// Stops every task and thread, and returns once every connection, session and socket
    /// is closed.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        let workers = std::mem::take(&mut self.workers);
        let _ =
            tokio::task::spawn_blocking(move || workers.into_iter().for_each(WorkerHandle::stop))
                .await;
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tasks still running (listeners, connections, sessions, relay readers, ...): zero
    /// once [`Handle::shutdown`] has returned.
    pub fn running_tasks(&self) -> usize {
        self.tracker.len()
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
