//! A TURN session's relaying checked end to end against a UDP peer on loopback: an
//! allocation with a permission, a Send indication out and a Data indication back, and a
//! channel both ways. The server must allow loopback peers (see [`super::start`]).

use std::net::SocketAddr;

use rendez::stun::{AttrType, ChannelData, Class, Message, Method};
use tokio::net::UdpSocket;

use super::{channel, class_of, recv_from, send_indication, xor_peer, Conn, TurnClient};

/// Installs a permission for `peer` on the client's allocation.
pub async fn permit(client: &mut TurnClient, peer: &UdpSocket) {
    let peer_addr = peer.local_addr().unwrap();
    let response = client
        .request(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)])
        .await;
    assert_eq!(class_of(&response), Class::Success, "CreatePermission");
}

/// An allocation with a permission for `peer`; its relayed address.
pub async fn open_relay(client: &mut TurnClient, peer: &UdpSocket) -> SocketAddr {
    let relayed = client.allocate(&[]).await[0];
    permit(client, peer).await;
    relayed
}

/// Allocates over `conn` as alice and relays a datagram each way.
pub async fn assert_relays(conn: Conn) {
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut client = TurnClient::new(conn, "alice", "wonderland");
    let relayed = open_relay(&mut client, &peer).await;
    assert_relays_through(&mut client, &peer, relayed, b"ping").await;
}

/// A Send indication carrying `payload` reaches `peer` from `relayed`, and the peer's
/// answer comes back in a Data indication.
pub async fn assert_relays_through(
    client: &mut TurnClient,
    peer: &UdpSocket,
    relayed: SocketAddr,
    payload: &[u8],
) {
    let peer_addr = peer.local_addr().unwrap();
    client.conn.send(&send_indication(peer_addr, payload)).await;
    assert_eq!(recv_from(peer).await, (payload.to_vec(), relayed));
    peer.send_to(b"answer", relayed).await.unwrap();
    let data = client.conn.recv().await;
    let message = Message::parse(&data).expect("a Data indication");
    assert_eq!(message.method(), Method::DATA);
    assert_eq!(message.attribute(AttrType::DATA), Some(&b"answer"[..]));
}

/// Binds channel `number` to `peer`, then ChannelData both ways: "hello" out, "world"
/// back, padded to four bytes on a stream (RFC 8656 §12.5) and not over UDP.
pub async fn assert_channel_relays(
    client: &mut TurnClient,
    peer: &UdpSocket,
    relayed: SocketAddr,
    number: u16,
) {
    let peer_addr = peer.local_addr().unwrap();
    let bound = client
        .request(
            Method::CHANNEL_BIND,
            &[channel(number), xor_peer(peer_addr)],
        )
        .await;
    assert_eq!(class_of(&bound), Class::Success, "ChannelBind");
    let padding: &[u8] = match client.conn {
        Conn::Stream { .. } => &[0, 0, 0],
        Conn::Udp { .. } => &[],
    };
    let mut frame = ChannelData::header(number, 5).to_vec();
    frame.extend_from_slice(b"hello");
    frame.extend_from_slice(padding);
    client.conn.send(&frame).await;
    assert_eq!(recv_from(peer).await, (b"hello".to_vec(), relayed));
    peer.send_to(b"world", relayed).await.unwrap();
    let [high, low] = number.to_be_bytes();
    let mut expected = vec![high, low, 0, 5];
    expected.extend_from_slice(b"world");
    expected.extend_from_slice(padding);
    assert_eq!(client.conn.recv().await, expected);
}
