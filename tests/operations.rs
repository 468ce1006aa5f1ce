//! Operating rendez: live reload (through `Handle::reload`, and by SIGHUP to the binary),
//! drain (in process, and by SIGTERM to the binary), allocation quotas, the limit on
//! unauthorized replies, bandwidth per allocation, and the lifetime of the page's TURN
//! credentials. Everything on loopback; reload and drain timings, the flood's bytes and the
//! bandwidth figures are printed (run with `--nocapture` to see them).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use rendez::stun::{
    AttrType, ChannelData, Class, Message, MessageBuilder, Method, TransactionId,
    CHANNEL_DATA_HEADER_LEN,
};
use rendez::turn::{DropReason, QuotaExceeded, Rejection, Stats};
use serde_json::{json, Value};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite;

use common::process::{message_of, ServerProcess};
use common::tls::{peer_certificate, tls_config, TestCert};
use common::*;

const ALICE: (&str, &str) = ("alice", "wonderland");
const BOB: (&str, &str) = ("bob", "builder");
const CAROL: (&str, &str) = ("carol", "lewis");

// ================================================================ reload, in process

/// Before the reload: a UDP allocation under a REST credential from the secret the reload
/// removes, TCP and TLS allocations of a static user, each with a channel to its own peer,
/// and a participant in a room over WebSocket (HTTPS, as with `[tls]`). The reload adds
/// bob, removes the secret and shortens the page's credential lifetime.
#[tokio::test]
async fn reload_keeps_allocations_connections_and_sessions_and_applies_the_new_config() {
    let cert = TestCert::new();
    let before = setup()
        .tls(&cert)
        .secrets(&["old-secret", "kept-secret"])
        .signal("listen = \"127.0.0.1:0\"\ncredential-ttl = \"1h\"");
    let server = before.start().await;

    let old = mint("old-secret", "carol", 3600);
    let mut udp = TurnClient::new(
        Conn::udp(server.udp_addrs()[0]).await,
        &old.username,
        &old.password,
    );
    let udp_path = RelayPath::open(&mut udp).await;
    let tcp_stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let mut tcp = TurnClient::new(Conn::stream(tcp_stream), ALICE.0, ALICE.1);
    let tcp_path = RelayPath::open(&mut tcp).await;
    let tls_stream = cert
        .connect(server.tls_addrs()[0], Some(b"stun.turn"))
        .await;
    let mut tls = TurnClient::new(Conn::stream(tls_stream), ALICE.0, ALICE.1);
    let tls_path = RelayPath::open(&mut tls).await;
    let mut first = SignalClient::connect_tls(&server, &cert).await;
    let first_welcome = first.join("standup", "First").await;
    assert_expires_in(&first_welcome, 3600);

    let after = before
        .clone()
        .secrets(&["kept-secret"])
        .users(&[ALICE, BOB])
        .signal("listen = \"127.0.0.1:0\"\ncredential-ttl = \"10m\"");
    let reloading = Instant::now();
    let reloaded = server.reload(after.config()).await.expect("reload");
    eprintln!(
        "reload: Handle::reload took {:?} (3 allocations, 1 session open)",
        reloading.elapsed()
    );
    assert!(
        reloaded.needs_restart.is_empty(),
        "{:?}",
        reloaded.needs_restart
    );

    // Everything open before goes on, in both directions.
    udp_path.assert_relays(&mut udp, b"udp1").await;
    tcp_path.assert_relays(&mut tcp, b"tcp1").await;
    tls_path.assert_relays(&mut tls, b"tls1").await;
    assert_eq!(tcp.refresh(600).await, None, "alice is still a user");
    assert_eq!(tls.refresh(600).await, None);
    first.send(json!({"type": "ping"})).await;
    first.recv_type("pong").await;
    let mut second = SignalClient::connect_tls(&server, &cert).await;
    let second_welcome = second.join("standup", "Second").await;
    assert_eq!(first.recv_type("peer-joined").await["name"], "Second");

    // The new configuration is in force: the page hands out 10-minute credentials from the
    // kept secret (and they work), bob is a user, the removed secret admits no one new.
    assert_expires_in(&second_welcome, 600);
    let (username, password) = turn_credential(&second_welcome);
    let mut visitor = udp_client(&server, (&username, &password)).await;
    assert!(visitor.try_allocate().await.is_ok());
    let mut bob = udp_client(&server, BOB).await;
    assert!(bob.try_allocate().await.is_ok());
    let fresh = mint("old-secret", "dave", 3600);
    let mut refused = udp_client(&server, (&fresh.username, &fresh.password)).await;
    assert_eq!(refused.try_allocate().await, Err(401));

    // The allocation made under the removed secret cannot be refreshed any more, but it
    // relays until its lifetime runs out: a reload ends nothing.
    assert_eq!(udp.refresh(600).await, Some(401));
    udp_path.assert_relays(&mut udp, b"udp2").await;
    let stats = stats_when(&server, |s| s.auth_failures(Rejection::WrongKey) >= 2).await;
    assert_eq!(stats.auth_failures(Rejection::WrongKey), 2);
    server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_config_is_refused_whole_and_the_running_one_stays() {
    let before = setup();
    let server = before.start().await;
    // Besides the invalid key: alice gone, bob added, one allocation per user.
    let mut bad = before.clone().users(&[BOB]).config();
    bad.limits.allocations_per_user = 1;
    bad.limits.allocations_per_ip = 0;
    let error = server.reload(bad).await.expect_err("an invalid config");
    let text = format!("{error:#}");
    assert!(text.contains("limits.allocations-per-ip"), "{text}");

    // None of it was applied.
    for _ in 0..2 {
        let mut alice = udp_client(&server, ALICE).await;
        assert!(alice.try_allocate().await.is_ok(), "alice is still a user");
    }
    let mut bob = udp_client(&server, BOB).await;
    assert_eq!(bob.try_allocate().await, Err(401));
    server.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_certificate_is_refused_and_the_old_one_keeps_serving() {
    let cert = TestCert::new();
    let before = setup().tls(&cert);
    let server = before.start().await;
    let tls_addr = server.tls_addrs()[0];
    let missing = cert.cert_path().with_file_name("missing.pem");
    let bad = before
        .clone()
        .tls_files(&missing, &cert.key_path())
        .users(&[ALICE, BOB]);
    let error = server
        .reload(bad.config())
        .await
        .expect_err("a missing file");
    let text = format!("{error:#}");
    assert!(
        text.contains(&missing.display().to_string()) && text.contains("tls.cert"),
        "{text}"
    );

    let stream = cert.connect(tls_addr, Some(b"stun.turn")).await;
    assert_eq!(peer_certificate(&stream), cert.cert_der);
    let mut bob = TurnClient::new(Conn::stream(stream), BOB.0, BOB.1);
    assert_eq!(
        bob.try_allocate().await,
        Err(401),
        "bob came with the refused config"
    );
    server.shutdown().await;
}

/// A renewal writes a new certificate and key over the same files, then reloads.
#[tokio::test]
async fn a_renewed_certificate_is_served_after_reload_and_open_connections_go_on() {
    let mut cert = TestCert::new();
    let config = setup().tls(&cert);
    let server = config.start().await;
    let tls_addr = server.tls_addrs()[0];
    let stream = cert.connect(tls_addr, Some(b"stun.turn")).await;
    let mut opened_before = TurnClient::new(Conn::stream(stream), ALICE.0, ALICE.1);
    let path = RelayPath::open(&mut opened_before).await;
    let old_der = cert.cert_der.clone();

    cert.renew();
    assert_ne!(cert.cert_der, old_der);
    let unreloaded = tokio::time::timeout(WAIT, cert.try_connect(tls_addr, None)).await;
    assert!(
        matches!(unreloaded, Ok(Err(_))),
        "the new certificate is served only after a reload"
    );
    let reloaded = server.reload(config.config()).await.expect("reload");
    assert!(reloaded.needs_restart.is_empty());
    let stream = cert.connect(tls_addr, None).await;
    assert_eq!(peer_certificate(&stream), cert.cert_der);
    path.assert_relays(&mut opened_before, b"old!").await;
    assert_eq!(opened_before.refresh(600).await, None);

    // A certificate that does not fit the key on disk is refused; the renewed one stays.
    let stranger = TestCert::new();
    std::fs::copy(stranger.cert_path(), cert.cert_path()).unwrap();
    let error = server
        .reload(config.config())
        .await
        .expect_err("a certificate without its key");
    let text = format!("{error:#}");
    assert!(text.contains("does not fit"), "{text}");
    let stream = cert.connect(tls_addr, None).await;
    assert_eq!(peer_certificate(&stream), cert.cert_der);
    server.shutdown().await;
}

#[tokio::test]
async fn settings_that_need_a_restart_are_reported_and_the_rest_applied() {
    let before = setup();
    let server = before.start().await;
    let mut alice = udp_client(&server, ALICE).await;
    assert!(alice.try_allocate().await.is_ok());
    let mut after = before
        .clone()
        .users(&[ALICE, BOB])
        .limits("allocations-per-user = 1")
        .config();
    after.relay_ports = rendez::config::PortRange(16000..=16099);
    after.workers = 2;
    let reloaded = server.reload(after).await.expect("reload");
    assert_eq!(reloaded.needs_restart, ["relay-ports", "workers"]);

    // Bob and the lower quota are in; relay ports and workers are those of the start.
    let mut bob = udp_client(&server, BOB).await;
    let relayed = bob.try_allocate().await.expect("bob allocates");
    assert!(RELAY_PORTS.contains(&relayed.port()), "{relayed}");
    assert_eq!(server.workers(), 1);
    let mut alice_again = udp_client(&server, ALICE).await;
    assert_eq!(alice_again.try_allocate().await, Err(486));
    assert_eq!(alice.refresh(600).await, None, "a lower quota ends nothing");
    server.shutdown().await;
}

// ================================================================ drain, in process

#[tokio::test]
async fn drain_refuses_new_allocations_and_sends_signaling_clients_elsewhere() {
    let server = setup()
        .secrets(&["web-secret"])
        .signal("listen = \"127.0.0.1:0\"")
        .start()
        .await;
    let mut alice = udp_client(&server, ALICE).await;
    let path = RelayPath::open(&mut alice).await;
    let mut participant = SignalClient::connect(&server).await;
    participant.join("standup", "P").await;

    server.drain().await;
    assert_eq!(participant.recv().await, json!({"type": "reconnect"}));
    let mut late = SignalClient::connect(&server).await;
    late.send(json!({"type": "join", "room": "standup", "name": "L"}))
        .await;
    let refused = late.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{refused}"
    );
    let mut newcomer = udp_client(&server, ALICE).await;
    assert_eq!(newcomer.try_allocate().await, Err(486));
    path.assert_relays(&mut alice, b"live").await;
    let stats = stats_when(&server, |s| s.refused_draining >= 1).await;
    assert_eq!(stats.refused_draining, 1);
    server.shutdown().await;
}

// ================================================================ quotas

#[tokio::test]
async fn allocations_per_user_holds_for_every_address_and_frees_when_one_ends() {
    let server = setup()
        .users(&[ALICE, BOB])
        .limits("allocations-per-user = 2")
        .start()
        .await;
    let mut first = udp_client_from("127.0.0.1", &server, ALICE).await;
    let mut second = udp_client_from("127.0.0.2", &server, ALICE).await;
    assert!(first.try_allocate().await.is_ok());
    assert!(second.try_allocate().await.is_ok());
    let mut third = udp_client_from("127.0.0.1", &server, ALICE).await;
    let mut fourth = udp_client_from("127.0.0.2", &server, ALICE).await;
    assert_eq!(third.try_allocate().await, Err(486));
    assert_eq!(fourth.try_allocate().await, Err(486));
    let mut bob = udp_client_from("127.0.0.1", &server, BOB).await;
    assert!(
        bob.try_allocate().await.is_ok(),
        "another user is not affected"
    );

    assert_eq!(first.refresh(0).await, None);
    assert!(third.try_allocate().await.is_ok(), "a place came free");
    let stats = stats_when(&server, |s| s.quota_refusals(QuotaExceeded::User) >= 2).await;
    assert_eq!(refusals(&stats), [2, 0, 0]);
    server.shutdown().await;
}

#[tokio::test]
async fn allocations_per_ip_counts_each_client_address_apart() {
    let server = setup()
        .users(&[ALICE, BOB, CAROL])
        .limits("allocations-per-ip = 2")
        .start()
        .await;
    for user in [ALICE, BOB] {
        let mut client = udp_client_from("127.0.0.1", &server, user).await;
        assert!(client.try_allocate().await.is_ok());
    }
    let mut carol = udp_client_from("127.0.0.1", &server, CAROL).await;
    assert_eq!(carol.try_allocate().await, Err(486));
    for user in [CAROL, ALICE] {
        let mut client = udp_client_from("127.0.0.2", &server, user).await;
        assert!(client.try_allocate().await.is_ok(), "another address");
    }
    let stats = stats_when(&server, |s| s.quota_refusals(QuotaExceeded::Address) >= 1).await;
    assert_eq!(refusals(&stats), [0, 1, 0]);
    server.shutdown().await;
}

#[tokio::test]
async fn allocations_total_holds_for_the_whole_server() {
    let server = setup()
        .users(&[ALICE, BOB, CAROL])
        .limits("allocations-total = 3")
        .start()
        .await;
    let mut alice = udp_client_from("127.0.0.1", &server, ALICE).await;
    assert!(alice.try_allocate().await.is_ok());
    let mut bob = udp_client_from("127.0.0.2", &server, BOB).await;
    assert!(bob.try_allocate().await.is_ok());
    let mut carol_tcp = tcp_client(&server, CAROL).await;
    assert!(carol_tcp.try_allocate().await.is_ok());
    let mut carol = udp_client_from("127.0.0.3", &server, CAROL).await;
    assert_eq!(carol.try_allocate().await, Err(486));

    assert_eq!(alice.refresh(0).await, None);
    assert!(carol.try_allocate().await.is_ok());
    let stats = stats_when(&server, |s| s.quota_refusals(QuotaExceeded::Total) >= 1).await;
    assert_eq!(refusals(&stats), [0, 0, 1]);
    server.shutdown().await;
}

/// UDP clients are served by the UDP workers, TCP clients by the stream shard: one user's
/// allocations on both count against one quota.
#[tokio::test]
async fn quotas_hold_across_shards() {
    let server = setup()
        .workers(2)
        .limits("allocations-per-user = 3")
        .start()
        .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut udp = udp_client(&server, ALICE).await;
        assert!(udp.try_allocate().await.is_ok());
        held.push(udp);
    }
    let mut tcp = tcp_client(&server, ALICE).await;
    assert!(tcp.try_allocate().await.is_ok());
    let mut more_udp = udp_client(&server, ALICE).await;
    assert_eq!(more_udp.try_allocate().await, Err(486));
    let mut more_tcp = tcp_client(&server, ALICE).await;
    assert_eq!(more_tcp.try_allocate().await, Err(486));

    assert_eq!(server.allocations_now(), 3);
    let stream_gauges = eventually(|| server.stream_stats().1, |g| g.allocations > 0).await;
    assert_eq!(
        stream_gauges.allocations, 1,
        "the TCP allocation is the stream shard's"
    );
    let stats = stats_when(&server, |s| s.quota_refusals(QuotaExceeded::User) >= 2).await;
    assert_eq!(refusals(&stats), [2, 0, 0]);
    server.shutdown().await;
}

