//! The relay path allocates nothing per packet: a counting allocator watches the TURN core's
//! hot path (ChannelData and Send indications client → peer, in-place framing peer → client)
//! and the batched socket I/O the UDP workers use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Instant;

use rendez::net::batch::{report_destinations, send_all, send_all_from, OutgoingFrom, RecvBatch};
use rendez::random::Rng;
use rendez::stun::{AttrType, ChannelData, Class, Message, MessageBuilder, Method, TransactionId};
use rendez::turn::{
    FiveTuple, PeerAddr, PeerPolicy, RelayAddr, RelayAddress, Server, ServerConfig, Transport,
    UserSecret, PEER_HEADROOM, PEER_TAILROOM,
};

mod harness;
use harness::{Event, RecordingIo};

struct CountingAllocator;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts on threads that asked to.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Heap allocations made by `work` on this thread.
fn allocations_during(work: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    work();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

const CLIENT: &str = "192.0.2.1:5000";
const PEER: &str = "198.51.100.7:4000";
const OTHER_PEER: &str = "198.51.100.8:4000";
const PACKETS: usize = 10_000;

#[test]
fn core_relay_path_allocates_nothing_per_packet() {
    let (mut server, tuple, relay) = server_with_channel();
    let now = Instant::now();
    let peer: SocketAddr = PEER.parse().unwrap();
    let other: SocketAddr = OTHER_PEER.parse().unwrap();
    let mut channel_data = ChannelData::header(0x4000, 1200).to_vec();
    channel_data.extend(std::iter::repeat_n(7u8, 1200));
    let mut send = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([1; 12]));
    send.add_xor_address(AttrType::XOR_PEER_ADDRESS, other)
        .add(AttrType::DATA, &[9; 160]);
    let send = send.finish();
    let mut buffer = vec![0u8; PEER_HEADROOM + 1200 + PEER_TAILROOM];

    let count = allocations_during(|| {
        for _ in 0..PACKETS {
            let out = server.handle_client_packet(now, tuple, &channel_data);
            assert_eq!(out.map(|p| p.payload.len()), Some(1200));
            let out = server.handle_client_packet(now, tuple, &send);
            assert_eq!(out.map(|p| p.peer), Some(PeerAddr(other)));
            let framed = server.handle_peer_packet_in_place(
                now,
                RelayAddr(relay),
                PeerAddr(peer),
                &mut buffer,
                PEER_HEADROOM,
                1200,
            );
            assert_eq!(framed.map(|(_, r)| r.len()), Some(1204), "ChannelData");
            let framed = server.handle_peer_packet_in_place(
                now,
                RelayAddr(relay),
                PeerAddr(other),
                &mut buffer,
                PEER_HEADROOM,
                160,
            );
            assert!(framed.is_some(), "Data indication");
        }
    });
    assert_eq!(
        count,
        0,
        "{count} allocations for {} relayed packets",
        4 * PACKETS
    );
}

#[test]
fn batched_socket_io_allocates_nothing_per_datagram() {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = receiver.local_addr().unwrap();
    let payload = [5u8; 160];
    let datagrams: Vec<(SocketAddr, &[u8])> = vec![(to, &payload[..]); 32];
    let mut batch = RecvBatch::new(PEER_HEADROOM, PEER_TAILROOM);

    let mut received = 0;
    let count = allocations_during(|| {
        for _ in 0..100 {
            send_all(&sender, &datagrams);
            let deadline = Instant::now() + std::time::Duration::from_secs(1);
            let mut this_round = 0;
            while this_round < 32 && Instant::now() < deadline {
                if let Ok(n) = batch.recv(&receiver) {
                    this_round += n;
                }
            }
            received += this_round;
        }
    });
    assert!(
        received >= 3000,
        "only {received} of 3200 datagrams arrived"
    );
    assert_eq!(count, 0, "{count} allocations for {received} datagrams");
}

/// A wildcard listener's I/O: every datagram received with its destination, every answer
/// sent from it, through control data that lives in the batch and on the stack.
#[test]
#[cfg(target_os = "linux")] // where wildcard sockets report destinations
fn wildcard_socket_io_allocates_nothing_per_datagram() {
    let listener = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    report_destinations(&listener).unwrap();
    listener.set_nonblocking(true).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_nonblocking(true).unwrap();
    let to: SocketAddr = ([127, 0, 0, 2], listener.local_addr().unwrap().port()).into();
    let payload = [5u8; 160];
    let asks: Vec<(SocketAddr, &[u8])> = vec![(to, &payload[..]); 32];
    let mut batch = RecvBatch::new(PEER_HEADROOM, PEER_TAILROOM);
    let mut echo = RecvBatch::new(0, 0);

    let (mut answered, mut echoed) = (0, 0);
    let count = allocations_during(|| {
        for _ in 0..100 {
            send_all(&client, &asks);
            let deadline = Instant::now() + std::time::Duration::from_secs(1);
            let mut this_round = 0;
            while this_round < 32 && Instant::now() < deadline {
                let Ok(n) = batch.recv(&listener) else {
                    continue;
                };
                let unused = OutgoingFrom {
                    from: None,
                    to,
                    bytes: &[],
                };
                let mut answers = [unused; 32];
                for (i, answer) in answers.iter_mut().enumerate().take(n) {
                    let (source, bytes) = batch.received(i).unwrap();
                    *answer = OutgoingFrom {
                        from: batch.destination(i),
                        to: source,
                        bytes,
                    };
                }
                answered += send_all_from(&listener, &answers[..n]);
                this_round += n;
                while let Ok(n) = echo.recv(&client) {
                    echoed += (0..n)
                        .filter(|&i| echo.received(i).unwrap().0 == to)
                        .count();
                }
            }
        }
    });
    assert!(answered >= 3000, "only {answered} of 3200 were answered");
    assert!(echoed >= 2900, "only {echoed} answers came from {to}");
    assert_eq!(count, 0, "{count} allocations for {answered} datagrams");
}

