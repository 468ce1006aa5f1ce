//! coturn's `turnutils_uclient` in its RFC 6062 TCP-relay mode (`-T`) against rendez.
//!
//! In that mode uclient runs pairs of TURN clients over TCP (or TLS with `-S`), each with
//! a TCP allocation: one Connects to the other's relayed address (the peer is the other
//! allocation, through this server), the other is told by a ConnectionAttempt, both bind
//! data connections, and messages go both ways and are counted. `-T` ignores a peer
//! address (`-e`), so no separate echo peer takes part.

mod common;

use std::time::Duration;

use common::tls::TestCert;
use common::tools::require_tool;

/// Messages each client of a pair sends.
const MESSAGES: u32 = 20;
/// The most one run may take (uclient paces messages 20 ms apart).
const RUN_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn uclient_tcp_relay_mode_over_tcp_delivers_every_message() {
    let Some(uclient) = require_tool("turnutils_uclient") else {
        return;
    };
    let server = common::start("").await;
    let port = server.tcp_addrs()[0].port();
    let summary = run(&uclient, &["-p", &port.to_string()]).await;
    assert_all_delivered(&summary);
    let (stats, _) = server.stream_stats();
    assert!(stats.tcp.bound >= 2, "both sides bound: {:?}", stats.tcp);
    assert_eq!(stats.tcp.failed, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn uclient_tcp_relay_mode_over_tls_delivers_every_message() {
    let Some(uclient) = require_tool("turnutils_uclient") else {
        return;
    };
    let certs = TestCert::new();
    let server = common::start(&certs.config()).await;
    let port = server.tls_addrs()[0].port();
    let summary = run(&uclient, &["-S", "-p", &port.to_string()]).await;
    assert_all_delivered(&summary);
    server.shutdown().await;
}

/// What uclient reported at the end of a run.
#[derive(Debug)]
struct Summary {
    sent: u64,
    received: u64,
    lost: u64,
    output: String,
}

/// Runs one pair in TCP-relay mode with `extra` arguments, bounded by [`RUN_LIMIT`].
async fn run(uclient: &std::path::Path, extra: &[&str]) -> Summary {
    let messages = MESSAGES.to_string();
    let mut command = tokio::process::Command::new(uclient);
    command
        .args([
            "-T",
            "-u",
            "alice",
            "-w",
            "wonderland",
            "-n",
            &messages,
            "-l",
            "200",
        ])
        .args(extra)
        .arg("127.0.0.1")
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("turnutils_uclient finished in time")
        .expect("turnutils_uclient runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "uclient failed:\n{text}");
    parse(text)
}

/// Reads the totals from lines such as
/// `start_mclient: tot_send_msgs=40, tot_recv_msgs=40` and `Total lost packets 0 (…)`.
fn parse(output: String) -> Summary {
    let number_after = |key: &str| -> Option<u64> {
        output.lines().rev().find_map(|line| {
            let rest = &line[line.find(key)? + key.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
    };
    let totals = |key| number_after(key).unwrap_or_else(|| panic!("no {key} in:\n{output}"));
    Summary {
        sent: totals("tot_send_msgs="),
        received: totals("tot_recv_msgs="),
        lost: totals("Total lost packets "),
        output: output.clone(),
    }
}

fn assert_all_delivered(summary: &Summary) {
    // One pair: each of the two clients sends MESSAGES to the other.
    let expected = u64::from(2 * MESSAGES);
    assert_eq!(
        (summary.sent, summary.received, summary.lost),
        (expected, expected, 0),
        "uclient output:\n{}",
        summary.output
    );
}
