//! Clients written to RFC 5766 against rendez: coturn's `turnutils_uclient` in its default
//! mode (RTP/RTCP pairs: an Allocate with EVEN-PORT R=1, then one with the
//! RESERVATION-TOKEN it returned, channel numbers from the whole 0x4000–0x7FFF) and with
//! `-c` (no pairs), over UDP and TCP, with channels and with Send indications; the old
//! channel numbers with our own client over TCP; and DONT-FRAGMENT on relayed datagrams, in
//! a network namespace whose loopback has a small MTU.
//!
//! The peers are coturn's `turnutils_peer` (UDP echo) on 127.0.0.1. In pair mode the
//! client sends RTP to the peer port and RTCP to the port after it, so two peers listen on
//! two consecutive ports.

use std::io::Read;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rendez::stun::{AttrType, Class, Message, Method};

mod common;
use common::netns::{enter_new_network_namespace, ip};
use common::relay::assert_channel_relays;
use common::tools::require_tool;
use common::*;

/// The longest one `turnutils_uclient` run may take: it waits for lost packets for a few
/// seconds at the end, so a run that loses everything takes about 15 s.
const UCLIENT_LIMIT: Duration = Duration::from_secs(40);

// ---------------------------------------------------------------- turnutils_uclient

/// The default mode, over UDP, with two UDP workers: each pair's RTCP Allocate comes from
/// another client port, which the kernel may hash to the other worker, so the token must be
/// found there. Four pairs, so that happens with all but certainty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_pairs_over_udp_with_two_workers() {
    let Some(tools) = Tools::find() else { return };
    let server = start("workers = 2").await;
    let run = tools.uclient(&server, &["-m", "4"]).await;
    run.assert_flowed();
    run.assert_pairs();
    let workers = server.worker_stats();
    assert!(
        workers.iter().all(|w| w.allocations_created > 0),
        "both workers served allocations: {:?}",
        workers
            .iter()
            .map(|w| w.allocations_created)
            .collect::<Vec<_>>()
    );
    server.shutdown().await;
}

/// The default mode over TCP (`-t`): every allocation is on its own connection to the
/// stream shard; ChannelData on numbers up to 0x7FFF is framed on the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_pairs_over_tcp() {
    let Some(tools) = Tools::find() else { return };
    let server = start("").await;
    let run = tools.uclient(&server, &["-t", "-m", "2"]).await;
    run.assert_flowed();
    run.assert_pairs();
    let (tcp, _) = server.stream_stats();
    assert!(tcp.allocations_created >= 2, "over TCP: {tcp:?}");
    server.shutdown().await;
}

/// Send and Data indications instead of channels (`-s`), over UDP and TCP, asking for
/// DONT-FRAGMENT (`-g`) over UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_send_indications_over_udp_and_tcp() {
    let Some(tools) = Tools::find() else { return };
    let server = start("workers = 2").await;
    for flags in [&["-s", "-g"][..], &["-s", "-t"]] {
        let run = tools.uclient(&server, flags).await;
        run.assert_flowed();
        run.assert_pairs();
    }
    server.shutdown().await;
}

/// No pairs (`-c`): plain Allocates, ChannelBind with RFC 5766 channel numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uclient_without_pairs_over_udp_and_tcp() {
    let Some(tools) = Tools::find() else { return };
    let server = start("").await;
    for flags in [&["-c", "-m", "2"][..], &["-c", "-t"]] {
        let run = tools.uclient(&server, flags).await;
        run.assert_flowed();
        assert_eq!(run.tokens, 0, "no reservations without pairs");
    }
    server.shutdown().await;
}

/// The coturn tools, or `None` when they are missing (and not required).
struct Tools {
    uclient: PathBuf,
    peer: PathBuf,
}

impl Tools {
    fn find() -> Option<Self> {
        Some(Self {
            uclient: require_tool("turnutils_uclient")?,
            peer: require_tool("turnutils_peer")?,
        })
    }

    /// Runs `turnutils_uclient` (10 messages of 120 bytes per session, as alice) through
    /// `server`'s UDP/TCP port to echo peers of its own, with `flags` added.
    async fn uclient(&self, server: &rendez::Handle, flags: &[&str]) -> Uclient {
        let peers = EchoPeers::start(&self.peer);
        let server_port = server.udp_addrs()[0].port().to_string();
        let peer_port = peers.port.to_string();
        let mut args = vec![
            "-v",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-e",
            "127.0.0.1",
            "-r",
            &peer_port,
            "-p",
            &server_port,
            "-n",
            "10",
            "-l",
            "120",
        ];
        args.extend_from_slice(flags);
        args.push("127.0.0.1");
        let uclient = self.uclient.clone();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let output = tokio::task::spawn_blocking(move || run_bounded(&uclient, &args))
            .await
            .unwrap();
        drop(peers);
        Uclient::parse(flags, &output)
    }
}

