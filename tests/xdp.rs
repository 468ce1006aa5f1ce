//! The XDP fast path (issue 15), end to end: the real `rendez` binary in a "server" network
//! namespace with `[xdp] interface` on its end of a veth pair, and a TURN client and peers
//! in a "world" namespace at the other end. Proves that bound channels are relayed by the
//! kernel (the fast path's counters rise while the sockets path relays nothing), exactly,
//! in both directions over IPv4 and IPv6, that everything else still works through user
//! space, that entries go when the core ends them, and that the program goes with the
//! process. Then clients and peers on two sides of the server, behind two interfaces:
//! with the program on both, datagrams cross between them in the kernel (a redirect);
//! with it on the clients' side only, they take the sockets path. And STUN Binding requests
//! to the listen addresses are answered by the kernel, byte for byte as user space answers
//! them, while everything user space must judge still goes up.
//!
//! Needs root (namespaces, XDP); skipped with the reason printed otherwise, unless
//! `RENDEZ_REQUIRE_XDP=1` (CI), which turns a skip into a failure.

#![cfg(feature = "xdp")]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{metric_sum, scrape_metrics, ServerProcess};
use common::{channel, error_of, family, send_indication, xor_peer, Conn, TurnClient, WAIT};
use rendez::stun::{
    AttrType, ChannelData, Class, IntegrityAlgorithm, Message, MessageBuilder, Method,
    TransactionId,
};
use tokio::net::UdpSocket;

const SERVER_V4: &str = "10.77.0.1";
const CLIENT_V4: &str = "10.77.0.2";
const PEER_V4: &str = "10.77.0.3";
const OTHER_V4: &str = "10.77.0.4";
const SERVER_V6: &str = "fd77::1";
const CLIENT_V6: &str = "fd77::2";
const PEER_V6: &str = "fd77::3";
const OTHER_V6: &str = "fd77::4";
const TURN_PORT: u16 = 3478;

/// One IP family's addresses where clients and peers are on two sides of the server: the
/// client's subnet behind one of its interfaces, the peer's behind the other, each
/// reaching the other's only through the server.
struct TwoSides {
    clients: Side,
    peers: Side,
    prefix: u8,
}

/// One side's subnet: the server's address on it, and the host's (a client or a peer).
struct Side {
    server: &'static str,
    host: &'static str,
    net: &'static str,
}

const TWO_SIDES_V4: TwoSides = TwoSides {
    clients: Side {
        server: "10.78.1.1",
        host: "10.78.1.2",
        net: "10.78.1.0/24",
    },
    peers: Side {
        server: "10.78.2.1",
        host: "10.78.2.2",
        net: "10.78.2.0/24",
    },
    prefix: 24,
};

const TWO_SIDES_V6: TwoSides = TwoSides {
    clients: Side {
        server: "fd78:1::1",
        host: "fd78:1::2",
        net: "fd78:1::/64",
    },
    peers: Side {
        server: "fd78:2::1",
        host: "fd78:2::2",
        net: "fd78:2::/64",
    },
    prefix: 64,
};

// ---------------------------------------------------------------- the tests

#[tokio::test]
async fn bound_channels_are_relayed_in_the_kernel_both_ways_over_ipv4_and_ipv6() {
    let Some(net) = Topology::create("relay") else {
        return;
    };
    let mut server = net.start_rendez("relay", "");
    net.enter_world();
    let metrics = server.metrics();
    let mut relayed_here = 0;
    for (client_ip, peer_ip, other_ip, server_ip, v6) in [
        (CLIENT_V4, PEER_V4, OTHER_V4, SERVER_V4, false),
        (CLIENT_V6, PEER_V6, OTHER_V6, SERVER_V6, true),
    ] {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let server_addr = SocketAddr::new(ip(server_ip), TURN_PORT);
        let mut client = TurnClient::new(
            Conn::udp_from(ip(client_ip), server_addr).await,
            "alice",
            "wonderland",
        );
        let family_attr = family(AttrType::REQUESTED_ADDRESS_FAMILY, if v6 { 2 } else { 1 });
        let relay = client.allocate(&[family_attr]).await[0];
        let peer = UdpSocket::bind((ip(peer_ip), 0)).await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        bind_channel(&mut client, 0x4001, peer_addr).await;

        // Through user space first: a Send indication (which also resolves the peer's
        // link-layer address in the server's namespace, as real traffic would).
        client
            .conn
            .send(&send_indication(peer_addr, b"via sockets"))
            .await;
        assert_eq!(recv(&peer).await, (b"via sockets".to_vec(), relay));
        relayed_here += 1;

        // ChannelData both ways, odd lengths and padding included: exact payloads arrive.
        let lengths = [1usize, 2, 3, 5, 7, 64, 99, 100, 333, 1001, 1200];
        for (i, &len) in lengths.iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|b| (b * 7 + i) as u8).collect();
            client
                .conn
                .send(&channel_data(0x4001, &payload, true))
                .await;
            assert_eq!(
                recv(&peer).await,
                (payload.clone(), relay),
                "{len} bytes to the peer"
            );
            peer.send_to(&payload, relay).await.unwrap();
            let framed = client.conn.recv().await;
            let expected = {
                let mut bytes = ChannelData::header(0x4001, len as u16).to_vec();
                bytes.extend_from_slice(&payload);
                bytes
            };
            assert_eq!(framed, expected, "{len} bytes to the client, unpadded");
        }

        // What the fast path must leave to user space, and user space handles.
        // The permitted peer IP on another port: a Data indication.
        let same_ip = UdpSocket::bind((ip(peer_ip), 0)).await.unwrap();
        same_ip.send_to(b"other port", relay).await.unwrap();
        expect_data_indication(&mut client, b"other port").await;
        relayed_here += 1;
        // An IP without a permission: nothing, whichever way.
        let stranger = UdpSocket::bind((ip(other_ip), 0)).await.unwrap();
        stranger.send_to(b"let me in", relay).await.unwrap();
        client
            .conn
            .send(&channel_data(0x4002, b"unbound", false))
            .await;
        client
            .conn
            .send(&send_indication(
                stranger.local_addr().unwrap(),
                b"no permission",
            ))
            .await;
        assert_silent(&stranger).await;
        assert_nothing_for(&mut client).await;

        // Counted: the kernel relayed every ChannelData and user space only the rest.
        let sent = lengths.len() as f64;
        let v = if v6 { 2.0 } else { 1.0 };
        let scrape = wait_for_metric(metrics, "rendez_xdp_relayed_packets_total", 2.0 * sent * v);
        let to_peer = sample(&scrape, "rendez_xdp_relayed_packets_total{shard", "to_peer");
        assert_eq!(to_peer, sent * v, "{scrape}");
        let all_to_peer = sample(
            &scrape,
            "rendez_relayed_packets_total{shard",
            "transport=\"udp\",direction=\"to_peer\"",
        );
        let all_to_client = sample(
            &scrape,
            "rendez_relayed_packets_total{shard",
            "transport=\"udp\",direction=\"to_client\"",
        );
        assert_eq!(
            all_to_peer + all_to_client,
            2.0 * sent * v + f64::from(relayed_here),
            "user space relayed only the Send and Data indications: {scrape}"
        );
        assert_eq!(metric_sum(&scrape, "rendez_xdp_channels"), v);
        assert_eq!(metric_sum(&scrape, "rendez_xdp_attached"), 1.0);
    }
    assert!(server.log().contains("XDP fast path attached"));
    server.kill();
}

