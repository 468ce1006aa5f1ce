//! TLS for the end-to-end tests: a self-signed certificate for the server, and a client.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;

use super::WAIT;

/// A self-signed certificate for 127.0.0.1, written to a temporary directory.
pub struct TestCert {
    dir: std::path::PathBuf,
    cert_der: rustls::pki_types::CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "rendez-tls-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
        Self {
            dir,
            cert_der: certified.cert.der().clone(),
        }
    }

    pub fn config(&self) -> String {
        format!(
            "tls-listen = [\"127.0.0.1:0\"]\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            self.dir.join("cert.pem").display(),
            self.dir.join("key.pem").display()
        )
    }

    pub async fn connect(
        &self,
        addr: SocketAddr,
        alpn: Option<&[u8]>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        self.connect_over(tcp, alpn).await
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
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.map(|a| vec![a.to_vec()]).unwrap_or_default();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .expect("TLS handshake timed out")
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
