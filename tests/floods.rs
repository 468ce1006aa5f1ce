//! Floods against the real binary, from 1,000 UDP source ports on loopback:
//!
//! - a million unauthenticated Allocates (what a reflection attack sends) leave the server's
//!   resident memory where it was: no per-source state is kept for requests that have not
//!   authenticated;
//! - a million random datagrams (noise, STUN-shaped and ChannelData-shaped garbage, mangled
//!   valid requests) neither crash the server nor stall a legitimate client, whose relay
//!   round trip runs between every burst of the flood.
//!
//! The flood goes out in bursts of [`BURST`] datagrams; after each, the legitimate client
//! makes one relay round trip. The server has one worker, so that round trip queues behind
//! the burst on the same socket: when it returns, the burst has been read and handled, and
//! nothing was lost to a full socket buffer (the metrics then account for every datagram).
//! The round trip's time is printed (`--nocapture`); asserting on it would make a timing
//! test, so the test asserts only that every round trip completes. Run in release for the
//! figures: `cargo test --release --test floods -- --nocapture`.

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::time::Duration;

use rendez::stun::{AttrType, Class, MessageBuilder, Method, TransactionId};

mod common;
use common::channel_loop::ChannelLoop;
use common::process::{metric_sum, scrape_metrics, ServerProcess};
use common::*;

