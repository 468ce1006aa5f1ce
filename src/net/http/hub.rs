//! The signaling hub: one task owns the [`Rooms`] and every session's outgoing queue.
//!
//! Sessions send their input (opened, text, closed) over one bounded channel; the hub runs
//! each through the room logic in arrival order and queues what comes out on the sessions'
//! queues in the order the room logic produced it, so a participant's `welcome` always comes
//! before any message about its room. A session whose queue is full, in frames or in bytes
//! (a browser that stopped reading), is dropped at once: it leaves its room, the others hear
//! `peer-left`, and its queue closes, which ends the session at once, even in the middle of
//! a write. The hub never waits on a session.
//!
//! In a fleet (`[cluster]`) the hub also carries the rooms' commands to the cluster task
//! (without waiting: a full queue drops and counts) and runs what the store tells it
//! through the rooms like any other input.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::task::TaskTracker;

use super::outbound::Outbound;
use crate::config::Config;
use crate::credential;
use crate::net::cluster::{self, ClusterFigures, ClusterLink, Notice};
use crate::random::Rng;
use crate::signal::{ConnId, Outgoing, Rooms, RoomsConfig, RoomsFigures};

/// Inputs waiting for the hub before sessions wait.
const INPUT_QUEUE: usize = 1024;
/// Inputs the hub takes per wake-up.
const INPUT_BATCH: usize = 64;
/// How long after sessions end the hub gives their memory back to the OS: once a second at
/// most, however many end.
const TRIM_DELAY: Duration = Duration::from_secs(1);

/// What a session tells the hub.
pub(crate) enum Input {
    /// A WebSocket opened; the hub queues its messages on `outbound`.
    Opened {
        conn: ConnId,
        ip: IpAddr,
        ice_servers: serde_json::Value,
        outbound: Outbound,
    },
    Text {
        conn: ConnId,
        text: Utf8Bytes,
    },
    Binary {
        conn: ConnId,
    },
    Closed {
        conn: ConnId,
    },
    /// Reloaded room settings.
    Reconfigure(RoomsConfig),
    /// The server drains: tell everyone to reconnect, take no new joins.
    Drain,
}

/// How much signaling there is, as of the hub's last input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalFigures {
    pub rooms: usize,
    pub participants: usize,
    /// Open WebSocket connections, in a room or not.
    pub connections: usize,
    /// Sessions dropped because they stopped reading (their queue was full).
    pub dropped_not_reading: u64,
    /// In a fleet: the link to Redis, and messages for other nodes dropped while it was
    /// down (the task's own count included).
    pub cluster: Option<ClusterFigures>,
}

/// The sessions' side of the hub.
#[derive(Clone)]
pub(crate) struct HubHandle {
    input: mpsc::Sender<Input>,
    shared: Arc<Shared>,
}

/// What sessions share: the connection counter, the settings a reload replaces, and the
/// hub's published figures.
struct Shared {
    next_conn: AtomicU64,
    settings: RwLock<Arc<SessionSettings>>,
    figures: Mutex<SignalFigures>,
    /// Set when the server drains: `/healthz` answers 503 so load balancers send new
    /// visitors elsewhere.
    draining: AtomicBool,
    /// In a fleet: whether Redis is reachable (else `/healthz` answers 503 too).
    cluster: Option<ClusterLink>,
}

/// A session's settings, taken when it opens (a reload applies to sessions opened after).
pub(crate) struct SessionSettings {
    ice: IceServers,
    pub idle_timeout: Duration,
    pub max_message_bytes: usize,
}

impl HubHandle {
    /// Hands `input` to the hub, waiting while its queue is full. False once it stopped.
    pub async fn send(&self, input: Input) -> bool {
        self.input.send(input).await.is_ok()
    }

