//! Writes the seed inputs of the fuzz targets into `fuzz/seeds/<target>/`:
//!
//! - the RFC 5769 sample messages;
//! - what a real client sends and receives: the webrtc-rs `turn` client (the one the
//!   end-to-end tests use) through a recording proxy to a rendez on loopback, allocating,
//!   relaying to an echoing peer until its channel is bound, and closing, once with a static
//!   user and once with TURN REST credentials;
//! - what the project's own test client sends that webrtc-rs does not (dual-stack and IPv6
//!   allocations, several peers in one CreatePermission, MESSAGE-INTEGRITY-SHA256, Refresh);
//! - the shipped configuration and variants, the call page's signaling messages, PROXY
//!   headers of both versions.
//!
//! Run it from the repository root after changing a wire format or the turn_core record
//! format: `cargo run --example fuzz_seeds`. It replaces the seed folders it writes.
//! Transaction ids and nonces of the captured sessions are random, so two runs differ.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rendez::stun::{
    classify, AttrType, ChannelData, Class, Framing, IntegrityAlgorithm, Message, MessageBuilder,
    Method, PasswordAlgorithm, TransactionId,
};
use rendez::turn::OFFERED_PASSWORD_ALGORITHMS;
use tokio::net::UdpSocket;
use tokio::time::{sleep, timeout};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

#[path = "../tests/rfc5769/mod.rs"]
mod rfc5769;

/// The names the turn_core target configures its server with (fuzz/fuzz_targets/turn_core.rs).
const REALM: &str = "rendez.test";
const USER: &str = "alice";
const PASSWORD: &str = "wonderland";
const SECRET: &str = "rest-secret";
/// How long any one step of a captured session may take.
const STEP: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    let mut seeds = Seeds::default();

    let vectors: [(&str, &[u8]); 4] = [
        ("rfc5769-request", &rfc5769::SAMPLE_REQUEST),
        ("rfc5769-ipv4-response", &rfc5769::SAMPLE_IPV4_RESPONSE),
        ("rfc5769-ipv6-response", &rfc5769::SAMPLE_IPV6_RESPONSE),
        (
            "rfc5769-long-term-request",
            &rfc5769::SAMPLE_LONG_TERM_REQUEST,
        ),
    ];
    for (name, bytes) in vectors {
        seeds.add("stun_message", name, bytes.to_vec());
        seeds.add("turn_core", name, record(Kind::Client, 0, 0, bytes));
    }
    seeds.add(
        "stream_frames",
        "rfc5769-all",
        vectors
            .iter()
            .flat_map(|(_, bytes)| bytes.to_vec())
            .collect(),
    );

    let server = rendez::start(rendez::Config::from_toml(&format!(
        "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nrealm = \"{REALM}\"\n\
         [auth]\nsecrets = [\"{SECRET}\"]\n[[auth.users]]\nname = \"{USER}\"\n\
         password = \"{PASSWORD}\"\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n[signal]\nenabled = false\n"
    ))?)
    .await?;
    let address = server.udp_addrs()[0];
    let rest = rendez::credential::mint(
        SECRET,
        "bob",
        SystemTime::now() + Duration::from_secs(24 * 3600),
    );
    let sessions = [
        (
            "webrtc-rs-static-user",
            USER.to_owned(),
            PASSWORD.to_owned(),
        ),
        ("webrtc-rs-rest-user", rest.username, rest.password),
    ];
    for (name, username, password) in sessions {
        let session = capture_session(address, &username, &password).await?;
        seeds.add_session(name, &session);
    }
    server.shutdown().await;

    seeds.add_own_client_requests();
    seeds.add_configs();
    seeds.add_signaling();
    seeds.add_proxy_headers();
    seeds.write(&root)?;
    Ok(())
}

/// One datagram of a captured session, in the order the proxy saw it.
#[derive(Clone, Debug)]
enum Datagram {
    Up(Vec<u8>),
    Down(Vec<u8>),
}

