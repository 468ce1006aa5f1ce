//! The JSON messages of `GET /ws`. Names are part of the public protocol: add, never rename.

use serde::{Deserialize, Serialize};

use super::chat::ChatMessage;

/// What a browser sends.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    Join {
        room: String,
        name: String,
        #[serde(default)]
        token: Option<String>,
    },
    /// Opaque WebRTC negotiation data for one other participant of the same room.
    Signal {
        to: String,
        data: serde_json::Value,
    },
    /// A chat message for everyone in the room.
    Chat {
        text: String,
    },
    Leave,
    Ping,
}

/// What the server sends.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMessage {
    Welcome {
        id: String,
        peers: Vec<PeerInfo>,
        #[serde(rename = "iceServers")]
        ice_servers: serde_json::Value,
        /// The room's recent chat, oldest first.
        chat: Vec<ChatMessage>,
        /// The video each participant may send in all, in kbit/s, shared among its peers.
        #[serde(rename = "upstream-kbps")]
        upstream_kbps: u32,
    },
    PeerJoined {
        id: String,
        name: String,
    },
    PeerLeft {
        id: String,
    },
    Signal {
        from: String,
        data: serde_json::Value,
    },
    /// A chat message (the sender's own too).
    Chat(ChatMessage),
    Error {
        code: ErrorCode,
        message: String,
    },
    Pong,
    /// This server is going away (draining): connect again, and the page rejoins through
    /// another server behind the same name.
    Reconnect,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    RoomFull,
    BadMessage,
    UnknownPeer,
    Unauthorized,
    RateLimited,
    /// The server takes no new joins now (it is draining); try again shortly.
    Unavailable,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_the_protocol() {
        let join: ClientMessage =
            serde_json::from_str(r#"{"type":"join","room":"r","name":"n","extra":1}"#).unwrap();
        assert_eq!(
            join,
            ClientMessage::Join {
                room: "r".into(),
                name: "n".into(),
                token: None
            }
        );
        let welcome = ServerMessage::Welcome {
            id: "a".into(),
            peers: vec![PeerInfo {
                id: "b".into(),
                name: "B".into(),
            }],
            ice_servers: serde_json::json!([]),
            chat: Vec::new(),
            upstream_kbps: 2500,
        };
        assert_eq!(
            serde_json::to_string(&welcome).unwrap(),
            r#"{"type":"welcome","id":"a","peers":[{"id":"b","name":"B"}],"iceServers":[],"chat":[],"upstream-kbps":2500}"#
        );
        let chat = ServerMessage::Chat(ChatMessage {
            from: "a".into(),
            name: "A".into(),
            text: "hi".into(),
            at: 1_700_000_000_123,
        });
        assert_eq!(
            serde_json::to_string(&chat).unwrap(),
            r#"{"type":"chat","from":"a","name":"A","text":"hi","at":1700000000123}"#
        );
        assert_eq!(
            serde_json::from_str::<ClientMessage>(r#"{"type":"chat","text":"hi"}"#).unwrap(),
            ClientMessage::Chat { text: "hi".into() }
        );
        let error = ServerMessage::Error {
            code: ErrorCode::RoomFull,
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).unwrap(),
            r#"{"type":"error","code":"room-full","message":"m"}"#
        );
        let joined = ServerMessage::PeerJoined {
            id: "i".into(),
            name: "n".into(),
        };
        assert!(serde_json::to_string(&joined)
            .unwrap()
            .contains(r#""type":"peer-joined""#));
        assert_eq!(
            serde_json::to_string(&ServerMessage::Reconnect).unwrap(),
            r#"{"type":"reconnect"}"#
        );
        let unavailable = ServerMessage::Error {
            code: ErrorCode::Unavailable,
            message: "m".into(),
        };
        assert!(serde_json::to_string(&unavailable)
            .unwrap()
            .contains(r#""code":"unavailable""#));
    }
}
