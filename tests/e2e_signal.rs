//! End to end: the HTTP server inside `rendez serve` — the page, health check, and
//! WebSocket signaling between real WebSocket clients on loopback.

mod common;

use std::time::{Duration, Instant};

use common::tls::TestCert;
use common::ws::{ws_url, SignalClient, WAIT};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long the server gives one frame to leave before it closes a socket that is not read.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn serves_the_page_its_assets_and_a_health_check() {
    let server = start("").await;
    let addr = server.signal_addr().unwrap();
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, page) = http_get(addr, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<html") && page.contains("app.js"), "{page}");
    let (status, app) = http_get(addr, "/app.js").await;
    assert_eq!(status, 200);
    // Every module app.js imports is served.
    for module in [
        "./bandwidth.js",
        "./chat.js",
        "./devices.js",
        "./quality.js",
    ] {
        assert!(app.contains(&format!("from \"{module}\"")), "{module}");
        let (status, body) = http_get(addr, &module[1..]).await;
        assert_eq!(status, 200, "{module}");
        assert!(body.contains("export "), "{module}");
    }
    assert_eq!(http_get(addr, "/style.css").await.0, 200);
    assert_eq!(http_get(addr, "/nope").await.0, 404);
    server.shutdown().await;
}

#[tokio::test]
async fn joiners_get_welcome_with_peers_and_fresh_turn_credentials() {
    let server = start("").await;
    let mut alice = SignalClient::connect(&server).await;
    let welcome = alice.join("standup", "Alice").await;
    assert_eq!(welcome["peers"], json!([]));
    let alice_id = welcome["id"].as_str().unwrap().to_owned();

    let mut bob = SignalClient::connect(&server).await;
    let welcome = bob.join("standup", "Bob").await;
    assert_eq!(welcome["peers"], json!([{"id": alice_id, "name": "Alice"}]));
    let joined = alice.recv().await;
    assert_eq!(joined["type"], "peer-joined");
    assert_eq!(joined["name"], "Bob");

    // iceServers: STUN, and TURN on every transport with a REST credential that verifies.
    let servers = welcome["iceServers"].as_array().unwrap();
    let port = server.udp_addrs()[0].port();
    assert_eq!(servers[0]["urls"][0], format!("stun:127.0.0.1:{port}"));
    let turn = &servers[1];
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!("turn:127.0.0.1:{port}?transport=udp"),
            format!("turn:127.0.0.1:{port}?transport=tcp")
        ]
    );
    let username = turn["username"].as_str().unwrap();
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry > now + 3500, "credential lasts the configured TTL");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"web-secret");
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD
        .encode(ring::hmac::sign(&key, username.as_bytes()));
    assert_eq!(turn["credential"], expected);
    server.shutdown().await;
}

#[tokio::test]
async fn signals_reach_the_named_peer_only_and_never_another_room() {
    let server = start("").await;
    let mut a = SignalClient::connect(&server).await;
    let mut b = SignalClient::connect(&server).await;
    let mut c = SignalClient::connect(&server).await;
    let mut other = SignalClient::connect(&server).await;
    let a_id = a.join("r", "A").await["id"].as_str().unwrap().to_owned();
    let b_id = b.join("r", "B").await["id"].as_str().unwrap().to_owned();
    c.join("r", "C").await;
    let other_id = other.join("elsewhere", "O").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.drain().await;

    a.send(json!({"type": "signal", "to": b_id, "data": {"description": {"type": "offer", "sdp": "v=0"}}})).await;
    let got = b.recv_type("signal").await;
    assert_eq!(got["from"], a_id.as_str());
    assert_eq!(got["data"]["description"]["sdp"], "v=0");
    c.expect_silence().await;

    a.send(json!({"type": "signal", "to": other_id, "data": {}}))
        .await;
    assert_eq!(a.recv().await["code"], "unknown-peer");
    other.expect_silence().await;
    server.shutdown().await;
}

#[tokio::test]
async fn full_room_says_room_full_and_leaving_frees_a_place() {
    let server = start("room-size = 2").await;
    let mut a = SignalClient::connect(&server).await;
    let mut b = SignalClient::connect(&server).await;
    let mut c = SignalClient::connect(&server).await;
    a.join("tiny", "A").await;
    let b_id = b.join("tiny", "B").await["id"].as_str().unwrap().to_owned();
    c.send(json!({"type": "join", "room": "tiny", "name": "C"}))
        .await;
    let refused = c.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("room-full"))
    );

    a.drain().await;
    b.close().await;
    let left = a.recv_type("peer-left").await;
    assert_eq!(left["id"], b_id.as_str());
    assert_eq!(c.join("tiny", "C").await["type"], "welcome");
    server.shutdown().await;
}

