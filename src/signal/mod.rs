//! Signaling for small calls, sans-IO: rooms of up to six participants who exchange
//! offers, answers and ICE candidates through the server.
//!
//! [`Rooms`] knows nothing of WebSockets or clocks: the I/O layer reports connections,
//! text frames and disconnections with the current time, and sends what comes back. Room
//! state lives only here, behind these message types, so rooms that span several nodes can
//! later be carried by a pub/sub engine without touching the page or the protocol.

mod messages;
mod rooms;
pub mod token;

pub use messages::{ClientMessage, ErrorCode, PeerInfo, ServerMessage};
pub use rooms::{ConnId, Outgoing, Rooms, RoomsConfig, RoomsFigures};