/// Runs a webrtc-rs turn client session through a recording proxy and returns the traffic.
async fn capture_session(
    server: SocketAddr,
    username: &str,
    password: &str,
) -> anyhow::Result<Vec<Datagram>> {
    let peer = EchoPeer::spawn().await?;
    let proxy = RecordingProxy::spawn(server).await?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: proxy.address.to_string(),
        username: username.to_owned(),
        password: password.to_owned(),
        realm: String::new(), // learnt from the 401
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await?),
        vnet: None,
    })
    .await?;
    client.listen().await?;
    let relay = timeout(STEP, client.allocate()).await??;
    let mut buffer = vec![0u8; 2048];
    // The first sends go as Send indications while the client binds a channel in the
    // background; the later ones as ChannelData.
    for round in 0..4 {
        let message = format!("echo round {round}");
        timeout(STEP, relay.send_to(message.as_bytes(), peer.address)).await??;
        timeout(STEP, relay.recv_from(&mut buffer)).await??;
        sleep(Duration::from_millis(50)).await;
    }
    let _ = timeout(STEP, relay.close()).await;
    let _ = timeout(STEP, client.close()).await;
    sleep(Duration::from_millis(100)).await; // the closing Refresh passes the proxy
    Ok(proxy.datagrams())
}

/// Seeds by target and name.
#[derive(Default)]
struct Seeds {
    files: Vec<(&'static str, String, Vec<u8>)>,
}

impl Seeds {
    fn add(&mut self, target: &'static str, name: &str, bytes: Vec<u8>) {
        self.files.push((target, name.to_owned(), bytes));
    }

    /// A captured session as seeds of every target it speaks to.
    fn add_session(&mut self, name: &str, session: &[Datagram]) {
        let mut conversation = Vec::new();
        let (mut up_stream, mut down_stream) = (Vec::new(), Vec::new());
        for (i, datagram) in session.iter().enumerate() {
            let (direction, bytes) = match datagram {
                Datagram::Up(bytes) => ("up", bytes),
                Datagram::Down(bytes) => ("down", bytes),
            };
            let seed = format!("{name}-{i:02}-{direction}-{}", describe(bytes));
            match classify(bytes) {
                Framing::ChannelData => self.add("channel_data", &seed, bytes.clone()),
                _ => self.add("stun_message", &seed, bytes.clone()),
            }
            let stream = if direction == "up" {
                &mut up_stream
            } else {
                &mut down_stream
            };
            stream.extend_from_slice(&as_stream_frame(bytes));
            match datagram {
                Datagram::Up(bytes) => conversation.push((Kind::SignedClient, bytes.clone())),
                // Data the server delivered came from the peer: replay it as the peer's.
                Datagram::Down(bytes) => {
                    if let Some(payload) = peer_payload(bytes) {
                        conversation.push((Kind::Peer, payload));
                    }
                }
            }
        }
        self.add("stream_frames", &format!("{name}-up"), up_stream);
        self.add("stream_frames", &format!("{name}-down"), down_stream);
        // The same conversation from a UDP, a TCP and an IPv6 client, ending in a wait past
        // every lifetime.
        for (client, transport) in [(0u8, "udp"), (2, "tcp"), (4, "udp6")] {
            let mut records = Vec::new();
            for (kind, bytes) in &conversation {
                let source = if *kind == Kind::Peer { 0 } else { client };
                records.extend(record(*kind, source, 0, bytes));
            }
            records.extend(record(Kind::Wait, 0, 255, &[]));
            self.add("turn_core", &format!("{name}-{transport}"), records);
        }
    }