#[tokio::test]
async fn a_deleted_or_expired_allocation_leaves_the_fast_path_at_once() {
    let Some(net) = Topology::create("expiry") else {
        return;
    };
    let mut server = net.start_rendez(
        "expiry",
        "allocation-lifetime = \"3s\"\nmax-allocation-lifetime = \"3s\"\n",
    );
    net.enter_world();
    let server_addr = SocketAddr::new(SERVER_V4.parse().unwrap(), TURN_PORT);
    let peer = UdpSocket::bind((PEER_V4.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    for (round, deleted) in [true, false].into_iter().enumerate() {
        let mut client = TurnClient::new(
            Conn::udp_from(CLIENT_V4.parse().unwrap(), server_addr).await,
            "alice",
            "wonderland",
        );
        let relay = client.allocate(&[]).await[0];
        bind_channel(&mut client, 0x4001, peer_addr).await;
        // A Send indication through user space first resolves the peer's link-layer
        // address in the server's namespace (until then the program leaves packets to it).
        client.conn.send(&send_indication(peer_addr, b"warm")).await;
        assert_eq!(recv(&peer).await, (b"warm".to_vec(), relay));
        client.conn.send(&channel_data(0x4001, b"on", false)).await;
        assert_eq!(recv(&peer).await, (b"on".to_vec(), relay));
        // "on" went through the kernel: what stops next is the fast path.
        let relayed_by_kernel = (round + 1) as f64;
        let scrape = wait_for_metric(
            server.metrics(),
            "rendez_xdp_relayed_packets_total",
            relayed_by_kernel,
        );
        let kernel = metric_sum(&scrape, "rendez_xdp_relayed_packets_total");
        assert_eq!(kernel, relayed_by_kernel, "{scrape}");
        assert_eq!(metric_sum(&scrape, "rendez_xdp_channels"), 1.0, "{scrape}");
        if deleted {
            // The entry is removed before the response leaves: right after it, nothing.
            assert_eq!(client.refresh(0).await, None);
        } else {
            // The core's timer ends the allocation: nobody sends anything to notice.
            tokio::time::sleep(Duration::from_millis(3300)).await;
        }
        client.conn.send(&channel_data(0x4001, b"off", false)).await;
        peer.send_to(b"off", relay).await.unwrap();
        assert_silent(&peer).await;
        assert_nothing_for(&mut client).await;
    }
    let scrape = scrape_metrics(server.metrics());
    assert_eq!(metric_sum(&scrape, "rendez_xdp_channels"), 0.0, "{scrape}");
    server.kill();
}

/// How much faster rendez's clock runs in
/// `expired_permissions_and_channels_leave_the_fast_path`.
const FAST_CLOCK: u32 = 30;

/// `secs` seconds of a clock `FAST_CLOCK` times as fast.
fn on_fast_clock(secs: u64) -> Duration {
    Duration::from_secs(secs) / FAST_CLOCK
}

/// A permission lasts 300 s and a channel 600 s (RFC 8656), and what the kernel relays
/// never tells user space that they are in use: the core's own timers must take them out
/// of the fast path. rendez runs on a clock 30 times as fast (libfaketime), so ten minutes
/// of its time pass in 20 s.
#[tokio::test]
async fn expired_permissions_and_channels_leave_the_fast_path() {
    let Some(faketime) = common::tools::libfaketime() else {
        return;
    };
    let Some(net) = Topology::create("permission") else {
        return;
    };
    // The allocation outlives both (the default, 600 s, would end with the channel).
    let mut server = net.start_rendez_on_fast_clock(
        "permission",
        "allocation-lifetime = \"1h\"\nmax-allocation-lifetime = \"1h\"\n",
        &faketime,
    );
    net.enter_world();
    let server_addr = SocketAddr::new(SERVER_V4.parse().unwrap(), TURN_PORT);
    let peer = UdpSocket::bind((PEER_V4.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut client = TurnClient::new(
        Conn::udp_from(CLIENT_V4.parse().unwrap(), server_addr).await,
        "alice",
        "wonderland",
    );
    let relay = client.allocate(&[]).await[0];
    bind_channel(&mut client, 0x4001, peer_addr).await;
    let bound = tokio::time::Instant::now();
    client.conn.send(&send_indication(peer_addr, b"warm")).await;
    assert_eq!(recv(&peer).await, (b"warm".to_vec(), relay));
    client.conn.send(&channel_data(0x4001, b"on", false)).await;
    assert_eq!(recv(&peer).await, (b"on".to_vec(), relay));
    let kernel = |scrape: &str| metric_sum(scrape, "rendez_xdp_relayed_packets_total");
    let scrape = wait_for_metric(server.metrics(), "rendez_xdp_relayed_packets_total", 1.0);
    assert_eq!(
        kernel(&scrape),
        1.0,
        "\"on\" went through the kernel: {scrape}"
    );

    // 330 s on: the permission has expired, the channel has not. Nothing passes.
    tokio::time::sleep_until(bound + on_fast_clock(330)).await;
    client
        .conn
        .send(&channel_data(0x4001, b"stale", false))
        .await;
    peer.send_to(b"stale", relay).await.unwrap();
    assert_silent(&peer).await;
    assert_nothing_for(&mut client).await;
    let scrape = scrape_metrics(server.metrics());
    assert_eq!(metric_sum(&scrape, "rendez_xdp_channels"), 0.0, "{scrape}");

    // A new permission puts the channel, still bound, back on the fast path.
    let response = client
        .request(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)])
        .await;
    assert_eq!(common::class_of(&response), Class::Success);
    // The worker writes the entry while handling that request; until it has, datagrams on
    // the channel take the sockets path, which would be right but is not what this checks.
    let scrape = wait_for_metric(server.metrics(), "rendez_xdp_channels", 1.0);
    assert_eq!(metric_sum(&scrape, "rendez_xdp_channels"), 1.0, "{scrape}");
    client
        .conn
        .send(&channel_data(0x4001, b"again", false))
        .await;
    assert_eq!(recv(&peer).await, (b"again".to_vec(), relay));
    peer.send_to(b"back", relay).await.unwrap();
    assert_eq!(
        client.conn.recv().await,
        channel_data(0x4001, b"back", false)
    );
    let scrape = wait_for_metric(server.metrics(), "rendez_xdp_relayed_packets_total", 3.0);
    assert_eq!(
        kernel(&scrape),
        3.0,
        "both went through the kernel: {scrape}"
    );

    // 630 s on: the channel has expired, the permission (renewed at 330 s) has not. The
    // channel number means nothing now, and the peer arrives as a Data indication.
    tokio::time::sleep_until(bound + on_fast_clock(630)).await;
    client
        .conn
        .send(&channel_data(0x4001, b"unbound", false))
        .await;
    assert_silent(&peer).await;
    peer.send_to(b"indicated", relay).await.unwrap();
    expect_data_indication(&mut client, b"indicated").await;
    let scrape = scrape_metrics(server.metrics());
    assert_eq!(metric_sum(&scrape, "rendez_xdp_channels"), 0.0, "{scrape}");
    assert_eq!(
        kernel(&scrape),
        3.0,
        "nothing more through the kernel: {scrape}"
    );
    server.kill();
}

#[tokio::test]
async fn the_program_goes_with_the_process_and_is_never_replaced() {
    let Some(net) = Topology::create("attach") else {
        return;
    };
    let mut first = net.start_rendez("attach-1", "");
    assert!(
        net.server_link().contains("prog/xdp"),
        "{}",
        net.server_link()
    );

    // A second server on the same interface is refused, loudly.
    let mut second = net.spawn_rendez("attach-2", "", 3479);
    let status = second.wait_for_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        second.log().contains("already has an XDP program"),
        "{}",
        second.log()
    );

    // SIGKILL: no chance to clean up, and still nothing is left attached.
    first.kill();
    net.wait_until_detached();

    // SIGTERM, the orderly way.
    let mut third = net.start_rendez("attach-3", "");
    assert!(net.server_link().contains("prog/xdp"));
    third.process.terminate();
    third.process.wait_for_exit(Duration::from_secs(10));
    net.wait_until_detached();
}

#[tokio::test]
async fn channels_between_two_interfaces_are_redirected_in_the_kernel() {
    let Some(net) = TwoSided::create("cross") else {
        return;
    };
    let mut server = net.start_rendez("cross", &[&net.server_client_side, &net.server_peer_side]);
    let log = server.log();
    assert!(
        log.contains(&format!(
            "{} (native), {} (native)",
            net.server_client_side, net.server_peer_side
        )),
        "{log}"
    );
    let mut expected_kernel = 0.0;
    let mut expected_all = 0.0;
    for sides in [&TWO_SIDES_V4, &TWO_SIDES_V6] {
        let (sent, warm) = net.relay_across(sides).await;
        expected_kernel += sent;
        expected_all += 2.0 * sent + warm;
        // Every ChannelData crossed in the kernel, both ways; user space relayed only the
        // warm-up Send indication.
        let scrape = wait_for_metric(
            server.metrics(),
            "rendez_xdp_relayed_packets_total",
            2.0 * expected_kernel,
        );
        let to_peer = sample(&scrape, "rendez_xdp_relayed_packets_total{shard", "to_peer");
        let to_client = sample(
            &scrape,
            "rendez_xdp_relayed_packets_total{shard",
            "to_client",
        );
        assert_eq!(
            (to_peer, to_client),
            (expected_kernel, expected_kernel),
            "{scrape}"
        );
        assert_eq!(
            metric_sum(&scrape, "rendez_relayed_packets_total"),
            expected_all,
            "user space relayed only the Send indications: {scrape}"
        );
    }
    server.kill();
}

#[tokio::test]
async fn a_peer_behind_an_interface_without_the_program_is_relayed_through_sockets() {
    let Some(net) = TwoSided::create("one-sided") else {
        return;
    };
    // The program on the clients' side only. The peer's end of the other veth still runs
    // the pass program, so a redirect there would arrive: only the program's refusal to
    // redirect into an interface it is not attached to keeps these on the sockets path.
    let mut server = net.start_rendez("one-sided", &[&net.server_client_side]);
    let (sent, warm) = net.relay_across(&TWO_SIDES_V4).await;
    let expected_all = 2.0 * sent + warm;
    wait_for_metric(
        server.metrics(),
        "rendez_relayed_packets_total",
        expected_all,
    );
    // The kernel's counters are read back once a second: long enough for any to show.
    std::thread::sleep(Duration::from_millis(1500));
    let scrape = scrape_metrics(server.metrics());
    assert_eq!(
        metric_sum(&scrape, "rendez_xdp_relayed_packets_total"),
        0.0,
        "{scrape}"
    );
    assert_eq!(
        metric_sum(&scrape, "rendez_relayed_packets_total"),
        expected_all,
        "{scrape}"
    );
    assert_eq!(metric_sum(&scrape, "rendez_xdp_attached"), 1.0, "{scrape}");

    // A second rendez gets the free peer side, then is refused the clients' side (taken):
    // it stops, naming the reason, and leaves the peer side without a program.
    let sides = [net.server_peer_side.as_str(), &net.server_client_side];
    let mut second = net.spawn_rendez("one-sided-2", &sides, TURN_PORT + 1);
    assert!(!second.wait_for_exit(Duration::from_secs(10)).success());
    assert!(
        second.log().contains("already has an XDP program"),
        "{}",
        second.log()
    );
    assert!(!net.link(&net.server_peer_side).contains("prog/xdp"));
    assert!(net.link(&net.server_client_side).contains("prog/xdp"));
    server.kill();
}

#[tokio::test]
async fn binding_requests_are_answered_in_the_kernel_byte_for_byte_as_user_space_would() {
    let Some(net) = Topology::create("binding") else {
        return;
    };
    // One client socket per family for both servers: the mapped address is the same.
    net.enter_world();
    let client_v4 = UdpSocket::bind((CLIENT_V4.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let client_v6 = UdpSocket::bind((CLIENT_V6.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let requests = binding_requests();
    // Without SOFTWARE, and with one of an odd length (its padding is written too).
    for software in [None, Some("rendez-xdp-test")] {
        let answers = answers_both_ways(&net, &client_v4, &client_v6, &requests, software).await;
        let [kernel, sockets] = <[Vec<Vec<u8>>; 2]>::try_from(answers).unwrap();
        for (i, (kernel, sockets)) in kernel.iter().zip(&sockets).enumerate() {
            assert_eq!(kernel, sockets, "response {i} differs ({software:?})");
            let m = Message::parse(kernel).expect("a valid response");
            assert_eq!((m.class(), m.method()), (Class::Success, Method::BINDING));
            assert!(m.attribute(AttrType::XOR_MAPPED_ADDRESS).is_some());
            assert_eq!(m.attribute(AttrType::SOFTWARE), software.map(str::as_bytes));
            assert_eq!(
                m.has_fingerprint(),
                i % requests.len() >= 2,
                "FINGERPRINT when asked"
            );
        }
    }
}

/// The answers to `requests` from each client, first from a rendez whose kernel answers
/// them, then from one whose user space does (`binding = false`), each checked to be
/// counted where it was made.
async fn answers_both_ways(
    net: &Topology,
    client_v4: &UdpSocket,
    client_v6: &UdpSocket,
    requests: &[Vec<u8>],
    software: Option<&str>,
) -> Vec<Vec<Vec<u8>>> {
    let software = software.map_or(String::new(), |s| format!("software = \"{s}\"\n"));
    let mut answers = Vec::new();
    for (fast, xdp_extra) in [(true, ""), (false, "binding = false\n")] {
        let mut server = net.start_rendez_with("binding", &software, xdp_extra);
        let metrics = server.metrics();
        let mut got = Vec::new();
        for (client, server_ip) in [(client_v4, SERVER_V4), (client_v6, SERVER_V6)] {
            let server_addr = SocketAddr::new(server_ip.parse().unwrap(), TURN_PORT);
            // A classic (RFC 3489) Binding goes up, and its answer resolves the client's
            // link-layer address in the server's namespace, as real traffic would.
            client
                .send_to(&classic_binding(), server_addr)
                .await
                .unwrap();
            recv(client).await;
            // The workers publish their counters every 100 ms.
            std::thread::sleep(Duration::from_millis(300));
            let before = scrape_metrics(metrics);
            for request in requests {
                client.send_to(request, server_addr).await.unwrap();
                let (response, from) = recv(client).await;
                assert_eq!(from, server_addr, "answered from the address asked");
                got.push(response);
            }
            // The workers publish their counters every 100 ms.
            std::thread::sleep(Duration::from_millis(300));
            let after = scrape_metrics(metrics);
            let n = requests.len() as f64;
            let in_kernel = |scrape: &str| metric_sum(scrape, "rendez_xdp_binding_responses_total");
            let by_user_space =
                |scrape: &str| sample(scrape, "rendez_requests_total{", "method=\"binding\"");
            let (kernel, user) = if fast { (n, 0.0) } else { (0.0, n) };
            assert_eq!(in_kernel(&after) - in_kernel(&before), kernel, "{after}");
            assert_eq!(
                by_user_space(&after) - by_user_space(&before),
                user,
                "{after}"
            );
        }
        answers.push(got);
        server.kill();
    }
    answers
}

#[tokio::test]
async fn bindings_the_kernel_may_not_answer_get_the_sockets_paths_answer() {
    let Some(net) = Topology::create("up") else {
        return;
    };
    // SOFTWARE of 40 bytes: a minimal request's answer would be over twice its size.
    let software = format!("software = \"{}\"\n", "s".repeat(40));
    let mut server = net.start_rendez("binding-up", &software);
    net.enter_world();
    let metrics = server.metrics();
    let server_addr = SocketAddr::new(SERVER_V4.parse().unwrap(), TURN_PORT);
    let client = UdpSocket::bind((CLIENT_V4.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    client
        .send_to(&classic_binding(), server_addr)
        .await
        .unwrap();
    let (classic, _) = recv(&client).await;
    // RFC 3489's success, its transaction ID echoed whole, MAPPED-ADDRESS first.
    assert_eq!(&classic[..2], &[0x01, 0x01]);
    assert_eq!(&classic[4..20], &classic_binding()[4..20]);
    assert_eq!(&classic[20..22], &AttrType::MAPPED_ADDRESS.0.to_be_bytes());

    // A bad FINGERPRINT: user space drops it, so nothing comes back.
    let mut bad = binding_with(2, |b| {
        b.add_fingerprint();
    });
    *bad.last_mut().unwrap() ^= 1;
    client.send_to(&bad, server_addr).await.unwrap();
    assert_silent(&client).await;
    // MESSAGE-INTEGRITY: Binding is not authenticated, user space answers it plainly.
    let signed = binding_with(3, |b| {
        b.add_integrity(IntegrityAlgorithm::Sha1, b"some key");
    });
    client.send_to(&signed, server_addr).await.unwrap();
    let (answer, _) = recv(&client).await;
    assert_eq!(Message::parse(&answer).unwrap().class(), Class::Success);
    // An unknown comprehension-required attribute: 420.
    let unknown = binding_with(4, |b| {
        b.add(AttrType(0x7777), b"what");
    });
    client.send_to(&unknown, server_addr).await.unwrap();
    let (answer, _) = recv(&client).await;
    assert_eq!(error_of(&answer), Some(420));
    // Every one of them went up: the kernel answered none.
    std::thread::sleep(Duration::from_millis(300));
    let scrape = scrape_metrics(metrics);
    assert_eq!(
        metric_sum(&scrape, "rendez_xdp_binding_responses_total"),
        0.0,
        "{scrape}"
    );
    let binding = |result: &str| {
        sample(
            &scrape,
            "rendez_requests_total{",
            &format!("method=\"binding\",result=\"{result}\""),
        )
    };
    assert_eq!(
        (binding("success"), binding("error")),
        (2.0, 1.0),
        "{scrape}"
    );

    // An answer over twice its request's size goes up (to `binding-per-ip`); the same
    // answer to a request carrying 40 bytes of its own is small enough for the kernel.
    let minimal = binding_with(6, |_| {});
    let carrying = binding_with(7, |b| {
        b.add_software(&"c".repeat(40));
    });
    for request in [&minimal, &carrying] {
        client.send_to(request, server_addr).await.unwrap();
        let (answer, _) = recv(&client).await;
        assert_eq!(Message::parse(&answer).unwrap().class(), Class::Success);
    }
    std::thread::sleep(Duration::from_millis(300));
    let scrape = scrape_metrics(metrics);
    let answered = |name: &str, label: &str| sample(&scrape, name, label);
    assert_eq!(
        (
            answered("rendez_xdp_binding_responses_total", ""),
            answered(
                "rendez_requests_total{",
                "method=\"binding\",result=\"success\""
            ),
        ),
        (1.0, 3.0),
        "{scrape}"
    );

    // A Binding request a peer sends to a relay port is data for the client: as ChannelData
    // on a bound channel (in the kernel), as a Data indication from another port.
    let mut turn = TurnClient::new(
        Conn::udp_from(CLIENT_V4.parse().unwrap(), server_addr).await,
        "alice",
        "wonderland",
    );
    let relay = turn.allocate(&[]).await[0];
    let peer = UdpSocket::bind((PEER_V4.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    bind_channel(&mut turn, 0x4001, peer.local_addr().unwrap()).await;
    turn.conn
        .send(&send_indication(peer.local_addr().unwrap(), b"warm"))
        .await;
    recv(&peer).await;
    // Small enough to be answered in the kernel, were it sent to a listen address.
    let request = binding_with(5, |b| {
        b.add_software(&"c".repeat(40));
    });
    peer.send_to(&request, relay).await.unwrap();
    let mut framed = ChannelData::header(0x4001, request.len() as u16).to_vec();
    framed.extend_from_slice(&request);
    assert_eq!(turn.conn.recv().await, framed);
    let other_port = UdpSocket::bind((PEER_V4.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    other_port.send_to(&request, relay).await.unwrap();
    expect_data_indication(&mut turn, &request).await;
    assert_silent(&peer).await;
    assert_silent(&other_port).await;
    let scrape = scrape_metrics(metrics);
    assert_eq!(
        metric_sum(&scrape, "rendez_xdp_binding_responses_total"),
        1.0,
        "{scrape}"
    );
    server.kill();
}

// ---------------------------------------------------------------- helpers

/// A server and a world namespace joined by a veth pair, removed when dropped.
struct Topology {
    server_ns: String,
    world_ns: String,
    server_if: String,
    /// The pass-everything program on the world end: a veth hands frames sent with
    /// XDP_TX only to a peer that runs an XDP program itself.
    _world_program: Option<aya::Ebpf>,
}

/// A running rendez in the server namespace.
struct Rendez {
    process: ServerProcess,
}

/// Whether the XDP tests can run here; says why not, or fails under RENDEZ_REQUIRE_XDP=1.
fn runnable_here() -> bool {
    let Err(reason) = can_run() else {
        return true;
    };
    assert!(
        std::env::var("RENDEZ_REQUIRE_XDP").as_deref() != Ok("1"),
        "RENDEZ_REQUIRE_XDP=1 but the XDP tests cannot run: {reason}"
    );
    eprintln!("skipped: {reason}");
    false
}

/// The part of a test's namespace and interface names that keeps them apart from other
/// processes and tests: this process and the first letter of `name`, which differs between
/// the tests (interface names have at most 15 bytes).
fn names_id(name: &str) -> String {
    format!("{}{}", std::process::id() % 100_000, &name[..1])
}

impl Topology {
    /// Both namespaces with their addresses, or `None` (after saying why) where this
    /// cannot run.
    fn create(name: &str) -> Option<Self> {
        if !runnable_here() {
            return None;
        }
        let id = names_id(name);
        let server_ns = format!("rxdp{id}s");
        let world_ns = format!("rxdp{id}w");
        let server_if = format!("rx{id}s");
        let world_if = format!("rx{id}w");
        ip(&["netns", "add", &server_ns]);
        // From here on, dropping removes what exists (and the veth with its namespaces).
        let mut topology = Topology {
            server_ns: server_ns.clone(),
            world_ns: world_ns.clone(),
            server_if: server_if.clone(),
            _world_program: None,
        };
        ip(&["netns", "add", &world_ns]);
        ip(&[
            "link", "add", &server_if, "netns", &server_ns, "type", "veth", "peer", "name",
            &world_if, "netns", &world_ns,
        ]);
        for (ns, dev, addrs) in [
            (&server_ns, &server_if, [SERVER_V4].as_slice()),
            (
                &world_ns,
                &world_if,
                [CLIENT_V4, PEER_V4, OTHER_V4].as_slice(),
            ),
        ] {
            for v4 in addrs {
                ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev]);
            }
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        let server_v6 = format!("{SERVER_V6}/64");
        ip(&[
            "-n", &server_ns, "addr", "add", &server_v6, "dev", &server_if, "nodad",
        ]);
        for v6 in [CLIENT_V6, PEER_V6, OTHER_V6] {
            ip(&[
                "-n",
                &world_ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                &world_if,
                "nodad",
            ]);
        }
        topology._world_program = Some(in_namespace(&world_ns, || attach_pass_program(&world_if)));
        // bpf_fib_lookup answers only where the kernel forwards (README says so too).
        in_namespace(&server_ns, || {
            for sysctl in [
                "/proc/sys/net/ipv4/conf/all/forwarding",
                "/proc/sys/net/ipv6/conf/all/forwarding",
            ] {
                std::fs::write(sysctl, "1").expect(sysctl);
            }
        });
        Some(topology)
    }

    /// rendez on the server's veth (JSON log, metrics on the server address), serving.
    fn start_rendez(&self, name: &str, extra: &str) -> Rendez {
        self.start_rendez_with(name, extra, "")
    }

    /// The same with `xdp_extra` in its `[xdp]` section.
    fn start_rendez_with(&self, name: &str, extra: &str, xdp_extra: &str) -> Rendez {
        Rendez::serving(self.spawn_rendez_with(name, extra, xdp_extra, TURN_PORT))
    }

    fn spawn_rendez(&self, name: &str, extra: &str, port: u16) -> ServerProcess {
        self.spawn_rendez_with(name, extra, "", port)
    }

    /// rendez on a clock `FAST_CLOCK` times as fast as the test's (libfaketime at
    /// `faketime`, which shortens its waits by as much), so that RFC lifetimes of minutes
    /// pass in seconds.
    fn start_rendez_on_fast_clock(&self, name: &str, extra: &str, faketime: &Path) -> Rendez {
        let config = self.config(extra, "", TURN_PORT);
        let speed = format!("+0 x{FAST_CLOCK}");
        let env = [
            ("LD_PRELOAD", faketime.to_str().expect("a UTF-8 path")),
            ("FAKETIME", speed.as_str()),
        ];
        Rendez::serving(spawn_in(&self.server_ns, name, &config, &env))
    }

    fn spawn_rendez_with(
        &self,
        name: &str,
        extra: &str,
        xdp_extra: &str,
        port: u16,
    ) -> ServerProcess {
        let config = self.config(extra, xdp_extra, port);
        spawn_in(&self.server_ns, name, &config, &[])
    }

    fn config(&self, extra: &str, xdp_extra: &str, port: u16) -> String {
        rendez_config(RendezConfig {
            listen: [SERVER_V4, SERVER_V6],
            relay_ip: [SERVER_V4, SERVER_V6],
            peers: ["10.77.0.0/24", "fd77::/64"],
            port,
            interfaces: &[&self.server_if],
            extra,
            xdp_extra,
        })
    }

    /// Moves this thread into the world namespace: sockets made from now on are there.
    fn enter_world(&self) {
        set_namespace(&self.world_ns);
    }

    /// `ip link show` of the server's veth.
    fn server_link(&self) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.server_ns, "link", "show", &self.server_if])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn wait_until_detached(&self) {
        let deadline = Instant::now() + WAIT;
        while self.server_link().contains("prog/xdp") {
            assert!(
                Instant::now() < deadline,
                "the program outlived rendez: {}",
                self.server_link()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.world_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Clients and peers on two sides of the server: a client namespace and a peer namespace,
/// each joined to the server namespace by a veth pair, each reaching the other's subnet
/// only through the server (which forwards). Removed when dropped.
struct TwoSided {
    server_ns: String,
    client_ns: String,
    peer_ns: String,
    /// The server's end of the pair to the clients, and of the pair to the peers.
    server_client_side: String,
    server_peer_side: String,
    /// The pass-everything program on the client's and the peer's ends (frames sent with
    /// XDP_TX or redirected into a veth reach only a peer that runs an XDP program).
    _far_programs: Vec<aya::Ebpf>,
}

impl TwoSided {
    fn create(name: &str) -> Option<Self> {
        if !runnable_here() {
            return None;
        }
        let id = names_id(name);
        let server_ns = format!("rxdp{id}s");
        ip(&["netns", "add", &server_ns]);
        // From here on, dropping removes what exists (and the veths with their namespaces).
        let mut net = TwoSided {
            server_ns,
            client_ns: format!("rxdp{id}c"),
            peer_ns: format!("rxdp{id}p"),
            server_client_side: format!("rx{id}sc"),
            server_peer_side: format!("rx{id}sp"),
            _far_programs: Vec::new(),
        };
        ip(&["netns", "add", &net.client_ns]);
        ip(&["netns", "add", &net.peer_ns]);
        let mut routes = Vec::new();
        for (far_ns, server_if, far_if, facing_clients) in [
            (
                &net.client_ns,
                &net.server_client_side,
                format!("rx{id}cs"),
                true,
            ),
            (
                &net.peer_ns,
                &net.server_peer_side,
                format!("rx{id}ps"),
                false,
            ),
        ] {
            ip(&[
                "link",
                "add",
                server_if,
                "netns",
                &net.server_ns,
                "type",
                "veth",
                "peer",
                "name",
                &far_if,
                "netns",
                far_ns,
            ]);
            for family in [&TWO_SIDES_V4, &TWO_SIDES_V6] {
                let (this, other) = if facing_clients {
                    (&family.clients, &family.peers)
                } else {
                    (&family.peers, &family.clients)
                };
                let prefix = family.prefix;
                add_address(
                    &net.server_ns,
                    &format!("{}/{prefix}", this.server),
                    server_if,
                );
                add_address(far_ns, &format!("{}/{prefix}", this.host), &far_if);
                // The other side's subnet only through the server (once the link is up).
                routes.push((far_ns.clone(), other.net, this.server));
            }
            for (ns, dev) in [(&net.server_ns, server_if), (far_ns, &far_if)] {
                ip(&["-n", ns, "link", "set", "lo", "up"]);
                ip(&["-n", ns, "link", "set", dev, "up"]);
            }
            let program = in_namespace(far_ns, || attach_pass_program(&far_if));
            net._far_programs.push(program);
        }
        for (ns, to, via) in routes {
            ip(&["-n", &ns, "route", "add", to, "via", via]);
        }
        // The server routes between the sides; bpf_fib_lookup answers only where it does.
        in_namespace(&net.server_ns, || {
            for sysctl in [
                "/proc/sys/net/ipv4/conf/all/forwarding",
                "/proc/sys/net/ipv6/conf/all/forwarding",
            ] {
                std::fs::write(sysctl, "1").expect(sysctl);
            }
        });
        Some(net)
    }

    /// rendez listening on the client side, relaying from the peer side, with the program
    /// on `interfaces`, serving.
    fn start_rendez(&self, name: &str, interfaces: &[&str]) -> Rendez {
        Rendez::serving(self.spawn_rendez(name, interfaces, TURN_PORT))
    }

    fn spawn_rendez(&self, name: &str, interfaces: &[&str], port: u16) -> ServerProcess {
        let (v4, v6) = (&TWO_SIDES_V4, &TWO_SIDES_V6);
        let config = rendez_config(RendezConfig {
            listen: [v4.clients.server, v6.clients.server],
            relay_ip: [v4.peers.server, v6.peers.server],
            peers: ["10.78.0.0/16", "fd78::/16"],
            port,
            interfaces,
            extra: "",
            xdp_extra: "",
        });
        spawn_in(&self.server_ns, name, &config, &[])
    }

    /// `ip link show` of one of the server's interfaces.
    fn link(&self, interface: &str) -> String {
        let output = Command::new("ip")
            .args(["-n", &self.server_ns, "link", "show", interface])
            .output()
            .expect("ip link show");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A client on its side binds a channel to a peer on the other, warms the server's
    /// neighbour entries with a Send indication (the sockets path's one relayed datagram),
    /// then sends ChannelData both ways, checking every byte that arrives. Returns how many
    /// ChannelData went each way, and the 1 datagram user space relayed.
    async fn relay_across(&self, sides: &TwoSides) -> (f64, f64) {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let v6 = sides.clients.host.contains(':');
        let server_addr = SocketAddr::new(ip(sides.clients.server), TURN_PORT);
        // Sockets stay in the namespace they were made in, whichever this thread moves to.
        set_namespace(&self.client_ns);
        let mut client = TurnClient::new(
            Conn::udp_from(ip(sides.clients.host), server_addr).await,
            "alice",
            "wonderland",
        );
        set_namespace(&self.peer_ns);
        let peer = UdpSocket::bind((ip(sides.peers.host), 0)).await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        // Back beside the client: the metrics listen on the server's client-side address.
        set_namespace(&self.client_ns);
        let family_attr = family(AttrType::REQUESTED_ADDRESS_FAMILY, if v6 { 2 } else { 1 });
        let relay = client.allocate(&[family_attr]).await[0];
        assert_eq!(relay.ip(), ip(sides.peers.server));
        bind_channel(&mut client, 0x4001, peer_addr).await;
        // The server has resolved the client (it answered it); the Send indication makes
        // it resolve the peer, as real traffic would (until then the program leaves
        // datagrams for the peer to the sockets path).
        client.conn.send(&send_indication(peer_addr, b"warm")).await;
        assert_eq!(recv(&peer).await, (b"warm".to_vec(), relay));
        let lengths = [1usize, 2, 3, 5, 64, 99, 333, 1001, 1200];
        for (i, &len) in lengths.iter().enumerate() {
            let payload: Vec<u8> = (0..len).map(|b| (b * 11 + i) as u8).collect();
            client
                .conn
                .send(&channel_data(0x4001, &payload, true))
                .await;
            assert_eq!(
                recv(&peer).await,
                (payload.clone(), relay),
                "{len} bytes to the peer"
            );
            peer.send_to(&payload, relay).await.unwrap();
            let mut expected = ChannelData::header(0x4001, len as u16).to_vec();
            expected.extend_from_slice(&payload);
            assert_eq!(
                client.conn.recv().await,
                expected,
                "{len} bytes to the client"
            );
        }
        (lengths.len() as f64, 1.0)
    }
}

impl Drop for TwoSided {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns, &self.peer_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// What differs between the tests' rendez configs.
struct RendezConfig<'a> {
    /// The IPv4 and the IPv6 address, TURN on `port` at each (metrics on the IPv4 one).
    listen: [&'a str; 2],
    relay_ip: [&'a str; 2],
    /// The peer networks allowed, IPv4 and IPv6.
    peers: [&'a str; 2],
    port: u16,
    /// `[xdp] interface`, in native mode.
    interfaces: &'a [&'a str],
    /// More top-level keys.
    extra: &'a str,
    /// More keys for `[xdp]`.
    xdp_extra: &'a str,
}

fn rendez_config(c: RendezConfig) -> String {
    let [listen_v4, listen_v6] = c.listen;
    let [relay_v4, relay_v6] = c.relay_ip;
    let [peers_v4, peers_v6] = c.peers;
    let (port, extra, xdp_extra) = (c.port, c.extra, c.xdp_extra);
    // One interface in the string form, several in the list form.
    let interface = match c.interfaces {
        [one] => format!("\"{one}\""),
        several => {
            let quoted: Vec<String> = several.iter().map(|i| format!("\"{i}\"")).collect();
            format!("[{}]", quoted.join(", "))
        }
    };
    format!(
        "realm = \"rendez.test\"\n\
         listen = [\"{listen_v4}:{port}\", \"[{listen_v6}]:{port}\"]\n\
         relay-ip = [\"{relay_v4}\", \"{relay_v6}\"]\n\
         relay-ports = \"40000-40999\"\n\
         workers = 2\n\
         log-format = \"json\"\n\
         {extra}\
         [peers]\n\
         allow = [\"{peers_v4}\", \"{peers_v6}\"]\n\
         [metrics]\n\
         listen = \"{listen_v4}:0\"\n\
         [xdp]\n\
         interface = {interface}\n\
         mode = \"native\"\n\
         {xdp_extra}\
         [auth]\n\
         [[auth.users]]\n\
         name = \"alice\"\n\
         password = \"wonderland\"\n\
         [signal]\n\
         enabled = false\n"
    )
}

/// rendez with `config` in namespace `ns` (the child starts in the namespace of the thread
/// that forks it).
fn spawn_in(ns: &str, name: &str, config: &str, env: &[(&str, &str)]) -> ServerProcess {
    in_namespace(ns, || {
        ServerProcess::spawn(&format!("xdp-{name}"), config, env)
    })
}

impl Rendez {
    /// Waits until `process` serves: its "serving" line names the metrics listener.
    fn serving(mut process: ServerProcess) -> Rendez {
        let deadline = Instant::now() + Duration::from_secs(10);
        while process.logged_metrics_addr().is_none() {
            if let Some(status) = process.try_wait() {
                panic!("rendez exited ({status}):\n{}", process.log());
            }
            assert!(
                Instant::now() < deadline,
                "rendez is not serving:\n{}",
                process.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Rendez { process }
    }

    fn metrics(&self) -> SocketAddr {
        self.process
            .logged_metrics_addr()
            .expect("metrics listener")
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn kill(&mut self) {
        self.process.signal(libc::SIGKILL);
        self.process.wait_for_exit(Duration::from_secs(5));
    }
}

/// Why these tests cannot run here, if they cannot.
fn can_run() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("the XDP tests need root (network namespaces, XDP)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("no `ip` command (iproute2)".into());
    }
    Ok(())
}

/// Runs `f` on a thread of its own in namespace `ns` (this thread stays where it is).
fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                set_namespace(ns);
                f()
            })
            .join()
            .expect("namespace thread")
    })
}

/// Moves the calling thread into the named network namespace.
fn set_namespace(ns: &str) {
    let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("the namespace exists");
    // SAFETY: setns on an open namespace file changes only this thread's namespace.
    let result = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(result, 0, "setns: {}", std::io::Error::last_os_error());
}

/// bpf/pass.bpf.c (built by build.rs with the `xdp` feature) on `interface`.
fn attach_pass_program(interface: &str) -> aya::Ebpf {
    let object = std::fs::read(concat!(env!("OUT_DIR"), "/pass.bpf.o")).expect("pass.bpf.o");
    let mut ebpf = aya::Ebpf::load(&object).expect("load pass.bpf.o");
    let program: &mut aya::programs::Xdp = ebpf.program_mut("pass").unwrap().try_into().unwrap();
    program.load().unwrap();
    program
        .attach(interface, aya::programs::XdpMode::Driver)
        .expect("attach the pass program");
    ebpf
}

fn ip(args: &[&str]) {
    common::netns::ip(args);
}

/// `ip addr add` in `ns`; an IPv6 address without duplicate address detection, so that it
/// is usable at once.
fn add_address(ns: &str, address: &str, dev: &str) {
    let mut args = vec!["-n", ns, "addr", "add", address, "dev", dev];
    if address.contains(':') {
        args.push("nodad");
    }
    ip(&args);
}

async fn bind_channel(client: &mut TurnClient, number: u16, peer: SocketAddr) {
    let response = client
        .request(Method::CHANNEL_BIND, &[channel(number), xor_peer(peer)])
        .await;
    assert_eq!(common::class_of(&response), Class::Success);
}

/// ChannelData on `channel`, padded to 4 bytes when `pad` (optional over UDP).
fn channel_data(channel: u16, payload: &[u8], pad: bool) -> Vec<u8> {
    let mut bytes = ChannelData::header(channel, payload.len() as u16).to_vec();
    bytes.extend_from_slice(payload);
    if pad {
        bytes.resize(bytes.len().next_multiple_of(4), 0);
    }
    bytes
}

async fn recv(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    common::recv_from(socket).await
}

/// Nothing arrives at `socket` for a while.
async fn assert_silent(socket: &UdpSocket) {
    let mut buf = [0u8; 2048];
    let got = tokio::time::timeout(Duration::from_millis(300), socket.recv_from(&mut buf)).await;
    assert!(
        got.is_err(),
        "unexpected datagram: {:?}",
        got.map(|r| r.map(|(n, from)| (buf[..n].to_vec(), from)))
    );
}

/// The next datagram for `client` is a Data indication carrying `payload` (user space
/// relayed it).
async fn expect_data_indication(client: &mut TurnClient, payload: &[u8]) {
    let data = client.conn.recv().await;
    let m = Message::parse(&data).expect("a Data indication");
    assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
    assert_eq!(m.attribute(AttrType::DATA), Some(payload));
}

/// Nothing arrives for `client` for a while.
async fn assert_nothing_for(client: &mut TurnClient) {
    let Conn::Udp { socket, .. } = &client.conn else {
        unreachable!("UDP clients only");
    };
    assert_silent(socket).await;
}

/// Scrapes until the sum of `name` reaches `at_least` (the workers report the kernel's
/// counters once a second), then returns that scrape.
fn wait_for_metric(addr: SocketAddr, name: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        let scrape = scrape_metrics(addr);
        if metric_sum(&scrape, name) >= at_least || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The sum of the samples whose line starts with `prefix` and contains `label`.
fn sample(scrape: &str, prefix: &str, label: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| line.starts_with(prefix) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Binding requests the kernel answers: none, SOFTWARE, FINGERPRINT, both (in that order:
/// the test reads "FINGERPRINT when asked" from the position).
fn binding_requests() -> Vec<Vec<u8>> {
    vec![
        binding_with(10, |_| {}),
        binding_with(11, |b| {
            b.add_software("a client, 27 bytes of name.");
        }),
        binding_with(12, |b| {
            b.add_fingerprint();
        }),
        binding_with(13, |b| {
            b.add_software("ice")
                .add_software("twice")
                .add_fingerprint();
        }),
    ]
}

/// A Binding request with transaction ID `tid` repeated, and what `attributes` adds.
fn binding_with(tid: u8, attributes: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([tid; 12]));
    attributes(&mut b);
    b.finish()
}

/// A classic (RFC 3489) Binding request: no magic cookie.
fn classic_binding() -> Vec<u8> {
    let mut bytes = vec![0x00, 0x01, 0x00, 0x00];
    bytes.extend_from_slice(&[0x5a; 16]);
    bytes
}
