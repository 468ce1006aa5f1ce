//! Rooms across nodes: the Redis side of [`Rooms::clustered`](crate::signal::Rooms).
//!
//! One task per node owns two Redis connections: commands (scripts and `PUBLISH`) go out on
//! one, in the order the hub hands them over; the other is subscribed to this node's channel,
//! where every event for this node arrives in the order the store made it. The scripts
//! (`*.lua`, each prefixed with `store.lua`) keep room membership, chat history and node
//! presence consistent: each runs alone in Redis, so admission to a room is atomic across
//! the fleet.
//!
//! Presence: twice every `heartbeat` the node renews a key that lives three heartbeats and
//! looks for nodes whose key expired: those are taken for dead, and the script removes
//! their participants (the others hear `peer-left`). A node reaps only after it has been
//! connected for a presence lifetime itself, so after an outage of Redis it does not take
//! the nodes that have not reconnected yet for dead; a node that finds its own key expired
//! (it stalled) registers its participants again.
//!
//! When Redis is unreachable the task tells the hub (joins are refused, `/healthz` says
//! 503), drops what it is handed (counted), and reconnects with a growing pause. Once back
//! it tells the hub, whose rooms register their participants again (`Restore`), and a
//! presence lifetime later asks for a snapshot of each room (`Sync`), by when every live
//! node has registered again: the fleet's view is whole again within
//! reconnect + 3 heartbeats.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script};
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout, Instant};
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::signal::chat::{HISTORY_BYTES, HISTORY_MESSAGES};
use crate::signal::{ClusterCommand, ClusterEvent, NodeId, Refusal};

/// Commands waiting for Redis before the hub drops them.
const COMMAND_QUEUE: usize = 4096;
/// How long one Redis call may take before the store counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between connection attempts: doubling from the first to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_LAST: Duration = Duration::from_secs(2);
/// Commands carried out in one round trip at most.
const BATCH: usize = 64;
/// A node's presence outlives this many missed heartbeats.
const PRESENCE_HEARTBEATS: u32 = 3;

/// What the store tells the hub.
#[derive(Debug)]
pub(crate) enum Notice {
    Connected,
    Lost,
    Event(ClusterEvent),
    Refused {
        id: String,
        refusal: Refusal,
    },
    /// Every live node has registered again since the reconnection: time to sync.
    SyncDue,
}

/// The hub's side of the cluster task.
#[derive(Clone)]
pub(crate) struct ClusterLink {
    commands: mpsc::Sender<ClusterCommand>,
    status: Arc<ClusterStatus>,
}

/// What the task publishes for `/healthz` and `/metrics`.
#[derive(Default)]
pub(crate) struct ClusterStatus {
    connected: AtomicBool,
    /// Commands not carried out: the store was unreachable or the queue full.
    dropped: AtomicU64,
    /// Redis calls made (scripts and publishes), for the cost of the fleet per event.
    calls: AtomicU64,
    /// Events received from the store.
    events: AtomicU64,
    /// Times the connection to Redis was lost.
    disconnects: AtomicU64,
}

/// A copy of [`ClusterStatus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterFigures {
    pub connected: bool,
    pub dropped: u64,
    pub calls: u64,
    pub events: u64,
    pub disconnects: u64,
}

impl ClusterLink {
    /// Hands `command` to the task without waiting; gives it back when it could not be
    /// taken (queue full or task gone), counted as dropped.
    pub fn try_send(&self, command: ClusterCommand) -> Result<(), Box<ClusterCommand>> {
        self.commands.try_send(command).map_err(|refused| {
            self.status.dropped.fetch_add(1, Ordering::Relaxed);
            Box::new(refused.into_inner())
        })
    }

    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Relaxed)
    }

    pub fn figures(&self) -> ClusterFigures {
        let s = &self.status;
        ClusterFigures {
            connected: s.connected.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            calls: s.calls.load(Ordering::Relaxed),
            events: s.events.load(Ordering::Relaxed),
            disconnects: s.disconnects.load(Ordering::Relaxed),
        }
    }
}

/// A new node id: 64 random bits, so nodes never need to agree on names.
pub(crate) fn new_node_id() -> Result<NodeId, crate::random::OsRngFailed> {
    let mut id = [0u8; 8];
    crate::random::fill_from_os(&mut id)?;
    Ok(crate::hex::encode(&id))
}

