//! End to end over TCP, TLS and IPv6: the real server on loopback, a TURN client over a real
//! socket, a UDP echo peer. Covers stream framing (split, coalesced, padded ChannelData),
//! hostile connections (garbage, slowloris, silence, too many), and dual-stack allocations.

use std::sync::Arc;
use std::time::Duration;

use rendez::stun::{AttrType, ChannelData, Class, Message, Method, TransactionId};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

mod common;
use common::relay::{assert_channel_relays, assert_relays_through, open_relay};
use common::tls::TestCert;
use common::*;

// ---------------------------------------------------------------- TCP and TLS relaying

#[tokio::test]
async fn tcp_relays_channel_data_and_indications_both_ways() {
    let server = start("").await;
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    relay_round_trips(Conn::stream(stream)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn tls_relays_channel_data_and_indications_both_ways() {
    let certs = TestCert::new();
    let server = start(&certs.config()).await;
    let stream = certs
        .connect(server.tls_addrs()[0], Some(b"stun.turn"))
        .await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"stun.turn"[..]));
    relay_round_trips(Conn::stream(stream)).await;
    server.shutdown().await;
}

#[tokio::test]
async fn tls_without_alpn_is_served_like_a_browser() {
    let certs = TestCert::new();
    let server = start(&certs.config()).await;
    let stream = certs.connect(server.tls_addrs()[0], None).await;
    let mut conn = Conn::stream(stream);
    let response = conn.call(&binding(1)).await;
    assert_eq!(Message::parse(&response).unwrap().class(), Class::Success);
    server.shutdown().await;
}

#[tokio::test]
async fn missing_certificate_is_a_startup_error_naming_the_file() {
    let config =
        test_config("[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n");
    let error = rendez::start(config)
        .await
        .err()
        .expect("startup must fail");
    let text = format!("{error:#}");
    assert!(
        text.contains("/nonexistent/cert.pem") && text.contains("tls.cert"),
        "{text}"
    );
}

/// Allocate, permission, Send → peer, peer → Data indication, ChannelBind, ChannelData both
/// ways with stream padding.
async fn relay_round_trips(conn: Conn) {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut client = TurnClient::new(conn, "alice", "wonderland");
    let relayed = open_relay(&mut client, &peer).await;
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    assert_relays_through(&mut client, &peer, relayed, b"via indication").await;
    assert_channel_relays(&mut client, &peer, relayed, 0x4000).await;
}

// ---------------------------------------------------------------- the shard under load

/// 120 TCP and 40 TLS clients at once, each with its own allocation, channel and peer,
/// relaying in both directions: the shard keeps every connection's traffic apart and whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_shard_serves_many_concurrent_connections() {
    const TCP_CLIENTS: usize = 120;
    const TLS_CLIENTS: usize = 40;
    const PACKETS: usize = 20;
    let certs = Arc::new(TestCert::new());
    let limits = "[connections]\nmax-per-ip = 1000\n[limits]\nallocations-per-user = 1000\nallocations-per-ip = 1000\n";
    let server = start(&format!("{}{limits}", certs.config())).await;
    let (tcp, tls) = (server.tcp_addrs()[0], server.tls_addrs()[0]);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..TCP_CLIENTS + TLS_CLIENTS {
        let certs = certs.clone();
        clients.spawn(async move {
            let conn = if i < TCP_CLIENTS {
                Conn::stream(TcpStream::connect(tcp).await.unwrap())
            } else {
                Conn::stream(certs.connect(tls, Some(b"stun.turn")).await)
            };
            channel_burst(conn, i, PACKETS).await;
        });
    }
    let all = async {
        while let Some(done) = clients.join_next().await {
            done.expect("a client failed");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), all)
        .await
        .expect("every client finished within a minute");
    assert_eq!(
        server.stats().allocations_created,
        (TCP_CLIENTS + TLS_CLIENTS) as u64
    );
    server.shutdown().await;
}

