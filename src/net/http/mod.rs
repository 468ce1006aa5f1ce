//! The HTTP side of `rendez serve`: the call page, `GET /ws` signaling and `GET /healthz`.
//!
//! Each WebSocket is one [`session`] task that owns the socket and a small queue of outgoing
//! frames; the [`hub`] task owns the room logic. The welcome of each connection carries
//! TURN credentials minted for it, addressed to the host name the browser used to reach
//! this page (so `turns:` matches the certificate).

pub(crate) mod hub;
mod outbound;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;

use super::acme::{Challenges, HTTP_CHALLENGE_PATH};
use super::limits::{ConnectionLimits, Permit};
use super::proxy_protocol::{self, Origin, TrustedProxies};
use hub::HubHandle;

const INDEX_HTML: &str = include_str!("../../../web/index.html");
/// The page's script and the modules it imports.
const MODULES: [(&str, &str); 5] = [
    ("/app.js", include_str!("../../../web/app.js")),
    ("/bandwidth.js", include_str!("../../../web/bandwidth.js")),
    ("/chat.js", include_str!("../../../web/chat.js")),
    ("/devices.js", include_str!("../../../web/devices.js")),
    ("/quality.js", include_str!("../../../web/quality.js")),
];
const STYLE_CSS: &str = include_str!("../../../web/style.css");

/// How long a PROXY header, a TLS handshake or an HTTP request head may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a connection's HTTP/1 read buffer may hold, and so the longest request head:
/// the page's requests and a WebSocket upgrade take well under 2 KiB, and a browser's
/// cookies for this host a few more, while hyper's default (~400 KiB) would let every open
/// connection hold that much. A longer head gets `431 Request Header Fields Too Large`.
const MAX_REQUEST_HEAD_BYTES: usize = 16 * 1024;
/// Each connection's kernel send buffer. Left to itself, Linux grows it up to `tcp_wmem`'s
/// maximum (4 MiB by default) for a client that stops reading, sixteen times what its
/// session's queue may hold. This is ample for the page (under 100 KiB in all) and for
/// signaling, even across a continent.
const SEND_BUFFER_BYTES: usize = 64 * 1024;

/// What the router's handlers share.
#[derive(Clone)]
struct AppState {
    hub: HubHandle,
    tracker: TaskTracker,
    stopped: watch::Receiver<bool>,
}

/// The page and signaling for connections accepted elsewhere: by [`serve`]'s accept loop,
/// or routed here by a port shared with TURN ([`crate::net::shared_port`]), in the clear
/// or already TLS-terminated.
#[derive(Clone)]
pub(crate) struct PageRoute {
    router: Router,
    stopped: watch::Receiver<bool>,
}

impl PageRoute {
    pub fn new(hub: HubHandle, tracker: TaskTracker, stopped: watch::Receiver<bool>) -> Self {
        let state = AppState {
            hub,
            tracker,
            stopped: stopped.clone(),
        };
        let mut router = Router::new();
        for (path, body) in MODULES {
            router = router.route(path, get(move || async move { javascript(body) }));
        }
        let router = router
            .route("/", get(index))
            .route("/style.css", get(style_css))
            .route("/healthz", get(healthz))
            .route("/ws", get(websocket))
            .with_state(state);
        Self { router, stopped }
    }

    /// Serves HTTP/1.1 on `stream` for `client` (its rooms and connections counted under
    /// `permit`) until the connection ends.
    pub async fn serve<S>(self, stream: S, client: SocketAddr, permit: Permit)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Shared with a WebSocket session, which outlives the HTTP connection it upgraded.
        let permit = Arc::new(permit);
        let service = TowerToHyperService::new(
            self.router
                .layer(axum::Extension(ConnectInfo(client)))
                .layer(axum::Extension(permit)),
        );
        serve_connection(TokioIo::new(stream), service, self.stopped).await;
    }
}

