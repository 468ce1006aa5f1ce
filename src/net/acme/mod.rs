//! Automatic certificates (`[acme]`): obtained from an ACME server (Let's Encrypt by
//! default) when none is cached, renewed in the background before expiry, and swapped into
//! the [`CertStore`] every TLS listener shares, so new handshakes get the new certificate
//! and open connections keep theirs.
//!
//! - `store`: `cache-dir`, the account and the certificate across restarts.
//! - `client`: one order with `instant-acme`, and the plain cause when it fails.
//! - `challenges`: the answers the listeners give the CA's validator: TLS-ALPN-01 through
//!   [`CertStore`]'s resolver for handshakes offering `acme-tls/1` (RFC 8737), HTTP-01
//!   through the plain-HTTP handler ([`crate::net::http::redirect_to_https`]).
//!
//! Until the first certificate arrives the listeners present a self-signed placeholder
//! for the domains: the CA has to reach them to validate, and TURN over TCP and UDP work
//! meanwhile. A failed order keeps whatever certificate is being served and is retried
//! with exponential backoff.

mod challenges;
mod client;
mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

pub(crate) use challenges::{Challenges, ALPN_ACME_TLS, HTTP_CHALLENGE_PATH};
use store::{CacheDir, Issued};

use super::tls::CertStore;
use crate::config::AcmeConfig;

/// The first retry after a failed order; each further one waits twice as long.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// The longest wait between retries.
const MAX_RETRY: Duration = Duration::from_secs(3600);
/// An order that failed only on refused nonces (`badNonce`, say a CA behind a load
/// balancer) is tried again after this, at most `NONCE_RETRIES` times in a row before the
/// backoff applies: nothing was wrong with the order.
const NONCE_RETRY: Duration = Duration::from_secs(1);
const NONCE_RETRIES: u32 = 5;
/// The most one order may take, all requests and polling included.
const ORDER_DEADLINE: Duration = Duration::from_secs(300);

/// The certificate manager, between start and its background task.
pub(crate) struct Acme {
    config: AcmeConfig,
    cache: CacheDir,
    certs: Arc<CertStore>,
    challenges: Arc<Challenges>,
    /// The cached certificate being served, if any.
    current: Option<(SystemTime, SystemTime)>,
}

impl Acme {
    /// Opens the cache and builds the certificate store the listeners share: the cached
    /// certificate when it still serves the domains, otherwise a placeholder.
    pub fn prepare(config: &AcmeConfig) -> anyhow::Result<Acme> {
        let cache = CacheDir::open(&config.cache_dir)?;
        let challenges = Arc::new(Challenges::default());
        let cached = cache
            .certificate()
            .filter(|c| c.serves(&config.domains, SystemTime::now()));
        let (initial, current) = match cached {
            Some(issued) => {
                log_certificate("using the cached certificate", &issued);
                let times = (issued.renew_at(config.renew_before), issued.not_after);
                (issued.certified, Some(times))
            }
            None => (placeholder(&config.domains)?, None),
        };
        let certs = CertStore::with_acme(initial, challenges.clone());
        Ok(Acme {
            config: config.clone(),
            cache,
            certs,
            challenges,
            current,
        })
    }

    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    pub fn challenges(&self) -> &Arc<Challenges> {
        &self.challenges
    }

    /// Orders a certificate now if none is cached, then renews before each expires, until
    /// stopped. Runs once the listeners are bound, since the CA validates through them.
    pub fn spawn(self, tracker: &TaskTracker, stopped: watch::Receiver<bool>) {
        tracker.spawn(self.run(stopped));
    }

    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut renew_at = self.current.map(|(renew_at, _)| renew_at);
        loop {
            if let Some(at) = renew_at {
                let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
            }
            let mut retry = FIRST_RETRY;
            let mut nonce_retries = 0;
            let issued = loop {
                // A shutdown does not wait for an order in flight.
                let ordered = tokio::select! {
                    ordered = tokio::time::timeout(ORDER_DEADLINE, self.order()) => ordered,
                    _ = stopped.changed() => return,
                };
                let error = match ordered {
                    Ok(Ok(issued)) => break issued,
                    Ok(Err(error)) => error,
                    Err(_) => anyhow::anyhow!("the order took longer than {ORDER_DEADLINE:?}"),
                };
                let soon = client::failed_on_nonces(&error) && nonce_retries < NONCE_RETRIES;
                let wait = if soon { NONCE_RETRY } else { retry };
                tracing::warn!(
                    domains = ?self.config.domains,
                    retry_in = ?wait,
                    "certificate order failed, the current certificate stays: {error:#}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stopped.changed() => return,
                }
                if soon {
                    nonce_retries += 1;
                } else {
                    retry = (retry * 2).min(MAX_RETRY);
                }
            };
            log_certificate("new certificate in use", &issued);
            renew_at = Some(issued.renew_at(self.config.renew_before));
            self.certs.replace(issued.certified);
        }
    }

    async fn order(&self) -> anyhow::Result<Issued> {
        client::order_certificate(&self.config, &self.cache, &self.challenges).await
    }
}

fn log_certificate(what: &str, issued: &Issued) {
    tracing::info!(
        domains = ?issued.domains,
        not_after = %humantime::format_rfc3339_seconds(issued.not_after),
        chain = issued.certified.cert.len(),
        "{what}"
    );
}

/// A self-signed certificate for `domains`, served until the CA's arrives.
fn placeholder(domains: &[String]) -> anyhow::Result<CertifiedKey> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(domains.to_vec())
        .context("a placeholder certificate for `acme.domains`")?
        .self_signed(&key)?;
    challenges::certified_key(
        vec![cert.der().clone()],
        PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}
