//! Long-term credential authentication (RFC 8489 §9.2) with stateless nonces.
//!
//! Two kinds of users are accepted at once: static users from the config (password or a
//! precomputed key), and TURN REST API users whose password is derived from a shared secret
//! (`EXPIRY:NAME`, password `base64(HMAC-SHA1(secret, username))`). Several secrets may be
//! configured so an operator can rotate them without cutting anyone off.
//!
//! Nonces carry their own expiry and an HMAC over (expiry, client address), so the server
//! keeps no state for a client that has not authenticated yet, and a nonce handed to one
//! client is useless from another address.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use ring::hmac;

use crate::stun::{constant_time_eq, long_term_key, IntegrityAlgorithm, Message};

/// Who sent an authenticated request and the key that protects the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub key: [u8; 16],
    pub algorithm: IntegrityAlgorithm,
}

/// Why a request was not authenticated; each maps to one error response and is counted
/// apart (so an operator can tell a wrong secret from a clock problem).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: integrity present but USERNAME, REALM or NONCE missing.
    BadRequest,
    /// 401 with a challenge: no MESSAGE-INTEGRITY (every client's first request).
    Challenge,
    /// 401: the REALM is not ours.
    WrongRealm,
    /// 401: neither a static user nor a REST name (`EXPIRY:NAME`).
    UnknownUser,
    /// 401: a REST name whose expiry has passed (or a clock skew between the minting
    /// backend and this server).
    Expired,
    /// 401: MESSAGE-INTEGRITY does not verify with the user's key (wrong password or
    /// secret).
    WrongKey,
    /// 438 with a fresh nonce.
    StaleNonce,
}

impl Rejection {
    pub const ALL: [Rejection; 7] = [
        Self::BadRequest,
        Self::Challenge,
        Self::WrongRealm,
        Self::UnknownUser,
        Self::Expired,
        Self::WrongKey,
        Self::StaleNonce,
    ];

    /// A label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Challenge => "challenge",
            Self::WrongRealm => "wrong_realm",
            Self::UnknownUser => "unknown_user",
            Self::Expired => "expired",
            Self::WrongKey => "wrong_key",
            Self::StaleNonce => "stale_nonce",
        }
    }
}

/// A static user's secret as configured.
#[derive(Clone, Debug)]
pub enum UserSecret {
    Password(String),
    /// MD5(username:realm:password), for operators who keep no clear-text password.
    Key([u8; 16]),
}

pub struct Authenticator {
    realm: String,
    users: HashMap<String, [u8; 16]>,
    secrets: Vec<hmac::Key>,
    nonce_key: hmac::Key,
    nonce_lifetime_secs: u64,
}

const NONCE_MAC_LEN: usize = 12;

impl Authenticator {
    pub fn new(
        realm: &str,
        users: &[(String, UserSecret)],
        secrets: &[String],
        nonce_key: &[u8; 32],
        nonce_lifetime_secs: u64,
    ) -> Self {
        let users = users
            .iter()
            .map(|(name, secret)| {
                let key = match secret {
                    UserSecret::Password(password) => long_term_key(name, realm, password),
                    UserSecret::Key(key) => *key,
                };
                (name.clone(), key)
            })
            .collect();
        let secrets = secrets
            .iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes()))
            .collect();
        Self {
            realm: realm.to_owned(),
            users,
            secrets,
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, nonce_key),
            nonce_lifetime_secs,
        }
    }

    /// Replaces realm, users and secrets (a reload); the nonce key stays, so nonces handed
    /// out before remain valid.
    pub fn set_credentials(
        &mut self,
        realm: &str,
        users: &[(String, UserSecret)],
        secrets: &[String],
    ) {
        let fresh = Self::new(realm, users, secrets, &[0; 32], self.nonce_lifetime_secs);
        self.realm = fresh.realm;
        self.users = fresh.users;
        self.secrets = fresh.secrets;
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// A nonce for `client`, valid until `unix_now + nonce lifetime`.
    pub fn nonce(&self, client: SocketAddr, unix_now: u64) -> String {
        let expiry = unix_now + self.nonce_lifetime_secs;
        let mac = self.nonce_mac(expiry, client);
        let mut raw = Vec::with_capacity(8 + NONCE_MAC_LEN);
        raw.extend_from_slice(&expiry.to_be_bytes());
        raw.extend_from_slice(&mac);
        crate::hex::encode(&raw)
    }

    /// Checks a request's credentials (RFC 8489 §9.2.4).
    pub fn authenticate(
        &self,
        message: &Message<'_>,
        client: SocketAddr,
        unix_now: u64,
    ) -> Result<Credentials, Rejection> {
        if !message.has_integrity() {
            return Err(Rejection::Challenge);
        }
        let (Some(username), Some(realm), Some(nonce)) =
            (message.username(), message.realm(), message.nonce())
        else {
            return Err(Rejection::BadRequest);
        };
        let Ok(username) = std::str::from_utf8(username) else {
            return Err(Rejection::BadRequest);
        };
        if realm != self.realm.as_bytes() {
            return Err(Rejection::WrongRealm);
        }
        if !self.nonce_is_valid(nonce, client, unix_now) {
            return Err(Rejection::StaleNonce);
        }
        for key in self.candidate_keys(username, unix_now)? {
            if let Some(algorithm) = message.verify_integrity(&key) {
                return Ok(Credentials {
                    username: username.to_owned(),
                    key,
                    algorithm,
                });
            }
        }
        Err(Rejection::WrongKey)
    }

    /// The keys `username` may hold: its static key, or one per REST secret while the
    /// name's expiry lies in the future.
    fn candidate_keys(&self, username: &str, unix_now: u64) -> Result<Vec<[u8; 16]>, Rejection> {
        if let Some(key) = self.users.get(username) {
            return Ok(vec![*key]);
        }
        match rest_expiry(username) {
            Some(expiry) if expiry > unix_now => Ok(self
                .secrets
                .iter()
                .map(|secret| {
                    let password = rest_password(secret, username);
                    long_term_key(username, &self.realm, &password)
                })
                .collect()),
            // Without secrets, REST names are unknown users, not expired ones.
            Some(_) if !self.secrets.is_empty() => Err(Rejection::Expired),
            _ => Err(Rejection::UnknownUser),
        }
    }

    fn nonce_is_valid(&self, nonce: &[u8], client: SocketAddr, unix_now: u64) -> bool {
        // Our nonces are short; anything long is not one of ours and not worth decoding.
        let Some(raw) = (nonce.len() <= 64)
            .then(|| crate::hex::decode(nonce))
            .flatten()
        else {
            return false;
        };
        let Ok(expiry_bytes) = <[u8; 8]>::try_from(&raw[..8.min(raw.len())]) else {
            return false;
        };
        let expiry = u64::from_be_bytes(expiry_bytes);
        let expected = self.nonce_mac(expiry, client);
        // The MAC guards against forged expiries; comparing it in constant time keeps a
        // forger from learning it byte by byte.
        raw.len() == 8 + NONCE_MAC_LEN
            && constant_time_eq(&raw[8..], &expected)
            && expiry > unix_now
    }

    fn nonce_mac(&self, expiry: u64, client: SocketAddr) -> [u8; NONCE_MAC_LEN] {
        let mut context = hmac::Context::with_key(&self.nonce_key);
        context.update(&expiry.to_be_bytes());
        match client.ip() {
            std::net::IpAddr::V4(ip) => context.update(&ip.octets()),
            std::net::IpAddr::V6(ip) => context.update(&ip.octets()),
        }
        context.update(&client.port().to_be_bytes());
        let tag = context.sign();
        let mut mac = [0u8; NONCE_MAC_LEN];
        mac.copy_from_slice(&tag.as_ref()[..NONCE_MAC_LEN]);
        mac
    }
}

