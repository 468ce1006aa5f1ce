//! rendez: a STUN/TURN server and small-call signaling service in one binary.
//!
//! The protocol cores are sans-IO ([`turn::Server`]); [`start`] and [`run`] wrap them in
//! tokio sockets. Another program can embed either layer.

pub mod stun;
pub mod turn;
