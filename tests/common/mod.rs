//! Shared by the end-to-end tests: starting a server on loopback, a small TURN client over
//! UDP or any byte stream (TCP, TLS) that does the long-term credential dance, and a
//! self-signed certificate for TLS.

#![allow(dead_code)] // each test file uses a different part

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rendez::stun::{
    decode_xor_address, stream_frame, userhash, AttrType, Class, ErrorCode, Frame,
    IntegrityAlgorithm, LongTermKey, Message, MessageBuilder, Method, PasswordAlgorithm,
    TransactionId,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UdpSocket;

pub mod channel_loop;
pub mod netns;
pub mod pebble;
pub mod process;
pub mod redis;
pub mod relay;
pub mod tls;
pub mod tools;
pub mod ws;

pub const WAIT: Duration = Duration::from_secs(3);

pub async fn start(extra: &str) -> rendez::Handle {
    // `extra` may open tables, so it comes after the top-level keys and before [peers].
    let top = "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n";
    start_with(&format!(
        "{top}{extra}\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n"
    ))
    .await
}

pub async fn start_with(text: &str) -> rendez::Handle {
    rendez::start(test_config(text))
        .await
        .expect("server starts")
}

/// Common keys plus `text`; later tables in `text` may not repeat earlier ones.
pub fn test_config(text: &str) -> rendez::Config {
    let full = format!(
        "realm = \"rendez.test\"\nrelay-ports = \"11000-11999\"\n{text}\n[auth]\n[[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n[signal]\nenabled = false\n"
    );
    rendez::Config::from_toml(&full).expect("test config parses")
}

/// The server closes `stream` (EOF, or a reset; over TLS close_notify too) within `limit`.
pub async fn assert_closed_within<S: AsyncRead + Unpin>(stream: &mut S, limit: Duration) {
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "server did not close the connection within {limit:?}"
    );
}

pub async fn recv_from(socket: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (len, from) = tokio::time::timeout(WAIT, socket.recv_from(&mut buf))
        .await
        .expect("peer received nothing")
        .unwrap();
    (buf[..len].to_vec(), from)
}

/// A client transport: a UDP socket talking to one server address, or a byte stream.
pub enum Conn {
    Udp {
        socket: UdpSocket,
        server: SocketAddr,
    },
    Stream {
        stream: Box<dyn Duplex>,
        buffer: Vec<u8>,
    },
}

pub trait Duplex: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Duplex for T {}

impl Conn {
    pub fn stream(stream: impl Duplex + 'static) -> Self {
        Conn::Stream {
            stream: Box::new(stream),
            buffer: Vec::new(),
        }
    }

    pub async fn udp(server: SocketAddr) -> Self {
        let local = if server.is_ipv6() { "::1" } else { "127.0.0.1" };
        Self::udp_from(local.parse().unwrap(), server).await
    }

    /// A UDP socket on `local` (any port), e.g. 127.0.0.2 for a second client address.
    pub async fn udp_from(local: IpAddr, server: SocketAddr) -> Self {
        Conn::Udp {
            socket: UdpSocket::bind((local, 0)).await.unwrap(),
            server,
        }
    }

    /// A UDP socket on `local` connected to `server`: the kernel delivers it only datagrams
    /// from exactly `server`, so an answer from any other address of the host is lost.
    pub async fn udp_connected(local: IpAddr, server: SocketAddr) -> Self {
        let socket = UdpSocket::bind((local, 0)).await.unwrap();
        socket.connect(server).await.unwrap();
        // `send` names `server` again, which a connected socket accepts.
        Conn::Udp { socket, server }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        match self {
            Conn::Udp { socket, server } => {
                socket.send_to(bytes, *server).await.unwrap();
            }
            Conn::Stream { stream, .. } => stream.write_all(bytes).await.unwrap(),
        }
    }

    /// The next message, cut from the stream by its own length.
    pub async fn recv(&mut self) -> Vec<u8> {
        tokio::time::timeout(WAIT, async {
            match self {
                Conn::Udp { socket, .. } => {
                    let mut buf = vec![0u8; 65536];
                    let len = socket.recv(&mut buf).await.unwrap();
                    buf.truncate(len);
                    buf
                }
                Conn::Stream { stream, buffer } => loop {
                    if let Frame::Complete(len) = stream_frame(buffer) {
                        return buffer.drain(..len).collect();
                    }
                    let mut chunk = [0u8; 4096];
                    let n = stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "server closed the connection");
                    buffer.extend_from_slice(&chunk[..n]);
                },
            }
        })
        .await
        .expect("no response from the server")
    }

    /// Whether the server closes this stream within `limit` (bytes before the end are
    /// skipped).
    pub async fn closes_within(&mut self, limit: Duration) -> bool {
        let Conn::Stream { stream, .. } = self else {
            panic!("only a stream can be closed");
        };
        let mut buf = [0u8; 256];
        let end = async { while let Ok(1..) = stream.read(&mut buf).await {} };
        tokio::time::timeout(limit, end).await.is_ok()
    }

    pub async fn call(&mut self, request: &[u8]) -> Vec<u8> {
        self.send(request).await;
        self.recv().await
    }
}