/// The name quotas count a user by: NAME for a REST username `EXPIRY:NAME` (so minting
/// fresh credentials does not make a new user), else the whole username.
pub fn quota_name(username: &str) -> &str {
    match rest_expiry(username) {
        Some(_) => username.split_once(':').map_or(username, |(_, name)| name),
        None => username,
    }
}

/// The expiry of a TURN REST API username `EXPIRY` or `EXPIRY:NAME` (unix seconds).
pub fn rest_expiry(username: &str) -> Option<u64> {
    let stamp = username.split(':').next()?;
    if stamp.is_empty() || !stamp.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stamp.parse().ok()
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn rest_password(secret: &hmac::Key, username: &str) -> String {
    let tag = hmac::sign(secret, username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [5; 32];

    fn auth() -> Authenticator {
        Authenticator::new(
            "example.org",
            &[("alice".into(), UserSecret::Password("pw".into()))],
            &["old".into(), "new".into()],
            &KEY,
            3600,
        )
    }

    #[test]
    fn nonce_is_bound_to_client_and_expires() {
        let a = auth();
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let nonce = a.nonce(client, 1000);
        assert!(a.nonce_is_valid(nonce.as_bytes(), client, 1000));
        assert!(a.nonce_is_valid(nonce.as_bytes(), client, 4599));
        assert!(!a.nonce_is_valid(nonce.as_bytes(), client, 4600));
        assert!(!a.nonce_is_valid(nonce.as_bytes(), other, 1000));
        assert!(!a.nonce_is_valid(b"zz", client, 1000));
        assert!(!a.nonce_is_valid(b"", client, 1000));
        let mut forged = nonce.into_bytes();
        forged[15] = if forged[15] == b'f' { b'0' } else { b'f' };
        assert!(!a.nonce_is_valid(&forged, client, 1000));
    }

    #[test]
    fn quota_names_drop_the_rest_expiry() {
        assert_eq!(quota_name("1700000000:bob"), "bob");
        assert_eq!(quota_name("1700000000"), "1700000000");
        assert_eq!(quota_name("alice"), "alice");
        assert_eq!(quota_name("a:b"), "a:b");
    }

    #[test]
    fn rest_names_parse_expiry() {
        assert_eq!(rest_expiry("1700000000:bob"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("bob:1700000000"), None);
        assert_eq!(rest_expiry(":bob"), None);
        assert_eq!(rest_expiry("99999999999999999999999:x"), None);
    }

    #[test]
    fn every_configured_secret_yields_a_candidate_until_expiry() {
        let a = auth();
        assert_eq!(a.candidate_keys("2000:bob", 1999).unwrap().len(), 2);
        assert_eq!(a.candidate_keys("2000:bob", 2000), Err(Rejection::Expired));
        assert_eq!(a.candidate_keys("alice", 0).unwrap().len(), 1);
        assert_eq!(a.candidate_keys("mallory", 0), Err(Rejection::UnknownUser));
    }

    #[test]
    fn rest_password_matches_reference_hmac() {
        // Reference value from Python: base64(hmac.new(b"north", b"1700000000:bob", sha1)).
        let secret = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north");
        assert_eq!(
            rest_password(&secret, "1700000000:bob"),
            "7tNSWpJ3gOxGfEgOjt+kaWhBC20="
        );
    }
}
