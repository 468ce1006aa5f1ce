//! One certificate order, from account to chain, with `instant-acme` (which retries
//! `badNonce` itself). A failed order's cause is taken from where the CA puts it: the
//! challenge object of the failed authorization.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AuthorizationStatus, BodyWrapper, ChallengeType, HttpClient, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::challenges::Challenges;
use super::store::{CacheDir, Issued};
use crate::config::{AcmeChallenge, AcmeConfig};

/// How long one order may take from the challenges being ready to the chain.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Places an order for `config.domains`, answers its challenges through `challenges`, and
/// returns the new certificate, saved in the cache.
pub(super) async fn order_certificate(
    config: &AcmeConfig,
    cache: &CacheDir,
    challenges: &Challenges,
) -> anyhow::Result<Issued> {
    let account = account(config, cache).await?;
    let identifiers: Vec<Identifier> = config
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("the CA refused a new order")?;
    let answered = answer_challenges(&mut order, config.challenge, challenges).await;
    let issued = match answered {
        Ok(()) => finish(&mut order).await,
        Err(error) => Err(error),
    };
    challenges.clear();
    let (chain, key) = issued?;
    let issued = Issued::from_pem(&chain, &key).context("the CA's certificate")?;
    cache.save_certificate(&chain, &key)?;
    Ok(issued)
}

/// The account in the cache, or a new one (kept there).
async fn account(config: &AcmeConfig, cache: &CacheDir) -> anyhow::Result<Account> {
    let builder = || match &config.ca {
        Some(ca) => https_trusting(ca)
            .map(Account::builder_with_http)
            .with_context(|| {
                format!(
                    "cannot use {} as a root (config key `acme.ca`)",
                    ca.display()
                )
            }),
        None => Account::builder().context("the HTTPS client for the ACME server"),
    };
    if let Some(credentials) = cache.account(&config.directory) {
        return builder()?
            .from_credentials(credentials)
            .await
            .with_context(|| format!("cannot reach the ACME server {}", config.directory));
    }
    let contact = config.email.as_ref().map(|e| format!("mailto:{e}"));
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory.clone(),
            None,
        )
        .await
        .with_context(|| {
            format!(
                "cannot create an account at the ACME server {} (config key `acme.directory`)",
                config.directory
            )
        })?;
    cache.save_account(&config.directory, credentials)?;
    tracing::info!(directory = %config.directory, "ACME account created");
    Ok(account)
}

/// An HTTPS client trusting Mozilla's roots and the PEM certificates in `ca` (a private
/// CA's root).
fn https_trusting(ca: &Path) -> anyhow::Result<Box<dyn HttpClient>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let extra = CertificateDer::pem_file_iter(ca)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    if extra.is_empty() {
        bail!("no PEM certificate in it");
    }
    for root in extra {
        roots.add(root)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, BodyWrapper<Bytes>>(connector);
    Ok(Box::new(client))
}

/// Sets up the answer to each pending authorization and tells the CA to validate it.
/// Authorizations that are already valid (reused by the CA) need nothing.
async fn answer_challenges(
    order: &mut Order,
    kind: AcmeChallenge,
    challenges: &Challenges,
) -> anyhow::Result<()> {
    let wanted = match kind {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.context("reading an authorization")?;
        match authorization.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => bail!("an authorization is {other:?}: the CA will not validate it"),
        }
        let Some(mut challenge) = authorization.challenge(wanted.clone()) else {
            bail!("the CA offers no {wanted:?} challenge (config key `acme.challenge`)");
        };
        let domain = challenge.identifier().to_string();
        let key_authorization = challenge.key_authorization();
        match kind {
            AcmeChallenge::TlsAlpn01 => {
                challenges.add_tls_alpn(&domain, key_authorization.digest().as_ref())?
            }
            AcmeChallenge::Http01 => {
                challenges.add_http(&challenge.token, key_authorization.as_str())
            }
        }
        challenge
            .set_ready()
            .await
            .context("starting a challenge")?;
    }
    Ok(())
}

/// RFC 8555 §6.5's `badNonce`: the CA refused a request's anti-replay nonce, which says
/// nothing about the order itself.
const BAD_NONCE: &str = "urn:ietf:params:acme:error:badNonce";

fn is_bad_nonce(problem: &instant_acme::Problem) -> bool {
    problem.r#type.as_deref() == Some(BAD_NONCE)
}

