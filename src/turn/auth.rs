//! Long-term credential authentication (RFC 8489 §9.2) with stateless nonces.
//!
//! **Users.** Two kinds are accepted at once: static users from the config (password or a
//! precomputed MD5 key), and TURN REST API users whose password is derived from a shared
//! secret (`EXPIRY:NAME`, password `base64(HMAC-SHA1(secret, username))`). Several secrets
//! may be configured so an operator can rotate them without cutting anyone off.
//!
//! **Nonces** carry the nonce cookie and their own expiry, signed with the client's address
//! ([`super::nonce`]): no state is kept for a client that has not authenticated yet.
//!
//! **Password algorithms.** Every challenge offers SHA-256 and MD5 in PASSWORD-ALGORITHMS
//! and says so in the nonce cookie. An RFC 8489 client names its choice in
//! PASSWORD-ALGORITHM and echoes the list; a request that names an algorithm but does not
//! echo the list exactly as offered has been tampered with on the way (a bid-down from
//! SHA-256 to MD5) or comes from a broken client, and is refused with 400. A request with
//! neither attribute comes from a client that predates RFC 8489 (every browser today) and
//! uses MD5. Which integrity attribute protects a request (MESSAGE-INTEGRITY or
//! MESSAGE-INTEGRITY-SHA256) is a separate choice; the response carries the same one.
//! A user configured by a precomputed MD5 `key` has no SHA-256 key, so its SHA-256
//! requests are refused (401, counted as `sha256_unavailable`).
//!
//! **USERHASH.** Static users are also found by SHA-256(name ":" realm), computed when the
//! configuration is loaded. REST users cannot be: the server knows no REST name until a
//! request brings it, and a hash cannot be turned back into a name, so a USERHASH that
//! names no static user is an unknown user. A REST credential keeps its user private by
//! having an opaque NAME part (a random or keyed token rather than a person's name).
//!
//! **Uniform work.** A name nobody holds is checked against a decoy key with the same HMAC
//! a wrong password costs, so the response time does not tell which names exist.

use std::collections::HashMap;
use std::net::SocketAddr;

use base64::Engine;
use ring::hmac;

use super::nonce::{Nonces, SecurityFeatures};
use crate::stun::{userhash, IntegrityAlgorithm, LongTermKey, Message, PasswordAlgorithm};

/// The password algorithms every challenge offers, the preferred one first.
pub const OFFERED_PASSWORD_ALGORITHMS: [PasswordAlgorithm; 2] =
    [PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5];

/// Who sent an authenticated request and the key that protects the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub key: LongTermKey,
    /// The integrity attribute the request carried, and so its responses carry.
    pub algorithm: IntegrityAlgorithm,
}

/// Why a request was not authenticated; each maps to one error response and is counted
/// apart (so an operator can tell a wrong secret from a clock problem).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// 400: integrity present but USERNAME (or USERHASH), REALM or NONCE missing.
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
    /// 401: a REST name whose expiry lies further ahead than the server accepts
    /// (`[auth] max-credential-ttl`): a credential minted to last for ever.
    TooFarAhead,
    /// 401: MESSAGE-INTEGRITY does not verify with the user's key (wrong password or
    /// secret).
    WrongKey,
    /// 438 with a fresh nonce.
    StaleNonce,
    /// 400: PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS as offered, or naming an
    /// algorithm not offered (RFC 8489 §9.2.4): a bid-down on the way, or a broken client.
    Downgrade,
    /// 401: PASSWORD-ALGORITHM SHA-256 for a static user configured by an MD5 `key`, which
    /// cannot check it (give the user a `password` instead).
    Sha256Unavailable,
}

impl Rejection {
    pub const ALL: [Rejection; 10] = [
        Self::BadRequest,
        Self::Challenge,
        Self::WrongRealm,
        Self::UnknownUser,
        Self::Expired,
        Self::TooFarAhead,
        Self::WrongKey,
        Self::StaleNonce,
        Self::Downgrade,
        Self::Sha256Unavailable,
    ];

