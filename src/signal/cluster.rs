//! What [`Rooms`](super::Rooms) exchanges with the other nodes of a fleet, sans-IO.
//!
//! In a fleet, room membership lives in a shared store (Redis, carried by the I/O layer in
//! `net::cluster`). The rooms of a node ask the store for things with [`ClusterCommand`]s
//! (admit a participant, remove one, send a signal or a chat message) and learn what
//! happens in the fleet from [`ClusterEvent`]s, which each node receives on its own
//! channel in the one order in which the store made them. Every change to a room passes
//! through the store, so all nodes see a room's joins, leaves, signals and chat in the
//! same order, and a node's view of a room is rebuilt from the store's snapshot whenever
//! it may have missed something (after an outage).

use serde::{Deserialize, Deserializer, Serialize};

use super::chat::ChatMessage;

/// A node of the fleet: random, chosen at start.
pub type NodeId = String;

/// A request from this node's rooms to the shared store, carried out in order.
#[derive(Clone, Debug, PartialEq)]
pub enum ClusterCommand {
    /// Add a participant to `room` if it has fewer than `room_size` (atomically across the
    /// fleet); the store answers with [`ClusterEvent::Joined`] on success, else the I/O
    /// layer reports a [`Refusal`].
    Admit {
        room: String,
        id: String,
        name: String,
        room_size: usize,
    },
    /// A participant of this node left.
    Leave { room: String, id: String },
    /// Negotiation data for participant `to` on `node`.
    Signal {
        node: NodeId,
        room: String,
        from: String,
        to: String,
        data: serde_json::Value,
    },
    /// A chat message for everyone in the room (and its history).
    Chat { room: String, message: ChatMessage },
    /// After the store was unreachable: this node's participants are exactly these (add the
    /// missing, remove the others).
    Restore { members: Vec<LocalMember> },
    /// Send this node a [`ClusterEvent::Sync`] snapshot of `room`.
    Sync { room: String },
}

/// One of this node's participants, for [`ClusterCommand::Restore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalMember {
    pub room: String,
    pub id: String,
    pub name: String,
}

/// Why the store did not admit a participant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The room has `room-size` participants.
    Full,
    /// The participant id is taken in the room (a new one is drawn).
    Taken,
    /// The store could not be asked.
    Unavailable,
}

/// Something that happened in the fleet, as the store tells this node.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClusterEvent {
    /// `id` joined `room` through `node`; `members` is the room just after (with `id`),
    /// in joining order. The joining node also gets the room's chat history.
    Joined {
        room: String,
        id: String,
        name: String,
        node: NodeId,
        #[serde(deserialize_with = "list_or_empty_object")]
        members: Vec<ClusterPeer>,
        #[serde(default, deserialize_with = "list_or_empty_object")]
        chat: Vec<ChatMessage>,
    },
    /// `id` left `room` (or its node died).
    Left {
        room: String,
        id: String,
    },
    Signal {
        room: String,
        from: String,
        to: String,
        data: serde_json::Value,
    },
    Chat {
        room: String,
        message: ChatMessage,
    },
    /// The room as the store has it now, in joining order.
    Sync {
        room: String,
        #[serde(deserialize_with = "list_or_empty_object")]
        members: Vec<ClusterPeer>,
    },
}

/// A participant as the store lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterPeer {
    pub id: String,
    pub name: String,
    pub node: NodeId,
}

/// Redis's JSON encoder writes an empty list as `{}`: take that as `[]`.
fn list_or_empty_object<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrObject<T> {
        List(Vec<T>),
        Empty {},
    }
    Ok(match ListOrObject::deserialize(deserializer)? {
        ListOrObject::List(list) => list,
        ListOrObject::Empty {} => Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_as_the_store_writes_them() {
        let joined: ClusterEvent = serde_json::from_str(
            r#"{"type":"joined","room":"r","id":"a","name":"A","node":"n1",
                "members":[{"id":"a","name":"A","node":"n1"}],"chat":{}}"#,
        )
        .unwrap();
        let ClusterEvent::Joined { members, chat, .. } = joined else {
            panic!("joined");
        };
        assert_eq!(members.len(), 1);
        assert!(chat.is_empty());
        let sync: ClusterEvent =
            serde_json::from_str(r#"{"type":"sync","room":"r","members":{}}"#).unwrap();
        assert_eq!(
            sync,
            ClusterEvent::Sync {
                room: "r".into(),
                members: Vec::new()
            }
        );
        let signal = ClusterEvent::Signal {
            room: "r".into(),
            from: "a".into(),
            to: "b".into(),
            data: serde_json::json!({"sdp": "x"}),
        };
        let text = serde_json::to_string(&signal).unwrap();
        assert_eq!(serde_json::from_str::<ClusterEvent>(&text).unwrap(), signal);
    }
}