    /// Requests of the project's own test client (tests/common) that webrtc-rs never sends,
    /// as turn_core conversations: each is re-signed by the target, so the placeholder nonce
    /// and key here are replaced.
    fn add_own_client_requests(&mut self) {
        let peer: SocketAddr = "127.0.0.1:9000".parse().unwrap();
        let peer6: SocketAddr = "[::1]:9000".parse().unwrap();
        let family = |kind, code: u8| (kind, vec![code, 0, 0, 0]);
        let transport = (AttrType::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
        let conversations: Vec<(&str, Conversation)> = vec![
            (
                "own-client-dual-stack",
                vec![
                    (Kind::Client, unauthenticated_allocate()),
                    (
                        Kind::SignedClient,
                        request(
                            Method::ALLOCATE,
                            &[
                                transport.clone(),
                                family(AttrType::ADDITIONAL_ADDRESS_FAMILY, 2),
                            ],
                            Some(IntegrityAlgorithm::Sha256),
                        ),
                    ),
                    (
                        Kind::SignedClient,
                        request_with_peers(Method::CREATE_PERMISSION, &[peer, peer6]),
                    ),
                    (Kind::Peer, b"from the peer".to_vec()),
                    (Kind::Client, send_indication(peer6, b"to the v6 peer")),
                    (
                        Kind::SignedClient,
                        request(
                            Method::REFRESH,
                            &[(AttrType::LIFETIME, 1200u32.to_be_bytes().to_vec())],
                            Some(IntegrityAlgorithm::Sha1),
                        ),
                    ),
                ],
            ),
            (
                "own-client-ipv6-relay-channel",
                vec![
                    (Kind::Client, unauthenticated_allocate()),
                    (
                        Kind::SignedClient,
                        request(
                            Method::ALLOCATE,
                            &[
                                transport.clone(),
                                family(AttrType::REQUESTED_ADDRESS_FAMILY, 2),
                            ],
                            Some(IntegrityAlgorithm::Sha1),
                        ),
                    ),
                    (Kind::SignedClient, channel_bind(peer6, 0x4001)),
                    (Kind::Client, channel_data(0x4001, b"over the channel")),
                    (Kind::Peer, b"back over the channel".to_vec()),
                ],
            ),
            (
                // RFC 3489: no magic cookie, a CHANGE-REQUEST without flags (Debian's `stun`).
                "classic-rfc3489-binding",
                vec![(Kind::Client, classic_binding())],
            ),
            (
                // RFC 8489: SHA-256 key, anonymous by USERHASH, the offer echoed.
                "own-client-rfc8489-userhash-sha256",
                vec![
                    (Kind::Client, unauthenticated_allocate()),
                    (
                        Kind::SignedClient,
                        rfc8489_request(Method::ALLOCATE, std::slice::from_ref(&transport)),
                    ),
                    (
                        Kind::SignedClient,
                        rfc8489_request(Method::REFRESH, &[(AttrType::LIFETIME, vec![0, 0, 0, 0])]),
                    ),
                ],
            ),
            (
                "own-client-even-port",
                vec![
                    (Kind::Client, unauthenticated_allocate()),
                    (
                        Kind::SignedClient,
                        request(
                            Method::ALLOCATE,
                            &[
                                transport.clone(),
                                (AttrType::EVEN_PORT, vec![0x80, 0, 0, 0]),
                            ],
                            Some(IntegrityAlgorithm::Sha1),
                        ),
                    ),
                    (
                        Kind::SignedClient,
                        request(
                            Method::REFRESH,
                            &[(AttrType::LIFETIME, vec![0, 0, 0, 0])],
                            Some(IntegrityAlgorithm::Sha1),
                        ),
                    ),
                ],
            ),
        ];
        for (name, conversation) in conversations {
            let mut records = Vec::new();
            for (kind, bytes) in &conversation {
                records.extend(record(*kind, 0, 0, bytes));
            }
            records.extend(record(Kind::Wait, 0, 255, &[]));
            for (i, (_, bytes)) in conversation.iter().enumerate() {
                if classify(bytes) == Framing::Stun {
                    let seed = format!("{name}-{i:02}-{}", describe(bytes));
                    self.add("stun_message", &seed, bytes.clone());
                }
            }
            self.add("turn_core", name, records);
        }
    }

    /// The shipped file, its commented examples made live, the tests' configuration, and a
    /// minimal one.
    fn add_configs(&mut self) {
        let shipped = include_str!("../config/rendez.toml");
        self.add("config", "shipped", shipped.into());
        self.add(
            "config",
            "shipped-examples-live",
            uncomment_examples(shipped).into(),
        );
        self.add(
            "config",
            "tests",
            "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nrealm = \"rendez.test\"\n\
             relay-ports = \"11000-11999\"\n[auth]\n[[auth.users]]\nname = \"alice\"\n\
             password = \"wonderland\"\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n[signal]\nenabled = false\n"
                .into(),
        );
        self.add("config", "minimal", "realm = \"example.com\"\n".into());
    }

    /// What the call page (web/app.js) sends, as signal_rooms lines (see that target):
    /// `0`–`3` a text from connection 0–3, `4` connection 0 closes, `8` time passes.
    fn add_signaling(&mut self) {
        let call = [
            r#"0{"type":"join","room":"standup","name":"Ann"}"#,
            r#"1{"type":"join","room":"standup","name":"Ben"}"#,
            r#"0{"type":"signal","to":"$1","data":{"description":{"type":"offer","sdp":"v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"}}}"#,
            r#"1{"type":"signal","to":"$0","data":{"description":{"type":"answer","sdp":"v=0\r\no=- 46118 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}}}"#,
            r#"0{"type":"signal","to":"$1","data":{"candidate":{"candidate":"candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host","sdpMid":"0","sdpMLineIndex":0,"usernameFragment":"abcd"}}}"#,
            r#"2{"type":"join","room":"standup","name":"Cy"}"#,
            r#"1{"type":"ping"}"#,
            "8",
            r#"1{"type":"leave"}"#,
            "4",
        ];
        self.add(
            "signal_rooms",
            "call-page-two-peers",
            call.join("\n").into(),
        );
        let crowded = [
            r#"0{"type":"join","room":"r","name":"a"}"#,
            r#"1{"type":"join","room":"r","name":"b"}"#,
            r#"2{"type":"join","room":"r","name":"c"}"#,
            r#"3{"type":"join","room":"r","name":"d"}"#,
            r#"0{"type":"join","room":"s","name":"a"}"#,
            r#"3{"type":"signal","to":"$0","data":{}}"#,
        ];
        self.add(
            "signal_rooms",
            "room-full-and-rejoin",
            crowded.join("\n").into(),
        );
        // A fleet node: `\xEC` lines are store events, `\xDC` takes the store away and back.
        let fleet = [
            "cluster",
            r#"0{"type":"join","room":"r","name":"a"}"#,
            r#"1{"type":"join","room":"r","name":"b"}"#,
            r#"0{"type":"chat","text":"hi"}"#,
            r#"0{"type":"signal","to":"elsewhere","data":{}}"#,
            "\u{EC}{\"type\":\"signal\",\"room\":\"r\",\"from\":\"elsewhere\",\"to\":\"$0\",\"data\":1}",
            "\u{EC}{\"type\":\"chat\",\"room\":\"r\",\"message\":{\"from\":\"elsewhere\",\"name\":\"E\",\"text\":\"x\",\"at\":1}}",
            "\u{EC}{\"type\":\"left\",\"room\":\"r\",\"id\":\"elsewhere\"}",
            "\u{DC}",
            r#"0{"type":"chat","text":"local"}"#,
            r#"1{"type":"signal","to":"$0","data":2}"#,
            "\u{DC}",
            "\u{EC}{\"type\":\"sync\",\"room\":\"r\",\"members\":[{\"id\":\"$0\",\"name\":\"a\",\"node\":\"node-here\"},{\"id\":\"z\",\"name\":\"Z\",\"node\":\"node-there\"}]}",
        ];
        // Control bytes are single bytes, not UTF-8: write the lines as Latin-1.
        let fleet: Vec<u8> = fleet.join("\n").chars().map(|c| c as u32 as u8).collect();
        self.add("signal_rooms", "fleet-node", fleet);
    }

    /// PROXY headers as a trusted load balancer sends them, each followed by the client's
    /// first STUN message.
    fn add_proxy_headers(&mut self) {
        let binding =
            MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([1; 12])).finish();
        let mut v2 = |name: &str, command: u8, family: u8, rest: &[u8]| {
            let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            header.extend_from_slice(&[command, family]);
            header.extend_from_slice(&(rest.len() as u16).to_be_bytes());
            header.extend_from_slice(rest);
            header.extend_from_slice(&binding);
            self.add("proxy_header", name, header);
        };
        let mut ipv4 = vec![198, 51, 100, 7, 203, 0, 113, 1, 0x10, 0x92, 0x0d, 0x96];
        v2("v2-tcp4", 0x21, 0x11, &ipv4);
        ipv4.extend_from_slice(&[
            0x04, 0, 3, 1, 2, 3, 0xea, 0, 5, b'v', b'p', b'c', b'e', b'1',
        ]);
        v2("v2-tcp4-tlvs", 0x21, 0x11, &ipv4);
        let mut ipv6 = [0u8; 36];
        ipv6[..2].copy_from_slice(&[0x20, 0x01]);
        ipv6[16..18].copy_from_slice(&[0x20, 0x01]);
        ipv6[32..].copy_from_slice(&[0x10, 0x92, 0x01, 0xbb]);
        v2("v2-tcp6", 0x21, 0x21, &ipv6);
        v2("v2-local", 0x20, 0x00, &[]);
        for (name, line) in [
            (
                "v1-tcp4",
                "PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\r\n",
            ),
            ("v1-tcp6", "PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n"),
            ("v1-unknown", "PROXY UNKNOWN\r\n"),
        ] {
            let mut bytes = line.as_bytes().to_vec();
            bytes.extend_from_slice(&binding);
            self.add("proxy_header", name, bytes);
        }
    }

