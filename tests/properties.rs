//! Property tests for the wire codec and the sans-IO TURN core.
//!
//! - decode∘encode: whatever `MessageBuilder` writes, `Message::parse` reads back unchanged
//!   (class, method, transaction id, attribute values in order, integrity, fingerprint), and
//!   XOR addresses of both families round-trip;
//! - no bytes panic a parser, including mutations of valid messages;
//! - no sequence of inputs panics `turn::Server` or breaks the contract its I/O layer relies
//!   on: an allocation owns one relay socket (two when dual-stack), a timer is pending while
//!   any allocation exists, data is relayed only through bound relays, to peers the policy
//!   permits, with the payload unchanged, and once every lifetime has run out no allocation,
//!   no timer, no open relay socket and no used relay port is left.
//!
//! The harness drives the core the way every I/O layer does, through `Server::drive` and the
//! shared `harness::RecordingIo`: after every input it carries out the outputs, and either
//! answers each relay bind at once (as the workers and the TCP/TLS shard do) or later, as a
//! separate input, like an I/O layer that binds off-thread.
//!
//! The regression tests at the end are the minimal inputs the core-sequence property found.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant, UNIX_EPOCH};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use rendez::random::Rng;
use rendez::stun::{
    classify, decode_xor_address, long_term_key, AttrType, ChannelData, Class, Dialect, ErrorCode,
    Framing, IntegrityAlgorithm, Message, MessageBuilder, Method, TransactionId, HEADER_LEN,
    MAGIC_COOKIE,
};
use rendez::turn::{
    ChannelNumbers, DefaultFamily, FastPathEntry, FiveTuple, Io, Output, PeerAddr, PeerPolicy,
    RelayAddr, RelayAddress, RelayBind, Server, ServerConfig, Transport, UserSecret,
    CHANNEL_NUMBERS,
};

mod harness;
use harness::{Event, RecordingIo};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failures are reported with their shrunk input; keep the tree free of
        // regression files that nobody asked for.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- decode∘encode ----

/// A message as the builder is asked to write it.
#[derive(Clone, Debug)]
struct Built {
    class: Class,
    method: u16,
    transaction: [u8; 12],
    attributes: Vec<(u16, Vec<u8>)>,
    integrity: Option<(IntegrityAlgorithm, Vec<u8>)>,
    fingerprint: bool,
}

impl Built {
    fn encode(&self) -> Vec<u8> {
        let mut b = MessageBuilder::new(
            self.class,
            Method(self.method),
            TransactionId(self.transaction),
        );
        for (kind, value) in &self.attributes {
            b.add(AttrType(*kind), value);
        }
        if let Some((algorithm, key)) = &self.integrity {
            b.add_integrity(*algorithm, key);
        }
        if self.fingerprint {
            b.add_fingerprint();
        }
        b.finish()
    }
}

fn any_class() -> impl Strategy<Value = Class> {
    prop_oneof![
        Just(Class::Request),
        Just(Class::Indication),
        Just(Class::Success),
        Just(Class::Error),
    ]
}

fn any_algorithm() -> impl Strategy<Value = IntegrityAlgorithm> {
    prop_oneof![
        Just(IntegrityAlgorithm::Sha1),
        Just(IntegrityAlgorithm::Sha256)
    ]
}

/// Comprehension-optional types, which a parser must carry through untouched; FINGERPRINT
/// is excluded because it must be last and is checked.
fn optional_attribute_type() -> impl Strategy<Value = u16> {
    (0x8000u16..=0xFFFF).prop_filter("FINGERPRINT has a meaning", |t| {
        *t != AttrType::FINGERPRINT.0
    })
}

fn built_message() -> impl Strategy<Value = Built> {
    (
        any_class(),
        0u16..=0xFFF,
        any::<[u8; 12]>(),
        vec(
            (
                // A small pool as well, so the same type often appears several times.
                prop_oneof![optional_attribute_type(), 0x8000u16..0x8004],
                vec(any::<u8>(), 0..=64),
            ),
            0..8,
        ),
        // Keys up to one HMAC block: longer keys are hashed first, and a key that only
        // differs by trailing zeros is the same HMAC key, so "another key" is built by
        // flipping a byte.
        proptest::option::of((any_algorithm(), vec(any::<u8>(), 1..=64))),
        any::<bool>(),
    )
        .prop_map(
            |(class, method, transaction, attributes, integrity, fingerprint)| Built {
                class,
                method,
                transaction,
                attributes,
                integrity,
                fingerprint,
            },
        )
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn built_messages_parse_back_unchanged(built in built_message()) {
        let bytes = built.encode();
        prop_assert_eq!(bytes.len() % 4, 0);
        let message = Message::parse(&bytes);
        prop_assert!(message.is_ok(), "parse failed: {:?}", message.err());
        let m = message.unwrap();
        prop_assert_eq!(m.as_bytes(), &bytes[..]);
        prop_assert_eq!(m.class(), built.class);
        prop_assert_eq!(m.method(), Method(built.method));
        prop_assert_eq!(m.transaction_id(), TransactionId(built.transaction));
        prop_assert_eq!(m.has_fingerprint(), built.fingerprint);
        prop_assert_eq!(m.has_integrity(), built.integrity.is_some());
        for (kind, _) in &built.attributes {
            let expected: Vec<&[u8]> = built
                .attributes
                .iter()
                .filter(|(k, _)| k == kind)
                .map(|(_, v)| v.as_slice())
                .collect();
            let got: Vec<&[u8]> = m.attributes(AttrType(*kind)).collect();
            prop_assert_eq!(&got, &expected, "attribute {:#06x}", kind);
            prop_assert_eq!(m.attribute(AttrType(*kind)), expected.first().copied());
        }
        prop_assert!(m.unknown_required_attributes().is_empty());
        match &built.integrity {
            Some((algorithm, key)) => {
                prop_assert_eq!(m.verify_integrity(key), Some(*algorithm));
                let mut other = key.clone();
                other[0] ^= 0x01;
                prop_assert_eq!(m.verify_integrity(&other), None);
            }
            None => prop_assert_eq!(m.verify_integrity(b"any key"), None),
        }
    }

    #[test]
    fn xor_addresses_round_trip(
        transaction in any::<[u8; 12]>(),
        other_transaction in any::<[u8; 12]>(),
        addresses in vec(socket_addr(), 1..4),
        fingerprint in any::<bool>(),
    ) {
        let tid = TransactionId(transaction);
        let kinds = [
            AttrType::XOR_PEER_ADDRESS,
            AttrType::XOR_MAPPED_ADDRESS,
            AttrType::XOR_RELAYED_ADDRESS,
        ];
        let mut b = MessageBuilder::new(Class::Success, Method::ALLOCATE, tid);
        for (i, addr) in addresses.iter().enumerate() {
            b.add_xor_address(kinds[i % kinds.len()], *addr);
        }
        if fingerprint {
            b.add_fingerprint();
        }
        let bytes = b.finish();
        let m = Message::parse(&bytes);
        prop_assert!(m.is_ok(), "parse failed: {:?}", m.err());
        let m = m.unwrap();
        for (i, addr) in addresses.iter().enumerate() {
            let kind = kinds[i % kinds.len()];
            let value = m.attributes(kind).nth(i / kinds.len());
            prop_assert!(value.is_some());
            let value = value.unwrap();
            prop_assert_eq!(value.len(), if addr.is_ipv4() { 8 } else { 20 });
            prop_assert_eq!(decode_xor_address(value, &tid), Some(*addr));
            // IPv6 addresses are masked with the transaction id too; IPv4 ones are not.
            let elsewhere = decode_xor_address(value, &TransactionId(other_transaction));
            if addr.is_ipv4() || other_transaction == transaction {
                prop_assert_eq!(elsewhere, Some(*addr));
            } else {
                prop_assert_ne!(elsewhere, Some(*addr));
            }
        }
    }
}