/// Long-term credential dance over any [`Conn`]: as every browser does it (MD5 key,
/// MESSAGE-INTEGRITY), or, made with [`TurnClient::rfc8489`], as only RFC 8489 allows.
pub struct TurnClient {
    pub conn: Conn,
    username: String,
    realm: String,
    key: LongTermKey,
    nonce: Vec<u8>,
    rfc8489: Option<Rfc8489>,
    /// Unique among the clients of this test process, so that a new client on a recycled
    /// port is not taken for a retransmission of an old one's request.
    client_id: u32,
    next_tid: u64,
}

/// How an RFC 8489 client signs: PASSWORD-ALGORITHM SHA-256 with the offer echoed,
/// MESSAGE-INTEGRITY-SHA256 only, and USERHASH instead of USERNAME if anonymous.
struct Rfc8489 {
    /// PASSWORD-ALGORITHMS of the challenge.
    offer: Vec<u8>,
    userhash: Option<[u8; 32]>,
}

impl TurnClient {
    /// Alice, the test user, over UDP to the server's first listener.
    pub async fn alice_udp(server: &rendez::Handle) -> Self {
        Self::new(
            Conn::udp(server.udp_addrs()[0]).await,
            "alice",
            "wonderland",
        )
    }

    pub fn new(conn: Conn, username: &str, password: &str) -> Self {
        Self::in_realm(conn, username, password, "rendez.test")
    }

    /// A client of a server whose `realm` is not the tests' usual "rendez.test".
    pub fn in_realm(conn: Conn, username: &str, password: &str, realm: &str) -> Self {
        Self {
            conn,
            username: username.into(),
            realm: realm.into(),
            key: LongTermKey::derive(PasswordAlgorithm::Md5, username, realm, password),
            nonce: Vec::new(),
            rfc8489: None,
            client_id: {
                static NEXT_CLIENT: AtomicU32 = AtomicU32::new(0);
                NEXT_CLIENT.fetch_add(1, Ordering::Relaxed)
            },
            next_tid: 0,
        }
    }

    /// A client that knows only SHA-256: it refuses a challenge that does not offer it.
    pub fn rfc8489(conn: Conn, username: &str, password: &str, anonymous: bool) -> Self {
        Self {
            key: LongTermKey::derive(PasswordAlgorithm::Sha256, username, "rendez.test", password),
            rfc8489: Some(Rfc8489 {
                offer: Vec::new(),
                userhash: anonymous.then(|| userhash(username, "rendez.test")),
            }),
            ..Self::new(conn, username, password)
        }
    }

    /// Gets a nonce (and the password algorithms offered) from a 401 challenge.
    pub async fn ensure_nonce(&mut self, method: Method) {
        if self.nonce.is_empty() {
            let tid = self.tid();
            // As clients do, the first request is the real one without credentials (an
            // Allocate without REQUESTED-TRANSPORT would get 400, not a challenge).
            let attrs = if method == Method::ALLOCATE {
                vec![udp_transport()]
            } else {
                Vec::new()
            };
            let challenge = self.conn.call(&request_bytes(method, &attrs, tid)).await;
            assert_eq!(error_of(&challenge), Some(401));
            let m = Message::parse(&challenge).unwrap();
            self.nonce = m.attribute(AttrType::NONCE).unwrap().to_vec();
            if let Some(rfc8489) = &mut self.rfc8489 {
                let offer = m
                    .attribute(AttrType::PASSWORD_ALGORITHMS)
                    .unwrap_or_default();
                let sha256 = PasswordAlgorithm::Sha256.encode();
                assert!(
                    offer.chunks(4).any(|entry| entry == sha256),
                    "SHA-256 not offered: {offer:?}"
                );
                rfc8489.offer = offer.to_vec();
            }
        }
    }

    /// The nonce of the last challenge (empty before the first).
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// Signs the next requests with `nonce` (one handed to another client, say).
    pub fn use_nonce(&mut self, nonce: &[u8]) {
        self.nonce = nonce.to_vec();
    }

    pub async fn request(&mut self, method: Method, attrs: &[Attr]) -> Vec<u8> {
        self.ensure_nonce(method).await;
        let tid = self.tid();
        let response = self.conn.call(&self.signed(method, attrs, tid)).await;
        let m = Message::parse(&response).expect("responses parse");
        assert_eq!(m.transaction_id(), tid);
        // 401 and 438 are challenges, answered before authentication: nothing to verify.
        if m.class() == Class::Success || !matches!(error_of(&response), Some(401 | 438)) {
            let expected = match self.rfc8489 {
                Some(_) => IntegrityAlgorithm::Sha256,
                None => IntegrityAlgorithm::Sha1,
            };
            assert_eq!(
                m.verify_integrity(self.key.as_bytes()),
                Some(expected),
                "response integrity"
            );
        }
        response
    }

