//! NAT behaviour discovery and classic STUN end to end: rendez on 127.0.0.1 with
//! `other-address` on 127.0.0.2 (both ports chosen by the kernel), asked by Debian's `stun`
//! (RFC 3489) and coturn's `turnutils_natdiscovery` (RFC 5780), and by a client of our own
//! that checks which socket each answer really leaves from.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::tools::require_tool;
use rendez::stun::{
    decode_plain_address, AttrType, Class, Message, MessageBuilder, Method, TransactionId,
};
use tokio::net::UdpSocket;

/// How long an external client may take (each retransmits for a few seconds at most).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

async fn start_with_other_address(workers: usize) -> rendez::Handle {
    common::start(&format!(
        "other-address = \"127.0.0.2:0\"\nworkers = {workers}\n"
    ))
    .await
}

/// The same on a wildcard listener, which pairs `other-address` with the relay IP.
async fn start_wildcard_with_other_address() -> rendez::Handle {
    common::start_with(
        "listen = [\"0.0.0.0:0\"]\nrelay-ip = \"127.0.0.1\"\nother-address = \"127.0.0.2:0\"\nworkers = 2\n",
    )
    .await
}

#[tokio::test]
async fn change_request_answers_leave_from_the_socket_of_table_1_on_every_worker() {
    let server = start_with_other_address(2).await;
    let primary = server.udp_addrs()[0];
    let other = server.other_address().expect("other-address bound");
    assert_eq!(other.ip(), "127.0.0.2".parse::<std::net::IpAddr>().unwrap());
    assert_ne!(other.port(), primary.port());
    let cases = [
        ((false, false), primary),
        ((true, false), SocketAddr::new(other.ip(), primary.port())),
        ((false, true), SocketAddr::new(primary.ip(), other.port())),
        ((true, true), other),
    ];
    // Several client sockets, so the kernel spreads them over both workers.
    for _ in 0..4 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for ((ip, port), origin) in cases {
            let mut request = binding(9);
            request.add(
                AttrType::CHANGE_REQUEST,
                &[0, 0, 0, u8::from(ip) << 2 | u8::from(port) << 1],
            );
            socket.send_to(&request.finish(), primary).await.unwrap();
            let (bytes, from) = common::recv_from(&socket).await;
            assert_eq!(from, origin, "change ip {ip} port {port}");
            let response = Message::parse(&bytes).unwrap();
            assert_eq!(response.class(), Class::Success);
            let said = decode_plain_address(response.attribute(AttrType::RESPONSE_ORIGIN).unwrap());
            assert_eq!(said, Some(origin));
            let opposite =
                decode_plain_address(response.attribute(AttrType::OTHER_ADDRESS).unwrap());
            assert_eq!(opposite, Some(other));
        }
    }
    server.shutdown().await;
}

#[tokio::test]
async fn response_port_answers_another_socket_of_the_same_ip() {
    let server = start_with_other_address(1).await;
    let primary = server.udp_addrs()[0];
    let asking = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let listening = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = listening.local_addr().unwrap().port();
    let mut request = binding(7);
    request.add(
        AttrType::RESPONSE_PORT,
        &[(port >> 8) as u8, port as u8, 0, 0],
    );
    asking.send_to(&request.finish(), primary).await.unwrap();
    let (bytes, from) = common::recv_from(&listening).await;
    assert_eq!(from, primary);
    let response = Message::parse(&bytes).unwrap();
    assert_eq!(
        response.xor_mapped_address(),
        Some(asking.local_addr().unwrap())
    );
    server.shutdown().await;
}

#[tokio::test]
async fn software_from_the_config_is_in_responses_and_absent_by_default() {
    for (extra, expected) in [
        ("software = \"rendez e2e\"\n", Some(&b"rendez e2e"[..])),
        ("", None),
    ] {
        let server = common::start(extra).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(&binding(3).finish(), server.udp_addrs()[0])
            .await
            .unwrap();
        let (bytes, _) = common::recv_from(&socket).await;
        let response = Message::parse(&bytes).unwrap();
        assert_eq!(response.attribute(AttrType::SOFTWARE), expected);
        server.shutdown().await;
    }
}