// ---- parsers never panic ----

/// Every accessor a caller may use on whatever `bytes` turn out to be, with the invariants
/// a successful parse promises.
fn exercise_parsers(bytes: &[u8]) {
    let framing = classify(bytes);
    if let Some(cd) = ChannelData::parse(bytes) {
        assert!(CHANNEL_NUMBERS.contains(&cd.channel));
        let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        assert_eq!(cd.payload, &bytes[4..4 + declared]);
        assert_eq!(framing, Framing::ChannelData);
    }
    let Ok(m) = Message::parse(bytes) else {
        return;
    };
    assert_eq!(framing, Framing::Stun);
    assert!(bytes.len() >= HEADER_LEN);
    assert_eq!(bytes.len() % 4, 0);
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[2], bytes[3]])) + HEADER_LEN,
        bytes.len()
    );
    match m.dialect() {
        Dialect::Rfc8489 => assert_eq!(&bytes[4..8], &MAGIC_COOKIE.to_be_bytes()),
        // Only a Binding request comes without the cookie (classic STUN, RFC 3489).
        Dialect::Rfc3489 { id_start } => {
            assert_eq!(&bytes[..2], &[0, 1]);
            assert_eq!(id_start, bytes[4..8]);
        }
    }
    let tid = m.transaction_id();
    let _ = (
        m.class(),
        m.method(),
        m.has_fingerprint(),
        m.has_integrity(),
    );
    let _ = m.unknown_required_attributes();
    for kind in [
        AttrType::USERNAME,
        AttrType::ERROR_CODE,
        AttrType::CHANNEL_NUMBER,
        AttrType::LIFETIME,
        AttrType::XOR_PEER_ADDRESS,
        AttrType::DATA,
        AttrType::NONCE,
        AttrType::XOR_RELAYED_ADDRESS,
        AttrType::REQUESTED_TRANSPORT,
        AttrType::XOR_MAPPED_ADDRESS,
        AttrType::SOFTWARE,
    ] {
        for value in m.attributes(kind) {
            assert!(value.len() <= bytes.len());
            let _ = decode_xor_address(value, &tid);
            let _ = ErrorCode::decode_code(value);
        }
    }
    let _ = m.verify_integrity(b"key");
    let _ = m.verify_integrity(&[0u8; 16]);
    let _ = m.verify_integrity(&[]);
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip {
        at: Index,
        mask: u8,
    },
    Truncate(Index),
    /// Rewrites the header's length field.
    SetLength(u16),
    /// Makes the header's length field agree with the buffer again, so the parser goes on
    /// to the attributes.
    FixLength,
    /// Rewrites a length field at a 4-aligned offset after the header (an attribute
    /// header's, when attributes are 4-aligned).
    SetAttributeLength {
        at: Index,
        length: u16,
    },
    /// Rewrites an attribute type at a 4-aligned offset after the header.
    SetAttributeType {
        at: Index,
        kind: u16,
    },
    Append(Vec<u8>),
    Remove {
        at: Index,
        count: u8,
    },
}