    pub fn settings(&self) -> Arc<SessionSettings> {
        self.shared
            .settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A number for a new connection, never reused.
    pub fn next_conn(&self) -> ConnId {
        self.shared.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn figures(&self) -> SignalFigures {
        *self
            .shared
            .figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Applies reloaded `[signal]` and `[auth]` settings: rooms at once, session settings
    /// and ICE servers for sessions that open from now on.
    pub async fn reconfigure(&self, config: &Config, udp: &[SocketAddr], tls: &[SocketAddr]) {
        let settings = Arc::new(SessionSettings::new(config, udp, tls));
        *self
            .shared
            .settings
            .write()
            .unwrap_or_else(|p| p.into_inner()) = settings;
        self.send(Input::Reconfigure(rooms_config(config))).await;
    }

    pub async fn drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
        self.send(Input::Drain).await;
    }

    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// False in a fleet whose Redis is unreachable: joins are refused here now.
    pub fn rooms_available(&self) -> bool {
        self.shared
            .cluster
            .as_ref()
            .is_none_or(ClusterLink::is_connected)
    }
}

impl SessionSettings {
    fn new(config: &Config, udp: &[SocketAddr], tls: &[SocketAddr]) -> Self {
        // The page must point browsers at the ports actually bound (port 0 in tests).
        let mut bound = config.clone();
        bound.listen = udp.to_vec();
        bound.tls_listen = tls.to_vec();
        let signal = &config.signal;
        Self {
            ice: IceServers {
                secret: config.auth.secrets.first().cloned(),
                ttl: signal.credential_ttl,
                fixed_urls: signal.turn_urls.clone(),
                config: bound,
            },
            idle_timeout: signal.idle_timeout,
            max_message_bytes: signal.max_message_bytes,
        }
    }

    /// The `iceServers` of a connection's welcome: TURN credentials minted for this visit,
    /// under a random name (`web-` and 64 random bits, unique across restarts and nodes
    /// that share the secret), so `allocations-per-user` bounds what one visit's
    /// credentials can take wherever they are used from, and `allocations-per-ip` what one
    /// address takes.
    pub fn ice_servers(&self, host: &str) -> serde_json::Value {
        let mut id = [0u8; 8];
        if crate::random::fill_from_os(&mut id).is_err() {
            // Without the OS RNG there is no unguessable name: no TURN for this visit.
            return self.ice.for_connection(host, None);
        }
        let name = format!("web-{}", crate::hex::encode(&id));
        self.ice.for_connection(host, Some(&name))
    }
}

fn rooms_config(config: &Config) -> RoomsConfig {
    let signal = &config.signal;
    RoomsConfig {
        room_size: signal.room_size,
        rooms_per_ip: signal.rooms_per_ip,
        messages_per_second: signal.messages_per_second,
        max_message_bytes: signal.max_message_bytes,
        max_chat_bytes: signal.max_chat_bytes,
        upstream_kbps: signal.upstream_kbps,
        token_secret: signal.token_secret.clone(),
    }
}

/// Starts the hub task (and, with `[cluster]`, the cluster task); they end when `stopped`
/// changes. `udp` and `tls` are the bound TURN addresses, for the page's ICE servers.
pub(crate) fn spawn(
    config: &Config,
    udp: &[SocketAddr],
    tls: &[SocketAddr],
    rng: Rng,
    tracker: &TaskTracker,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<HubHandle> {
    if config.auth.secrets.is_empty() {
        tracing::warn!("no `auth.secrets`: the call page gets STUN only, no TURN relay");
    }
    let (rooms, cluster, notices) = match &config.cluster {
        Some(cluster_config) => {
            let node = cluster::new_node_id()?;
            let (notify, notices) = mpsc::channel(INPUT_QUEUE);
            let link = cluster::spawn(
                cluster_config,
                node.clone(),
                notify,
                tracker,
                stopped.clone(),
            )?;
            let rooms = Rooms::clustered(rooms_config(config), rng, node);
            (rooms, Some(link), Some(notices))
        }
        None => (Rooms::new(rooms_config(config), rng), None, None),
    };
    let (input, inbox) = mpsc::channel(INPUT_QUEUE);
    let shared = Arc::new(Shared {
        next_conn: AtomicU64::new(1),
        settings: RwLock::new(Arc::new(SessionSettings::new(config, udp, tls))),
        figures: Mutex::default(),
        draining: AtomicBool::new(false),
        cluster: cluster.clone(),
    });
    let hub = Hub {
        rooms,
        queues: HashMap::new(),
        trim_at: None,
        shared: shared.clone(),
        dropped_not_reading: 0,
        cluster,
    };
    tracker.spawn(hub.run(inbox, notices, stopped));
    Ok(HubHandle { input, shared })
}

struct Hub {
    rooms: Rooms,
    queues: HashMap<ConnId, Outbound>,
    /// When to give the memory of ended sessions back to the OS.
    trim_at: Option<Instant>,
    shared: Arc<Shared>,
    dropped_not_reading: u64,
    cluster: Option<ClusterLink>,
}

impl Hub {
    async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Input>,
        mut notices: Option<mpsc::Receiver<Notice>>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut batch = Vec::with_capacity(INPUT_BATCH);
        let mut notice_batch = Vec::with_capacity(INPUT_BATCH);
        loop {
            let trim = async {
                match self.trim_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = inbox.recv_many(&mut batch, INPUT_BATCH) => {
                    if received == 0 {
                        return;
                    }
                    for input in batch.drain(..) {
                        self.handle(input);
                    }
                    self.publish_figures();
                }
                received = async {
                    match notices.as_mut() {
                        Some(notices) => notices.recv_many(&mut notice_batch, INPUT_BATCH).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if received == 0 {
                        // The cluster task ended (the server stops).
                        notices = None;
                        continue;
                    }
                    for notice in notice_batch.drain(..) {
                        self.handle_notice(notice);
                    }
                    self.publish_figures();
                }
                _ = trim => self.give_memory_back(),
                _ = stopped.changed() => return,
            }
        }
    }

    fn handle(&mut self, input: Input) {
        let now = Instant::now();
        let outgoing = match input {
            Input::Opened {
                conn,
                ip,
                ice_servers,
                outbound,
            } => {
                self.queues.insert(conn, outbound);
                self.rooms.connect(now, conn, ip, ice_servers);
                Vec::new()
            }
            Input::Text { conn, text } => {
                let unix_ms = crate::net::unix_now_ms();
                self.rooms.handle_text(now, unix_ms, conn, text.as_str())
            }
            Input::Binary { conn } => self.rooms.handle_binary(now, conn),
            Input::Closed { conn } => self.close(conn),
            Input::Reconfigure(config) => {
                self.rooms.reconfigure(config);
                Vec::new()
            }
            Input::Drain => self.rooms.drain(),
        };
        self.deliver(outgoing);
        self.forward_commands();
    }

    /// What the store said, through the rooms.
    fn handle_notice(&mut self, notice: Notice) {
        let outgoing = match notice {
            Notice::Connected => {
                self.rooms.cluster_connected();
                Vec::new()
            }
            Notice::Lost => self.rooms.cluster_lost(),
            Notice::Event(event) => self.rooms.handle_event(event),
            Notice::Refused { id, refusal } => self.rooms.admission_refused(&id, refusal),
            Notice::SyncDue => {
                self.rooms.sync_due();
                Vec::new()
            }
        };
        self.deliver(outgoing);
        self.forward_commands();
    }

    /// Hands the rooms' commands to the cluster task. One it cannot take (it is behind)
    /// is dropped and counted, and its sender told (see [`Rooms::command_dropped`]).
    fn forward_commands(&mut self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let mut dropped = Vec::new();
        while let Some(command) = self.rooms.poll_command() {
            if let Err(command) = cluster.try_send(command) {
                dropped.push(command);
            }
        }
        for command in dropped {
            let outgoing = self.rooms.command_dropped(*command);
            self.deliver(outgoing);
        }
    }

    /// Queues each message on its session, in order. A session that cannot take one more
    /// is dropped, and what its leaving produces is delivered in turn.
    fn deliver(&mut self, mut outgoing: Vec<Outgoing>) {
        while !outgoing.is_empty() {
            let mut dropped = Vec::new();
            for Outgoing { to, message } in outgoing.drain(..) {
                let Some(queue) = self.queues.get(&to) else {
                    continue;
                };
                let Ok(text) = serde_json::to_string(&message) else {
                    continue;
                };
                tracing::trace!(conn = to, bytes = text.len(), "signaling frame queued");
                if !queue.try_send(text.into()) {
                    tracing::debug!(conn = to, "signaling session not reading; dropped");
                    self.dropped_not_reading += 1;
                    dropped.push(to);
                }
            }
            for conn in dropped {
                outgoing.extend(self.close(conn));
            }
        }
    }

    fn publish_figures(&self) {
        let RoomsFigures {
            rooms,
            participants,
            connections,
        } = self.rooms.figures();
        *self
            .shared
            .figures
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = SignalFigures {
            rooms,
            participants,
            connections,
            dropped_not_reading: self.dropped_not_reading,
            cluster: self.cluster.as_ref().map(|link| {
                let mut figures = link.figures();
                figures.dropped += self.rooms.cluster_dropped();
                figures
            }),
        };
    }

    /// Forgets a session: its queue closes (which ends the session) and it leaves its room.
    fn close(&mut self, conn: ConnId) -> Vec<Outgoing> {
        if self.queues.remove(&conn).is_none() {
            return Vec::new();
        }
        self.trim_at.get_or_insert(Instant::now() + TRIM_DELAY);
        self.rooms.disconnect(conn)
    }

    /// After sessions ended, hand the memory they used back to the OS: maps never shrink by
    /// themselves, and the allocator keeps freed pages in its per-thread arenas otherwise.
    fn give_memory_back(&mut self) {
        self.trim_at = None;
        self.queues.shrink_to_fit();
        self.rooms.shrink_to_fit();
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// What goes into a welcome's `iceServers`.
struct IceServers {
    secret: Option<String>,
    ttl: Duration,
    /// Operator-given URLs; empty: derived from the config and the request's host.
    fixed_urls: Vec<String>,
    config: Config,
}

impl IceServers {
    /// STUN for everyone, and TURN with credentials minted for `who` when a secret (and a
    /// name) exists.
    fn for_connection(&self, host: &str, who: Option<&str>) -> serde_json::Value {
        let urls = if self.fixed_urls.is_empty() {
            credential::ice_urls(&self.config, host)
        } else {
            self.fixed_urls.clone()
        };
        let stun: Vec<String> = urls
            .iter()
            .filter(|u| u.starts_with("turn:") && u.ends_with("transport=udp"))
            .map(|u| {
                u.replacen("turn:", "stun:", 1)
                    .replace("?transport=udp", "")
            })
            .collect();
        // Browsers reject an entry without URLs, so an empty STUN list is left out.
        let mut servers: Vec<serde_json::Value> = Vec::new();
        if !stun.is_empty() {
            servers.push(serde_json::json!({ "urls": stun }));
        }
        if let (Some(secret), Some(who)) = (&self.secret, who) {
            let credential = credential::mint(secret, who, SystemTime::now() + self.ttl);
            servers.push(credential::ice_server_json(&urls, &credential));
        }
        serde_json::Value::Array(servers)
    }
}
