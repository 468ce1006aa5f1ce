//! A fleet of independent TURN nodes on loopback (`rendez::start`, one process): a nonce
//! handed out by one node is good at every node sharing `[auth] nonce-secret` (from the
//! same client address only), and a full node sends new allocations to its
//! `alternate-servers` in turn (300 Try Alternate), where clients get them.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use rendez::stun::{AttrType, Message, Method};
use rendez::turn::{QuotaExceeded, Stats};

use common::process::ServerProcess;
use common::tls::TestCert;
use common::*;

/// The REST secret every node of the fleet verifies credentials with.
const REST_SECRET: &str = "fleet-rest-secret";
/// The nonce secret of the fleet.
const NONCE_SECRET: &str = "fleet-nonce-secret-0123456789";
/// The relay ports of the nodes here (other test files use other ranges).
const RELAY_PORTS: &str = "17000-17899";

// ================================================================ the shared nonce key

#[tokio::test]
async fn a_nonce_from_one_node_is_good_at_every_node_of_the_fleet_from_the_same_address() {
    let fleet = [
        node().start().await,
        node().start().await,
        node().start().await,
    ];
    let [a, b, c] = fleet.each_ref().map(|n| n.udp_addrs()[0]);
    let mut client = rest_client(a, "dana").await;
    client.ensure_nonce(Method::ALLOCATE).await;
    let nonce_of_a = client.nonce().to_vec();

    // The same socket, with A's nonce and no new challenge, allocates at B and at C.
    for (server, handle) in [(b, &fleet[1]), (c, &fleet[2])] {
        talk_to(&mut client, server);
        let response = client.request(Method::ALLOCATE, &[udp_transport()]).await;
        assert_eq!(error_of(&response), None, "A's nonce at {server}");
        assert_eq!(handle.allocations_now(), 1);
    }
    assert_eq!(client.nonce(), nonce_of_a, "no challenge came in between");
    assert_eq!(fleet[0].allocations_now(), 0);

    // From another address (another port of the same host) A's nonce is no good at B.
    let mut other = rest_client(b, "erin").await;
    other.use_nonce(&nonce_of_a);
    let response = other.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(error_of(&response), Some(438));
}

#[tokio::test]
async fn without_the_shared_secret_a_node_refuses_the_others_nonces_until_a_reload_shares_it() {
    let a = node().start().await;
    let alone = node().without_nonce_secret();
    let b = alone.start().await;
    let mut client = rest_client(a.udp_addrs()[0], "dana").await;
    client.ensure_nonce(Method::ALLOCATE).await;
    let nonce_of_a = client.nonce().to_vec();
    talk_to(&mut client, b.udp_addrs()[0]);
    let refused = client.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(error_of(&refused), Some(438), "B's key is its own");

    // SIGHUP's reload gives B the fleet's secret: A's nonce is good there at once.
    b.reload(node().config()).await.expect("reload");
    client.use_nonce(&nonce_of_a);
    let response = client.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(error_of(&response), None);
    assert_eq!(b.allocations_now(), 1);

    // Another secret: the nonces of the old one are stale from then on.
    b.reload(
        node()
            .nonce_secret("the-fleet-s-next-nonce-secret")
            .config(),
    )
    .await
    .expect("reload");
    client.use_nonce(&nonce_of_a);
    let stale = client.request(Method::REFRESH, &[]).await;
    assert_eq!(error_of(&stale), Some(438));
    // The 438 brought a fresh nonce, with which the allocation goes on.
    let fresh = Message::parse(&stale)
        .unwrap()
        .attribute(AttrType::NONCE)
        .unwrap()
        .to_vec();
    client.use_nonce(&fresh);
    assert_eq!(client.refresh(600).await, None);
}