/// A REST user is the NAME of `EXPIRY:NAME`: minting more credentials does not escape the
/// quota.
#[tokio::test]
async fn rest_credentials_of_one_name_share_its_quota() {
    let server = setup()
        .secrets(&["s3cret"])
        .limits("allocations-per-user = 2")
        .start()
        .await;
    let mut results = Vec::new();
    for hours in 1..=3 {
        let credential = mint("s3cret", "erin", hours * 3600);
        let mut client = udp_client(&server, (&credential.username, &credential.password)).await;
        results.push(client.try_allocate().await.map(|_| ()));
    }
    assert_eq!(results, [Ok(()), Ok(()), Err(486)]);
    let other = mint("s3cret", "frank", 3600);
    let mut frank = udp_client(&server, (&other.username, &other.password)).await;
    assert!(frank.try_allocate().await.is_ok());
    server.shutdown().await;
}

// ================================================================ rate and bandwidth limits

/// A spoofed flood of small unauthenticated requests must not buy larger replies: beyond
/// `unauthorized-per-ip` challenges per second, requests are dropped. Other addresses still
/// get theirs, and stream clients (which cannot be spoofed) are not limited.
#[tokio::test]
async fn a_flood_of_unauthenticated_allocates_gets_fewer_bytes_back_than_it_sent() {
    const FLOOD: usize = 2000;
    const LIMIT: usize = 10;
    let server = setup()
        .limits(&format!("unauthorized-per-ip = {LIMIT}"))
        .start()
        .await;
    let server_addr = server.udp_addrs()[0];
    let flooder = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut other = udp_client_from("127.0.0.2", &server, ALICE).await;

    let began = Instant::now();
    let mut bytes_in = 0;
    for i in 0..FLOOD {
        bytes_in += flooder
            .send_to(&unauthenticated_allocate(i), server_addr)
            .await
            .unwrap();
        if i == FLOOD / 2 {
            // Asserts the 401 challenge.
            other.ensure_nonce(Method::ALLOCATE).await;
        }
    }
    let (replies, bytes_back) = received_until_quiet(&flooder, Duration::from_secs(1)).await;
    let seconds = began.elapsed().as_secs() as usize + 1;
    eprintln!(
        "unauthorized flood: {FLOOD} requests ({bytes_in} bytes) in, {replies} replies \
         ({bytes_back} bytes) back over {:?}",
        began.elapsed()
    );
    assert!(bytes_back <= bytes_in, "{bytes_back} > {bytes_in}");
    // One budget per second the flood and the wait spanned (a second boundary may split it).
    assert!(replies <= LIMIT * (seconds + 1), "{replies} replies");
    assert!(replies >= 1, "the first challenges are answered");
    // Every request beyond the budget is dropped and counted (allowing for a few the
    // kernel may have lost before the server read them).
    let unanswered = (FLOOD - replies) as u64;
    let stats = stats_when(&server, |s| {
        s.dropped(DropReason::UnauthorizedRate) >= unanswered * 9 / 10
    })
    .await;
    let dropped = stats.dropped(DropReason::UnauthorizedRate);
    assert!(
        (unanswered * 9 / 10..=unanswered).contains(&dropped),
        "{dropped} dropped of {unanswered} unanswered"
    );
    assert!(
        other.try_allocate().await.is_ok(),
        "the other address goes on"
    );

    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    let mut tcp = Conn::stream(stream);
    for i in 0..5 * LIMIT {
        let reply = tcp.call(&unauthenticated_allocate(i)).await;
        assert_eq!(error_of(&reply), Some(401), "TCP request {i}");
    }
    server.shutdown().await;
}