/// Allocates, binds a channel to a fresh peer, and relays `packets` ChannelData
/// messages each way, each tagged with `client` so a mix-up between connections shows.
async fn channel_burst(conn: Conn, client: usize, packets: usize) {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut turn = TurnClient::new(conn, "alice", "wonderland");
    let relayed = turn.allocate(&[]).await[0];
    let response = turn
        .request(
            Method::CHANNEL_BIND,
            &[channel(0x4000), xor_peer(peer_addr)],
        )
        .await;
    assert_eq!(class_of(&response), Class::Success);
    for n in 0..packets {
        let payload = format!("c{client:04}-p{n:04}");
        let mut frame = ChannelData::header(0x4000, payload.len() as u16).to_vec();
        frame.extend_from_slice(payload.as_bytes());
        frame.resize(frame.len().next_multiple_of(4), 0);
        turn.conn.send(&frame).await;
        assert_eq!(recv_from(&peer).await, (payload.into_bytes(), relayed));
        let answer = format!("back-c{client:04}-p{n:04}");
        peer.send_to(answer.as_bytes(), relayed).await.unwrap();
        let data = turn.conn.recv().await;
        let framed = ChannelData::parse(&data).expect("ChannelData from the relay");
        assert_eq!(framed.payload, answer.as_bytes());
    }
}

/// Shutdown returns only once every connection is closed: the client sees the end at once.
#[tokio::test]
async fn shutdown_closes_every_connection_before_it_returns() {
    let server = start("").await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        let mut client = TurnClient::new(Conn::stream(stream), "alice", "wonderland");
        client.allocate(&[]).await;
        streams.push(client);
    }
    assert!(server.running_tasks() > 5);
    server.shutdown().await;
    for mut client in streams {
        assert!(
            client.conn.closes_within(Duration::from_millis(500)).await,
            "a connection outlived shutdown"
        );
    }
}

// ---------------------------------------------------------------- framing