/// Starts the cluster task; `notify` receives what the store says, in order. The task
/// ends when `stopped` changes, after removing this node's participants from the store.
pub(crate) fn spawn(
    config: &ClusterConfig,
    node: NodeId,
    notify: mpsc::Sender<Notice>,
    tracker: &TaskTracker,
    stopped: watch::Receiver<bool>,
) -> anyhow::Result<ClusterLink> {
    let mut info = config
        .redis
        .as_str()
        .into_connection_info()
        .map_err(|_| anyhow::anyhow!("`cluster.redis` is not a Redis URL"))?;
    if let Some(password) = &config.password {
        let settings = info
            .redis_settings()
            .clone()
            .set_password(password.expose());
        info = info.set_redis_settings(settings);
    }
    let client = Client::open(info).map_err(|e| anyhow::anyhow!("`cluster.redis`: {e}"))?;
    let (commands, inbox) = mpsc::channel(COMMAND_QUEUE);
    let status = Arc::new(ClusterStatus::default());
    let task = Task {
        client,
        server: config.redis_display(),
        node,
        heartbeat: config.heartbeat,
        notify,
        status: status.clone(),
        scripts: Scripts::new(),
    };
    tracker.spawn(task.run(inbox, stopped));
    Ok(ClusterLink { commands, status })
}

struct Task {
    client: Client,
    /// Redis as logs show it (no password).
    server: String,
    node: NodeId,
    heartbeat: Duration,
    notify: mpsc::Sender<Notice>,
    status: Arc<ClusterStatus>,
    scripts: Scripts,
}

/// Whether this node's presence was still there when it renewed it.
enum Presence {
    Kept,
    /// It had expired: the others may have removed this node's participants.
    Lost,
}

/// Why a connected session with Redis ended.
enum Ended {
    Stopped,
    Lost(String),
}

