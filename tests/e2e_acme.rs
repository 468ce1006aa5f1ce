//! `[acme]` against a real ACME server on loopback (pebble): certificates by TLS-ALPN-01 on
//! a shared port and by HTTP-01, served with their full chain to clients that trust only
//! pebble's root; a restart that reuses the cached certificate; renewal of short-lived
//! certificates swapped in under an open TURN-over-TLS allocation that keeps relaying.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::pebble::{free_tcp_port, tls_connect, Options, Pebble, ValidationPorts};
use common::process::ServerProcess;
use common::relay::{assert_relays, assert_relays_through, open_relay};
use common::{Conn, TempDir, TurnClient};
use rustls::pki_types::CertificateDer;
use tokio::net::{TcpStream, UdpSocket};

const DOMAIN: &str = "meet.example.com";
/// How long an order may take on loopback (pebble validates at once with VA_NOSLEEP).
const ORDER_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_on_a_shared_port_then_a_restart_reuses_the_cached_certificate() {
    let port = free_tcp_port();
    let ports = ValidationPorts::tls_alpn_at(port);
    let Some(pebble) = Pebble::start(ports, Options::default()).await else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let acme = acme_table(&pebble, &cache, "tls-alpn-01", "");
    let server = rendez::start(shared_config(port, &acme))
        .await
        .expect("starts");
    let root = pebble.issuing_root().await;
    let first = wait_for_issued(&pebble, port, &root).await;
    assert_eq!(pebble.issued(), 1);
    // TURN over TLS and the page both work with the certificate, on one port.
    assert_relays(Conn::stream(
        connect(port, &root, &[b"stun.turn"]).await.unwrap(),
    ))
    .await;
    assert_relays(Conn::stream(connect(port, &root, &[]).await.unwrap())).await;
    // `acme-tls/1` with no order open: no challenge certificate, no handshake.
    assert!(connect(port, &root, &[b"acme-tls/1"]).await.is_err());
    server.shutdown().await;

    let server = rendez::start(shared_config(port, &acme))
        .await
        .expect("restarts");
    let stream = connect(port, &root, &[b"stun.turn"])
        .await
        .expect("the cached certificate is served at once");
    assert_eq!(leaf(&stream), first, "the same certificate");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pebble.issued(), 1, "no new order after a restart");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_with_bad_nonces_retried() {
    let http = free_tcp_port();
    let ports = ValidationPorts::http_at(http);
    // Pebble rejects 30% of nonces: instant-acme must retry them.
    let Some(pebble) = Pebble::start(
        ports,
        Options {
            bad_nonces: true,
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let acme = acme_table(
        &pebble,
        &cache,
        "http-01",
        &format!("http-listen = \"{http}\"\n"),
    );
    let tls_port = free_tcp_port();
    let server = rendez::start(tls_port_config(tls_port, &acme))
        .await
        .expect("starts");
    let root = pebble.issuing_root().await;
    wait_for_issued(&pebble, tls_port, &root).await;
    // The plain-HTTP port redirects everything else to HTTPS.
    let mut plain = TcpStream::connect(http).await.unwrap();
    let response = http_get(&mut plain, "/room").await;
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    assert!(
        response.contains(&format!("https://{DOMAIN}/room")),
        "{response}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_and_swapped_under_an_open_allocation() {
    let port = free_tcp_port();
    let ports = ValidationPorts::tls_alpn_at(port);
    // Certificates that live 16 s: with renew-before far longer, renewal comes at
    // half-life, 8 s after each issue.
    let Some(pebble) = Pebble::start(
        ports,
        Options {
            validity: Some(Duration::from_secs(16)),
            ..Options::default()
        },
    )
    .await
    else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let acme = acme_table(&pebble, &cache, "tls-alpn-01", "");
    let server = rendez::start(shared_config(port, &acme))
        .await
        .expect("starts");
    let root = pebble.issuing_root().await;
    let first = wait_for_issued(&pebble, port, &root).await;

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let open = connect(port, &root, &[b"stun.turn"]).await.unwrap();
    let mut client = TurnClient::new(Conn::stream(open), "alice", "wonderland");
    let relayed = open_relay(&mut client, &peer).await;
    assert_relays_through(&mut client, &peer, relayed, b"before").await;

    let deadline = Instant::now() + ORDER_WAIT;
    let renewed = loop {
        assert!(Instant::now() < deadline, "no renewal:\n{}", pebble.log());
        if let Ok(stream) = connect(port, &root, &[b"stun.turn"]).await {
            if leaf(&stream) != first {
                break leaf(&stream);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(renewed, first);
    assert!(pebble.issued() >= 2);
    // The allocation made over the first certificate's connection still relays.
    assert_relays_through(&mut client, &peer, relayed, b"after").await;
    server.shutdown().await;
}

/// An order whose authorizations the CA reused (validated for the same account moments
/// before) comes back from pebble already `ready`: finalized and downloaded at once, with
/// no challenge answered and no polling. The second server's HTTP-01 listener is not where
/// pebble validates, so only the reused authorization can get it a certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_reused_authorizations_is_finalized_at_once() {
    let http = free_tcp_port();
    let ports = ValidationPorts::http_at(http);
    let options = Options {
        reuse_authorizations: true,
        ..Options::default()
    };
    let Some(pebble) = Pebble::start(ports, options).await else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let root = pebble.issuing_root().await;
    let tls_port = free_tcp_port();
    let start = |http_listen: SocketAddr| {
        let acme = acme_table(
            &pebble,
            &cache,
            "http-01",
            &format!("http-listen = \"{http_listen}\"\n"),
        );
        rendez::start(tls_port_config(tls_port, &acme))
    };
    let server = start(http).await.expect("starts");
    let first = wait_for_issued(&pebble, tls_port, &root).await;
    server.shutdown().await;

    // The same account (kept in the cache) orders again: no cached certificate.
    std::fs::remove_file(cache.0.join("acme/fullchain.pem")).unwrap();
    let ordered = Instant::now();
    let server = start(free_tcp_port()).await.expect("restarts");
    let second = wait_for_issued(&pebble, tls_port, &root).await;
    assert_ne!(second, first, "a new certificate");
    assert_eq!(pebble.issued(), 2);
    assert!(
        ordered.elapsed() < Duration::from_secs(10),
        "took {:?}",
        ordered.elapsed()
    );
    server.shutdown().await;
}

/// TLS-ALPN-01 on a dedicated `tls-listen` port (no page, no sharing): the validator's
/// handshake gets the challenge certificate there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_on_a_dedicated_tls_port() {
    let tls_port = free_tcp_port();
    let ports = ValidationPorts::tls_alpn_at(tls_port);
    let Some(pebble) = Pebble::start(ports, Options::default()).await else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let acme = acme_table(&pebble, &cache, "tls-alpn-01", "");
    let server = rendez::start(tls_port_config(tls_port, &acme))
        .await
        .expect("starts");
    let root = pebble.issuing_root().await;
    wait_for_issued(&pebble, tls_port, &root).await;
    assert_relays(Conn::stream(connect(tls_port, &root, &[]).await.unwrap())).await;
    server.shutdown().await;
}

/// The domain's DNS points elsewhere (127.0.0.9, where nothing listens): the order fails,
/// the log says why in plain words, the placeholder stays and TURN over TLS keeps working
/// for clients that accept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_logs_the_cause_and_keeps_serving() {
    let port = free_tcp_port();
    let ports = ValidationPorts::tls_alpn_at(port);
    let options = Options {
        dns_answer: Some("127.0.0.9"),
        ..Options::default()
    };
    let Some(pebble) = Pebble::start(ports, options).await else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let acme = acme_table(&pebble, &cache, "tls-alpn-01", "");
    let server = ServerProcess::spawn("acme-fails", &shared_config_text(port, &acme), &[]);
    let deadline = Instant::now() + ORDER_WAIT;
    let log = loop {
        let log = server.log();
        if log.contains("certificate order failed") {
            break log;
        }
        assert!(Instant::now() < deadline, "no failure logged:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(log.contains("validation failed"), "{log}");
    assert!(log.contains("127.0.0.9"), "the address the CA tried: {log}");
    assert!(
        log.contains("does the domain's DNS point at this server"),
        "a plain hint: {log}"
    );
    assert!(log.contains("the current certificate stays"), "{log}");
    // Still served: TURN over TCP on the same port.
    assert_relays(Conn::stream(TcpStream::connect(port).await.unwrap())).await;
    assert_eq!(pebble.issued(), 0);
}

/// `rendez serve --domain` (here `RENDEZ_DOMAIN`) names the certificate's domain; the file
/// points `[acme]` at pebble, as Let's Encrypt is the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_domain_flag_names_the_certificate() {
    let (port, http) = (free_tcp_port(), free_tcp_port());
    let ports = ValidationPorts {
        http: http.port(),
        tls: port.port(),
    };
    let Some(pebble) = Pebble::start(ports, Options::default()).await else {
        return;
    };
    let cache = TempDir::new("acme-cache");
    let acme = acme_table(
        &pebble,
        &cache,
        "http-01",
        &format!("http-listen = \"{http}\"\n"),
    )
    .replace(DOMAIN, "replaced-by-the-flag.example.com");
    let config = format!(
        "realm = \"rendez.test\"\nrelay-ip = \"127.0.0.1\"\nrelay-ports = \"11000-11999\"\n\
         listen = [\"{port}\"]\ntls-listen = [\"{port}\"]\n\
         [auth]\nsecrets = [\"s\"]\n[signal]\nlisten = \"{port}\"\n{acme}"
    );
    let server = ServerProcess::spawn(
        "acme-domain-flag",
        &config,
        &[
            ("RENDEZ_DOMAIN", DOMAIN),
            ("RENDEZ_EMAIL", "ops@example.com"),
        ],
    );
    let root = pebble.issuing_root().await;
    wait_for_issued(&pebble, port, &root).await;
    // Plain HTTP on the shared port goes to HTTPS on it too.
    let mut plain = TcpStream::connect(port).await.unwrap();
    let response = http_get(&mut plain, "/").await;
    assert!(
        response.starts_with("HTTP/1.1 308"),
        "{response}\n{}",
        server.log()
    );
}

// ---------------------------------------------------------------- helpers

fn acme_table(pebble: &Pebble, cache: &TempDir, challenge: &str, extra: &str) -> String {
    format!(
        "[acme]\ndomains = [\"{DOMAIN}\"]\nemail = \"ops@example.com\"\ndirectory = \"{}\"\n\
         challenge = \"{challenge}\"\ncache-dir = \"{}\"\nca = \"{}\"\n{extra}",
        pebble.directory_url(),
        cache.0.join("acme").display(),
        pebble.https_root_path().display(),
    )
}

/// TURN over TLS on `tls_port` alone (no page there), with `acme`.
fn tls_port_config(tls_port: SocketAddr, acme: &str) -> rendez::Config {
    let listen = free_tcp_port();
    common::test_config(&format!(
        "tls-listen = [\"{tls_port}\"]\nlisten = [\"{listen}\"]\nrelay-ip = \"127.0.0.1\"\n\
         workers = 1\n[peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n{acme}"
    ))
}

/// `port` shared by TURN over TCP and TLS and the page, with `acme`.
fn shared_config(port: SocketAddr, acme: &str) -> rendez::Config {
    rendez::Config::from_toml(&shared_config_text(port, acme)).expect("test config parses")
}

/// The text of [`shared_config`], for a server process of its own.
fn shared_config_text(port: SocketAddr, acme: &str) -> String {
    format!(
        "realm = \"rendez.test\"\nrelay-ports = \"11000-11999\"\nrelay-ip = \"127.0.0.1\"\nworkers = 1\n\
         listen = [\"{port}\"]\ntls-listen = [\"{port}\"]\n\
         [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
         [auth]\nsecrets = [\"s\"]\n[[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
         [signal]\nlisten = \"{port}\"\n{acme}\n",
    )
}

/// A TLS connection for the domain that trusts only pebble's issuing root.
async fn connect(
    port: SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    tls_connect(port, DOMAIN, roots, alpn).await
}

/// Waits until `port` presents a certificate from pebble, with its intermediate; the leaf.
async fn wait_for_issued(
    pebble: &Pebble,
    port: SocketAddr,
    root: &CertificateDer<'static>,
) -> CertificateDer<'static> {
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let deadline = Instant::now() + ORDER_WAIT;
    loop {
        if let Ok(stream) = connect(port, root, &[b"stun.turn"]).await {
            let chain = stream.get_ref().1.peer_certificates().unwrap();
            assert!(chain.len() >= 2, "the full chain: leaf and intermediate");
            return leaf(&stream);
        }
        assert!(
            Instant::now() < deadline,
            "no certificate from pebble in time:\n{}",
            pebble.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn leaf(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

async fn http_get(stream: &mut TcpStream, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}:80\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    let _ = tokio::time::timeout(common::WAIT, stream.read_to_string(&mut response)).await;
    response
}
