//! TURN's I/O: UDP workers (each owning a shard, its listeners and its relay sockets),
//! the TCP/TLS connections and the shard task that owns their core, relay sockets, and the
//! batched system calls underneath.

pub mod batch;
mod sockets;
pub(crate) mod stream;
pub(crate) mod stream_shard;
pub(crate) mod udp;
pub(crate) mod worker;
