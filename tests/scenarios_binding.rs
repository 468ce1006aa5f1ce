//! Sans-IO scenarios of Binding beyond RFC 8489: classic STUN (RFC 3489, no magic cookie),
//! NAT behaviour discovery (RFC 5780: OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST,
//! RESPONSE-PORT, PADDING) with and without `other-address`, and SOFTWARE.

use std::net::SocketAddr;
use std::time::Instant;

use rendez::random::Rng;
use rendez::stun::{
    decode_plain_address, decode_xor_address, AttrType, Class, Dialect, Message, MessageBuilder,
    Method, TransactionId, MAGIC_COOKIE,
};
use rendez::turn::{
    ChallengeLimiter, DropReason, FiveTuple, NatDiscovery, RelayAddress, Server, ServerConfig,
    Transport,
};

mod harness;
use harness::{Event, RecordingIo};

/// A1:P1, the primary listen address.
const PRIMARY: &str = "192.0.2.10:3478";
/// A2:P2, `other-address`.
const OTHER: &str = "192.0.2.20:3479";
const CLIENT: &str = "198.51.100.7:40000";
const CLASSIC: Dialect = Dialect::Rfc3489 {
    id_start: [0xC1, 0xA5, 0x51, 0xC0],
};

// ---------------------------------------------------------------- classic STUN (RFC 3489)

#[test]
fn classic_binding_is_answered_with_mapped_address_and_its_own_transaction_id() {
    let mut h = Harness::new(None);
    let (to, response) = h.one(udp(PRIMARY), &request(CLASSIC, &[]));
    assert_eq!(to, udp(PRIMARY));
    assert_eq!(
        &response.bytes[4..8],
        &[0xC1, 0xA5, 0x51, 0xC0],
        "id echoed"
    );
    assert_eq!(response.class(), Class::Success);
    assert_eq!(response.plain(AttrType::MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(
        response.types(),
        [AttrType::MAPPED_ADDRESS.0],
        "nothing else"
    );
}

#[test]
fn change_request_without_flags_is_answered_as_any_binding_cookie_or_not() {
    let mut h = Harness::new(None);
    let none = [change(false, false)];
    let (_, classic) = h.one(udp(PRIMARY), &request(CLASSIC, &none));
    assert_eq!(classic.class(), Class::Success);
    let (_, modern) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &none));
    assert_eq!(modern.class(), Class::Success);
    assert_eq!(modern.xor(AttrType::XOR_MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(
        modern.types(),
        [AttrType::XOR_MAPPED_ADDRESS.0],
        "no RFC 5780 attributes without `other-address`"
    );
}

#[test]
fn change_request_flags_without_other_address_are_420_in_either_dialect() {
    let mut h = Harness::new(None);
    for flags in [
        [change(true, false)],
        [change(false, true)],
        [change(true, true)],
    ] {
        let (_, modern) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &flags));
        assert_eq!(modern.error_code(), Some(420));
        assert_eq!(modern.attr(AttrType::UNKNOWN_ATTRIBUTES), Some(vec![0, 3]));
        let (_, classic) = h.one(udp(PRIMARY), &request(CLASSIC, &flags));
        assert_eq!(classic.error_code(), Some(420));
        // RFC 3489 §11.2.10: an odd list repeats a type to fill 4 bytes.
        assert_eq!(
            classic.attr(AttrType::UNKNOWN_ATTRIBUTES),
            Some(vec![0, 3, 0, 3])
        );
    }
}

#[test]
fn response_address_is_never_honoured() {
    let mut h = Harness::new(Some(OTHER));
    let elsewhere = Attr(AttrType::RESPONSE_ADDRESS, plain(addr("203.0.113.9:53")));
    let (to, response) = h.one(udp(PRIMARY), &request(CLASSIC, &[elsewhere]));
    assert_eq!(to, udp(PRIMARY), "answered to the source, if at all");
    assert_eq!(response.error_code(), Some(420));
    assert_eq!(
        response.attr(AttrType::UNKNOWN_ATTRIBUTES),
        Some(vec![0, 2, 0, 2])
    );
}