/// 1000-byte packets offered at five times `bandwidth-per-allocation` for two seconds, both
/// ways at once: each direction passes its one-second burst plus the rate, no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_per_allocation_caps_each_direction() {
    const RATE: u64 = 64_000; // the lowest rate the config accepts
    const PAYLOAD: usize = 1000;
    let server = setup()
        .limits(&format!("bandwidth-per-allocation = {RATE}"))
        .start()
        .await;
    let mut client = udp_client(&server, ALICE).await;
    let path = RelayPath::open(&mut client).await;
    let Conn::Udp {
        socket,
        server: server_addr,
    } = &client.conn
    else {
        unreachable!("a UDP client");
    };
    let mut frame = ChannelData::header(CHANNEL, PAYLOAD as u16).to_vec();
    frame.extend_from_slice(&[7; PAYLOAD]);
    let payload = [9; PAYLOAD];
    let limit = Duration::from_secs(5);
    let (up_time, (up_packets, up_bytes), down_time, (down_packets, down_bytes)) = tokio::join!(
        offer_at_five_times(socket, *server_addr, &frame, RATE),
        received_until_quiet(&path.peer, limit),
        offer_at_five_times(&path.peer, path.relayed, &payload, RATE),
        received_until_quiet(socket, limit),
    );
    let expected = |offered: Duration| (RATE as f64 * (1.0 + offered.as_secs_f64())) as usize;
    let down_payload = down_bytes - down_packets * CHANNEL_DATA_HEADER_LEN;
    for (direction, offered, got) in [
        ("to the peer", up_time, up_bytes),
        ("to the client", down_time, down_payload),
    ] {
        let expected = expected(offered);
        eprintln!(
            "bandwidth {RATE} B/s, {direction}: {got} bytes passed in {offered:?} (expected {expected})"
        );
        assert!(
            got as f64 >= expected as f64 * 0.85 && got <= expected + 2 * PAYLOAD,
            "{direction}: {got} bytes passed, expected about {expected}"
        );
    }
    let sent = 2 * PACKETS_OFFERED;
    let passed = up_packets + down_packets;
    let stats = stats_when(&server, |s| {
        s.dropped(DropReason::OverBandwidth) as usize >= (sent - passed) * 9 / 10
    })
    .await;
    let dropped = stats.dropped(DropReason::OverBandwidth) as usize;
    assert!(
        dropped <= sent - passed && dropped >= (sent - passed) * 9 / 10,
        "{dropped} counted as over the bandwidth; {sent} sent, {passed} passed"
    );
    server.shutdown().await;
}

