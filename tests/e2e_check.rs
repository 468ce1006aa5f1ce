//! `rendez check` as an operator runs it: the real binary against a real server on
//! loopback, once for each transport that works and once for each failure it diagnoses.
//!
//! The clock-skew test runs the check under libfaketime 20 minutes in the past, so its
//! 10-minute credential has already expired by the server's clock. Without libfaketime that
//! test prints `skipped: <reason>` and passes, unless `RENDEZ_REQUIRE_FAKETIME=1` (as in
//! CI), where it fails instead.

use std::time::Duration;

use tokio::net::UdpSocket;

mod common;
use common::tls::TestCert;
use common::*;

const SECRET: &str = "check-secret";
/// Whole runs are bounded by this, whatever the check's own timeouts.
const RUN_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------- the echo comes back

#[tokio::test]
async fn udp_with_a_minted_credential_passes() {
    let server = start_with_secret("").await;
    let url = format!("turn:{}?transport=udp", server.udp_addrs()[0]);
    let run = check(&[&url, "--secret", SECRET, "--user", "ops"]).await;
    run.assert_passed();
    for step in [
        "binding",
        "allocate",
        "peer",
        "permission",
        "echo in",
        "echo out",
    ] {
        run.assert_step_ok(step);
    }
    run.assert_contains("relayed 127.0.0.1:");
    run.assert_contains("realm \"rendez.test\"");
    server.shutdown().await;
}

#[tokio::test]
async fn tcp_with_a_static_user_passes() {
    let server = start_with_secret("").await;
    let url = format!("turn:{}?transport=tcp", server.tcp_addrs()[0]);
    let run = check(&[&url, "--user", "alice", "--password", "wonderland"]).await;
    run.assert_passed();
    run.assert_step_ok("connect");
    run.assert_step_ok("echo out");
    server.shutdown().await;
}

#[tokio::test]
async fn turns_with_the_test_ca_passes() {
    let cert = TestCert::for_names(&["127.0.0.1", "localhost"]);
    let server = start_with_secret(&cert.config()).await;
    let url = format!("turns:{}", server.tls_addrs()[0]);
    let run = check(&[
        &url,
        "--secret",
        SECRET,
        "--ca",
        &cert.cert_path().display().to_string(),
    ])
    .await;
    run.assert_passed();
    run.assert_step_ok("tls");
    run.assert_contains("ALPN stun.turn");
    server.shutdown().await;
}

// ---------------------------------------------------------------- diagnosed failures

#[tokio::test]
async fn wrong_secret_is_diagnosed_with_the_servers_realm() {
    let server = start_with_secret("").await;
    let url = format!("turn:{}", server.udp_addrs()[0]);
    let run = check(&[&url, "--secret", "not-the-secret"]).await;
    run.assert_failed_with("wrong secret: the server (realm \"rendez.test\")");
    run.assert_contains("trying one valid for a day");
    server.shutdown().await;
}