#[test]
fn classic_binding_with_other_address_names_source_and_changed_address() {
    let mut h = Harness::new(Some(OTHER));
    let (to, response) = h.one(udp(PRIMARY), &request(CLASSIC, &[change(true, true)]));
    assert_eq!(to.server, addr(OTHER), "changed IP and port");
    assert_eq!(response.plain(AttrType::MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(response.plain(AttrType::SOURCE_ADDRESS), Some(addr(OTHER)));
    assert_eq!(response.plain(AttrType::CHANGED_ADDRESS), Some(addr(OTHER)));
    assert_eq!(
        response.xor(AttrType::XOR_MAPPED_ADDRESS),
        None,
        "not in RFC 3489"
    );
    assert_eq!(response.attr(AttrType::OTHER_ADDRESS), None);
}

// ---------------------------------------------------------------- RFC 5780

#[test]
fn binding_with_other_address_carries_both_mapped_addresses_origin_and_other() {
    let mut h = Harness::new(Some(OTHER));
    let (to, response) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &[]));
    assert_eq!(to, udp(PRIMARY));
    assert_eq!(
        response.xor(AttrType::XOR_MAPPED_ADDRESS),
        Some(addr(CLIENT))
    );
    assert_eq!(response.plain(AttrType::MAPPED_ADDRESS), Some(addr(CLIENT)));
    assert_eq!(
        response.plain(AttrType::RESPONSE_ORIGIN),
        Some(addr(PRIMARY))
    );
    assert_eq!(response.plain(AttrType::OTHER_ADDRESS), Some(addr(OTHER)));
}

#[test]
fn change_request_answers_from_the_address_of_table_1_on_every_one_of_the_four() {
    let mut h = Harness::new(Some(OTHER));
    let [a1p1, a2p1, a1p2, a2p2] = [PRIMARY, "192.0.2.20:3478", "192.0.2.10:3479", OTHER].map(addr);
    // (arrived at, opposite): OTHER-ADDRESS is the opposite whatever the flags.
    for (here, opposite) in [(a1p1, a2p2), (a2p1, a1p2), (a1p2, a2p1), (a2p2, a1p1)] {
        let other_ip = if here.ip() == a1p1.ip() {
            a2p1.ip()
        } else {
            a1p1.ip()
        };
        let other_port = if here.port() == a1p1.port() {
            a1p2.port()
        } else {
            a1p1.port()
        };
        for (ip, port) in [(false, false), (true, false), (false, true), (true, true)] {
            let expected = SocketAddr::new(
                if ip { other_ip } else { here.ip() },
                if port { other_port } else { here.port() },
            );
            let arrival = FiveTuple {
                server: here,
                ..udp(PRIMARY)
            };
            let (to, response) = h.one(arrival, &request(Dialect::Rfc8489, &[change(ip, port)]));
            assert_eq!(to.server, expected, "at {here}, change ip {ip} port {port}");
            assert_eq!(to.client, addr(CLIENT));
            assert_eq!(response.plain(AttrType::RESPONSE_ORIGIN), Some(expected));
            assert_eq!(response.plain(AttrType::OTHER_ADDRESS), Some(opposite));
        }
    }
}

#[test]
fn response_port_sends_the_answer_to_another_port_of_the_same_ip() {
    let mut h = Harness::new(Some(OTHER));
    let (to, response) = h.one(
        udp(PRIMARY),
        &request(Dialect::Rfc8489, &[response_port(5000)]),
    );
    assert_eq!(to.client, addr("198.51.100.7:5000"));
    assert_eq!(to.server, addr(PRIMARY));
    assert_eq!(
        response.xor(AttrType::XOR_MAPPED_ADDRESS),
        Some(addr(CLIENT)),
        "the mapping is still the request's"
    );
    let (to, zero) = h.one(
        udp(PRIMARY),
        &request(Dialect::Rfc8489, &[response_port(0)]),
    );
    assert_eq!((to, zero.error_code()), (udp(PRIMARY), Some(400)));
    let short = Attr(AttrType::RESPONSE_PORT, vec![0x13]);
    let (_, malformed) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &[short]));
    assert_eq!(malformed.error_code(), Some(400));
}

