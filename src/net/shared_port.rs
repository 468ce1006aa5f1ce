//! One TCP port for everything: an address that appears in more than one of `listen` (its
//! TCP side), `tls-listen` and `[signal] listen` is bound once, and each connection goes to
//! the service its first bytes ask for.
//!
//! Routes, in order:
//!
//! 1. From a load balancer in `[connections] proxy-protocol-from`: its PROXY header first,
//!    as on every other port.
//! 2. The first byte in the clear, peeked (not read) from the socket:
//!    - `0x16`, a TLS handshake record: the handshake, with the shared certificate (the
//!      swappable [`CertStore`], so a reload reaches new connections here too);
//!    - top two bits `00`, a STUN message: TURN over TCP (whose framing checks the magic
//!      cookie and closes garbage);
//!    - `A`–`Z`, an HTTP method: the page in the clear, or, when this port serves the page
//!      over HTTPS, a redirect to it ([`redirect_to_https`], where an ACME HTTP-01
//!      responder goes). ChannelData (`0x40`–`0x7F`, which holds the letters) cannot open
//!      a connection: no channel is bound before a STUN message on it;
//!    - anything else closes the connection at once.
//! 3. After a handshake, the ALPN protocol it settled on: `stun.turn` → TURN over TLS,
//!    `http/1.1` → the page over HTTPS. Without one, the first decrypted byte decides as in
//!    the clear (`00` → TURN, a letter → HTTPS): TURN clients often offer no ALPN. The
//!    handshake negotiates the first protocol the client offers that this port serves, or
//!    none: rustls refuses a client whose list does not overlap the server's, and a client
//!    offering `h2` alone or `acme-tls/1` must still complete the handshake.
//!
//! Routing runs in each connection's own task, never in the accept loop, and all of it
//! (PROXY header, first byte, handshake, first decrypted bytes) within one
//! `message-timeout`: a silent client is closed then, without touching the others. Once
//! routed, the connection is the route's, with the route's own timeouts.
//!
//! Ports that serve one thing keep their own accept loops and pay nothing for this.
//! Connections on shared ports are counted under caps of their own (`[connections] max`,
//! `max-per-ip`), as the page's and TURN's dedicated ports each are.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;
use tokio_rustls::LazyConfigAcceptor;
use tokio_util::task::TaskTracker;

use super::acme::{Challenges, ALPN_ACME_TLS};
use super::http::{self, PageRoute};
use super::limits::{ConnectionLimits, Permit};
use super::proxy_protocol::{self, Origin, TrustedProxies};
use super::tls::{self, CertStore, ALPN_HTTP_1_1, ALPN_STUN_TURN};
use super::turn_io::stream::TurnRoute;
use crate::config::Config;
use crate::turn::{FiveTuple, Transport};

/// The first byte of a TLS record carrying a handshake message (RFC 8446 §5.1).
const TLS_HANDSHAKE: u8 = 0x16;
/// The most read of a TLS connection without ALPN to see what it carries: its first read.
const FIRST_DECRYPTED_READ: usize = 4096;

/// What one address serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Services {
    /// TURN over TCP in the clear: the address is in `listen`.
    pub turn: bool,
    /// TURN over TLS: in `tls-listen`, with `[tls]`.
    pub turns: bool,
    /// The page and signaling: it is `[signal] listen` (over HTTPS with `[tls]`).
    pub page: bool,
}

impl Services {
    fn count(self) -> usize {
        usize::from(self.turn) + usize::from(self.turns) + usize::from(self.page)
    }
}

/// The addresses served by more than one service, and what each serves. Port 0 is never
/// shared: each such entry gets a port of its own.
pub(crate) fn shared_addresses(config: &Config) -> BTreeMap<SocketAddr, Services> {
    let mut services: BTreeMap<SocketAddr, Services> = BTreeMap::new();
    for &addr in &config.listen {
        services.entry(addr).or_default().turn = true;
    }
    if config.serves_tls() {
        for &addr in &config.tls_listen {
            services.entry(addr).or_default().turns = true;
        }
    }
    if config.signal.enabled {
        services.entry(config.signal.listen).or_default().page = true;
    }
    services.retain(|addr, s| addr.port() != 0 && s.count() > 1);
    services
}

/// Everything a shared port's connections may be routed to.
#[derive(Clone)]
pub(crate) struct Routes {
    pub turn: TurnRoute,
    /// Present when the page is served.
    pub page: Option<PageRoute>,
    /// Present with `[tls]` or `[acme]`.
    pub certs: Option<Arc<CertStore>>,
    /// Present with `[acme]`: HTTP-01 answers for plain HTTP.
    pub challenges: Option<Arc<Challenges>>,
    pub proxies: TrustedProxies,
    pub limits: Arc<ConnectionLimits>,
    pub message_timeout: Duration,
    pub tracker: TaskTracker,
    pub stopped: watch::Receiver<bool>,
}

