//! Signaling for small calls, sans-IO: rooms of up to six participants who exchange
//! offers, answers and ICE candidates through the server.
//!
//! [`Rooms`] knows nothing of WebSockets or clocks: the I/O layer reports connections,
//! text frames and disconnections with the current time, and sends what comes back. Room
//! state lives only here, behind these message types. In a fleet ([`Rooms::clustered`]) the
//! rooms also speak [`cluster`] commands and events, which the I/O layer carries through
//! Redis, so rooms span nodes without touching the page or the protocol.

pub mod chat;
pub mod cluster;
mod messages;
mod rooms;
pub mod token;

pub use chat::ChatMessage;
pub use cluster::{ClusterCommand, ClusterEvent, ClusterPeer, LocalMember, NodeId, Refusal};
pub use messages::{ClientMessage, ErrorCode, PeerInfo, ServerMessage};
pub use rooms::{ConnId, Outgoing, Rooms, RoomsConfig, RoomsFigures};