/// Plain HTTP on a port that serves the page over HTTPS: ACME HTTP-01 validation
/// (`/.well-known/acme-challenge/TOKEN`, with `[acme]`) is answered, and every other request
/// is sent to the same host and path over HTTPS (308, so a method and body are kept).
pub(crate) async fn redirect_to_https<S>(
    stream: S,
    challenges: Option<Arc<Challenges>>,
    stopped: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut router = Router::new().fallback(redirect);
    if let Some(challenges) = challenges {
        router = router.route(
            &format!("{HTTP_CHALLENGE_PATH}{{token}}"),
            get(acme_challenge).with_state(challenges),
        );
    }
    serve_connection(
        TokioIo::new(stream),
        TowerToHyperService::new(router),
        stopped,
    )
    .await;
}

/// The key authorization for an open HTTP-01 challenge (RFC 8555 §8.3), whatever the Host
/// (the validator sends `name:port`).
async fn acme_challenge(
    State(challenges): State<Arc<Challenges>>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    match challenges.http_answer(&token) {
        Some(answer) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], answer).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such challenge\n").into_response(),
    }
}

/// A plain-HTTP port of its own (`[acme] http-listen`): HTTP-01 answers and redirects.
pub(crate) async fn serve_redirects(
    listener: TcpListener,
    challenges: Arc<Challenges>,
    limits: Arc<ConnectionLimits>,
    tracker: TaskTracker,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Some(permit) = limits.try_admit(peer.ip()) else {
            tracing::debug!(%peer, "HTTP connection refused: connection cap reached");
            continue;
        };
        limit_send_buffer(&stream, peer);
        let (challenges, stopped) = (challenges.clone(), stopped.clone());
        tracker.spawn(async move {
            redirect_to_https(stream, Some(challenges), stopped).await;
            drop(permit);
        });
    }
}

async fn redirect(headers: HeaderMap, uri: axum::http::Uri) -> Response {
    let Some(location) = https_location(&headers, &uri) else {
        return (StatusCode::BAD_REQUEST, "a Host header is needed\n").into_response();
    };
    (
        StatusCode::PERMANENT_REDIRECT,
        [(header::LOCATION, location)],
    )
        .into_response()
}

/// `https://` and the request's Host (without `:443`, the scheme's default) and path; `None`
/// without a Host made only of host name or address characters (it ends up in a URL).
fn https_location(headers: &HeaderMap, uri: &axum::http::Uri) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    // Neither plain HTTP's default port nor HTTPS's belongs in an https:// URL: a request to
    // port 80 (`[acme] http-listen`) goes to the page on 443.
    let host = host
        .strip_suffix(":443")
        .or_else(|| host.strip_suffix(":80"))
        .unwrap_or(host);
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
    {
        return None;
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Some(format!("https://{host}{path}"))
}

/// Limits how much the kernel buffers for an HTTP client that stops reading.
pub(crate) fn limit_send_buffer(stream: &TcpStream, peer: SocketAddr) {
    if let Err(error) = socket2::SockRef::from(stream).set_send_buffer_size(SEND_BUFFER_BYTES) {
        tracing::debug!(%peer, %error, "could not size an HTTP connection's send buffer");
    }
}

/// Serves HTTP (or HTTPS with `tls`) on `listener` until stopped. Connections from
/// `proxies` begin with a PROXY header naming the client (whose rooms and connections are
/// counted).
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxies: TrustedProxies,
    page: PageRoute,
    limits: Arc<ConnectionLimits>,
    tracker: TaskTracker,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        limit_send_buffer(&stream, peer);
        // Every connection, WebSocket or not, holds a task and a file descriptor. A load
        // balancer's counts under the client its header names, once read.
        let Some((permit, behind_proxy)) = limits.try_admit_from(peer.ip(), &proxies) else {
            tracing::debug!(%peer, "HTTP connection refused: connection cap reached");
            continue;
        };
        let page = page.clone();
        let tls = tls.clone();
        let stopped = stopped.clone();
        tracker.spawn(async move {
            let mut stopped_early = stopped.clone();
            let (mut stream, mut permit, mut client) = (stream, permit, peer);
            if behind_proxy {
                let named = named_client(&mut stream, peer, &mut permit, &mut stopped_early);
                let Some(named) = named.await else { return };
                client = named;
            }
            match tls {
                None => page.serve(stream, client, permit).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        done = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => done,
                        _ = stopped_early.changed() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) if super::tls::is_acme_validation(stream.get_ref().1) => {}
                        Ok(Ok(stream)) => page.serve(stream, client, permit).await,
                        _ => tracing::debug!(%peer, "HTTPS handshake failed"),
                    }
                }
            }
        });
    }
}

