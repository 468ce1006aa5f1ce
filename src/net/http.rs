//! The HTTP side of `rendez serve`: the call page, `GET /ws` signaling and `GET /healthz`.
//!
//! Each WebSocket is one task that owns the socket and a small queue of outgoing frames;
//! room logic is the sans-IO [`Rooms`], behind a mutex held only for its synchronous calls.
//! The welcome of each connection carries TURN credentials minted for it, addressed to the
//! host name the browser used to reach this page (so `turns:` matches the certificate).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::limits::{ConnectionLimits, Permit};
use crate::config::Config;
use crate::credential;
use crate::signal::{ConnId, Outgoing, Rooms, RoomsConfig};

const INDEX_HTML: &str = include_str!("../../web/index.html");
const APP_JS: &str = include_str!("../../web/app.js");
const STYLE_CSS: &str = include_str!("../../web/style.css");

/// Frames queued per WebSocket before new ones are dropped (a stuck browser).
const OUTBOUND_QUEUE: usize = 64;
/// How long a TLS handshake or an HTTP request head may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared by every signaling connection.
pub(crate) struct Hub {
    rooms: Mutex<Rooms>,
    queues: Mutex<HashMap<ConnId, mpsc::Sender<Message>>>,
    next_conn: AtomicU64,
    ice: IceServers,
    idle_timeout: Duration,
    max_message_bytes: usize,
}

/// What goes into a welcome's `iceServers`.
struct IceServers {
    secret: Option<String>,
    ttl: Duration,
    /// Operator-given URLs; empty: derived from the config and the request's host.
    fixed_urls: Vec<String>,
    config: Config,
}

impl Hub {
    pub(crate) fn new(config: &Config, id_seed: u64) -> Arc<Self> {
        let signal = &config.signal;
        let rooms = Rooms::new(
            RoomsConfig {
                room_size: signal.room_size,
                rooms_per_ip: signal.rooms_per_ip,
                messages_per_second: signal.messages_per_second,
                max_message_bytes: signal.max_message_bytes,
                token_secret: signal.token_secret.clone(),
            },
            id_seed,
        );
        if config.auth.secrets.is_empty() {
            tracing::warn!("no `auth.secrets`: the call page gets STUN only, no TURN relay");
        }
        Arc::new(Self {
            rooms: Mutex::new(rooms),
            queues: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            ice: IceServers {
                secret: config.auth.secrets.first().cloned(),
                ttl: config.auth.credential_ttl,
                fixed_urls: signal.turn_urls.clone(),
                config: config.clone(),
            },
            idle_timeout: signal.idle_timeout,
            max_message_bytes: signal.max_message_bytes,
        })
    }

    fn rooms(&self) -> MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queues(&self) -> MutexGuard<'_, HashMap<ConnId, mpsc::Sender<Message>>> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands each message to its connection's queue; a full queue drops the message.
    fn dispatch(&self, outgoing: Vec<Outgoing>) {
        let queues = self.queues();
        for Outgoing { to, message } in outgoing {
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if let Some(queue) = queues.get(&to) {
                let _ = queue.try_send(Message::Text(text.into()));
            }
        }
    }
}

impl IceServers {
    /// STUN for everyone, and TURN with credentials minted for `who` when a secret exists.
    fn for_connection(&self, host: &str, who: &str) -> serde_json::Value {
        let urls = if self.fixed_urls.is_empty() {
            credential::ice_urls(&self.config, host)
        } else {
            self.fixed_urls.clone()
        };
        let stun: Vec<String> = urls
            .iter()
            .filter(|u| u.starts_with("turn:") && u.ends_with("transport=udp"))
            .map(|u| {
                u.replacen("turn:", "stun:", 1)
                    .replace("?transport=udp", "")
            })
            .collect();
        // Browsers reject an entry without URLs, so an empty STUN list is left out.
        let mut servers: Vec<serde_json::Value> = Vec::new();
        if !stun.is_empty() {
            servers.push(serde_json::json!({ "urls": stun }));
        }
        if let Some(secret) = &self.secret {
            let credential = credential::mint(secret, who, SystemTime::now() + self.ttl);
            servers.push(credential::ice_server_json(&urls, &credential));
        }
        serde_json::Value::Array(servers)
    }
}