    /// A label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Challenge => "challenge",
            Self::WrongRealm => "wrong_realm",
            Self::UnknownUser => "unknown_user",
            Self::Expired => "expired",
            Self::TooFarAhead => "too_far_ahead",
            Self::WrongKey => "wrong_key",
            Self::StaleNonce => "stale_nonce",
            Self::Downgrade => "downgrade",
            Self::Sha256Unavailable => "sha256_unavailable",
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
    directory: Directory,
    nonces: Nonces,
    /// Checked for names nobody holds, so that they cost what a wrong password does (made
    /// in advance, like real users' keys). Their verdict is fixed, so they need not be secret.
    decoy_md5: LongTermKey,
    decoy_sha256: LongTermKey,
    /// The PASSWORD-ALGORITHMS value every challenge carries, for comparing echoes.
    offer: Vec<u8>,
    /// The furthest a REST name's expiry may lie ahead of now, in seconds.
    max_rest_lifetime: u64,
    /// Integrity checks made, so unit tests can see that every path does the same work.
    #[cfg(test)]
    integrity_checks: std::cell::Cell<u32>,
}

impl Authenticator {
    pub fn new(
        realm: &str,
        users: &[(String, UserSecret)],
        secrets: &[String],
        nonce_key: &[u8; 32],
        nonce_lifetime_secs: u64,
    ) -> Self {
        Self {
            directory: Directory::new(realm, users, secrets),
            nonces: Nonces::new(nonce_key, nonce_lifetime_secs),
            decoy_md5: LongTermKey::derive(PasswordAlgorithm::Md5, "", "", ""),
            decoy_sha256: LongTermKey::derive(PasswordAlgorithm::Sha256, "", "", ""),
            offer: PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS),
            max_rest_lifetime: u64::MAX,
            #[cfg(test)]
            integrity_checks: std::cell::Cell::new(0),
        }
    }

    /// Replaces realm, users and secrets (a reload); the nonce key stays (unless
    /// [`Authenticator::set_nonce_key`] changes it), so nonces handed out before remain
    /// valid.
    pub fn set_credentials(
        &mut self,
        realm: &str,
        users: &[(String, UserSecret)],
        secrets: &[String],
    ) {
        self.directory = Directory::new(realm, users, secrets);
    }

    /// Signs and checks nonces with `key` from now on (a reload with a new
    /// `nonce-secret`); nonces handed out before get 438 and a fresh one.
    pub fn set_nonce_key(&mut self, key: &[u8; 32]) {
        self.nonces.set_key(key);
    }

    /// REST names whose expiry lies more than this ahead of now are refused.
    pub fn set_max_rest_lifetime(&mut self, secs: u64) {
        self.max_rest_lifetime = secs;
    }

    pub fn realm(&self) -> &str {
        &self.directory.realm
    }

    /// A nonce for `client`, valid until `unix_now + nonce lifetime`, whose cookie announces
    /// PASSWORD-ALGORITHMS, and USERHASH when there are static users it could name.
    pub fn nonce(&self, client: SocketAddr, unix_now: u64) -> String {
        let mut features = SecurityFeatures::PASSWORD_ALGORITHMS;
        if !self.directory.users.is_empty() {
            features = features.with(SecurityFeatures::USERNAME_ANONYMITY);
        }
        self.nonces.issue(features, client, unix_now)
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
        let (Some(identity), Some(realm), Some(nonce)) =
            (Identity::of(message), message.realm(), message.nonce())
        else {
            return Err(Rejection::BadRequest);
        };
        if realm != self.directory.realm.as_bytes() {
            return Err(Rejection::WrongRealm);
        }
        let features = self
            .nonces
            .check(nonce, client, unix_now)
            .ok_or(Rejection::StaleNonce)?;
        let password_algorithm = self.password_algorithm(message, features)?;
        match self.claim(identity, password_algorithm, unix_now)? {
            Claim::User { name, keys } => keys
                .into_iter()
                .find_map(|key| {
                    let algorithm = self.verify(message, &key)?;
                    Some(Credentials {
                        username: name.to_owned(),
                        key,
                        algorithm,
                    })
                })
                .ok_or(Rejection::WrongKey),
            Claim::Refused { decoy, refusal } => {
                // The HMAC a wrong password costs; black_box keeps it from being optimised
                // away, as its result does not matter.
                std::hint::black_box(self.verify(message, &decoy));
                Err(refusal)
            }
        }
    }

    /// The algorithm the request's key is derived with (RFC 8489 §9.2.4). With the
    /// "Password algorithms" feature in the nonce, a request names its choice and echoes
    /// what was offered, or does neither (a client before RFC 8489: MD5).
    fn password_algorithm(
        &self,
        message: &Message<'_>,
        features: SecurityFeatures,
    ) -> Result<PasswordAlgorithm, Rejection> {
        if !features.contains(SecurityFeatures::PASSWORD_ALGORITHMS) {
            // Nothing was offered, so there is nothing to choose from.
            return Ok(PasswordAlgorithm::Md5);
        }
        match (message.password_algorithm(), message.password_algorithms()) {
            (None, None) => Ok(PasswordAlgorithm::Md5),
            (Some(Ok(chosen)), Some(echoed))
                if echoed == self.offer && OFFERED_PASSWORD_ALGORITHMS.contains(&chosen) =>
            {
                Ok(chosen)
            }
            _ => Err(Rejection::Downgrade),
        }
    }

    /// Whom the request names and the keys it may hold.
    fn claim<'a>(
        &'a self,
        identity: Identity<'a>,
        algorithm: PasswordAlgorithm,
        unix_now: u64,
    ) -> Result<Claim<'a>, Rejection> {
        let directory = &self.directory;
        let name = match identity {
            Identity::Name(name) => Some(name),
            Identity::Hash(hash) => directory.userhashes.get(hash).map(String::as_str),
        };
        if let Some((name, keys)) = name.and_then(|name| directory.users.get_key_value(name)) {
            return Ok(match keys.get(algorithm) {
                Some(key) => Claim::User {
                    name,
                    keys: vec![key],
                },
                None => Claim::Refused {
                    decoy: self.decoy(algorithm),
                    refusal: Rejection::Sha256Unavailable,
                },
            });
        }
        // Without secrets there are no REST users, only names nobody holds.
        let rest = name
            .filter(|_| !directory.secrets.is_empty())
            .and_then(|name| Some((name, rest_expiry(name)?)));
        match rest {
            Some((_, expiry)) if expiry <= unix_now => Err(Rejection::Expired),
            Some((_, expiry)) if expiry - unix_now > self.max_rest_lifetime => {
                Err(Rejection::TooFarAhead)
            }
            Some((name, _)) => Ok(Claim::User {
                name,
                keys: directory.rest_keys(name, algorithm),
            }),
            None => Ok(Claim::Refused {
                decoy: self.decoy(algorithm),
                refusal: Rejection::UnknownUser,
            }),
        }
    }

    fn decoy(&self, algorithm: PasswordAlgorithm) -> LongTermKey {
        match algorithm {
            PasswordAlgorithm::Md5 => self.decoy_md5,
            PasswordAlgorithm::Sha256 => self.decoy_sha256,
        }
    }

    /// The one integrity check every path goes through.
    fn verify(&self, message: &Message<'_>, key: &LongTermKey) -> Option<IntegrityAlgorithm> {
        #[cfg(test)]
        self.integrity_checks.set(self.integrity_checks.get() + 1);
        message.verify_integrity(key.as_bytes())
    }
}

