//! Replies from the address the request came to. A wildcard UDP listener (`0.0.0.0`, `[::]`)
//! serves every address of the host, and loopback is a host with many: all of 127.0.0.0/8.
//! Clients here talk to 127.0.0.2 and 127.0.0.3 through sockets `connect()`ed to that one
//! address, so the kernel drops anything that comes back from another (127.0.0.1, which the
//! route would pick): a server that answers from the wrong address fails these tests with a
//! timeout, and the unconnected checks name the address the answer came from.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rendez::stun::{
    decode_xor_address, long_term_key, AttrType, Class, IntegrityAlgorithm, Message,
    MessageBuilder, Method, TransactionId,
};
use tokio::net::UdpSocket;

mod common;
use common::netns::{enter_new_network_namespace, ip};
use common::relay::{assert_channel_relays, assert_relays_through, permit};
use common::*;

/// Two clients at once, each on its own address of the host, run whole sessions through one
/// wildcard listener: every response, Data indication and ChannelData comes back from the
/// address it went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_listener_answers_from_each_address_it_was_reached_at() {
    let server = start_wildcard(r#"listen = ["0.0.0.0:0"]"#).await;
    let port = server.udp_addrs()[0].port();
    tokio::join!(
        relay_session(LOOPBACK_V4, at("127.0.0.2", port)),
        relay_session(LOOPBACK_V4, at("127.0.0.3", port)),
    );
    server.shutdown().await;
}

/// The same on an IPv6 wildcard beside an IPv4 one (two wildcard listeners, one per family,
/// each on its own port): loopback has only ::1, so this checks the IPv6 control messages
/// both ways, not a choice between addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_ipv4_wildcards_answer_side_by_side() {
    let server = start_wildcard(r#"listen = ["0.0.0.0:0", "[::]:0"]"#).await;
    let (v4, v6) = (server.udp_addrs()[0], server.udp_addrs()[1]);
    assert!(v4.is_ipv4() && v6.is_ipv6(), "{:?}", server.udp_addrs());
    tokio::join!(
        relay_session(LOOPBACK_V4, at("127.0.0.2", v4.port())),
        relay_session(LOOPBACK_V6, at("::1", v6.port())),
    );
    server.shutdown().await;
}

/// One client socket sending to two addresses of the host makes two 5-tuples, so two
/// allocations (RFC 8656 §2), each answered from its own address. On one worker, so both
/// tuples meet the same shard: were they keyed by the listener's `0.0.0.0`, the second
/// Allocate would be refused as a mismatch (437).
#[tokio::test]
async fn each_address_reached_is_its_own_5_tuple() {
    let server = start_wildcard("listen = [\"0.0.0.0:0\"]\nworkers = 1").await;
    let port = server.udp_addrs()[0].port();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let first = allocate_via(&socket, at("127.0.0.2", port), 1).await;
    let second = allocate_via(&socket, at("127.0.0.3", port), 3).await;
    assert_ne!(first, second, "two allocations get two relayed addresses");
    server.shutdown().await;
}

