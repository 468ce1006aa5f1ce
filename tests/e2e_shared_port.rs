//! One port for everything: a single loopback address in `listen`, `tls-listen` and
//! `[signal] listen` serves TURN over TLS (with ALPN `stun.turn` and without), TURN over TCP
//! in the clear, the page over HTTPS, WebSocket signaling over TLS, and a redirect for plain
//! HTTP; garbage and silent clients are closed without harming the others; a reload's new
//! certificate reaches new connections on it; a load balancer's PROXY header comes first.
//! Without `[tls]`, the page and TURN over TCP share a port in the clear. Clients verify the server's certificate against the test's own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rendez::stun::{decode_xor_address, AttrType, Message};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

mod common;
use common::relay::{assert_relays, assert_relays_through, open_relay};
use common::tls::{peer_certificate, TestCert};
use common::*;

/// How long routing may wait on a silent client in these tests (`message-timeout`).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(1);

#[tokio::test]
async fn turn_over_tls_and_tcp_share_the_port_with_the_page() {
    let cert = TestCert::new();
    let (server, port) = start_shared(Some(&cert), "").await;
    assert_eq!(server.tcp_addrs(), [port]);
    assert_eq!(server.tls_addrs(), [port]);
    assert_eq!(server.signal_addr(), Some(port));

    // TURN over TLS as RFC 7443 asks, and as browsers do (no ALPN).
    let with_alpn = cert.connect(port, Some(b"stun.turn")).await;
    assert_eq!(
        with_alpn.get_ref().1.alpn_protocol(),
        Some(&b"stun.turn"[..])
    );
    assert_relays(Conn::stream(with_alpn)).await;
    let without_alpn = cert.connect(port, None).await;
    assert_eq!(without_alpn.get_ref().1.alpn_protocol(), None);
    assert_relays(Conn::stream(without_alpn)).await;
    // TURN over TCP in the clear.
    assert_relays(Conn::stream(TcpStream::connect(port).await.unwrap())).await;
    server.shutdown().await;
}

#[tokio::test]
async fn the_page_and_signaling_are_served_over_https_and_plain_http_is_redirected() {
    let cert = TestCert::new();
    let (server, port) = start_shared(Some(&cert), "").await;

    // As a browser: offering HTTP/2 and HTTP/1.1, it gets HTTP/1.1.
    let tls = handshake(&cert, port, &[b"h2", b"http/1.1"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let page = get(tls, "/", port).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("<html"), "{page}");

    // A client offering only a protocol this port does not speak still completes the
    // handshake (no ALPN), and its request is routed by its first bytes.
    let tls = handshake(&cert, port, &[b"imap"]).await.expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    let health = get(tls, "/healthz", port).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // Plain HTTP goes to the same host and path over HTTPS.
    let plain = TcpStream::connect(port).await.unwrap();
    let redirect = get(plain, "/?room=standup", port).await;
    assert!(redirect.starts_with("HTTP/1.1 308"), "{redirect}");
    let location = format!("location: https://127.0.0.1:{}/?room=standup", port.port());
    assert!(redirect.to_lowercase().contains(&location), "{redirect}");

    // WebSocket signaling over TLS: the welcome's iceServers name this port for `turns:`.
    let tls = handshake(&cert, port, &[b"http/1.1"]).await.unwrap();
    let url = format!("wss://127.0.0.1:{}/ws", port.port());
    let (mut socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, tls))
        .await
        .expect("WebSocket handshake in time")
        .expect("WebSocket handshake");
    let join = json!({"type": "join", "room": "standup", "name": "Alice"});
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            join.to_string().into(),
        ))
        .await
        .unwrap();
    let welcome = next_json(&mut socket).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let urls: Vec<&str> = welcome["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|server| server["urls"].as_array().unwrap())
        .filter_map(Value::as_str)
        .collect();
    let turns = format!("turns:127.0.0.1:{}?transport=tcp", port.port());
    assert!(urls.contains(&turns.as_str()), "{urls:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn without_tls_the_page_and_turn_over_tcp_share_a_port_in_the_clear() {
    let (server, port) = start_shared(None, "").await;
    assert_eq!(server.signal_addr(), Some(port));
    assert!(server.tls_addrs().is_empty());
    let page = get(TcpStream::connect(port).await.unwrap(), "/", port).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert_relays(Conn::stream(TcpStream::connect(port).await.unwrap())).await;
    // No certificate here: a TLS handshake is garbage.
    let mut tls = TcpStream::connect(port).await.unwrap();
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05])
        .await
        .unwrap();
    assert_closed_within(&mut tls, MESSAGE_TIMEOUT / 2).await;
    server.shutdown().await;
}