/// Who may sign in; replaced as a whole on reload.
struct Directory {
    realm: String,
    users: HashMap<String, UserKeys>,
    /// USERHASH → name, for requests that keep the name off the wire.
    userhashes: HashMap<[u8; 32], String>,
    secrets: Vec<hmac::Key>,
}

impl Directory {
    fn new(realm: &str, users: &[(String, UserSecret)], secrets: &[String]) -> Self {
        let users: HashMap<String, UserKeys> = users
            .iter()
            .map(|(name, secret)| {
                let keys = match secret {
                    UserSecret::Password(password) => {
                        UserKeys::from_password(name, realm, password)
                    }
                    UserSecret::Key(key) => UserKeys {
                        md5: LongTermKey::md5(*key),
                        sha256: None,
                    },
                };
                (name.clone(), keys)
            })
            .collect();
        let userhashes = users
            .keys()
            .map(|name| (userhash(name, realm), name.clone()))
            .collect();
        let secrets = secrets
            .iter()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, s.as_bytes()))
            .collect();
        Self {
            realm: realm.to_owned(),
            users,
            userhashes,
            secrets,
        }
    }

    /// One key per REST secret for `username`.
    fn rest_keys(&self, username: &str, algorithm: PasswordAlgorithm) -> Vec<LongTermKey> {
        self.secrets
            .iter()
            .map(|secret| {
                let password = rest_password(secret, username);
                LongTermKey::derive(algorithm, username, &self.realm, &password)
            })
            .collect()
    }
}

