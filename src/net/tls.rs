//! TLS for `turns:` and the HTTPS page: the rustls server configurations, and the
//! certificate store they share, which a reload swaps without touching open connections.

use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use super::acme::{Challenges, ALPN_ACME_TLS};
use crate::config::TlsConfig;

/// ALPN protocol id for TURN (RFC 7443).
pub(crate) const ALPN_STUN_TURN: &[u8] = b"stun.turn";

/// ALPN protocol id of HTTP/1.1, the only HTTP the page server speaks.
pub(crate) const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// The certificate every TLS listener presents. Handshakes read it; a reload replaces it,
/// and only handshakes after that see the new one: established connections keep theirs.
#[derive(Debug)]
pub(crate) struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    /// With `[acme]`: TLS-ALPN-01 challenge certificates, for handshakes offering
    /// `acme-tls/1`.
    acme: Option<Arc<Challenges>>,
}

impl CertStore {
    /// Loads the certificate and key named in `[tls]`.
    pub fn load(tls: &TlsConfig) -> anyhow::Result<Arc<CertStore>> {
        Ok(Arc::new(CertStore {
            current: RwLock::new(Arc::new(load_certified_key(tls)?)),
            acme: None,
        }))
    }

    /// A store whose certificate an ACME client keeps, answering TLS-ALPN-01 validation
    /// with `challenges`.
    pub fn with_acme(initial: CertifiedKey, challenges: Arc<Challenges>) -> Arc<CertStore> {
        Arc::new(CertStore {
            current: RwLock::new(Arc::new(initial)),
            acme: Some(challenges),
        })
    }

    /// Whether handshakes offering `acme-tls/1` are answered (with `[acme]`).
    pub fn answers_acme(&self) -> bool {
        self.acme.is_some()
    }

    /// Serves `fresh` (from [`load_certified_key`]) from the next handshake on.
    pub fn replace(&self, fresh: CertifiedKey) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(challenges) = &self.acme {
            // RFC 8737 §3: the validator offers `acme-tls/1` alone, with the domain as SNI.
            let validating = client_hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|p| p == ALPN_ACME_TLS));
            if validating {
                return client_hello
                    .server_name()
                    .and_then(|domain| challenges.tls_alpn_certificate(domain));
            }
        }
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// The TURN-over-TLS acceptor: clients that offer ALPN must offer "stun.turn"; clients that
/// offer none (browsers' TURN stacks) are accepted as well.
pub(crate) fn turn_acceptor(certs: &Arc<CertStore>) -> anyhow::Result<TlsAcceptor> {
    acceptor(certs, ALPN_STUN_TURN)
}

/// The HTTPS acceptor for the page and signaling: browsers offer "h2" and "http/1.1".
pub(crate) fn http_acceptor(certs: &Arc<CertStore>) -> anyhow::Result<TlsAcceptor> {
    acceptor(certs, ALPN_HTTP_1_1)
}

fn acceptor(certs: &Arc<CertStore>, alpn: &[u8]) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(server_config(certs, Some(alpn))?))
}

/// A server configuration presenting `certs`, which negotiates `alpn` (and `acme-tls/1`
/// with `[acme]`, for the CA's validator) or, with `None`, no ALPN at all (a client that
/// offers protocols and gets none still completes the handshake).
pub(crate) fn server_config(
    certs: &Arc<CertStore>,
    alpn: Option<&[u8]>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut protocols: Vec<&[u8]> = alpn.into_iter().collect();
    if alpn.is_some() && certs.answers_acme() {
        protocols.push(ALPN_ACME_TLS);
    }
    exact_server_config(certs, &protocols)
}

/// A server configuration presenting `certs` that negotiates exactly `protocols` (none
/// when empty).
pub(crate) fn exact_server_config(
    certs: &Arc<CertStore>,
    protocols: &[&[u8]],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(certs.clone());
    config.alpn_protocols = protocols.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(config))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Whether a finished handshake was the CA's TLS-ALPN-01 validation, which ends there: the
/// validator sends nothing after the handshake, and nothing is sent to it.
pub(crate) fn is_acme_validation(connection: &rustls::ServerConnection) -> bool {
    connection.alpn_protocol() == Some(ALPN_ACME_TLS)
}

/// Reads the certificate chain and key named in `[tls]`; errors name the file and key.
pub(crate) fn load_certified_key(tls: &TlsConfig) -> anyhow::Result<CertifiedKey> {
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
    let certified = CertifiedKey::from_der(certs, key, &provider()).with_context(|| {
        format!("the key in {key_path} does not fit the certificate in {cert_path}")
    })?;
    Ok(certified)
}