#[test]
fn padding_mirrors_the_requests_length_up_to_a_bound() {
    let mut h = Harness::new(Some(OTHER));
    for (asked, given) in [(0, 0), (1499, 1500), (1500, 1500), (20_000, 9000)] {
        let bytes = request(Dialect::Rfc8489, &[padding(asked)]);
        let (_, response) = h.one(udp(PRIMARY), &bytes);
        assert_eq!(response.class(), Class::Success);
        assert_eq!(
            response.attr(AttrType::PADDING).map(|p| p.len()),
            Some(given)
        );
        assert!(
            response.bytes.len() <= bytes.len() + 64,
            "{} bytes for a request of {}: no amplification",
            response.bytes.len(),
            bytes.len()
        );
    }
    let both = [padding(100), response_port(5000)];
    let (to, refused) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &both));
    assert_eq!((to, refused.error_code()), (udp(PRIMARY), Some(400)));
}

#[test]
fn without_other_address_response_port_and_padding_are_unknown_attributes() {
    let mut h = Harness::new(None);
    let (_, port) = h.one(
        udp(PRIMARY),
        &request(Dialect::Rfc8489, &[response_port(5000)]),
    );
    assert_eq!(port.error_code(), Some(420));
    assert_eq!(port.attr(AttrType::UNKNOWN_ATTRIBUTES), Some(vec![0, 0x27]));
    let (_, padded) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &[padding(64)]));
    assert_eq!(
        padded.attr(AttrType::UNKNOWN_ATTRIBUTES),
        Some(vec![0, 0x26])
    );
}

#[test]
fn streams_and_other_listeners_are_served_as_without_an_alternate_address() {
    let mut h = Harness::new(Some(OTHER));
    let tcp = FiveTuple {
        transport: Transport::Tcp,
        ..udp(PRIMARY)
    };
    let (_, plain) = h.one(tcp, &request(Dialect::Rfc8489, &[]));
    assert_eq!(plain.types(), [AttrType::XOR_MAPPED_ADDRESS.0]);
    let (to, changed) = h.one(tcp, &request(Dialect::Rfc8489, &[change(true, false)]));
    assert_eq!((to, changed.error_code()), (tcp, Some(420)));
    // A listener that is not one of the four (here an IPv6 one).
    let v6 = FiveTuple {
        server: addr("[2001:db8::10]:3478"),
        client: addr("[2001:db8::7]:40000"),
        transport: Transport::Udp,
    };
    let (_, v6_changed) = h.one(v6, &request(Dialect::Rfc8489, &[change(false, true)]));
    assert_eq!(v6_changed.error_code(), Some(420));
}

#[test]
fn classic_and_redirected_answers_count_against_the_binding_limit() {
    let limiter = ChallengeLimiter::new(3, 5);
    let mut h = Harness::with(Some(OTHER), |c| c.binding_limit = Some(limiter));
    let kinds = [
        request(CLASSIC, &[]),
        request(Dialect::Rfc8489, &[response_port(5000)]),
        request(CLASSIC, &[change(true, true)]),
        request(Dialect::Rfc8489, &[padding(1200)]),
    ];
    let answered = (0..12)
        .filter(|i| !h.send(udp(PRIMARY), &kinds[i % kinds.len()]).is_empty())
        .count();
    assert_eq!(answered, 3, "one source IP, whatever the port it asks for");
    assert_eq!(h.server.stats().dropped(DropReason::BindingRate), 9);
}

// ---------------------------------------------------------------- SOFTWARE