#[tokio::test]
async fn bad_messages_get_an_error_and_the_room_carries_on() {
    let server = start("").await;
    let mut a = SignalClient::connect(&server).await;
    let mut b = SignalClient::connect(&server).await;
    a.join("r", "A").await;
    let b_id = b.join("r", "B").await["id"].as_str().unwrap().to_owned();
    a.drain().await;
    a.socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    assert_eq!(a.recv().await["code"], "bad-message");
    a.socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(a.recv().await["code"], "bad-message");
    a.send(json!({"type": "signal", "to": b_id, "data": {"candidate": {}}}))
        .await;
    assert_eq!(
        b.recv_type("signal").await["data"],
        json!({"candidate": {}})
    );
    server.shutdown().await;
}

#[tokio::test]
async fn token_protected_rooms_admit_only_token_holders() {
    let server = start("token-secret = \"room-key\"").await;
    let mut a = SignalClient::connect(&server).await;
    a.send(json!({"type": "join", "room": "private", "name": "A"}))
        .await;
    assert_eq!(a.recv().await["code"], "unauthorized");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = rendez::signal::token::mint("room-key", "private", expires);
    a.send(json!({"type": "join", "room": "private", "name": "A", "token": token}))
        .await;
    assert_eq!(a.recv().await["type"], "welcome");
    server.shutdown().await;
}

#[tokio::test]
async fn flooding_is_rate_limited() {
    let server = start("messages-per-second = 5").await;
    let mut a = SignalClient::connect(&server).await;
    for _ in 0..40 {
        a.send(json!({"type": "ping"})).await;
    }
    let mut codes = Vec::new();
    while let Some(message) = a.try_recv(Duration::from_millis(300)).await {
        codes.push(
            message["type"].as_str().unwrap_or("").to_owned()
                + message["code"].as_str().unwrap_or(""),
        );
    }
    assert!(codes.iter().any(|c| c == "errorrate-limited"), "{codes:?}");
    assert!(codes.len() < 40, "excess messages are dropped");
    server.shutdown().await;
}

/// Binary frames are not part of the protocol, but each still costs a read and a reply: they
/// spend the same rate limit as text.
#[tokio::test]
async fn binary_floods_are_rate_limited_like_text() {
    let server = start("messages-per-second = 5").await;
    let mut a = SignalClient::connect(&server).await;
    for _ in 0..40 {
        a.socket
            .send(Message::Binary(vec![0; 1000].into()))
            .await
            .unwrap();
    }
    let mut codes = Vec::new();
    while let Some(message) = a.try_recv(Duration::from_millis(300)).await {
        codes.push(message["code"].as_str().unwrap_or("").to_owned());
    }
    let refused = codes.iter().filter(|c| *c == "bad-message").count();
    let limited = codes.iter().filter(|c| *c == "rate-limited").count();
    // A burst of twice the rate, and perhaps a token or two refilled while sending.
    assert!((10..=12).contains(&refused), "{codes:?}");
    assert_eq!(limited, 1, "{codes:?}");
    assert_eq!(codes.len(), refused + limited, "{codes:?}");
    server.shutdown().await;
}

/// A request head over 16 KiB is refused with 431 instead of being buffered (hyper's
/// default would take ~400 KiB); an ordinary one with a few KiB of cookies is served.
#[tokio::test]
async fn request_heads_over_16_kib_are_refused() {
    let server = start("").await;
    let addr = server.signal_addr().unwrap();
    let head = |cookie_bytes: usize| {
        format!(
            "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: c={}\r\nConnection: close\r\n\r\n",
            "x".repeat(cookie_bytes)
        )
    };
    let (status, body) = http_request(addr, &head(4 * 1024)).await;
    assert_eq!((status, body.trim()), (Some(200), "ok"));
    let (status, _) = http_request(addr, &head(32 * 1024)).await;
    assert_eq!(status, Some(431));
    server.shutdown().await;
}

#[tokio::test]
async fn page_is_served_over_https_when_tls_is_configured() {
    let cert = TestCert::new();
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n{}\
         [auth]\nsecrets = [\"s\"]\n[signal]\nlisten = \"127.0.0.1:0\"\n",
        cert.config()
    );
    let server = rendez::start(rendez::Config::from_toml(&text).unwrap())
        .await
        .unwrap();

    let tcp = TcpStream::connect(server.signal_addr().unwrap())
        .await
        .unwrap();
    // As a browser does: offer HTTP/2 and HTTP/1.1.
    let mut tls = cert
        .handshake_offering(tcp, &[b"h2", b"http/1.1"])
        .await
        .expect("HTTPS handshake");
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_string(&mut response)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("ok\n"));
    server.shutdown().await;
}

#[tokio::test]
async fn http_connections_are_capped_per_address() {
    let server = start("[connections]\nmax-per-ip = 2").await;
    let addr = server.signal_addr().unwrap();
    let _first = SignalClient::connect(&server).await;
    let _second = SignalClient::connect(&server).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, third.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "third connection was served"
    );
    server.shutdown().await;
}

