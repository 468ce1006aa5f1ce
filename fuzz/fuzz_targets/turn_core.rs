//! A sequence of inputs to the sans-IO TURN core: client datagrams from three 5-tuples,
//! peer datagrams, relay bind answers and time jumps. The core must never panic, and must
//! keep a timer pending while it holds allocations.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rendez::random::Rng;
use rendez::turn::{
    FiveTuple, Io, PeerAddr, PeerPolicy, RelayAddr, RelayAddress, RelayBind, Server,
    ServerConfig, Transport, UserSecret,
};

/// The fuzzer's I/O layer: binds fail when the current step's payload says so.
struct FuzzIo {
    bound: Vec<SocketAddr>,
    fail: bool,
}

impl Io for FuzzIo {
    fn transmit(&mut self, _: FiveTuple, _: Vec<u8>) {}

    fn bind_relay(&mut self, RelayAddr(relay): RelayAddr) -> RelayBind {
        if self.fail {
            return RelayBind::Unavailable;
        }
        self.bound.push(relay);
        RelayBind::Bound
    }

    fn release_relay(&mut self, RelayAddr(relay): RelayAddr) {
        self.bound.retain(|r| *r != relay);
    }
}

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
    let mut server = Server::new(config, now, 1_800_000_000, Rng::from_seed(7), [1; 32]);
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
    let mut io = FuzzIo {
        bound: Vec::new(),
        fail: false,
    };

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
                let index = usize::from(op / 5) % io.bound.len().max(1);
                if let Some(&relay) = io.bound.get(index) {
                    let peer = SocketAddr::from(([198, 51, 100, op / 5], 4000));
                    let _ =
                        server.handle_peer_packet(now, RelayAddr(relay), PeerAddr(peer), payload);
                }
            }
            3 => now += Duration::from_secs(u64::from(op / 5) * 40),
            _ => server.handle_timeout(now),
        }
        io.fail = payload.first().is_some_and(|b| b % 4 == 0);
        server.drive(now, &mut io);
        assert!(server.allocation_count() == 0 || server.poll_timeout().is_some());
    }
});