/// What one `turnutils_uclient` run reported.
#[derive(Debug)]
struct Uclient {
    flags: String,
    sent: u64,
    received: u64,
    lost: u64,
    /// RESERVATION-TOKENs it was given (`rtv=` other than 0 in its verbose output).
    tokens: usize,
    /// Relayed addresses it got on an odd port: in pair mode every other Allocate asks for
    /// an even port, so those are the ports it redeemed a token for.
    redeemed: usize,
    /// Lines reporting an error response ("error 508 (...)").
    errors: Vec<String>,
    output: String,
}

impl Uclient {
    /// Reads the summary lines: `tot_send_msgs=N, tot_recv_msgs=M` (the last one is the
    /// total) and `Total lost packets L (P%), ...`.
    fn parse(flags: &[&str], output: &str) -> Self {
        let number_after = |line: &str, key: &str| -> Option<u64> {
            let rest = &line[line.find(key)? + key.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        let totals = output
            .lines()
            .rfind(|l| l.contains("tot_send_msgs=") && l.contains("tot_recv_msgs="));
        let lost = output.lines().rfind(|l| l.contains("Total lost packets"));
        Self {
            flags: flags.join(" "),
            sent: totals
                .and_then(|l| number_after(l, "tot_send_msgs="))
                .unwrap_or(0),
            received: totals
                .and_then(|l| number_after(l, "tot_recv_msgs="))
                .unwrap_or(0),
            lost: lost
                .and_then(|l| number_after(l, "Total lost packets "))
                .unwrap_or(u64::MAX),
            tokens: output
                .lines()
                .filter_map(|l| number_after(l, "clnet_allocate: rtv="))
                .filter(|&token| token != 0)
                .count(),
            redeemed: output
                .lines()
                .filter(|l| l.contains("Received relay addr: "))
                .filter_map(|l| number_after(l, "127.0.0.1:"))
                .filter(|port| port % 2 == 1)
                .count(),
            errors: output
                .lines()
                .filter(|l| l.contains(": error "))
                .map(str::to_owned)
                .collect(),
            output: output.to_owned(),
        }
    }

    /// Every request succeeded, traffic went both ways, and (on loopback) next to nothing
    /// was lost.
    fn assert_flowed(&self) {
        assert!(
            self.errors.is_empty(),
            "uclient {}: error responses {:?}\n{}",
            self.flags,
            self.errors,
            self.output
        );
        assert!(
            self.sent > 0 && self.received > 0,
            "uclient {}: sent {}, received {}\n{}",
            self.flags,
            self.sent,
            self.received,
            self.output
        );
        assert!(
            self.lost * 10 <= self.sent && self.received * 10 >= self.sent * 9,
            "uclient {}: lost {} of {} (received {})\n{}",
            self.flags,
            self.lost,
            self.sent,
            self.received,
            self.output
        );
    }

    /// Pair mode got reservation tokens and redeemed them for the odd ports they held.
    fn assert_pairs(&self) {
        assert!(
            self.tokens > 0 && self.redeemed > 0,
            "uclient {}: {} reservation tokens, {} redeemed\n{}",
            self.flags,
            self.tokens,
            self.redeemed,
            self.output
        );
    }
}

/// Two `turnutils_peer` echo servers on 127.0.0.1, on `port` and `port + 1`; killed when
/// dropped.
struct EchoPeers {
    port: u16,
    children: Vec<Child>,
}

impl EchoPeers {
    fn start(program: &Path) -> Self {
        let port = free_port_pair();
        let children = [port, port + 1]
            .iter()
            .map(|p| {
                Command::new(program)
                    .args(["-L", "127.0.0.1", "-p", &p.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start turnutils_peer")
            })
            .collect();
        let peers = Self { port, children };
        peers.wait_until_echoing();
        peers
    }

    /// Both peers answer a datagram (they take a moment to start).
    fn wait_until_echoing(&self) {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        for port in [self.port, self.port + 1] {
            let deadline = Instant::now() + WAIT;
            let mut buf = [0u8; 16];
            loop {
                probe.send_to(b"ping", ("127.0.0.1", port)).unwrap();
                if matches!(probe.recv_from(&mut buf), Ok((4, from)) if from.port() == port) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "turnutils_peer on {port} does not echo"
                );
            }
        }
    }
}

impl Drop for EchoPeers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port such that it and the next one are free for UDP on 127.0.0.1 right now.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let first = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two consecutive free UDP ports on 127.0.0.1");
}

/// Runs `program` with `args`, killed after [`UCLIENT_LIMIT`]; returns stdout and stderr.
fn run_bounded(program: &Path, args: &[String]) -> String {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    // Read both pipes on threads, so a chatty child never blocks on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + UCLIENT_LIMIT;
    let finished = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    assert!(
        finished,
        "{} {} ran longer than {UCLIENT_LIMIT:?}\n{output}",
        program.display(),
        args.join(" ")
    );
    output
}

// ---------------------------------------------------------------- channel numbers

/// RFC 5766's channel numbers over TCP with our own client: ChannelBind 0x7FFF, then
/// ChannelData both ways, framed and padded on the stream.
#[tokio::test]
async fn channel_0x7fff_relays_both_ways_over_tcp() {
    let server = start("").await;
    let stream = tokio::net::TcpStream::connect(server.tcp_addrs()[0])
        .await
        .unwrap();
    let mut client = TurnClient::new(Conn::stream(stream), "alice", "wonderland");
    let relayed = client.allocate(&[]).await[0];
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_channel_relays(&mut client, &peer, relayed, 0x7FFF).await;
    server.shutdown().await;
}

/// With `channel-numbers = "rfc8656"` the old range is refused (400) and the new one works.
#[tokio::test]
async fn strict_channel_numbers_refuse_0x5000() {
    let server = start("channel-numbers = \"rfc8656\"").await;
    let mut client = TurnClient::alice_udp(&server).await;
    client.allocate(&[]).await;
    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let refused = client
        .request(Method::CHANNEL_BIND, &[channel(0x5000), xor_peer(peer)])
        .await;
    assert_eq!(error_of(&refused), Some(400));
    let bound = client
        .request(Method::CHANNEL_BIND, &[channel(0x4FFF), xor_peer(peer)])
        .await;
    assert_eq!(class_of(&bound), Class::Success);
    server.shutdown().await;
}

// ---------------------------------------------------------------- DONT-FRAGMENT

/// The MTU of the namespace's loopback: datagrams of [`LARGE`] bytes do not fit in one
/// packet, so they are either fragmented or, with DF, not sent at all.
const SMALL_MTU: &str = "1280";
const LARGE: usize = 1400;

/// In a namespace whose loopback has a 1280-byte MTU: a datagram larger than that, relayed
/// for an allocation that asked for DONT-FRAGMENT, is never sent (the kernel refuses to
/// fragment it); the same datagram from an allocation that did not ask arrives, fragmented
/// and reassembled; one that fits arrives either way; and a Send indication carrying
/// DONT-FRAGMENT gets the same treatment on an allocation that did not ask. Skipped (with a
/// note) unless the test runs as root with `ip` at hand.
#[test]
fn dont_fragment_allocations_never_fragment_relayed_datagrams() {
    let test = std::thread::spawn(|| {
        if let Err(why) = enter_new_network_namespace() {
            eprintln!("skipped: {why}");
            return;
        }
        ip(&["link", "set", "lo", "mtu", SMALL_MTU]);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(dont_fragment_session());
    });
    if let Err(panic) = test.join() {
        std::panic::resume_unwind(panic);
    }
}

async fn dont_fragment_session() {
    let server = start("workers = 1").await;
    let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let large = vec![7u8; LARGE];
    let small = vec![8u8; 600];

    let mut df = TurnClient::alice_udp(&server).await;
    let dont_fragment = Attr::Raw(AttrType::DONT_FRAGMENT, Vec::new());
    df.allocate(&[dont_fragment]).await;
    let mut plain = TurnClient::alice_udp(&server).await;
    let plain_relayed = plain.allocate(&[]).await[0];
    for client in [&mut df, &mut plain] {
        let permitted = client
            .request(Method::CREATE_PERMISSION, &[xor_peer(peer_addr)])
            .await;
        assert_eq!(class_of(&permitted), Class::Success);
    }

    df.conn.send(&send_indication(peer_addr, &large)).await;
    df.conn.send(&send_indication(peer_addr, &small)).await;
    let (first, _) = recv_from(&peer).await;
    assert_eq!(
        first, small,
        "the large datagram must not arrive, the small one must"
    );

    plain.conn.send(&send_indication(peer_addr, &large)).await;
    assert_eq!(recv_from(&peer).await, (large.clone(), plain_relayed));

    // A Send indication that asks for DF itself, on the allocation that did not.
    plain
        .conn
        .send(&send_indication_dont_fragment(peer_addr, &large))
        .await;
    plain.conn.send(&send_indication(peer_addr, &small)).await;
    assert_eq!(recv_from(&peer).await.0, small, "DF for that datagram only");
    plain.conn.send(&send_indication(peer_addr, &large)).await;
    assert_eq!(
        recv_from(&peer).await.0,
        large,
        "and the socket is as it was"
    );
    server.shutdown().await;
}

fn send_indication_dont_fragment(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
    use rendez::stun::{MessageBuilder, TransactionId};
    let mut b = MessageBuilder::new(Class::Indication, Method::SEND, TransactionId([0x56; 12]));
    b.add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
        .add(AttrType::DATA, data)
        .add(AttrType::DONT_FRAGMENT, &[]);
    let bytes = b.finish();
    assert!(Message::parse(&bytes).unwrap().has_dont_fragment());
    bytes
}