// ================================================================ order, backpressure, shutdown

/// Thousands of joins racing, several times over: every participant's first message is its
/// `welcome`, and in the end everyone has heard of all five others exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_comes_first_under_thousands_of_concurrent_joins() {
    const TRIES: usize = 4;
    const ROOMS: usize = 200;
    const ROOM_SIZE: usize = 6;
    // Generous: 1200 handshakes at once on a loaded 2-core machine can take seconds; the
    // test is about order, not speed.
    const PATIENCE: Duration = Duration::from_secs(60);
    // Thousands of sockets on both ends of loopback need more than 1024 descriptors.
    rendez::net::raise_open_file_limit();
    let server =
        start("rooms-per-ip = 100000\n[connections]\nmax = 100000\nmax-per-ip = 100000\n").await;
    for attempt in 0..TRIES {
        let mut joins = tokio::task::JoinSet::new();
        for i in 0..ROOMS * ROOM_SIZE {
            let url = ws_url(&server);
            joins.spawn(async move {
                let mut client = SignalClient::connect_within(&url, PATIENCE).await;
                // Fresh rooms each try: the last try's participants may still be leaving.
                let room = format!("race-{attempt}-{}", i / ROOM_SIZE);
                client
                    .send(json!({"type": "join", "room": room, "name": format!("p{i}")}))
                    .await;
                let first = client.recv_within(PATIENCE).await;
                assert_eq!(first["type"], "welcome", "first message: {first}");
                let mut known: Vec<String> = first["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_str().unwrap().to_owned())
                    .collect();
                while known.len() < ROOM_SIZE - 1 {
                    let message = client.recv_within(PATIENCE).await;
                    assert_eq!(message["type"], "peer-joined", "{message}");
                    known.push(message["id"].as_str().unwrap().to_owned());
                }
                known.sort();
                known.dedup();
                assert_eq!(known.len(), ROOM_SIZE - 1, "each peer announced once");
                client
            });
        }
        let mut clients = Vec::new();
        let all = async {
            while let Some(joined) = joins.join_next().await {
                clients.push(joined.expect("a participant saw the wrong order"));
            }
        };
        tokio::time::timeout(2 * PATIENCE, all)
            .await
            .expect("every join finished");
        for client in clients {
            client.close().await;
        }
    }
    server.shutdown().await;
}

/// A browser that stops reading while a peer keeps signalling to it is dropped as soon as its
/// queue's byte budget is spent, long before the write deadline: the others hear
/// `peer-left`, its seat is free again, a session in another room never notices, and
/// everything held for it — queue, write buffer, both kernels' socket buffers — is bounded
/// by what the peer got to send before the drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_flooded_by_a_peer_is_dropped_at_once() {
    let server = start("room-size = 2\nmessages-per-second = 2000\n").await;
    let mut stuck = SignalClient::connect_with_small_receive_buffer(&server).await;
    let stuck_id = stuck.join("pair", "Stuck").await["id"].clone();
    let mut sender = SignalClient::connect(&server).await;
    sender.join("pair", "Sender").await;
    let mut bystander = SignalClient::connect(&server).await;
    bystander.join("elsewhere", "Bystander").await;

    // From here on `stuck` never reads.
    let signal = json!({"type": "signal", "to": stuck_id, "data": "x".repeat(60_000)}).to_string();
    let started = Instant::now();
    let (mut sent, mut slowest_pong) = (0usize, Duration::ZERO);
    let mut dropped = false;
    while !dropped && sent < 500 {
        sender
            .socket
            .send(Message::Text(signal.clone().into()))
            .await
            .unwrap();
        sent += 1;
        while let Some(message) = sender.try_recv(Duration::from_millis(1)).await {
            dropped |= message["type"] == "peer-left" && message["id"] == stuck_id;
        }
        let asked = Instant::now();
        bystander.send(json!({"type": "ping"})).await;
        assert_eq!(bystander.recv().await["type"], "pong");
        slowest_pong = slowest_pong.max(asked.elapsed());
    }
    let took = started.elapsed();
    // The signal that found the queue full was not kept: the rest is all the server and
    // both kernels held for the stuck reader at most.
    let held_bytes = sent.saturating_sub(1) * signal.len();
    println!(
        "stuck reader dropped after {sent} signals in {} ms, {} KiB held for it at most; \
         slowest pong elsewhere meanwhile {} ms",
        took.as_millis(),
        held_bytes / 1024,
        slowest_pong.as_millis()
    );
    assert!(dropped, "still in the room after {sent} signals");
    assert!(
        took < SEND_TIMEOUT,
        "dropped by the budget, not the deadline"
    );
    // With a queue bounded only in frames, 64 of these would be queued before the drop.
    assert!(sent < 64, "{sent} signals of {} bytes", signal.len());
    assert!(slowest_pong < Duration::from_secs(1));
    let figures = server.signal_figures().unwrap();
    assert_eq!(figures.dropped_not_reading, 1, "{figures:?}");

    let mut next = SignalClient::connect(&server).await;
    let welcome = next.join("pair", "Next").await;
    assert_eq!(welcome["peers"].as_array().unwrap().len(), 1, "{welcome}");
    assert!(
        stuck.ends_within(WAIT).await,
        "the server closed its socket"
    );
    server.shutdown().await;
}

