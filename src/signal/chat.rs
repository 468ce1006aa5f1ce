//! Chat messages and the bounded history a late joiner receives in its `welcome`.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Messages a room remembers for late joiners.
pub const HISTORY_MESSAGES: usize = 50;
/// Bytes of history (as JSON) a room remembers, so a `welcome` stays small.
pub const HISTORY_BYTES: usize = 64 * 1024;

/// One chat message as everyone in the room receives it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChatMessage {
    /// The sender's participant id.
    pub from: String,
    /// The sender's name when it sent the message.
    pub name: String,
    pub text: String,
    /// When the server took it: Unix time in milliseconds.
    pub at: u64,
}

impl ChatMessage {
    /// What the message takes in a `welcome`'s `chat` array, about: its JSON text.
    pub fn json_len(&self) -> usize {
        // {"from":"","name":"","text":"","at":} is 37 bytes; escapes make text longer,
        // which only matters for the bound, not for correctness.
        37 + self.from.len() + self.name.len() + self.text.len() + 20
    }
}

/// The last [`HISTORY_MESSAGES`] messages of a room, at most [`HISTORY_BYTES`].
#[derive(Debug, Default)]
pub struct ChatHistory {
    messages: VecDeque<ChatMessage>,
    bytes: usize,
}

impl ChatHistory {
    /// Remembers `message`, forgetting the oldest beyond the bounds.
    pub fn push(&mut self, message: ChatMessage) {
        self.bytes += message.json_len();
        self.messages.push_back(message);
        while self.messages.len() > HISTORY_MESSAGES || self.bytes > HISTORY_BYTES {
            let Some(old) = self.messages.pop_front() else {
                break;
            };
            self.bytes -= old.json_len();
        }
    }

    /// The remembered messages, oldest first.
    pub fn to_vec(&self) -> Vec<ChatMessage> {
        self.messages.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: usize, text_len: usize) -> ChatMessage {
        ChatMessage {
            from: "a".into(),
            name: "A".into(),
            text: format!("{n}{}", "x".repeat(text_len)),
            at: n as u64,
        }
    }

    #[test]
    fn keeps_the_last_fifty() {
        let mut history = ChatHistory::default();
        for n in 0..120 {
            history.push(message(n, 0));
        }
        let kept = history.to_vec();
        assert_eq!(kept.len(), HISTORY_MESSAGES);
        assert_eq!(kept[0].at, 70);
        assert_eq!(kept[49].at, 119);
    }

    #[test]
    fn keeps_at_most_64_kib() {
        let mut history = ChatHistory::default();
        for n in 0..40 {
            history.push(message(n, 4000));
        }
        let kept = history.to_vec();
        let bytes: usize = kept
            .iter()
            .map(|m| serde_json::to_string(m).unwrap().len())
            .sum();
        assert!(bytes <= HISTORY_BYTES, "{bytes}");
        assert!(kept.len() >= 15, "{}", kept.len());
        assert_eq!(kept.last().unwrap().at, 39, "the newest stays");
    }
}
