//! Rooms across nodes: three real `rendez` processes sharing rooms through a real
//! `redis-server` on loopback (Debian's package; the tests skip without it unless
//! `RENDEZ_REQUIRE_CLIENTS=1`, as in CI).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::process::{metric_sum, scrape_metrics, ServerProcess};
use common::redis::RedisServer;
use common::ws::{SignalClient, WAIT};
use serde_json::{json, Value};

/// One rendez of the fleet.
struct Node {
    process: ServerProcess,
    signal: SocketAddr,
}

impl Node {
    /// Starts a node on `redis_url` with `signal_extra` in `[signal]`, and waits until it
    /// serves.
    fn start(name: &str, redis_url: &str, signal_extra: &str) -> Self {
        Self::start_with(name, redis_url, signal_extra, "", &[])
    }

    /// [`Node::start`] with `cluster_extra` in `[cluster]` and `env` set.
    fn start_with(
        name: &str,
        redis_url: &str,
        signal_extra: &str,
        cluster_extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let config = format!(
            "log-format = \"json\"\nlisten = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n\
             [auth]\nsecrets = [\"fleet-secret\"]\n\
             [signal]\nlisten = \"127.0.0.1:0\"\n{signal_extra}\n\
             [metrics]\nlisten = \"127.0.0.1:0\"\n\
             [cluster]\nredis = \"{redis_url}\"\n{cluster_extra}\n"
        );
        let mut process = ServerProcess::spawn(name, &config, env);
        process.wait_until_serving();
        let signal = process.logged_signal_addr().expect("signal address logged");
        Self { process, signal }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.signal)
    }

    async fn client(&self) -> SignalClient {
        SignalClient::connect_to(&self.ws()).await
    }

    fn health(&self) -> u16 {
        http_status(self.signal, "/healthz")
    }

    /// Waits until `/healthz` answers `status`.
    fn wait_health(&self, status: u16, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.health() != status {
            assert!(
                Instant::now() < deadline,
                "/healthz did not become {status} within {limit:?}:\n{}",
                self.process.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let addr = self.process.logged_metrics_addr().expect("metrics address");
        metric_sum(&scrape_metrics(addr), name)
    }
}

/// A fleet of `n` nodes on a fresh Redis, each connected.
fn fleet(name: &str, n: usize, signal_extra: &str) -> Option<(RedisServer, Vec<Node>)> {
    let redis = RedisServer::start(name)?;
    let nodes: Vec<Node> = (0..n)
        .map(|i| Node::start(&format!("{name}-{i}"), &redis.url(), signal_extra))
        .collect();
    for node in &nodes {
        node.wait_health(200, Duration::from_secs(10));
    }
    Some((redis, nodes))
}

fn id_of(welcome: &Value) -> String {
    welcome["id"].as_str().unwrap().to_owned()
}

fn peer_ids(welcome: &Value) -> Vec<String> {
    welcome["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_span_nodes_with_signals_and_chat_in_order() {
    let Some((_redis, nodes)) = fleet("span", 3, "messages-per-second = 200") else {
        return;
    };
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[1].client().await;
    let mut carol = nodes[2].client().await;
    let a = id_of(&alice.join("standup", "Alice").await);
    let welcome = bob.join("standup", "Bob").await;
    let b = id_of(&welcome);
    assert_eq!(
        welcome["peers"],
        json!([{"id": a, "name": "Alice"}]),
        "a welcome lists who joined on another node"
    );
    let joined = alice.recv_type("peer-joined").await;
    assert_eq!(
        (joined["id"].as_str(), joined["name"].as_str()),
        (Some(b.as_str()), Some("Bob"))
    );
    let welcome = carol.join("standup", "Carol").await;
    let c = id_of(&welcome);
    assert_eq!(peer_ids(&welcome), [a.clone(), b.clone()]);
    assert_eq!(alice.recv_type("peer-joined").await["id"], json!(c));
    assert_eq!(bob.recv_type("peer-joined").await["id"], json!(c));
    let mut ids = vec![a.clone(), b.clone(), c.clone()];
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3, "participant ids are unique across the fleet");

    // Alice (node 0) sends Bob (node 1) signals and chat interleaved: Bob gets them in
    // the order they were sent; Carol gets the chat; Alice gets her own chat back.
    for i in 0..30 {
        alice
            .send(json!({"type": "signal", "to": b, "data": {"seq": i}}))
            .await;
        alice
            .send(json!({"type": "chat", "text": format!("chat {i}")}))
            .await;
    }
    for i in 0..30 {
        let signal = bob.recv().await;
        assert_eq!(signal["type"], "signal", "{signal}");
        assert_eq!(
            (signal["from"].as_str(), &signal["data"]["seq"]),
            (Some(a.as_str()), &json!(i))
        );
        let chat = bob.recv().await;
        assert_eq!(chat["type"], "chat", "{chat}");
        assert_eq!(chat["text"], format!("chat {i}"));
        assert_eq!(
            (chat["from"].as_str(), chat["name"].as_str()),
            (Some(a.as_str()), Some("Alice"))
        );
        assert!(
            chat["at"].as_u64().unwrap() > 1_700_000_000_000,
            "at is unix ms: {chat}"
        );
    }
    for i in 0..30 {
        assert_eq!(carol.recv_type("chat").await["text"], format!("chat {i}"));
        assert_eq!(alice.recv_type("chat").await["text"], format!("chat {i}"));
    }

    // A late joiner on another node gets the chat history (the last 50 at most).
    bob.send(json!({"type": "chat", "text": "from Bob"})).await;
    alice.recv_type("chat").await;
    let mut dave = nodes[2].client().await;
    let welcome = dave.join("standup", "Dave").await;
    let history: Vec<&str> = welcome["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(history.len(), 31);
    assert_eq!(history[0], "chat 0");
    assert_eq!(history[30], "from Bob");
    assert_eq!(peer_ids(&welcome), [a.clone(), b.clone(), c.clone()]);

    // Leaving on one node is heard on the others; signals to someone gone are refused.
    drop(bob);
    for client in [&mut alice, &mut carol, &mut dave] {
        let left = client.recv_type("peer-left").await;
        assert_eq!(left["id"], json!(b));
    }
    alice
        .send(json!({"type": "signal", "to": b, "data": {}}))
        .await;
    assert_eq!(alice.recv_type("error").await["code"], "unknown-peer");
    // Signals between two nodes go both ways.
    carol
        .send(json!({"type": "signal", "to": a, "data": "hi"}))
        .await;
    let signal = alice.recv_type("signal").await;
    assert_eq!(
        (signal["from"].as_str(), &signal["data"]),
        (Some(c.as_str()), &json!("hi"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_history_is_bounded_and_forgotten_with_the_room() {
    let Some((redis, nodes)) = fleet("history", 2, "messages-per-second = 500") else {
        return;
    };
    let mut alice = nodes[0].client().await;
    alice.join("r", "Alice").await;
    for i in 0..60 {
        alice
            .send(json!({"type": "chat", "text": format!("m{i}")}))
            .await;
    }
    for i in 0..60 {
        assert_eq!(alice.recv_type("chat").await["text"], format!("m{i}"));
    }
    let mut bob = nodes[1].client().await;
    let welcome = bob.join("r", "Bob").await;
    let texts: Vec<&str> = welcome["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts.len(), 50, "the last 50");
    assert_eq!((texts[0], texts[49]), ("m10", "m59"));
    // Long messages: at most 64 KiB of history.
    let long = "x".repeat(4000);
    for _ in 0..20 {
        bob.send(json!({"type": "chat", "text": long})).await;
        bob.recv_type("chat").await;
    }
    let mut carol = nodes[0].client().await;
    let welcome = carol.join("r", "Carol").await;
    let history = welcome["chat"].as_array().unwrap();
    let bytes: usize = history.iter().map(|m| m.to_string().len()).sum();
    assert!(
        bytes <= 64 * 1024 && history.len() >= 15,
        "{} messages, {bytes} bytes",
        history.len()
    );
    assert_eq!(history.last().unwrap()["name"], "Bob");
    // Everyone leaves: the room and its chat are forgotten.
    drop((alice, bob, carol));
    let deadline = Instant::now() + WAIT;
    while redis
        .command("KEYS rendez:chat*")
        .is_some_and(|keys| !keys.starts_with("*0"))
    {
        assert!(Instant::now() < deadline, "chat keys left in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut dave = nodes[1].client().await;
    assert_eq!(dave.join("r", "Dave").await["chat"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_size_holds_across_nodes_when_joins_race() {
    let Some((_redis, nodes)) = fleet("race", 3, "room-size = 6\nrooms-per-ip = 100") else {
        return;
    };
    let urls: Vec<String> = nodes.iter().map(Node::ws).collect();
    for round in 0..12 {
        let room = format!("race-{round}");
        // Nine joiners, three per node, all at once: exactly six get in.
        let mut clients = Vec::new();
        for i in 0..9 {
            clients.push(SignalClient::connect_to(&urls[i % 3]).await);
        }
        let joins = clients.iter_mut().enumerate().map(|(i, client)| {
            let room = room.clone();
            async move {
                client
                    .send(json!({"type": "join", "room": room, "name": format!("p{i}")}))
                    .await;
                let first = client.recv().await;
                first["type"].as_str().unwrap().to_owned()
                    + first["code"].as_str().map_or("", |c| c)
            }
        });
        let outcomes = futures_util::future::join_all(joins).await;
        let welcomed = outcomes.iter().filter(|o| *o == "welcome").count();
        let full = outcomes.iter().filter(|o| *o == "errorroom-full").count();
        assert_eq!((welcomed, full), (6, 3), "round {round}: {outcomes:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_tokens_verify_on_every_node() {
    let Some((_redis, nodes)) = fleet("tokens", 2, "token-secret = \"room-key\"") else {
        return;
    };
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let token = rendez::signal::token::mint("room-key", "board", expires);
    let mut alice = nodes[0].client().await;
    alice
        .send(json!({"type": "join", "room": "board", "name": "A", "token": token}))
        .await;
    assert_eq!(alice.recv().await["type"], "welcome");
    let mut bob = nodes[1].client().await;
    bob.send(json!({"type": "join", "room": "board", "name": "B"}))
        .await;
    assert_eq!(bob.recv().await["code"], "unauthorized");
    bob.send(json!({"type": "join", "room": "board", "name": "B", "token": token}))
        .await;
    let welcome = bob.recv().await;
    assert_eq!(
        welcome["type"], "welcome",
        "the token minted for node 0's room works on node 1"
    );
    assert_eq!(peer_ids(&welcome).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_its_rooms_within_ten_seconds() {
    let Some((_redis, nodes)) = fleet("kill", 2, "") else {
        return;
    };
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[1].client().await;
    alice.join("r", "Alice").await;
    let b = id_of(&bob.join("r", "Bob").await);
    alice.recv_type("peer-joined").await;
    let killed = Instant::now();
    nodes[1].process.signal(libc::SIGKILL);
    let left = alice
        .recv_type_within("peer-left", Duration::from_secs(10))
        .await;
    assert_eq!(left["id"], json!(b));
    let took = killed.elapsed();
    eprintln!("peer-left {took:?} after SIGKILL (heartbeat 2s)");
    assert!(took <= Duration::from_secs(10), "{took:?}");
    // A newcomer does not see the dead node's participant.
    let mut carol = nodes[0].client().await;
    assert_eq!(peer_ids(&carol.join("r", "Carol").await).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_taken_for_dead_registers_its_participants_again() {
    let Some(redis) = RedisServer::start("stall") else {
        return;
    };
    let nodes: Vec<Node> = (0..2)
        .map(|i| {
            Node::start_with(
                &format!("stall-{i}"),
                &redis.url(),
                "",
                "heartbeat = \"500ms\"",
                &[],
            )
        })
        .collect();
    for node in &nodes {
        node.wait_health(200, Duration::from_secs(10));
    }
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[1].client().await;
    alice.join("r", "Alice").await;
    let b = id_of(&bob.join("r", "Bob").await);
    alice.recv_type("peer-joined").await;
    // Node 1 stops answering for longer than its presence lasts (three heartbeats).
    nodes[1].process.signal(libc::SIGSTOP);
    let left = alice
        .recv_type_within("peer-left", Duration::from_secs(5))
        .await;
    nodes[1].process.signal(libc::SIGCONT);
    assert_eq!(left["id"], json!(b));
    // Back, it notices it was taken for dead and registers Bob again.
    let back = alice
        .recv_type_within("peer-joined", Duration::from_secs(5))
        .await;
    assert_eq!(back["id"], json!(b));
    let mut carol = nodes[0].client().await;
    assert_eq!(peer_ids(&carol.join("r", "Carol").await).len(), 2);
    assert!(nodes[1].process.log().contains("taken for dead"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_sends_its_participants_to_another() {
    let Some((_redis, nodes)) = fleet("drain", 2, "") else {
        return;
    };
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[1].client().await;
    let a = id_of(&alice.join("r", "Alice").await);
    let b = id_of(&bob.join("r", "Bob").await);
    alice.recv_type("peer-joined").await;
    nodes[0].process.terminate();
    assert_eq!(
        alice.recv_type("reconnect").await,
        json!({"type": "reconnect"})
    );
    // The page reconnects (behind one name: here, to the other node) and rejoins.
    drop(alice);
    assert_eq!(bob.recv_type("peer-left").await["id"], json!(a));
    let mut alice = nodes[1].client().await;
    let welcome = alice.join("r", "Alice").await;
    assert_eq!(peer_ids(&welcome), [b]);
    assert_eq!(bob.recv_type("peer-joined").await["name"], "Alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_nodes_serve_their_own_and_recover_within_fifteen_seconds() {
    let Some((mut redis, nodes)) = fleet("outage", 3, "") else {
        return;
    };
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[0].client().await;
    let mut carol = nodes[1].client().await;
    let a = id_of(&alice.join("r", "Alice").await);
    let b = id_of(&bob.join("r", "Bob").await);
    let c = id_of(&carol.join("r", "Carol").await);
    alice.drain().await;
    bob.drain().await;

    redis.stop();
    nodes[0].wait_health(503, Duration::from_secs(10));
    assert_eq!(nodes[0].metric("rendez_cluster_connected"), 0.0);
    // No new joins, but the participants of one node go on talking.
    let mut dave = nodes[0].client().await;
    dave.send(json!({"type": "join", "room": "r", "name": "Dave"}))
        .await;
    assert_eq!(dave.recv().await["code"], "unavailable");
    alice
        .send(json!({"type": "signal", "to": b, "data": "local"}))
        .await;
    assert_eq!(bob.recv_type("signal").await["data"], "local");
    alice
        .send(json!({"type": "chat", "text": "still here"}))
        .await;
    assert_eq!(bob.recv_type("chat").await["text"], "still here");
    assert_eq!(alice.recv_type("chat").await["text"], "still here");
    // A signal for Carol on the other node is dropped and counted.
    alice
        .send(json!({"type": "signal", "to": c, "data": "lost"}))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(nodes[0].metric("rendez_cluster_dropped_total") >= 1.0);
    // Carol leaves while Redis is away; her node cannot tell anyone yet.
    drop(carol);
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.resume();
    let back = Instant::now();
    for node in &nodes {
        node.wait_health(200, Duration::from_secs(15));
    }
    // Within 15 s: Carol is reported gone, and a newcomer on a third node sees everyone.
    let left = alice
        .recv_type_within("peer-left", Duration::from_secs(15))
        .await;
    assert_eq!(left["id"], json!(c));
    assert_eq!(
        bob.recv_type_within("peer-left", Duration::from_secs(15))
            .await["id"],
        json!(c)
    );
    let mut erin = nodes[2].client().await;
    let welcome = erin.join("r", "Erin").await;
    assert_eq!(peer_ids(&welcome), [a.clone(), b.clone()]);
    let took = back.elapsed();
    eprintln!("fleet whole {took:?} after Redis came back");
    assert!(took <= Duration::from_secs(15), "{took:?}");
    assert!(alice.recv_type("peer-joined").await["name"] == "Erin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_starts_while_redis_is_down_and_serves_once_it_answers() {
    let Some(mut redis) = RedisServer::start("late") else {
        return;
    };
    redis.stop();
    let node = Node::start("late-node", &redis.url(), "");
    assert_eq!(node.health(), 503);
    let mut alice = node.client().await;
    alice
        .send(json!({"type": "join", "room": "r", "name": "Alice"}))
        .await;
    assert_eq!(alice.recv().await["code"], "unavailable");
    redis.resume();
    node.wait_health(200, Duration::from_secs(10));
    assert_eq!(alice.join("r", "Alice").await["peers"], json!([]));
    assert!(node.process.log().contains("cannot reach Redis"));
    assert!(!node.process.log().contains("fleet-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reach_redis_over_tls_with_a_password_file() {
    let Some(redis) = RedisServer::with_tls("tls", &["--requirepass", "s3cret-pass"]) else {
        return;
    };
    let tls = redis.tls_addr.unwrap();
    let url = format!("rediss://localhost:{}/0", tls.port());
    let password_file = redis.dir.0.join("password");
    std::fs::write(&password_file, "s3cret-pass\n").unwrap();
    let cluster = format!("password-file = \"{}\"", password_file.display());
    let trust = redis.dir.0.join("cert.pem");
    let env = [("SSL_CERT_FILE", trust.to_str().unwrap())];
    let nodes: Vec<Node> = (0..2)
        .map(|i| Node::start_with(&format!("tls-{i}"), &url, "", &cluster, &env))
        .collect();
    for node in &nodes {
        node.wait_health(200, Duration::from_secs(10));
    }
    let mut alice = nodes[0].client().await;
    let mut bob = nodes[1].client().await;
    let a = id_of(&alice.join("r", "Alice").await);
    assert_eq!(peer_ids(&bob.join("r", "Bob").await), [a]);
    // A wrong password: the node says why it cannot reach Redis, never the password.
    let wrong = redis.dir.0.join("wrong");
    std::fs::write(&wrong, "not-it").unwrap();
    let cluster = format!("password-file = \"{}\"", wrong.display());
    let refused = Node::start_with("tls-wrong", &url, "", &cluster, &env);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(refused.health(), 503);
    let log = refused.process.log();
    assert!(log.contains("cannot reach Redis"), "{log}");
    for node in nodes.iter().chain([&refused]) {
        let log = node.process.log();
        assert!(!log.contains("s3cret") && !log.contains("not-it"), "{log}");
    }
}

/// The store's scripts themselves, called as a node calls them, on a real Redis.
#[test]
fn the_store_admits_up_to_the_room_size_and_ids_once_in_the_fleet() {
    let Some(server) = RedisServer::start("store") else {
        return;
    };
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    let store = include_str!("../src/net/cluster/store.lua");
    let admit = redis::Script::new(&format!(
        "{store}\n{}",
        include_str!("../src/net/cluster/admit.lua")
    ));
    let leave = redis::Script::new(&format!(
        "{store}\n{}",
        include_str!("../src/net/cluster/leave.lua")
    ));
    let mut admit = |room: &str, id: &str, node: &str| -> String {
        admit
            .arg(room)
            .arg(id)
            .arg("Name")
            .arg(node)
            .arg(3)
            .invoke(&mut con)
            .unwrap()
    };
    assert_eq!(admit("a", "same-id", "node-1"), "ok");
    assert_eq!(
        admit("b", "same-id", "node-2"),
        "taken",
        "an id is taken in every room of the fleet"
    );
    for id in ["b1", "b2", "b3"] {
        assert_eq!(admit("b", id, "node-2"), "ok");
    }
    assert_eq!(admit("b", "b4", "node-1"), "full");
    let mut con = client.get_connection().unwrap();
    let left: String = leave
        .arg("a")
        .arg("same-id")
        .arg("node-1")
        .invoke(&mut con)
        .unwrap();
    assert_eq!(left, "ok");
    assert_eq!(
        admit("c", "same-id", "node-2"),
        "ok",
        "free again once it left"
    );
}

/// `GET path` over plain HTTP: the status code, or 0 when there is no answer.
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, WAIT) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(WAIT));
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
