//! Micro-benchmarks of the sans-IO core alone (no sockets): the cost the server adds per
//! packet on its three busiest paths.
//!
//! - `decode_verify_allocate`: parse an authenticated Allocate and check its
//!   MESSAGE-INTEGRITY with the long-term key (every authenticated request pays this);
//! - `binding_round_trip`: a STUN Binding request in, its response out;
//! - `channel_data_forward`: the relay hot path, ChannelData client → peer and a peer
//!   datagram → ChannelData for the client, at audio (160 B) and video (1200 B) sizes.
//!
//! Run with `cargo bench --bench core`; report the medians.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rendez::random::Rng;
use rendez::stun::{
    long_term_key, AttrType, ChannelData, Class, ErrorCode, IntegrityAlgorithm, Message,
    MessageBuilder, Method, TransactionId,
};
use rendez::turn::{
    FiveTuple, PeerAddr, PeerPolicy, RelayAddr, RelayAddress, RelayBind, Server, ServerConfig,
    Transport, UserSecret,
};

#[path = "../tests/harness/mod.rs"]
mod harness;
use harness::{Event, RecordingIo};

const REALM: &str = "rendez.bench";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const PAYLOAD_SIZES: [usize; 2] = [160, 1200];
const CHANNEL: u16 = 0x4000;

fn client() -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: "192.0.2.10:40000".parse().unwrap(),
        server: "198.51.100.1:3478".parse().unwrap(),
    }
}

fn peer() -> SocketAddr {
    "127.0.0.1:9000".parse().unwrap()
}

fn server(now: Instant) -> Server {
    let relay = RelayAddress {
        bind: Ipv4Addr::LOCALHOST.into(),
        public: Ipv4Addr::new(203, 0, 113, 1).into(),
    };
    let mut config = ServerConfig::new(REALM, relay, 50000..=50999);
    config.users = vec![(USER.to_owned(), UserSecret::Password(PASSWORD.to_owned()))];
    config.peers = PeerPolicy::new(
        vec![
            "127.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ],
        Vec::new(),
    );
    Server::new(config, now, 1_700_000_000, Rng::from_seed(1), [7; 32])
}

fn key() -> [u8; 16] {
    long_term_key(USER, REALM, PASSWORD)
}

/// A request from `client()` authenticated with the long-term key, as a browser sends it.
fn authenticated(
    method: Method,
    transaction: u8,
    nonce: &[u8],
    attributes: impl FnOnce(&mut MessageBuilder),
) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, method, TransactionId([transaction; 12]));
    attributes(&mut b);
    b.add(AttrType::USERNAME, USER.as_bytes())
        .add(AttrType::REALM, REALM.as_bytes())
        .add(AttrType::NONCE, nonce)
        .add_integrity(IntegrityAlgorithm::Sha1, &key())
        .add_fingerprint();
    b.finish()
}

fn allocate_request(nonce: &[u8]) -> Vec<u8> {
    authenticated(Method::ALLOCATE, 2, nonce, |b| {
        b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    })
}

/// Sends `bytes` from the client and returns the one response it gets.
fn exchange(server: &mut Server, now: Instant, bytes: &[u8]) -> Vec<u8> {
    assert!(server.handle_client_packet(now, client(), bytes).is_none());
    let mut io = RecordingIo::default();
    server.drive(now, &mut io);
    match io.take().into_iter().next() {
        Some(Event::Transmit(_, bytes)) => bytes,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn error_code(response: &[u8]) -> Option<u16> {
    let m = Message::parse(response).ok()?;
    m.attribute(AttrType::ERROR_CODE)
        .and_then(ErrorCode::decode_code)
}

/// The nonce from a 401 to an unauthenticated request.
fn challenge(server: &mut Server, now: Instant) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
    b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let response = exchange(server, now, &b.finish());
    assert_eq!(error_code(&response), Some(401));
    let m = Message::parse(&response).unwrap();
    m.attribute(AttrType::NONCE).unwrap().to_vec()
}

/// An allocation with a permission and a channel to `peer()`; returns its relay address.
fn allocation_with_channel(server: &mut Server, now: Instant) -> SocketAddr {
    let nonce = challenge(server, now);
    assert!(server
        .handle_client_packet(now, client(), &allocate_request(&nonce))
        .is_none());
    let mut io = RecordingIo::default();
    server.drive(now, &mut io);
    let [Event::Bind(relay, RelayBind::Bound), Event::Transmit(_, bytes)] = &io.take()[..] else {
        panic!("expected a relay bind and the Allocate response");
    };
    let (relay, bytes) = (*relay, bytes.clone());
    assert_eq!(Message::parse(&bytes).unwrap().class(), Class::Success);
    let bind = authenticated(Method::CHANNEL_BIND, 3, &nonce, |b| {
        b.add(AttrType::CHANNEL_NUMBER, &[0x40, 0x00, 0, 0])
            .add_xor_address(AttrType::XOR_PEER_ADDRESS, peer());
    });
    let response = exchange(server, now, &bind);
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
    relay
}

fn decode_verify_allocate(c: &mut Criterion) {
    let now = Instant::now();
    let mut s = server(now);
    let nonce = challenge(&mut s, now);
    let request = allocate_request(&nonce);
    let key = key();
    let mut group = c.benchmark_group("decode_verify_allocate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("sha1", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(&request)).unwrap();
            assert!(m.attribute(AttrType::REQUESTED_TRANSPORT).is_some());
            black_box(m.verify_integrity(black_box(&key)))
        })
    });
    group.finish();
}

fn binding_round_trip(c: &mut Criterion) {
    let now = Instant::now();
    let mut s = server(now);
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([9; 12]));
    b.add_fingerprint();
    let request = b.finish();
    let from = client();
    let mut group = c.benchmark_group("binding_round_trip");
    group.throughput(Throughput::Elements(1));
    group.bench_function("udp", |b| {
        b.iter(|| {
            black_box(s.handle_client_packet(now, from, black_box(&request)));
            black_box(s.poll_output())
        })
    });
    group.finish();
}

fn channel_data_forward(c: &mut Criterion) {
    let now = Instant::now();
    let mut s = server(now);
    let relay = allocation_with_channel(&mut s, now);
    let from = client();
    let peer = peer();
    let mut group = c.benchmark_group("channel_data_forward");
    group.throughput(Throughput::Elements(1));
    for size in PAYLOAD_SIZES {
        let payload = vec![0xA5u8; size];
        let mut frame = ChannelData::header(CHANNEL, size as u16).to_vec();
        frame.extend_from_slice(&payload);
        // Check once that both directions really forward, outside the timed loop.
        let to_peer = s.handle_client_packet(now, from, &frame).expect("relayed");
        assert_eq!((to_peer.relay.0, to_peer.peer.0), (relay, peer));
        let to_client = s.handle_peer_packet(now, RelayAddr(relay), PeerAddr(peer), &payload);
        assert_eq!(to_client.map(|t| t.bytes.len()), Some(size + 4));

        group.bench_with_input(
            BenchmarkId::new("client_to_peer", size),
            &frame,
            |b, frame| {
                b.iter(|| {
                    black_box(s.handle_client_packet(now, from, black_box(frame)))
                        .map(|t| t.payload.len())
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("peer_to_client", size),
            &payload,
            |b, payload| {
                b.iter(|| {
                    s.handle_peer_packet(now, RelayAddr(relay), PeerAddr(peer), black_box(payload))
                        .map(|t| black_box(t.bytes).len())
                })
            },
        );
    }
    group.finish();
}

fn short() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = short();
    targets = decode_verify_allocate, binding_round_trip, channel_data_forward
}
criterion_main!(benches);
