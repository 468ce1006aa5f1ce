//! README's one-command deployment, run as written: `rendez serve --domain meet.rendez.test
//! --email …` with no config file, on its real ports (80, 443, UDP/TCP 3478), against pebble
//! instead of Let's Encrypt (`RENDEZ_ACME_DIRECTORY`, `RENDEZ_ACME_CA`).
//!
//! Fixed ports and the default cache directory need a machine of their own, so the test's
//! thread makes one: a network namespace (pebble, its DNS and rendez all start inside it;
//! the domain resolves to the namespace's 127.0.0.1, where pebble's validator finds rendez
//! on 80) and a mount namespace in which `/var/lib` is an empty tmpfs (rendez keeps its
//! account and certificate in `/var/lib/rendez/acme` there, not on the host). Skipped with
//! the reason when that cannot be done (not root, no `ip`), unless `RENDEZ_REQUIRE_CLIENTS=1`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::netns::{enter_new_network_namespace, hide_under_tmpfs};
use common::pebble::{tls_connect, Options, Pebble, ValidationPorts};
use common::process::ServerProcess;
use common::{Conn, TurnClient};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DOMAIN: &str = "meet.rendez.test";
/// What the domain resolves to in the namespace (pebble's DNS answers it for every name).
const ADDRESS: [u8; 4] = [127, 0, 0, 1];
/// How long the certificate may take: rendez starting, the order, HTTP-01 on port 80.
const ORDER_WAIT: Duration = Duration::from_secs(30);
/// The whole test, namespaces and processes included.
const TEST_LIMIT: Duration = Duration::from_secs(90);

#[test]
fn one_command_deployment_on_its_real_ports() {
    let test = std::thread::spawn(|| {
        if let Err(why) = enter_new_network_namespace().and_then(|()| hide_under_tmpfs("/var/lib"))
        {
            if std::env::var("RENDEZ_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
                panic!("{why}, and RENDEZ_REQUIRE_CLIENTS=1");
            }
            eprintln!("skipped: {why}");
            return;
        }
        // Everything below runs on this thread or its children, which inherit both
        // namespaces: pebble, its DNS server, rendez and the clients.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(TEST_LIMIT, deployment())
                .await
                .expect("the test finishes in time")
        });
    });
    test.join().expect("the namespaced test");
}

async fn deployment() {
    let ports = ValidationPorts { http: 80, tls: 443 };
    let Some(pebble) = Pebble::start(ports, Options::default()).await else {
        return;
    };
    let directory = pebble.directory_url();
    let ca = pebble.https_root_path();
    let mut server = ServerProcess::spawn_args(
        "serve-domain",
        &["serve", "--domain", DOMAIN, "--email", "ops@rendez.test"],
        &[
            ("RENDEZ_ACME_DIRECTORY", &directory),
            ("RENDEZ_ACME_CA", ca.to_str().unwrap()),
        ],
    );
    let root = pebble.issuing_root().await;
    let https = SocketAddr::from((ADDRESS, 443));

    // The certificate: pebble's, for the domain, with its intermediate.
    let deadline = Instant::now() + ORDER_WAIT;
    let chain = loop {
        if let Ok(stream) = connect(https, &root, &[b"http/1.1"]).await {
            break stream.get_ref().1.peer_certificates().unwrap().to_vec();
        }
        if let Some(status) = server.try_wait() {
            panic!("rendez exited ({status}):\n{}", server.log());
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from pebble in time:\n{}\n{}",
            server.log(),
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(chain.len() >= 2, "the full chain: leaf and intermediate");
    assert_eq!(pebble.issued(), 1);

    // The page over HTTPS on 443.
    let mut page = connect(https, &root, &[b"http/1.1"]).await.unwrap();
    let response = http_get(&mut page, "/", DOMAIN).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("<html"), "{response}");

    // Plain HTTP on 80: to https, without a port.
    let mut plain = TcpStream::connect(SocketAddr::from((ADDRESS, 80)))
        .await
        .unwrap();
    let response = http_get(&mut plain, "/room?x=1", DOMAIN).await;
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    let location = format!("\r\nlocation: https://{DOMAIN}/room?x=1\r\n");
    assert!(
        response.to_ascii_lowercase().contains(&location),
        "{response}"
    );

    // A credential from the secret printed at start, minted as that line says.
    let secret = generated_secret(&server);
    let ice = credential_json(&secret);
    let urls: Vec<&str> = ice["urls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u.as_str())
        .collect();
    assert!(
        urls.contains(&"turns:meet.rendez.test:443?transport=tcp"),
        "{urls:?}"
    );
    assert!(
        urls.contains(&"turn:meet.rendez.test:3478?transport=udp"),
        "{urls:?}"
    );
    let (username, password) = (
        ice["username"].as_str().unwrap(),
        ice["credential"].as_str().unwrap(),
    );

    // TURN over TLS on 443 (ALPN `stun.turn`, as browsers offer none: both), and over UDP
    // on 3478, with that credential.
    for alpn in [&[&b"stun.turn"[..]][..], &[]] {
        let tls = connect(https, &root, alpn).await.unwrap();
        let mut client = TurnClient::in_realm(Conn::stream(tls), username, password, DOMAIN);
        let allocated = client.try_allocate().await;
        assert!(allocated.is_ok(), "TURN over TLS on 443: {allocated:?}");
    }
    let udp = Conn::udp(SocketAddr::from((ADDRESS, 3478))).await;
    let mut client = TurnClient::in_realm(udp, username, password, DOMAIN);
    let allocated = client.try_allocate().await;
    assert!(allocated.is_ok(), "TURN over UDP on 3478: {allocated:?}");

    assert!(
        server.try_wait().is_none(),
        "still serving:\n{}",
        server.log()
    );
}

/// A TLS connection for the domain to `addr`, trusting only pebble's issuing root.
async fn connect(
    addr: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    tls_connect(addr, DOMAIN, roots, alpn).await
}

async fn http_get<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    stream: &mut S,
    path: &str,
    host: &str,
) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(common::WAIT, stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The secret `rendez serve` printed at start (no credentials configured).
fn generated_secret(server: &ServerProcess) -> String {
    let log = server.log();
    let line = log
        .lines()
        .find(|line| line.contains("mint a credential: rendez credential"))
        .unwrap_or_else(|| panic!("no credential hint printed:\n{log}"));
    assert!(
        line.contains(&format!("--domain {DOMAIN}")),
        "the hint names the domain: {line}"
    );
    let secret = log
        .lines()
        .find_map(|line| line.trim().strip_prefix("secret: "))
        .unwrap_or_else(|| panic!("no secret printed:\n{log}"));
    secret.to_owned()
}

/// `rendez credential --secret S --domain DOMAIN --user alice --json`, bounded in time.
fn credential_json(secret: &str) -> serde_json::Value {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rendez"))
        .args(["credential", "--secret", secret, "--domain", DOMAIN])
        .args(["--user", "alice", "--json"])
        .env_remove("RENDEZ_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rendez credential starts");
    let deadline = Instant::now() + common::WAIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rendez credential did not finish within {:?}", common::WAIT);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "rendez credential failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON")
}
