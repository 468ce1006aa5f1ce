//! Soak: allocation churn with traffic for about ten minutes, then a check that the server
//! has given back what it took. Not part of the default `cargo test`; run it with
//!
//! ```sh
//! cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! (`RENDEZ_SOAK_SECS=60` for a shorter run). [`CLIENTS`] clients each loop: allocate, bind a
//! channel to a peer, relay [`ROUND_TRIPS`] round trips, then either delete the allocation
//! (Refresh 0) or walk away from it and let it expire (a client that vanished). Once the
//! churn stops and every allocation has expired, resident memory must be back within
//! [`RSS_SLACK_KIB`] of the baseline and the open file descriptors exactly at it. The
//! baseline is taken after one warm-up round of the same churn, so one-time allocations
//! (thread buffers, tables grown to their working size) are in it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;
use common::channel_loop::ChannelLoop;
use common::process::{metric_sum, scrape_metrics, ServerProcess};
use common::*;

/// Clients churning at once.
const CLIENTS: usize = 40;
/// Each client's pause between two allocations: about 30 new allocations a second in all,
/// and some 500 held at once (the abandoned ones live out their lifetime).
const PAUSE: Duration = Duration::from_secs(1);
/// Relay round trips per allocation.
const ROUND_TRIPS: usize = 20;
/// The allocations' lifetime: short, so abandoned ones expire during the soak.
const LIFETIME_SECS: u64 = 15;
/// How far above the baseline resident memory may end: allocator caches, not leaks.
const RSS_SLACK_KIB: u64 = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a 10-minute soak: cargo test --release --test soak -- --ignored --nocapture"]
async fn allocation_churn_gives_back_memory_and_file_descriptors() {
    let soak = std::env::var("RENDEZ_SOAK_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(600), Duration::from_secs);
    let server = Soaked::start();

    churn(server.udp, Instant::now()).await; // one round each: the warm-up
    server.wait_until_idle();
    let (rss_before, fds_before) = (server.process.rss_kib(), server.process.open_fds());
    println!("baseline: RSS {rss_before} KiB, {fds_before} fds");

    let began = Instant::now();
    let stop = began + soak;
    let reporter = server.report_every(Duration::from_secs(30), stop);
    let allocations = churn(server.udp, stop).await;
    reporter.await.unwrap();
    let peak = server.process.rss_kib();
    println!(
        "churned {allocations} allocations in {:?}; RSS {peak} KiB when the churn stopped",
        began.elapsed()
    );

    server.wait_until_idle();
    let (rss_after, fds_after) = (server.process.rss_kib(), server.process.open_fds());
    println!(
        "after expiry: RSS {rss_after} KiB ({:+} KiB), {fds_after} fds ({:+})",
        rss_after as i64 - rss_before as i64,
        fds_after as i64 - fds_before as i64
    );
    assert_eq!(fds_after, fds_before, "file descriptors left open");
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "resident memory {rss_after} KiB, baseline {rss_before} KiB"
    );
}

/// [`CLIENTS`] clients each churning allocations until `stop` (at least one round each):
/// how many allocations they made.
async fn churn(server: SocketAddr, stop: Instant) -> usize {
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..CLIENTS {
        clients.spawn(async move {
            // Sessions walked away from keep their sockets until their allocation has
            // expired: a new socket on the same port would be the same 5-tuple (437).
            let mut walked_away = std::collections::VecDeque::new();
            let mut rounds = 0;
            loop {
                let mut session =
                    ChannelLoop::open(Conn::udp(server).await, "alice", "wonderland").await;
                for trip in 0..ROUND_TRIPS {
                    session.round_trip(&(trip as u64).to_be_bytes()).await;
                }
                if (client + rounds) % 2 == 0 {
                    assert_eq!(session.client.refresh(0).await, None, "delete");
                } else {
                    walked_away.push_back((Instant::now(), session));
                }
                let expired = Duration::from_secs(LIFETIME_SECS + 5);
                while walked_away
                    .front()
                    .is_some_and(|(at, _)| at.elapsed() > expired)
                {
                    walked_away.pop_front();
                }
                rounds += 1;
                if Instant::now() >= stop {
                    return (rounds, walked_away);
                }
                tokio::time::sleep(PAUSE).await;
            }
        });
    }
    // Until every client has stopped, no socket may close before its allocation expired:
    // another client could be given its port. The first failure is the one reported.
    let mut total = 0;
    let mut held = Vec::new();
    while let Some(client) = clients.join_next().await {
        let (rounds, walked_away) = client.unwrap();
        total += rounds;
        held.push(walked_away);
    }
    total
}

/// The real binary with two workers, short allocation lifetimes, loopback peers allowed,
/// and limits raised past what the churn needs.
struct Soaked {
    process: ServerProcess,
    udp: SocketAddr,
    metrics: SocketAddr,
}

impl Soaked {
    fn start() -> Self {
        let config = format!(
            "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\nworkers = 2\n\
             realm = \"rendez.test\"\nlog-format = \"json\"\n\
             allocation-lifetime = \"{LIFETIME_SECS}s\"\n\
             [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
             [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
             [limits]\nallocations-per-user = 100000\nallocations-per-ip = 100000\n\
             allocations-total = 100000\nunauthorized-per-ip = 100000\n\
             [signal]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n"
        );
        let mut process = ServerProcess::spawn("soak", &config, &[]);
        let udp = process.wait_until_serving();
        let metrics = process.logged_metrics_addr().expect("metrics listener");
        Self {
            process,
            udp,
            metrics,
        }
    }

    /// Allocations the server holds now.
    fn allocations(&self) -> u64 {
        metric_sum(&scrape_metrics(self.metrics), "rendez_allocations") as u64
    }

    /// Waits until no allocation is left (every abandoned one has expired), then a little
    /// longer for the workers to return freed memory.
    fn wait_until_idle(&self) {
        std::thread::sleep(Duration::from_millis(300)); // the workers publish every 100 ms
        let deadline = Instant::now() + Duration::from_secs(LIFETIME_SECS * 4);
        while self.allocations() > 0 {
            assert!(
                Instant::now() < deadline,
                "{} allocations still held",
                self.allocations()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(2));
    }

    /// Prints allocations, resident memory and file descriptors every `period` until `stop`.
    fn report_every(&self, period: Duration, stop: Instant) -> tokio::task::JoinHandle<()> {
        let (metrics, pid) = (self.metrics, self.process.pid());
        tokio::spawn(async move {
            while Instant::now() + period < stop {
                tokio::time::sleep(period).await;
                let allocations = metric_sum(&scrape_metrics(metrics), "rendez_allocations") as u64;
                println!(
                    "{allocations} allocations, RSS {} KiB, {} fds",
                    common::process::rss_kib(pid),
                    common::process::open_fds(pid)
                );
            }
        })
    }
}