#[tokio::test]
async fn wrong_password_is_diagnosed_with_the_servers_realm() {
    let server = start_with_secret("").await;
    let url = format!("turn:{}?transport=tcp", server.tcp_addrs()[0]);
    let run = check(&[&url, "--user", "alice", "--password", "looking-glass"]).await;
    run.assert_failed_with(
        "wrong user or password: the server (realm \"rendez.test\") refused `alice`",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn clock_skew_is_told_apart_from_a_wrong_secret() {
    let Some(faketime) = common::tools::libfaketime() else {
        return;
    };
    let server = start_with_secret("").await;
    let url = format!("turn:{}", server.udp_addrs()[0]);
    // This machine's clock 20 minutes behind the server's: the check's 10-minute
    // credential expired 10 minutes ago as far as the server can tell.
    let run = run_check(
        &[&url, "--secret", SECRET],
        &[
            ("LD_PRELOAD", faketime.to_str().unwrap()),
            ("FAKETIME", "-20m"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    )
    .await;
    run.assert_failed_with("clock skew: the server's clock is at least 10m ahead");
    // The day-long credential worked, so the rest of the check still ran.
    run.assert_step_ok("echo in");
    run.assert_step_ok("echo out");
    run.assert_contains("FAIL: the relayed echo came back, but clients will fail");
    server.shutdown().await;
}

#[tokio::test]
async fn udp_that_gets_no_answer_is_diagnosed_as_blocked() {
    // A socket that never answers: what a firewall dropping UDP looks like from outside.
    let black_hole = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let url = format!("turn:{}", black_hole.local_addr().unwrap());
    let run = check(&[&url, "--secret", SECRET, "--timeout", "300ms"]).await;
    run.assert_failed_with("UDP blocked or nothing listening");
    run.assert_contains("try `?transport=tcp`");
}

#[tokio::test]
async fn wrong_external_ip_is_diagnosed_from_where_relayed_packets_come_from() {
    // Relay sockets bind 127.0.0.1 but advertise 127.0.0.99, where nothing listens: like a
    // cloud VM whose `external-ip` is not its public address.
    let server = start_with_secret("external-ip = \"127.0.0.99\"\n").await;
    let url = format!("turn:{}", server.udp_addrs()[0]);
    let run = check(&[&url, "--secret", SECRET, "--timeout", "500ms"]).await;
    run.assert_contains("relayed 127.0.0.99:");
    run.assert_failed_with("`external-ip` missing or wrong");
    run.assert_contains("Set `external-ip = \"127.0.0.1\"`");
    server.shutdown().await;
}

#[tokio::test]
async fn denied_peer_address_is_diagnosed() {
    // The default peer policy: loopback peers are denied.
    let server = start_with("listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n").await;
    let url = format!("turn:{}", server.udp_addrs()[0]);
    let run = check(&[&url, "--user", "alice", "--password", "wonderland"]).await;
    run.assert_failed_with("peer address denied: the server's peer policy refuses 127.0.0.1");
    run.assert_contains("`[peers] allow`");
    run.assert_step_ok("release");
    server.shutdown().await;
}

#[tokio::test]
async fn certificate_for_another_name_is_diagnosed_with_its_names() {
    let cert = TestCert::for_names(&["turn.example.org"]);
    let server = start_with_secret(&cert.config()).await;
    let url = format!("turns:{}", server.tls_addrs()[0]);
    let run = check(&[
        &url,
        "--secret",
        SECRET,
        "--ca",
        &cert.cert_path().display().to_string(),
    ])
    .await;
    run.assert_failed_with(
        "certificate name mismatch: the server's certificate is not valid for `127.0.0.1`; \
         it is for turn.example.org",
    );
    server.shutdown().await;
}

#[tokio::test]
async fn untrusted_certificate_is_diagnosed() {
    let cert = TestCert::for_names(&["127.0.0.1"]);
    let server = start_with_secret(&cert.config()).await;
    let url = format!("turns:{}", server.tls_addrs()[0]);
    let run = check(&[&url, "--secret", SECRET]).await;
    run.assert_failed_with("untrusted certificate: the server's certificate is not signed");
    run.assert_contains("--ca FILE");
    server.shutdown().await;
}

// ---------------------------------------------------------------- helpers

/// The shared test server (peers on loopback allowed) with a REST secret besides alice.
async fn start_with_secret(extra: &str) -> rendez::Handle {
    let top = "listen = [\"127.0.0.1:0\"]\nrelay-ip = \"127.0.0.1\"\n";
    let mut config = test_config(&format!(
        "{top}{extra}\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n"
    ));
    config.auth.secrets = vec![SECRET.into()];
    rendez::start(config).await.expect("server starts")
}

struct CheckRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

async fn check(args: &[&str]) -> CheckRun {
    run_check(args, &[]).await
}

async fn run_check(args: &[&str], env: &[(&str, &str)]) -> CheckRun {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rendez"));
    command
        .arg("check")
        .args(args)
        .env_remove("RENDEZ_SECRET")
        .env_remove("RENDEZ_PASSWORD")
        .envs(env.iter().copied())
        .kill_on_drop(true);
    let output = tokio::time::timeout(RUN_LIMIT, command.output())
        .await
        .expect("rendez check finishes")
        .expect("rendez check runs");
    CheckRun {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

impl CheckRun {
    fn assert_passed(&self) {
        assert_eq!(self.code, Some(0), "{self}");
        self.assert_contains("PASS: the relayed echo came back through the server");
    }

    fn assert_failed_with(&self, diagnosis: &str) {
        assert_eq!(self.code, Some(1), "{self}");
        let found = self.stdout.lines().any(|line| {
            line.strip_prefix("diagnosis: ")
                .is_some_and(|d| d.starts_with(diagnosis))
        });
        assert!(found, "no diagnosis starting {diagnosis:?}\n{self}");
    }

    fn assert_step_ok(&self, step: &str) {
        let ok = self.stdout.lines().any(|line| {
            line.trim_start()
                .strip_prefix(step)
                .is_some_and(|rest| rest.trim_start().starts_with("ok "))
        });
        assert!(ok, "step {step:?} is not ok\n{self}");
    }

    fn assert_contains(&self, text: &str) {
        assert!(
            self.stdout.contains(text),
            "no {text:?} in the output\n{self}"
        );
    }
}

impl std::fmt::Display for CheckRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}