// ================================================================ the page's TURN credentials

/// The page's credentials last `[signal] credential-ttl`, and one visit's credential is a
/// user of its own, bounded by `allocations-per-user` however it is used.
#[tokio::test]
async fn the_page_hands_out_turn_credentials_for_credential_ttl() {
    let server = setup()
        .secrets(&["web-secret"])
        .limits("allocations-per-user = 2")
        .signal("listen = \"127.0.0.1:0\"\ncredential-ttl = \"2m\"")
        .start()
        .await;
    let mut visitor = SignalClient::connect(&server).await;
    let welcome = visitor.join("room", "Visitor").await;
    assert_expires_in(&welcome, 120);
    let (username, password) = turn_credential(&welcome);
    let mut results = Vec::new();
    for _ in 0..3 {
        let mut client = udp_client(&server, (&username, &password)).await;
        results.push(client.try_allocate().await.map(|_| ()));
    }
    assert_eq!(results, [Ok(()), Ok(()), Err(486)]);
    server.shutdown().await;
}

// ================================================================ the binary: SIGHUP, SIGTERM

#[tokio::test]
async fn sighup_reloads_the_file_and_a_broken_file_is_refused() {
    // A short drain-timeout: bob's allocations are still live at the end.
    let before = setup().top("log-level = \"info\"\ndrain-timeout = \"200ms\"");
    let mut rendez = Rendez::start("sighup", &before).await;
    let mut bob = TurnClient::new(Conn::udp(rendez.udp).await, BOB.0, BOB.1);
    assert_eq!(bob.try_allocate().await, Err(401));
    let mut mallory = TurnClient::new(Conn::udp(rendez.udp).await, ALICE.0, "guess");
    assert_eq!(mallory.try_allocate().await, Err(401));

    let after = setup()
        .top("log-level = \"debug\"\ndrain-timeout = \"200ms\"")
        .users(&[ALICE, BOB]);
    rendez.write_config(&after);
    let hangup = Instant::now();
    rendez.signal(libc::SIGHUP);
    let reloaded = rendez.wait_for_log("configuration reloaded", 1).await;
    eprintln!(
        "reload: SIGHUP to the log line {:?}, of which the reload itself {} ms",
        hangup.elapsed(),
        reloaded["fields"]["elapsed_ms"]
    );
    assert!(bob.try_allocate().await.is_ok(), "bob was added");
    // At debug level a failed authentication is logged; at info it was not.
    assert_eq!(mallory.try_allocate().await, Err(401));
    let failed = rendez.wait_for_log("authentication failed", 1).await;
    assert_eq!(failed["level"], "DEBUG");
    assert_eq!(rendez.count_log("authentication failed"), 1, "none before");

    rendez.write_config(&after.clone().limits("bandwith = 5"));
    rendez.signal(libc::SIGHUP);
    let refused = rendez.wait_for_log("reload refused", 1).await;
    let message = refused["fields"]["message"].as_str().unwrap();
    assert!(message.contains("bandwith"), "{message}");
    let mut bob_again = TurnClient::new(Conn::udp(rendez.udp).await, BOB.0, BOB.1);
    assert!(
        bob_again.try_allocate().await.is_ok(),
        "the running config stays"
    );

    rendez.signal(libc::SIGTERM);
    assert!(rendez.wait_for_exit(Duration::from_secs(10)).success());
}