/// Starts accepting connections on one shared port until stopped, each routed in its own
/// task.
pub(crate) fn spawn(
    listener: TcpListener,
    services: Services,
    routes: Routes,
) -> anyhow::Result<()> {
    let port = Arc::new(SharedPort::new(services, routes)?);
    let mut stopped = port.routes.stopped.clone();
    let tracker = port.routes.tracker.clone();
    tracker.spawn(async move {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                _ = stopped.changed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(error) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let routes = &port.routes;
            let Some((permit, behind_proxy)) =
                routes.limits.try_admit_from(peer.ip(), &routes.proxies)
            else {
                tracing::debug!(%peer, "connection refused: connection cap reached");
                continue;
            };
            let _ = stream.set_nodelay(true);
            routes
                .tracker
                .spawn(port.clone().open(stream, peer, permit, behind_proxy));
        }
    });
    Ok(())
}

/// A shared port: what it serves, and the TLS configurations it picks from by the ALPN
/// protocols a client offers.
struct SharedPort {
    services: Services,
    routes: Routes,
    /// The page, when this port serves it.
    page: Option<PageRoute>,
    tls: Option<TlsConfigs>,
}

/// One server configuration per ALPN answer, all presenting the same certificate store.
struct TlsConfigs {
    turn: Arc<rustls::ServerConfig>,
    page: Arc<rustls::ServerConfig>,
    none: Arc<rustls::ServerConfig>,
    acme: Arc<rustls::ServerConfig>,
}

/// What a connection turned out to carry, ready for its route.
enum Routed {
    Turn(TcpStream),
    TurnOverTls(Rewound<TlsStream<TcpStream>>),
    Page(TcpStream, PageRoute),
    PageOverTls(Rewound<TlsStream<TcpStream>>, PageRoute),
    RedirectToHttps(TcpStream),
}

/// What a TLS connection carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TlsRoute {
    Turn,
    Page,
    /// ACME's TLS-ALPN-01 validation (with `[acme]`): ALPN `acme-tls/1`, the challenge
    /// certificate, and nothing sent after the handshake.
    Acme,
}

impl TlsRoute {
    fn by_alpn(protocol: &[u8]) -> Option<Self> {
        match protocol {
            ALPN_STUN_TURN => Some(Self::Turn),
            ALPN_HTTP_1_1 => Some(Self::Page),
            ALPN_ACME_TLS => Some(Self::Acme),
            _ => None,
        }
    }

    /// Without ALPN (TURN clients often offer none): STUN, or an HTTP method. ChannelData
    /// cannot come first here either.
    fn by_first_byte(byte: u8) -> Option<Self> {
        match FirstByte::of(byte)? {
            FirstByte::Stun => Some(Self::Turn),
            FirstByte::Http => Some(Self::Page),
            FirstByte::Tls => None,
        }
    }
}

/// What the first byte of a connection, in the clear or decrypted, asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FirstByte {
    Tls,
    Stun,
    Http,
}

impl FirstByte {
    fn of(byte: u8) -> Option<Self> {
        match byte {
            TLS_HANDSHAKE => Some(Self::Tls),
            // RFC 8489 §5: every STUN message begins with two zero bits.
            0x00..=0x3F => Some(Self::Stun),
            b'A'..=b'Z' => Some(Self::Http),
            _ => None,
        }
    }
}

/// Why a connection was closed before it reached a route (for the debug log).
#[derive(Debug)]
enum Unrouted {
    /// Its first bytes ask for nothing this port serves.
    Garbage,
    Stalled,
    ByPeer,
    /// No valid PROXY header from a load balancer, or its client is over `max-per-ip`.
    Proxy,
    Handshake,
    Shutdown,
    /// The CA's TLS-ALPN-01 validation: the handshake was all of it.
    AcmeValidation,
}

impl SharedPort {
    fn new(services: Services, routes: Routes) -> anyhow::Result<Self> {
        let tls = match &routes.certs {
            Some(certs) if services.turns || services.page => Some(TlsConfigs {
                turn: tls::server_config(certs, Some(ALPN_STUN_TURN))?,
                page: tls::server_config(certs, Some(ALPN_HTTP_1_1))?,
                none: tls::server_config(certs, None)?,
                acme: tls::exact_server_config(certs, &[ALPN_ACME_TLS])?,
            }),
            _ => None,
        };
        let page = routes.page.clone().filter(|_| services.page);
        Ok(Self {
            services,
            routes,
            page,
            tls,
        })
    }

