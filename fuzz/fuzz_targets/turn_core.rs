//! `turn::Server` driven by a sequence of (time step, source, bytes) records, through
//! `Server::drive` and the tests' `RecordingIo`, exactly as the I/O layers drive it.
//!
//! An input is records of `tag:u8 wait:u8 len:u16be bytes[len]` (the last one may be cut
//! short). `wait` advances the clock first (see [`wait`]), then the I/O layer's timer step
//! runs; `tag & 7` says what the record is and `tag >> 3` is its source:
//!
//! | kind | record |
//! | --- | --- |
//! | 0 | a datagram or stream frame from client `source` (six 5-tuples: UDP, TCP, TLS, v4, v6) |
//! | 1 | the same, re-signed first (see [`sign`]): today's nonce, this realm, the user's key |
//! | 2 | a datagram from peer `source & 7` to relay `source >> 3` (of those the core bound) |
//! | 3 | how the I/O layer answers future binds: a byte each, cycled (bound, taken, later) |
//! | 4 | the oldest bind answered later gets its answer: bound when `source` is even |
//! | 5 | client `source`'s stream connection closes |
//! | 6 | the server starts draining |
//! | 7 | only the wait |
//!
//! Re-signing is what lets the fuzzer past authentication: a mutated request keeps a valid
//! MESSAGE-INTEGRITY (or -SHA256, with an MD5 or SHA-256 key, by USERNAME or USERHASH), so the allocation, permission and channel code is reached with
//! arbitrary attributes, not only the challenge. Peer 0 is the peer a client named last, so
//! peer traffic can meet a permission. `fuzz/seeds/turn_core` holds conversations of real
//! clients in this format (written by `cargo run --example fuzz_seeds`).
//!
//! Checked after every record: responses go to known clients and parse; data reaches only
//! bound relays and the payload is framed unchanged; one allocation per 5-tuple; a timer is
//! pending while any allocation exists. At the end, once every lifetime has passed, nothing
//! is left: no allocation, no timer, no open relay socket.
#![no_main]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rendez::random::Rng;
use rendez::stun::{
    userhash, AttrType, ChannelData, Class, IntegrityAlgorithm, LongTermKey, Message,
    MessageBuilder, Method, PasswordAlgorithm, HEADER_LEN, MAGIC_COOKIE,
};
use rendez::turn::{
    ChallengeLimiter, FiveTuple, PeerAddr, PeerPolicy, QuotaLimits, Quotas, RelayAddr,
    RelayAddress, RelayBind, Server, ServerConfig, Transport, UserSecret,
    OFFERED_PASSWORD_ALGORITHMS, PEER_HEADROOM, PEER_TAILROOM,
};

#[path = "../../tests/harness/mod.rs"]
mod harness;
use harness::{Event, RecordingIo};

/// Shared with `examples/fuzz_seeds.rs`, which records real clients under the same names.
const REALM: &str = "rendez.test";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "rest-secret";
const START_UNIX: u64 = 1_700_000_000;
/// Past the longest lifetime, the permission and channel lifetimes and the bind timeout.
const PAST_EVERY_LIFETIME: Duration = Duration::from_secs(3600 + 600 + 60);

const CLIENTS: [(Transport, &str, &str); 6] = [
    (Transport::Udp, "192.0.2.10:40000", "198.51.100.1:3478"),
    (Transport::Udp, "192.0.2.11:40001", "198.51.100.1:3478"),
    (Transport::Tcp, "192.0.2.10:40002", "198.51.100.1:3478"),
    (Transport::Tls, "192.0.2.12:40003", "198.51.100.1:5349"),
    (Transport::Udp, "[2001:db8::10]:40000", "[2001:db8::1]:3478"),
    (Transport::Tcp, "[2001:db8::10]:40001", "[2001:db8::1]:3478"),
];

/// Peers 1–7: allowed loopback (the operator's range), public, and denied forms. Peer 0 is
/// whatever a client named last.
const PEERS: [&str; 8] = [
    "127.0.0.1:9000",
    "127.0.0.1:9000",
    "8.8.8.8:3478",
    "10.1.2.3:4000",
    "169.254.169.254:80",
    "[::1]:9000",
    "[2606:4700::1111]:443",
    "[::ffff:127.0.0.1]:9000",
];

fuzz_target!(|data: &[u8]| {
    let mut run = Run::new();
    let mut rest = data;
    while let [tag, wait_code, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (bytes, next) = tail.split_at(len);
        rest = next;
        run.wait(wait(*wait_code));
        run.record(tag & 7, tag >> 3, bytes);
        run.check();
    }
    run.finish();
});

