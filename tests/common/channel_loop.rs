//! A legitimate client's relay loop: an allocation with a channel bound to a UDP peer on
//! 127.0.0.1, and round trips client → server → peer → server → client through it. The
//! server must allow loopback peers (`[peers] allow = ["127.0.0.0/8", "127.0.0.1/32"]`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rendez::stun::{decode_xor_address, AttrType, ChannelData, Message, Method};
use tokio::net::UdpSocket;

use super::{channel, error_of, recv_from, udp_transport, xor_peer, Conn, TurnClient};

/// The channel every loop binds.
const CHANNEL: u16 = 0x4000;

pub struct ChannelLoop {
    pub client: TurnClient,
    peer: UdpSocket,
    pub relayed: SocketAddr,
}

impl ChannelLoop {
    /// Allocates over `conn` as `username`, permits a fresh peer socket and binds
    /// [`CHANNEL`] to it.
    pub async fn open(conn: Conn, username: &str, password: &str) -> Self {
        let local = match &conn {
            Conn::Udp { socket, .. } => socket.local_addr().ok(),
            Conn::Stream { .. } => None,
        };
        let mut client = TurnClient::new(conn, username, password);
        let allocated = client.request(Method::ALLOCATE, &[udp_transport()]).await;
        assert_eq!(error_of(&allocated), None, "Allocate from {local:?}");
        let m = Message::parse(&allocated).unwrap();
        let relayed = m
            .attribute(AttrType::XOR_RELAYED_ADDRESS)
            .and_then(|value| decode_xor_address(value, &m.transaction_id()))
            .expect("a relayed address");
        let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();
        let bound = client
            .request(
                Method::CHANNEL_BIND,
                &[channel(CHANNEL), xor_peer(peer_addr)],
            )
            .await;
        assert_eq!(error_of(&bound), None, "ChannelBind");
        Self {
            client,
            peer,
            relayed,
        }
    }

    /// Sends `payload` to the peer over the channel, has the peer send it back, and returns
    /// how long the whole trip took. Panics if either leg is lost or altered (within
    /// [`super::WAIT`] each).
    pub async fn round_trip(&mut self, payload: &[u8]) -> Duration {
        let began = Instant::now();
        let mut frame = ChannelData::header(CHANNEL, payload.len() as u16).to_vec();
        frame.extend_from_slice(payload);
        self.client.conn.send(&frame).await;
        let (arrived, from) = recv_from(&self.peer).await;
        assert_eq!((arrived.as_slice(), from), (payload, self.relayed));
        self.peer.send_to(payload, self.relayed).await.unwrap();
        let back = self.client.conn.recv().await;
        assert_eq!(back, frame, "the payload comes back on the channel");
        began.elapsed()
    }
}