    /// Replaces each target's seed folder with the seeds collected for it.
    fn write(&self, root: &Path) -> anyhow::Result<()> {
        let mut targets: Vec<_> = self.files.iter().map(|(target, ..)| *target).collect();
        targets.dedup();
        for target in &targets {
            let dir = root.join(target);
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
        }
        for (target, name, bytes) in &self.files {
            std::fs::write(root.join(target).join(name), bytes)?;
        }
        println!("wrote {} seeds to {}", self.files.len(), root.display());
        Ok(())
    }
}

/// The turn_core record kinds (fuzz/fuzz_targets/turn_core.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Client = 0,
    SignedClient = 1,
    Peer = 2,
    Wait = 7,
}

/// Inputs to turn_core before they are made records.
type Conversation = Vec<(Kind, Vec<u8>)>;

/// One turn_core record: `tag wait len bytes`.
fn record(kind: Kind, source: u8, wait: u8, bytes: &[u8]) -> Vec<u8> {
    let mut record = vec![(source << 3) | kind as u8, wait];
    record.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    record.extend_from_slice(bytes);
    record
}

/// The first Allocate of every client, answered with the challenge.
fn unauthenticated_allocate() -> Vec<u8> {
    let transport = (AttrType::REQUESTED_TRANSPORT, vec![17, 0, 0, 0]);
    request(Method::ALLOCATE, &[transport], None)
}

