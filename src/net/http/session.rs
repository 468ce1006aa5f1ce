//! One signaling WebSocket, from upgrade to close.
//!
//! The session reads frames and hands them to the hub, and writes what the hub queues for
//! it. It never blocks the hub, and a browser that stops reading cannot block it either:
//! every write has a deadline and gives way to shutdown, and the hub drops a session whose
//! queue (bounded in frames and in bytes, see [`outbound`]) is full, which ends it at once,
//! even mid-write. So a stuck reader is gone within [`SEND_TIMEOUT`] of its socket filling
//! up, sooner when others keep sending to it. Its buffers are sized for signaling messages
//! (a few KiB), not for bulk data.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use tokio::sync::watch;

use super::hub::{HubHandle, Input};
use super::outbound::{self, Inbox};

/// How long one frame may take to leave; a browser that stopped reading is closed after it.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// The WebSocket's read buffer, held by every idle session: small, since a larger message
/// only takes a few more reads.
const READ_BUFFER_BYTES: usize = 1024;
/// Writes are flushed once this much is buffered (each frame is flushed anyway).
const WRITE_BUFFER_BYTES: usize = 4096;

/// The upgrade with the session's limits and buffer sizes.
pub(super) fn configure(upgrade: WebSocketUpgrade, frame_limit: usize) -> WebSocketUpgrade {
    upgrade
        .max_message_size(frame_limit)
        .max_frame_size(frame_limit)
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // Room for the frame being written and a ping: what the session holds besides its
        // queue when the browser stops reading.
        .max_write_buffer_size(frame_limit + WRITE_BUFFER_BYTES)
}

/// Why a session ended (for the debug log).
#[derive(Debug)]
enum Ended {
    Closed,
    Idle,
    NotReading,
    DroppedByHub,
    Shutdown,
}

pub(super) async fn run(
    hub: HubHandle,
    mut socket: WebSocket,
    ip: IpAddr,
    host: String,
    mut stopped: watch::Receiver<bool>,
) {
    let conn = hub.next_conn();
    let settings = hub.settings();
    let (outbound, mut inbox) = outbound::queue(outbound::budget_bytes(settings.max_message_bytes));
    let ice_servers = settings.ice_servers(&host);
    let opened = Input::Opened {
        conn,
        ip,
        ice_servers,
        outbound,
    };
    if !hub.send(opened).await {
        return;
    }
    let idle_timeout = settings.idle_timeout;
    drop(settings);
    let ping_every = idle_timeout / 2;
    let mut last_heard = Instant::now();
    let mut next_ping = Instant::now() + ping_every;
    let ended = loop {
        tokio::select! {
            frame = socket.recv() => {
                let Some(Ok(frame)) = frame else { break Ended::Closed };
                last_heard = Instant::now();
                let input = match frame {
                    Message::Text(text) => {
                        tracing::trace!(conn, bytes = text.len(), "signaling frame in");
                        Input::Text { conn, text }
                    }
                    Message::Binary(_) => Input::Binary { conn },
                    Message::Close(_) => break Ended::Closed,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if !hub.send(input).await {
                    break Ended::Shutdown;
                }
            }
            queued = inbox.recv() => {
                let Some(queued) = queued else { break Ended::DroppedByHub };
                // Its bytes stay counted against the queue until `queued` drops, once sent.
                let frame = Message::Text(queued.text());
                if let Err(ended) = send(&mut socket, frame, &mut stopped, &inbox).await {
                    break ended;
                }
                tracing::trace!(conn, "signaling frame out");
            }
            _ = tokio::time::sleep_until(next_ping.into()) => {
                if last_heard.elapsed() >= idle_timeout {
                    break Ended::Idle;
                }
                next_ping = Instant::now() + ping_every;
                let ping = Message::Ping(Vec::new().into());
                if let Err(ended) = send(&mut socket, ping, &mut stopped, &inbox).await {
                    break ended;
                }
            }
            _ = stopped.changed() => break Ended::Shutdown,
        }
    };
    tracing::debug!(%ip, ?ended, "signaling session ended");
    hub.send(Input::Closed { conn }).await;
}

/// Sends one frame. A write never waits unwatched: it fails after [`SEND_TIMEOUT`] (the
/// browser stopped reading), and gives up at once when the server stops or the hub has
/// dropped the session.
async fn send(
    socket: &mut WebSocket,
    message: Message,
    stopped: &mut watch::Receiver<bool>,
    inbox: &Inbox,
) -> Result<(), Ended> {
    tokio::select! {
        sent = tokio::time::timeout(SEND_TIMEOUT, socket.send(message)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Ended::Closed),
            Err(_) => Err(Ended::NotReading),
        },
        _ = stopped.changed() => Err(Ended::Shutdown),
        _ = inbox.forgotten() => Err(Ended::DroppedByHub),
    }
}
