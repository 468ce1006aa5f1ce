//! TLS for the end-to-end tests: a self-signed certificate for the server (renewable in
//! place, as a certificate renewal rewrites its files), and a client that trusts only it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{TempDir, WAIT};

/// A self-signed certificate and its key, written to a temporary directory.
pub struct TestCert {
    dir: TempDir,
    names: Vec<String>,
    pub cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    /// A certificate for 127.0.0.1 and localhost.
    pub fn new() -> Self {
        Self::for_names(&["127.0.0.1", "localhost"])
    }

    /// A certificate for `names` (DNS names or IP addresses).
    pub fn for_names(names: &[&str]) -> Self {
        let mut cert = Self {
            dir: TempDir::new("tls"),
            names: names.iter().map(|n| n.to_string()).collect(),
            cert_der: Vec::new().into(),
        };
        cert.renew();
        cert
    }

    /// A new key and certificate written over the same files, as a certificate renewal
    /// does; `cert_der` is the new one.
    pub fn renew(&mut self) {
        let certified = rcgen::generate_simple_self_signed(self.names.clone()).unwrap();
        std::fs::write(self.cert_path(), certified.cert.pem()).unwrap();
        std::fs::write(self.key_path(), certified.signing_key.serialize_pem()).unwrap();
        self.cert_der = certified.cert.der().clone();
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.0.join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.0.join("key.pem")
    }

    /// `tls-listen` (a top-level key) and the `[tls]` table.
    pub fn config(&self) -> String {
        tls_config(&self.cert_path(), &self.key_path())
    }

    /// A TLS connection that trusts only this certificate.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Option<&[u8]>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.try_connect(addr, alpn).await.expect("TLS handshake")
    }

    /// The handshake fails unless the server presents this certificate.
    pub async fn try_connect(
        &self,
        addr: SocketAddr,
        alpn: Option<&[u8]>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.handshake(tcp, alpn).await
    }

    /// The TLS handshake over a connection already open (after a PROXY header, say).
    pub async fn connect_over(
        &self,
        tcp: TcpStream,
        alpn: Option<&[u8]>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        self.handshake(tcp, alpn).await.expect("TLS handshake")
    }

    /// The TLS handshake over `tcp`, which may fail.
    pub async fn handshake(
        &self,
        tcp: TcpStream,
        alpn: Option<&[u8]>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.handshake_offering(tcp, alpn.as_slice()).await
    }

    /// The TLS handshake over `tcp`, offering the ALPN protocols `alpn` (in that order).
    pub async fn handshake_offering(
        &self,
        tcp: TcpStream,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        self.handshake_as(tcp, "127.0.0.1", alpn).await
    }

    /// A TLS connection to `addr` that checks the certificate against `name` (a DNS name
    /// or an IP address), as a client told ALTERNATE-DOMAIN does.
    pub async fn connect_as(
        &self,
        addr: SocketAddr,
        name: &str,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.handshake_as(tcp, name, &[]).await
    }

    /// The TLS handshake over `tcp`, checking the certificate against `name`.
    async fn handshake_as(
        &self,
        tcp: TcpStream,
        name: &str,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let connector = connector_trusting(roots, alpn);
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
    }
}

/// A TLS client that trusts `roots` only and offers the ALPN protocols `alpn` (in that
/// order).
pub fn connector_trusting(
    roots: rustls::RootCertStore,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// `tls-listen` on loopback and a `[tls]` table naming these files.
pub fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "tls-listen = [\"127.0.0.1:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// The certificate the server presented on `stream`.
pub fn peer_certificate(
    stream: &tokio_rustls::client::TlsStream<TcpStream>,
) -> rustls::pki_types::CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("a server certificate")[0]
        .clone()
}
