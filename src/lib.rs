//! rendez: a STUN/TURN server and small-call signaling service in one binary.
//!
//! The protocol core is sans-IO ([`turn::Server`]); [`start`] and [`run`] wrap it in tokio
//! sockets. Another program can embed either layer:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = rendez::Config::from_toml("listen = [\"127.0.0.1:3478\"]\nrelay-ip = \"127.0.0.1\"")?;
//! let server = rendez::start(config).await?;
//! println!("listening on {:?}", server.udp_addrs());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

pub mod check;
pub mod cli;
pub mod config;
pub mod credential;
mod hex;
pub mod net;
pub mod random;
pub mod signal;
pub mod stun;
pub mod turn;

pub use config::Config;
pub use net::{run, start, Handle, Hooks};
