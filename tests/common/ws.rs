//! A signaling client as the page is one: a WebSocket to `/ws` speaking JSON messages.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long a test waits for one expected message by default.
pub const WAIT: Duration = Duration::from_secs(3);

pub struct SignalClient {
    pub socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
}

/// The signaling URL of `server` (`ws://127.0.0.1:PORT/ws`).
pub fn ws_url(server: &rendez::Handle) -> String {
    format!("ws://127.0.0.1:{}/ws", server.signal_addr().unwrap().port())
}

impl SignalClient {
    /// Connects to `server`'s signaling.
    pub async fn connect(server: &rendez::Handle) -> Self {
        Self::connect_to(&ws_url(server)).await
    }

    /// A client whose socket takes only a few KiB before the server's writes to it block
    /// while it does not read (loopback would otherwise buffer megabytes), as on a slow link.
    pub async fn connect_with_small_receive_buffer(server: &rendez::Handle) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(server.signal_addr().unwrap()))
            .await
            .expect("TCP connect")
            .unwrap();
        let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
        let (socket, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(ws_url(server), stream),
        )
        .await
        .expect("WebSocket handshake")
        .unwrap();
        Self { socket }
    }

    /// Connects to `url` (`ws://HOST:PORT/ws`) within `limit`.
    pub async fn connect_within(url: &str, limit: Duration) -> Self {
        let (socket, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(url))
            .await
            .expect("WebSocket connect")
            .unwrap();
        Self { socket }
    }

    pub async fn connect_to(url: &str) -> Self {
        Self::connect_within(url, WAIT).await
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    /// The next text message within `limit`; None on timeout or when the socket ends.
    pub async fn try_recv(&mut self, limit: Duration) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout(limit, self.socket.next())
                .await
                .ok()??
                .ok()?;
            if let Message::Text(text) = frame {
                return serde_json::from_str(text.as_str()).ok();
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_within(WAIT).await
    }

    pub async fn recv_within(&mut self, limit: Duration) -> Value {
        self.try_recv(limit).await.expect("expected a message")
    }

    /// The next message of `kind`, skipping others (such as peer-joined).
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        self.recv_type_within(kind, WAIT).await
    }

    /// The next message of `kind` within `limit`, skipping others.
    pub async fn recv_type_within(&mut self, kind: &str, limit: Duration) -> Value {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(message) = self.try_recv(limit).await {
                    if message["type"] == kind {
                        return message;
                    }
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {kind} within {limit:?}"))
    }

    /// Joins and returns the welcome (panics on anything else first).
    pub async fn join(&mut self, room: &str, name: &str) -> Value {
        self.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        let welcome = self.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        welcome
    }

    /// Reads whatever is queued (peer-joined notices and the like).
    pub async fn drain(&mut self) {
        while self.try_recv(Duration::from_millis(100)).await.is_some() {}
    }

    /// Nothing but join notices arrives.
    pub async fn expect_silence(&mut self) {
        while let Some(message) = self.try_recv(Duration::from_millis(200)).await {
            assert!(
                message["type"] == "peer-joined",
                "unexpected message {message}"
            );
        }
    }

    /// Reads on until the server has closed the socket; false if it is still open after
    /// `limit`.
    pub async fn ends_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, async {
            while let Some(Ok(_)) = self.socket.next().await {}
        })
        .await
        .is_ok()
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}
