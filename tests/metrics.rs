//! `GET /metrics`: the figures of a running server in the Prometheus text format, and no
//! label that could carry a user, an address or a room.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{send_indication, xor_peer, Conn, TurnClient, WAIT};
use futures_util::{SinkExt, StreamExt};
use rendez::stun::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

/// A room name and a user name that must never show up in a scrape.
const ROOM: &str = "quarterly-secret-room";
const USER: &str = "alice";

#[tokio::test]
async fn scrape_shows_allocations_traffic_requests_and_rooms() {
    let server = start().await;
    let metrics = server.metrics_addr().expect("metrics listener");

    // One relayed datagram, one room with one participant.
    let mut client = TurnClient::new(Conn::udp(server.udp_addrs()[0]).await, USER, "wonderland");
    client.allocate(&[]).await;
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    client
        .request(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)])
        .await;
    client
        .conn
        .send(&send_indication(peer_addr, b"hello"))
        .await;
    let mut buf = [0u8; 64];
    tokio::time::timeout(WAIT, peer.recv_from(&mut buf))
        .await
        .expect("relayed datagram")
        .unwrap();
    let ws_url = format!("ws://{}/ws", server.signal_addr().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let join = format!(r#"{{"type":"join","room":"{ROOM}","name":"{USER}"}}"#);
    ws.send(Message::Text(join.into())).await.unwrap();
    let welcome = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    assert!(welcome
        .unwrap()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("welcome"));

    // Gauges are published every 100 ms: scrape until they show up.
    let deadline = Instant::now() + WAIT;
    let samples = loop {
        let (content_type, text) = scrape(metrics).await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let samples = parse(&text);
        if sum(&samples, "rendez_allocations", &[]) == 1.0 || Instant::now() > deadline {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sum(&samples, "rendez_allocations", &[]), 1.0);
    assert_eq!(sum(&samples, "rendez_permissions", &[]), 1.0);
    assert_eq!(sum(&samples, "rendez_allocations_created_total", &[]), 1.0);
    let udp_to_peer = [("transport", "udp"), ("direction", "to_peer")];
    assert_eq!(
        sum(&samples, "rendez_relayed_packets_total", &udp_to_peer),
        1.0
    );
    assert_eq!(
        sum(&samples, "rendez_relayed_bytes_total", &udp_to_peer),
        5.0
    );
    let allocate_ok = [("method", "allocate"), ("result", "success")];
    assert_eq!(sum(&samples, "rendez_requests_total", &allocate_ok), 1.0);
    let challenged = [("reason", "challenge")];
    assert_eq!(
        sum(&samples, "rendez_auth_failures_total", &challenged),
        1.0
    );
    assert_eq!(sum(&samples, "rendez_signal_rooms", &[]), 1.0);
    assert_eq!(sum(&samples, "rendez_signal_participants", &[]), 1.0);
    let ports = sum(&samples, "rendez_relay_ports", &[("state", "in_use")]);
    assert_eq!(ports, 1.0);
    // Per worker: two UDP workers and the TCP/TLS shard each have their series.
    let shards: BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "rendez_allocations")
        .filter_map(|s| s.labels.get("shard").map(String::as_str))
        .collect();
    assert_eq!(shards, BTreeSet::from(["stream", "udp-0", "udp-1"]));
    server.shutdown().await;
}

#[tokio::test]
async fn no_label_value_carries_a_user_an_address_or_a_room() {
    let server = start().await;
    // Traffic of every kind that could leak: an allocation, a failed login, a room.
    let mut client = TurnClient::new(Conn::udp(server.udp_addrs()[0]).await, USER, "wonderland");
    client.allocate(&[]).await;
    let mut wrong = TurnClient::new(Conn::udp(server.udp_addrs()[0]).await, "mallory", "guess");
    wrong.ensure_nonce(Method::ALLOCATE).await;
    let _ = wrong
        .request(Method::ALLOCATE, &[common::udp_transport()])
        .await;
    let ws_url = format!("ws://{}/ws", server.signal_addr().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    let join = format!(r#"{{"type":"join","room":"{ROOM}","name":"{USER}"}}"#);
    ws.send(Message::Text(join.into())).await.unwrap();
    let _ = tokio::time::timeout(WAIT, ws.next()).await;
    tokio::time::sleep(Duration::from_millis(250)).await;

    let (_, text) = scrape(server.metrics_addr().unwrap()).await;
    for forbidden in [USER, "mallory", ROOM, "127.0.0.1"] {
        assert!(
            !text.contains(forbidden),
            "the scrape mentions {forbidden:?}"
        );
    }
    // Every label value comes from a fixed vocabulary of plain names.
    let vocabulary: BTreeSet<&str> = [
        "stream",
        "udp-0",
        "udp-1",
        "udp",
        "tcp",
        "tls",
        "to_peer",
        "to_client",
        "in_use",
        "free",
        "success",
        "error",
        "binding",
        "allocate",
        "refresh",
        "create_permission",
        "channel_bind",
        "other",
        "user",
        "address",
        "total",
        "bad_request",
        "challenge",
        "wrong_realm",
        "unknown_user",
        "expired",
        "too_far_ahead",
        "wrong_key",
        "stale_nonce",
        "downgrade",
        "sha256_unavailable",
        "malformed",
        "invalid_source",
        "no_allocation",
        "no_permission",
        "unbound_channel",
        "over_bandwidth",
        "unauthorized_rate",
        "binding_rate",
        "unknown_attribute",
        "send_failed",
        "client_backlog",
        "connect",
        "connection_bind",
        "tcp_allocation",
        "connecting",
        "pending",
        "bound",
        "connected",
        "failed",
        "accepted",
        "refused",
    ]
    .into();
    let samples = parse(&text);
    assert!(
        samples.len() > 50,
        "a full scrape: {} samples",
        samples.len()
    );
    for sample in &samples {
        for value in sample.labels.values() {
            assert!(
                vocabulary.contains(value.as_str()),
                "{}: label value {value:?} is not from the fixed set",
                sample.name
            );
        }
    }
    // The failed login is counted by reason, without saying whose.
    assert_eq!(
        sum(
            &samples,
            "rendez_auth_failures_total",
            &[("reason", "unknown_user")]
        ),
        1.0
    );
    server.shutdown().await;
}

async fn start() -> rendez::Handle {
    let text = "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nrelay-ports = \"15000-15099\"\n\
                workers = 2\nrealm = \"rendez.test\"\n\
                [auth]\nsecrets = [\"s3cret\"]\n[[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
                [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
                [signal]\nlisten = \"127.0.0.1:0\"\n\
                [metrics]\nlisten = \"127.0.0.1:0\"\n";
    let config = rendez::Config::from_toml(text).expect("test config parses");
    rendez::start(config).await.expect("server starts")
}

/// GET /metrics: the content type and the body.
async fn scrape(addr: SocketAddr) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("metrics response")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_owned();
    (content_type, body.to_owned())
}

struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

/// Parses the text format's sample lines (no escapes: our label values have none).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("NAME VALUE");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|l| !l.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("KEY=VALUE");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// The sum of `name` over every series whose labels include `matching`.
fn sum(samples: &[Sample], name: &str, matching: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            matching
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}