/// The client a load balancer's PROXY header names, counted under its address; `None`
/// (logged) when the connection must close.
async fn named_client(
    stream: &mut TcpStream,
    peer: SocketAddr,
    permit: &mut Permit,
    stopped: &mut watch::Receiver<bool>,
) -> Option<SocketAddr> {
    let header = tokio::select! {
        read = tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy_protocol::read_header(stream)) => read,
        _ = stopped.changed() => return None,
    };
    let client = match header {
        Ok(Ok(Origin::Relayed { client, .. })) => client,
        Ok(Ok(Origin::AsConnected)) => peer,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "HTTP connection from a proxy closed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "HTTP connection from a proxy closed: no PROXY header in time");
            return None;
        }
    };
    if !permit.attribute(client.ip()) {
        tracing::debug!(%client, %peer, "HTTP connection refused: per-IP cap reached");
        return None;
    }
    Some(client)
}

async fn serve_connection<I, S>(io: I, service: S, mut stopped: watch::Receiver<bool>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stopped.changed() => connection.as_mut().graceful_shutdown(),
    }
}

async fn index() -> Response {
    static_file("text/html; charset=utf-8", INDEX_HTML)
}

fn javascript(body: &'static str) -> Response {
    static_file("text/javascript; charset=utf-8", body)
}

async fn style_css() -> Response {
    static_file("text/css; charset=utf-8", STYLE_CSS)
}

/// 200 while serving; 503 once the server drains, or while the Redis of a fleet is
/// unreachable (joins are refused), so a load balancer stops sending new visitors here
/// while existing calls go on.
async fn healthz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if state.hub.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !state.hub.rooms_available() {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // The page loads nothing from elsewhere; 'self' also covers its WebSocket.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
        .into_response()
}

async fn websocket(
    upgrade: WebSocketUpgrade,
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(permit): axum::Extension<Arc<Permit>>,
    headers: HeaderMap,
) -> Response {
    let host = request_host(&headers);
    // Frames a little over the cap reach the room logic, which answers `bad-message`;
    // far larger ones close the socket.
    let frame_limit = state.hub.settings().max_message_bytes * 2;
    // Counted as a task of the server until the session ends, so shutdown waits for it.
    let running = state.tracker.token();
    session::configure(upgrade, frame_limit).on_upgrade(move |socket| async move {
        session::run(state.hub, socket, peer.ip(), host, state.stopped).await;
        drop((permit, running));
    })
}

/// The host name the browser used, without the port (IPv6 keeps its brackets).
fn request_host(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let without_port = if host.starts_with('[') {
        host.split_once(']').map_or(host, |(v6, _)| v6).to_owned() + "]"
    } else {
        host.split(':').next().unwrap_or(host).to_owned()
    };
    // Only characters of a host name or address: the value ends up in URLs.
    if without_port
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
    {
        without_port
    } else {
        "localhost".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_loses_its_port_and_odd_characters() {
        let host = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, value.parse().unwrap());
            request_host(&headers)
        };
        assert_eq!(host("turn.example.com:8080"), "turn.example.com");
        assert_eq!(host("10.99.0.1"), "10.99.0.1");
        assert_eq!(host("[2001:db8::1]:8443"), "[2001:db8::1]");
        assert_eq!(host("evil\"host"), "localhost");
        assert_eq!(request_host(&HeaderMap::new()), "localhost");
    }

    #[test]
    fn redirect_keeps_host_and_path_and_drops_the_default_port() {
        let location = |host: &str, uri: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::HOST, host.parse().unwrap());
            https_location(&headers, &uri.parse().unwrap())
        };
        assert_eq!(
            location("meet.example.com:443", "/room?x=1").as_deref(),
            Some("https://meet.example.com/room?x=1")
        );
        assert_eq!(
            location("meet.example.com:8443", "/").as_deref(),
            Some("https://meet.example.com:8443/")
        );
        assert_eq!(
            location("[2001:db8::1]", "/").as_deref(),
            Some("https://[2001:db8::1]/")
        );
        assert_eq!(location("evil/host", "/"), None);
        assert_eq!(
            https_location(&HeaderMap::new(), &"/".parse().unwrap()),
            None
        );
    }
}