/// A wait code as a duration: tenths of a second up to 10 s, then tens of seconds up to
/// 1000 s, then two minutes at a time up to 110 minutes, so lifetimes run out.
fn wait(code: u8) -> Duration {
    let code = u64::from(code);
    match code {
        0..=100 => Duration::from_millis(code * 100),
        101..=200 => Duration::from_secs((code - 100) * 10),
        _ => Duration::from_secs((code - 200) * 120),
    }
}

struct Run {
    server: Server,
    now: Instant,
    io: RecordingIo,
    clients: Vec<FiveTuple>,
    /// The last nonce each client was given.
    nonces: HashMap<FiveTuple, Vec<u8>>,
    /// The peer a client named last (peer 0).
    last_peer: SocketAddr,
    /// Every relay the core asked to bind, in order.
    seen: Vec<SocketAddr>,
    /// Binds answered "later" and not answered yet, oldest first.
    deferred: VecDeque<SocketAddr>,
    /// Relay sockets bound and not released: where data may be relayed from.
    open: BTreeSet<SocketAddr>,
    rest_key: ring::hmac::Key,
}

impl Run {
    fn new() -> Self {
        let now = Instant::now();
        let v4 = RelayAddress {
            bind: "192.0.2.50".parse().unwrap(),
            public: "203.0.113.1".parse().unwrap(),
        };
        let v6 = RelayAddress {
            bind: "2001:db8::50".parse().unwrap(),
            public: "2001:db8::2".parse().unwrap(),
        };
        // Few ports, so exhaustion and port reuse happen.
        let mut config = ServerConfig::new(REALM, v4, 50000..=50005);
        config.relays.push(v6);
        config.users = vec![(USER.into(), UserSecret::Password(PASSWORD.into()))];
        config.secrets = vec![SECRET.into()];
        config.peers = PeerPolicy::new(
            vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            vec![],
        );
        config.quotas = Quotas::new(QuotaLimits {
            per_user: 4,
            per_address: 3,
            total: 5,
        });
        config.challenge_limit = Some(ChallengeLimiter::new(20, 7));
        let server = Server::new(config, now, START_UNIX, Rng::from_seed(7), [42; 32]);
        let clients = CLIENTS
            .iter()
            .map(|(transport, client, server)| FiveTuple {
                transport: *transport,
                client: client.parse().unwrap(),
                server: server.parse().unwrap(),
            })
            .collect();
        Self {
            server,
            now,
            io: RecordingIo::default(),
            clients,
            nonces: HashMap::new(),
            last_peer: PEERS[0].parse().unwrap(),
            seen: Vec::new(),
            deferred: VecDeque::new(),
            open: BTreeSet::new(),
            rest_key: ring::hmac::Key::new(
                ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
                SECRET.as_bytes(),
            ),
        }
    }

    /// Time passes; the I/O layer's timer fires when it is due.
    fn wait(&mut self, by: Duration) {
        self.now += by;
        if self.server.poll_timeout().is_some_and(|at| at <= self.now) {
            self.server.handle_timeout(self.now);
            self.drive();
        }
    }

    fn record(&mut self, kind: u8, source: u8, bytes: &[u8]) {
        let client = self.clients[usize::from(source) % self.clients.len()];
        match kind {
            0 => self.client_packet(client, bytes),
            1 => {
                let signed = self.sign(client, bytes);
                self.client_packet(client, signed.as_deref().unwrap_or(bytes));
            }
            2 => self.peer_packet(source, bytes),
            3 => {
                let answers = bytes.iter().take(8).map(|b| match b % 3 {
                    0 => RelayBind::Bound,
                    1 => RelayBind::Unavailable,
                    _ => RelayBind::Deferred,
                });
                let answers: Vec<_> = answers.collect();
                self.io.set_answers(if answers.is_empty() {
                    vec![RelayBind::Bound]
                } else {
                    answers
                });
            }
            4 => {
                if let Some(relay) = self.deferred.pop_front() {
                    let bound = source % 2 == 0;
                    if bound {
                        self.open.insert(relay);
                    }
                    self.server
                        .handle_relay_bound(self.now, RelayAddr(relay), bound);
                    self.drive();
                }
            }
            5 => {
                self.server.handle_connection_closed(self.now, client);
                self.drive();
            }
            6 => {
                self.server.start_draining();
            }
            _ => {}
        }
    }