/// A request from alice with placeholder credentials (the target re-signs it).
fn request(
    method: Method,
    attributes: &[(AttrType, Vec<u8>)],
    integrity: Option<IntegrityAlgorithm>,
) -> Vec<u8> {
    let mut builder = MessageBuilder::new(Class::Request, method, next_transaction());
    for (kind, value) in attributes {
        builder.add(*kind, value);
    }
    if let Some(algorithm) = integrity {
        builder
            .add(AttrType::USERNAME, USER.as_bytes())
            .add(AttrType::REALM, REALM.as_bytes())
            .add(AttrType::NONCE, b"nonce")
            .add_integrity(algorithm, &[0; 16]);
    }
    builder.add_fingerprint();
    builder.finish()
}

/// A classic (RFC 3489) Binding request: a 16-byte transaction id where the magic cookie
/// would be, and CHANGE-REQUEST with no flag set, as Debian's `stun` sends first.
fn classic_binding() -> Vec<u8> {
    let mut bytes = vec![0x00, 0x01, 0x00, 0x08];
    bytes.extend_from_slice(b"classic-3489-tid");
    bytes.extend_from_slice(&[0x00, 0x03, 0x00, 0x04, 0, 0, 0, 0]);
    bytes
}

/// A request as an RFC 8489 client signs it: USERHASH, PASSWORD-ALGORITHM SHA-256 and the
/// server's offer echoed, MESSAGE-INTEGRITY-SHA256 (placeholders; the target re-signs it).
fn rfc8489_request(method: Method, attributes: &[(AttrType, Vec<u8>)]) -> Vec<u8> {
    let mut builder = MessageBuilder::new(Class::Request, method, next_transaction());
    for (kind, value) in attributes {
        builder.add(*kind, value);
    }
    builder
        .add(AttrType::USERHASH, &[0; 32])
        .add(AttrType::REALM, REALM.as_bytes())
        .add(AttrType::NONCE, b"nonce")
        .add_password_algorithm(PasswordAlgorithm::Sha256)
        .add(
            AttrType::PASSWORD_ALGORITHMS,
            &PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS),
        )
        .add_integrity(IntegrityAlgorithm::Sha256, &[0; 32]);
    builder.add_fingerprint();
    builder.finish()
}

fn request_with_peers(method: Method, peers: &[SocketAddr]) -> Vec<u8> {
    let mut builder = MessageBuilder::new(Class::Request, method, next_transaction());
    for peer in peers {
        builder.add_xor_address(AttrType::XOR_PEER_ADDRESS, *peer);
    }
    builder
        .add(AttrType::USERNAME, USER.as_bytes())
        .add(AttrType::NONCE, b"nonce")
        .add(AttrType::REALM, REALM.as_bytes())
        .add_integrity(IntegrityAlgorithm::Sha1, &[0; 16]);
    builder.finish()
}

