//! Relay sockets: one UDP socket per allocation, with a task that reads from peers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use super::Shared;

const MAX_DATAGRAM: usize = 65_536;

pub(crate) struct RelaySocket {
    pub socket: Arc<UdpSocket>,
    pub task: JoinHandle<()>,
}

impl RelaySocket {
    /// Binds `relay` and starts reading from peers. Must run inside the tokio runtime.
    pub fn bind(shared: Arc<Shared>, relay: SocketAddr) -> std::io::Result<Self> {
        let socket = Arc::new(super::udp::bind_udp(relay)?);
        let task = tokio::spawn(read_peers(shared, socket.clone(), relay));
        Ok(Self { socket, task })
    }
}

async fn read_peers(shared: Arc<Shared>, socket: Arc<UdpSocket>, relay: SocketAddr) {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut framed = Vec::with_capacity(2048);
    loop {
        let (len, peer) = match socket.recv_from(&mut buffer).await {
            Ok(r) => r,
            Err(error) => {
                tracing::debug!(%relay, %error, "relay receive error");
                continue;
            }
        };
        let client = {
            let mut state = shared.lock();
            state
                .server
                .handle_peer_packet(Instant::now(), relay, peer, &buffer[..len])
                .map(|to_client| {
                    framed.clear();
                    framed.extend_from_slice(to_client.bytes);
                    to_client.client
                })
        };
        if let Some(client) = client {
            shared.send_to_client(client, &framed).await;
        }
    }
}
