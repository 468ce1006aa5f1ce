//! The I/O layer around the sans-IO cores: the only code that touches sockets, clocks,
//! signals and the OS RNG. One folder or file per job:
//!
//! - [`bootstrap`](start): configuration → bound sockets → running shards and tasks;
//!   [`Handle`] is what the caller holds of them.
//! - `turn_io`: TURN's I/O. UDP runs on `workers` threads, each a `worker` that owns its
//!   `SO_REUSEPORT` listener sockets, its [`turn::Server`](crate::turn::Server) shard and its
//!   relay sockets, driven by [`batch`]ed system calls: no lock on the packet path. TCP and
//!   TLS connections talk over a bounded channel to one more shard, owned by one task.
//! - `http`: the call page and WebSocket signaling; a hub task owns the
//!   [`Rooms`](crate::signal::Rooms) and sessions talk to it over a bounded channel.
//! - `shared_port`: one TCP address serving TURN over TCP, TURN over TLS and the page at
//!   once (e.g. 443), each connection routed by its first bytes and ALPN to the same
//!   per-connection code the dedicated ports use.
//! - [`run`] (`lifecycle`): the service loop: reload on SIGHUP ([`Handle::reload`]
//!   reaches every shard through its input channel), drain on SIGTERM.
//! - `observe` and `metrics`: a read-only view of every shard's published counters, and
//!   `/metrics` made of it; `tls`: the certificate store a reload swaps.
//! - `acme`: automatic certificates (`[acme]`): ordered from an ACME CA, cached, renewed in
//!   the background and swapped into that store; the challenge answers the listeners give.
//! - [`Notifier`]: telling systemd (`Type=notify`) that the server is ready, how it is
//!   doing, that it is alive (watchdog), reloading or stopping.
//! - `fleet`: what a TURN node shares with the others of its fleet: the nonce key made from
//!   `[auth] nonce-secret`, and `alternate-servers` resolved, where a full or draining node
//!   sends clients.
//! - [`proxy_protocol`]: the header a load balancer in `[connections] proxy-protocol-from`
//!   begins each TCP connection with, naming the client it relays.
//!
//! Every piece of mutable state has exactly one owner that runs its inputs in order; every
//! shard gets its own slice of the relay port range, so ports never collide.

mod acme;
mod address;
mod bootstrap;
mod cluster;
mod fleet;
mod handle;
mod http;
mod lifecycle;
mod limits;
mod metrics;
mod notify;
mod observe;
pub mod proxy_protocol;
mod shared_port;
mod tls;
mod turn_io;
mod xdp;

use std::time::{SystemTime, UNIX_EPOCH};

pub use address::resolve_relay_addresses;
pub use bootstrap::start;
pub use handle::{Handle, Reloaded};
pub use http::hub::SignalFigures;
pub use lifecycle::{run, Hooks, ReloadConfig, SetLogLevel};
pub use notify::Notifier;
pub use turn_io::batch;

/// Raises this process's soft limit on open files to its hard limit: every allocation holds
/// a relay socket and every connection a descriptor, so the usual default of 1024 would cap
/// a server (or a test with thousands of clients) at about a thousand. Returns the limit
/// before and after, or `None` when it could not be read or changed.
pub fn raise_open_file_limit() -> Option<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        let before = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if before < limit.rlim_max && libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return None;
        }
        Some((before, limit.rlim_cur))
    }
}

/// Seconds since the unix epoch, by the system clock (0 if it is set before 1970).
pub(crate) fn unix_now() -> u64 {
    unix_now_ms() / 1000
}

/// Milliseconds since the unix epoch, by the system clock (0 if it is set before 1970).
pub(crate) fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