#[test]
fn software_goes_into_every_response_when_set() {
    let mut h = Harness::with(None, |c| c.software = Some("rendez 1.2".into()));
    let (_, binding) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &[]));
    assert_eq!(
        binding.attr(AttrType::SOFTWARE),
        Some(b"rendez 1.2".to_vec())
    );
    let (_, refused) = h.one(
        udp(PRIMARY),
        &request(Dialect::Rfc8489, &[change(true, true)]),
    );
    assert_eq!(refused.error_code(), Some(420));
    assert_eq!(
        refused.attr(AttrType::SOFTWARE),
        Some(b"rendez 1.2".to_vec())
    );
    let mut allocate =
        MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([4; 12]));
    allocate.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let (_, challenge) = h.one(udp(PRIMARY), &allocate.finish());
    assert_eq!(challenge.error_code(), Some(401));
    assert_eq!(
        challenge.attr(AttrType::SOFTWARE),
        Some(b"rendez 1.2".to_vec())
    );
    // Classic parsers want text in multiples of 4 bytes.
    let (_, classic) = h.one(udp(PRIMARY), &request(CLASSIC, &[]));
    assert_eq!(
        classic.attr(AttrType::SOFTWARE),
        Some(b"rendez 1.2  ".to_vec())
    );

    let mut quiet = ServerConfig::new("r", relay(), 50000..=50099);
    quiet.software = None;
    h.server.reconfigure(&quiet);
    let (_, after) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &[]));
    assert_eq!(
        after.attr(AttrType::SOFTWARE),
        None,
        "a reload takes it away"
    );
}

#[test]
fn software_is_absent_by_default() {
    let mut h = Harness::new(None);
    let (_, binding) = h.one(udp(PRIMARY), &request(Dialect::Rfc8489, &[]));
    assert_eq!(binding.attr(AttrType::SOFTWARE), None);
}

// ---------------------------------------------------------------- properties

proptest::proptest! {
    /// Whatever a Binding request carries, in either dialect, with or without
    /// `other-address` and wherever it arrives: at most one answer, with the request's whole
    /// transaction id, to the request's IP, from one of this host's addresses, never more
    /// than a fixed number of bytes larger than the request.
    #[test]
    fn any_binding_request_gets_one_bounded_answer_to_its_own_ip(
        classic in proptest::prelude::any::<bool>(),
        discovery in proptest::prelude::any::<bool>(),
        arrival in 0usize..5,
        flags in proptest::option::of(0u8..8),
        port in proptest::option::of(proptest::prelude::any::<u16>()),
        pad in proptest::option::of(0usize..3000),
        unknown in proptest::option::of(0u16..0x30),
    ) {
        let mut h = Harness::new(discovery.then_some(OTHER));
        let mut attrs = Vec::new();
        if let Some(flags) = flags {
            attrs.push(Attr(AttrType::CHANGE_REQUEST, vec![0, 0, 0, flags << 1]));
        }
        attrs.extend(port.map(response_port));
        attrs.extend(pad.map(padding));
        attrs.extend(unknown.map(|kind| Attr(AttrType(kind), vec![1, 2, 3, 4])));
        let dialect = if classic { CLASSIC } else { Dialect::Rfc8489 };
        let bytes = request(dialect, &attrs);
        let here = [PRIMARY, "192.0.2.20:3478", "192.0.2.10:3479", OTHER, "192.0.2.30:3478"];
        let from = udp(here[arrival]);
        let sent = h.send(from, &bytes);
        proptest::prop_assert!(sent.len() <= 1);
        for (to, response) in sent {
            proptest::prop_assert_eq!(&response.bytes[4..20], &bytes[4..20]);
            proptest::prop_assert_eq!(to.client.ip(), from.client.ip());
            proptest::prop_assert!(here[..4].contains(&to.server.to_string().as_str()) || to.server == from.server);
            proptest::prop_assert!(response.bytes.len() <= bytes.len() + 80, "{} for {}", response.bytes.len(), bytes.len());
            if response.class() == Class::Success {
                let mapped = if classic {
                    response.plain(AttrType::MAPPED_ADDRESS)
                } else {
                    response.xor(AttrType::XOR_MAPPED_ADDRESS)
                };
                proptest::prop_assert_eq!(mapped, Some(from.client));
            }
        }
    }
}

// ---------------------------------------------------------------- harness

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn udp(server: &str) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: addr(CLIENT),
        server: addr(server),
    }
}

fn relay() -> RelayAddress {
    let ip = addr(PRIMARY).ip();
    RelayAddress {
        bind: ip,
        public: ip,
    }
}

struct Harness {
    server: Server,
    now: Instant,
    io: RecordingIo,
}

impl Harness {
    fn new(other: Option<&str>) -> Self {
        Self::with(other, |_| {})
    }