/// Whether an order failed only because the CA refused a nonce more often than instant-acme
/// retries a request (three tries): worth a new order soon rather than after the backoff.
pub(super) fn failed_on_nonces(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<instant_acme::Error>(),
            Some(instant_acme::Error::Api(problem)) if is_bad_nonce(problem)
        )
    })
}

/// Waits for validation, finalizes with a fresh key, and fetches the chain: (chain, key).
async fn finish(order: &mut Order) -> anyhow::Result<(String, String)> {
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(ORDER_TIMEOUT);
    // Only a pending order has validation to wait for: one whose authorizations the CA
    // reused is ready at once, and `poll_ready` would wait out its timeout on any status
    // but ready and invalid.
    let status = match order.state().status {
        OrderStatus::Pending => match order.poll_ready(&polling).await {
            Ok(status) => status,
            Err(instant_acme::Error::Api(problem)) if !is_bad_nonce(&problem) => {
                return Err(failed_validation(order, problem.to_string()).await)
            }
            Err(error) => return Err(anyhow::Error::new(error).context("waiting for validation")),
        },
        status => status,
    };
    match status {
        OrderStatus::Ready => {}
        // Finalized before, with a key made and lost by an earlier run: its certificate
        // is of no use, and a new order (at the next retry) gets one for a fresh key.
        OrderStatus::Processing | OrderStatus::Valid => {
            bail!("the CA returned an order already finalized ({status:?}), for a key rendez no longer has")
        }
        _ => return Err(failed_validation(order, format!("the order is {status:?}")).await),
    }
    let key = order.finalize().await.context("finalizing the order")?;
    let chain = order
        .poll_certificate(&polling)
        .await
        .context("fetching the certificate")?;
    Ok((chain, key))
}

/// The cause of a failed validation, from the challenge objects (where the CA writes what
/// it saw: DNS pointing elsewhere, a refused connection, ...).
async fn failed_validation(order: &mut Order, fallback: String) -> anyhow::Error {
    let mut causes = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authorization)) = authorizations.next().await {
        let domain = authorization.identifier().to_string();
        for challenge in &authorization.challenges {
            if let Some(problem) = &challenge.error {
                causes.push(format!("{domain}: {}", plain_cause(problem)));
            }
        }
    }
    match causes.is_empty() {
        true => anyhow::anyhow!("validation failed: {fallback}"),
        false => anyhow::anyhow!("validation failed: {}", causes.join("; ")),
    }
}

/// The CA's detail with a hint for the problems operators meet.
fn plain_cause(problem: &instant_acme::Problem) -> String {
    let detail = problem.detail.clone().unwrap_or_default();
    let kind = problem.r#type.as_deref().unwrap_or("");
    let kind = kind.rsplit(':').next().unwrap_or(kind);
    let hint = match kind {
        "dns" => "does the domain's DNS point at this server?",
        // CAs file a refused or timed-out connection under either.
        "connection" | "unauthorized" | "incorrectResponse" => {
            "does the domain's DNS point at this server, and is the port reachable from the internet?"
        }
        "rateLimited" => "the CA's rate limit: retried later",
        "tls" => "the TLS handshake with this server failed",
        _ => "",
    };
    match hint {
        "" => format!("{detail} ({kind})"),
        hint => format!("{detail} ({kind}: {hint})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(kind: &str, detail: &str) -> instant_acme::Problem {
        serde_json::from_value(serde_json::json!({"type": kind, "detail": detail})).unwrap()
    }

    #[test]
    fn causes_keep_the_cas_words_and_add_a_hint() {
        let refused = problem(
            "urn:ietf:params:acme:error:connection",
            "Connection refused",
        );
        assert_eq!(
            plain_cause(&refused),
            "Connection refused (connection: does the domain's DNS point at this server, and is the port reachable from the internet?)"
        );
        let limited = problem("urn:ietf:params:acme:error:rateLimited", "too many");
        assert!(plain_cause(&limited).contains("rate limit"));
        let other = problem("urn:ietf:params:acme:error:caa", "CAA forbids");
        assert_eq!(plain_cause(&other), "CAA forbids (caa)");
    }

    #[test]
    fn an_order_refused_for_its_nonces_is_told_apart() {
        let api = |kind: &str| {
            anyhow::Error::new(instant_acme::Error::Api(problem(kind, "no")))
                .context("finalizing the order")
        };
        assert!(failed_on_nonces(&api(BAD_NONCE)));
        assert!(!failed_on_nonces(&api("urn:ietf:params:acme:error:caa")));
        assert!(!failed_on_nonces(&anyhow::anyhow!(
            "validation failed: badNonce"
        )));
    }
}