#[tokio::test]
async fn coalesced_and_split_messages_are_framed() {
    let server = start("").await;
    let mut stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let mut two = binding(1);
    two.extend_from_slice(&binding(2));
    stream.write_all(&two).await.unwrap();
    let mut conn = Conn::stream(stream);
    let first = Message::parse(&conn.recv().await).unwrap().transaction_id();
    let second = Message::parse(&conn.recv().await).unwrap().transaction_id();
    assert_eq!(
        (first, second),
        (TransactionId([1; 12]), TransactionId([2; 12]))
    );

    // One message dribbled a few bytes at a time.
    let Conn::Stream { mut stream, .. } = conn else {
        unreachable!()
    };
    for chunk in binding(3).chunks(3) {
        stream.write_all(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conn = Conn::Stream {
        stream,
        buffer: Vec::new(),
    };
    let third = Message::parse(&conn.recv().await).unwrap().transaction_id();
    assert_eq!(third, TransactionId([3; 12]));
    server.shutdown().await;
}

// ---------------------------------------------------------------- hostile connections

#[tokio::test]
async fn garbage_closes_the_connection_and_others_are_served() {
    let server = start("").await;
    for garbage in [
        &b"\xff\xfe\xfd\xfc garbage"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let mut stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
        stream.write_all(garbage).await.unwrap();
        assert_closed_within(&mut stream, Duration::from_secs(1)).await;
    }
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let response = Conn::stream(stream).call(&binding(9)).await;
    assert_eq!(class_of(&response), Class::Success);
    server.shutdown().await;
}

#[tokio::test]
async fn stalled_and_silent_connections_are_closed_after_the_message_timeout() {
    let server = start("[connections]\nmessage-timeout = \"1s\"\n").await;
    let mut silent = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let mut stalled = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    stalled.write_all(&binding(1)[..10]).await.unwrap();
    let started = std::time::Instant::now();
    assert_closed_within(&mut silent, Duration::from_secs(3)).await;
    assert_closed_within(&mut stalled, Duration::from_secs(3)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "not before the timeout"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn per_ip_connection_cap_refuses_extra_connections() {
    let server = start("[connections]\nmax-per-ip = 2\n").await;
    let addr = server.tcp_addrs()[0];
    let first = TcpStream::connect(addr).await.unwrap();
    let _second = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    assert_closed_within(&mut third, Duration::from_secs(1)).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fourth = TcpStream::connect(addr).await.unwrap();
    let response = Conn::stream(fourth).call(&binding(4)).await;
    assert_eq!(class_of(&response), Class::Success);
    server.shutdown().await;
}

#[tokio::test]
async fn closing_the_connection_ends_the_allocation() {
    let server = start("").await;
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let mut client = TurnClient::new(Conn::stream(stream), "alice", "wonderland");
    client.allocate(&[]).await;
    assert_eq!(server.stats().allocations_created, 1);
    drop(client);
    let deadline = std::time::Instant::now() + WAIT;
    while server.stats().allocations_ended == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "allocation outlived its connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------- IPv6

#[tokio::test]
async fn ipv6_relay_and_dual_allocation_on_loopback() {
    let server = start_with(
        r#"listen = ["[::1]:0"]
           relay-ip = ["127.0.0.1", "::1"]
           [peers]
           allow = ["127.0.0.0/8", "127.0.0.1/32", "::1/128"]"#,
    )
    .await;
    let peer6 = UdpSocket::bind("[::1]:0").await.unwrap();
    let peer4 = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    // REQUESTED-ADDRESS-FAMILY: IPv6 relay; an IPv4 peer does not fit it (443).
    let mut client = TurnClient::alice_udp(&server).await;
    let relayed = client
        .allocate(&[family(AttrType::REQUESTED_ADDRESS_FAMILY, 2)])
        .await;
    assert_eq!(relayed.len(), 1);
    assert_eq!(relayed[0].ip().to_string(), "::1");
    let response = client
        .request(
            Method::CREATE_PERMISSION,
            &[xor_peer(peer4.local_addr().unwrap())],
        )
        .await;
    assert_eq!(error_of(&response), Some(443));
    client
        .request(
            Method::CREATE_PERMISSION,
            &[xor_peer(peer6.local_addr().unwrap())],
        )
        .await;
    client
        .conn
        .send(&send_indication(peer6.local_addr().unwrap(), b"six"))
        .await;
    assert_eq!(recv_from(&peer6).await, (b"six".to_vec(), relayed[0]));

    // ADDITIONAL-ADDRESS-FAMILY: one IPv4 and one IPv6 relayed address, both working.
    let mut dual = TurnClient::alice_udp(&server).await;
    let relayed = dual
        .allocate(&[family(AttrType::ADDITIONAL_ADDRESS_FAMILY, 2)])
        .await;
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "{relayed:?}");
    for (peer, relay) in [(&peer4, relayed[0]), (&peer6, relayed[1])] {
        let addr = peer.local_addr().unwrap();
        dual.request(Method::CREATE_PERMISSION, &[xor_peer(addr)])
            .await;
        dual.conn.send(&send_indication(addr, b"dual")).await;
        assert_eq!(recv_from(peer).await, (b"dual".to_vec(), relay));
    }
    server.shutdown().await;
}

#[tokio::test]
async fn ipv6_relay_requested_from_an_ipv4_only_server_is_440() {
    let server = start("").await;
    let mut client = TurnClient::alice_udp(&server).await;
    client.ensure_nonce(Method::ALLOCATE).await;
    let response = client
        .request(
            Method::ALLOCATE,
            &[
                udp_transport(),
                family(AttrType::REQUESTED_ADDRESS_FAMILY, 2),
            ],
        )
        .await;
    assert_eq!(error_of(&response), Some(440));
    server.shutdown().await;
}