fn channel_bind(peer: SocketAddr, channel: u16) -> Vec<u8> {
    let mut builder = MessageBuilder::new(Class::Request, Method::CHANNEL_BIND, next_transaction());
    let [hi, lo] = channel.to_be_bytes();
    builder
        .add(AttrType::CHANNEL_NUMBER, &[hi, lo, 0, 0])
        .add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
        .add(AttrType::USERNAME, USER.as_bytes())
        .add(AttrType::NONCE, b"nonce")
        .add(AttrType::REALM, REALM.as_bytes())
        .add_integrity(IntegrityAlgorithm::Sha1, &[0; 16]);
    builder.finish()
}

fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut builder = MessageBuilder::new(Class::Indication, Method::SEND, next_transaction());
    builder
        .add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
        .add(AttrType::DATA, data);
    builder.finish()
}

fn channel_data(channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = ChannelData::header(channel, payload.len() as u16).to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// Distinct transaction ids, the same on every run.
fn next_transaction() -> TransactionId {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    TransactionId([NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed); 12])
}

/// A datagram as a stream carries it: ChannelData padded to 4 bytes (RFC 8656 §12.5).
fn as_stream_frame(bytes: &[u8]) -> Vec<u8> {
    let mut frame = bytes.to_vec();
    if classify(bytes) == Framing::ChannelData {
        frame.resize(bytes.len().next_multiple_of(4), 0);
    }
    frame
}

/// What a peer sent, from the server's ChannelData or Data indication to the client.
fn peer_payload(bytes: &[u8]) -> Option<Vec<u8>> {
    if let Some(channel_data) = ChannelData::parse(bytes) {
        return Some(channel_data.payload.to_vec());
    }
    let message = Message::parse(bytes).ok()?;
    if message.method() != Method::DATA {
        return None;
    }
    message.data().map(<[u8]>::to_vec)
}

/// A short name for a datagram: the method and class, or "channel-data".
fn describe(bytes: &[u8]) -> String {
    if classify(bytes) == Framing::ChannelData {
        return "channel-data".into();
    }
    let Ok(message) = Message::parse(bytes) else {
        return "other".into();
    };
    let method = match message.method() {
        Method::BINDING => "binding",
        Method::ALLOCATE => "allocate",
        Method::REFRESH => "refresh",
        Method::SEND => "send",
        Method::DATA => "data",
        Method::CREATE_PERMISSION => "create-permission",
        Method::CHANNEL_BIND => "channel-bind",
        _ => "method",
    };
    let class = match message.class() {
        Class::Request => "request",
        Class::Indication => "indication",
        Class::Success => "success",
        Class::Error => "error",
    };
    format!("{method}-{class}")
}

/// `# key = value` and `# [table]` lines of the shipped file made live (as
/// tests/config_file.rs does).
fn uncomment_examples(text: &str) -> String {
    let looks_like_toml = |line: &str| {
        let is_key = line.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        });
        is_key || (line.starts_with('[') && line.ends_with(']'))
    };
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if looks_like_toml(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A UDP peer that sends every datagram back.
struct EchoPeer {
    address: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl EchoPeer {
    async fn spawn() -> anyhow::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let address = socket.local_addr()?;
        let task = tokio::spawn(async move {
            let mut buffer = vec![0u8; 2048];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                let _ = socket.send_to(&buffer[..len], from).await;
            }
        });
        Ok(Self { address, task })
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards one client's datagrams to the server and back, keeping a copy of each.
struct RecordingProxy {
    address: SocketAddr,
    datagrams: Arc<Mutex<Vec<Datagram>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingProxy {
    async fn spawn(server: SocketAddr) -> anyhow::Result<Self> {
        let front = UdpSocket::bind("127.0.0.1:0").await?;
        let back = UdpSocket::bind("127.0.0.1:0").await?;
        back.connect(server).await?;
        let address = front.local_addr()?;
        let datagrams = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&datagrams);
        let task = tokio::spawn(async move {
            let mut client = None;
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            loop {
                tokio::select! {
                    Ok((len, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        log.lock().unwrap().push(Datagram::Up(up[..len].to_vec()));
                        let _ = back.send(&up[..len]).await;
                    }
                    Ok(len) = back.recv(&mut down) => {
                        log.lock().unwrap().push(Datagram::Down(down[..len].to_vec()));
                        if let Some(client) = client {
                            let _ = front.send_to(&down[..len], client).await;
                        }
                    }
                    // Both sockets failed this time (an ICMP error): wait for the next.
                    else => {}
                }
            }
        });
        Ok(Self {
            address,
            datagrams,
            task,
        })
    }

    fn datagrams(&self) -> Vec<Datagram> {
        self.datagrams.lock().unwrap().clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