    fn with(other: Option<&str>, tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        let mut config = ServerConfig::new("rendez.test", relay(), 50000..=50099);
        config.nat_discovery = other.map(|o| NatDiscovery::new(addr(PRIMARY), addr(o)).unwrap());
        tweak(&mut config);
        let now = Instant::now();
        Self {
            server: Server::new(config, now, 1_800_000_000, Rng::from_seed(3), [1; 32]),
            now,
            io: RecordingIo::default(),
        }
    }

    /// Everything sent in answer to `bytes` from `from`.
    fn send(&mut self, from: FiveTuple, bytes: &[u8]) -> Vec<(FiveTuple, Response)> {
        assert!(self
            .server
            .handle_client_packet(self.now, from, bytes)
            .is_none());
        self.server.drive(self.now, &mut self.io);
        self.io
            .take()
            .into_iter()
            .map(|event| match event {
                Event::Transmit(to, bytes) => (to, Response::new(bytes)),
                other => panic!("a Binding only transmits: {other:?}"),
            })
            .collect()
    }

    /// The one answer to `bytes`.
    fn one(&mut self, from: FiveTuple, bytes: &[u8]) -> (FiveTuple, Response) {
        let mut sent = self.send(from, bytes);
        assert_eq!(sent.len(), 1, "expected exactly one answer");
        sent.remove(0)
    }
}

struct Attr(AttrType, Vec<u8>);

fn change(ip: bool, port: bool) -> Attr {
    let flags = u8::from(ip) << 2 | u8::from(port) << 1;
    Attr(AttrType::CHANGE_REQUEST, vec![0, 0, 0, flags])
}

fn response_port(port: u16) -> Attr {
    let [high, low] = port.to_be_bytes();
    Attr(AttrType::RESPONSE_PORT, vec![high, low, 0, 0])
}

fn padding(len: usize) -> Attr {
    Attr(AttrType::PADDING, vec![0xEE; len])
}

/// A plain address value (MAPPED-ADDRESS's format), for RFC 3489 attributes.
fn plain(address: SocketAddr) -> Vec<u8> {
    let SocketAddr::V4(v4) = address else {
        panic!("IPv4 only here");
    };
    let mut value = vec![0, 1];
    value.extend_from_slice(&v4.port().to_be_bytes());
    value.extend_from_slice(&v4.ip().octets());
    value
}

fn request(dialect: Dialect, attrs: &[Attr]) -> Vec<u8> {
    let tid = TransactionId([0x5A; 12]);
    let mut b =
        MessageBuilder::in_dialect(Vec::new(), dialect, Class::Request, Method::BINDING, tid);
    for Attr(kind, value) in attrs {
        b.add(*kind, value);
    }
    b.finish()
}

struct Response {
    /// As sent.
    bytes: Vec<u8>,
    /// With the magic cookie in place of a classic id's first bytes: only classic requests
    /// parse without it, and the attributes read the same.
    readable: Vec<u8>,
}

impl Response {
    fn new(bytes: Vec<u8>) -> Self {
        let mut readable = bytes.clone();
        readable[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        Self { bytes, readable }
    }

    fn message(&self) -> Message<'_> {
        Message::parse(&self.readable).expect("server responses parse")
    }

    fn class(&self) -> Class {
        self.message().class()
    }

    fn error_code(&self) -> Option<u16> {
        let m = self.message();
        (m.class() == Class::Error).then(|| m.error_code())?
    }

    fn attr(&self, kind: AttrType) -> Option<Vec<u8>> {
        self.message().attribute(kind).map(<[u8]>::to_vec)
    }

    fn plain(&self, kind: AttrType) -> Option<SocketAddr> {
        decode_plain_address(&self.attr(kind)?)
    }

    fn xor(&self, kind: AttrType) -> Option<SocketAddr> {
        let m = self.message();
        decode_xor_address(m.attribute(kind)?, &m.transaction_id())
    }

    /// Every attribute type, in order.
    fn types(&self) -> Vec<u16> {
        let mut types = Vec::new();
        let mut at = 20;
        while let Some(header) = self.bytes.get(at..at + 4) {
            types.push(u16::from_be_bytes([header[0], header[1]]));
            let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
            at += 4 + len.div_ceil(4) * 4;
        }
        types
    }
}
