//! Rooms, participants and the abuse limits that keep one bad client from hurting others.
//!
//! A node alone ([`Rooms::new`]) decides everything itself. A node of a fleet
//! ([`Rooms::clustered`]) validates locally (names, tokens, rates, sizes), then lets the
//! shared store decide what changes a room: a join becomes a [`ClusterCommand::Admit`] and
//! its `welcome` waits for the store's [`ClusterEvent::Joined`]; signals and chat go out as
//! commands and come back as events, to this node's participants too, so every node
//! delivers a room's messages in the store's one order. While the store is unreachable the
//! node serves its own participants directly (signals and chat among them keep flowing,
//! messages for other nodes are dropped and counted) and refuses joins with `unavailable`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::chat::{ChatHistory, ChatMessage};
use super::cluster::{ClusterCommand, ClusterEvent, ClusterPeer, LocalMember, NodeId, Refusal};
use super::messages::{ClientMessage, ErrorCode, PeerInfo, ServerMessage};
use super::token;
use crate::random::Rng;
use crate::turn::QuotaKey;

/// A connection as the I/O layer numbers it.
pub type ConnId = u64;

/// A message for one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub to: ConnId,
    pub message: ServerMessage,
}

#[derive(Clone, Debug)]
pub struct RoomsConfig {
    /// Participants per room; the next joiner gets `room-full`.
    pub room_size: usize,
    /// Rooms one IP address (IPv6: one /64) may be in at once.
    pub rooms_per_ip: usize,
    /// Sustained messages per second per connection (bursts of twice that are allowed).
    pub messages_per_second: u32,
    /// Longest text message accepted.
    pub max_message_bytes: usize,
    /// Longest chat text accepted, in bytes.
    pub max_chat_bytes: usize,
    /// The video upstream budget each participant gets in its welcome, in kbit/s.
    pub upstream_kbps: u32,
    /// When set, joining needs a token minted with this secret (see [`token`]).
    pub token_secret: Option<String>,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            room_size: 6,
            rooms_per_ip: 8,
            messages_per_second: 20,
            max_message_bytes: 64 * 1024,
            max_chat_bytes: 4096,
            upstream_kbps: 2500,
            token_secret: None,
        }
    }
}

/// Room and names: at most this many characters.
const MAX_NAME_CHARS: usize = 64;
/// Rate-limit errors are sent at most this often, so a flood gets one reply, not many.
const RATE_LIMIT_REPLY_INTERVAL: Duration = Duration::from_secs(1);

/// The sans-IO signaling state. See the module documentation of [`crate::signal`].
pub struct Rooms {
    config: RoomsConfig,
    connections: HashMap<ConnId, Connection>,
    /// The rooms this node has participants in, each with everyone in it (on any node).
    rooms: HashMap<String, Room>,
    /// How many rooms each address (IPv6: each /64) is in now (for `rooms_per_ip`).
    rooms_of_ip: HashMap<QuotaKey, usize>,
    rng: Rng,
    /// Set by [`Rooms::drain`]: no new joins.
    draining: bool,
    /// Set in a fleet.
    cluster: Option<Cluster>,
}

/// How much signaling there is now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomsFigures {
    /// Rooms with participants on this node.
    pub rooms: usize,
    /// Participants on this node.
    pub participants: usize,
    /// Open connections, in a room or not.
    pub connections: usize,
}

struct Connection {
    /// Where it comes from, as `rooms_per_ip` counts it.
    address: QuotaKey,
    /// What this connection's welcome carries: TURN credentials minted for it. Kept as
    /// JSON text, a third of the memory of a `Value`, for every idle connection.
    ice_servers: Box<str>,
    membership: Option<Membership>,
    bucket: TokenBucket,
    last_rate_limit_reply: Option<Instant>,
}

/// The room a connection is in, or is being admitted to.
struct Membership {
    room: String,
    id: String,
    name: String,
    /// False while the store decides (fleet only).
    admitted: bool,
}

#[derive(Default)]
struct Room {
    /// In joining order.
    members: Vec<Participant>,
    /// For late joiners (a node alone; in a fleet the store keeps it).
    chat: ChatHistory,
}

struct Participant {
    id: String,
    name: String,
    at: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Location {
    Local(ConnId),
    Remote(NodeId),
}

/// A fleet node's side of the rooms: what it asks the store, and what it waits for.
struct Cluster {
    node: NodeId,
    /// Whether the store is reachable now.
    connected: bool,
    /// Joins the store has not answered: participant id → connection.
    pending: HashMap<String, ConnId>,
    commands: VecDeque<ClusterCommand>,
    /// Messages for participants on other nodes dropped while the store was unreachable.
    dropped: u64,
}

impl Rooms {
    /// A node alone. `rng` makes participant ids unguessable (seed it from the OS, see
    /// [`Rng::from_os`]).
    pub fn new(config: RoomsConfig, rng: Rng) -> Self {
        Self {
            config,
            connections: HashMap::new(),
            rooms: HashMap::new(),
            rooms_of_ip: HashMap::new(),
            rng,
            draining: false,
            cluster: None,
        }
    }

    /// A node of a fleet, called `node` in the store. It refuses joins until
    /// [`Rooms::cluster_connected`]; take its requests with [`Rooms::poll_command`].
    pub fn clustered(config: RoomsConfig, rng: Rng, node: NodeId) -> Self {
        Self {
            cluster: Some(Cluster {
                node,
                connected: false,
                pending: HashMap::new(),
                commands: VecDeque::new(),
                dropped: 0,
            }),
            ..Self::new(config, rng)
        }
    }

    /// Takes reloaded settings. Rooms already fuller than a smaller `room_size` keep their
    /// members; connections keep their message rate until they reconnect.
    pub fn reconfigure(&mut self, config: RoomsConfig) {
        self.config = config;
    }

    /// The server is going away: every connection is told to reconnect (elsewhere), and
    /// joins from now on get `unavailable`.
    pub fn drain(&mut self) -> Vec<Outgoing> {
        self.draining = true;
        self.connections
            .keys()
            .map(|&to| Outgoing {
                to,
                message: ServerMessage::Reconnect,
            })
            .collect()
    }

    pub fn figures(&self) -> RoomsFigures {
        RoomsFigures {
            rooms: self.rooms.len(),
            participants: self
                .rooms
                .values()
                .map(|room| room.local_members().count())
                .sum(),
            connections: self.connections.len(),
        }
    }

    /// Messages for participants on other nodes dropped because the store was unreachable.
    pub fn cluster_dropped(&self) -> u64 {
        self.cluster.as_ref().map_or(0, |c| c.dropped)
    }

    /// A WebSocket opened from `ip`; `ice_servers` goes into its welcome.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        ip: IpAddr,
        ice_servers: serde_json::Value,
    ) {
        let burst = self.config.messages_per_second.saturating_mul(2).max(1);
        self.connections.insert(
            conn,
            Connection {
                address: QuotaKey::of(ip),
                ice_servers: ice_servers.to_string().into_boxed_str(),
                membership: None,
                bucket: TokenBucket::new(now, burst, self.config.messages_per_second),
                last_rate_limit_reply: None,
            },
        );
    }

