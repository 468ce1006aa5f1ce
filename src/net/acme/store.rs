//! `cache-dir`: the ACME account and the current certificate, kept across restarts so a
//! restart places no new order. Files are written whole to a temporary name and renamed,
//! so a crash leaves the old file or the new one, never half of one; keys are readable
//! by the owner only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use instant_acme::AccountCredentials;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::challenges::certified_key;

const ACCOUNT: &str = "account.json";
const CHAIN: &str = "fullchain.pem";
const KEY: &str = "privkey.pem";

/// A certificate (leaf and intermediates) with its key, as issued.
pub(crate) struct Issued {
    pub certified: CertifiedKey,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The DNS names the leaf is for.
    pub domains: Vec<String>,
}

impl Issued {
    /// Parses a PEM chain (leaf first) and PEM key.
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> anyhow::Result<Issued> {
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("the certificate chain is not PEM: {e}"))?;
        let leaf = chain.first().context("no certificate in the chain")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| anyhow::anyhow!("the certificate does not parse: {e}"))?;
        let validity = parsed.validity();
        let at = |t: x509_parser::time::ASN1Time| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0).unsigned_abs())
        };
        let domains = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::DNSName(dns) => {
                            Some(dns.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (not_before, not_after) = (at(validity.not_before), at(validity.not_after));
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| anyhow::anyhow!("the private key is not PEM: {e}"))?;
        Ok(Issued {
            certified: certified_key(chain, key)?,
            not_before,
            not_after,
            domains,
        })
    }

    /// Whether this certificate names every one of `domains` and has not expired.
    pub fn serves(&self, domains: &[String], now: SystemTime) -> bool {
        now < self.not_after
            && domains
                .iter()
                .all(|d| self.domains.contains(&d.to_ascii_lowercase()))
    }

    /// When to order the next certificate: `renew_before` ahead of notAfter, but never
    /// before half its lifetime has passed (so a `renew-before` longer than the CA's
    /// lifetime renews at half-life instead of in a loop).
    pub fn renew_at(&self, renew_before: Duration) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_after - renew_before.min(lifetime / 2)
    }
}

/// The cache directory.
#[derive(Clone, Debug)]
pub(crate) struct CacheDir {
    dir: PathBuf,
}

impl CacheDir {
    /// Creates the directory (owner only) if missing.
    pub fn open(dir: &Path) -> anyhow::Result<CacheDir> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {} (config key `acme.cache-dir`)",
                dir.display()
            )
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(
            || {
                format!(
                    "cannot restrict {} (config key `acme.cache-dir`)",
                    dir.display()
                )
            },
        )?;
        Ok(CacheDir { dir: dir.into() })
    }

    /// The account, when one was created before with the same directory URL.
    pub fn account(&self, directory: &str) -> Option<AccountCredentials> {
        let text = std::fs::read_to_string(self.dir.join(ACCOUNT)).ok()?;
        let stored: StoredAccount = serde_json::from_str(&text).ok()?;
        (stored.directory == directory).then_some(stored.credentials)
    }

    pub fn save_account(
        &self,
        directory: &str,
        credentials: AccountCredentials,
    ) -> anyhow::Result<()> {
        let stored = StoredAccount {
            directory: directory.into(),
            credentials,
        };
        self.write(ACCOUNT, serde_json::to_string(&stored)?.as_bytes())
    }

    /// The cached certificate; `None` when there is none or it does not parse (logged).
    pub fn certificate(&self) -> Option<Issued> {
        let chain = std::fs::read_to_string(self.dir.join(CHAIN)).ok()?;
        let key = std::fs::read_to_string(self.dir.join(KEY)).ok()?;
        match Issued::from_pem(&chain, &key) {
            Ok(issued) => Some(issued),
            Err(error) => {
                tracing::warn!(dir = %self.dir.display(), "ignoring the cached ACME certificate: {error:#}");
                None
            }
        }
    }

    /// Keeps a new certificate: the key first, so a crash between the two writes leaves a
    /// chain whose key does not fit, which [`CacheDir::certificate`] refuses.
    pub fn save_certificate(&self, chain_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        self.write(KEY, key_pem.as_bytes())?;
        self.write(CHAIN, chain_pem.as_bytes())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!(".{name}.new"));
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(bytes).and_then(|()| file.sync_all()))
            .and_then(|()| std::fs::rename(&temporary, &path));
        written.with_context(|| {
            format!(
                "cannot write {} (config key `acme.cache-dir`)",
                path.display()
            )
        })
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredAccount {
    /// The CA the account is at: a changed `directory` needs a new account.
    directory: String,
    credentials: AccountCredentials,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(lifetime: Duration) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["Meet.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = params.not_before + lifetime;
        let cert = params.self_signed(&key).unwrap();
        Issued::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    #[test]
    fn renewal_is_renew_before_ahead_but_never_before_half_life() {
        let day = Duration::from_secs(24 * 3600);
        let cert = issued(90 * day);
        assert_eq!(cert.renew_at(30 * day), cert.not_after - 30 * day);
        assert_eq!(cert.renew_at(365 * day), cert.not_after - 45 * day);
    }

    #[test]
    fn a_certificate_serves_the_domains_it_names_until_it_expires() {
        let cert = issued(Duration::from_secs(3600));
        let now = cert.not_before + Duration::from_secs(60);
        assert!(cert.serves(&["meet.example.com".into()], now));
        assert!(!cert.serves(
            &["meet.example.com".into(), "other.example.com".into()],
            now
        ));
        assert!(!cert.serves(&["meet.example.com".into()], cert.not_after));
    }
}