impl Task {
    async fn run(
        self,
        mut inbox: mpsc::Receiver<ClusterCommand>,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut pause = RECONNECT_FIRST;
        // Whether the hub and the log know that Redis is out of reach (said once per outage).
        let mut reported_down = false;
        loop {
            if *stopped.borrow() {
                return;
            }
            match self.session(&mut inbox, &mut stopped).await {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Lost(why)) => {
                    tracing::warn!(redis = %self.server, %why, "lost the connection to Redis: rooms across nodes are unavailable, local participants go on");
                    self.status.disconnects.fetch_add(1, Ordering::Relaxed);
                    self.went_down().await;
                    reported_down = true;
                    pause = RECONNECT_FIRST;
                }
                Err(why) => {
                    if !reported_down {
                        tracing::warn!(redis = %self.server, %why, "cannot reach Redis: new joins are refused until it answers");
                        self.went_down().await;
                        reported_down = true;
                    } else {
                        tracing::debug!(redis = %self.server, %why, "Redis still unreachable");
                    }
                }
            }
            // Wait before the next attempt, dropping what arrives meanwhile.
            let resume = Instant::now() + pause;
            pause = (pause * 2).min(RECONNECT_LAST);
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(resume) => break,
                    command = inbox.recv() => match command {
                        Some(command) => self.drop_command(command).await,
                        None => return,
                    },
                    _ = stopped.changed() => return,
                }
            }
        }
    }

    /// Redis is out of reach: the hub refuses joins and serves its own participants.
    async fn went_down(&self) {
        self.status.connected.store(false, Ordering::Relaxed);
        let _ = self.notify.send(Notice::Lost).await;
    }

    /// A command that cannot reach Redis: counted; a join waiting on it is refused.
    async fn drop_command(&self, command: ClusterCommand) {
        self.status.dropped.fetch_add(1, Ordering::Relaxed);
        if let ClusterCommand::Admit { id, .. } = command {
            let _ = self
                .notify
                .send(Notice::Refused {
                    id,
                    refusal: Refusal::Unavailable,
                })
                .await;
        }
    }

    /// Connects, then serves until Redis goes away or the server stops. Err: could not
    /// connect.
    async fn session(
        &self,
        inbox: &mut mpsc::Receiver<ClusterCommand>,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<Ended, String> {
        let connection_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT));
        let mut redis = self
            .client
            .get_multiplexed_async_connection_with_config(&connection_config)
            .await
            .map_err(|e| e.to_string())?;
        let mut subscription = timeout(CALL_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "timed out connecting".to_owned())?
            .map_err(|e| e.to_string())?;
        timeout(CALL_TIMEOUT, subscription.subscribe(channel(&self.node)))
            .await
            .map_err(|_| "timed out subscribing".to_owned())?
            .map_err(|e| e.to_string())?;
        let mut events = subscription.into_on_message();
        // Commands run as EVALSHA in pipelines: Redis must know the scripts first.
        for script in self.scripts.all() {
            script
                .load_async(&mut redis)
                .await
                .map_err(|e| e.to_string())?;
        }

        let connected_at = Instant::now();
        let presence = self.heartbeat * PRESENCE_HEARTBEATS;
        self.beat(&mut redis, false)
            .await
            .map_err(|e| e.to_string())?;
        // Checks for dead nodes run twice a heartbeat, so a node that stopped is noticed
        // within half a heartbeat of its presence expiring.
        let check = self.heartbeat / 2;
        self.status.connected.store(true, Ordering::Relaxed);
        tracing::info!(redis = %self.server, node = %self.node, "connected to Redis: rooms span the fleet");
        let _ = self.notify.send(Notice::Connected).await;

        let mut heartbeat = tokio::time::interval_at(connected_at + check, check);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let sync_at = connected_at + presence;
        let mut synced = false;
        loop {
            tokio::select! {
                _ = stopped.changed() => {
                    self.farewell(&mut redis, inbox).await;
                    return Ok(Ended::Stopped);
                }
                message = events.next() => {
                    let Some(message) = message else {
                        return Ok(Ended::Lost("the subscription closed".into()));
                    };
                    self.status.events.fetch_add(1, Ordering::Relaxed);
                    match serde_json::from_slice::<ClusterEvent>(message.get_payload_bytes()) {
                        Ok(event) => {
                            let _ = self.notify.send(Notice::Event(event)).await;
                        }
                        Err(e) => tracing::debug!(error = %e, "unreadable event from Redis; dropped"),
                    }
                }
                command = inbox.recv() => {
                    let Some(command) = command else {
                        return Ok(Ended::Stopped);
                    };
                    // What else is waiting goes along in the same round trip.
                    let mut batch = vec![command];
                    while batch.len() < BATCH {
                        match inbox.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = self.carry_out(&mut redis, batch).await {
                        return Ok(Ended::Lost(e.to_string()));
                    }
                }
                _ = heartbeat.tick() => {
                    let reap = connected_at.elapsed() >= presence;
                    match self.beat(&mut redis, reap).await {
                        Ok(Presence::Kept) => {}
                        Ok(Presence::Lost) => {
                            // Silent too long (a stalled process, a slow link): the others took
                            // this node for dead and removed its participants. Register them
                            // again, as after an outage.
                            tracing::warn!("this node was taken for dead by the fleet; registering its participants again");
                            let _ = self.notify.send(Notice::Connected).await;
                        }
                        Err(e) => return Ok(Ended::Lost(e.to_string())),
                    }
                }
                () = tokio::time::sleep_until(sync_at), if !synced => {
                    synced = true;
                    let _ = self.notify.send(Notice::SyncDue).await;
                }
            }
        }
    }

    /// Renews this node's presence; with `reap`, removes the participants of dead nodes.
    async fn beat(
        &self,
        redis: &mut MultiplexedConnection,
        reap: bool,
    ) -> redis::RedisResult<Presence> {
        let presence = self.heartbeat * PRESENCE_HEARTBEATS;
        let (removed, was_present): (u64, bool) = self
            .call(
                redis,
                &self.scripts.heartbeat,
                &[
                    self.node.as_str(),
                    &presence.as_millis().to_string(),
                    if reap { "1" } else { "0" },
                ],
            )
            .await?;
        if removed > 0 {
            tracing::info!(
                participants = removed,
                "removed the participants of nodes that stopped answering"
            );
        }
        Ok(if was_present {
            Presence::Kept
        } else {
            Presence::Lost
        })
    }

    /// Carries out `commands` in one round trip (a pipeline, in order), then reports the
    /// joins Redis refused.
    async fn carry_out(
        &self,
        redis: &mut MultiplexedConnection,
        commands: Vec<ClusterCommand>,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        let mut admissions = Vec::new();
        let mut restored = None;
        for (index, command) in commands.into_iter().enumerate() {
            match command {
                ClusterCommand::Admit {
                    room,
                    id,
                    name,
                    room_size,
                } => {
                    let size = room_size.to_string();
                    self.scripts
                        .admit
                        .add_to(&mut pipe, &[&room, &id, &name, &self.node, &size]);
                    admissions.push((index, id));
                }
                ClusterCommand::Leave { room, id } => {
                    self.scripts
                        .leave
                        .add_to(&mut pipe, &[&room, &id, &self.node]);
                }
                ClusterCommand::Signal {
                    node,
                    room,
                    from,
                    to,
                    data,
                } => {
                    let event = ClusterEvent::Signal {
                        room,
                        from,
                        to,
                        data,
                    };
                    let text = serde_json::to_string(&event).unwrap_or_default();
                    pipe.cmd("PUBLISH").arg(channel(&node)).arg(text);
                }
                ClusterCommand::Chat { room, message } => {
                    let text = serde_json::to_string(&message).unwrap_or_default();
                    let (count, bytes) = (HISTORY_MESSAGES.to_string(), HISTORY_BYTES.to_string());
                    self.scripts
                        .chat
                        .add_to(&mut pipe, &[&room, &text, &count, &bytes]);
                }
                ClusterCommand::Restore { members } => {
                    let list = serde_json::to_string(&members).unwrap_or_else(|_| "[]".into());
                    self.scripts.restore.add_to(&mut pipe, &[&self.node, &list]);
                    restored = Some(members.len());
                }
                ClusterCommand::Sync { room } => {
                    self.scripts.sync.add_to(&mut pipe, &[&room, &self.node]);
                }
            }
        }
        self.status
            .calls
            .fetch_add(pipe.len() as u64, Ordering::Relaxed);
        let replies: Vec<redis::Value> = pipe.query_async(redis).await?;
        for (index, id) in admissions {
            let refusal = match replies.get(index) {
                Some(redis::Value::BulkString(reply)) if reply == b"full" => Refusal::Full,
                Some(redis::Value::BulkString(reply)) if reply == b"taken" => Refusal::Taken,
                _ => continue,
            };
            let _ = self.notify.send(Notice::Refused { id, refusal }).await;
        }
        if let Some(participants) = restored {
            tracing::info!(
                participants,
                "registered this node's participants with Redis"
            );
        }
        Ok(())
    }

    /// The server stops: carry out what is queued (the leaves of closing sessions), then
    /// remove this node's participants, so the others hear `peer-left` now rather than
    /// when its presence expires.
    async fn farewell(
        &self,
        redis: &mut MultiplexedConnection,
        inbox: &mut mpsc::Receiver<ClusterCommand>,
    ) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let work = async {
            let mut queued = Vec::new();
            while let Ok(command) = inbox.try_recv() {
                queued.push(command);
            }
            if !queued.is_empty() {
                self.carry_out(redis, queued).await?;
            }
            self.call::<u64>(redis, &self.scripts.gone, &[self.node.as_str()])
                .await
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(_)) => tracing::info!("left the fleet: this node's participants are removed from Redis"),
            _ => tracing::warn!("could not tell Redis that this node stops; its participants leave when its presence expires"),
        }
        self.status.connected.store(false, Ordering::Relaxed);
    }

    /// Runs a script (EVALSHA, loading it when Redis does not know it yet).
    async fn call<T: redis::FromRedisValue>(
        &self,
        redis: &mut MultiplexedConnection,
        script: &Script,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        self.status.calls.fetch_add(1, Ordering::Relaxed);
        let mut invocation = script.prepare_invoke();
        for arg in args {
            invocation.arg(*arg);
        }
        invocation.invoke_async(redis).await
    }
}