#[tokio::test]
async fn sigterm_drains_and_exits_once_the_last_allocation_ends() {
    let mut rendez = Rendez::start(
        "drain-ends",
        &setup().top("drain-timeout = \"20s\"").users(&[ALICE, BOB]),
    )
    .await;
    let mut alice = TurnClient::new(Conn::udp(rendez.udp).await, ALICE.0, ALICE.1);
    let path = RelayPath::open(&mut alice).await;

    let terminated = Instant::now();
    rendez.signal(libc::SIGTERM);
    rendez.wait_for_log("draining", 1).await;
    let mut bob = TurnClient::new(Conn::udp(rendez.udp).await, BOB.0, BOB.1);
    assert_eq!(bob.try_allocate().await, Err(486));
    path.assert_relays(&mut alice, b"live").await;
    assert_eq!(alice.refresh(600).await, None, "existing allocations go on");

    let ended = Instant::now();
    assert_eq!(alice.refresh(0).await, None);
    let status = rendez.wait_for_exit(Duration::from_secs(10));
    let exit_after = ended.elapsed();
    eprintln!(
        "drain: exit {exit_after:?} after the last allocation ended, {:?} after SIGTERM \
         (drain-timeout 20s)",
        terminated.elapsed()
    );
    assert!(status.success(), "{status}");
    assert!(exit_after < Duration::from_secs(3), "{exit_after:?}");
}

