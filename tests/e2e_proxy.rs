//! End to end behind a load balancer: TCP and TLS connections from `[connections]
//! proxy-protocol-from` begin with a PROXY header (v1 or v2), and the client it names is
//! the client the server answers and counts. The claimed addresses (198.51.100.7,
//! 2001:db8::7) are documentation addresses that only appear inside headers: every byte of
//! these tests goes to the server on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use rendez::stun::{decode_xor_address, AttrType, Class, Message, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod common;
use common::tls::TestCert;
use common::*;

/// Loopback is the load balancer: every test client connects from 127.0.0.1.
const BEHIND_LOOPBACK: &str = "[connections]\nproxy-protocol-from = [\"127.0.0.0/8\"]\n";

const V1_TCP4: &[u8] = b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\r\n";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

fn claimed() -> SocketAddr {
    "198.51.100.7:4242".parse().unwrap()
}

// ---------------------------------------------------------------- the named client

#[tokio::test]
async fn v1_header_over_tcp_names_the_client_in_xor_mapped_address() {
    let server = start(BEHIND_LOOPBACK).await;
    let mut stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    // Header and Binding in one write: the server must not read past the header.
    stream
        .write_all(&[V1_TCP4, &binding(1)].concat())
        .await
        .unwrap();
    let mut conn = Conn::stream(stream);
    assert_eq!(mapped_address(&conn.recv().await), claimed());
    server.shutdown().await;
}