/// The binary, as systemd runs it: SIGHUP applies a new nonce secret at once and says so,
/// and neither secret is ever in the log, even at debug level.
#[tokio::test]
async fn sighup_applies_a_new_nonce_secret_and_no_log_line_holds_a_secret() {
    let old = "hunter2-old-nonce-secret";
    let new = "hunter2-new-nonce-secret";
    let file = |secret: &str| {
        node().nonce_secret(secret).toml().replace(
            "workers = 1\n",
            "workers = 1\nlog-format = \"json\"\nlog-level = \"debug\"\n",
        )
    };
    let mut rendez = ServerProcess::spawn("fleet-nonce-reload", &file(old), &[]);
    let udp = rendez.wait_until_serving();
    let mut client = rest_client(udp, "dana").await;
    assert!(client.try_allocate().await.is_ok());

    rendez.write_config(&file(new));
    rendez.signal(libc::SIGHUP);
    wait_for_log(&rendez, "configuration reloaded").await;
    assert!(
        rendez.log().contains("`auth.nonce-secret` changed"),
        "{}",
        rendez.log()
    );
    let stale = client.request(Method::REFRESH, &[]).await;
    assert_eq!(error_of(&stale), Some(438), "the old key's nonce");
    assert!(!rendez.log().contains("hunter2"), "{}", rendez.log());
}

// ================================================================ 300 Try Alternate

#[tokio::test]
async fn a_full_node_sends_clients_to_its_alternates_in_turn_and_they_allocate_there() {
    let alternates = [node().start().await, node().start().await];
    let [b, c] = alternates.each_ref().map(|n| n.udp_addrs()[0]);
    let full = node()
        .alternates(&[b.to_string(), c.to_string()])
        .limits("allocations-total = 1")
        .start()
        .await;
    let a = full.udp_addrs()[0];
    let mut first = rest_client(a, "first").await;
    assert!(first.try_allocate().await.is_ok());

    let mut turned_away = Vec::new();
    let mut named = Vec::new();
    for name in ["second", "third", "fourth"] {
        let mut client = rest_client(a, name).await;
        // `request` checks the integrity of the 300: it comes after authentication.
        let response = client.request(Method::ALLOCATE, &[udp_transport()]).await;
        assert_eq!(error_of(&response), Some(300), "{name}");
        named.push(alternate_servers(&response)[0]);
        turned_away.push(client);
    }
    assert_eq!(named, [b, c, b], "the alternates in turn");
    assert_eq!(full.allocations_now(), 1);
    let stats = stats_when(&full, |s| s.redirected_full >= 3).await;
    assert_eq!(stats.redirected_full, 3);

    // Each client follows its 300 from the same socket, with the same credentials and
    // nonce (the fleet shares the nonce key), and allocates there.
    for (client, alternate) in turned_away.iter_mut().zip(&named) {
        talk_to(client, *alternate);
        let response = client.request(Method::ALLOCATE, &[udp_transport()]).await;
        assert_eq!(error_of(&response), None, "at {alternate}");
    }
    assert_eq!(alternates[0].allocations_now(), 2);
    assert_eq!(alternates[1].allocations_now(), 1);
}

#[tokio::test]
async fn exhausted_relay_ports_give_300_with_alternates_and_508_without() {
    let alternate: SocketAddr = "203.0.113.8:3478".parse().unwrap();
    // One UDP worker: of four relay ports it gets two, the TCP/TLS shard the other two.
    let with = node()
        .relay_ports("17990-17993")
        .alternates(&[alternate.to_string()])
        .start()
        .await;
    let without = node().relay_ports("17994-17997").start().await;
    for (server, expected) in [(&with, 300), (&without, 508)] {
        let addr = server.udp_addrs()[0];
        for name in ["one", "two"] {
            let relayed = rest_client(addr, name).await.try_allocate().await;
            assert!(relayed.is_ok(), "{name}: {relayed:?}");
        }
        let mut third = rest_client(addr, "three").await;
        let response = third.request(Method::ALLOCATE, &[udp_transport()]).await;
        assert_eq!(error_of(&response), Some(expected));
        if expected == 300 {
            assert_eq!(alternate_servers(&response), [alternate]);
        }
    }
}

