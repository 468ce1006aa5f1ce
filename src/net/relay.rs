//! Relay sockets of the TCP/TLS shard: one UDP socket per allocation, with a task that reads
//! from peers. (UDP clients' relays live in the workers, see [`super::worker`].)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::Shared;
use crate::turn::{PEER_HEADROOM, PEER_TAILROOM};

/// Largest peer datagram relayed to a stream client; longer ones (rare: WebRTC keeps packets
/// under the path MTU) are dropped rather than truncated. Small, because every stream
/// allocation holds one.
const MAX_PEER_DATAGRAM: usize = 4096;

pub(crate) struct RelaySocket {
    pub socket: Arc<UdpSocket>,
    pub task: JoinHandle<()>,
}

impl RelaySocket {
    /// Binds `relay` and starts reading from peers. Must run inside the tokio runtime.
    pub fn bind(shared: Arc<Shared>, relay: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::from_std(super::udp::bind_udp(relay, false)?)?);
        let task = tokio::spawn(read_peers(shared, socket.clone(), relay));
        Ok(Self { socket, task })
    }
}

async fn read_peers(shared: Arc<Shared>, socket: Arc<UdpSocket>, relay: SocketAddr) {
    let mut buffer = vec![0u8; PEER_HEADROOM + MAX_PEER_DATAGRAM + PEER_TAILROOM];
    loop {
        let received = socket
            .recv_from(&mut buffer[PEER_HEADROOM..PEER_HEADROOM + MAX_PEER_DATAGRAM])
            .await;
        let (len, peer) = match received {
            Ok((len, _)) if len == MAX_PEER_DATAGRAM => continue,
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(%relay, %error, "relay receive error");
                continue;
            }
        };
        let framed = shared.lock().server.handle_peer_packet_in_place(
            Instant::now(),
            relay,
            peer,
            &mut buffer,
            PEER_HEADROOM,
            len,
        );
        if let Some((client, range)) = framed {
            shared.send_to_client(client, buffer[range].to_vec());
        }
    }
}