#[tokio::test]
async fn sigterm_sends_new_clients_to_the_alternate_server_and_stops_at_the_drain_timeout() {
    let alternate: SocketAddr = "203.0.113.8:3478".parse().unwrap();
    let mut rendez = Rendez::start(
        "drain-timeout",
        &setup()
            .top("drain-timeout = \"1s\"")
            .top(&format!("alternate-servers = [\"{alternate}\"]"))
            .users(&[ALICE, BOB]),
    )
    .await;
    // Made just before SIGTERM, over UDP and TCP (the UDP workers and the stream shard).
    let mut udp = TurnClient::new(Conn::udp(rendez.udp).await, ALICE.0, ALICE.1);
    let udp_path = RelayPath::open(&mut udp).await;
    let tcp_stream = TcpStream::connect(rendez.udp).await.unwrap();
    let mut tcp = TurnClient::new(Conn::stream(tcp_stream), ALICE.0, ALICE.1);
    let tcp_path = RelayPath::open(&mut tcp).await;

    let terminated = Instant::now();
    rendez.signal(libc::SIGTERM);
    rendez.wait_for_log("draining", 1).await;
    let mut bob = TurnClient::new(Conn::udp(rendez.udp).await, BOB.0, BOB.1);
    let response = bob.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(error_of(&response), Some(300));
    let m = Message::parse(&response).unwrap();
    let value = m
        .attribute(AttrType::ALTERNATE_SERVER)
        .expect("ALTERNATE-SERVER");
    assert_eq!(plain_address(value), alternate);
    udp_path.assert_relays(&mut udp, b"live").await;
    tcp_path.assert_relays(&mut tcp, b"live").await;

    // The allocations are still live: the process waits out drain-timeout, then exits 0.
    let status = rendez.wait_for_exit(Duration::from_secs(10));
    let exit_after = terminated.elapsed();
    eprintln!(
        "drain: exit {exit_after:?} after SIGTERM with an allocation left (drain-timeout 1s)"
    );
    assert!(status.success(), "{status}");
    assert!(
        (Duration::from_secs(1)..Duration::from_secs(3)).contains(&exit_after),
        "{exit_after:?}"
    );
}

#[tokio::test]
async fn a_second_sigterm_exits_at_once() {
    let mut rendez = Rendez::start("drain-twice", &setup().top("drain-timeout = \"30s\"")).await;
    let mut alice = TurnClient::new(Conn::udp(rendez.udp).await, ALICE.0, ALICE.1);
    assert!(alice.try_allocate().await.is_ok());
    rendez.signal(libc::SIGTERM);
    rendez.wait_for_log("draining", 1).await;

    let second = Instant::now();
    rendez.signal(libc::SIGTERM);
    let status = rendez.wait_for_exit(Duration::from_secs(10));
    let exit_after = second.elapsed();
    eprintln!("drain: exit {exit_after:?} after the second SIGTERM (drain-timeout 30s)");
    assert!(status.success(), "{status}");
    assert!(exit_after < Duration::from_secs(2), "{exit_after:?}");
}

// ================================================================ helpers

/// The relay ports of every test server here.
const RELAY_PORTS: std::ops::RangeInclusive<u16> = 15000..=15999;

/// A test server's configuration, built from parts (TOML allows each table only once).
#[derive(Clone)]
struct Setup {
    workers: usize,
    /// More top-level keys, one per line.
    top: String,
    /// `tls-listen` and `[tls]`, or nothing.
    tls: String,
    secrets: Vec<String>,
    /// Static users: name and password.
    users: Vec<(String, String)>,
    /// Lines of `[limits]`.
    limits: String,
    /// Lines of `[signal]`; signaling is off without them.
    signal: Option<String>,
}

/// One UDP worker, alice as the only user, loopback peers allowed.
fn setup() -> Setup {
    Setup {
        workers: 1,
        top: String::new(),
        tls: String::new(),
        secrets: Vec::new(),
        users: Vec::new(),
        limits: String::new(),
        signal: None,
    }
    .users(&[ALICE])
}

impl Setup {
    fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    fn top(mut self, line: &str) -> Self {
        self.top.push_str(line);
        self.top.push('\n');
        self
    }

    fn tls(self, cert: &TestCert) -> Self {
        self.tls_files(&cert.cert_path(), &cert.key_path())
    }

    fn tls_files(mut self, cert: &Path, key: &Path) -> Self {
        self.tls = tls_config(cert, key);
        self
    }

    fn secrets(mut self, secrets: &[&str]) -> Self {
        self.secrets = secrets.iter().map(|s| s.to_string()).collect();
        self
    }

    fn users(mut self, users: &[(&str, &str)]) -> Self {
        self.users = users
            .iter()
            .map(|(name, password)| (name.to_string(), password.to_string()))
            .collect();
        self
    }

    fn limits(mut self, line: &str) -> Self {
        self.limits.push_str(line);
        self.limits.push('\n');
        self
    }

    fn signal(mut self, lines: &str) -> Self {
        self.signal = Some(lines.into());
        self
    }