#[tokio::test]
async fn a_users_quota_still_answers_486_with_alternates() {
    let server = node()
        .alternates(&["203.0.113.8:3478".into()])
        .limits("allocations-per-user = 1")
        .start()
        .await;
    let addr = server.udp_addrs()[0];
    assert!(rest_client(addr, "dana").await.try_allocate().await.is_ok());
    let second = rest_client(addr, "dana").await.try_allocate().await;
    assert_eq!(second, Err(486), "the same user from another socket");
    let stats = stats_when(&server, |s| s.quota_refusals(QuotaExceeded::User) >= 1).await;
    assert_eq!(stats.redirected_full, 0);
}

#[tokio::test]
async fn a_tls_client_is_told_the_alternates_name_and_checks_its_certificate_against_it() {
    // The alternate's certificate names only "localhost": a client that checked it against
    // an IP address, or the full node's name, would fail the handshake.
    let alternate_cert = TestCert::for_names(&["localhost"]);
    let alternate = node().tls(&alternate_cert).start().await;
    let port = alternate.tls_addrs()[0].port();
    let full_cert = TestCert::new();
    let full = node()
        .alternates(&[format!("localhost:{port}")])
        .limits("allocations-total = 1")
        .tls(&full_cert)
        .start()
        .await;
    assert!(rest_client(full.udp_addrs()[0], "first")
        .await
        .try_allocate()
        .await
        .is_ok());

    let (user, password) = credential("dana");
    let stream = full_cert.connect(full.tls_addrs()[0], None).await;
    let mut over_tls = TurnClient::new(Conn::stream(stream), &user, &password);
    let response = over_tls.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(error_of(&response), Some(300));
    let m = Message::parse(&response).unwrap();
    assert_eq!(
        m.attribute(AttrType::ALTERNATE_DOMAIN),
        Some(&b"localhost"[..])
    );
    let server = alternate_servers(&response)[0];
    assert!(
        server.ip().is_loopback() && server.port() == port,
        "{server}"
    );

    // Over UDP there is no certificate to check, so no name.
    let response = rest_client(full.udp_addrs()[0], "erin")
        .await
        .request(Method::ALLOCATE, &[udp_transport()])
        .await;
    assert_eq!(error_of(&response), Some(300));
    assert_eq!(
        Message::parse(&response)
            .unwrap()
            .attribute(AttrType::ALTERNATE_DOMAIN),
        None
    );

    // The client follows: to ALTERNATE-SERVER, checking the certificate against the name.
    let stream = alternate_cert
        .connect_as(server, "localhost")
        .await
        .expect("the alternate's certificate holds ALTERNATE-DOMAIN");
    let mut moved = TurnClient::new(Conn::stream(stream), &user, &password);
    assert!(moved.try_allocate().await.is_ok());
    assert_eq!(alternate.allocations_now(), 1);
}

