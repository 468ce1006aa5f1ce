//! A sequence of inputs to the sans-IO TURN core: client datagrams from three 5-tuples,
//! peer datagrams, relay bind answers and time jumps. The core must never panic, and must
//! keep a timer pending while it holds allocations.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rendez::turn::{
    FiveTuple, Output, PeerPolicy, RelayAddress, Server, ServerConfig, Transport, UserSecret,
};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut now = start;
    let relay = RelayAddress {
        bind: "192.0.2.10".parse().unwrap(),
        public: "203.0.113.10".parse().unwrap(),
    };
    let mut config = ServerConfig::new("r", relay, 50000..=50007);
    config.users = vec![("u".into(), UserSecret::Password("p".into()))];
    config.secrets = vec!["s".into()];
    config.peers = PeerPolicy::new(vec!["198.51.100.0/24".parse().unwrap()], vec![]);
    let mut server = Server::new(config, now, 1_800_000_000, 7, [1; 32]);
    let tuples: Vec<FiveTuple> = (0..3u16)
        .map(|i| FiveTuple {
            transport: if i == 2 {
                Transport::Tcp
            } else {
                Transport::Udp
            },
            client: SocketAddr::from(([192, 0, 2, 1], 5000 + i)),
            server: "192.0.2.10:3478".parse().unwrap(),
        })
        .collect();
    let mut bound: Vec<SocketAddr> = Vec::new();

    // Each step: an opcode byte, a length byte, then that many bytes of payload.
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (payload, next) = tail.split_at(len);
        rest = next;
        match op % 5 {
            0..=1 => {
                let tuple = tuples[usize::from(op / 5) % tuples.len()];
                let _ = server.handle_client_packet(now, tuple, payload);
            }
            2 => {
                if let Some(&relay) = bound.get(usize::from(op / 5) % bound.len().max(1)) {
                    let peer = SocketAddr::from(([198, 51, 100, op / 5], 4000));
                    let _ = server.handle_peer_packet(now, relay, peer, payload);
                }
            }
            3 => now += Duration::from_secs(u64::from(op / 5) * 40),
            _ => server.handle_timeout(now),
        }
        while let Some(output) = server.poll_output() {
            match output {
                Output::BindRelay { relay } => {
                    let ok = payload.first().is_none_or(|b| b % 4 != 0);
                    if ok {
                        bound.push(relay);
                    }
                    server.handle_relay_bound(now, relay, ok);
                }
                Output::ReleaseRelay { relay } => bound.retain(|r| *r != relay),
                Output::Transmit { .. } => {}
            }
        }
        assert!(server.allocation_count() == 0 || server.poll_timeout().is_some());
    }
});