    /// Routes one connection within `message-timeout`, then serves it.
    async fn open(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        mut permit: Permit,
        behind_proxy: bool,
    ) {
        let Ok(server) = stream.local_addr() else {
            return;
        };
        let mut tuple = FiveTuple {
            transport: Transport::Tcp,
            client: peer,
            server,
        };
        let mut stopped = self.routes.stopped.clone();
        let routing = self.route(stream, behind_proxy, &mut tuple, &mut permit);
        let routed = tokio::select! {
            done = tokio::time::timeout(self.routes.message_timeout, routing) => {
                done.unwrap_or(Err(Unrouted::Stalled))
            }
            _ = stopped.changed() => Err(Unrouted::Shutdown),
        };
        let routed = match routed {
            Ok(routed) => routed,
            Err(reason) => {
                tracing::debug!(client = %tuple.client, ?reason, "connection on a shared port closed");
                return;
            }
        };
        let routes = &self.routes;
        let client = tuple.client;
        match routed {
            Routed::Turn(stream) => routes.turn.clone().serve(stream, tuple, permit).await,
            Routed::TurnOverTls(stream) => {
                tuple.transport = Transport::Tls;
                routes.turn.clone().serve(stream, tuple, permit).await
            }
            Routed::Page(stream, page) => page.serve(stream, client, permit).await,
            Routed::PageOverTls(stream, page) => page.serve(stream, client, permit).await,
            Routed::RedirectToHttps(stream) => {
                http::redirect_to_https(stream, routes.challenges.clone(), routes.stopped.clone())
                    .await
            }
        }
    }

    /// Reads what the connection carries and opens it for that route.
    async fn route(
        &self,
        mut stream: TcpStream,
        behind_proxy: bool,
        tuple: &mut FiveTuple,
        permit: &mut Permit,
    ) -> Result<Routed, Unrouted> {
        if behind_proxy {
            take_proxy_header(&mut stream, tuple, permit).await?;
        }
        let mut first = [0u8; 1];
        if stream
            .peek(&mut first)
            .await
            .map_err(|_| Unrouted::ByPeer)?
            == 0
        {
            return Err(Unrouted::ByPeer);
        }
        match (FirstByte::of(first[0]), &self.page) {
            (Some(FirstByte::Tls), _) => match &self.tls {
                Some(configs) => self.route_tls(stream, configs).await,
                None => Err(Unrouted::Garbage),
            },
            (Some(FirstByte::Stun), _) if self.services.turn => Ok(Routed::Turn(stream)),
            // The page is served over HTTPS here: plain HTTP is sent there.
            (Some(FirstByte::Http), Some(_)) if self.tls.is_some() => {
                Ok(Routed::RedirectToHttps(stream))
            }
            (Some(FirstByte::Http), Some(page)) => {
                http::limit_send_buffer(&stream, tuple.client);
                Ok(Routed::Page(stream, page.clone()))
            }
            _ => Err(Unrouted::Garbage),
        }
    }

    /// The handshake, answering the ALPN offer with the first protocol this port serves (or
    /// none), then the route that protocol names or, without one, the first decrypted byte.
    async fn route_tls(&self, stream: TcpStream, configs: &TlsConfigs) -> Result<Routed, Unrouted> {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(handshake_failed)?;
        let by_alpn = start
            .client_hello()
            .alpn()
            .into_iter()
            .flatten()
            .find_map(|protocol| TlsRoute::by_alpn(protocol).filter(|&r| self.serves(r)));
        let config = match by_alpn {
            Some(TlsRoute::Turn) => &configs.turn,
            Some(TlsRoute::Page) => &configs.page,
            Some(TlsRoute::Acme) => &configs.acme,
            None => &configs.none,
        };
        let mut stream = start
            .into_stream(config.clone())
            .await
            .map_err(handshake_failed)?;
        let (route, read_ahead) = match by_alpn {
            Some(TlsRoute::Acme) => return Err(Unrouted::AcmeValidation),
            Some(route) => (Some(route), Vec::new()),
            None => {
                let mut first = vec![0; FIRST_DECRYPTED_READ];
                match stream.read(&mut first).await {
                    Ok(0) | Err(_) => return Err(Unrouted::ByPeer),
                    Ok(read) => first.truncate(read),
                }
                (TlsRoute::by_first_byte(first[0]), first)
            }
        };
        let stream = Rewound::new(stream, read_ahead);
        match (route, &self.page) {
            (Some(TlsRoute::Turn), _) if self.services.turns => Ok(Routed::TurnOverTls(stream)),
            (Some(TlsRoute::Page), Some(page)) => {
                let tcp = stream.inner.get_ref().0;
                if let Ok(peer) = tcp.peer_addr() {
                    http::limit_send_buffer(tcp, peer);
                }
                Ok(Routed::PageOverTls(stream, page.clone()))
            }
            _ => Err(Unrouted::Garbage),
        }
    }