/// A server with one allocation, a channel 0x4000 to PEER and a permission for OTHER_PEER.
fn server_with_channel() -> (Server, FiveTuple, SocketAddr) {
    let relay_address = RelayAddress {
        bind: "192.0.2.10".parse().unwrap(),
        public: "192.0.2.10".parse().unwrap(),
    };
    let mut config = ServerConfig::new("r", relay_address, 50000..=50010);
    config.users = vec![("u".into(), UserSecret::Password("p".into()))];
    config.peers = PeerPolicy::new(vec!["198.51.100.0/24".parse().unwrap()], vec![]);
    let now = Instant::now();
    let mut server = Server::new(config, now, 1_800_000_000, Rng::from_seed(1), [0; 32]);
    let tuple = FiveTuple {
        transport: Transport::Udp,
        client: CLIENT.parse().unwrap(),
        server: "192.0.2.10:3478".parse().unwrap(),
    };
    let key = rendez::stun::long_term_key("u", "r", "p");
    let transport = (AttrType::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
    let challenge = request(
        &mut server,
        tuple,
        Method::ALLOCATE,
        std::slice::from_ref(&transport),
        None,
    );
    let nonce = Message::parse(&challenge)
        .unwrap()
        .attribute(AttrType::NONCE)
        .unwrap()
        .to_vec();
    let auth = Some((&nonce[..], &key));
    let allocated = request(&mut server, tuple, Method::ALLOCATE, &[transport], auth);
    let allocated = Message::parse(&allocated).unwrap();
    let relayed = allocated.attribute(AttrType::XOR_RELAYED_ADDRESS).unwrap();
    // Bound and advertised addresses are the same in this configuration.
    let relay = rendez::stun::decode_xor_address(relayed, &allocated.transaction_id()).unwrap();
    let channel = (AttrType::CHANNEL_NUMBER, vec![0x40, 0, 0, 0]);
    let peer = (AttrType::XOR_PEER_ADDRESS, xor(PEER, 3));
    request_with_tid(
        &mut server,
        tuple,
        Method::CHANNEL_BIND,
        &[channel, peer],
        auth,
        3,
    );
    let other = (AttrType::XOR_PEER_ADDRESS, xor(OTHER_PEER, 4));
    request_with_tid(
        &mut server,
        tuple,
        Method::CREATE_PERMISSION,
        &[other],
        auth,
        4,
    );
    (server, tuple, relay)
}

fn xor(addr: &str, tid: u8) -> Vec<u8> {
    let (value, len) =
        rendez::stun::xor_address_value(addr.parse().unwrap(), &TransactionId([tid; 12]));
    value[..len].to_vec()
}

fn request(
    server: &mut Server,
    tuple: FiveTuple,
    method: Method,
    attrs: &[(AttrType, Vec<u8>)],
    auth: Option<(&[u8], &[u8; 16])>,
) -> Vec<u8> {
    request_with_tid(server, tuple, method, attrs, auth, 2)
}

fn request_with_tid(
    server: &mut Server,
    tuple: FiveTuple,
    method: Method,
    attrs: &[(AttrType, Vec<u8>)],
    auth: Option<(&[u8], &[u8; 16])>,
    tid: u8,
) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, method, TransactionId([tid; 12]));
    for (kind, value) in attrs {
        b.add(*kind, value);
    }
    if let Some((nonce, key)) = auth {
        b.add(AttrType::USERNAME, b"u")
            .add(AttrType::REALM, b"r")
            .add(AttrType::NONCE, nonce)
            .add_integrity(rendez::stun::IntegrityAlgorithm::Sha1, key);
    }
    server.handle_client_packet(Instant::now(), tuple, &b.finish());
    let mut io = RecordingIo::default();
    server.drive(Instant::now(), &mut io);
    let mut response = Vec::new();
    for event in io.take() {
        if let Event::Transmit(_, bytes) = event {
            response = bytes;
        }
    }
    let m = Message::parse(&response).expect("a response");
    assert!(
        m.class() == Class::Success || auth.is_none(),
        "{method:?} failed: {:?}",
        m.attribute(AttrType::ERROR_CODE)
    );
    response
}
