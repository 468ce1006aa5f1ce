//! [`Handle`]: what a caller holds of a running server.

use std::net::SocketAddr;

use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::turn_io::stream_shard::ShardHandle;
use super::turn_io::worker::WorkerHandle;
use crate::turn::{RelayAddress, Stats};

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
        self.workers.iter().map(WorkerHandle::stats).collect()
    }

    /// The counters of every shard, added up (UDP workers' are at most 100 ms old).
    pub fn stats(&self) -> Stats {
        let mut total = self.stream_shard.stats();
        for worker in &self.workers {
            total.add(&worker.stats());
        }
        total
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