/// A stuck reader sent too little to spend its queue's budget is closed by the write
/// deadline instead: within [`SEND_TIMEOUT`] of its socket filling up.
#[tokio::test]
async fn a_stuck_reader_is_closed_by_the_write_deadline() {
    let server = start("room-size = 2\nmessages-per-second = 2000\n").await;
    let mut stuck = SignalClient::connect_with_small_receive_buffer(&server).await;
    let stuck_id = stuck.join("pair", "Stuck").await["id"].clone();
    let mut sender = SignalClient::connect(&server).await;
    sender.join("pair", "Sender").await;
    // Four signals: more than the socket buffers on both ends take, less than the budget.
    let blob = "x".repeat(60_000);
    for _ in 0..4 {
        sender
            .send(json!({"type": "signal", "to": stuck_id, "data": blob}))
            .await;
    }
    let started = Instant::now();
    let left = sender
        .recv_type_within("peer-left", SEND_TIMEOUT + Duration::from_secs(5))
        .await;
    let took = started.elapsed();
    println!(
        "stuck reader closed by the write deadline in {} ms",
        took.as_millis()
    );
    assert_eq!(left["id"], stuck_id);
    assert!(
        took > SEND_TIMEOUT / 2,
        "not closed by the deadline: {took:?}"
    );
    let figures = server.signal_figures().unwrap();
    assert_eq!(figures.dropped_not_reading, 0, "{figures:?}");
    assert!(
        stuck.ends_within(WAIT).await,
        "the server closed its socket"
    );
    server.shutdown().await;
}

/// Shutdown does not wait for a write that cannot finish.
#[tokio::test]
async fn shutdown_is_prompt_with_a_stuck_reader_mid_write() {
    let server = start("room-size = 2\nmessages-per-second = 2000\n").await;
    let mut stuck = SignalClient::connect_with_small_receive_buffer(&server).await;
    let stuck_id = stuck.join("pair", "Stuck").await["id"].clone();
    let mut sender = SignalClient::connect(&server).await;
    sender.join("pair", "Sender").await;
    let blob = "x".repeat(60_000);
    for _ in 0..4 {
        sender
            .send(json!({"type": "signal", "to": stuck_id, "data": blob}))
            .await;
    }
    // Its session is now blocked writing to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("shutdown finished");
    println!(
        "shutdown with a stuck reader took {} ms",
        started.elapsed().as_millis()
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(stuck.ends_within(WAIT).await);
}

/// Shutdown returns only once every signaling session has ended: every client sees its
/// socket closed at once.
#[tokio::test]
async fn shutdown_waits_for_every_session() {
    let server = start("").await;
    let mut clients = Vec::new();
    for i in 0..6 {
        let mut client = SignalClient::connect(&server).await;
        client.join("bye", &format!("p{i}")).await;
        clients.push(client);
    }
    server.shutdown().await;
    for mut client in clients {
        let end = tokio::time::timeout(Duration::from_millis(500), async {
            while let Some(Ok(_)) = client.socket.next().await {}
        });
        assert!(end.await.is_ok(), "a session outlived shutdown");
    }
}

// ================================================================ helpers

async fn start(signal_extra: &str) -> rendez::Handle {
    let text = format!(
        "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nrelay-ports = \"12000-12999\"\n\
         [auth]\nsecrets = [\"web-secret\"]\ncredential-ttl = \"1h\"\n\
         [signal]\nlisten = \"127.0.0.1:0\"\n{signal_extra}\n"
    );
    let config = rendez::Config::from_toml(&text).expect("test config parses");
    rendez::start(config).await.expect("server starts")
}

/// A minimal HTTP/1.1 GET: status code and body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let (status, body) = http_request(addr, &request).await;
    (status.expect("an HTTP status line"), body)
}

/// Sends `request` as is and reads until the server closes: the status code, if the
/// answer has one, and the body.
async fn http_request(addr: std::net::SocketAddr, request: &str) -> (Option<u16>, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it has read all of a refused request.
    let _ = stream.write_all(request.as_bytes()).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("the server answered and closed");
    let response = String::from_utf8_lossy(&response);
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok());
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}