#[tokio::test]
async fn garbage_and_silent_clients_are_closed_and_an_open_session_keeps_relaying() {
    let cert = TestCert::new();
    let (server, port) = start_shared(Some(&cert), "").await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut client = TurnClient::new(
        Conn::stream(cert.connect(port, Some(b"stun.turn")).await),
        "alice",
        "wonderland",
    );
    let relayed = open_relay(&mut client, &peer).await;

    // A bad first byte closes the connection at once, well before the message timeout.
    let mut garbage = TcpStream::connect(port).await.unwrap();
    garbage.write_all(b"\xff\xfe garbage").await.unwrap();
    assert_closed_within(&mut garbage, MESSAGE_TIMEOUT / 2).await;
    // So does ChannelData as the first message (there can be no channel yet).
    let mut channel_data = TcpStream::connect(port).await.unwrap();
    channel_data
        .write_all(&[0x40, 0x00, 0x00, 0x00])
        .await
        .unwrap();
    assert_closed_within(&mut channel_data, MESSAGE_TIMEOUT / 2).await;

    // A client that sends nothing, in the clear or after its handshake, or stops in the
    // middle of its ClientHello, is closed at the message timeout, not before.
    let mut silent = TcpStream::connect(port).await.unwrap();
    let mut silent_after_handshake = cert.connect(port, None).await;
    let mut stalled_in_hello = TcpStream::connect(port).await.unwrap();
    stalled_in_hello
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let opened = Instant::now();
    assert_closed_within(&mut silent, MESSAGE_TIMEOUT * 3).await;
    assert!(opened.elapsed() >= MESSAGE_TIMEOUT - Duration::from_millis(200));
    assert_closed_within(&mut stalled_in_hello, MESSAGE_TIMEOUT * 3).await;
    assert_closed_within(&mut silent_after_handshake, MESSAGE_TIMEOUT * 3).await;

    // The session opened before goes on relaying both ways.
    assert_relays_through(&mut client, &peer, relayed, b"still here").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_certificate_is_presented_to_new_connections_on_the_shared_port() {
    let mut cert = TestCert::new();
    let (server, port) = start_shared(Some(&cert), "").await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut before = TurnClient::new(
        Conn::stream(cert.connect(port, None).await),
        "alice",
        "wonderland",
    );
    let relayed = open_relay(&mut before, &peer).await;

    cert.renew();
    let config = shared_config(Some(&cert), port, "");
    let reloaded = server.reload(config).await.expect("reload");
    assert!(
        reloaded.needs_restart.is_empty(),
        "{:?}",
        reloaded.needs_restart
    );
    for alpn in [&[&b"stun.turn"[..]][..], &[b"http/1.1"], &[]] {
        let tls = handshake(&cert, port, alpn)
            .await
            .expect("the new certificate");
        assert_eq!(peer_certificate(&tls), cert.cert_der);
    }
    assert_relays_through(&mut before, &peer, relayed, b"old certificate").await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_load_balancers_proxy_header_comes_before_routing() {
    let cert = TestCert::new();
    let behind_loopback = "[connections]\nproxy-protocol-from = [\"127.0.0.0/8\"]\n";
    let (server, port) = start_shared(Some(&cert), behind_loopback).await;
    let claimed: SocketAddr = "198.51.100.7:4242".parse().unwrap();
    let header = format!(
        "PROXY TCP4 198.51.100.7 203.0.113.1 4242 {}\r\n",
        port.port()
    );

    // In the clear: the header and a Binding request in one write.
    let mut tcp = TcpStream::connect(port).await.unwrap();
    tcp.write_all(&[header.as_bytes(), &binding(1)].concat())
        .await
        .unwrap();
    assert_eq!(mapped_address(&Conn::stream(tcp).recv().await), claimed);

    // Over TLS, with and without ALPN.
    for alpn in [&[&b"stun.turn"[..]][..], &[]] {
        let mut tcp = TcpStream::connect(port).await.unwrap();
        tcp.write_all(header.as_bytes()).await.unwrap();
        let tls = cert.handshake_offering(tcp, alpn).await.expect("handshake");
        let response = Conn::stream(tls).call(&binding(2)).await;
        assert_eq!(mapped_address(&response), claimed);
    }
    let mut tcp = TcpStream::connect(port).await.unwrap();
    tcp.write_all(header.as_bytes()).await.unwrap();
    let tls = cert.handshake_offering(tcp, &[b"http/1.1"]).await.unwrap();
    assert!(get(tls, "/healthz", port).await.starts_with("HTTP/1.1 200"));

    // Without a header, a connection from the balancer is closed.
    let mut headerless = TcpStream::connect(port).await.unwrap();
    headerless.write_all(&binding(3)).await.unwrap();
    assert_closed_within(&mut headerless, MESSAGE_TIMEOUT * 3).await;
    server.shutdown().await;
}

#[test]
fn an_address_twice_in_one_list_is_still_an_error() {
    let error = rendez::Config::from_toml("listen = [\"127.0.0.1:3478\", \"127.0.0.1:3478\"]")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("listen") && error.contains("twice"),
        "{error}"
    );
}

// ---------------------------------------------------------------- helpers

/// A free TCP and UDP port on loopback: the server binds both for `listen`, and the three
/// lists must name the same port to share it, so port 0 will not do.
fn free_port() -> SocketAddr {
    for _ in 0..32 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        if std::net::UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no port free for both TCP and UDP on loopback");
}

/// `port` in `listen`, `[signal] listen` and, with `cert`, `tls-listen`.
fn shared_config(cert: Option<&TestCert>, port: SocketAddr, extra: &str) -> rendez::Config {
    let tls = cert.map_or(String::new(), |cert| {
        format!(
            "tls-listen = [\"{port}\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.cert_path().display(),
            cert.key_path().display(),
        )
    });
    let text = format!(
        "realm = \"rendez.test\"\nrelay-ports = \"11000-11999\"\nrelay-ip = \"127.0.0.1\"\nworkers = 1\n\
         listen = [\"{port}\"]\n{tls}\
         [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
         [auth]\nsecrets = [\"s\"]\n[[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
         [signal]\nlisten = \"{port}\"\n\
         {extra}\n",
    );
    let mut config = rendez::Config::from_toml(&text).expect("test config parses");
    config.connections.message_timeout = MESSAGE_TIMEOUT;
    config
}

/// A server with one shared address on loopback (another port if a parallel test took it).
async fn start_shared(cert: Option<&TestCert>, extra: &str) -> (rendez::Handle, SocketAddr) {
    let mut last_error = None;
    for _ in 0..8 {
        let port = free_port();
        match rendez::start(shared_config(cert, port, extra)).await {
            Ok(server) => return (server, port),
            Err(error) => last_error = Some(error),
        }
    }
    panic!("server does not start: {:#}", last_error.unwrap());
}

async fn handshake(
    cert: &TestCert,
    port: SocketAddr,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(port).await?;
    cert.handshake_offering(tcp, alpn).await
}

/// A GET over `stream` with `Host: 127.0.0.1:PORT`; the whole response.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    path: &str,
    port: SocketAddr,
) -> String {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
        port.port()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

async fn next_json<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message in time")
            .expect("the socket open")
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

fn mapped_address(response: &[u8]) -> SocketAddr {
    let message = Message::parse(response).unwrap();
    let value = message.attribute(AttrType::XOR_MAPPED_ADDRESS).unwrap();
    decode_xor_address(value, &message.transaction_id()).unwrap()
}