/// A static user's keys: MD5 always, SHA-256 when the password is known.
#[derive(Clone, Copy)]
struct UserKeys {
    md5: LongTermKey,
    sha256: Option<LongTermKey>,
}

impl UserKeys {
    fn from_password(name: &str, realm: &str, password: &str) -> Self {
        Self {
            md5: LongTermKey::derive(PasswordAlgorithm::Md5, name, realm, password),
            sha256: Some(LongTermKey::derive(
                PasswordAlgorithm::Sha256,
                name,
                realm,
                password,
            )),
        }
    }

    fn get(&self, algorithm: PasswordAlgorithm) -> Option<LongTermKey> {
        match algorithm {
            PasswordAlgorithm::Md5 => Some(self.md5),
            PasswordAlgorithm::Sha256 => self.sha256,
        }
    }
}

/// How a request names its user.
#[derive(Clone, Copy)]
enum Identity<'a> {
    Name(&'a str),
    /// USERHASH (RFC 8489 §14.4).
    Hash(&'a [u8; 32]),
}

impl<'a> Identity<'a> {
    /// USERNAME if present, else USERHASH; `None` when neither is there or well formed.
    fn of(message: &Message<'a>) -> Option<Self> {
        match message.username() {
            Some(name) => std::str::from_utf8(name).ok().map(Identity::Name),
            None => message.userhash().flatten().map(Identity::Hash),
        }
    }
}

/// What a request's user may present.
enum Claim<'a> {
    /// A user and the keys it may hold: its own, or one per REST secret.
    User {
        name: &'a str,
        keys: Vec<LongTermKey>,
    },
    /// No key could be accepted: a name nobody holds, or a SHA-256 request for a user with
    /// only an MD5 key. The decoy is checked all the same and `refusal` is the answer.
    Refused {
        decoy: LongTermKey,
        refusal: Rejection,
    },
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
    use crate::stun::{AttrType, Class, MessageBuilder, Method, TransactionId};

    const REALM: &str = "example.org";
    const NOW: u64 = 1000;

    fn client() -> SocketAddr {
        "192.0.2.1:5000".parse().unwrap()
    }

    fn auth() -> Authenticator {
        let carol_key = crate::stun::long_term_key("carol", REALM, "pw");
        Authenticator::new(
            REALM,
            &[
                ("alice".into(), UserSecret::Password("pw".into())),
                ("carol".into(), UserSecret::Key(carol_key)),
            ],
            &["old".into(), "new".into()],
            &[5; 32],
            3600,
        )
    }

    /// How a test request names its user and proves it.
    struct Login<'a> {
        user: Identity<'a>,
        password: &'a str,
        /// PASSWORD-ALGORITHM, and the PASSWORD-ALGORITHMS echoed with it.
        chosen: Option<(PasswordAlgorithm, Vec<u8>)>,
        integrity: IntegrityAlgorithm,
    }

    impl<'a> Login<'a> {
        /// A client before RFC 8489: USERNAME, MD5, MESSAGE-INTEGRITY.
        fn legacy(name: &'a str, password: &'a str) -> Self {
            Self {
                user: Identity::Name(name),
                password,
                chosen: None,
                integrity: IntegrityAlgorithm::Sha1,
            }
        }

        /// An RFC 8489 client: SHA-256 chosen from the echoed offer, MESSAGE-INTEGRITY-SHA256.
        fn sha256(name: &'a str, password: &'a str) -> Self {
            Self {
                chosen: Some((
                    PasswordAlgorithm::Sha256,
                    PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS),
                )),
                integrity: IntegrityAlgorithm::Sha256,
                ..Self::legacy(name, password)
            }
        }

        /// The request, signed with the key of `key_name` for the chosen algorithm.
        fn request(&self, a: &Authenticator, key_name: &str) -> Vec<u8> {
            let algorithm = self.chosen.as_ref().map_or(PasswordAlgorithm::Md5, |c| c.0);
            self.request_with(&a.nonce(client(), NOW), algorithm, key_name)
        }

        fn request_with(&self, nonce: &str, key: PasswordAlgorithm, key_name: &str) -> Vec<u8> {
            let mut b =
                MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
            match self.user {
                Identity::Name(name) => b.add(AttrType::USERNAME, name.as_bytes()),
                Identity::Hash(hash) => b.add(AttrType::USERHASH, hash),
            };
            b.add(AttrType::REALM, REALM.as_bytes())
                .add(AttrType::NONCE, nonce.as_bytes());
            if let Some((chosen, echoed)) = &self.chosen {
                b.add_password_algorithm(*chosen)
                    .add(AttrType::PASSWORD_ALGORITHMS, echoed);
            }
            let key = LongTermKey::derive(key, key_name, REALM, self.password);
            b.add_integrity(self.integrity, key.as_bytes());
            b.finish()
        }

        /// Authenticates, returning the result and the integrity checks it took.
        fn try_with(
            &self,
            a: &Authenticator,
            key_name: &str,
        ) -> (Result<Credentials, Rejection>, u32) {
            let bytes = self.request(a, key_name);
            let before = a.integrity_checks.get();
            let result = a.authenticate(&Message::parse(&bytes).unwrap(), client(), NOW);
            (result, a.integrity_checks.get() - before)
        }
    }

    fn name_of(login: &Login<'_>) -> String {
        match login.user {
            Identity::Name(name) => name.to_owned(),
            Identity::Hash(_) => "alice".to_owned(),
        }
    }

    fn check(login: &Login<'_>) -> Result<Credentials, Rejection> {
        login.try_with(&auth(), &name_of(login)).0
    }

    #[test]
    fn legacy_and_sha256_clients_both_get_their_own_key() {
        let legacy = check(&Login::legacy("alice", "pw")).unwrap();
        assert_eq!(legacy.username, "alice");
        assert_eq!(legacy.key.algorithm(), PasswordAlgorithm::Md5);
        assert_eq!(legacy.algorithm, IntegrityAlgorithm::Sha1);

        let modern = check(&Login::sha256("alice", "pw")).unwrap();
        assert_eq!(
            modern.key,
            LongTermKey::derive(PasswordAlgorithm::Sha256, "alice", REALM, "pw")
        );
        assert_eq!(modern.algorithm, IntegrityAlgorithm::Sha256);

        // The two choices are independent: SHA-256 key, SHA-1 integrity.
        let mixed = Login {
            integrity: IntegrityAlgorithm::Sha1,
            ..Login::sha256("alice", "pw")
        };
        assert_eq!(
            check(&mixed).unwrap().key.algorithm(),
            PasswordAlgorithm::Sha256
        );
        assert_eq!(
            check(&Login::sha256("alice", "nope")),
            Err(Rejection::WrongKey)
        );
    }

    #[test]
    fn algorithm_choice_must_echo_the_offer_exactly() {
        let offer = PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS);
        let md5_only = PasswordAlgorithm::encode_list(&[PasswordAlgorithm::Md5]);
        let reordered =
            PasswordAlgorithm::encode_list(&[PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256]);
        for (chosen, echoed) in [
            (PasswordAlgorithm::Md5, md5_only),
            (PasswordAlgorithm::Sha256, reordered),
            (PasswordAlgorithm::Sha256, Vec::new()),
            (PasswordAlgorithm::Md5, offer[..4].to_vec()),
        ] {
            let login = Login {
                chosen: Some((chosen, echoed.clone())),
                ..Login::legacy("alice", "pw")
            };
            assert_eq!(
                check(&login),
                Err(Rejection::Downgrade),
                "{chosen:?} {echoed:?}"
            );
        }
        // MD5 may be chosen from the whole offer.
        let md5 = Login {
            chosen: Some((PasswordAlgorithm::Md5, offer)),
            ..Login::legacy("alice", "pw")
        };
        assert_eq!(check(&md5).unwrap().key.algorithm(), PasswordAlgorithm::Md5);
    }

    #[test]
    fn a_choice_without_the_list_or_a_list_without_a_choice_is_a_downgrade() {
        let a = auth();
        let key = LongTermKey::derive(PasswordAlgorithm::Sha256, "alice", REALM, "pw");
        for (algorithm, list) in [
            (Some(PasswordAlgorithm::Sha256.encode().to_vec()), None),
            (
                None,
                Some(PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS)),
            ),
            (
                Some(vec![0, 9, 0, 0]),
                Some(PasswordAlgorithm::encode_list(&OFFERED_PASSWORD_ALGORITHMS)),
            ),
        ] {
            let mut b =
                MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
            b.add(AttrType::USERNAME, b"alice")
                .add(AttrType::REALM, REALM.as_bytes())
                .add(AttrType::NONCE, a.nonce(client(), NOW).as_bytes());
            if let Some(value) = &algorithm {
                b.add(AttrType::PASSWORD_ALGORITHM, value);
            }
            if let Some(value) = &list {
                b.add(AttrType::PASSWORD_ALGORITHMS, value);
            }
            b.add_integrity(IntegrityAlgorithm::Sha256, key.as_bytes());
            let bytes = b.finish();
            let result = a.authenticate(&Message::parse(&bytes).unwrap(), client(), NOW);
            assert_eq!(result, Err(Rejection::Downgrade), "{algorithm:?} {list:?}");
        }
    }

    #[test]
    fn nonce_without_the_algorithms_feature_means_md5() {
        // On a nonce that offered no algorithms, a request's choice does not count.
        let a = auth();
        let plain = a.nonces.issue(SecurityFeatures::default(), client(), NOW);
        let login = Login::sha256("alice", "pw");
        for (key, expected) in [
            (PasswordAlgorithm::Md5, Ok(PasswordAlgorithm::Md5)),
            (PasswordAlgorithm::Sha256, Err(Rejection::WrongKey)),
        ] {
            let bytes = login.request_with(&plain, key, "alice");
            let result = a.authenticate(&Message::parse(&bytes).unwrap(), client(), NOW);
            assert_eq!(result.map(|c| c.key.algorithm()), expected);
        }
    }

    #[test]
    fn nonce_announces_userhash_only_when_static_users_exist() {
        assert!(auth().nonce(client(), NOW).starts_with("obMatJos2AAAD"));
        let rest_only = Authenticator::new(REALM, &[], &["s".into()], &[5; 32], 3600);
        assert!(rest_only.nonce(client(), NOW).starts_with("obMatJos2AAAB"));
    }

    #[test]
    fn userhash_finds_static_users_with_either_algorithm() {
        let hash = userhash("alice", REALM);
        for login in [Login::legacy("", "pw"), Login::sha256("", "pw")] {
            let login = Login {
                user: Identity::Hash(&hash),
                ..login
            };
            assert_eq!(check(&login).unwrap().username, "alice");
        }
        let nobody = userhash("nobody", REALM);
        let login = Login {
            user: Identity::Hash(&nobody),
            ..Login::legacy("", "pw")
        };
        assert_eq!(check(&login), Err(Rejection::UnknownUser));
    }

    #[test]
    fn userhash_of_a_rest_name_is_an_unknown_user() {
        // REST names are not known before a request brings them, and a hash hides the name.
        let a = auth();
        let name = "2000:bob";
        let secret = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"new");
        let password = rest_password(&secret, name);
        let hash = userhash(name, REALM);
        let login = Login {
            user: Identity::Hash(&hash),
            ..Login::legacy(name, &password)
        };
        assert_eq!(login.try_with(&a, name).0, Err(Rejection::UnknownUser));
        let by_name = Login::sha256(name, &password);
        assert_eq!(by_name.try_with(&a, name).0.unwrap().username, name);
    }

    #[test]
    fn key_only_users_sign_in_with_md5_only() {
        assert_eq!(
            check(&Login::legacy("carol", "pw")).unwrap().username,
            "carol"
        );
        assert_eq!(
            check(&Login::sha256("carol", "pw")),
            Err(Rejection::Sha256Unavailable)
        );
    }

    #[test]
    fn unknown_names_cost_the_same_integrity_check_as_known_ones() {
        let a = auth();
        let nobody = userhash("nobody", REALM);
        let by_hash = Login {
            user: Identity::Hash(&nobody),
            ..Login::legacy("", "x")
        };
        for (login, key_name, expected) in [
            (
                Login::legacy("alice", "wrong"),
                "alice",
                Err(Rejection::WrongKey),
            ),
            (
                Login::legacy("mallory", "x"),
                "mallory",
                Err(Rejection::UnknownUser),
            ),
            (
                Login::sha256("alice", "wrong"),
                "alice",
                Err(Rejection::WrongKey),
            ),
            (
                Login::sha256("mallory", "x"),
                "mallory",
                Err(Rejection::UnknownUser),
            ),
            (
                Login::sha256("carol", "pw"),
                "carol",
                Err(Rejection::Sha256Unavailable),
            ),
            (by_hash, "nobody", Err(Rejection::UnknownUser)),
        ] {
            let (result, checks) = login.try_with(&a, key_name);
            assert_eq!(result, expected, "{key_name}");
            assert_eq!(checks, 1, "{key_name}: one HMAC, like a wrong password");
        }
        // A REST name is recognised by its form, not by existing: one check per secret.
        let (result, checks) = Login::legacy("2000:bob", "wrong").try_with(&a, "2000:bob");
        assert_eq!((result, checks), (Err(Rejection::WrongKey), 2));
    }

    #[test]
    fn every_configured_secret_is_tried_until_expiry_with_either_algorithm() {
        let a = auth();
        for secret in ["old", "new"] {
            let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
            let password = rest_password(&key, "2000:bob");
            for login in [
                Login::legacy("2000:bob", &password),
                Login::sha256("2000:bob", &password),
            ] {
                assert_eq!(
                    login.try_with(&a, "2000:bob").0.unwrap().username,
                    "2000:bob"
                );
            }
        }
        let expired = Login::legacy("1000:bob", "x").try_with(&a, "1000:bob");
        assert_eq!(expired, (Err(Rejection::Expired), 0));
        let no_secrets = Authenticator::new(REALM, &[], &[], &[5; 32], 3600);
        let login = Login::legacy("2000:bob", "x");
        assert_eq!(
            login.try_with(&no_secrets, "2000:bob").0,
            Err(Rejection::UnknownUser)
        );
    }

    #[test]
    fn missing_realm_and_nonce_checks_come_first() {
        let a = auth();
        let login = Login::legacy("alice", "pw");
        let other = Authenticator::new("other.org", &[], &[], &[5; 32], 3600);
        let bytes = login.request(&a, "alice");
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            other.authenticate(&m, client(), NOW),
            Err(Rejection::WrongRealm)
        );
        let elsewhere: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        assert_eq!(
            a.authenticate(&m, elsewhere, NOW),
            Err(Rejection::StaleNonce)
        );
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([1; 12]));
        b.add(AttrType::USERHASH, &[1; 20])
            .add(AttrType::REALM, REALM.as_bytes())
            .add(AttrType::NONCE, a.nonce(client(), NOW).as_bytes())
            .add_integrity(IntegrityAlgorithm::Sha1, &[0; 16]);
        let bytes = b.finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            a.authenticate(&m, client(), NOW),
            Err(Rejection::BadRequest),
            "short USERHASH"
        );
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
    fn rest_password_matches_reference_hmac() {
        // Reference value from Python: base64(hmac.new(b"north", b"1700000000:bob", sha1)).
        let secret = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, b"north");
        assert_eq!(
            rest_password(&secret, "1700000000:bob"),
            "7tNSWpJ3gOxGfEgOjt+kaWhBC20="
        );
    }
}
