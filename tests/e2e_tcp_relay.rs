//! RFC 6062 TCP relays end to end: a TURN client over TCP or TLS allocates a TCP relay,
//! reaches a TCP echo peer on loopback through it (Connect, or the peer connecting to the
//! relayed address), binds a second connection to the peer connection, and bytes go both
//! ways; everything closes when the allocation ends.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::tls::TestCert;
use common::{error_of, start, xor_peer, Attr, Conn, TurnClient, WAIT};
use rendez::stun::{decode_xor_address, AttrType, Class, Message, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn connect_then_connection_bind_relays_bytes_both_ways_over_tcp() {
    let server = start("[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let mut echo = EchoPeer::start().await;
    let mut control = tcp_client(&server).await;
    let relayed = allocate_tcp(&mut control).await;
    assert_eq!(relayed.ip(), server.tcp_addrs()[0].ip());

    let connect = control
        .request(Method::CONNECT, &[xor_peer(echo.addr)])
        .await;
    let id = connection_id(&connect);
    // The peer sees the connection come from the relayed address.
    assert_eq!(echo.next_client().await, relayed);

    let mut data = tcp_client(&server).await;
    let mut relay = bind(&mut data, id).await;
    round_trip(&mut relay, b"hello through a TCP relay").await;
    // Larger than any one buffer on the way, in both directions at once.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    round_trip(&mut relay, &big).await;

    // Counted: one relay bound and live, its bytes each way (the shard publishes what its
    // relays pumped when it wakes, at least once a second).
    let relayed_bytes = (25 + big.len()) as f64;
    let expected = [
        ("rendez_tcp_relays{shard=\"stream\",state=\"bound\"}", 1.0),
        (
            "rendez_tcp_peer_connections_total{shard=\"stream\",event=\"connected\"}",
            1.0,
        ),
        (
            "rendez_tcp_peer_connections_total{shard=\"stream\",event=\"bound\"}",
            1.0,
        ),
        (
            "rendez_tcp_relayed_bytes_total{shard=\"stream\",direction=\"to_peer\"}",
            relayed_bytes,
        ),
        (
            "rendez_tcp_relayed_bytes_total{shard=\"stream\",direction=\"to_client\"}",
            relayed_bytes,
        ),
        (
            "rendez_requests_total{shard=\"stream\",method=\"connection_bind\",result=\"success\"}",
            1.0,
        ),
    ];
    let metrics = server.metrics_addr().unwrap();
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(metrics).await;
        if expected
            .iter()
            .all(|(name, value)| sample(&text, name) == Some(*value))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for (name, value) in expected {
        assert_eq!(sample(&text, name), Some(value), "{name}");
    }
    server.shutdown().await;
}

/// `bandwidth-per-allocation` holds for TCP relays too: a relay over its rate is paced (a
/// stream cannot drop bytes), so 192 KB at 64 kB/s, of which the first second's worth
/// passes at once, take at least two seconds each way (a lower bound: a slow machine only
/// makes it longer).
#[tokio::test]
async fn a_tcp_relay_is_paced_at_the_allocations_bandwidth() {
    const RATE: usize = 64_000;
    let server = start(&format!("[limits]\nbandwidth-per-allocation = {RATE}\n")).await;
    let mut echo = EchoPeer::start().await;
    let mut control = tcp_client(&server).await;
    allocate_tcp(&mut control).await;
    let connect = control
        .request(Method::CONNECT, &[xor_peer(echo.addr)])
        .await;
    echo.next_client().await;
    let mut data = tcp_client(&server).await;
    let mut relay = bind(&mut data, connection_id(&connect)).await;

    let payload: Vec<u8> = (0..3 * RATE as u32).map(|i| (i % 251) as u8).collect();
    let began = std::time::Instant::now();
    let (mut reader, mut writer) = tokio::io::split(&mut relay);
    let write = async { writer.write_all(&payload).await.unwrap() };
    let read = async {
        let mut echoed = vec![0u8; payload.len()];
        reader.read_exact(&mut echoed).await.unwrap();
        echoed
    };
    let ((), echoed) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .expect("the paced echo came back");
    let took = began.elapsed();
    assert!(echoed == payload, "the echo differs");
    assert!(
        took >= Duration::from_millis(1900),
        "{} bytes at {RATE} B/s took only {took:?}",
        payload.len()
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_connecting_to_the_relayed_address_is_announced_and_bound() {
    let server = start("").await;
    let mut control = tcp_client(&server).await;
    let relayed = allocate_tcp(&mut control).await;
    let peer_side = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_ip = peer_side.local_addr().unwrap().ip();
    drop(peer_side);

    // Without a permission the peer's connection is closed at once, and nothing is said.
    let mut unwelcome = TcpStream::connect(relayed).await.unwrap();
    common::assert_closed_within(&mut unwelcome, WAIT).await;

    let permission = control
        .request(
            Method::CREATE_PERMISSION,
            &[xor_peer(SocketAddr::new(peer_ip, 0))],
        )
        .await;
    assert_eq!(Message::parse(&permission).unwrap().class(), Class::Success);
    let mut peer = TcpStream::connect(relayed).await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    // The peer may speak first: its bytes wait until the client binds.
    peer.write_all(b"early words").await.unwrap();

    let attempt = control.conn.recv().await;
    let m = Message::parse(&attempt).unwrap();
    assert_eq!(
        (m.class(), m.method()),
        (Class::Indication, Method::CONNECTION_ATTEMPT)
    );
    let announced = decode_xor_address(
        m.attribute(AttrType::XOR_PEER_ADDRESS).unwrap(),
        &m.transaction_id(),
    );
    assert_eq!(announced, Some(peer_addr));
    let id = connection_id(&attempt);

    let mut data = tcp_client(&server).await;
    let (mut relay, mut early) = bind_keeping_early_bytes(&mut data, id).await;
    early.extend(read_exactly(&mut relay, 11 - early.len()).await);
    assert_eq!(early, b"early words");
    relay.write_all(b"and an answer").await.unwrap();
    assert_eq!(read_exactly(&mut peer, 13).await, b"and an answer");
    server.shutdown().await;
}

#[tokio::test]
async fn tls_control_and_data_connections_relay_too() {
    let certs = TestCert::new();
    let server = start(&certs.config()).await;
    let echo = EchoPeer::start().await;
    let tls = server.tls_addrs()[0];
    let connect = |alpn| certs.connect(tls, alpn);
    let mut control = TurnClient::new(
        Conn::stream(connect(Some(b"stun.turn")).await),
        "alice",
        "wonderland",
    );
    allocate_tcp(&mut control).await;
    let response = control
        .request(Method::CONNECT, &[xor_peer(echo.addr)])
        .await;
    let id = connection_id(&response);
    let mut data = TurnClient::new(Conn::stream(connect(None).await), "alice", "wonderland");
    let mut relay = bind(&mut data, id).await;
    round_trip(&mut relay, b"over TLS, then raw inside it").await;
    server.shutdown().await;
}

#[tokio::test]
async fn ending_the_allocation_closes_its_relays() {
    let server = start("").await;
    let echo = EchoPeer::start().await;
    let mut control = tcp_client(&server).await;
    let relayed = allocate_tcp(&mut control).await;
    let response = control
        .request(Method::CONNECT, &[xor_peer(echo.addr)])
        .await;
    let id = connection_id(&response);
    let mut data = tcp_client(&server).await;
    let mut relay = bind(&mut data, id).await;
    round_trip(&mut relay, b"still open").await;

    assert_eq!(control.refresh(0).await, None);
    assert!(
        ends_within(&mut relay, WAIT).await,
        "the data connection closes with the allocation"
    );
    // And the relayed address no longer takes connections.
    let refused = tokio::time::timeout(WAIT, TcpStream::connect(relayed)).await;
    assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn a_refused_peer_is_447_and_a_second_connect_to_one_peer_is_446() {
    let server = start("").await;
    let mut control = tcp_client(&server).await;
    allocate_tcp(&mut control).await;
    // A loopback port nobody listens on: the connection is refused.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let refused = control.request(Method::CONNECT, &[xor_peer(closed)]).await;
    assert_eq!(error_of(&refused), Some(447));

    let echo = EchoPeer::start().await;
    let first = control
        .request(Method::CONNECT, &[xor_peer(echo.addr)])
        .await;
    connection_id(&first);
    let second = control
        .request(Method::CONNECT, &[xor_peer(echo.addr)])
        .await;
    assert_eq!(error_of(&second), Some(446));
    server.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_does_not_read_stops_the_client_being_read() {
    let server = start("").await;
    // A peer that accepts and then never reads.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move { listener.accept().await.map(|(stream, _)| stream) });
    let mut control = tcp_client(&server).await;
    allocate_tcp(&mut control).await;
    let response = control
        .request(Method::CONNECT, &[xor_peer(peer_addr)])
        .await;
    let id = connection_id(&response);
    let mut data = tcp_client(&server).await;
    let mut relay = bind(&mut data, id).await;
    let _peer = held.await.unwrap().unwrap();
    // Far more than the socket buffers on the way hold: if the relay read on regardless,
    // buffering in memory, this write would finish.
    let flood = vec![7u8; 64 << 20];
    let wrote = tokio::time::timeout(Duration::from_secs(2), relay.write_all(&flood)).await;
    assert!(
        wrote.is_err(),
        "64 MiB went into a relay whose peer reads nothing"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------- helpers

/// The `/metrics` text.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut text))
        .await
        .expect("metrics in time")
        .unwrap();
    text
}

/// The value of the sample named exactly `name` (with its labels).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A TCP peer that echoes what each connection sends and reports who connected.
struct EchoPeer {
    addr: SocketAddr,
    clients: tokio::sync::mpsc::Receiver<SocketAddr>,
}

impl EchoPeer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, clients) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok((mut stream, from)) = listener.accept().await {
                let _ = report.try_send(from);
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        Self { addr, clients }
    }

    async fn next_client(&mut self) -> SocketAddr {
        tokio::time::timeout(WAIT, self.clients.recv())
            .await
            .expect("the peer was connected to")
            .unwrap()
    }
}

async fn tcp_client(server: &rendez::Handle) -> TurnClient {
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    TurnClient::new(Conn::stream(stream), "alice", "wonderland")
}

/// Allocates a TCP relay (REQUESTED-TRANSPORT 6) and returns its relayed address.
async fn allocate_tcp(client: &mut TurnClient) -> SocketAddr {
    let tcp = Attr::Raw(AttrType::REQUESTED_TRANSPORT, vec![6, 0, 0, 0]);
    let response = client.request(Method::ALLOCATE, &[tcp]).await;
    assert_eq!(error_of(&response), None, "TCP allocation refused");
    let m = Message::parse(&response).unwrap();
    decode_xor_address(
        m.attribute(AttrType::XOR_RELAYED_ADDRESS).unwrap(),
        &m.transaction_id(),
    )
    .unwrap()
}

/// The CONNECTION-ID of a Connect success response or a ConnectionAttempt.
fn connection_id(message: &[u8]) -> u32 {
    assert_eq!(error_of(message), None, "expected success");
    let m = Message::parse(message).unwrap();
    let value = m.attribute(AttrType::CONNECTION_ID).expect("CONNECTION-ID");
    u32::from_be_bytes(value.try_into().unwrap())
}

/// Binds `data` to peer connection `id`; returns the raw stream it has become.
async fn bind(data: &mut TurnClient, id: u32) -> Box<dyn common::Duplex> {
    let (stream, early) = bind_keeping_early_bytes(data, id).await;
    assert!(
        early.is_empty(),
        "nothing but the response before the relay"
    );
    stream
}

/// Binds `data` to peer connection `id`; returns the raw stream it has become and the
/// peer's bytes that came in the same read as the response.
async fn bind_keeping_early_bytes(
    data: &mut TurnClient,
    id: u32,
) -> (Box<dyn common::Duplex>, Vec<u8>) {
    let attr = Attr::Raw(AttrType::CONNECTION_ID, id.to_be_bytes().to_vec());
    let response = data.request(Method::CONNECTION_BIND, &[attr]).await;
    assert_eq!(
        Message::parse(&response).unwrap().class(),
        Class::Success,
        "ConnectionBind: {:?}",
        error_of(&response)
    );
    let conn = std::mem::replace(&mut data.conn, Conn::stream(tokio::io::duplex(1).0));
    let Conn::Stream { stream, buffer } = conn else {
        panic!("a data connection is a stream");
    };
    (stream, buffer)
}

/// Writes `bytes` and reads the echo back, concurrently.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(relay: &mut S, bytes: &[u8]) {
    let (mut reader, mut writer) = tokio::io::split(relay);
    let write = async {
        writer.write_all(bytes).await.unwrap();
    };
    let read = read_exactly(&mut reader, bytes.len());
    let ((), echoed) = tokio::time::timeout(WAIT, async { tokio::join!(write, read) })
        .await
        .expect("the echo came back in time");
    assert!(echoed == bytes, "the echo differs");
}

async fn read_exactly<R: AsyncRead + Unpin + ?Sized>(reader: &mut R, len: usize) -> Vec<u8> {
    let mut buffer = vec![0u8; len];
    tokio::time::timeout(WAIT, reader.read_exact(&mut buffer))
        .await
        .expect("the bytes came in time")
        .unwrap();
    buffer
}

/// Whether `stream` ends (end of stream or error) within `limit`.
async fn ends_within<S: AsyncRead + Unpin + ?Sized>(stream: &mut S, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let end = async { while let Ok(1..) = stream.read(&mut buffer).await {} };
    tokio::time::timeout(limit, end).await.is_ok()
}
