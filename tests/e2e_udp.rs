//! End-to-end tests over UDP on 127.0.0.1: a real `rendez` server started with
//! `rendez::start`, driven by independent implementations — the webrtc-rs `turn`
//! client for whole relay sessions, and the webrtc-rs `stun` crate as a
//! hand-held encoder/decoder for packet-level checks.
//!
//! Every await that depends on the server is bounded by [`STEP`], and every loop
//! has a fixed count, so a broken server fails these tests quickly instead of
//! hanging them.
//!
//! Each test gets its own slice of the 10000-10999 relay range so servers
//! running in parallel tests never compete for the same relay ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use stun::agent::TransactionId;
use stun::attributes::{ATTR_NONCE, ATTR_REALM, ATTR_USERNAME};
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::{
    Getter, Message, MessageType, Setter, BINDING_REQUEST, BINDING_SUCCESS, CLASS_ERROR_RESPONSE,
    CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, METHOD_ALLOCATE, METHOD_CREATE_PERMISSION,
};
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};
use turn::client::{Client, ClientConfig};
use turn::proto::peeraddr::PeerAddress;
use turn::proto::relayaddr::RelayedAddress;
use turn::proto::reqtrans::RequestedTransport;
use turn::proto::PROTO_UDP;
use webrtc_util::Conn;

/// Upper bound for any single step that waits on the server. Loopback answers
/// in microseconds; a few seconds only matters when something is broken.
const STEP: Duration = Duration::from_secs(3);

/// Number of echo rounds through the relay: enough that the turn client's
/// background ChannelBind completes and most rounds travel as ChannelData.
const ECHO_ROUNDS: usize = 20;

/// From this round on the channel must be bound (the client binds right after
/// the first send), so no more Send/Data indications may cross the wire.
const CHANNEL_ROUNDS_FROM: usize = 10;