    /// One text frame from `conn`; `unix_ms` is the wall clock in milliseconds (token
    /// expiry, chat timestamps).
    pub fn handle_text(
        &mut self,
        now: Instant,
        unix_ms: u64,
        conn: ConnId,
        text: &str,
    ) -> Vec<Outgoing> {
        if let Err(refused) = self.take_token(now, conn) {
            return refused;
        }
        if text.len() > self.config.max_message_bytes {
            return error(conn, ErrorCode::BadMessage, "message too large");
        }
        match serde_json::from_str::<ClientMessage>(text) {
            Ok(ClientMessage::Join { room, name, token }) => {
                self.join(unix_ms / 1000, conn, room, name, token)
            }
            Ok(ClientMessage::Signal { to, data }) => self.relay(conn, &to, data),
            Ok(ClientMessage::Chat { text }) => self.chat(unix_ms, conn, text),
            Ok(ClientMessage::Leave) => self.leave(conn),
            Ok(ClientMessage::Ping) => vec![Outgoing {
                to: conn,
                message: ServerMessage::Pong,
            }],
            Err(_) => error(conn, ErrorCode::BadMessage, "not a valid signaling message"),
        }
    }

    /// A binary frame: not part of the protocol, but it costs the server a read and a reply
    /// all the same, so it spends a message from the same rate limit as text.
    pub fn handle_binary(&mut self, now: Instant, conn: ConnId) -> Vec<Outgoing> {
        if let Err(refused) = self.take_token(now, conn) {
            return refused;
        }
        error(
            conn,
            ErrorCode::BadMessage,
            "binary frames are not supported",
        )
    }