#[tokio::test]
async fn v2_headers_over_tcp_name_ipv4_and_ipv6_clients() {
    let server = start(BEHIND_LOOPBACK).await;
    let ipv6_client: SocketAddr = "[2001:db8::7]:4242".parse().unwrap();
    let to: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let to6: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
    for (header, client) in [
        (v2_proxy(claimed(), to), claimed()),
        (v2_proxy(ipv6_client, to6), ipv6_client),
    ] {
        let mut conn = connect_with_header(&server, &header).await;
        let response = conn.call(&binding(2)).await;
        assert_eq!(mapped_address(&response), client);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn v2_local_and_v1_unknown_keep_the_real_address() {
    let server = start(BEHIND_LOOPBACK).await;
    let local = [V2_SIGNATURE, &[0x20, 0x00, 0, 0]].concat();
    for header in [&local[..], b"PROXY UNKNOWN\r\n"] {
        let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        let real = stream.local_addr().unwrap();
        let mut conn = Conn::stream(stream);
        conn.send(header).await;
        assert_eq!(mapped_address(&conn.call(&binding(3)).await), real);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn v2_header_with_tlvs_before_the_tls_client_hello() {
    let certs = TestCert::new();
    let server = start(&format!("{}{BEHIND_LOOPBACK}", certs.config())).await;
    let mut tcp = TcpStream::connect(server.tls_addrs()[0]).await.unwrap();
    let mut header = v2_proxy(claimed(), "203.0.113.1:443".parse().unwrap());
    add_tlv(&mut header, 0x02, b"turn.example.com"); // AUTHORITY
    add_tlv(&mut header, 0x04, &[0; 7]); // NOOP
    tcp.write_all(&header).await.unwrap();
    let tls = certs.connect_over(tcp, Some(b"stun.turn")).await;
    let mut conn = Conn::stream(tls);
    assert_eq!(mapped_address(&conn.call(&binding(4)).await), claimed());
    server.shutdown().await;
}

#[tokio::test]
async fn v1_header_before_the_tls_client_hello() {
    let certs = TestCert::new();
    let server = start(&format!("{}{BEHIND_LOOPBACK}", certs.config())).await;
    let mut tcp = TcpStream::connect(server.tls_addrs()[0]).await.unwrap();
    tcp.write_all(V1_TCP4).await.unwrap();
    let mut conn = Conn::stream(certs.connect_over(tcp, None).await);
    assert_eq!(mapped_address(&conn.call(&binding(5)).await), claimed());
    server.shutdown().await;
}

/// The named client is the allocation's client: nonces are bound to it, the Allocate
/// answer maps it, and its permissions relay (to a peer on loopback).
#[tokio::test]
async fn an_allocation_through_a_proxy_belongs_to_the_named_client() {
    let server = start(BEHIND_LOOPBACK).await;
    let conn = connect_with_header(&server, V1_TCP4).await;
    let mut client = TurnClient::new(conn, "alice", "wonderland");
    let response = client.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(class_of(&response), Class::Success);
    assert_eq!(mapped_address(&response), claimed());
    let m = Message::parse(&response).unwrap();
    let relayed = decode_xor_address(
        m.attribute(AttrType::XOR_RELAYED_ADDRESS).unwrap(),
        &m.transaction_id(),
    )
    .unwrap();
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let response = client
        .request(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)])
        .await;
    assert_eq!(class_of(&response), Class::Success);
    client
        .conn
        .send(&send_indication(peer_addr, b"from behind"))
        .await;
    assert_eq!(recv_from(&peer).await, (b"from behind".to_vec(), relayed));
    server.shutdown().await;
}

// ---------------------------------------------------------------- trust

#[tokio::test]
async fn headers_from_untrusted_sources_are_not_honoured() {
    let server = start("[connections]\nproxy-protocol-from = [\"10.0.0.0/8\"]\n").await;
    let v2 = v2_proxy(claimed(), "203.0.113.1:3478".parse().unwrap());
    for header in [V1_TCP4, &v2[..]] {
        let mut stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        stream
            .write_all(&[header, &binding(6)].concat())
            .await
            .unwrap();
        assert_closed_within(&mut stream, Duration::from_secs(1)).await;
    }
    // A client without a header is served as it connected.
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let real = stream.local_addr().unwrap();
    let response = Conn::stream(stream).call(&binding(7)).await;
    assert_eq!(mapped_address(&response), real);
    server.shutdown().await;
}

#[tokio::test]
async fn a_trusted_source_without_a_header_is_closed() {
    let server = start(BEHIND_LOOPBACK).await;
    let mut stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    stream.write_all(&binding(8)).await.unwrap();
    assert_closed_within(&mut stream, Duration::from_secs(1)).await;
    server.shutdown().await;

    let certs = TestCert::new();
    let server = start(&format!("{}{BEHIND_LOOPBACK}", certs.config())).await;
    let tcp = TcpStream::connect(server.tls_addrs()[0]).await.unwrap();
    assert!(
        certs.handshake(tcp, None).await.is_err(),
        "a ClientHello is not a PROXY header"
    );
    server.shutdown().await;
}

// ---------------------------------------------------------------- hostile headers

#[tokio::test]
async fn bad_and_silent_headers_are_closed_and_others_are_served() {
    let server = start(&format!("{BEHIND_LOOPBACK}message-timeout = \"1s\"\n")).await;
    let addr = server.tcp_addrs()[0];
    let started = std::time::Instant::now();
    let mut closed_at_once = Vec::new();
    let oversized_v1 = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
    let mut bad_v2 = v2_proxy(claimed(), "203.0.113.1:3478".parse().unwrap());
    bad_v2[12] = 0x31; // version 3
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &oversized_v1,
        b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\n\0\0\0\0",
        b"PROXY TCP4 198.51.100.7 203.0.113.1 99999 3478\r\n",
        &bad_v2,
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        closed_at_once.push(stream);
    }
    for stream in &mut closed_at_once {
        assert_closed_within(stream, Duration::from_millis(500)).await;
    }
    // Silent, or stopping inside a header: closed by the message timeout.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut truncated_v1 = TcpStream::connect(addr).await.unwrap();
    truncated_v1.write_all(&V1_TCP4[..20]).await.unwrap();
    let mut truncated_v2 = TcpStream::connect(addr).await.unwrap();
    let v2 = v2_proxy(claimed(), "203.0.113.1:3478".parse().unwrap());
    truncated_v2.write_all(&v2[..20]).await.unwrap();
    for stream in [&mut silent, &mut truncated_v1, &mut truncated_v2] {
        assert_closed_within(stream, Duration::from_secs(3)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before the timeout"
    );
    let mut conn = connect_with_header(&server, V1_TCP4).await;
    assert_eq!(mapped_address(&conn.call(&binding(9)).await), claimed());
    server.shutdown().await;
}

// ---------------------------------------------------------------- limits

/// `max-per-ip` counts the clients the balancer names, not the balancer.
#[tokio::test]
async fn the_per_ip_cap_counts_named_clients() {
    let server = start(&format!("{BEHIND_LOOPBACK}max-per-ip = 1\n")).await;
    let to: SocketAddr = "203.0.113.1:3478".parse().unwrap();
    let other: SocketAddr = "198.51.100.8:4242".parse().unwrap();
    let mut first = connect_with_header(&server, &v2_proxy(claimed(), to)).await;
    let mut second = connect_with_header(&server, &v2_proxy(other, to)).await;
    assert_eq!(mapped_address(&first.call(&binding(10)).await), claimed());
    assert_eq!(mapped_address(&second.call(&binding(11)).await), other);
    let again: SocketAddr = "198.51.100.7:5555".parse().unwrap();
    let mut third = connect_with_header(&server, &v2_proxy(again, to)).await;
    assert!(
        third.closes_within(Duration::from_secs(1)).await,
        "a second connection of 198.51.100.7 is over its cap"
    );
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = connect_with_header(&server, &v2_proxy(again, to)).await;
    assert_eq!(mapped_address(&fourth.call(&binding(12)).await), again);
    server.shutdown().await;
}

// ================================================================ helpers

async fn connect_with_header(server: &rendez::Handle, header: &[u8]) -> Conn {
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let mut conn = Conn::stream(stream);
    conn.send(header).await;
    conn
}

/// A version 2 PROXY header for a TCP client at `from` that connected to `to`.
fn v2_proxy(from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let (family, mut block) = match (from, to) {
        (SocketAddr::V4(from), SocketAddr::V4(to)) => {
            (0x11, [from.ip().octets(), to.ip().octets()].concat())
        }
        (SocketAddr::V6(from), SocketAddr::V6(to)) => {
            (0x21, [from.ip().octets(), to.ip().octets()].concat())
        }
        _ => panic!("one family for both ends"),
    };
    block.extend_from_slice(&from.port().to_be_bytes());
    block.extend_from_slice(&to.port().to_be_bytes());
    let mut header = V2_SIGNATURE.to_vec();
    header.extend_from_slice(&[0x21, family]); // version 2, PROXY
    header.extend_from_slice(&(block.len() as u16).to_be_bytes());
    header.extend_from_slice(&block);
    header
}

/// Appends a TLV to a version 2 header and grows its length to match.
fn add_tlv(header: &mut Vec<u8>, kind: u8, value: &[u8]) {
    header.push(kind);
    header.extend_from_slice(&(value.len() as u16).to_be_bytes());
    header.extend_from_slice(value);
    let rest = (header.len() - 16) as u16;
    header[14..16].copy_from_slice(&rest.to_be_bytes());
}

fn mapped_address(response: &[u8]) -> SocketAddr {
    let m = Message::parse(response).expect("a STUN response");
    decode_xor_address(
        m.attribute(AttrType::XOR_MAPPED_ADDRESS)
            .expect("XOR-MAPPED-ADDRESS"),
        &m.transaction_id(),
    )
    .unwrap()
}

// ---------------------------------------------------------------- the signaling listener

/// The page and signaling behind the same balancer: the header is read before HTTP, and
/// the named client is the one counted (here by `max-per-ip`; `rooms-per-ip` uses the same
/// address).
#[tokio::test]
async fn the_signaling_listener_reads_headers_and_counts_named_clients() {
    let server = start_signaling(&format!("{BEHIND_LOOPBACK}max-per-ip = 1\n")).await;
    let addr = server.signal_addr().unwrap();
    let to: SocketAddr = "203.0.113.1:443".parse().unwrap();
    let other: SocketAddr = "198.51.100.8:4242".parse().unwrap();
    // 198.51.100.7 holds its one connection open, once answered on it.
    let mut held = TcpStream::connect(addr).await.unwrap();
    let keep_alive = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    held.write_all(&[&v2_proxy(claimed(), to), &keep_alive[..]].concat())
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok\n") {
        let mut chunk = [0; 512];
        let read = tokio::time::timeout(WAIT, held.read(&mut chunk)).await;
        let n = read.expect("an answer").unwrap();
        assert!(n > 0, "the held connection was closed");
        answer.extend_from_slice(&chunk[..n]);
    }
    let (status, body) = http_get_behind(addr, &v2_proxy(other, to)).await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _) = http_get_behind(addr, V1_TCP4).await;
    assert_eq!(
        status, 0,
        "a second connection of 198.51.100.7 is over its cap"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http_get_behind(addr, V1_TCP4).await.0, 200);
    // From the balancer without a header: closed, not served.
    assert_eq!(http_get_behind(addr, b"").await.0, 0);
    server.shutdown().await;
}

async fn start_signaling(extra: &str) -> rendez::Handle {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nrelay-ports = \"13000-13999\"\n\
         [auth]\nsecrets = [\"web-secret\"]\n[signal]\nlisten = \"127.0.0.1:0\"\n{extra}"
    );
    let config = rendez::Config::from_toml(&text).expect("test config parses");
    rendez::start(config).await.expect("server starts")
}

/// GET /healthz after `header`: the status (0 when the server closed the connection
/// without an answer) and the body.
async fn http_get_behind(addr: SocketAddr, header: &[u8]) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    // A closed connection may refuse the write; the answer (none) says the rest.
    let _ = stream.write_all(&[header, request].concat()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the server answers or closes");
    let response = String::from_utf8_lossy(&response);
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_owned())
}
