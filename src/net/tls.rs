//! TURN over TLS (`turns:`): the rustls server configuration.

use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// ALPN protocol id for TURN (RFC 7443).
const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// ALPN protocol id of HTTP/1.1, the only HTTP the page server speaks.
const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The TURN-over-TLS acceptor: clients that offer ALPN must offer "stun.turn"; clients that
/// offer none (browsers' TURN stacks) are accepted as well.
pub(crate) fn turn_acceptor(tls: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    acceptor(tls, ALPN_STUN_TURN)
}

/// The HTTPS acceptor for the page and signaling: browsers offer "h2" and "http/1.1".
pub(crate) fn http_acceptor(tls: &TlsConfig) -> anyhow::Result<TlsAcceptor> {
    acceptor(tls, ALPN_HTTP_1_1)
}

/// Loads the certificate chain and key named in `[tls]`; errors name the file and key.
fn acceptor(tls: &TlsConfig, alpn: &[u8]) -> anyhow::Result<TlsAcceptor> {
    let cert_path = tls.cert.display().to_string();
    let key_path = tls.key.display().to_string();
    std::fs::metadata(&tls.cert).with_context(|| {
        format!("cannot read TLS certificate {cert_path} (config key `tls.cert`)")
    })?;
    std::fs::metadata(&tls.key)
        .with_context(|| format!("cannot read TLS key {key_path} (config key `tls.key`)"))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!("cannot parse TLS certificate {cert_path} (config key `tls.cert`)")
        })?;
    if certs.is_empty() {
        anyhow::bail!("no PEM certificate in {cert_path} (config key `tls.cert`)");
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| {
            format!("cannot parse TLS private key {key_path} (config key `tls.key`): expected a PEM private key")
        })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!("the key in {key_path} does not fit the certificate in {cert_path}")
        })?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