/// Serves HTTP (or HTTPS with `tls`) on `listener` until stopped.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    hub: Arc<Hub>,
    limits: Arc<ConnectionLimits>,
    mut stopped: watch::Receiver<bool>,
) {
    let router = Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/healthz", get(healthz))
        .route("/ws", get(websocket))
        .with_state(hub);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopped.changed() => return,
        };
        let Ok((stream, peer)) = accepted else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        // Every connection, WebSocket or not, holds a task and a file descriptor.
        let Some(permit) = limits.try_admit(peer.ip()) else {
            tracing::debug!(%peer, "HTTP connection refused: connection cap reached");
            continue;
        };
        // Shared with a WebSocket session, which outlives the HTTP connection it upgraded.
        let permit = Arc::new(permit);
        let service = TowerToHyperService::new(
            router
                .clone()
                .layer(axum::Extension(ConnectInfo(peer)))
                .layer(axum::Extension(permit.clone())),
        );
        let tls = tls.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(TokioIo::new(stream), service, stopped).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(TokioIo::new(stream), service, stopped).await
                        }
                        _ => tracing::debug!(%peer, "HTTPS handshake failed"),
                    }
                }
            }
        });
    }
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

async fn app_js() -> Response {
    static_file("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    static_file("text/css; charset=utf-8", STYLE_CSS)
}

async fn healthz() -> &'static str {
    "ok\n"
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
    State(hub): State<Arc<Hub>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::Extension(permit): axum::Extension<Arc<Permit>>,
    headers: HeaderMap,
) -> Response {
    let host = request_host(&headers);
    // Frames a little over the cap reach the room logic, which answers `bad-message`;
    // far larger ones close the socket.
    let frame_limit = hub.max_message_bytes * 2;
    upgrade
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .on_upgrade(move |socket| async move {
            session(hub, socket, peer.ip(), host).await;
            drop(permit);
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

/// One signaling connection, from upgrade to close.
async fn session(hub: Arc<Hub>, mut socket: WebSocket, ip: IpAddr, host: String) {
    let conn = hub.next_conn.fetch_add(1, Ordering::Relaxed);
    let (queue, mut outgoing) = mpsc::channel(OUTBOUND_QUEUE);
    hub.queues().insert(conn, queue);
    let ice_servers = hub.ice.for_connection(&host, &format!("web-{conn}"));
    hub.rooms().connect(Instant::now(), conn, ip, ice_servers);

    let ping_every = hub.idle_timeout / 2;
    let mut last_heard = Instant::now();
    let mut next_ping = Instant::now() + ping_every;
    loop {
        tokio::select! {
            frame = socket.recv() => {
                let Some(Ok(frame)) = frame else { break };
                last_heard = Instant::now();
                let outgoing = match frame {
                    Message::Text(text) => {
                        let unix_now = crate::net::unix_now();
                        hub.rooms().handle_text(Instant::now(), unix_now, conn, text.as_str())
                    }
                    Message::Binary(_) => hub.rooms().handle_binary(conn),
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => Vec::new(),
                };
                hub.dispatch(outgoing);
            }
            Some(message) = outgoing.recv() => {
                if socket.send(message).await.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(next_ping.into()) => {
                if last_heard.elapsed() >= hub.idle_timeout {
                    tracing::debug!(%ip, "signaling connection idle; closing");
                    break;
                }
                next_ping = Instant::now() + ping_every;
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    break;
                }
            }
        }
    }
    hub.queues().remove(&conn);
    let outgoing = hub.rooms().disconnect(conn);
    hub.dispatch(outgoing);
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
}