    fn toml(&self) -> String {
        let users: String = self
            .users
            .iter()
            .map(|(name, password)| {
                format!("[[auth.users]]\nname = \"{name}\"\npassword = \"{password}\"\n")
            })
            .collect();
        format!(
            "realm = \"rendez.test\"\nlisten = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n\
             relay-ports = \"{}-{}\"\nworkers = {}\n{}{}\
             [auth]\nsecrets = {:?}\n{users}\
             [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
             [limits]\n{}\
             [signal]\n{}\n",
            RELAY_PORTS.start(),
            RELAY_PORTS.end(),
            self.workers,
            self.top,
            self.tls,
            self.secrets,
            self.limits,
            self.signal.as_deref().unwrap_or("enabled = false"),
        )
    }

    fn config(&self) -> rendez::Config {
        rendez::Config::from_toml(&self.toml()).unwrap_or_else(|e| panic!("{e}:\n{}", self.toml()))
    }

    async fn start(&self) -> rendez::Handle {
        rendez::start(self.config()).await.expect("server starts")
    }
}

fn mint(secret: &str, name: &str, ttl_secs: u64) -> rendez::credential::Credential {
    let expires_at = SystemTime::now() + Duration::from_secs(ttl_secs);
    rendez::credential::mint(secret, name, expires_at)
}

async fn udp_client(server: &rendez::Handle, (user, password): (&str, &str)) -> TurnClient {
    TurnClient::new(Conn::udp(server.udp_addrs()[0]).await, user, password)
}

async fn udp_client_from(
    ip: &str,
    server: &rendez::Handle,
    (user, password): (&str, &str),
) -> TurnClient {
    let local: IpAddr = ip.parse().unwrap();
    TurnClient::new(
        Conn::udp_from(local, server.udp_addrs()[0]).await,
        user,
        password,
    )
}

async fn tcp_client(server: &rendez::Handle, (user, password): (&str, &str)) -> TurnClient {
    let stream = TcpStream::connect(server.tcp_addrs()[0]).await.unwrap();
    TurnClient::new(Conn::stream(stream), user, password)
}

/// The server's counters once `done` holds for them, or as they are after a second.
async fn stats_when(server: &rendez::Handle, done: impl Fn(&Stats) -> bool) -> Stats {
    eventually(|| server.stats(), done).await
}

/// What `read` returns once `done` holds for it, or after a second: shards publish their
/// figures up to 100 ms late.
async fn eventually<T>(read: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let figures = read();
        if done(&figures) || Instant::now() >= deadline {
            return figures;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Quota refusals: per user, per address, total.
fn refusals(stats: &Stats) -> [u64; 3] {
    QuotaExceeded::ALL.map(|quota| stats.quota_refusals(quota))
}

/// A 28-byte Allocate without credentials: what a reflection attack sends.
fn unauthenticated_allocate(n: usize) -> Vec<u8> {
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&(n as u64).to_be_bytes());
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId(tid));
    b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let bytes = b.finish();
    assert_eq!(bytes.len(), 28);
    bytes
}

/// Datagrams and bytes arriving at `socket` until it has been quiet for 300 ms, for at
/// most `limit`.
async fn received_until_quiet(socket: &UdpSocket, limit: Duration) -> (usize, usize) {
    let deadline = Instant::now() + limit;
    let (mut datagrams, mut bytes) = (0, 0);
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                datagrams += 1;
                bytes += len;
            }
            _ => break,
        }
    }
    (datagrams, bytes)
}

/// Datagrams each way in the bandwidth test: two seconds at five times the rate.
const PACKETS_OFFERED: usize = 500;

/// Sends `datagram` [`PACKETS_OFFERED`] times, paced at five times `rate` bytes per second;
/// returns how long the sending took.
async fn offer_at_five_times(
    from: &UdpSocket,
    to: SocketAddr,
    datagram: &[u8],
    rate: u64,
) -> Duration {
    let per_second = 5 * rate as usize / datagram.len();
    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second as u32);
    let began = Instant::now();
    for _ in 0..PACKETS_OFFERED {
        tick.tick().await;
        from.send_to(datagram, to).await.unwrap();
    }
    began.elapsed()
}

/// An address attribute without XOR (ALTERNATE-SERVER, RFC 8489 §14.1), decoded here
/// independently of the server's encoder.
fn plain_address(value: &[u8]) -> SocketAddr {
    let port = u16::from_be_bytes([value[2], value[3]]);
    match value[1] {
        0x01 => SocketAddr::from((<[u8; 4]>::try_from(&value[4..8]).unwrap(), port)),
        0x02 => SocketAddr::from((<[u8; 16]>::try_from(&value[4..20]).unwrap(), port)),
        family => panic!("address family {family}"),
    }
}

const CHANNEL: u16 = 0x4000;

/// A peer on loopback and a channel to it from one allocation.
struct RelayPath {
    peer: UdpSocket,
    relayed: SocketAddr,
}

impl RelayPath {
    /// Allocates for `client` and binds a channel to a new peer.
    async fn open(client: &mut TurnClient) -> Self {
        let relayed = client.allocate(&[]).await[0];
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let bind = [channel(CHANNEL), xor_peer(peer.local_addr().unwrap())];
        let response = client.request(Method::CHANNEL_BIND, &bind).await;
        assert_eq!(class_of(&response), Class::Success);
        Self { peer, relayed }
    }