    /// A request with the credentials and the integrity attribute of this kind of client.
    fn signed(&self, method: Method, attrs: &[Attr], tid: TransactionId) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Request, method, tid);
        add_attrs(&mut b, attrs);
        let userhash = self.rfc8489.as_ref().and_then(|r| r.userhash);
        match userhash {
            Some(hash) => b.add(AttrType::USERHASH, &hash),
            None => b.add(AttrType::USERNAME, self.username.as_bytes()),
        };
        b.add(AttrType::REALM, self.realm.as_bytes())
            .add(AttrType::NONCE, &self.nonce);
        let integrity = match &self.rfc8489 {
            Some(rfc8489) => {
                b.add_password_algorithm(PasswordAlgorithm::Sha256)
                    .add(AttrType::PASSWORD_ALGORITHMS, &rfc8489.offer);
                IntegrityAlgorithm::Sha256
            }
            None => IntegrityAlgorithm::Sha1,
        };
        b.add_integrity(integrity, self.key.as_bytes())
            .add_fingerprint();
        b.finish()
    }

    pub async fn allocate(&mut self, extra: &[Attr]) -> Vec<SocketAddr> {
        let mut attrs = vec![udp_transport()];
        attrs.extend(extra.iter().cloned());
        let response = self.request(Method::ALLOCATE, &attrs).await;
        let m = Message::parse(&response).unwrap();
        assert_eq!(
            m.class(),
            Class::Success,
            "allocate failed: {:?}",
            error_of(&response)
        );
        m.attributes(AttrType::XOR_RELAYED_ADDRESS)
            .map(|v| decode_xor_address(v, &m.transaction_id()).unwrap())
            .collect()
    }

    /// Allocate: the relayed address, or the error code the server answered with.
    pub async fn try_allocate(&mut self) -> Result<SocketAddr, u16> {
        let response = self.request(Method::ALLOCATE, &[udp_transport()]).await;
        if let Some(code) = error_of(&response) {
            return Err(code);
        }
        let m = Message::parse(&response).unwrap();
        let relayed = m
            .attribute(AttrType::XOR_RELAYED_ADDRESS)
            .expect("a relayed address");
        Ok(decode_xor_address(relayed, &m.transaction_id()).unwrap())
    }

    /// Refresh with `lifetime_secs` (0 deletes the allocation): the error code, if any.
    pub async fn refresh(&mut self, lifetime_secs: u32) -> Option<u16> {
        let lifetime = Attr::Raw(AttrType::LIFETIME, lifetime_secs.to_be_bytes().to_vec());
        error_of(&self.request(Method::REFRESH, &[lifetime]).await)
    }

    pub fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut tid = [0u8; 12];
        tid[..4].copy_from_slice(&self.client_id.to_be_bytes());
        tid[4..].copy_from_slice(&self.next_tid.to_be_bytes());
        TransactionId(tid)
    }
}

#[derive(Clone)]
pub enum Attr {
    Raw(AttrType, Vec<u8>),
    Peer(SocketAddr),
}

pub fn udp_transport() -> Attr {
    Attr::Raw(AttrType::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

pub fn family(kind: AttrType, code: u8) -> Attr {
    Attr::Raw(kind, vec![code, 0, 0, 0])
}

pub fn channel(number: u16) -> Attr {
    let [a, b] = number.to_be_bytes();
    Attr::Raw(AttrType::CHANNEL_NUMBER, vec![a, b, 0, 0])
}

pub fn xor_peer(addr: SocketAddr) -> Attr {
    Attr::Peer(addr)
}

/// An unauthenticated request (a first request, answered by a challenge).
pub fn request_bytes(method: Method, attrs: &[Attr], tid: TransactionId) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Request, method, tid);
    add_attrs(&mut b, attrs);
    b.add_fingerprint();
    b.finish()
}

fn add_attrs(b: &mut MessageBuilder, attrs: &[Attr]) {
    for attr in attrs {
        match attr {
            Attr::Raw(kind, value) => b.add(*kind, value),
            Attr::Peer(addr) => b.add_xor_address(AttrType::XOR_PEER_ADDRESS, *addr),
        };
    }
}

pub fn binding(tid: u8) -> Vec<u8> {
    MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([tid; 12])).finish()
}

pub fn send_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([0x55; 12]));
    b.add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
        .add(AttrType::DATA, data);
    b.finish()
}

pub fn class_of(bytes: &[u8]) -> Class {
    Message::parse(bytes).unwrap().class()
}

pub fn error_of(bytes: &[u8]) -> Option<u16> {
    let m = Message::parse(bytes).ok()?;
    ErrorCode::decode_code(m.attribute(AttrType::ERROR_CODE)?)
}

/// A directory removed when the test ends, even by a panic.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "rendez-test-{name}-{}-{unique}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