#[tokio::test]
async fn debian_stun_classifies_loopback_as_open() {
    let Some(stun) = require_tool("stun") else {
        return;
    };
    let server = start_with_other_address(2).await;
    let target = server.udp_addrs()[0].to_string();
    let output = run(&stun, &[target.as_str(), "-v"]).await;
    // Every test of RFC 3489 §10.1 was answered: I, II (change IP and port), III (change
    // port) and I to the CHANGED-ADDRESS.
    for test in ["test I = 1", "test II = 1", "test III = 1", "test I(2) = 1"] {
        assert!(output.contains(test), "no `{test}` in:\n{output}");
    }
    assert!(output.contains("Primary: Open"), "{output}");
    let changed = format!("ChangedAddress = {}", server.other_address().unwrap());
    assert!(output.contains(&changed), "no `{changed}` in:\n{output}");
    server.shutdown().await;
}

#[tokio::test]
async fn debian_stun_gets_answers_without_other_address() {
    let Some(stun) = require_tool("stun") else {
        return;
    };
    let server = common::start("").await;
    let target = server.udp_addrs()[0].to_string();
    let output = run(&stun, &[target.as_str(), "-v"]).await;
    assert!(output.contains("test I = 1"), "{output}");
    let mapped = "MappedAddress = 127.0.0.1:";
    assert!(output.contains(mapped), "no `{mapped}` in:\n{output}");
    assert!(!output.contains("Blocked"), "{output}");
    // Its CHANGE-REQUESTs got 420: there is no second address to answer from.
    assert!(output.contains("ErrorCode = 4 20"), "{output}");
    server.shutdown().await;
}

#[tokio::test]
async fn natdiscovery_reports_endpoint_independent_mapping_and_filtering() {
    let Some(natdiscovery) = require_tool("turnutils_natdiscovery") else {
        return;
    };
    for server in [
        start_with_other_address(2).await,
        start_wildcard_with_other_address().await,
    ] {
        natdiscovery_sees_no_nat(&natdiscovery, &server).await;
        server.shutdown().await;
    }
}

async fn natdiscovery_sees_no_nat(natdiscovery: &Path, server: &rendez::Handle) {
    let primary = server.udp_addrs()[0];
    let port = primary.port().to_string();
    let other = server.other_address().unwrap();
    for padding in [false, true] {
        let mut args = vec!["-m", "-f", "-p", port.as_str()];
        if padding {
            args.push("-P");
        }
        args.push("127.0.0.1");
        let output = run(natdiscovery, &args).await;
        assert!(
            output.contains("NAT with Endpoint Independent Mapping!"),
            "padding {padding}:\n{output}"
        );
        assert!(
            output.contains("NAT with Endpoint Independent Filtering!"),
            "padding {padding}:\n{output}"
        );
        let other_line = format!("Other addr: : {other}");
        assert!(
            output.contains(&other_line),
            "no `{other_line}` in:\n{output}"
        );
        // The change-IP-and-port answer came from the other address.
        let origin_line = format!("Response origin: : {other}");
        assert!(
            output.contains(&origin_line),
            "no `{origin_line}` in:\n{output}"
        );
    }
}

fn binding(tid: u8) -> MessageBuilder {
    MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([tid; 12]))
}

/// Runs `program` to its end (killed after [`CLIENT_TIMEOUT`]) and returns stdout and
/// stderr together.
async fn run(program: &Path, args: &[&str]) -> String {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the client");
    let output = tokio::time::timeout(CLIENT_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish in {CLIENT_TIMEOUT:?}", program.display()))
        .unwrap();
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text
}
