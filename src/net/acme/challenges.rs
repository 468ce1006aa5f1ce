//! The answers a server gives the CA's validator while an order is open: HTTP-01 key
//! authorizations by token, and TLS-ALPN-01 certificates by domain (RFC 8737).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// ALPN protocol id of TLS-ALPN-01 validation (RFC 8737 §6.2).
pub(crate) const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// The path prefix HTTP-01 validation requests (RFC 8555 §8.3).
pub(crate) const HTTP_CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";

/// Challenge answers, shared by the ACME client (which adds and removes them) and the
/// listeners (which answer with them). Both maps hold one entry per open authorization.
#[derive(Debug, Default)]
pub(crate) struct Challenges {
    http: Mutex<HashMap<String, String>>,
    tls_alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl Challenges {
    /// The key authorization to answer `GET /.well-known/acme-challenge/{token}` with.
    pub fn http_answer(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    /// The certificate to present to a handshake offering `acme-tls/1` for `domain`.
    pub fn tls_alpn_certificate(&self, domain: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.tls_alpn)
            .get(&domain.to_ascii_lowercase())
            .cloned()
    }

    pub(super) fn add_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Builds and keeps the self-signed certificate for `domain` carrying the acmeIdentifier
    /// extension with the SHA-256 digest of the key authorization.
    pub(super) fn add_tls_alpn(&self, domain: &str, digest: &[u8]) -> anyhow::Result<()> {
        let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
            .context("a TLS-ALPN-01 certificate for the domain")?;
        params
            .custom_extensions
            .push(rcgen::CustomExtension::new_acme_identifier(digest));
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // Not `certified_key`: its check that key and certificate fit parses the certificate
        // with webpki, which refuses the critical acmeIdentifier extension.
        let signing_key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(PrivatePkcs8KeyDer::from(key.serialize_der()).into())?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing_key);
        lock(&self.tls_alpn).insert(domain.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    /// Forgets every answer: the order they were for is over.
    pub(super) fn clear(&self) {
        lock(&self.http).clear();
        lock(&self.tls_alpn).clear();
    }
}

pub(super) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<CertifiedKey> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider).context("the key does not fit the certificate")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
