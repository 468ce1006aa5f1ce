//! RFC 8489 authentication end to end over UDP on 127.0.0.1: a hand-built client that knows
//! only SHA-256 (PASSWORD-ALGORITHM, MESSAGE-INTEGRITY-SHA256, with or without USERHASH)
//! and the webrtc-rs `turn` client, which knows only MESSAGE-INTEGRITY as every browser
//! does, relay through one server started with `rendez::start`. Every wait is bounded.

use std::sync::Arc;

use rendez::stun::{AttrType, Class, Message, Method};
use tokio::net::UdpSocket;
use tokio::time::timeout;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn as _;

mod common;
use common::{class_of, recv_from, send_indication, xor_peer, Conn, TurnClient, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha256_only_clients_relay_beside_a_client_before_rfc_8489() {
    let server = common::start("").await;
    let address = server.udp_addrs()[0];
    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();

    for anonymous in [false, true] {
        let conn = Conn::udp(address).await;
        // Every response is checked for MESSAGE-INTEGRITY-SHA256 under the SHA-256 key.
        let mut client = TurnClient::rfc8489(conn, "alice", "wonderland", anonymous);
        let relayed = client.allocate(&[]).await[0];
        let response = client
            .request(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)])
            .await;
        assert_eq!(class_of(&response), Class::Success);
        client
            .conn
            .send(&send_indication(peer_addr, b"sha256"))
            .await;
        assert_eq!(recv_from(&peer).await, (b"sha256".to_vec(), relayed));
        peer.send_to(b"back", relayed).await.unwrap();
        let data = client.conn.recv().await;
        let m = Message::parse(&data).unwrap();
        assert_eq!(
            m.attribute(AttrType::DATA),
            Some(&b"back"[..]),
            "{anonymous}"
        );
    }

    let legacy = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: address.to_string(),
        username: "alice".into(),
        password: "wonderland".into(),
        realm: String::new(), // learnt from the 401
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()),
        vnet: None,
    })
    .await
    .unwrap();
    legacy.listen().await.unwrap();
    let relay = timeout(WAIT, legacy.allocate())
        .await
        .expect("the webrtc-rs client was answered")
        .expect("and allocated");
    relay.send_to(b"legacy", peer_addr).await.unwrap();
    let (data, _) = recv_from(&peer).await;
    assert_eq!(data, b"legacy");
    let _ = timeout(WAIT, legacy.close()).await;

    server.shutdown().await;
}