    fn serves(&self, route: TlsRoute) -> bool {
        match route {
            TlsRoute::Turn => self.services.turns,
            TlsRoute::Page => self.page.is_some(),
            TlsRoute::Acme => self.routes.challenges.is_some(),
        }
    }
}

/// Takes the client's address from a balancer's PROXY header and counts the connection
/// under it.
async fn take_proxy_header(
    stream: &mut TcpStream,
    tuple: &mut FiveTuple,
    permit: &mut Permit,
) -> Result<(), Unrouted> {
    match proxy_protocol::read_header(stream).await {
        Ok(Origin::Relayed { client, server }) => {
            tuple.client = client;
            tuple.server = server;
        }
        Ok(Origin::AsConnected) => {}
        Err(error) => {
            tracing::debug!(proxy = %tuple.client, %error, "connection from a proxy closed");
            return Err(Unrouted::Proxy);
        }
    }
    if !permit.attribute(tuple.client.ip()) {
        tracing::debug!(client = %tuple.client, "connection refused: per-IP cap reached");
        return Err(Unrouted::Proxy);
    }
    Ok(())
}

fn handshake_failed(error: std::io::Error) -> Unrouted {
    tracing::debug!(%error, "TLS handshake failed on a shared port");
    Unrouted::Handshake
}

/// A stream whose first bytes were read to route it, handed to the route as if unread.
pub(crate) struct Rewound<S> {
    inner: S,
    read_ahead: Vec<u8>,
    /// How much of `read_ahead` the route has read.
    taken: usize,
}

impl<S> Rewound<S> {
    fn new(inner: S, read_ahead: Vec<u8>) -> Self {
        Self {
            inner,
            read_ahead,
            taken: 0,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let left = &this.read_ahead[this.taken..];
        if left.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = left.len().min(buf.remaining());
        buf.put_slice(&left[..n]);
        this.taken += n;
        if this.taken == this.read_ahead.len() {
            // Read through: the buffer is not kept for the connection's life.
            this.read_ahead = Vec::new();
            this.taken = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_pick_a_route() {
        assert_eq!(FirstByte::of(0x16), Some(FirstByte::Tls));
        // A Binding request and an Allocate request.
        assert_eq!(FirstByte::of(0x00), Some(FirstByte::Stun));
        assert_eq!(FirstByte::of(0x01), Some(FirstByte::Stun));
        for method in ["GET", "POST", "HEAD", "OPTIONS", "DELETE", "CONNECT", "PUT"] {
            assert_eq!(FirstByte::of(method.as_bytes()[0]), Some(FirstByte::Http));
        }
        // ChannelData on a channel no connection can have bound yet, and binary noise.
        assert_eq!(FirstByte::of(0x40), None);
        assert_eq!(FirstByte::of(0x7F), None);
        assert_eq!(FirstByte::of(0xFF), None);
        assert_eq!(FirstByte::of(0x80), None);
    }

    #[test]
    fn only_addresses_in_more_than_one_list_are_shared() {
        let config = Config::from_toml(
            r#"
            listen = ["0.0.0.0:3478", "0.0.0.0:443", "127.0.0.1:0"]
            tls-listen = ["0.0.0.0:443", "127.0.0.1:0"]
            [tls]
            cert = "c.pem"
            key = "k.pem"
            [signal]
            listen = "0.0.0.0:443"
            "#,
        )
        .unwrap();
        let shared = shared_addresses(&config);
        let all = Services {
            turn: true,
            turns: true,
            page: true,
        };
        assert_eq!(
            shared.into_iter().collect::<Vec<_>>(),
            [("0.0.0.0:443".parse().unwrap(), all)]
        );
    }

    #[tokio::test]
    async fn a_rewound_stream_reads_its_first_bytes_again() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut rewound = Rewound::new(client, b"GET".to_vec());
        tokio::io::AsyncWriteExt::write_all(&mut server, b" /")
            .await
            .unwrap();
        drop(server);
        let mut all = String::new();
        rewound.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "GET /");
    }
}