    /// The WebSocket closed.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<Outgoing> {
        let out = self.leave(conn);
        self.connections.remove(&conn);
        out
    }

    /// Gives spare map capacity back (after many connections have gone).
    pub fn shrink_to_fit(&mut self) {
        self.connections.shrink_to_fit();
        self.rooms.shrink_to_fit();
        self.rooms_of_ip.shrink_to_fit();
        if let Some(cluster) = &mut self.cluster {
            cluster.pending.shrink_to_fit();
            cluster.commands.shrink_to_fit();
        }
    }

    /// Participants in `room` now, on any node, as this node knows them.
    pub fn room_len(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, |r| r.members.len())
    }

    /// The next request for the store, in the order they arose (fleet only).
    pub fn poll_command(&mut self) -> Option<ClusterCommand> {
        self.cluster.as_mut()?.commands.pop_front()
    }

    /// The store is reachable (again): this node's participants are registered anew, and
    /// joins are taken.
    pub fn cluster_connected(&mut self) {
        let members = self.local_members();
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        cluster.connected = true;
        cluster
            .commands
            .push_back(ClusterCommand::Restore { members });
    }

    /// The store became unreachable: joins waiting for it fail with `unavailable`; the
    /// node goes on serving its own participants.
    pub fn cluster_lost(&mut self) -> Vec<Outgoing> {
        let Some(cluster) = &mut self.cluster else {
            return Vec::new();
        };
        cluster.connected = false;
        cluster.commands.clear();
        let waiting: Vec<ConnId> = cluster.pending.drain().map(|(_, conn)| conn).collect();
        let mut out = Vec::new();
        for conn in waiting {
            self.forget_membership(conn);
            out.extend(unavailable(conn));
        }
        out
    }

    /// Some time after the store came back, when every live node has registered its
    /// participants again: ask for a snapshot of each of this node's rooms, to learn who
    /// joined or left meanwhile.
    pub fn sync_due(&mut self) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        if let Some(cluster) = &mut self.cluster {
            for room in rooms {
                cluster.commands.push_back(ClusterCommand::Sync { room });
            }
        }
    }

    /// The store did not admit participant `id`.
    pub fn admission_refused(&mut self, id: &str, refusal: Refusal) -> Vec<Outgoing> {
        let Some(conn) = self.cluster.as_mut().and_then(|c| c.pending.remove(id)) else {
            return Vec::new();
        };
        match refusal {
            Refusal::Full => {
                self.forget_membership(conn);
                error(conn, ErrorCode::RoomFull, "this room is full")
            }
            Refusal::Unavailable => {
                self.forget_membership(conn);
                unavailable(conn)
            }
            Refusal::Taken => {
                // 64 random bits met another participant's: draw again.
                let new_id = self.new_id();
                let room_size = self.config.room_size;
                let (Some(cluster), Some(membership)) = (
                    self.cluster.as_mut(),
                    self.connections
                        .get_mut(&conn)
                        .and_then(|c| c.membership.as_mut()),
                ) else {
                    return Vec::new();
                };
                membership.id.clone_from(&new_id);
                cluster.pending.insert(new_id.clone(), conn);
                cluster.commands.push_back(ClusterCommand::Admit {
                    room: membership.room.clone(),
                    id: new_id,
                    name: membership.name.clone(),
                    room_size,
                });
                Vec::new()
            }
        }
    }

    /// `command` could not be handed to the store (the I/O layer is behind): a join waiting
    /// on it is refused, and the sender of a signal or chat message is told it was not
    /// delivered (`unavailable`), rather than losing it silently.
    pub fn command_dropped(&mut self, command: ClusterCommand) -> Vec<Outgoing> {
        let (room, from) = match command {
            ClusterCommand::Admit { id, .. } => {
                return self.admission_refused(&id, Refusal::Unavailable)
            }
            ClusterCommand::Signal { room, from, .. } => (room, from),
            ClusterCommand::Chat { room, message } => (room, message.from),
            ClusterCommand::Leave { .. }
            | ClusterCommand::Restore { .. }
            | ClusterCommand::Sync { .. } => return Vec::new(),
        };
        match self.rooms.get(&room).and_then(|r| r.local_conn(&from)) {
            Some(conn) => error(
                conn,
                ErrorCode::Unavailable,
                "the server is busy: that message was not delivered; try again",
            ),
            None => Vec::new(),
        }
    }

    /// Something happened in the fleet (the store's order).
    pub fn handle_event(&mut self, event: ClusterEvent) -> Vec<Outgoing> {
        let Some(cluster) = &mut self.cluster else {
            return Vec::new();
        };
        match event {
            ClusterEvent::Joined {
                room,
                id,
                node,
                members,
                chat,
                ..
            } => {
                if node == cluster.node {
                    match cluster.pending.remove(&id) {
                        Some(conn) => self.admitted(conn, &room, &members, chat),
                        // It disconnected meanwhile; its leave is on the way to the store.
                        None => Vec::new(),
                    }
                } else {
                    self.learn_members(&room, &members, false)
                }
            }
            ClusterEvent::Left { room, id } => self.remote_left(&room, &id),
            ClusterEvent::Signal {
                room,
                from,
                to,
                data,
            } => {
                let Some(r) = self.rooms.get(&room) else {
                    return Vec::new();
                };
                match (r.find(&from), r.local_conn(&to)) {
                    (Some(_), Some(target)) => vec![Outgoing {
                        to: target,
                        message: ServerMessage::Signal { from, data },
                    }],
                    _ => Vec::new(),
                }
            }
            ClusterEvent::Chat { room, message } => self
                .rooms
                .get(&room)
                .map(|r| r.to_locals(&ServerMessage::Chat(message), None))
                .unwrap_or_default(),
            ClusterEvent::Sync { room, members } => self.learn_members(&room, &members, true),
        }
    }

    fn join(
        &mut self,
        unix_now: u64,
        conn: ConnId,
        room: String,
        name: String,
        token: Option<String>,
    ) -> Vec<Outgoing> {
        let (room, name) = (room.trim().to_owned(), name.trim().to_owned());
        let valid = |s: &str| {
            !s.is_empty() && s.chars().count() <= MAX_NAME_CHARS && !s.chars().any(char::is_control)
        };
        if !valid(&room) || !valid(&name) {
            return error(
                conn,
                ErrorCode::BadMessage,
                "room and name must be 1 to 64 printable characters",
            );
        }
        if self.draining {
            return error(
                conn,
                ErrorCode::Unavailable,
                "this server is restarting; try again in a moment",
            );
        }
        if let Some(secret) = &self.config.token_secret {
            let granted = token.is_some_and(|t| token::verify(secret, &room, &t, unix_now));
            if !granted {
                return error(
                    conn,
                    ErrorCode::Unauthorized,
                    "this room needs a valid token",
                );
            }
        }
        let Some(connection) = self.connections.get(&conn) else {
            return Vec::new();
        };
        if connection.membership.is_some() {
            return error(
                conn,
                ErrorCode::BadMessage,
                "already in a room; leave first",
            );
        }
        let address = connection.address;
        if self.rooms_of_ip.get(&address).copied().unwrap_or(0) >= self.config.rooms_per_ip {
            return error(
                conn,
                ErrorCode::RateLimited,
                "too many rooms from your address",
            );
        }
        if self.cluster.as_ref().is_some_and(|c| !c.connected) {
            return unavailable(conn);
        }
        if self.cluster.is_none() && self.room_len(&room) >= self.config.room_size {
            return error(conn, ErrorCode::RoomFull, "this room is full");
        }
        let id = self.new_id();
        *self.rooms_of_ip.entry(address).or_default() += 1;
        let room_size = self.config.room_size;
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.membership = Some(Membership {
                room: room.clone(),
                id: id.clone(),
                name: name.clone(),
                admitted: false,
            });
        }
        match &mut self.cluster {
            Some(cluster) => {
                cluster.pending.insert(id.clone(), conn);
                cluster.commands.push_back(ClusterCommand::Admit {
                    room,
                    id,
                    name,
                    room_size,
                });
                Vec::new()
            }
            None => {
                let chat = self.rooms.get(&room).map(|r| r.chat.to_vec());
                self.admitted(conn, &room, &[], chat.unwrap_or_default())
            }
        }
    }

    /// `conn` is in `room` now (in a fleet: `members` is the room as the store admitted
    /// it, `chat` its history): its welcome, and `peer-joined` for everyone else here.
    fn admitted(
        &mut self,
        conn: ConnId,
        room: &str,
        members: &[ClusterPeer],
        chat: Vec<ChatMessage>,
    ) -> Vec<Outgoing> {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return Vec::new();
        };
        let Some(membership) = connection.membership.as_mut() else {
            return Vec::new();
        };
        membership.admitted = true;
        let (id, name) = (membership.id.clone(), membership.name.clone());
        // Written by `connect` from a `Value`, so it parses.
        let ice_servers = serde_json::from_str(&connection.ice_servers).unwrap_or_default();
        self.rooms.entry(room.to_owned()).or_default();
        let mut out = self.learn_members(room, members, false);
        let r = self.rooms.entry(room.to_owned()).or_default();
        out.extend(r.to_locals(
            &ServerMessage::PeerJoined {
                id: id.clone(),
                name: name.clone(),
            },
            None,
        ));
        let peers = r
            .members
            .iter()
            .map(|p| PeerInfo {
                id: p.id.clone(),
                name: p.name.clone(),
            })
            .collect();
        r.members.push(Participant {
            id: id.clone(),
            name,
            at: Location::Local(conn),
        });
        out.insert(
            0,
            Outgoing {
                to: conn,
                message: ServerMessage::Welcome {
                    id,
                    peers,
                    ice_servers,
                    chat,
                    upstream_kbps: self.config.upstream_kbps,
                },
            },
        );
        out
    }

    /// Takes the store's list of `room` (fleet only): participants of other nodes missing
    /// here are added (`peer-joined`); with `complete`, those here but not in the list are
    /// removed (`peer-left`). This node's own participants are its own to know.
    fn learn_members(
        &mut self,
        room: &str,
        members: &[ClusterPeer],
        complete: bool,
    ) -> Vec<Outgoing> {
        let Some(cluster) = &self.cluster else {
            return Vec::new();
        };
        let Some(r) = self.rooms.get_mut(room) else {
            // No participant here: nobody to tell. (`admitted` creates the room after.)
            return Vec::new();
        };
        let mut out = Vec::new();
        if complete {
            let gone: Vec<String> = r
                .members
                .iter()
                .filter(|p| matches!(p.at, Location::Remote(_)))
                .filter(|p| !members.iter().any(|m| m.id == p.id))
                .map(|p| p.id.clone())
                .collect();
            for id in gone {
                out.extend(r.remove(&id));
            }
        }
        for member in members {
            if member.node == cluster.node || r.find(&member.id).is_some() {
                continue;
            }
            out.extend(r.to_locals(
                &ServerMessage::PeerJoined {
                    id: member.id.clone(),
                    name: member.name.clone(),
                },
                None,
            ));
            r.members.push(Participant {
                id: member.id.clone(),
                name: member.name.clone(),
                at: Location::Remote(member.node.clone()),
            });
        }
        out
    }

    /// A participant of another node left.
    fn remote_left(&mut self, room: &str, id: &str) -> Vec<Outgoing> {
        match self.rooms.get_mut(room) {
            Some(r) if matches!(r.find(id), Some(p) if matches!(p.at, Location::Remote(_))) => {
                r.remove(id)
            }
            _ => Vec::new(),
        }
    }

    /// Delivers `data` to `to` only if it is in the sender's room.
    fn relay(&mut self, conn: ConnId, to: &str, data: serde_json::Value) -> Vec<Outgoing> {
        let Some(sender) = self.member(conn) else {
            return error(conn, ErrorCode::BadMessage, "join a room first");
        };
        let (room, from) = (sender.room.clone(), sender.id.clone());
        let target = self
            .rooms
            .get(&room)
            .and_then(|r| r.find(to))
            .filter(|p| p.id != from)
            .map(|p| p.at.clone());
        let Some(target) = target else {
            return error(
                conn,
                ErrorCode::UnknownPeer,
                "no such participant in your room",
            );
        };
        if let Some(cluster) = self.cluster.as_mut().filter(|c| c.connected) {
            let node = match target {
                Location::Local(_) => cluster.node.clone(),
                Location::Remote(node) => node,
            };
            cluster.commands.push_back(ClusterCommand::Signal {
                node,
                room,
                from,
                to: to.to_owned(),
                data,
            });
            return Vec::new();
        }
        match target {
            Location::Local(target) => vec![Outgoing {
                to: target,
                message: ServerMessage::Signal { from, data },
            }],
            Location::Remote(_) => {
                self.count_dropped();
                Vec::new()
            }
        }
    }

    /// A chat message for everyone in the sender's room, the sender included.
    fn chat(&mut self, unix_ms: u64, conn: ConnId, text: String) -> Vec<Outgoing> {
        let Some(sender) = self.member(conn) else {
            return error(conn, ErrorCode::BadMessage, "join a room first");
        };
        if text.trim().is_empty() || text.len() > self.config.max_chat_bytes {
            return error(
                conn,
                ErrorCode::BadMessage,
                &format!(
                    "chat text must be 1 to {} bytes",
                    self.config.max_chat_bytes
                ),
            );
        }
        let room = sender.room.clone();
        let message = ChatMessage {
            from: sender.id.clone(),
            name: sender.name.clone(),
            text,
            at: unix_ms,
        };
        if let Some(cluster) = self.cluster.as_mut().filter(|c| c.connected) {
            cluster
                .commands
                .push_back(ClusterCommand::Chat { room, message });
            return Vec::new();
        }
        let Some(r) = self.rooms.get_mut(&room) else {
            return Vec::new();
        };
        let out = r.to_locals(&ServerMessage::Chat(message.clone()), None);
        let others_elsewhere = r
            .members
            .iter()
            .any(|p| matches!(p.at, Location::Remote(_)));
        if self.cluster.is_none() {
            r.chat.push(message);
        } else if others_elsewhere {
            self.count_dropped();
        }
        out
    }

    fn leave(&mut self, conn: ConnId) -> Vec<Outgoing> {
        let Some(Membership {
            room, id, admitted, ..
        }) = self.forget_membership(conn)
        else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if admitted {
            if let Some(r) = self.rooms.get_mut(&room) {
                out = r.remove(&id);
                if r.local_members().next().is_none() {
                    // Nobody here is in it: this node stops following it.
                    self.rooms.remove(&room);
                }
            }
        }
        if let Some(cluster) = &mut self.cluster {
            cluster.pending.remove(&id);
            // While the store is unreachable, `Restore` removes it later.
            if cluster.connected {
                cluster
                    .commands
                    .push_back(ClusterCommand::Leave { room, id });
            }
        }
        out
    }

    /// Ends `conn`'s membership (admitted or not) and its count against its address.
    fn forget_membership(&mut self, conn: ConnId) -> Option<Membership> {
        let connection = self.connections.get_mut(&conn)?;
        let membership = connection.membership.take()?;
        if let Some(count) = self.rooms_of_ip.get_mut(&connection.address) {
            *count -= 1;
            if *count == 0 {
                self.rooms_of_ip.remove(&connection.address);
            }
        }
        Some(membership)
    }

    /// This node's admitted participants, for [`ClusterCommand::Restore`].
    fn local_members(&self) -> Vec<LocalMember> {
        self.rooms
            .iter()
            .flat_map(|(room, r)| {
                r.local_members().map(move |p| LocalMember {
                    room: room.clone(),
                    id: p.id.clone(),
                    name: p.name.clone(),
                })
            })
            .collect()
    }

    fn count_dropped(&mut self) {
        if let Some(cluster) = &mut self.cluster {
            cluster.dropped += 1;
        }
    }

    /// Spends one of `conn`'s messages. Over its rate: a `rate-limited` error at most once
    /// per [`RATE_LIMIT_REPLY_INTERVAL`], nothing otherwise (as for an unknown `conn`).
    fn take_token(&mut self, now: Instant, conn: ConnId) -> Result<(), Vec<Outgoing>> {
        let Some(connection) = self.connections.get_mut(&conn) else {
            return Err(Vec::new());
        };
        if connection.bucket.take(now) {
            return Ok(());
        }
        let recently = connection
            .last_rate_limit_reply
            .is_some_and(|at| now.duration_since(at) < RATE_LIMIT_REPLY_INTERVAL);
        if recently {
            return Err(Vec::new());
        }
        connection.last_rate_limit_reply = Some(now);
        Err(error(
            conn,
            ErrorCode::RateLimited,
            "too many messages; slow down",
        ))
    }

    /// `conn`'s admitted membership.
    fn member(&self, conn: ConnId) -> Option<&Membership> {
        self.connections
            .get(&conn)?
            .membership
            .as_ref()
            .filter(|m| m.admitted)
    }

    /// 16 random hex digits: unguessable, and 64 bits make a repeat as likely as a guess.
    fn new_id(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
    }
}