impl Mutation {
    fn apply(&self, bytes: &mut Vec<u8>) {
        let attribute_words = bytes.len().saturating_sub(HEADER_LEN) / 4;
        match self {
            Mutation::Flip { at, mask } => {
                if !bytes.is_empty() {
                    let i = at.index(bytes.len());
                    bytes[i] ^= mask;
                }
            }
            Mutation::Truncate(at) => bytes.truncate(at.index(bytes.len() + 1)),
            Mutation::SetLength(length) => {
                if bytes.len() >= 4 {
                    bytes[2..4].copy_from_slice(&length.to_be_bytes());
                }
            }
            Mutation::FixLength => {
                if bytes.len() >= HEADER_LEN {
                    let length = (bytes.len() - HEADER_LEN) as u16;
                    bytes[2..4].copy_from_slice(&length.to_be_bytes());
                }
            }
            Mutation::SetAttributeLength { at, length } => {
                if attribute_words > 0 {
                    let offset = HEADER_LEN + 4 * at.index(attribute_words) + 2;
                    bytes[offset..offset + 2].copy_from_slice(&length.to_be_bytes());
                }
            }
            Mutation::SetAttributeType { at, kind } => {
                if attribute_words > 0 {
                    let offset = HEADER_LEN + 4 * at.index(attribute_words);
                    bytes[offset..offset + 2].copy_from_slice(&kind.to_be_bytes());
                }
            }
            Mutation::Append(extra) => bytes.extend_from_slice(extra),
            Mutation::Remove { at, count } => {
                if !bytes.is_empty() {
                    let start = at.index(bytes.len());
                    let end = (start + usize::from(*count)).min(bytes.len());
                    bytes.drain(start..end);
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let interesting_type = prop_oneof![
        Just(AttrType::MESSAGE_INTEGRITY.0),
        Just(AttrType::MESSAGE_INTEGRITY_SHA256.0),
        Just(AttrType::FINGERPRINT.0),
        Just(AttrType::XOR_PEER_ADDRESS.0),
        any::<u16>(),
    ];
    let interesting_length = prop_oneof![0u16..48, any::<u16>()];
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<u16>().prop_map(Mutation::SetLength),
        2 => Just(Mutation::FixLength),
        2 => (any::<Index>(), interesting_length)
            .prop_map(|(at, length)| Mutation::SetAttributeLength { at, length }),
        1 => (any::<Index>(), interesting_type)
            .prop_map(|(at, kind)| Mutation::SetAttributeType { at, kind }),
        1 => vec(any::<u8>(), 1..12).prop_map(Mutation::Append),
        1 => (any::<Index>(), 1u8..8).prop_map(|(at, count)| Mutation::Remove { at, count }),
    ]
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn parsers_accept_any_bytes_without_panicking(bytes in vec(any::<u8>(), 0..600)) {
        exercise_parsers(&bytes);
    }

    #[test]
    fn parsers_survive_stun_shaped_bytes(
        raw_type in 0u16..0x4000,
        transaction in any::<[u8; 12]>(),
        attributes in vec((any::<u16>(), vec(any::<u8>(), 0..40)), 0..6),
    ) {
        // A valid header and attribute framing with arbitrary types and values, so the
        // integrity and fingerprint checks see every kind of content.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&raw_type.to_be_bytes());
        bytes.extend_from_slice(&[0, 0]);
        bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        bytes.extend_from_slice(&transaction);
        for (kind, value) in &attributes {
            bytes.extend_from_slice(&kind.to_be_bytes());
            bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
            bytes.extend_from_slice(value);
            bytes.resize(bytes.len().next_multiple_of(4), 0);
        }
        Mutation::FixLength.apply(&mut bytes);
        exercise_parsers(&bytes);
    }

    #[test]
    fn parsers_survive_mutated_messages(
        built in built_message(),
        mutations in vec(mutation(), 1..6),
    ) {
        let mut bytes = built.encode();
        for m in &mutations {
            m.apply(&mut bytes);
            exercise_parsers(&bytes);
        }
    }

    #[test]
    fn channel_data_parser_checks_its_bounds(
        channel in prop_oneof![0x4000u16..=0x7FFF, any::<u16>()],
        declared in prop_oneof![0u16..80, any::<u16>()],
        payload in vec(any::<u8>(), 0..80),
    ) {
        let mut bytes = ChannelData::header(channel, declared).to_vec();
        bytes.extend_from_slice(&payload);
        exercise_parsers(&bytes);
        let fits = usize::from(declared) <= payload.len();
        let parsed = ChannelData::parse(&bytes);
        prop_assert_eq!(parsed.is_some(), fits && CHANNEL_NUMBERS.contains(&channel));
        // Every number whose top bits say ChannelData parses: RFC 5766's whole range.
        prop_assert_eq!(
            CHANNEL_NUMBERS.contains(&channel),
            channel >> 14 == 0b01
        );
    }
}

// ---- no input sequence panics the core ----

const REALM: &str = "rendez.test";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "rest-secret";
const START_UNIX: u64 = 1_700_000_000;
/// Few ports, so exhaustion (508), EVEN-PORT and port reuse all happen.
const RELAY_PORTS: RangeInclusive<u16> = 50000..=50005;
/// Past the longest lifetime (3600 s) plus the channel quarantine and permission lifetime.
const PAST_EVERY_LIFETIME: Duration = Duration::from_secs(3600 + 600 + 60);

fn v4_relay() -> RelayAddress {
    RelayAddress {
        bind: Ipv4Addr::LOCALHOST.into(),
        public: Ipv4Addr::new(203, 0, 113, 1).into(),
    }
}

fn v6_relay() -> RelayAddress {
    RelayAddress {
        bind: Ipv6Addr::LOCALHOST.into(),
        public: "2001:db8::2".parse().unwrap(),
    }
}

fn clients() -> [FiveTuple; 3] {
    let server4: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    [
        FiveTuple {
            transport: Transport::Udp,
            client: "192.0.2.10:40000".parse().unwrap(),
            server: server4,
        },
        FiveTuple {
            transport: Transport::Tcp,
            client: "192.0.2.10:40001".parse().unwrap(),
            server: server4,
        },
        FiveTuple {
            transport: Transport::Udp,
            client: "[2001:db8::10]:40000".parse().unwrap(),
            server: "[2001:db8::1]:3478".parse().unwrap(),
        },
    ]
}

/// Peers the policy allows or denies, in both families and in IPv6 forms of IPv4.
const PEERS: &[&str] = &[
    "127.0.0.1:9000",
    "127.0.0.2:9001",
    "8.8.8.8:3478",
    "10.1.2.3:4000",
    "169.254.169.254:80",
    "[::1]:9000",
    "[2606:4700::1111]:443",
    "[::ffff:127.0.0.1]:9000",
    "[64:ff9b::808:808]:53",
];

fn peer(i: usize) -> SocketAddr {
    PEERS[i % PEERS.len()].parse().unwrap()
}

#[derive(Clone, Copy, Debug)]
enum User {
    Static,
    Rest,
    ExpiredRest,
}

#[derive(Clone, Debug)]
enum Auth {
    None,
    /// USERNAME, REALM, a NONCE from a 401 and the right key. With `fresh_nonce` false the
    /// last nonce seen is reused even when it has expired (438).
    Valid {
        user: User,
        algorithm: IntegrityAlgorithm,
        fresh_nonce: bool,
    },
    WrongPassword,
    ForgedNonce(Vec<u8>),
    NoNonce,
    WrongRealm,
}

#[derive(Clone, Debug)]
struct Request {
    client: usize,
    class: Class,
    method: u16,
    /// From a small pool, so retransmissions and transaction clashes happen.
    transaction: u8,
    auth: Auth,
    transport: Option<u8>,
    lifetime: Option<u32>,
    family: Option<[u8; 4]>,
    /// ADDITIONAL-ADDRESS-FAMILY, for a dual-stack allocation (RFC 8656 §7.2).
    additional_family: Option<[u8; 4]>,
    /// EVEN-PORT with the R bit: an RTP/RTCP pair, the next port reserved.
    even_port: bool,
    reservation_token: Option<TokenPick>,
    peers: Vec<usize>,
    channel: Option<u16>,
    /// Understood attributes with arbitrary values, before or after the well-formed ones.
    extra: Vec<(u16, Vec<u8>)>,
    extra_first: bool,
    unknown_required: bool,
    fingerprint: bool,
}

/// Which RESERVATION-TOKEN a request carries.
#[derive(Clone, Debug)]
enum TokenPick {
    /// One the server handed out earlier (used, expired or not), if any.
    Given(Index),
    /// The last one handed out, as the RTCP Allocate of a pair sends it.
    Latest,
    Unknown,
}

#[derive(Clone, Debug)]
enum RelayPick {
    /// One of the relay addresses the core asked to bind.
    Seen(Index),
    Port {
        port: u16,
        v6: bool,
    },
}

#[derive(Clone, Debug)]
enum Op {
    Request(Box<Request>),
    Garbage {
        client: usize,
        bytes: Vec<u8>,
    },
    ChannelData {
        client: usize,
        channel: u16,
        payload: Vec<u8>,
        declared: Option<u16>,
        padding: u8,
    },
    Send {
        client: usize,
        peer: usize,
        data: Option<Vec<u8>>,
        with_peer: bool,
        fingerprint: bool,
    },
    Peer {
        relay: RelayPick,
        peer: usize,
        payload: Vec<u8>,
    },
    /// Answers a pending BindRelay (or, when none is pending, any relay seen so far).
    RelayBound {
        pick: Index,
        bound: bool,
    },
    Wait {
        secs: u64,
    },
    /// The stream client's connection closes.
    ConnectionClosed,
}

/// How the harness answers BindRelay.
#[derive(Clone, Debug)]
enum Binding {
    /// At once, inside `Server::drive`, like the I/O layers; the answers cycle.
    Immediate(Vec<bool>),
    /// Only through `Op::RelayBound`.
    Deferred,
}

#[derive(Clone, Debug)]
struct Scenario {
    allow_loopback: bool,
    with_v6_relay: bool,
    default_family: DefaultFamily,
    channel_numbers: ChannelNumbers,
    binding: Binding,
    /// A kernel fast path mirrors the eligible channels.
    fast_path: bool,
    ops: Vec<Op>,
}

const UNDERSTOOD: &[AttrType] = &[
    AttrType::CHANNEL_NUMBER,
    AttrType::LIFETIME,
    AttrType::XOR_PEER_ADDRESS,
    AttrType::DATA,
    AttrType::REQUESTED_ADDRESS_FAMILY,
    AttrType::EVEN_PORT,
    AttrType::REQUESTED_TRANSPORT,
    AttrType::DONT_FRAGMENT,
    AttrType::RESERVATION_TOKEN,
    AttrType::USERNAME,
    AttrType::NONCE,
    AttrType::REALM,
];

fn auth() -> impl Strategy<Value = Auth> {
    let user = prop_oneof![
        6 => Just(User::Static),
        3 => Just(User::Rest),
        1 => Just(User::ExpiredRest),
    ];
    let forged = prop_oneof![
        vec(any::<u8>(), 0..48),
        "[0-9a-f]{38,42}".prop_map(String::into_bytes),
    ];
    prop_oneof![
        2 => Just(Auth::None),
        14 => (user, any_algorithm(), prop::bool::weighted(0.9)).prop_map(
            |(user, algorithm, fresh_nonce)| Auth::Valid { user, algorithm, fresh_nonce }
        ),
        1 => Just(Auth::WrongPassword),
        1 => forged.prop_map(Auth::ForgedNonce),
        1 => Just(Auth::NoNonce),
        1 => Just(Auth::WrongRealm),
    ]
}

/// Mostly the first client, so one allocation sees a long conversation.
fn client() -> impl Strategy<Value = usize> {
    prop_oneof![6 => Just(0usize), 2 => Just(1), 2 => Just(2)]
}

/// Mostly peers that some policy permits for an IPv4 relay.
fn peer_index() -> impl Strategy<Value = usize> {
    prop_oneof![3 => Just(0usize), 3 => Just(2), 2 => 0..PEERS.len()]
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![3 => well_formed_request(), 2 => any_request()]
}

/// What a correct client sends: the right attributes for the method, valid credentials.
fn well_formed_request() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        2 => Just(Method::ALLOCATE.0),
        2 => Just(Method::CREATE_PERMISSION.0),
        2 => Just(Method::CHANNEL_BIND.0),
        1 => Just(Method::REFRESH.0),
    ];
    let user = prop_oneof![6 => Just(User::Static), 1 => Just(User::Rest)];
    let lifetime = prop_oneof![
        4 => Just(None),
        1 => Just(Some(0u32)),
        2 => (60u32..4000).prop_map(Some),
    ];
    let additional_family = prop_oneof![4 => Just(None), 1 => Just(Some([2u8, 0, 0, 0]))];
    (
        client(),
        method,
        0u8..6,
        (user, any_algorithm()),
        (lifetime, additional_family),
        vec(peer_index(), 1..3),
        // RFC 8656's numbers, and RFC 5766's beyond them.
        prop_oneof![4 => 0x4000u16..0x4004, 1 => 0x7FFCu16..=0x7FFF],
        (any::<bool>(), pair_or_token()),
    )
        .prop_map(
            |(
                client,
                method,
                transaction,
                (user, algorithm),
                (lifetime, additional_family),
                peers,
                channel,
                (fingerprint, (even_port, reservation_token)),
            )| {
                Request {
                    client,
                    class: Class::Request,
                    method,
                    transaction,
                    auth: Auth::Valid {
                        user,
                        algorithm,
                        fresh_nonce: true,
                    },
                    transport: Some(17),
                    lifetime,
                    family: None,
                    additional_family,
                    even_port,
                    reservation_token,
                    peers,
                    channel: Some(channel),
                    extra: Vec::new(),
                    extra_first: false,
                    unknown_required: false,
                    fingerprint,
                }
            },
        )
}

/// Mostly neither; sometimes EVEN-PORT with R, or a token handed out earlier.
fn pair_or_token() -> impl Strategy<Value = (bool, Option<TokenPick>)> {
    prop_oneof![
        8 => Just((false, None)),
        1 => Just((true, None)),
        1 => any::<Index>().prop_map(|i| (false, Some(TokenPick::Given(i)))),
        1 => Just((false, Some(TokenPick::Latest))),
    ]
}

/// Any method and class, any credentials, attributes present, absent or malformed.
fn any_request() -> impl Strategy<Value = Request> {
    let method = prop_oneof![
        4 => Just(Method::ALLOCATE.0),
        3 => Just(Method::CREATE_PERMISSION.0),
        3 => Just(Method::CHANNEL_BIND.0),
        2 => Just(Method::REFRESH.0),
        1 => Just(Method::BINDING.0),
        1 => Just(Method::SEND.0),
        1 => Just(Method::DATA.0),
        1 => Just(Method::CONNECT.0),
        1 => Just(Method::CONNECTION_BIND.0),
        1 => 0u16..=0xFFF,
    ];
    let class = prop_oneof![9 => Just(Class::Request), 1 => any_class()];
    let transport = prop_oneof![
        8 => Just(Some(17u8)),
        2 => Just(Some(6u8)),
        1 => Just(None),
        1 => any::<u8>().prop_map(Some),
    ];
    let lifetime = prop_oneof![
        3 => Just(None),
        1 => Just(Some(0u32)),
        2 => (0u32..4000).prop_map(Some),
        1 => any::<u32>().prop_map(Some),
    ];
    let family = prop_oneof![
        6 => Just(None),
        2 => Just(Some([1u8, 0, 0, 0])),
        2 => Just(Some([2u8, 0, 0, 0])),
        1 => any::<[u8; 4]>().prop_map(Some),
    ];
    let additional_family = prop_oneof![
        6 => Just(None),
        2 => Just(Some([2u8, 0, 0, 0])),
        1 => Just(Some([1u8, 0, 0, 0])),
        1 => any::<[u8; 4]>().prop_map(Some),
    ];
    let channel = prop_oneof![
        1 => Just(None),
        6 => (0x4000u16..0x4004).prop_map(Some),
        1 => any::<u16>().prop_map(Some),
    ];
    let extra = prop_oneof![
        4 => Just(Vec::new()),
        1 => vec(
            (proptest::sample::select(UNDERSTOOD).prop_map(|t| t.0), vec(any::<u8>(), 0..24)),
            1..3,
        ),
    ];
    (
        (client(), class, method, 0u8..6, auth()),
        (
            transport,
            lifetime,
            family,
            prop::bool::weighted(0.15),
            prop_oneof![
                18 => Just(None),
                1 => Just(Some(TokenPick::Unknown)),
                1 => any::<Index>().prop_map(|i| Some(TokenPick::Given(i))),
            ],
        ),
        (vec(peer_index(), 0..4), channel, additional_family),
        (
            extra,
            any::<bool>(),
            prop::bool::weighted(0.05),
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (client, class, method, transaction, auth),
                (transport, lifetime, family, even_port, reservation_token),
                (peers, channel, additional_family),
                (extra, extra_first, unknown_required, fingerprint),
            )| Request {
                client,
                class,
                method,
                transaction,
                auth,
                transport,
                lifetime,
                family,
                additional_family,
                even_port,
                reservation_token,
                peers,
                channel,
                extra,
                extra_first,
                unknown_required,
                fingerprint,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    let garbage = prop_oneof![
        vec(any::<u8>(), 0..80),
        // Looks like STUN up to the magic cookie, so the parser gets further.
        (0u16..0x4000, vec(any::<u8>(), 0..60)).prop_map(|(raw_type, rest)| {
            let mut bytes = raw_type.to_be_bytes().to_vec();
            bytes.extend_from_slice(&(rest.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            bytes.extend_from_slice(&rest);
            bytes
        }),
    ];
    let relay = prop_oneof![
        3 => any::<Index>().prop_map(RelayPick::Seen),
        1 => (49998u16..50008, any::<bool>()).prop_map(|(port, v6)| RelayPick::Port { port, v6 }),
    ];
    let wait = prop_oneof![4 => 0u64..60, 2 => 0u64..400, 1 => 0u64..4000];
    prop_oneof![
        8 => request().prop_map(|r| Op::Request(Box::new(r))),
        1 => (client(), garbage).prop_map(|(client, bytes)| Op::Garbage { client, bytes }),
        4 => (
            client(),
            prop_oneof![6 => 0x4000u16..0x4004, 1 => 0x4000u16..0x8000],
            vec(any::<u8>(), 0..40),
            prop_oneof![4 => Just(None), 1 => any::<u16>().prop_map(Some)],
            0u8..4,
        )
            .prop_map(|(client, channel, payload, declared, padding)| Op::ChannelData {
                client,
                channel,
                payload,
                declared,
                padding,
            }),
        2 => (
            client(),
            peer_index(),
            proptest::option::weighted(0.9, vec(any::<u8>(), 0..40)),
            prop::bool::weighted(0.9),
            any::<bool>(),
        )
            .prop_map(|(client, peer, data, with_peer, fingerprint)| Op::Send {
                client,
                peer,
                data,
                with_peer,
                fingerprint,
            }),
        4 => (relay, peer_index(), vec(any::<u8>(), 0..40))
            .prop_map(|(relay, peer, payload)| Op::Peer { relay, peer, payload }),
        3 => (any::<Index>(), prop::bool::weighted(0.8))
            .prop_map(|(pick, bound)| Op::RelayBound { pick, bound }),
        1 => wait.prop_map(|secs| Op::Wait { secs }),
        1 => Just(Op::ConnectionClosed),
    ]
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let binding = prop_oneof![
        4 => vec(prop::bool::weighted(0.85), 1..6).prop_map(Binding::Immediate),
        // Ports taken by other programs, several times in a row, then one that binds.
        1 => (0usize..10).prop_map(|failures| {
            let mut answers = vec![false; failures];
            answers.push(true);
            Binding::Immediate(answers)
        }),
        2 => Just(Binding::Deferred),
    ];
    let default_family = prop_oneof![
        3 => Just(DefaultFamily::Ipv4),
        1 => Just(DefaultFamily::Ipv6),
        1 => Just(DefaultFamily::MatchClient),
    ];
    let channel_numbers = prop_oneof![
        3 => Just(ChannelNumbers::Rfc5766),
        1 => Just(ChannelNumbers::Rfc8656),
    ];
    (
        prop::bool::weighted(0.7),
        any::<bool>(),
        (default_family, channel_numbers),
        (binding, any::<bool>()),
        vec(op(), 1..80),
    )
        .prop_map(
            |(
                allow_loopback,
                with_v6_relay,
                (default_family, channel_numbers),
                (binding, fast_path),
                ops,
            )| {
                Scenario {
                    allow_loopback,
                    with_v6_relay,
                    default_family,
                    channel_numbers,
                    binding,
                    fast_path,
                    ops,
                }
            },
        )
}

/// Drives one `turn::Server` and models the I/O layer's relay sockets.
struct Harness {
    server: Server,
    start: Instant,
    now: Instant,
    clients: [FiveTuple; 3],
    /// The last nonce each client was given, and when.
    nonces: Vec<Option<(Vec<u8>, Instant)>>,
    binding: Binding,
    io: RecordingIo,
    /// Whether relays of both families exist, so one allocation may own two.
    dual_stack: bool,
    /// Relays the core asked to bind and that were not answered or released yet.
    pending: BTreeSet<SocketAddr>,
    /// Relays bound (answered `true`) and not released yet: the open sockets.
    open: BTreeSet<SocketAddr>,
    /// Every relay the core ever asked to bind, in order.
    seen: Vec<SocketAddr>,
    /// Keys that authenticated requests use; every response with integrity must verify
    /// with one of them.
    keys: Vec<[u8; 16]>,
    policy: PeerPolicy,
    rest_user: String,
    rest_password: String,
    expired_user: String,
    expired_password: String,
    counter: u32,
    /// Every RESERVATION-TOKEN the server handed out.
    tokens: Vec<Vec<u8>>,
}

impl Harness {
    fn new(scenario: &Scenario) -> Self {
        let start = Instant::now();
        let mut config = ServerConfig::new(REALM, v4_relay(), RELAY_PORTS);
        if scenario.with_v6_relay {
            config.relays.push(v6_relay());
        }
        config.default_family = scenario.default_family;
        config.channel_numbers = scenario.channel_numbers;
        config.fast_path = scenario.fast_path;
        config.users = vec![(USER.to_owned(), UserSecret::Password(PASSWORD.to_owned()))];
        config.secrets = vec![SECRET.to_owned()];
        if scenario.allow_loopback {
            config.peers = PeerPolicy::new(
                vec![
                    "127.0.0.0/8".parse().unwrap(),
                    "127.0.0.1/32".parse().unwrap(),
                    "::1/128".parse().unwrap(),
                ],
                Vec::new(),
            );
        }
        let policy = config.peers.clone();
        let server = Server::new(config, start, START_UNIX, Rng::from_seed(7), [42; 32]);
        let valid = rendez::credential::mint(
            SECRET,
            "bob",
            UNIX_EPOCH + Duration::from_secs(START_UNIX + 100_000),
        );
        let expired = rendez::credential::mint(
            SECRET,
            "carol",
            UNIX_EPOCH + Duration::from_secs(START_UNIX - 1),
        );
        let keys = vec![
            long_term_key(USER, REALM, PASSWORD),
            long_term_key(&valid.username, REALM, &valid.password),
            long_term_key(&expired.username, REALM, &expired.password),
        ];
        Self {
            server,
            start,
            now: start,
            clients: clients(),
            nonces: vec![None; 3],
            binding: scenario.binding.clone(),
            io: RecordingIo::answering(bind_answers(&scenario.binding)),
            dual_stack: scenario.with_v6_relay,
            pending: BTreeSet::new(),
            open: BTreeSet::new(),
            seen: Vec::new(),
            keys,
            policy,
            rest_user: valid.username,
            rest_password: valid.password,
            expired_user: expired.username,
            expired_password: expired.password,
            counter: 0,
            tokens: Vec::new(),
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Request(r) => self.request(r),
            Op::Garbage { client, bytes } => self.client_packet(*client, bytes),
            Op::ChannelData {
                client,
                channel,
                payload,
                declared,
                padding,
            } => {
                let declared = declared.unwrap_or(payload.len() as u16);
                let mut bytes = ChannelData::header(*channel, declared).to_vec();
                bytes.extend_from_slice(payload);
                bytes.extend(std::iter::repeat_n(0, usize::from(*padding)));
                self.client_packet(*client, &bytes);
            }
            Op::Send {
                client,
                peer: p,
                data,
                with_peer,
                fingerprint,
            } => {
                let mut b =
                    MessageBuilder::new(Class::Indication, Method::SEND, self.fresh_transaction());
                if *with_peer {
                    b.add_xor_address(AttrType::XOR_PEER_ADDRESS, peer(*p));
                }
                if let Some(data) = data {
                    b.add(AttrType::DATA, data);
                }
                if *fingerprint {
                    b.add_fingerprint();
                }
                let bytes = b.finish();
                self.client_packet(*client, &bytes);
            }
            Op::Peer {
                relay,
                peer: p,
                payload,
            } => {
                let relay = match relay {
                    RelayPick::Seen(i) if !self.seen.is_empty() => {
                        self.seen[i.index(self.seen.len())]
                    }
                    RelayPick::Seen(_) => SocketAddr::new(v4_relay().bind, *RELAY_PORTS.start()),
                    RelayPick::Port { port, v6: false } => SocketAddr::new(v4_relay().bind, *port),
                    RelayPick::Port { port, v6: true } => SocketAddr::new(v6_relay().bind, *port),
                };
                self.peer_packet(relay, peer(*p), payload);
            }
            Op::RelayBound { pick, bound } => {
                let (relay, real) = if !self.pending.is_empty() {
                    let relay = *self
                        .pending
                        .iter()
                        .nth(pick.index(self.pending.len()))
                        .unwrap();
                    (relay, true)
                } else if !self.seen.is_empty() {
                    (self.seen[pick.index(self.seen.len())], false)
                } else {
                    return;
                };
                if real {
                    self.pending.remove(&relay);
                    if *bound {
                        self.open.insert(relay);
                    }
                }
                self.server
                    .handle_relay_bound(self.now, RelayAddr(relay), *bound);
                self.drain();
            }
            Op::Wait { secs } => self.wait(Duration::from_secs(*secs)),
            Op::ConnectionClosed => {
                let stream = self.clients.iter().find(|c| c.transport.is_stream());
                self.server
                    .handle_connection_closed(self.now, *stream.unwrap());
                self.drain();
            }
        }
        self.check();
    }

    fn wait(&mut self, by: Duration) {
        self.now += by;
        self.server.handle_timeout(self.now);
        self.drain();
    }

    /// Invariants that hold between any two inputs.
    fn check(&self) {
        let count = self.server.allocation_count();
        assert!(count <= self.clients.len(), "one allocation per 5-tuple");
        if count > 0 {
            assert!(
                self.server.poll_timeout().is_some(),
                "{count} allocations but no timer"
            );
        }
        assert!(
            self.pending.is_disjoint(&self.open),
            "a relay both pending and bound"
        );
        // What the fast path holds (the core's insertions minus its removals) is exactly
        // what the core would relay itself, on channels: never a channel it would refuse.
        let mirrored: Vec<FastPathEntry> = self.io.fast_path.keys().copied().collect();
        assert_eq!(mirrored, self.server.eligible_fast_paths(self.now));
        assert_eq!(mirrored, self.server.fast_path_entries());
        for entry in &mirrored {
            assert!(entry.client.transport == Transport::Udp, "{entry:?}");
            assert!(
                self.open.contains(&entry.relay.0),
                "{entry:?}: relay not open"
            );
        }
        // One relay socket per allocation, two for a dual-stack one. Answered at once, every
        // socket is bound after a drain; answered later, some are still being bound (and the
        // model may hold binds the core has since given up on).
        let most = if self.dual_stack { 2 * count } else { count };
        let least_bound = match self.binding {
            Binding::Immediate(_) => count,
            Binding::Deferred => 0,
        };
        assert!(
            (least_bound..=most).contains(&self.open.len()),
            "{count} allocations own {} bound relay sockets {:?}",
            self.open.len(),
            self.open
        );
        assert!(
            self.open.len() + self.pending.len() >= count,
            "an allocation without a relay socket (open {:?}, pending {:?})",
            self.open,
            self.pending
        );
    }

    fn request(&mut self, r: &Request) {
        let nonce = match &r.auth {
            Auth::Valid { fresh_nonce, .. } => Some(self.nonce_for(r.client, *fresh_nonce)),
            Auth::WrongPassword | Auth::WrongRealm => Some(self.nonce_for(r.client, true)),
            Auth::ForgedNonce(forged) => Some(forged.clone()),
            Auth::None | Auth::NoNonce => None,
        };
        let transaction = TransactionId([r.transaction; 12]);
        let mut b = MessageBuilder::new(r.class, Method(r.method), transaction);
        if r.extra_first {
            add_extra(&mut b, &r.extra);
        }
        if let Some(t) = r.transport {
            b.add(AttrType::REQUESTED_TRANSPORT, &[t, 0, 0, 0]);
        }
        if let Some(lifetime) = r.lifetime {
            b.add_u32(AttrType::LIFETIME, lifetime);
        }
        if let Some(family) = r.family {
            b.add(AttrType::REQUESTED_ADDRESS_FAMILY, &family);
        }
        if let Some(family) = r.additional_family {
            b.add(AttrType::ADDITIONAL_ADDRESS_FAMILY, &family);
        }
        if r.even_port {
            b.add(AttrType::EVEN_PORT, &[0x80, 0, 0, 0]);
        }
        match &r.reservation_token {
            Some(TokenPick::Given(i)) if !self.tokens.is_empty() => {
                let token = self.tokens[i.index(self.tokens.len())].clone();
                b.add(AttrType::RESERVATION_TOKEN, &token);
            }
            Some(TokenPick::Latest) if !self.tokens.is_empty() => {
                let token = self.tokens[self.tokens.len() - 1].clone();
                b.add(AttrType::RESERVATION_TOKEN, &token);
            }
            Some(_) => {
                b.add(AttrType::RESERVATION_TOKEN, &[1; 8]);
            }
            None => {}
        }
        if let Some(channel) = r.channel {
            let [hi, lo] = channel.to_be_bytes();
            b.add(AttrType::CHANNEL_NUMBER, &[hi, lo, 0, 0]);
        }
        for p in &r.peers {
            b.add_xor_address(AttrType::XOR_PEER_ADDRESS, peer(*p));
        }
        if !r.extra_first {
            add_extra(&mut b, &r.extra);
        }
        if r.unknown_required {
            b.add(AttrType(0x7FFF), b"?");
        }
        let (username, realm, key) = match &r.auth {
            Auth::None => (None, None, None),
            Auth::Valid { user, .. } => {
                let (name, password) = self.user(*user);
                let key = long_term_key(&name, REALM, &password);
                (Some(name), Some(REALM), Some(key))
            }
            Auth::WrongPassword => (
                Some(USER.to_owned()),
                Some(REALM),
                Some(long_term_key(USER, REALM, "not the password")),
            ),
            Auth::ForgedNonce(_) | Auth::NoNonce => (
                Some(USER.to_owned()),
                Some(REALM),
                Some(long_term_key(USER, REALM, PASSWORD)),
            ),
            Auth::WrongRealm => (
                Some(USER.to_owned()),
                Some("other.realm"),
                Some(long_term_key(USER, "other.realm", PASSWORD)),
            ),
        };
        if let Some(username) = username {
            b.add(AttrType::USERNAME, username.as_bytes());
        }
        if let Some(realm) = realm {
            b.add(AttrType::REALM, realm.as_bytes());
        }
        if let Some(nonce) = &nonce {
            b.add(AttrType::NONCE, nonce);
        }
        if let Some(key) = key {
            let algorithm = match r.auth {
                Auth::Valid { algorithm, .. } => algorithm,
                _ => IntegrityAlgorithm::Sha1,
            };
            b.add_integrity(algorithm, &key);
        }
        if r.fingerprint {
            b.add_fingerprint();
        }
        let bytes = b.finish();
        self.client_packet(r.client, &bytes);
    }

    fn user(&self, user: User) -> (String, String) {
        match user {
            User::Static => (USER.to_owned(), PASSWORD.to_owned()),
            User::Rest => (self.rest_user.clone(), self.rest_password.clone()),
            User::ExpiredRest => (self.expired_user.clone(), self.expired_password.clone()),
        }
    }

    /// The client's last nonce; a new one from a 401 when it has none, or when `fresh` and
    /// it may have expired.
    fn nonce_for(&mut self, client: usize, fresh: bool) -> Vec<u8> {
        let usable = match &self.nonces[client] {
            Some((_, at)) if fresh => self.now.duration_since(*at) < Duration::from_secs(3500),
            Some(_) => true,
            None => false,
        };
        if !usable {
            let mut b =
                MessageBuilder::new(Class::Request, Method::REFRESH, self.fresh_transaction());
            b.add_u32(AttrType::LIFETIME, 600);
            let bytes = b.finish();
            self.client_packet(client, &bytes);
        }
        match &self.nonces[client] {
            Some((nonce, _)) => nonce.clone(),
            None => panic!("an unauthenticated Refresh got no 401 with a NONCE"),
        }
    }

    fn fresh_transaction(&mut self) -> TransactionId {
        self.counter += 1;
        let mut id = [0xEE; 12];
        id[8..].copy_from_slice(&self.counter.to_be_bytes());
        TransactionId(id)
    }

    /// Feeds a client packet; whatever is relayed must leave through a bound relay and
    /// carry exactly the payload the client sent (ChannelData or a DATA attribute).
    fn client_packet(&mut self, client: usize, bytes: &[u8]) {
        let from = self.clients[client];
        let expected = match classify(bytes) {
            Framing::ChannelData => ChannelData::parse(bytes).map(|cd| cd.payload),
            Framing::Stun => Message::parse(bytes)
                .ok()
                .and_then(|m| m.attribute(AttrType::DATA)),
            Framing::Other => None,
        };
        if let Some(to_peer) = self.server.handle_client_packet(self.now, from, bytes) {
            let (relay, peer) = (to_peer.relay.0, to_peer.peer.0);
            assert!(
                self.open.contains(&relay),
                "relayed through {relay} which is not bound (open {:?})",
                self.open
            );
            assert!(self.server.poll_output().is_none(), "relayed and answered");
            assert_eq!(
                peer.is_ipv4(),
                relay.is_ipv4(),
                "{relay} cannot send to {peer}"
            );
            assert!(
                self.policy.permits(peer.ip()),
                "relayed to {peer}, which the peer policy denies"
            );
            match expected {
                Some(payload) => assert_eq!(to_peer.payload, payload),
                None => panic!("relayed a packet that carries no payload: {bytes:?}"),
            }
        }
        self.drain();
    }

    /// Feeds a datagram from a peer; what comes back must be for a known client, through a
    /// bound relay, and carry the payload unchanged.
    fn peer_packet(&mut self, relay: SocketAddr, from: SocketAddr, payload: &[u8]) {
        let open = self.open.contains(&relay);
        if let Some(to_client) =
            self.server
                .handle_peer_packet(self.now, RelayAddr(relay), PeerAddr(from), payload)
        {
            assert!(open, "peer data accepted on {relay}, which is not bound");
            assert!(
                self.policy.permits(from.ip()),
                "accepted data from {from}, which the peer policy denies"
            );
            assert!(self.clients.contains(&to_client.client));
            let bytes = to_client.bytes;
            match classify(bytes) {
                Framing::ChannelData => {
                    let cd = ChannelData::parse(bytes).expect("well-formed ChannelData");
                    assert_eq!(cd.payload, payload);
                    if to_client.client.transport.is_stream() {
                        assert_eq!(bytes.len() % 4, 0, "stream ChannelData is padded");
                    }
                }
                Framing::Stun => {
                    let m = Message::parse(bytes).expect("well-formed Data indication");
                    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
                    assert_eq!(m.attribute(AttrType::DATA), Some(payload));
                    let tid = m.transaction_id();
                    let xor = m.attribute(AttrType::XOR_PEER_ADDRESS);
                    assert_eq!(xor.and_then(|v| decode_xor_address(v, &tid)), Some(from));
                }
                Framing::Other => panic!("unframed bytes for a client: {bytes:?}"),
            }
        }
        self.drain();
    }

    /// Carries out queued outputs as the I/O layer would, checking each.
    fn drain(&mut self) {
        self.server.drive(self.now, &mut self.io);
        for event in self.io.take() {
            match event {
                Event::Transmit(to, bytes) => self.check_response(to, &bytes),
                Event::Bind(relay, answer) | Event::Listen(relay, answer) => {
                    assert!(
                        !self.open.contains(&relay) && !self.pending.contains(&relay),
                        "BindRelay {relay} for a relay already in use"
                    );
                    let port_ok = RELAY_PORTS.contains(&relay.port());
                    let ip_ok = relay.ip() == v4_relay().bind || relay.ip() == v6_relay().bind;
                    assert!(
                        port_ok && ip_ok,
                        "BindRelay {relay} outside the relay config"
                    );
                    if !self.seen.contains(&relay) {
                        self.seen.push(relay);
                    }
                    match answer {
                        RelayBind::Bound => {
                            self.open.insert(relay);
                        }
                        RelayBind::Unavailable => {}
                        RelayBind::Deferred => {
                            self.pending.insert(relay);
                        }
                    }
                }
                Event::Release(relay) => {
                    // Closing a socket that is not open (its bind failed) is a no-op for
                    // the I/O layer; one still being bound is closed when the bind ends.
                    assert!(
                        self.seen.contains(&relay),
                        "ReleaseRelay {relay} never bound"
                    );
                    self.open.remove(&relay);
                    self.pending.remove(&relay);
                }
                // TCP allocations (RFC 6062): a Connect leaves from an open relay, a
                // ConnectionBind comes over a stream.
                Event::Connect(_, relay, _) => {
                    assert!(self.open.contains(&relay), "Connect from {relay}, not open");
                }
                Event::Bridge(_, client) => {
                    assert!(client.transport.is_stream(), "a data connection over UDP");
                }
                Event::ClosePeer(_) => {}
                Event::FastPath(_) => {}
            }
        }
    }

    fn check_response(&mut self, to: FiveTuple, bytes: &[u8]) {
        let client = self
            .clients
            .iter()
            .position(|c| *c == to)
            .unwrap_or_else(|| panic!("transmit to unknown client {to:?}"));
        let m = Message::parse(bytes).expect("the core writes well-formed responses");
        assert!(
            matches!(m.class(), Class::Success | Class::Error),
            "the core only sends responses to clients, got {:?}",
            m.class()
        );
        if m.has_integrity() {
            assert!(
                self.keys.iter().any(|k| m.verify_integrity(k).is_some()),
                "response integrity verifies with no user's key"
            );
        }
        if let Some(token) = m.attribute(AttrType::RESERVATION_TOKEN) {
            assert_eq!(
                m.method(),
                Method::ALLOCATE,
                "a token in a {:?}",
                m.method()
            );
            assert_eq!(m.class(), Class::Success);
            assert_eq!(token.len(), 8);
            let relayed: Vec<SocketAddr> = m.xor_relayed_addresses().collect();
            assert!(
                matches!(relayed[..], [one] if one.port() % 2 == 0),
                "a reservation goes with one even relayed port: {relayed:?}"
            );
            // A retransmission resends the same token; otherwise each is new.
            if !self.tokens.iter().any(|t| t == token) {
                self.tokens.push(token.to_vec());
            }
        }
        if m.class() == Class::Error {
            let code = m
                .attribute(AttrType::ERROR_CODE)
                .and_then(ErrorCode::decode_code)
                .expect("error responses carry ERROR-CODE");
            assert!((300..700).contains(&code));
            if let Some(nonce) = m.attribute(AttrType::NONCE) {
                assert!(matches!(code, 401 | 438), "NONCE in a {code}");
                self.nonces[client] = Some((nonce.to_vec(), self.now));
            }
        }
    }

    /// After every lifetime has run out: nothing left, every relay socket released, no
    /// timer pending, and every relay port back in the pool.
    fn finish(&mut self, with_v6_relay: bool) {
        // An I/O layer answers every BindRelay in the end, even one that took a while: a
        // socket it bound must be released whether or not the core still wants it.
        while let Some(relay) = self.pending.pop_first() {
            self.open.insert(relay);
            self.server
                .handle_relay_bound(self.now, RelayAddr(relay), true);
            self.drain();
        }
        self.wait(PAST_EVERY_LIFETIME);
        assert_eq!(
            self.server.allocation_count(),
            0,
            "allocations outlived their lifetime"
        );
        assert!(
            self.open.is_empty() && self.pending.is_empty(),
            "relays never released: open {:?}, pending {:?}",
            self.open,
            self.pending
        );
        assert_eq!(
            self.server.poll_timeout(),
            None,
            "a timer outlived every allocation"
        );
        let elapsed = self.now.duration_since(self.start).as_secs();
        assert!(elapsed >= PAST_EVERY_LIFETIME.as_secs());

        // Every port can be allocated again: none leaked.
        self.binding = Binding::Immediate(vec![true]);
        self.io.set_answers(vec![RelayBind::Bound]);
        let families: &[u8] = if with_v6_relay { &[1, 2] } else { &[1] };
        for &family in families {
            for i in 0..RELAY_PORTS.len() {
                let tuple = FiveTuple {
                    transport: Transport::Udp,
                    client: SocketAddr::new(
                        Ipv4Addr::new(192, 0, 2, 99).into(),
                        41000 + u16::from(family) * 100 + i as u16,
                    ),
                    server: self.clients[0].server,
                };
                let bound_before = self.open.len();
                self.allocate_from(tuple, family);
                assert_eq!(
                    self.open.len(),
                    bound_before + 1,
                    "relay port {i} of family {family} was not free after everything expired"
                );
            }
        }
    }

    /// A complete, correct Allocate from a client that is not one of the scenario's.
    fn allocate_from(&mut self, tuple: FiveTuple, family: u8) {
        self.clients[2] = tuple;
        self.nonces[2] = None;
        let nonce = self.nonce_for(2, true);
        let key = long_term_key(USER, REALM, PASSWORD);
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, self.fresh_transaction());
        b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .add(AttrType::REQUESTED_ADDRESS_FAMILY, &[family, 0, 0, 0])
            .add(AttrType::USERNAME, USER.as_bytes())
            .add(AttrType::REALM, REALM.as_bytes())
            .add(AttrType::NONCE, &nonce)
            .add_integrity(IntegrityAlgorithm::Sha1, &key);
        let bytes = b.finish();
        self.client_packet(2, &bytes);
    }
}

/// The harness's answers to relay binds in `binding` mode.
fn bind_answers(binding: &Binding) -> Vec<RelayBind> {
    match binding {
        Binding::Immediate(answers) => answers
            .iter()
            .map(|&ok| {
                if ok {
                    RelayBind::Bound
                } else {
                    RelayBind::Unavailable
                }
            })
            .collect(),
        Binding::Deferred => vec![RelayBind::Deferred],
    }
}

fn add_extra(b: &mut MessageBuilder, extra: &[(u16, Vec<u8>)]) {
    for (kind, value) in extra {
        b.add(AttrType(*kind), value);
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn no_input_sequence_breaks_the_core(scenario in scenario()) {
        let mut harness = Harness::new(&scenario);
        for op in &scenario.ops {
            harness.run(op);
        }
        harness.finish(scenario.with_v6_relay);
    }
}

/// The harness itself reaches the interesting states: a full allocate → permission →
/// channel → relay in both directions, so the property above is not vacuous.
#[test]
fn harness_drives_a_full_relay_session() {
    let scenario = Scenario {
        allow_loopback: true,
        with_v6_relay: false,
        default_family: DefaultFamily::Ipv4,
        channel_numbers: ChannelNumbers::Rfc5766,
        binding: Binding::Immediate(vec![true]),
        fast_path: true,
        ops: Vec::new(),
    };
    let mut h = Harness::new(&scenario);
    let valid = Auth::Valid {
        user: User::Static,
        algorithm: IntegrityAlgorithm::Sha1,
        fresh_nonce: true,
    };
    let base = Request {
        client: 0,
        class: Class::Request,
        method: Method::ALLOCATE.0,
        transaction: 1,
        auth: valid,
        transport: Some(17),
        lifetime: None,
        family: None,
        additional_family: None,
        even_port: false,
        reservation_token: None,
        peers: vec![0],
        channel: Some(0x4000),
        extra: Vec::new(),
        extra_first: false,
        unknown_required: false,
        fingerprint: true,
    };
    h.run(&Op::Request(Box::new(base.clone())));
    assert_eq!(h.open.len(), 1);
    let relay = h.seen[0];
    h.run(&Op::Request(Box::new(Request {
        method: Method::CHANNEL_BIND.0,
        transaction: 2,
        ..base.clone()
    })));
    assert_eq!(
        h.io.fast_path.keys().copied().collect::<Vec<_>>(),
        [FastPathEntry {
            client: h.clients[0],
            channel: 0x4000,
            peer: PeerAddr(peer(0)),
            relay: RelayAddr(relay),
        }],
        "the bound channel is mirrored into the fast path"
    );
    let payload = b"hello peer".to_vec();
    let mut cd = ChannelData::header(0x4000, payload.len() as u16).to_vec();
    cd.extend_from_slice(&payload);
    let to_peer = h.server.handle_client_packet(h.now, h.clients[0], &cd);
    assert_eq!(
        to_peer.map(|t| (t.relay.0, t.peer.0)),
        Some((relay, peer(0)))
    );
    let back = h
        .server
        .handle_peer_packet(h.now, RelayAddr(relay), PeerAddr(peer(0)), b"hi");
    assert_eq!(
        back.map(|t| t.bytes.to_vec()),
        Some(vec![0x40, 0, 0, 2, b'h', b'i'])
    );
    // An RTP/RTCP pair: the second client redeems the first one's token for the next port.
    h.run(&Op::Request(Box::new(Request {
        client: 1,
        transaction: 3,
        even_port: true,
        ..base.clone()
    })));
    assert_eq!(h.tokens.len(), 1);
    h.run(&Op::Request(Box::new(Request {
        client: 2,
        transaction: 4,
        reservation_token: Some(TokenPick::Latest),
        ..base.clone()
    })));
    let [_, rtp, rtcp] = h.seen[..] else {
        panic!("three relays: {:?}", h.seen);
    };
    assert_eq!((rtp.port() % 2, rtcp.port()), (0, rtp.port() + 1));
    h.finish(false);
}

// ---- regressions found by the property above ----

/// A core with a static user, IPv4 and IPv6 relays, and one authenticated Allocate from
/// `clients()[0]` already sent. Returns the core and the relays it asked to bind, in order.
fn allocate_with_relays(now: Instant, dual_stack: bool) -> (Server, Vec<Output>) {
    let mut config = ServerConfig::new(REALM, v4_relay(), RELAY_PORTS);
    config.relays.push(v6_relay());
    config.users = vec![(USER.to_owned(), UserSecret::Password(PASSWORD.to_owned()))];
    let mut server = Server::new(config, now, START_UNIX, Rng::from_seed(7), [42; 32]);
    let client = clients()[0];

    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
    b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    assert!(server
        .handle_client_packet(now, client, &b.finish())
        .is_none());
    let Some(Output::Transmit { bytes, .. }) = server.poll_output() else {
        panic!("no 401");
    };
    let challenge = Message::parse(&bytes).unwrap();
    let nonce = challenge.attribute(AttrType::NONCE).unwrap().to_vec();

    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([2; 12]));
    b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    if dual_stack {
        b.add(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
    }
    b.add(AttrType::USERNAME, USER.as_bytes())
        .add(AttrType::REALM, REALM.as_bytes())
        .add(AttrType::NONCE, &nonce)
        .add_integrity(
            IntegrityAlgorithm::Sha1,
            &long_term_key(USER, REALM, PASSWORD),
        );
    assert!(server
        .handle_client_packet(now, client, &b.finish())
        .is_none());
    let outputs = std::iter::from_fn(|| server.poll_output()).collect();
    (server, outputs)
}

/// An Allocate whose relay socket is not confirmed within the bind timeout is dropped; the
/// I/O layer's answer that arrives afterwards (a bind that succeeded, but late) must still
/// lead to a ReleaseRelay, or that socket stays open forever. The core used to emit
/// ReleaseRelay for every relay of a removed allocation; it now does so only for relays
/// already confirmed, and ignores a confirmation for a relay it no longer knows.
#[test]
fn a_bind_confirmed_after_the_allocation_gave_up_is_released() {
    let t0 = Instant::now();
    let (mut server, outputs) = allocate_with_relays(t0, false);
    let [Output::BindRelay { relay, .. }] = outputs[..] else {
        panic!("expected one BindRelay, got {outputs:?}");
    };
    let later = t0 + Duration::from_secs(10);
    server.handle_timeout(later);
    assert_eq!(server.allocation_count(), 0);
    let mut outputs: Vec<Output> = std::iter::from_fn(|| server.poll_output()).collect();
    server.handle_relay_bound(later, relay, true);
    outputs.extend(std::iter::from_fn(|| server.poll_output()));
    assert!(
        outputs.contains(&Output::ReleaseRelay { relay }),
        "{relay} was bound and never released; outputs after the timeout: {outputs:?}"
    );
}

/// A dual-stack Allocate whose binds keep failing: the core gives up after 8 failures
/// (counted across both families) while the other family's retry is still queued as a
/// BindRelay. `Server::drive` binds that socket and confirms it, the core ignores the
/// confirmation, and the socket is never released — reachable with today's I/O layer
/// whenever ports are taken by other programs.
#[test]
fn a_dual_stack_allocate_that_gives_up_releases_every_socket() {
    let t0 = Instant::now();
    let (mut server, outputs) = allocate_with_relays(t0, true);
    // What every I/O layer does through `Server::drive`: answer each bind as it comes (the
    // binds the Allocate queued first, then whatever the answers bring).
    let mut io = RecordingIo::answering(vec![RelayBind::Bound]);
    io.fail_next_binds(8);
    for output in outputs {
        if let Output::BindRelay { relay, options } = output {
            let answer = io.bind_relay(relay, options);
            server.handle_relay_bound(t0, relay, answer == RelayBind::Bound);
        }
    }
    server.drive(t0, &mut io);
    let mut open = BTreeSet::new();
    for event in io.take() {
        match event {
            Event::Bind(relay, RelayBind::Bound) => {
                open.insert(relay);
            }
            Event::Release(relay) => {
                open.remove(&relay);
            }
            _ => {}
        }
    }
    assert_eq!(server.allocation_count(), 0, "the Allocate was given up");
    assert!(open.is_empty(), "bound and never released: {open:?}");
}