#[tokio::test]
async fn an_alternate_name_that_does_not_resolve_stops_a_start_and_a_reload() {
    // `.invalid` never resolves (RFC 6761 §6.4).
    let unresolvable = node().alternates(&["turn2.rendez.invalid:3478".into()]);
    let error = match rendez::start(unresolvable.config()).await {
        Ok(_) => panic!("started with an alternate that does not resolve"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("`alternate-servers`") && error.contains("turn2.rendez.invalid"),
        "{error}"
    );
    let running = node().start().await;
    let error = running
        .reload(unresolvable.config())
        .await
        .expect_err("a reload with it is refused");
    assert!(
        format!("{error:#}").contains("`alternate-servers`"),
        "{error:#}"
    );
}

// ================================================================ helpers

/// A node's configuration, built from parts.
#[derive(Clone)]
struct Node {
    relay_ports: &'static str,
    /// More top-level keys, one per line.
    top: String,
    /// `tls-listen` and `[tls]`, or nothing.
    tls: String,
    nonce_secret: Option<String>,
    /// Lines of `[limits]`.
    limits: String,
}

/// A node of the fleet: one UDP worker, the fleet's REST and nonce secrets.
fn node() -> Node {
    Node {
        relay_ports: RELAY_PORTS,
        top: String::new(),
        tls: String::new(),
        nonce_secret: Some(NONCE_SECRET.into()),
        limits: String::new(),
    }
}

impl Node {
    fn alternates(mut self, entries: &[String]) -> Self {
        self.top += &format!("alternate-servers = {entries:?}\n");
        self
    }

    fn limits(mut self, line: &str) -> Self {
        self.limits += &format!("{line}\n");
        self
    }

    fn relay_ports(mut self, range: &'static str) -> Self {
        self.relay_ports = range;
        self
    }

    fn tls(mut self, cert: &TestCert) -> Self {
        self.tls = cert.config();
        self
    }

    fn nonce_secret(mut self, secret: &str) -> Self {
        self.nonce_secret = Some(secret.into());
        self
    }

    fn without_nonce_secret(mut self) -> Self {
        self.nonce_secret = None;
        self
    }

    fn toml(&self) -> String {
        let nonce_secret = self
            .nonce_secret
            .as_ref()
            .map(|s| format!("nonce-secret = \"{s}\"\n"))
            .unwrap_or_default();
        format!(
            "realm = \"rendez.test\"\nlisten = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n\
             relay-ports = \"{}\"\nworkers = 1\n{}{}\
             [auth]\nsecrets = [\"{REST_SECRET}\"]\n{nonce_secret}\
             [peers]\nallow = [\"127.0.0.0/8\"]\n\
             [limits]\n{}\
             [signal]\nenabled = false\n",
            self.relay_ports, self.top, self.tls, self.limits,
        )
    }

    fn config(&self) -> rendez::Config {
        let text = self.toml();
        rendez::Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}:\n{text}"))
    }

    async fn start(&self) -> rendez::Handle {
        rendez::start(self.config()).await.expect("node starts")
    }
}

/// A REST credential for `name` from the fleet's secret, for an hour.
fn credential(name: &str) -> (String, String) {
    let expires = SystemTime::now() + Duration::from_secs(3600);
    let credential = rendez::credential::mint(REST_SECRET, name, expires);
    (credential.username, credential.password)
}

/// A client of `name` on a new UDP socket, talking to `server`.
async fn rest_client(server: SocketAddr, name: &str) -> TurnClient {
    let (user, password) = credential(name);
    TurnClient::new(Conn::udp(server).await, &user, &password)
}

/// Sends the client's next requests, from the same socket, to `server`.
fn talk_to(client: &mut TurnClient, to: SocketAddr) {
    let Conn::Udp { server, .. } = &mut client.conn else {
        panic!("only a UDP client changes servers on one socket");
    };
    *server = to;
}

/// Waits (up to 10 s) for a log line of the process that contains `text`.
async fn wait_for_log(rendez: &ServerProcess, text: &str) {
    for _ in 0..500 {
        if rendez.log().contains(text) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no {text:?} in the log:\n{}", rendez.log());
}

/// The node's counters once `done` holds of them (they are published every 100 ms).
async fn stats_when(server: &rendez::Handle, done: impl Fn(&Stats) -> bool) -> Stats {
    for _ in 0..100 {
        let stats = server.stats();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stats()
}

/// Every ALTERNATE-SERVER of a response, in order: plain addresses (RFC 8489 §14.1),
/// decoded here independently of the server's encoder.
fn alternate_servers(response: &[u8]) -> Vec<SocketAddr> {
    let m = Message::parse(response).unwrap();
    m.attributes(AttrType::ALTERNATE_SERVER)
        .map(|value| {
            let port = u16::from_be_bytes([value[2], value[3]]);
            match value[1] {
                1 => SocketAddr::from((<[u8; 4]>::try_from(&value[4..8]).unwrap(), port)),
                2 => SocketAddr::from((<[u8; 16]>::try_from(&value[4..20]).unwrap(), port)),
                family => panic!("address family {family}"),
            }
        })
        .collect()
}