impl Room {
    fn find(&self, id: &str) -> Option<&Participant> {
        self.members.iter().find(|p| p.id == id)
    }

    fn local_conn(&self, id: &str) -> Option<ConnId> {
        match self.find(id)?.at {
            Location::Local(conn) => Some(conn),
            Location::Remote(_) => None,
        }
    }

    fn local_members(&self) -> impl Iterator<Item = &Participant> {
        self.members
            .iter()
            .filter(|p| matches!(p.at, Location::Local(_)))
    }

    /// `message` for each participant on this node but `except`.
    fn to_locals(&self, message: &ServerMessage, except: Option<ConnId>) -> Vec<Outgoing> {
        self.members
            .iter()
            .filter_map(|p| match p.at {
                Location::Local(conn) if Some(conn) != except => Some(Outgoing {
                    to: conn,
                    message: message.clone(),
                }),
                _ => None,
            })
            .collect()
    }

    /// Removes participant `id`; the participants left here hear `peer-left`.
    fn remove(&mut self, id: &str) -> Vec<Outgoing> {
        let before = self.members.len();
        self.members.retain(|p| p.id != id);
        if self.members.len() == before {
            return Vec::new();
        }
        self.to_locals(&ServerMessage::PeerLeft { id: id.to_owned() }, None)
    }
}

fn error(conn: ConnId, code: ErrorCode, message: &str) -> Vec<Outgoing> {
    vec![Outgoing {
        to: conn,
        message: ServerMessage::Error {
            code,
            message: message.into(),
        },
    }]
}

fn unavailable(conn: ConnId) -> Vec<Outgoing> {
    error(
        conn,
        ErrorCode::Unavailable,
        "rooms are unavailable on this server now; try again in a moment",
    )
}