    /// Four bytes client → peer, and four back (no padding on any transport).
    async fn assert_relays(&self, client: &mut TurnClient, tag: &[u8; 4]) {
        let mut frame = ChannelData::header(CHANNEL, 4).to_vec();
        frame.extend_from_slice(tag);
        client.conn.send(&frame).await;
        assert_eq!(recv_from(&self.peer).await, (tag.to_vec(), self.relayed));
        let answer: Vec<u8> = tag.iter().rev().copied().collect();
        self.peer.send_to(&answer, self.relayed).await.unwrap();
        let mut expected = ChannelData::header(CHANNEL, 4).to_vec();
        expected.extend_from_slice(&answer);
        assert_eq!(client.conn.recv().await, expected);
    }
}

/// The TURN username and password in a welcome's `iceServers`.
fn turn_credential(welcome: &Value) -> (String, String) {
    let turn = welcome["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|server| server.get("username").is_some())
        .unwrap_or_else(|| panic!("no TURN server in {welcome}"));
    let text = |key: &str| turn[key].as_str().unwrap().to_owned();
    (text("username"), text("credential"))
}

/// The welcome's TURN credential expires `ttl_secs` from now (`EXPIRY:NAME`).
fn assert_expires_in(welcome: &Value, ttl_secs: u64) {
    let (username, _) = turn_credential(welcome);
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + ttl_secs - 5..=now + ttl_secs + 1).contains(&expiry),
        "{username} should expire {ttl_secs}s after {now}"
    );
}

/// A WebSocket signaling client, over TCP or TLS.
struct SignalClient {
    socket: tokio_tungstenite::WebSocketStream<Box<dyn Duplex>>,
}

impl SignalClient {
    async fn connect(server: &rendez::Handle) -> Self {
        let addr = server.signal_addr().unwrap();
        let stream = TcpStream::connect(addr).await.unwrap();
        Self::over(&format!("ws://{addr}/ws"), Box::new(stream)).await
    }

    /// Over TLS: with `[tls]` the page and signaling are served over HTTPS.
    async fn connect_tls(server: &rendez::Handle, cert: &TestCert) -> Self {
        let addr = server.signal_addr().unwrap();
        let stream = cert.connect(addr, None).await;
        Self::over(&format!("wss://{addr}/ws"), Box::new(stream)).await
    }

    async fn over(url: &str, stream: Box<dyn Duplex>) -> Self {
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
            .await
            .expect("WebSocket handshake timed out")
            .expect("WebSocket handshake");
        Self { socket }
    }

    async fn send(&mut self, message: Value) {
        let text = tungstenite::Message::Text(message.to_string().into());
        self.socket.send(text).await.unwrap();
    }

    /// The next JSON message.
    async fn recv(&mut self) -> Value {
        let next_text = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(tungstenite::Message::Text(text))) => {
                        return serde_json::from_str(text.as_str()).unwrap()
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("the session ended: {other:?}"),
                }
            }
        };
        tokio::time::timeout(WAIT, next_text)
            .await
            .expect("no message from the server")
    }

    /// The next message of `kind`, skipping at most a few others.
    async fn recv_type(&mut self, kind: &str) -> Value {
        for _ in 0..10 {
            let message = self.recv().await;
            if message["type"] == kind {
                return message;
            }
        }
        panic!("no {kind} among the next ten messages")
    }

    async fn join(&mut self, room: &str, name: &str) -> Value {
        self.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        let welcome = self.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        welcome
    }
}

/// `rendez serve` with a config file this test writes, logging JSON to a file.
struct Rendez {
    process: ServerProcess,
    udp: SocketAddr,
}

/// Longest wait for a log line.
const LOG_WAIT: Duration = Duration::from_secs(10);

impl Rendez {
    /// Starts the binary and waits until it serves.
    async fn start(name: &str, setup: &Setup) -> Self {
        let process = ServerProcess::spawn(name, &with_json_log(setup), &[]);
        let mut rendez = Self {
            process,
            udp: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        rendez.wait_for_log("rendez serving STUN/TURN", 1).await;
        rendez.udp = rendez
            .process
            .logged_udp_addr()
            .expect("logged UDP listener");
        rendez
    }

    fn write_config(&self, setup: &Setup) {
        self.process.write_config(&with_json_log(setup));
    }

    fn signal(&self, signal: libc::c_int) {
        self.process.signal(signal);
    }

    fn count_log(&self, text: &str) -> usize {
        self.process
            .json_log()
            .iter()
            .filter(|line| message_of(line).contains(text))
            .count()
    }

    /// The `nth` (from 1) log line whose message contains `text`, once it is written.
    async fn wait_for_log(&mut self, text: &str, nth: usize) -> Value {
        let deadline = Instant::now() + LOG_WAIT;
        while Instant::now() < deadline {
            let found = self
                .process
                .json_log()
                .into_iter()
                .filter(|line| message_of(line).contains(text))
                .nth(nth - 1);
            if let Some(line) = found {
                return line;
            }
            if let Some(status) = self.process.try_wait() {
                panic!(
                    "rendez exited ({status}) before logging {text:?}:\n{}",
                    self.process.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no {text:?} within {LOG_WAIT:?}:\n{}", self.process.log())
    }

    fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        self.process.wait_for_exit(limit)
    }
}

fn with_json_log(setup: &Setup) -> String {
    setup.clone().top("log-format = \"json\"").toml()
}