const REALM: &str = "rendez.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_user_relays_echo() {
    let server = start_server(&config("10000-10099", true)).await;
    relay_echo_rounds(server_addr(&server), "alice", "wonderland", 10000..=10099).await;
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_credential_relays_echo() {
    let expires_at = SystemTime::now() + Duration::from_secs(3600);
    let cred = rendez::credential::mint("s3cret", "bob", expires_at);

    // The username is "EXPIRY:NAME" with EXPIRY in unix seconds...
    let (expiry, name) = cred
        .username
        .split_once(':')
        .unwrap_or_else(|| panic!("username {:?} is not EXPIRY:NAME", cred.username));
    assert_eq!(name, "bob");
    let expiry: u64 = expiry
        .parse()
        .unwrap_or_else(|_| panic!("expiry in {:?} is not unix seconds", cred.username));
    let wanted = expires_at.duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(
        expiry.abs_diff(wanted) <= 1,
        "expiry {expiry} should be {wanted}"
    );

    // ...and the password is base64(HMAC-SHA1(secret, username)), computed here
    // independently so a backend using the same recipe interoperates.
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"s3cret");
    let tag = ring::hmac::sign(&key, cred.username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
    assert_eq!(cred.password, expected);

    let server = start_server(&config("10100-10199", true)).await;
    relay_echo_rounds(
        server_addr(&server),
        &cred.username,
        &cred.password,
        10100..=10199,
    )
    .await;
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_rest_credential_rejected() {
    // Correctly signed, but expired a minute ago: the signature alone must not
    // be enough.
    let expired = SystemTime::now() - Duration::from_secs(60);
    let cred = rendez::credential::mint("s3cret", "bob", expired);

    let server = start_server(&config("10200-10299", true)).await;
    let err = allocate_error(server_addr(&server), &cred.username, &cred.password).await;
    // RFC 8489 §9.2.4: bad credentials on a request with a valid nonce → 401.
    assert!(
        err.contains("error 401"),
        "expected a 401 error response, got: {err}"
    );
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_rejected() {
    let server = start_server(&config("10300-10399", true)).await;
    let err = allocate_error(server_addr(&server), "alice", "looking-glass").await;
    assert!(
        err.contains("error 401"),
        "expected a 401 error response, got: {err}"
    );
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binding_request_answered() {
    let server = start_server(&config("10400-10499", true)).await;
    let sock = udp_socket().await;

    let resp = binding(&sock, server_addr(&server)).await;
    assert_eq!(resp.typ, BINDING_SUCCESS, "response: {resp}");

    // The server must see us exactly as we are bound: no NAT on loopback.
    let mut mapped = XorMappedAddress::default();
    mapped
        .get_from(&resp)
        .unwrap_or_else(|e| panic!("no XOR-MAPPED-ADDRESS in {resp}: {e}"));
    assert_eq!(
        SocketAddr::new(mapped.ip, mapped.port),
        sock.local_addr().unwrap()
    );

    FINGERPRINT
        .check(&resp)
        .unwrap_or_else(|e| panic!("FINGERPRINT of {resp} does not verify: {e}"));
    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_peer_denied_by_default() {
    // No [peers] section: the default policy must refuse loopback peers.
    let server = start_server(&config("10500-10599", false)).await;
    let server_addr = server_addr(&server);
    let sock = udp_socket().await;

    // 1. Unauthenticated Allocate → 401 carrying REALM and a NONCE.
    let resp = transact(
        &sock,
        server_addr,
        &[
            Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
            Box::new(RequestedTransport {
                protocol: PROTO_UDP,
            }),
            Box::new(FINGERPRINT),
        ],
    )
    .await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_ERROR_RESPONSE),
        "response: {resp}"
    );
    assert_eq!(error_code(&resp), 401, "response: {resp}");
    let realm = TextAttribute::get_from_as(&resp, ATTR_REALM)
        .unwrap_or_else(|e| panic!("no REALM in 401 {resp}: {e}"));
    assert_eq!(realm.text, REALM);
    let nonce = TextAttribute::get_from_as(&resp, ATTR_NONCE)
        .unwrap_or_else(|e| panic!("no NONCE in 401 {resp}: {e}"));
    assert!(!nonce.text.is_empty(), "empty NONCE in {resp}");

    // 2. Same request with long-term credentials → success with a relay address.
    let key = MessageIntegrity::new_long_term_integrity(
        "alice".to_owned(),
        realm.text.clone(),
        "wonderland".to_owned(),
    );
    let credentials = || -> Vec<Box<dyn Setter>> {
        vec![
            Box::new(TextAttribute::new(ATTR_USERNAME, "alice".to_owned())),
            Box::new(realm.clone()),
            Box::new(nonce.clone()),
            Box::new(key.clone()),
            Box::new(FINGERPRINT),
        ]
    };
    let mut request: Vec<Box<dyn Setter>> = vec![
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(RequestedTransport {
            protocol: PROTO_UDP,
        }),
    ];
    request.extend(credentials());
    let mut resp = transact(&sock, server_addr, &request).await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_ALLOCATE, CLASS_SUCCESS_RESPONSE),
        "response: {resp}"
    );
    key.check(&mut resp)
        .unwrap_or_else(|e| panic!("MESSAGE-INTEGRITY of Allocate success {resp}: {e}"));
    let mut relayed = RelayedAddress::default();
    relayed
        .get_from(&resp)
        .unwrap_or_else(|e| panic!("no XOR-RELAYED-ADDRESS in {resp}: {e}"));
    assert_eq!(relayed.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(
        (10500..=10599).contains(&relayed.port),
        "relay port {} outside relay-ports",
        relayed.port
    );

    // 3. A permission for a loopback peer → 403, still integrity-protected
    //    because the request authenticated (RFC 8489 §9.2.4).
    let mut request: Vec<Box<dyn Setter>> = vec![
        Box::new(MessageType::new(METHOD_CREATE_PERMISSION, CLASS_REQUEST)),
        Box::new(PeerAddress {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 9,
        }),
    ];
    request.extend(credentials());
    let mut resp = transact(&sock, server_addr, &request).await;
    assert_eq!(
        resp.typ,
        MessageType::new(METHOD_CREATE_PERMISSION, CLASS_ERROR_RESPONSE),
        "response: {resp}"
    );
    assert_eq!(error_code(&resp), 403, "response: {resp}");
    key.check(&mut resp)
        .unwrap_or_else(|e| panic!("MESSAGE-INTEGRITY of 403 {resp}: {e}"));

    shutdown(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_stop_server() {
    let server = start_server(&config("10600-10699", true)).await;
    let server_addr = server_addr(&server);
    let sock = udp_socket().await;

    let mut junk: Vec<Vec<u8>> = Vec::new();
    // Random datagrams of assorted sizes (fixed seed: reproducible).
    let mut rng = XorShift(0x5EED_0F2E_4DE2);
    for len in [1, 3, 19, 20, 21, 64, 548, 1200, 1500] {
        junk.push((0..len).map(|_| rng.next() as u8).collect());
    }
    // Valid STUN prefixes, cut short: inside the header and right after it.
    let whole = {
        let mut m = Message::new();
        let setters: [Box<dyn Setter>; 3] = [
            Box::new(TransactionId::new()),
            Box::new(BINDING_REQUEST),
            Box::new(FINGERPRINT),
        ];
        m.build(&setters).unwrap();
        m.raw
    };
    for cut in [1, 4, 8, 19, 20, whole.len() - 1] {
        junk.push(whole[..cut].to_vec());
    }
    // A header claiming 65532 bytes of attributes that are not there.
    let mut huge = whole[..20].to_vec();
    huge[2..4].copy_from_slice(&0xFFFCu16.to_be_bytes());
    junk.push(huge.clone());
    huge.extend_from_slice(&[0u8; 64]);
    junk.push(huge);
    // ChannelData for a channel nobody bound (and one with a lying length).
    junk.push(vec![0x40, 0x01, 0x00, 0x04, b'p', b'i', b'n', b'g']);
    junk.push(vec![0x40, 0x01, 0xFF, 0xFF, b'p', b'i', b'n', b'g']);
    // An empty datagram.
    junk.push(Vec::new());

    for datagram in &junk {
        sock.send_to(datagram, server_addr).await.unwrap();
    }

    // The same socket and a fresh one must both still get Binding answers.
    let resp = binding(&sock, server_addr).await;
    assert_eq!(resp.typ, BINDING_SUCCESS, "response: {resp}");
    let fresh = udp_socket().await;
    let resp = binding(&fresh, server_addr).await;
    assert_eq!(resp.typ, BINDING_SUCCESS, "response: {resp}");

    shutdown(server).await;
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The test configuration; `allow_loopback` adds the `[peers]` allow list that
/// lets 127.0.0.1 peers through the default deny policy.
fn config(relay_ports: &str, allow_loopback: bool) -> String {
    let mut toml = format!(
        r#"
realm = "{REALM}"
listen = ["127.0.0.1:0"]
relay-ip = "127.0.0.1"
relay-ports = "{relay_ports}"

# These tests exercise TURN alone.
[signal]
enabled = false

[auth]
secrets = ["s3cret"]

[[auth.users]]
name = "alice"
password = "wonderland"
"#
    );
    if allow_loopback {
        toml.push_str("\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n");
    }
    toml
}

async fn start_server(toml: &str) -> rendez::Handle {
    // `RUST_LOG=rendez=debug cargo test --test e2e_udp` shows the server's view.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();

    let config = match rendez::config::Config::from_toml(toml) {
        Ok(config) => config,
        Err(e) => panic!("test config rejected: {e}\n{toml}"),
    };
    match timeout(STEP, rendez::start(config)).await {
        Ok(Ok(handle)) => handle,
        Ok(Err(e)) => panic!("server failed to start: {e:#}"),
        Err(_) => panic!("server did not start within {STEP:?}"),
    }
}

fn server_addr(handle: &rendez::Handle) -> SocketAddr {
    let addr = *handle
        .udp_addrs()
        .first()
        .expect("server reports no UDP listener");
    assert_eq!(addr.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(addr.port(), 0, "udp_addrs must report the bound port");
    addr
}

async fn shutdown(handle: rendez::Handle) {
    timeout(STEP, handle.shutdown())
        .await
        .expect("server did not shut down in time");
}

async fn udp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// A turn-client session through the relay: allocate, then `ECHO_ROUNDS`
/// distinct messages to an echoing peer, each of which must come back intact.
/// A [`Tap`] between client and server checks that the later rounds really
/// travelled as ChannelData in both directions.
async fn relay_echo_rounds(
    server: SocketAddr,
    username: &str,
    password: &str,
    relay_ports: std::ops::RangeInclusive<u16>,
) {
    let peer = EchoPeer::spawn().await;
    let tap = Tap::spawn(server).await;
    let client = turn_client(tap.addr, username, password).await;

    let relay = timeout(STEP, client.allocate())
        .await
        .expect("Allocate timed out")
        .unwrap_or_else(|e| panic!("Allocate failed: {e}"));
    let relayed = relay.local_addr().unwrap();
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(
        relay_ports.contains(&relayed.port()),
        "relayed address {relayed} outside relay-ports {relay_ports:?}"
    );

    let mut buf = vec![0u8; 2048];
    let mut before_channel_rounds = TapSnapshot::default();
    for round in 0..ECHO_ROUNDS {
        if round == CHANNEL_ROUNDS_FROM {
            before_channel_rounds = tap.snapshot();
        }
        let message = format!("rendez echo round {round} {}", "x".repeat(round * 7));
        // The first send also waits for CreatePermission inside the client.
        timeout(STEP, relay.send_to(message.as_bytes(), peer.addr))
            .await
            .unwrap_or_else(|_| panic!("round {round}: send timed out"))
            .unwrap_or_else(|e| panic!("round {round}: send failed: {e}"));
        let (n, from) = timeout(STEP, relay.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no echo came back through the relay"))
            .unwrap_or_else(|e| panic!("round {round}: receive failed: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            message,
            "round {round}: echo content"
        );
        assert_eq!(from, peer.addr, "round {round}: echo source");
        // A short pause lets the client's background ChannelBind finish.
        sleep(Duration::from_millis(20)).await;
    }

    // The peer must have been reached from the relayed address, every time.
    let sources = peer.sources();
    assert_eq!(sources.len(), ECHO_ROUNDS, "datagrams the peer received");
    assert!(
        sources.iter().all(|s| *s == relayed),
        "peer saw sources {sources:?}, expected only {relayed}"
    );

    // Once the channel is bound, both directions must use ChannelData
    // (RFC 8656 §12: the server MUST use ChannelData towards the client).
    let total = tap.snapshot();
    let late = total.since(&before_channel_rounds);
    let channel_rounds = ECHO_ROUNDS - CHANNEL_ROUNDS_FROM;
    assert_eq!(
        late.send_indications_up, 0,
        "client still used Send indications late in the session \
         (its ChannelBind probably failed); totals: {total:?}"
    );
    assert_eq!(late.channel_data_up, channel_rounds, "totals: {total:?}");
    assert_eq!(
        late.data_indications_down, 0,
        "server sent Data indications to a client with a bound channel; totals: {total:?}"
    );
    assert_eq!(late.channel_data_down, channel_rounds, "totals: {total:?}");
    // And the first send went as a Send indication (the channel was not bound
    // yet), so both client→server paths were exercised. (Downstream, the first
    // echo may already find the channel bound, so no such check there.)
    assert!(total.send_indications_up >= 1, "totals: {total:?}");

    // close() sends a Refresh with LIFETIME 0 and does not wait for the answer.
    let _ = timeout(STEP, relay.close()).await;
    let _ = timeout(STEP, client.close()).await;
}

/// Runs the turn client's Allocate with credentials the server must refuse,
/// and returns the client's error text. A timeout is a failure of its own: the
/// server must answer a bad request, not ignore it.
async fn allocate_error(server: SocketAddr, username: &str, password: &str) -> String {
    let client = turn_client(server, username, password).await;
    let result = timeout(STEP, client.allocate())
        .await
        .expect("server did not answer the Allocate (no error response)");
    let err = match result {
        Ok(relay) => panic!(
            "Allocate with bad credentials succeeded: relay {:?}",
            relay.local_addr()
        ),
        Err(e) => e.to_string(),
    };
    let _ = timeout(STEP, client.close()).await;
    err
}

/// A listening webrtc-rs turn client on its own loopback socket.
async fn turn_client(server: SocketAddr, username: &str, password: &str) -> Client {
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: server.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(), // learnt from the server's 401
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(udp_socket().await),
        vnet: None,
    })
    .await
    .unwrap_or_else(|e| panic!("turn client: {e}"));
    client.listen().await.unwrap();
    client
}

/// Sends a Binding request with FINGERPRINT and returns the matching answer.
async fn binding(sock: &UdpSocket, server: SocketAddr) -> Message {
    transact(
        sock,
        server,
        &[Box::new(BINDING_REQUEST), Box::new(FINGERPRINT)],
    )
    .await
}

/// Builds a request from `setters` (a fresh transaction id goes first), sends
/// it once and returns the decoded response with the same transaction id,
/// skipping up to a few unrelated datagrams.
async fn transact(sock: &UdpSocket, server: SocketAddr, setters: &[Box<dyn Setter>]) -> Message {
    let id = TransactionId::new();
    let mut request = Message::new();
    request.build(&[Box::new(id)]).unwrap();
    for setter in setters {
        setter.add_to(&mut request).unwrap();
    }
    sock.send_to(&request.raw, server).await.unwrap();

    let mut buf = vec![0u8; 2048];
    for _ in 0..8 {
        let (n, from) = timeout(STEP, sock.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no response to {request}"))
            .unwrap();
        assert_eq!(from, server, "response from an unexpected address");
        let mut response = Message::new();
        response.raw = buf[..n].to_vec();
        if response.decode().is_ok() && response.transaction_id == id {
            return response;
        }
    }
    panic!("no response with the transaction id of {request}");
}

fn error_code(msg: &Message) -> u16 {
    let mut code = ErrorCodeAttribute::default();
    code.get_from(msg)
        .unwrap_or_else(|e| panic!("no ERROR-CODE in {msg}: {e}"));
    code.code.0
}

/// A plain UDP socket standing in for a remote peer: it echoes every datagram
/// to its sender and remembers where each came from.
struct EchoPeer {
    addr: SocketAddr,
    sources: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl EchoPeer {
    async fn spawn() -> EchoPeer {
        let sock = udp_socket().await;
        let addr = sock.local_addr().unwrap();
        let sources = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sources);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                seen.lock().unwrap().push(from);
                let _ = sock.send_to(&buf[..n], from).await;
            }
        });
        EchoPeer {
            addr,
            sources,
            task,
        }
    }

    fn sources(&self) -> Vec<SocketAddr> {
        self.sources.lock().unwrap().clone()
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A transparent UDP forwarder between one client and the server that counts
/// the TURN data-path packets crossing it, so a test can tell Send/Data
/// indications from ChannelData without reaching into either implementation.
struct Tap {
    addr: SocketAddr,
    counts: Arc<TapCounts>,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct TapCounts {
    send_indications_up: AtomicUsize,
    channel_data_up: AtomicUsize,
    data_indications_down: AtomicUsize,
    channel_data_down: AtomicUsize,
}

#[derive(Default, Debug, Clone, Copy)]
#[allow(dead_code)] // fields are read through Debug in assertion messages
struct TapSnapshot {
    send_indications_up: usize,
    channel_data_up: usize,
    data_indications_down: usize,
    channel_data_down: usize,
}

impl TapSnapshot {
    fn since(&self, earlier: &TapSnapshot) -> TapSnapshot {
        TapSnapshot {
            send_indications_up: self.send_indications_up - earlier.send_indications_up,
            channel_data_up: self.channel_data_up - earlier.channel_data_up,
            data_indications_down: self.data_indications_down - earlier.data_indications_down,
            channel_data_down: self.channel_data_down - earlier.channel_data_down,
        }
    }
}

/// What a datagram on the client–server path is, as far as the tap cares.
#[derive(PartialEq)]
enum Kind {
    ChannelData,
    SendIndication,
    DataIndication,
    Other,
}

fn kind(datagram: &[u8]) -> Kind {
    match datagram {
        // RFC 8656 §12.4: ChannelData starts with bits 01 (channels 0x4000-0x7FFF);
        // STUN messages start with bits 00.
        [b0, _, _, _, ..] if b0 & 0xC0 == 0x40 => Kind::ChannelData,
        [0x00, 0x16, ..] if datagram.len() >= 20 => Kind::SendIndication,
        [0x00, 0x17, ..] if datagram.len() >= 20 => Kind::DataIndication,
        _ => Kind::Other,
    }
}

impl Tap {
    async fn spawn(server: SocketAddr) -> Tap {
        let front = udp_socket().await; // the client sends here
        let back = udp_socket().await; // the server sees this one as the client
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let counts = Arc::new(TapCounts::default());
        let c = Arc::clone(&counts);
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut up = vec![0u8; 65536];
            let mut down = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut up) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        match kind(&up[..n]) {
                            Kind::ChannelData => c.channel_data_up.fetch_add(1, Ordering::SeqCst),
                            Kind::SendIndication => c.send_indications_up.fetch_add(1, Ordering::SeqCst),
                            _ => 0,
                        };
                        let _ = back.send(&up[..n]).await;
                    }
                    r = back.recv(&mut down) => {
                        // Errors here are ICMP echoes (e.g. the server is gone).
                        let Ok(n) = r else { continue };
                        match kind(&down[..n]) {
                            Kind::ChannelData => c.channel_data_down.fetch_add(1, Ordering::SeqCst),
                            Kind::DataIndication => c.data_indications_down.fetch_add(1, Ordering::SeqCst),
                            _ => 0,
                        };
                        if let Some(to) = client {
                            let _ = front.send_to(&down[..n], to).await;
                        }
                    }
                }
            }
        });
        Tap { addr, counts, task }
    }

    fn snapshot(&self) -> TapSnapshot {
        let c = &self.counts;
        TapSnapshot {
            send_indications_up: c.send_indications_up.load(Ordering::SeqCst),
            channel_data_up: c.channel_data_up.load(Ordering::SeqCst),
            data_indications_down: c.data_indications_down.load(Ordering::SeqCst),
            channel_data_down: c.channel_data_down.load(Ordering::SeqCst),
        }
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Tiny deterministic generator for the garbage test (no `rand` dependency).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