/// Allows `rate` messages per second on average, `capacity` at once.
struct TokenBucket {
    capacity: f64,
    rate: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    fn new(now: Instant, capacity: u32, rate: u32) -> Self {
        Self {
            capacity: f64::from(capacity),
            rate: f64::from(rate),
            tokens: f64::from(capacity),
            updated: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    /// The wall clock the tests' messages arrive at: 1000 s after the epoch.
    const UNIX_MS: u64 = 1_000_000;

    struct World {
        rooms: Rooms,
        now: Instant,
    }

    impl World {
        fn new(config: RoomsConfig) -> Self {
            Self {
                rooms: Rooms::new(config, Rng::from_seed(42)),
                now: Instant::now(),
            }
        }

        fn connect(&mut self, conn: ConnId) {
            self.connect_from(conn, IP);
        }

        fn connect_from(&mut self, conn: ConnId, ip: IpAddr) {
            self.rooms
                .connect(self.now, conn, ip, json!([{"urls": ["turn:h:3478"]}]));
        }

        fn send(&mut self, conn: ConnId, message: serde_json::Value) -> Vec<Outgoing> {
            self.rooms
                .handle_text(self.now, UNIX_MS, conn, &message.to_string())
        }

        /// Joins and returns the participant id from the welcome.
        fn join(&mut self, conn: ConnId, room: &str, name: &str) -> String {
            self.connect(conn);
            let out = self.send(conn, json!({"type": "join", "room": room, "name": name}));
            match &out[0].message {
                ServerMessage::Welcome { id, .. } => id.clone(),
                other => panic!("expected welcome, got {other:?}"),
            }
        }
    }

    fn error_code(out: &[Outgoing]) -> Option<ErrorCode> {
        match out {
            [Outgoing {
                message: ServerMessage::Error { code, .. },
                ..
            }] => Some(*code),
            _ => None,
        }
    }

    #[test]
    fn join_welcomes_with_peers_and_ice_servers_and_tells_the_others() {
        let mut w = World::new(RoomsConfig::default());
        let alice = w.join(1, "r", "Alice");
        w.connect(2);
        let out = w.send(2, json!({"type": "join", "room": "r", "name": "Bob"}));
        assert_eq!(out.len(), 2);
        let ServerMessage::Welcome {
            id: bob,
            peers,
            ice_servers,
            chat,
            upstream_kbps,
        } = &out[0].message
        else {
            panic!("welcome first");
        };
        assert_eq!(out[0].to, 2);
        assert_eq!(
            peers,
            &[PeerInfo {
                id: alice.clone(),
                name: "Alice".into()
            }]
        );
        assert_eq!(ice_servers[0]["urls"][0], "turn:h:3478");
        assert!(chat.is_empty());
        assert_eq!(*upstream_kbps, 2500);
        assert_eq!(out[1].to, 1);
        assert_eq!(
            out[1].message,
            ServerMessage::PeerJoined {
                id: bob.clone(),
                name: "Bob".into()
            }
        );
        assert_ne!(&alice, bob);
    }

    #[test]
    fn full_room_refuses_the_next_joiner() {
        let mut w = World::new(RoomsConfig {
            room_size: 3,
            ..RoomsConfig::default()
        });
        for conn in 1..=3 {
            w.join(conn, "r", "x");
        }
        w.connect(4);
        let out = w.send(4, json!({"type": "join", "room": "r", "name": "late"}));
        assert_eq!(error_code(&out), Some(ErrorCode::RoomFull));
        assert_eq!(w.rooms.room_len("r"), 3);
        // Someone leaves: there is room again.
        w.rooms.disconnect(2);
        let out = w.send(4, json!({"type": "join", "room": "r", "name": "late"}));
        assert!(matches!(out[0].message, ServerMessage::Welcome { .. }));
    }

    #[test]
    fn signal_reaches_the_named_peer_only() {
        let mut w = World::new(RoomsConfig::default());
        let a = w.join(1, "r", "A");
        let b = w.join(2, "r", "B");
        w.join(3, "r", "C");
        let out = w.send(1, json!({"type": "signal", "to": b, "data": {"sdp": "x"}}));
        assert_eq!(
            out,
            vec![Outgoing {
                to: 2,
                message: ServerMessage::Signal {
                    from: a,
                    data: json!({"sdp": "x"})
                }
            }]
        );
    }

    #[test]
    fn participants_in_other_rooms_cannot_be_addressed() {
        let mut w = World::new(RoomsConfig::default());
        w.join(1, "red", "A");
        let blue = w.join(2, "blue", "B");
        let out = w.send(1, json!({"type": "signal", "to": blue, "data": {}}));
        assert_eq!(error_code(&out), Some(ErrorCode::UnknownPeer));
        let me = w.join(3, "red", "C");
        let out = w.send(3, json!({"type": "signal", "to": me, "data": {}}));
        assert_eq!(
            error_code(&out),
            Some(ErrorCode::UnknownPeer),
            "not to yourself either"
        );
    }

    #[test]
    fn leaving_tells_the_others_and_empty_rooms_vanish() {
        let mut w = World::new(RoomsConfig::default());
        let a = w.join(1, "r", "A");
        w.join(2, "r", "B");
        let out = w.rooms.disconnect(1);
        assert_eq!(
            out,
            vec![Outgoing {
                to: 2,
                message: ServerMessage::PeerLeft { id: a }
            }]
        );
        assert!(w.send(2, json!({"type": "leave"})).is_empty());
        assert_eq!(w.rooms.room_len("r"), 0);
        assert!(w.rooms.rooms.is_empty());
    }

    #[test]
    fn bad_messages_get_an_error_and_affect_no_one_else() {
        let mut w = World::new(RoomsConfig::default());
        w.join(1, "r", "A");
        w.join(2, "r", "B");
        for text in [
            "not json",
            "{\"type\":\"dance\"}",
            "{\"type\":\"signal\"}",
            "[]",
        ] {
            let out = w.rooms.handle_text(w.now, UNIX_MS, 1, text);
            assert_eq!(error_code(&out), Some(ErrorCode::BadMessage), "{text}");
            assert!(out.iter().all(|o| o.to == 1));
        }
        assert_eq!(
            error_code(&w.rooms.handle_binary(w.now, 1)),
            Some(ErrorCode::BadMessage)
        );
        let huge = format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(70_000));
        assert_eq!(
            error_code(&w.rooms.handle_text(w.now, 0, 1, &huge)),
            Some(ErrorCode::BadMessage)
        );
        w.connect(3);
        let out = w.send(3, json!({"type": "signal", "to": "x", "data": {}}));
        assert_eq!(
            error_code(&out),
            Some(ErrorCode::BadMessage),
            "must join first"
        );
        for (room, name) in [
            ("", "n"),
            ("r", ""),
            ("r", &"n".repeat(65)),
            ("r\u{7}", "n"),
        ] {
            let out = w.send(3, json!({"type": "join", "room": room, "name": name}));
            assert_eq!(error_code(&out), Some(ErrorCode::BadMessage));
        }
        let out = w.send(1, json!({"type": "join", "room": "s", "name": "A"}));
        assert_eq!(
            error_code(&out),
            Some(ErrorCode::BadMessage),
            "one room per connection"
        );
        assert_eq!(w.rooms.room_len("r"), 2);
    }

    #[test]
    fn flooding_is_rate_limited_with_one_reply_per_second() {
        let mut w = World::new(RoomsConfig {
            messages_per_second: 5,
            ..RoomsConfig::default()
        });
        w.connect(1);
        let replies: Vec<_> = (0..30)
            .map(|_| w.send(1, json!({"type": "ping"})))
            .collect();
        assert!(
            replies[..10]
                .iter()
                .all(|r| r[0].message == ServerMessage::Pong),
            "burst of 2x rate"
        );
        let limited = replies
            .iter()
            .filter(|r| error_code(r) == Some(ErrorCode::RateLimited))
            .count();
        assert_eq!(
            limited, 1,
            "one rate-limited reply, the rest dropped silently"
        );
        w.now += Duration::from_secs(1);
        assert_eq!(
            w.send(1, json!({"type": "ping"}))[0].message,
            ServerMessage::Pong,
            "refills"
        );
    }

    #[test]
    fn one_address_may_hold_only_so_many_rooms() {
        let mut w = World::new(RoomsConfig {
            rooms_per_ip: 2,
            ..RoomsConfig::default()
        });
        w.join(1, "a", "x");
        w.join(2, "b", "x");
        w.connect(3);
        let out = w.send(3, json!({"type": "join", "room": "c", "name": "x"}));
        assert_eq!(error_code(&out), Some(ErrorCode::RateLimited));
        w.connect_from(4, "192.0.2.2".parse().unwrap());
        let out = w.send(4, json!({"type": "join", "room": "c", "name": "x"}));
        assert!(matches!(out[0].message, ServerMessage::Welcome { .. }));
    }

    #[test]
    fn binary_frames_spend_the_same_rate_limit_as_text() {
        let mut w = World::new(RoomsConfig {
            messages_per_second: 5,
            ..RoomsConfig::default()
        });
        w.connect(1);
        let replies: Vec<_> = (0..30).map(|_| w.rooms.handle_binary(w.now, 1)).collect();
        let codes: Vec<_> = replies.iter().map(|r| error_code(r)).collect();
        assert!(
            codes[..10]
                .iter()
                .all(|c| *c == Some(ErrorCode::BadMessage)),
            "burst of 2x rate: {codes:?}"
        );
        assert_eq!(codes[10], Some(ErrorCode::RateLimited), "{codes:?}");
        assert!(
            replies[11..].iter().all(Vec::is_empty),
            "the rest dropped silently: {codes:?}"
        );
        // One bucket for both kinds: text is limited after a binary flood, and within the
        // same second gets no second rate-limited reply either.
        assert!(w.send(1, json!({"type": "ping"})).is_empty());
        w.now += Duration::from_secs(1);
        assert_eq!(
            w.send(1, json!({"type": "ping"}))[0].message,
            ServerMessage::Pong,
            "refills"
        );
        assert!(
            w.rooms.handle_binary(w.now, 99).is_empty(),
            "unknown connection"
        );
    }

    #[test]
    fn an_ipv6_slash_64_counts_as_one_address_for_rooms() {
        let mut w = World::new(RoomsConfig {
            rooms_per_ip: 2,
            ..RoomsConfig::default()
        });
        let join_from = |w: &mut World, conn: ConnId, ip: &str, room: &str| {
            w.connect_from(conn, ip.parse().unwrap());
            w.send(conn, json!({"type": "join", "room": room, "name": "x"}))
        };
        let welcomed = |out: &[Outgoing]| matches!(out[0].message, ServerMessage::Welcome { .. });
        assert!(welcomed(&join_from(&mut w, 1, "2001:db8:1:2::1", "a")));
        assert!(welcomed(&join_from(&mut w, 2, "2001:db8:1:2::2", "b")));
        // A third address of the same /64, however it is spelled, is the same client.
        let out = join_from(&mut w, 3, "2001:db8:1:2:ffff:ffff:ffff:ffff", "c");
        assert_eq!(error_code(&out), Some(ErrorCode::RateLimited));
        // The neighbouring /64 is someone else.
        assert!(welcomed(&join_from(&mut w, 4, "2001:db8:1:3::1", "c")));
        // An IPv4-mapped client counts under its IPv4 address, not as an IPv6 /64.
        assert!(welcomed(&join_from(&mut w, 5, "192.0.2.7", "d")));
        assert!(welcomed(&join_from(&mut w, 6, "::ffff:192.0.2.7", "e")));
        let out = join_from(&mut w, 7, "192.0.2.7", "f");
        assert_eq!(error_code(&out), Some(ErrorCode::RateLimited));
        // Leaving gives the /64 its place back.
        w.rooms.disconnect(1);
        assert!(welcomed(&join_from(&mut w, 8, "2001:db8:1:2::3", "c")));
        assert_eq!(
            w.rooms.rooms_of_ip.len(),
            3,
            "two /64s and one IPv4 address"
        );
    }

    #[test]
    fn token_protected_rooms_need_a_valid_token() {
        let config = RoomsConfig {
            token_secret: Some("k".into()),
            ..RoomsConfig::default()
        };
        let mut w = World::new(config);
        w.connect(1);
        let out = w.send(1, json!({"type": "join", "room": "r", "name": "A"}));
        assert_eq!(error_code(&out), Some(ErrorCode::Unauthorized));
        let other_room = token::mint("k", "s", 2000);
        let out = w.send(
            1,
            json!({"type": "join", "room": "r", "name": "A", "token": other_room}),
        );
        assert_eq!(error_code(&out), Some(ErrorCode::Unauthorized));
        let good = token::mint("k", "r", 2000);
        let out = w.send(
            1,
            json!({"type": "join", "room": "r", "name": "A", "token": good}),
        );
        assert!(matches!(out[0].message, ServerMessage::Welcome { .. }));
    }

    #[test]
    fn draining_tells_everyone_to_reconnect_and_refuses_joins() {
        let mut w = World::new(RoomsConfig::default());
        w.join(1, "r", "A");
        w.join(2, "r", "B");
        w.connect(3);
        assert_eq!(
            w.rooms.figures(),
            RoomsFigures {
                rooms: 1,
                participants: 2,
                connections: 3
            }
        );
        let mut told: Vec<ConnId> = w
            .rooms
            .drain()
            .into_iter()
            .inspect(|o| assert_eq!(o.message, ServerMessage::Reconnect))
            .map(|o| o.to)
            .collect();
        told.sort();
        assert_eq!(told, [1, 2, 3]);
        let out = w.send(3, json!({"type": "join", "room": "r", "name": "C"}));
        assert_eq!(error_code(&out), Some(ErrorCode::Unavailable));
        assert_eq!(w.rooms.room_len("r"), 2, "members stay until they go");
    }

    #[test]
    fn reconfigure_applies_to_the_next_join() {
        let mut w = World::new(RoomsConfig::default());
        w.join(1, "r", "A");
        w.join(2, "r", "B");
        w.rooms.reconfigure(RoomsConfig {
            room_size: 2,
            ..RoomsConfig::default()
        });
        w.connect(3);
        let out = w.send(3, json!({"type": "join", "room": "r", "name": "C"}));
        assert_eq!(error_code(&out), Some(ErrorCode::RoomFull));
    }

    fn chat_of(out: &[Outgoing]) -> Vec<(ConnId, String)> {
        out.iter()
            .filter_map(|o| match &o.message {
                ServerMessage::Chat(m) => Some((o.to, m.text.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn chat_reaches_everyone_with_sender_name_and_time_and_late_joiners_get_history() {
        let mut w = World::new(RoomsConfig::default());
        let a = w.join(1, "r", "A");
        w.join(2, "r", "B");
        let out = w.send(1, json!({"type": "chat", "text": "hello"}));
        assert_eq!(
            chat_of(&out),
            vec![(1, "hello".to_owned()), (2, "hello".to_owned())]
        );
        let ServerMessage::Chat(message) = &out[0].message else {
            unreachable!()
        };
        assert_eq!(
            (message.from.as_str(), message.name.as_str(), message.at),
            (a.as_str(), "A", UNIX_MS)
        );
        w.send(2, json!({"type": "chat", "text": "hi A"}));
        w.connect(3);
        let out = w.send(3, json!({"type": "join", "room": "r", "name": "C"}));
        let ServerMessage::Welcome { chat, .. } = &out[0].message else {
            panic!("welcome first");
        };
        let texts: Vec<&str> = chat.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, ["hello", "hi A"]);
        // Another room hears nothing.
        w.join(4, "other", "D");
        let out = w.send(1, json!({"type": "chat", "text": "x"}));
        assert!(out.iter().all(|o| o.to != 4));
    }

    #[test]
    fn chat_history_is_bounded_and_forgotten_when_the_room_empties() {
        let mut w = World::new(RoomsConfig {
            messages_per_second: 1000,
            ..RoomsConfig::default()
        });
        w.join(1, "r", "A");
        for n in 0..80 {
            w.send(1, json!({"type": "chat", "text": format!("m{n}")}));
        }
        w.connect(2);
        let out = w.send(2, json!({"type": "join", "room": "r", "name": "B"}));
        let ServerMessage::Welcome { chat, .. } = &out[0].message else {
            panic!("welcome first");
        };
        assert_eq!(chat.len(), super::super::chat::HISTORY_MESSAGES);
        assert_eq!(chat[0].text, "m30");
        w.rooms.disconnect(1);
        w.rooms.disconnect(2);
        let out = {
            w.connect(3);
            w.send(3, json!({"type": "join", "room": "r", "name": "C"}))
        };
        let ServerMessage::Welcome { chat, .. } = &out[0].message else {
            panic!("welcome first");
        };
        assert!(chat.is_empty(), "an emptied room forgets its chat");
    }

    #[test]
    fn bad_chat_gets_an_error_and_is_not_broadcast() {
        let mut w = World::new(RoomsConfig {
            max_chat_bytes: 10,
            messages_per_second: 3,
            ..RoomsConfig::default()
        });
        w.connect(9);
        let out = w.send(9, json!({"type": "chat", "text": "not in a room"}));
        assert_eq!(error_code(&out), Some(ErrorCode::BadMessage));
        w.join(1, "r", "A");
        w.join(2, "r", "B");
        for bad in [json!(""), json!("   "), json!("0123456789X"), json!(5)] {
            let out = w.send(1, json!({"type": "chat", "text": bad}));
            assert_eq!(error_code(&out), Some(ErrorCode::BadMessage), "{bad}");
            assert!(out.iter().all(|o| o.to == 1));
        }
        // Chat spends the message rate: the bucket (6) is empty after the join, 4 tries
        // and one good message.
        let out = w.send(1, json!({"type": "chat", "text": "ok"}));
        assert_eq!(chat_of(&out).len(), 2);
        let out = w.send(1, json!({"type": "chat", "text": "ok"}));
        assert_eq!(error_code(&out), Some(ErrorCode::RateLimited));
        w.now += Duration::from_secs(1);
        let out = w.send(1, json!({"type": "chat", "text": "0123456789"}));
        assert_eq!(chat_of(&out).len(), 2, "exactly the limit is fine");
    }

    /// A fleet node's rooms, with the store played by the test: commands are taken and
    /// events given by hand.
    struct Node {
        w: World,
    }

    const HERE: &str = "node-here";
    const THERE: &str = "node-there";

    impl Node {
        fn new(config: RoomsConfig) -> Self {
            let mut w = World::new(config);
            w.rooms = Rooms::clustered(w.rooms.config.clone(), Rng::from_seed(7), HERE.into());
            w.rooms.cluster_connected();
            let restore = w.rooms.poll_command();
            assert_eq!(
                restore,
                Some(ClusterCommand::Restore {
                    members: Vec::new()
                })
            );
            Self { w }
        }

        fn commands(&mut self) -> Vec<ClusterCommand> {
            std::iter::from_fn(|| self.w.rooms.poll_command()).collect()
        }

        /// Asks to join; returns the id the node asked the store to admit.
        fn ask_join(&mut self, conn: ConnId, room: &str, name: &str) -> String {
            self.w.connect(conn);
            let out = self
                .w
                .send(conn, json!({"type": "join", "room": room, "name": name}));
            assert!(out.is_empty(), "the welcome waits for the store: {out:?}");
            match self.commands().as_slice() {
                [ClusterCommand::Admit { id, room_size, .. }] => {
                    assert_eq!(*room_size, self.w.rooms.config.room_size);
                    id.clone()
                }
                other => panic!("expected one Admit, got {other:?}"),
            }
        }
    }

    fn peer(id: &str, name: &str, node: &str) -> ClusterPeer {
        ClusterPeer {
            id: id.into(),
            name: name.into(),
            node: node.into(),
        }
    }

    fn joined(room: &str, who: &ClusterPeer, members: &[ClusterPeer]) -> ClusterEvent {
        ClusterEvent::Joined {
            room: room.into(),
            id: who.id.clone(),
            name: who.name.clone(),
            node: who.node.clone(),
            members: members.to_vec(),
            chat: Vec::new(),
        }
    }

    #[test]
    fn in_a_fleet_the_welcome_comes_from_the_store_with_everyone_on_every_node() {
        let mut n = Node::new(RoomsConfig::default());
        let id = n.ask_join(1, "r", "A");
        let remote = peer("b0", "B", THERE);
        let me = peer(&id, "A", HERE);
        let chat = vec![ChatMessage {
            from: "b0".into(),
            name: "B".into(),
            text: "earlier".into(),
            at: 5,
        }];
        let mut event = joined("r", &me, &[remote.clone(), me.clone()]);
        if let ClusterEvent::Joined { chat: history, .. } = &mut event {
            history.clone_from(&chat);
        }
        let out = n.w.rooms.handle_event(event);
        assert_eq!(
            out,
            vec![Outgoing {
                to: 1,
                message: ServerMessage::Welcome {
                    id: id.clone(),
                    peers: vec![PeerInfo {
                        id: "b0".into(),
                        name: "B".into()
                    }],
                    ice_servers: json!([{"urls": ["turn:h:3478"]}]),
                    chat,
                    upstream_kbps: 2500,
                }
            }]
        );
        // A join on another node: peer-joined here; a repeat of it changes nothing.
        let c = peer("c0", "C", THERE);
        let event = joined("r", &c, &[remote.clone(), me.clone(), c.clone()]);
        let out = n.w.rooms.handle_event(event.clone());
        assert_eq!(
            out,
            vec![Outgoing {
                to: 1,
                message: ServerMessage::PeerJoined {
                    id: "c0".into(),
                    name: "C".into()
                }
            }]
        );
        assert!(n.w.rooms.handle_event(event).is_empty());
        assert_eq!(n.w.rooms.room_len("r"), 3);
        // A second local joiner is welcomed with all three and the first hears of it.
        let id2 = n.ask_join(2, "r", "D");
        let d = peer(&id2, "D", HERE);
        let out =
            n.w.rooms
                .handle_event(joined("r", &d, &[remote, me, c, d.clone()]));
        let ServerMessage::Welcome { peers, .. } = &out[0].message else {
            panic!("welcome first: {out:?}");
        };
        assert_eq!(peers.len(), 3);
        assert_eq!(out[1].to, 1);
        assert!(matches!(out[1].message, ServerMessage::PeerJoined { .. }));
        // Someone elsewhere leaves.
        let out = n.w.rooms.handle_event(ClusterEvent::Left {
            room: "r".into(),
            id: "b0".into(),
        });
        assert_eq!(out.len(), 2);
        assert!(out
            .iter()
            .all(|o| o.message == ServerMessage::PeerLeft { id: "b0".into() }));
        assert_eq!(n.w.rooms.figures().participants, 2);
    }

    #[test]
    fn in_a_fleet_signals_and_chat_go_through_the_store_in_order() {
        let mut n = Node::new(RoomsConfig::default());
        let id = n.ask_join(1, "r", "A");
        let me = peer(&id, "A", HERE);
        let b = peer("b0", "B", THERE);
        n.w.rooms
            .handle_event(joined("r", &me, &[b.clone(), me.clone()]));
        assert!(n
            .w
            .send(1, json!({"type": "signal", "to": "b0", "data": {"sdp": 1}}))
            .is_empty());
        assert!(n
            .w
            .send(1, json!({"type": "chat", "text": "hi"}))
            .is_empty());
        let commands = n.commands();
        assert!(matches!(
            &commands[..],
            [
                ClusterCommand::Signal { node, to, .. },
                ClusterCommand::Chat { room, .. },
            ] if node == THERE && to == "b0" && room == "r"
        ));
        // What the store sends back is delivered: a signal from b0, the chat to everyone.
        let out = n.w.rooms.handle_event(ClusterEvent::Signal {
            room: "r".into(),
            from: "b0".into(),
            to: id.clone(),
            data: json!({"sdp": 2}),
        });
        assert_eq!(
            out,
            vec![Outgoing {
                to: 1,
                message: ServerMessage::Signal {
                    from: "b0".into(),
                    data: json!({"sdp": 2})
                }
            }]
        );
        let ClusterCommand::Chat { message, .. } = commands[1].clone() else {
            unreachable!()
        };
        let out = n.w.rooms.handle_event(ClusterEvent::Chat {
            room: "r".into(),
            message,
        });
        assert_eq!(chat_of(&out), vec![(1, "hi".to_owned())]);
        // Signals from someone not in the room, or to someone not here, go nowhere.
        for (from, to) in [("zz", id.as_str()), ("b0", "zz")] {
            let out = n.w.rooms.handle_event(ClusterEvent::Signal {
                room: "r".into(),
                from: from.into(),
                to: to.into(),
                data: json!(null),
            });
            assert!(out.is_empty());
        }
    }

    #[test]
    fn in_a_fleet_a_full_room_and_a_lost_store_refuse_the_join() {
        let mut n = Node::new(RoomsConfig::default());
        let id = n.ask_join(1, "r", "A");
        let out = n.w.rooms.admission_refused(&id, Refusal::Full);
        assert_eq!(error_code(&out), Some(ErrorCode::RoomFull));
        // The connection may try again; an id taken in the room is drawn anew.
        let out =
            n.w.send(1, json!({"type": "join", "room": "r", "name": "A"}));
        assert!(out.is_empty());
        let Some(ClusterCommand::Admit { id: first, .. }) = n.w.rooms.poll_command() else {
            panic!("admit");
        };
        assert!(n
            .w
            .rooms
            .admission_refused(&first, Refusal::Taken)
            .is_empty());
        let Some(ClusterCommand::Admit { id: second, .. }) = n.w.rooms.poll_command() else {
            panic!("admit again");
        };
        assert_ne!(first, second);
        // The store goes away while the join waits.
        let out = n.w.rooms.cluster_lost();
        assert_eq!(error_code(&out), Some(ErrorCode::Unavailable));
        // A late answer for it is ignored; new joins are refused at once.
        let late = peer(&second, "A", HERE);
        assert!(n
            .w
            .rooms
            .handle_event(joined("r", &late, std::slice::from_ref(&late)))
            .is_empty());
        let out =
            n.w.send(1, json!({"type": "join", "room": "r", "name": "A"}));
        assert_eq!(error_code(&out), Some(ErrorCode::Unavailable));
        assert!(n.commands().is_empty());
        assert_eq!(n.w.rooms.figures().participants, 0);
    }

    #[test]
    fn without_the_store_a_node_serves_its_own_and_counts_what_it_drops() {
        let mut n = Node::new(RoomsConfig::default());
        let a = n.ask_join(1, "r", "A");
        let b = n.ask_join(2, "r", "B");
        let (pa, pb, pc) = (
            peer(&a, "A", HERE),
            peer(&b, "B", HERE),
            peer("c0", "C", THERE),
        );
        n.w.rooms
            .handle_event(joined("r", &pa, &[pc.clone(), pa.clone()]));
        n.w.rooms
            .handle_event(joined("r", &pb, &[pc.clone(), pa.clone(), pb.clone()]));
        assert!(n.w.rooms.cluster_lost().is_empty());
        // Local signal and chat are delivered at once; the remote signal is dropped.
        let out = n.w.send(1, json!({"type": "signal", "to": b, "data": 1}));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].to, 2);
        assert!(n
            .w
            .send(1, json!({"type": "signal", "to": "c0", "data": 1}))
            .is_empty());
        let out = n.w.send(2, json!({"type": "chat", "text": "still here"}));
        assert_eq!(chat_of(&out).len(), 2);
        assert_eq!(
            n.w.rooms.cluster_dropped(),
            2,
            "the signal and the chat for C"
        );
        // B leaves meanwhile; when the store is back, the node registers who is left and,
        // later, asks for a snapshot of the room.
        let out = n.w.rooms.disconnect(2);
        assert_eq!(out.len(), 1);
        assert!(
            n.commands().is_empty(),
            "nothing reaches the store while it is away"
        );
        n.w.rooms.cluster_connected();
        assert_eq!(
            n.commands(),
            vec![ClusterCommand::Restore {
                members: vec![LocalMember {
                    room: "r".into(),
                    id: a.clone(),
                    name: "A".into()
                }]
            }]
        );
        n.w.rooms.sync_due();
        assert_eq!(
            n.commands(),
            vec![ClusterCommand::Sync { room: "r".into() }]
        );
        // C left while the store was away, D joined: the snapshot tells.
        let pd = peer("d0", "D", THERE);
        let out = n.w.rooms.handle_event(ClusterEvent::Sync {
            room: "r".into(),
            members: vec![pa, pd],
        });
        assert_eq!(
            out,
            vec![
                Outgoing {
                    to: 1,
                    message: ServerMessage::PeerLeft { id: "c0".into() }
                },
                Outgoing {
                    to: 1,
                    message: ServerMessage::PeerJoined {
                        id: "d0".into(),
                        name: "D".into()
                    }
                }
            ]
        );
    }

    #[test]
    fn in_a_fleet_a_message_the_store_could_not_take_is_refused_to_its_sender() {
        let mut n = Node::new(RoomsConfig::default());
        let a = n.ask_join(1, "r", "A");
        let pa = peer(&a, "A", HERE);
        n.w.rooms
            .handle_event(joined("r", &pa, &[peer("c0", "C", THERE), pa.clone()]));
        n.w.send(1, json!({"type": "chat", "text": "hi"}));
        n.w.send(1, json!({"type": "signal", "to": "c0", "data": 1}));
        for command in n.commands() {
            let out = n.w.rooms.command_dropped(command);
            assert_eq!(error_code(&out), Some(ErrorCode::Unavailable));
            assert_eq!(out[0].to, 1);
        }
        let b = n.ask_join(2, "r", "B");
        let out = n.w.rooms.command_dropped(ClusterCommand::Admit {
            room: "r".into(),
            id: b,
            name: "B".into(),
            room_size: 6,
        });
        assert_eq!(error_code(&out), Some(ErrorCode::Unavailable));
        assert_eq!(out[0].to, 2);
    }

    #[test]
    fn in_a_fleet_leaving_tells_the_store_and_the_node_forgets_the_room() {
        let mut n = Node::new(RoomsConfig::default());
        let a = n.ask_join(1, "r", "A");
        let pa = peer(&a, "A", HERE);
        n.w.rooms
            .handle_event(joined("r", &pa, &[peer("c0", "C", THERE), pa.clone()]));
        assert!(n.w.rooms.disconnect(1).is_empty(), "nobody else here");
        assert_eq!(
            n.commands(),
            vec![ClusterCommand::Leave {
                room: "r".into(),
                id: a
            }]
        );
        assert!(n.w.rooms.rooms.is_empty());
        // A join that is still waiting when its connection closes is withdrawn too.
        let waiting = n.ask_join(2, "r", "B");
        n.w.rooms.disconnect(2);
        assert_eq!(
            n.commands(),
            vec![ClusterCommand::Leave {
                room: "r".into(),
                id: waiting
            }]
        );
        assert_eq!(n.w.rooms.figures(), RoomsFigures::default());
    }
}
