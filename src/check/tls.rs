//! The TLS client for `turns:`: the roots a browser trusts (Mozilla's list) plus any the
//! operator names with `--ca`, and ALPN "stun.turn" (RFC 7443).

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::TlsConnector;

/// ALPN protocol id for TURN (RFC 7443).
const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// A connector that trusts Mozilla's roots and the certificates in `extra_roots` (PEM).
pub fn connector(extra_roots: Option<&Path>) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_roots {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!("cannot read CA certificates from {} (--ca)", path.display())
            })?;
        if certs.is_empty() {
            anyhow::bail!("no PEM certificate in {} (--ca)", path.display());
        }
        for cert in certs {
            roots.add(cert).with_context(|| {
                format!(
                    "a certificate in {} (--ca) is not usable as a root",
                    path.display()
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_STUN_TURN.to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the server's certificate must carry: the URL's host, a DNS name or an IP.
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_owned())
        .with_context(|| format!("`{host}` is neither a DNS name nor an IP address"))
}