/// The channel on which `node` receives its events.
fn channel(node: &str) -> String {
    format!("rendez:to:{node}")
}

/// A script of the store: its code, for loading, and its hash, for EVALSHA.
struct StoreScript(Script);

impl StoreScript {
    /// Appends a call with `args` (no keys: the scripts name their keys themselves) to
    /// `pipe`.
    fn add_to(&self, pipe: &mut redis::Pipeline, args: &[&str]) {
        let call = pipe.cmd("EVALSHA").arg(self.0.get_hash()).arg(0);
        for arg in args {
            call.arg(*arg);
        }
    }
}

impl std::ops::Deref for StoreScript {
    type Target = Script;

    fn deref(&self) -> &Script {
        &self.0
    }
}

/// The store's scripts, each with `store.lua` in front.
struct Scripts {
    admit: StoreScript,
    leave: StoreScript,
    chat: StoreScript,
    restore: StoreScript,
    sync: StoreScript,
    heartbeat: StoreScript,
    gone: StoreScript,
}

macro_rules! store_script {
    ($file:literal) => {
        StoreScript(Script::new(concat!(
            include_str!("store.lua"),
            "\n",
            include_str!($file)
        )))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            admit: store_script!("admit.lua"),
            leave: store_script!("leave.lua"),
            chat: store_script!("chat.lua"),
            restore: store_script!("restore.lua"),
            sync: store_script!("sync.lua"),
            heartbeat: store_script!("heartbeat.lua"),
            gone: store_script!("gone.lua"),
        }
    }

    fn all(&self) -> [&Script; 7] {
        [
            &self.admit,
            &self.leave,
            &self.chat,
            &self.restore,
            &self.sync,
            &self.heartbeat,
            &self.gone,
        ]
    }
}