/// A Binding to each address from one unconnected socket: the answer's source is the
/// address asked, whatever the route would prefer.
#[tokio::test]
async fn a_binding_answer_names_the_address_asked() {
    let server = start_wildcard("listen = [\"0.0.0.0:0\"]").await;
    let port = server.udp_addrs()[0].port();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (tid, ip) in [(1, "127.0.0.2"), (2, "127.0.0.3"), (3, "127.0.0.1")] {
        let response = call_via(&socket, at(ip, port), &binding(tid)).await;
        assert_eq!(
            mapped_address(&response),
            socket.local_addr().unwrap(),
            "{ip}"
        );
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------- IPv6, several addresses

/// Loopback has one IPv6 address, so the IPv6 choice between addresses is tested in a
/// network namespace of this test's own thread, with two more addresses on its `lo`: an
/// `[::]` listener, and two clients on ::1 each connected to one of them. Skipped (with a note)
/// unless the test runs as root with `ip` at hand, as the browser tests are.
#[test]
fn ipv6_wildcard_answers_from_each_of_two_addresses_in_a_namespace() {
    let test = std::thread::spawn(|| {
        if let Err(why) = enter_new_network_namespace() {
            eprintln!("skipped: {why}");
            return;
        }
        for address in NAMESPACE_V6 {
            ip(&[
                "addr",
                "add",
                &format!("{address}/128"),
                "dev",
                "lo",
                "nodad",
            ]);
        }
        // Everything below runs on this thread, or on threads it starts, which inherit the
        // namespace: the server's sockets, workers and relay sockets, and the clients.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let server = start_wildcard(r#"listen = ["[::]:0"]"#).await;
            let port = server.udp_addrs()[0].port();
            // From ::1, where the route would answer from: only the right source gets through.
            tokio::join!(
                relay_session(LOOPBACK_V6, at(NAMESPACE_V6[0], port)),
                relay_session(LOOPBACK_V6, at(NAMESPACE_V6[1], port)),
            );
            server.shutdown().await;
        });
    });
    if let Err(panic) = test.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Addresses the namespace's `lo` gets beside ::1 (documentation prefix; the namespace has
/// no other link, so nothing can leave it).
const NAMESPACE_V6: [&str; 2] = ["2001:db8::2", "2001:db8::3"];

// ---------------------------------------------------------------- helpers

/// A server with the given `listen` line (and other top-level keys), relaying on 127.0.0.1
/// to peers on loopback.
async fn start_wildcard(top: &str) -> rendez::Handle {
    start_with(&format!(
        "{top}\nrelay-ip = \"127.0.0.1\"\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n"
    ))
    .await
}

fn at(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

const LOOPBACK_V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LOOPBACK_V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A whole session from a socket on `local` connected to `server`: Binding, Allocate (both
/// tell the client its own address), CreatePermission, Send → peer, peer → Data indication,
/// ChannelBind, ChannelData both ways, with a peer on 127.0.0.1.
async fn relay_session(local: IpAddr, server: SocketAddr) {
    let mut conn = Conn::udp_connected(local, server).await;
    let Conn::Udp { socket, .. } = &conn else {
        unreachable!("a UDP connection");
    };
    let me = socket.local_addr().unwrap();
    assert_eq!(mapped_address(&conn.call(&binding(0x42)).await), me);

    let mut client = TurnClient::new(conn, "alice", "wonderland");
    let allocated = client.request(Method::ALLOCATE, &[udp_transport()]).await;
    assert_eq!(class_of(&allocated), Class::Success, "{server}");
    assert_eq!(mapped_address(&allocated), me);
    let relayed = xor_address(&allocated, AttrType::XOR_RELAYED_ADDRESS);

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    permit(&mut client, &peer).await;
    assert_relays_through(&mut client, &peer, relayed, b"via indication").await;
    assert_channel_relays(&mut client, &peer, relayed, 0x4000).await;
}

/// Sends `request` from `socket` to `to` and returns the answer, which must come from `to`.
async fn call_via(socket: &UdpSocket, to: SocketAddr, request: &[u8]) -> Vec<u8> {
    socket.send_to(request, to).await.unwrap();
    let (response, from) = recv_from(socket).await;
    assert_eq!(from, to, "the answer must come from the address asked");
    response
}

/// Allocates as alice from `socket` through `server` (challenge first; transaction ids
/// `tid` and `tid + 1`): the relayed address.
async fn allocate_via(socket: &UdpSocket, server: SocketAddr, tid: u8) -> SocketAddr {
    let challenge = request_bytes(
        Method::ALLOCATE,
        &[udp_transport()],
        TransactionId([tid; 12]),
    );
    let challenge = call_via(socket, server, &challenge).await;
    assert_eq!(error_of(&challenge), Some(401));
    let nonce = Message::parse(&challenge)
        .unwrap()
        .attribute(AttrType::NONCE)
        .unwrap()
        .to_vec();
    let key = long_term_key("alice", "rendez.test", "wonderland");
    let mut b = MessageBuilder::new(
        Class::Request,
        Method::ALLOCATE,
        TransactionId([tid + 1; 12]),
    );
    b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .add(AttrType::USERNAME, b"alice")
        .add(AttrType::REALM, b"rendez.test")
        .add(AttrType::NONCE, &nonce)
        .add_integrity(IntegrityAlgorithm::Sha1, &key)
        .add_fingerprint();
    let request = b.finish();
    let allocated = call_via(socket, server, &request).await;
    assert_eq!(
        class_of(&allocated),
        Class::Success,
        "Allocate via {server}: error {:?}",
        error_of(&allocated)
    );
    assert_eq!(mapped_address(&allocated), socket.local_addr().unwrap());
    xor_address(&allocated, AttrType::XOR_RELAYED_ADDRESS)
}

/// The XOR-MAPPED-ADDRESS of a success response.
fn mapped_address(response: &[u8]) -> SocketAddr {
    xor_address(response, AttrType::XOR_MAPPED_ADDRESS)
}

fn xor_address(response: &[u8], kind: AttrType) -> SocketAddr {
    let m = Message::parse(response).expect("the response parses");
    let value = m
        .attribute(kind)
        .unwrap_or_else(|| panic!("{kind:?} in the response"));
    decode_xor_address(value, &m.transaction_id()).expect("a valid address")
}
