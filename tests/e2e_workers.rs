//! The thread-per-core UDP data plane: several workers relay correctly (allocations spread
//! over workers, distinct relay ports, channels both ways, expiry), and the batched
//! receive/send path delivers bursts intact.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rendez::stun::{AttrType, ChannelData, Class, Message, Method};
use tokio::net::UdpSocket;

mod common;
use common::*;

const WORKERS: usize = 3;
const CLIENTS: usize = 24;

#[tokio::test]
async fn allocations_spread_over_workers_get_distinct_ports_and_relay_both_ways() {
    let server = start_workers(PortSlice::First).await;
    assert_eq!(server.workers(), WORKERS);
    let peer = echo_peer().await;
    let mut clients = Vec::new();
    let mut relayed_ports = HashSet::new();
    for _ in 0..CLIENTS {
        let mut client = TurnClient::alice_udp(&server).await;
        let relayed = client.allocate(&[]).await[0];
        assert!(
            relayed_ports.insert(relayed.port()),
            "port {} handed out twice",
            relayed.port()
        );
        let response = client
            .request(Method::CHANNEL_BIND, &[channel(0x4000), xor_peer(peer)])
            .await;
        assert_eq!(class_of(&response), Class::Success);
        clients.push(client);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let payload = format!("client {i}");
        client
            .conn
            .send(&channel_data(0x4000, payload.as_bytes()))
            .await;
        let echoed = client.conn.recv().await;
        assert_eq!(
            &echoed[4..],
            payload.as_bytes(),
            "client {i} got its own echo back"
        );
    }
    let per_worker = wait_for_stats(&server, |stats| {
        stats.iter().map(|s| s.relayed_to_clients()).sum::<u64>() >= CLIENTS as u64
    })
    .await;
    let busy = per_worker
        .iter()
        .filter(|s| s.allocations_created > 0)
        .count();
    assert!(
        busy >= 2,
        "the kernel spread {CLIENTS} clients over only {busy} worker(s)"
    );
    assert_eq!(
        per_worker
            .iter()
            .map(|s| s.allocations_created)
            .sum::<u64>(),
        CLIENTS as u64
    );
    server.shutdown().await;
}

#[tokio::test]
async fn allocations_on_every_worker_expire_and_free_their_ports() {
    let server = start_workers_with(
        PortSlice::Second,
        "allocation-lifetime = \"1s\"\nmax-allocation-lifetime = \"1s\"\n",
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let mut client = TurnClient::alice_udp(&server).await;
        // `allocation-lifetime = "1s"`: the workers' timers must end it without any traffic.
        client.allocate(&[]).await;
        clients.push(client);
    }
    wait_for_stats(&server, |stats| {
        stats.iter().map(|s| s.allocations_ended).sum::<u64>() == CLIENTS as u64
    })
    .await;
    // Ended allocations are gone: a refresh finds nothing (437).
    let response = clients[0].request(Method::REFRESH, &[]).await;
    assert_eq!(error_of(&response), Some(437));
    // And their ports are free again: the range only has room for a few more than CLIENTS.
    for _ in 0..CLIENTS {
        let mut client = TurnClient::alice_udp(&server).await;
        client.allocate(&[]).await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn bursts_cross_the_batched_path_intact_in_both_directions() {
    let server = start_workers(PortSlice::Third).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut client = TurnClient::alice_udp(&server).await;
    let relayed = client.allocate(&[]).await[0];
    client
        .request(
            Method::CHANNEL_BIND,
            &[channel(0x4001), xor_peer(peer_addr)],
        )
        .await;

    const BURST: usize = 200;
    for i in 0..BURST {
        client
            .conn
            .send(&channel_data(0x4001, &(i as u32).to_be_bytes()))
            .await;
    }
    let mut seen = HashSet::new();
    while seen.len() < BURST {
        let (bytes, from) = recv_from(&peer).await;
        assert_eq!(from, relayed);
        seen.insert(u32::from_be_bytes(bytes[..4].try_into().unwrap()));
    }

    // Peer → client: with the channel bound, every datagram arrives as ChannelData; without
    // a channel (another peer port) as a Data indication, also framed in place.
    for i in 0..BURST {
        peer.send_to(&(i as u32).to_be_bytes(), relayed)
            .await
            .unwrap();
    }
    let mut back = HashSet::new();
    while back.len() < BURST {
        let frame = client.conn.recv().await;
        assert_eq!(&frame[..4], &[0x40, 0x01, 0x00, 0x04]);
        back.insert(u32::from_be_bytes(frame[4..8].try_into().unwrap()));
    }
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other.send_to(b"no channel", relayed).await.unwrap();
    let indication = client.conn.recv().await;
    let m = Message::parse(&indication).unwrap();
    assert_eq!(m.method(), Method::DATA);
    assert_eq!(m.attribute(AttrType::DATA), Some(&b"no channel"[..]));
    server.shutdown().await;
}

// ================================================================ helpers

/// The tests of this file run at once, each with a server that needs nearly all of its 120
/// relay ports: each gets its own range, or one would take the other's ports and answer 508.
#[derive(Clone, Copy)]
enum PortSlice {
    First,
    Second,
    Third,
}

async fn start_workers(ports: PortSlice) -> rendez::Handle {
    start_workers_with(ports, "").await
}

/// `extra` holds top-level keys.
async fn start_workers_with(ports: PortSlice, extra: &str) -> rendez::Handle {
    let first = 13000 + 120 * ports as u16;
    let last = first + 119;
    // 3 workers + the TCP/TLS shard share 120 ports: 30 each, a few more than CLIENTS / 3.
    // Every client is challenged once, all from 127.0.0.1 within a second, and this client
    // does not retransmit: `unauthorized-per-ip` must let every challenge through.
    let text = format!(
        "realm = \"rendez.test\"\nlisten = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n\
         workers = {WORKERS}\nrelay-ports = \"{first}-{last}\"\n{extra}\
         [auth]\n[[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
         [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n[signal]\nenabled = false\n\
         [limits]\nallocations-per-user = {CLIENTS}\nunauthorized-per-ip = {CLIENTS}\n"
    );
    let config = rendez::Config::from_toml(&text).expect("test config parses");
    rendez::start(config).await.expect("server starts")
}

/// A UDP peer that sends every datagram back where it came from (bounded: stops when the
/// test's runtime ends).
async fn echo_peer() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    addr
}

fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = ChannelData::header(channel, payload.len() as u16).to_vec();
    frame.extend_from_slice(payload);
    frame
}

/// Polls the workers' counters (published every 100 ms) until `done` holds.
async fn wait_for_stats(
    server: &rendez::Handle,
    done: impl Fn(&[rendez::turn::Stats]) -> bool,
) -> Vec<rendez::turn::Stats> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let stats = server.worker_stats();
        if done(&stats) {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "workers did not get there: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
