//! A real ACME server on loopback for the `[acme]` tests: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS server answering every name with 127.0.0.1. Pebble's
//! validator connects to the fixed ports its config names, so each test gives it rendez's.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::connector_trusting;
use super::tools::require_tool;
use super::TempDir;

/// What pebble's validator connects to.
pub struct ValidationPorts {
    /// HTTP-01 (`httpPort`).
    pub http: u16,
    /// TLS-ALPN-01 (`tlsPort`).
    pub tls: u16,
}

impl ValidationPorts {
    /// TLS-ALPN-01 validated at `tls`; HTTP-01 at a free port nothing listens on.
    pub fn tls_alpn_at(tls: SocketAddr) -> Self {
        Self {
            http: free_tcp_port().port(),
            tls: tls.port(),
        }
    }

    /// HTTP-01 validated at `http`; TLS-ALPN-01 at a free port nothing listens on.
    pub fn http_at(http: SocketAddr) -> Self {
        Self {
            http: http.port(),
            tls: free_tcp_port().port(),
        }
    }
}

/// How pebble behaves.
#[derive(Default)]
pub struct Options {
    /// Lifetime of issued certificates; `None`: pebble's default, 5 years.
    pub validity: Option<Duration>,
    /// Reject 30% of nonces as `badNonce` (clients must retry).
    pub bad_nonces: bool,
    /// What the DNS answers for every name; `None`: 127.0.0.1.
    pub dns_answer: Option<&'static str>,
    /// Give an account's new order the authorizations it has validated before, always
    /// (pebble's default: half the time).
    pub reuse_authorizations: bool,
}

/// Pebble and its DNS server, killed when dropped.
pub struct Pebble {
    pebble: Child,
    dns: Child,
    pub dir: TempDir,
    directory: SocketAddr,
    management: SocketAddr,
    /// The self-signed certificate of pebble's own HTTPS (directory and management).
    https_cert: CertificateDer<'static>,
}

impl Pebble {
    /// Starts pebble validating on `ports`. `None` (with the reason printed) when pebble is
    /// not installed.
    pub async fn start(ports: ValidationPorts, options: Options) -> Option<Pebble> {
        // Pebble's own ports are picked free, but another test may take one first: retry
        // with new ones.
        for _ in 0..3 {
            match Self::try_start(&ports, &options).await? {
                Ok(pebble) => return Some(pebble),
                Err(log) => eprintln!("pebble did not start, retrying: {log}"),
            }
        }
        panic!("pebble does not start");
    }

    /// `None` without pebble; `Err` with pebble's log when it does not listen.
    async fn try_start(
        ports: &ValidationPorts,
        options: &Options,
    ) -> Option<Result<Pebble, String>> {
        let pebble_bin = require_tool("pebble")?;
        let dns_bin = require_tool("pebble-challtestsrv")?;
        let dir = TempDir::new("pebble");
        let https =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        std::fs::write(dir.0.join("cert.pem"), https.cert.pem()).unwrap();
        std::fs::write(dir.0.join("key.pem"), https.signing_key.serialize_pem()).unwrap();
        let (directory, management) = (free_tcp_port(), free_tcp_port());
        let dns_server = free_udp_port();
        let validity = options.validity.map_or(String::new(), |v| {
            format!(",\n\"certificateValidityPeriod\": {}", v.as_secs())
        });
        let config = format!(
            "{{\"pebble\": {{\n\"listenAddress\": \"{directory}\",\n\"managementListenAddress\": \"{management}\",\n\
             \"certificate\": \"{cert}\",\n\"privateKey\": \"{key}\",\n\"httpPort\": {http},\n\"tlsPort\": {tls},\n\
             \"ocspResponderURL\": \"\",\n\"externalAccountBindingRequired\": false{validity}\n}}}}\n",
            cert = dir.0.join("cert.pem").display(),
            key = dir.0.join("key.pem").display(),
            http = ports.http,
            tls = ports.tls,
        );
        std::fs::write(dir.0.join("pebble.json"), config).unwrap();
        let log = |name: &str| std::fs::File::create(dir.0.join(name)).unwrap();
        let dns = Command::new(dns_bin)
            .args(["-dns01", &dns_server.to_string(), "-defaultIPv6", ""])
            .args(["-defaultIPv4", options.dns_answer.unwrap_or("127.0.0.1")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &free_tcp_port().to_string()])
            .stdin(Stdio::null())
            .stdout(log("dns.log"))
            .stderr(log("dns.log"))
            .spawn()
            .expect("pebble-challtestsrv starts");
        let pebble = Command::new(pebble_bin)
            .arg("-config")
            .arg(dir.0.join("pebble.json"))
            .args(["-dnsserver", &dns_server.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env(
                "PEBBLE_AUTHZREUSE",
                if options.reuse_authorizations {
                    "100"
                } else {
                    "50"
                },
            )
            .env(
                "PEBBLE_WFE_NONCEREJECT",
                if options.bad_nonces { "30" } else { "0" },
            )
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.log"))
            .spawn()
            .expect("pebble starts");
        let mut pebble = Pebble {
            pebble,
            dns,
            dir,
            directory,
            management,
            https_cert: https.cert.der().clone(),
        };
        Some(match pebble.wait_until_listening().await {
            true => Ok(pebble),
            false => Err(pebble.log()),
        })
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.directory)
    }

    /// The PEM file of pebble's own HTTPS certificate: `[acme] ca`.
    pub fn https_root_path(&self) -> PathBuf {
        self.dir.0.join("cert.pem")
    }

    /// Certificates issued so far, from pebble's log.
    pub fn issued(&self) -> usize {
        std::fs::read_to_string(self.dir.0.join("pebble.log"))
            .unwrap_or_default()
            .matches("Issued certificate serial")
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("pebble.log")).unwrap_or_default()
    }

    /// The root of the chains pebble issues (from its management interface).
    pub async fn issuing_root(&self) -> CertificateDer<'static> {
        let pem = self.management_get("/roots/0").await;
        CertificateDer::from_pem_slice(pem.as_bytes()).expect("a PEM root")
    }

    async fn management_get(&self, path: &str) -> String {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.https_cert.clone()).unwrap();
        let stream = tls_connect(self.management, "127.0.0.1", roots, &[])
            .await
            .expect("pebble's management interface");
        let mut stream = stream;
        let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await;
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        body.to_owned()
    }

    /// Whether pebble listens within 20 s (false at once when it has exited).
    async fn wait_until_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.pebble.try_wait(), Ok(None)) {
                return false;
            }
            if TcpStream::connect(self.directory).await.is_ok()
                && TcpStream::connect(self.management).await.is_ok()
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.dns] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TLS client connection to `addr` for `name`, trusting `roots` only.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = connector_trusting(roots, alpn);
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake timed out")))
}

/// A TCP port on loopback free at this moment, and not handed out before by this process
/// (the kernel may give a port just released again).
pub fn free_tcp_port() -> SocketAddr {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..64 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
    panic!("no fresh free port on loopback");
}

fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
