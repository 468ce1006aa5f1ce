//! A signaling session's outgoing queue: the hub puts messages in, the session writes them
//! to its WebSocket.
//!
//! The queue is bounded twice. In frames, so that many tiny messages cannot pile up as
//! per-frame overhead; and in bytes, so that large ones cannot either: [`FRAMES`] frames of
//! the largest message (64 KiB by default) would be 4 MiB per session that stopped reading.
//! The hub never waits: [`Outbound::try_send`] either queues at once or says the session is
//! not keeping up, and the hub drops it.
//!
//! A frame's bytes count until the session has written it, not merely taken it off the
//! queue, so the budget also covers the frame in the middle of a stuck write.
//!
//! When the hub drops its [`Outbound`] (it forgot the session), the session's [`Inbox`]
//! reports that at once, even while a write is pending: what is still queued is for a
//! session that no longer exists, so it is discarded rather than written.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::{CancellationToken, DropGuard, WaitForCancellationFuture};

/// Frames queued per session at most.
pub(super) const FRAMES: usize = 64;

/// How many of the largest messages a session's queue holds in bytes. Four: a call's normal
/// bursts fit many times over (when a room fills, each participant receives a few offers,
/// answers and a few dozen ICE candidates, some 10–30 KiB in all), and so does any honest
/// message, whole, after the hub re-encodes it (SDP and candidates are strings, which
/// re-encoding never lengthens). A peer that means harm can get a receiver dropped whatever
/// the budget, by sending faster than the receiver reads; the budget is what that costs the
/// server. At the default `max-message-bytes` of 64 KiB it is 256 KiB, a sixteenth of
/// [`FRAMES`] frames of the largest size.
const LARGEST_MESSAGES: usize = 4;

/// The byte budget of a session's queue when peers may send `max_message_bytes` at most.
pub(super) fn budget_bytes(max_message_bytes: usize) -> usize {
    LARGEST_MESSAGES * max_message_bytes
}

/// A new queue that holds at most [`FRAMES`] frames and `budget_bytes` bytes.
pub(super) fn queue(budget_bytes: usize) -> (Outbound, Inbox) {
    let (frames, queued) = mpsc::channel(FRAMES);
    let forgotten = CancellationToken::new();
    let outbound = Outbound {
        frames,
        budget: Arc::new(Semaphore::new(budget_bytes.min(Semaphore::MAX_PERMITS))),
        _forget_on_drop: forgotten.clone().drop_guard(),
    };
    let inbox = Inbox { queued, forgotten };
    (outbound, inbox)
}

/// The hub's end of a session's queue.
pub(crate) struct Outbound {
    frames: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
    /// Tells the session, when the hub drops this, that it was forgotten.
    _forget_on_drop: DropGuard,
}

impl Outbound {
    /// Queues `text` without waiting; false when the session has no room left for it (it
    /// is not reading) or has ended.
    pub fn try_send(&self, text: Utf8Bytes) -> bool {
        let Ok(bytes) = u32::try_from(text.len()) else {
            return false;
        };
        let Ok(held) = self.budget.clone().try_acquire_many_owned(bytes) else {
            return false;
        };
        self.frames.try_send(Queued { text, _held: held }).is_ok()
    }
}

/// The session's end of its queue.
pub(super) struct Inbox {
    queued: mpsc::Receiver<Queued>,
    forgotten: CancellationToken,
}

impl Inbox {
    /// The next frame to write; `None` once the hub has forgotten the session.
    pub async fn recv(&mut self) -> Option<Queued> {
        tokio::select! {
            biased;
            _ = self.forgotten.cancelled() => None,
            queued = self.queued.recv() => queued,
        }
    }

    /// Completes when the hub has forgotten the session.
    pub fn forgotten(&self) -> WaitForCancellationFuture<'_> {
        self.forgotten.cancelled()
    }
}

/// A frame on its way out; its bytes count against the queue's budget until it is dropped.
pub(super) struct Queued {
    text: Utf8Bytes,
    _held: OwnedSemaphorePermit,
}

impl Queued {
    /// The frame's text (a cheap, shared copy: the bytes stay counted while `self` lives).
    pub fn text(&self) -> Utf8Bytes {
        self.text.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: usize) -> Utf8Bytes {
        "x".repeat(bytes).into()
    }

    #[tokio::test]
    async fn bounded_in_bytes_until_frames_are_written() {
        let (outbound, mut inbox) = queue(1000);
        assert!(outbound.try_send(text(600)));
        assert!(outbound.try_send(text(400)));
        assert!(!outbound.try_send(text(1)), "budget spent");
        let first = inbox.recv().await.unwrap();
        assert!(
            !outbound.try_send(text(1)),
            "taken off the queue, not yet written"
        );
        drop(first);
        assert!(!outbound.try_send(text(601)));
        assert!(
            outbound.try_send(text(600)),
            "written: its bytes are free again"
        );
        assert!(
            !outbound.try_send(text(1001)),
            "never more than the budget at once"
        );
    }

    #[tokio::test]
    async fn bounded_in_frames() {
        let (outbound, _inbox) = queue(1 << 20);
        for _ in 0..FRAMES {
            assert!(outbound.try_send(text(1)));
        }
        assert!(!outbound.try_send(text(1)));
    }

    #[tokio::test]
    async fn a_forgotten_session_stops_at_once_and_discards_the_rest() {
        let (outbound, mut inbox) = queue(1000);
        assert!(outbound.try_send(text(10)));
        let pending = inbox.recv().await.unwrap();
        assert!(outbound.try_send(text(10)));
        drop(outbound);
        // A write in progress hears of it too.
        tokio::time::timeout(std::time::Duration::from_secs(1), inbox.forgotten())
            .await
            .expect("forgotten at once");
        assert!(
            inbox.recv().await.is_none(),
            "the queued frame is discarded"
        );
        assert_eq!(pending.text().len(), 10);
    }

    #[tokio::test]
    async fn an_ended_session_takes_nothing() {
        let (outbound, inbox) = queue(1000);
        drop(inbox);
        assert!(!outbound.try_send(text(1)));
    }

    #[test]
    fn the_largest_message_fits_with_room_to_spare() {
        // The envelope of a relayed `data`: type, the sender's 16-digit id, quotes and commas.
        let envelope = r#"{"type":"signal","from":"0123456789abcdef","data":}"#.len();
        for max_message_bytes in [1024, 64 * 1024, 1 << 20] {
            assert!(budget_bytes(max_message_bytes) >= 3 * (max_message_bytes + envelope));
        }
        assert_eq!(budget_bytes(64 * 1024), 256 * 1024);
    }
}