/// Datagrams in each flood.
const FLOOD: usize = 1_000_000;
/// Source ports the flood comes from.
const SOURCES: usize = 1_000;
/// Datagrams between two round trips of the legitimate client.
const BURST: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_unauthenticated_allocates_leave_memory_flat() {
    let mut server = Flooded::start("allocate-flood").await;
    // Warm-up: every buffer the hot path touches is touched once before the baseline.
    server.flood(10 * BURST, unauthenticated_allocate).await;
    // The first metrics scrape makes the server's HTTP side allocate (its connection and
    // response buffers): it comes before the baseline, not inside the measurement.
    let handled_before = server.settled_handled();
    let before = server.process.rss_kib();

    let latency = server.flood(FLOOD, unauthenticated_allocate).await;
    let after = server.process.rss_kib();
    let handled = server.handled(handled_before + FLOOD as u64) - handled_before;
    let (answers, bytes_back) = server.answers_to_sources();
    let bytes_sent = FLOOD * 28;

    println!(
        "{FLOOD} unauthenticated Allocates: RSS {before} KiB → {after} KiB ({:+} KiB), \
         {handled} handled, {answers} answered ({bytes_back} bytes back for {bytes_sent}: \
         ×{:.5}); relay round trip {latency}",
        after as i64 - before as i64,
        bytes_back as f64 / bytes_sent as f64,
    );
    assert!(
        bytes_back <= bytes_sent,
        "reflection: {bytes_back} bytes back for {bytes_sent}"
    );
    assert!(
        handled >= FLOOD as u64,
        "the server saw {handled} of {FLOOD}: the flood did not reach it"
    );
    assert!(
        after < before + 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_random_datagrams_neither_crash_nor_stall() {
    let mut server = Flooded::start("random-flood").await;
    let mut noise = Noise::new(0x5eed_2026);
    let handled_before = server.settled_handled();
    let before = server.process.rss_kib();
    let latency = server.flood(FLOOD, |_, buffer| noise.fill(buffer)).await;
    let handled = server.handled(handled_before + FLOOD as u64) - handled_before;
    let after = server.process.rss_kib();

    println!(
        "{FLOOD} random datagrams: {handled} handled, RSS {before} KiB → {after} KiB; \
         relay round trip {latency}"
    );
    assert!(
        server.process.try_wait().is_none(),
        "the server exited:\n{}",
        server.process.log()
    );
    assert!(
        handled >= FLOOD as u64,
        "the server saw {handled} of {FLOOD}: the flood did not reach it"
    );
    // Still answering new clients, not only the one that was there all along. From another
    // address: the flood has spent 127.0.0.1's budget of unauthenticated answers.
    let newcomer = Conn::udp_from("127.0.0.3".parse().unwrap(), server.udp).await;
    ChannelLoop::open(newcomer, "alice", "wonderland")
        .await
        .round_trip(b"after the flood!")
        .await;
}

// ---------------------------------------------------------------- the server and the flood

/// The real binary with one worker, loopback peers allowed, metrics on, and a legitimate
/// client relaying through it from 127.0.0.2.
struct Flooded {
    process: ServerProcess,
    udp: SocketAddr,
    metrics: SocketAddr,
    legitimate: ChannelLoop,
    sources: Vec<StdUdpSocket>,
}

impl Flooded {
    async fn start(name: &str) -> Self {
        let config = "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nworkers = 1\n\
                      realm = \"rendez.test\"\nlog-format = \"json\"\n\
                      [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
                      [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
                      [signal]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
        let mut process = ServerProcess::spawn(name, config, &[]);
        let udp = process.wait_until_serving();
        let metrics = process.logged_metrics_addr().expect("metrics listener");
        let conn = Conn::udp_from("127.0.0.2".parse().unwrap(), udp).await;
        let legitimate = ChannelLoop::open(conn, "alice", "wonderland").await;
        let sources = (0..SOURCES)
            .map(|_| StdUdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        Self {
            process,
            udp,
            metrics,
            legitimate,
            sources,
        }
    }

    /// Sends `count` datagrams, each written by `next(n, buffer)` into a buffer that it
    /// returns the used part of, round-robin from every source port, with a round trip of
    /// the legitimate client after each burst.
    async fn flood(
        &mut self,
        count: usize,
        mut next: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> Latency {
        let mut latency = Latency::default();
        let mut buffer = [0u8; 1500];
        for burst in 0..count.div_ceil(BURST) {
            let range = burst * BURST..((burst + 1) * BURST).min(count);
            tokio::task::block_in_place(|| {
                for n in range {
                    let len = next(n, &mut buffer);
                    let source = &self.sources[n % SOURCES];
                    source.send_to(&buffer[..len], self.udp).unwrap();
                }
            });
            let payload = (burst as u64).to_be_bytes().repeat(2);
            latency.add(self.legitimate.round_trip(&payload).await);
        }
        latency
    }

    /// Datagrams and bytes waiting on the flood's source ports: the server's answers.
    fn answers_to_sources(&self) -> (usize, usize) {
        let (mut datagrams, mut bytes) = (0, 0);
        let mut buffer = [0u8; 1500];
        for source in &self.sources {
            source.set_nonblocking(true).unwrap();
            while let Ok(len) = source.recv(&mut buffer) {
                datagrams += 1;
                bytes += len;
            }
        }
        (datagrams, bytes)
    }

    /// [`Self::handled`] once everything sent so far is published (workers publish every
    /// 100 ms).
    fn settled_handled(&self) -> u64 {
        std::thread::sleep(Duration::from_millis(300));
        self.handled(0)
    }

    /// Datagrams the server has handled: requests answered plus packets dropped (by
    /// reason: malformed, rate-limited, …), from its metrics. The workers publish their
    /// figures every 100 ms, so this waits up to [`WAIT`] for `at_least`.
    fn handled(&self, at_least: u64) -> u64 {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let scrape = scrape_metrics(self.metrics);
            let handled = (metric_sum(&scrape, "rendez_requests_total")
                + metric_sum(&scrape, "rendez_dropped_packets_total"))
                as u64;
            if handled >= at_least || std::time::Instant::now() >= deadline {
                return handled;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The legitimate client's round trips: count, median and worst.
#[derive(Default)]
struct Latency(Vec<Duration>);

impl Latency {
    fn add(&mut self, rtt: Duration) {
        self.0.push(rtt);
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sorted = self.0.clone();
        sorted.sort();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q) as usize];
        write!(
            f,
            "×{}: median {:?}, p99 {:?}, max {:?}",
            sorted.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    }
}

// ---------------------------------------------------------------- what the flood sends

/// Writes a 28-byte Allocate without credentials, transaction id `n`, into `buffer`.
fn unauthenticated_allocate(n: usize, buffer: &mut [u8]) -> usize {
    let mut tid = [0u8; 12];
    tid[..8].copy_from_slice(&(n as u64).to_be_bytes());
    let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId(tid));
    b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    let request = b.finish();
    buffer[..request.len()].copy_from_slice(&request);
    request.len()
}

/// Random datagrams of four shapes: noise, a STUN header (magic cookie, any method and
/// class, any length field) over random attributes, a ChannelData header (any channel,
/// any length field) over noise, and a valid request with a few bytes flipped.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// xorshift64*: fast, and the same flood on every run.
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Fills the front of `buffer` with one datagram; returns its length.
    fn fill(&mut self, buffer: &mut [u8]) -> usize {
        // Mostly small datagrams, as a packet-rate flood sends; one in sixteen up to 1400.
        let len = if self.below(16) == 0 {
            self.below(1400) + 1
        } else {
            self.below(120) + 1
        };
        for chunk in buffer[..len].chunks_mut(8) {
            chunk.copy_from_slice(&self.next().to_le_bytes()[..chunk.len()]);
        }
        match self.below(4) {
            0 => {}
            1 if len >= 20 => {
                buffer[0] &= 0x3f; // a STUN message type
                buffer[4..8].copy_from_slice(&0x2112_a442u32.to_be_bytes());
                if self.below(2) == 0 {
                    // a length field that tells the truth
                    let body = ((len - 20) & !3) as u16;
                    buffer[2..4].copy_from_slice(&body.to_be_bytes());
                    return 20 + body as usize;
                }
            }
            2 if len >= 4 => buffer[0] = 0x40 | (buffer[0] & 0x3f), // ChannelData
            _ => {
                let valid = binding(self.below(256) as u8);
                buffer[..valid.len()].copy_from_slice(&valid);
                for _ in 0..=self.below(3) {
                    let at = self.below(valid.len());
                    buffer[at] ^= 1 << self.below(8);
                }
                return valid.len();
            }
        }
        len
    }
}
