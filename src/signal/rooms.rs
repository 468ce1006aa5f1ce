//! Rooms, participants and the abuse limits that keep one bad client from hurting others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

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
    /// Members of each room, in joining order.
    rooms: HashMap<String, Vec<ConnId>>,
    /// How many rooms each address (IPv6: each /64) is in now (for `rooms_per_ip`).
    rooms_of_ip: HashMap<QuotaKey, usize>,
    rng: Rng,
    /// Set by [`Rooms::drain`]: no new joins.
    draining: bool,
}

/// How much signaling there is now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoomsFigures {
    pub rooms: usize,
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
    member: Option<Member>,
    bucket: TokenBucket,
    last_rate_limit_reply: Option<Instant>,
}

struct Member {
    id: String,
    name: String,
    room: String,
}

impl Rooms {
    /// `rng` makes participant ids unguessable (seed it from the OS, see [`Rng::from_os`]).
    pub fn new(config: RoomsConfig, rng: Rng) -> Self {
        Self {
            config,
            connections: HashMap::new(),
            rooms: HashMap::new(),
            rooms_of_ip: HashMap::new(),
            rng,
            draining: false,
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
            participants: self.rooms.values().map(Vec::len).sum(),
            connections: self.connections.len(),
        }
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
                member: None,
                bucket: TokenBucket::new(now, burst, self.config.messages_per_second),
                last_rate_limit_reply: None,
            },
        );
    }

    /// One text frame from `conn`.
    pub fn handle_text(
        &mut self,
        now: Instant,
        unix_now: u64,
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
                self.join(unix_now, conn, room, name, token)
            }
            Ok(ClientMessage::Signal { to, data }) => self.relay(conn, &to, data),
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
    }

    /// Participants in `room` now.
    pub fn room_len(&self, room: &str) -> usize {
        self.rooms.get(room).map_or(0, Vec::len)
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
        if connection.member.is_some() {
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
        let members = self.rooms.get(&room).map_or(&[][..], Vec::as_slice);
        if members.len() >= self.config.room_size {
            return error(conn, ErrorCode::RoomFull, "this room is full");
        }
        let peers: Vec<PeerInfo> = members
            .iter()
            .filter_map(|m| self.member(*m))
            .map(|m| PeerInfo {
                id: m.id.clone(),
                name: m.name.clone(),
            })
            .collect();
        let others = members.to_vec();
        // Written by `connect` from a `Value`, so it parses.
        let ice_servers = serde_json::from_str(&connection.ice_servers).unwrap_or_default();
        let id = self.new_id();
        let mut out: Vec<Outgoing> = others
            .iter()
            .map(|&to| Outgoing {
                to,
                message: ServerMessage::PeerJoined {
                    id: id.clone(),
                    name: name.clone(),
                },
            })
            .collect();
        out.insert(
            0,
            Outgoing {
                to: conn,
                message: ServerMessage::Welcome {
                    id: id.clone(),
                    peers,
                    ice_servers,
                },
            },
        );
        self.rooms.entry(room.clone()).or_default().push(conn);
        *self.rooms_of_ip.entry(address).or_default() += 1;
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.member = Some(Member { id, name, room });
        }
        out
    }

    /// Delivers `data` to `to` only if it is in the sender's room.
    fn relay(&mut self, conn: ConnId, to: &str, data: serde_json::Value) -> Vec<Outgoing> {
        let Some(sender) = self.member(conn) else {
            return error(conn, ErrorCode::BadMessage, "join a room first");
        };
        let target = self.rooms.get(&sender.room).and_then(|members| {
            members
                .iter()
                .copied()
                .find(|m| *m != conn && self.member(*m).is_some_and(|p| p.id == to))
        });
        match target {
            Some(target) => vec![Outgoing {
                to: target,
                message: ServerMessage::Signal {
                    from: sender.id.clone(),
                    data,
                },
            }],
            None => error(
                conn,
                ErrorCode::UnknownPeer,
                "no such participant in your room",
            ),
        }
    }

    fn leave(&mut self, conn: ConnId) -> Vec<Outgoing> {
        let Some((address, member)) = self
            .connections
            .get_mut(&conn)
            .and_then(|c| Some((c.address, c.member.take()?)))
        else {
            return Vec::new();
        };
        if let Some(count) = self.rooms_of_ip.get_mut(&address) {
            *count -= 1;
            if *count == 0 {
                self.rooms_of_ip.remove(&address);
            }
        }
        let Some(members) = self.rooms.get_mut(&member.room) else {
            return Vec::new();
        };
        members.retain(|m| *m != conn);
        let remaining = members.clone();
        if remaining.is_empty() {
            self.rooms.remove(&member.room);
        }
        remaining
            .into_iter()
            .map(|to| Outgoing {
                to,
                message: ServerMessage::PeerLeft {
                    id: member.id.clone(),
                },
            })
            .collect()
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

    fn member(&self, conn: ConnId) -> Option<&Member> {
        self.connections.get(&conn)?.member.as_ref()
    }

    /// 16 random hex digits: unguessable, and 64 bits make a repeat as likely as a guess.
    fn new_id(&mut self) -> String {
        format!("{:016x}", self.rng.next_u64())
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
                .handle_text(self.now, 1000, conn, &message.to_string())
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
            let out = w.rooms.handle_text(w.now, 1000, 1, text);
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
}