    fn client_packet(&mut self, client: FiveTuple, bytes: &[u8]) {
        if let Some(peer) = named_peer(bytes) {
            self.last_peer = peer;
        }
        if let Some(to_peer) = self.server.handle_client_packet(self.now, client, bytes) {
            assert!(
                self.open.contains(&to_peer.relay.0),
                "relayed through {} which is not a bound relay socket",
                to_peer.relay
            );
            let within = bytes.as_ptr_range();
            let payload = to_peer.payload.as_ptr_range();
            assert!(
                within.start <= payload.start && payload.end <= within.end,
                "the relayed payload is borrowed from the input"
            );
        }
        self.drive();
    }

    fn peer_packet(&mut self, source: u8, payload: &[u8]) {
        let peer = match source & 7 {
            0 => self.last_peer,
            i => PEERS[usize::from(i)].parse().unwrap(),
        };
        let Some(&relay) = self
            .seen
            .get(usize::from(source >> 3) % self.seen.len().max(1))
        else {
            return;
        };
        let mut buffer = vec![0xAA; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buffer[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let framed = self.server.handle_peer_packet_in_place(
            self.now,
            RelayAddr(relay),
            PeerAddr(peer),
            &mut buffer,
            PEER_HEADROOM,
            payload.len(),
        );
        if let Some((client, range)) = framed {
            assert!(self.clients.contains(&client), "framed for {client:?}");
            assert!(self.open.contains(&relay), "data from an unbound relay");
            let framed = &buffer[range];
            let carried = match ChannelData::parse(framed) {
                Some(channel_data) => channel_data.payload,
                None => {
                    let m = Message::parse(framed).expect("a Data indication parses");
                    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
                    m.attribute(AttrType::DATA).expect("DATA")
                }
            };
            assert_eq!(
                carried, payload,
                "the peer's payload reaches the client unchanged"
            );
        }
        self.drive();
    }

    /// Carries out the core's outputs and keeps the model of the I/O layer in step.
    fn drive(&mut self) {
        self.server.drive(self.now, &mut self.io);
        for event in self.io.take() {
            match event {
                Event::Transmit(to, bytes) => {
                    assert!(self.clients.contains(&to), "a response to {to:?}");
                    if is_classic_binding_response(&bytes) {
                        continue;
                    }
                    let m = Message::parse(&bytes).expect("every response parses");
                    if let Some(nonce) = m.attribute(AttrType::NONCE) {
                        self.nonces.insert(to, nonce.to_vec());
                    }
                }
                Event::Bind(relay, answer) | Event::Listen(relay, answer) => {
                    self.seen.push(relay);
                    match answer {
                        RelayBind::Bound => {
                            assert!(self.open.insert(relay), "{relay} bound twice");
                        }
                        RelayBind::Unavailable => {}
                        RelayBind::Deferred => self.deferred.push_back(relay),
                    }
                }
                Event::Release(relay) => {
                    self.open.remove(&relay);
                    self.deferred.retain(|r| *r != relay);
                }
                // TCP relays (RFC 6062): nothing to model; the core's timers answer a
                // Connect nobody reports on.
                Event::Connect(..) | Event::Bridge(..) | Event::ClosePeer(_) => {}
                // This server has no kernel fast path: its core must announce nothing to one.
                Event::FastPath(change) => {
                    panic!("a fast path change without a fast path: {change:?}")
                }
            }
        }
    }

    /// `bytes` rebuilt as a request the server can authenticate, when they parse as STUN
    /// and name a user (USERNAME, or USERHASH, which only the static user can use): the
    /// realm and the client's latest nonce replace theirs, a USERHASH is made the user's,
    /// PASSWORD-ALGORITHMS (when present) becomes the server's offer, the key is derived
    /// with the PASSWORD-ALGORITHM the request names (MD5 without one), and
    /// MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT are computed anew (the same kinds as
    /// before; MESSAGE-INTEGRITY when there was none). Every other attribute stays, in order.
    fn sign(&self, client: FiveTuple, bytes: &[u8]) -> Option<Vec<u8>> {
        let message = Message::parse(bytes).ok()?;
        let username = match message.attribute(AttrType::USERNAME) {
            Some(name) => std::str::from_utf8(name).ok()?,
            None if message.attribute(AttrType::USERHASH).is_some() => USER,
            None => return None,
        };
        let password = match username {
            USER => PASSWORD.to_owned(),
            rest => rendez::turn::rest_password(&self.rest_key, rest),
        };
        let password_algorithm = message
            .attribute(AttrType::PASSWORD_ALGORITHM)
            .and_then(|value| PasswordAlgorithm::decode(value).ok())
            .unwrap_or(PasswordAlgorithm::Md5);
        let key = LongTermKey::derive(password_algorithm, username, REALM, &password);
        let mut builder =
            MessageBuilder::new(message.class(), message.method(), message.transaction_id());
        let mut algorithm = IntegrityAlgorithm::Sha1;
        for (kind, value) in attributes(bytes) {
            match kind {
                AttrType::MESSAGE_INTEGRITY | AttrType::FINGERPRINT => {}
                AttrType::MESSAGE_INTEGRITY_SHA256 => algorithm = IntegrityAlgorithm::Sha256,
                AttrType::REALM => {
                    builder.add(kind, REALM.as_bytes());
                }
                AttrType::NONCE => {
                    let nonce = self.nonces.get(&client).map_or(value, Vec::as_slice);
                    builder.add(kind, nonce);
                }
                AttrType::USERHASH => {
                    builder.add(kind, &userhash(USER, REALM));
                }
                AttrType::PASSWORD_ALGORITHMS => {
                    builder.add(
                        kind,
                        &PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS),
                    );
                }
                _ => {
                    builder.add(kind, value);
                }
            }
        }
        builder.add_integrity(algorithm, key.as_bytes());
        if message.has_fingerprint() {
            builder.add_fingerprint();
        }
        Some(builder.finish())
    }

    /// Invariants between any two records.
    fn check(&self) {
        let count = self.server.allocation_count();
        assert!(count <= self.clients.len(), "one allocation per 5-tuple");
        if count > 0 {
            assert!(
                self.server.poll_timeout().is_some(),
                "{count} allocations but no timer"
            );
        }
        // One relay socket per family per allocation, never more.
        assert!(
            self.open.len() <= 2 * count,
            "{count} allocations hold {} relay sockets",
            self.open.len()
        );
    }

    /// Every lifetime runs out: nothing may be left behind.
    fn finish(mut self) {
        // Binds still waiting for an answer are refused, as a closing I/O layer would.
        while let Some(relay) = self.deferred.pop_front() {
            self.server
                .handle_relay_bound(self.now, RelayAddr(relay), false);
            self.drive();
        }
        self.wait(PAST_EVERY_LIFETIME);
        self.wait(PAST_EVERY_LIFETIME);
        assert_eq!(
            self.server.allocation_count(),
            0,
            "allocations outlived every lifetime"
        );
        assert_eq!(
            self.server.poll_timeout(),
            None,
            "a timer with nothing to expire"
        );
        assert!(
            self.open.is_empty(),
            "relay sockets left open: {:?}",
            self.open
        );
    }
}

/// The first XOR-PEER-ADDRESS of a STUN message.
fn named_peer(bytes: &[u8]) -> Option<SocketAddr> {
    let message = Message::parse(bytes).ok()?;
    let value = message.attribute(AttrType::XOR_PEER_ADDRESS)?;
    rendez::stun::decode_xor_address(value, &message.transaction_id())
}

/// The attributes of a message that parsed, in order (types and values, padding skipped).
fn attributes(bytes: &[u8]) -> impl Iterator<Item = (AttrType, &[u8])> {
    let mut rest = bytes.get(HEADER_LEN..).unwrap_or_default();
    std::iter::from_fn(move || {
        let [t0, t1, l0, l1, tail @ ..] = rest else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let value = tail.get(..len)?;
        rest = tail.get(len.next_multiple_of(4)..).unwrap_or_default();
        Some((AttrType(u16::from_be_bytes([*t0, *t1])), value))
    })
}

/// A response to a classic (RFC 3489) Binding, which the decoder takes only as a request:
/// a Binding success or error without the magic cookie, its length field telling the truth.
fn is_classic_binding_response(bytes: &[u8]) -> bool {
    const CLASSIC_BINDING_RESPONSES: [[u8; 2]; 2] = [[0x01, 0x01], [0x01, 0x11]];
    if bytes.len() < HEADER_LEN || bytes[4..8] == MAGIC_COOKIE.to_be_bytes() {
        return false;
    }
    assert!(
        CLASSIC_BINDING_RESPONSES.contains(&[bytes[0], bytes[1]]),
        "only Binding is answered without the magic cookie"
    );
    let length = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
    assert_eq!(
        HEADER_LEN + length,
        bytes.len(),
        "the length field tells the truth"
    );
    true
}
