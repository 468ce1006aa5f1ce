//! Stateless nonces that carry the RFC 8489 nonce cookie (§9.2).
//!
//! A nonce is `obMatJos2`, then the 24-bit security feature set in four base64 characters
//! (together the "nonce cookie": it tells an RFC 8489 client which features the server
//! offered), then base64 of an expiry and a MAC. The MAC (HMAC-SHA256, truncated) covers the
//! feature set, the expiry and the client's address, so
//! - the server keeps no state for a client that has not authenticated yet;
//! - a nonce handed to one client is useless from another address;
//! - nobody can clear a feature bit on the way (to hide that PASSWORD-ALGORITHMS was
//!   offered, say) without the nonce failing the check and being answered 438.
//!
//! Bits are numbered as verified erratum 6290 to RFC 8489 reads §9.2, from the least
//! significant bit of the last byte: the RFC's own example (Appendix B.1) uses USERHASH
//! with the cookie `obMatJos2AAAC`, bit 1.

use std::net::{IpAddr, SocketAddr};

use base64::engine::general_purpose::STANDARD;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use ring::hmac;

use crate::stun::constant_time_eq;

/// The fixed start of every RFC 8489 nonce (§9.2).
pub const NONCE_COOKIE: &str = "obMatJos2";
/// The cookie and the four base64 characters of the feature set.
const COOKIE_LEN: usize = NONCE_COOKIE.len() + 4;
const EXPIRY_LEN: usize = 8;
const MAC_LEN: usize = 12;
/// Our nonces are 40 characters; anything much longer is not one of ours and not worth
/// decoding.
const MAX_NONCE_LEN: usize = 64;

/// The STUN security feature set (RFC 8489 §18.1): what the server offers beyond RFC 5389.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SecurityFeatures(u32);

impl SecurityFeatures {
    /// Bit 0: the challenge lists PASSWORD-ALGORITHMS, and a request must echo it.
    pub const PASSWORD_ALGORITHMS: Self = Self(1 << 0);
    /// Bit 1: a request may name its user by USERHASH instead of USERNAME.
    pub const USERNAME_ANONYMITY: Self = Self(1 << 1);

    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn with(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    fn to_bytes(self) -> [u8; 3] {
        let [_, a, b, c] = self.0.to_be_bytes();
        [a, b, c]
    }

    fn from_bytes([a, b, c]: [u8; 3]) -> Self {
        Self(u32::from_be_bytes([0, a, b, c]))
    }
}

/// Labels the nonce key made from a shared secret, so the key differs from anything else
/// the same secret might key.
const NONCE_KEY_LABEL: &[u8] = b"rendez stateless nonce key v1";

/// The nonce key of every node configured with `secret` (`[auth] nonce-secret`): an
/// HMAC-SHA256 of a fixed label under the secret. Nodes with the same secret accept each
/// other's nonces; the secret itself never signs one.
pub fn nonce_key_from_secret(secret: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), NONCE_KEY_LABEL);
    let mut key = [0u8; 32];
    key.copy_from_slice(tag.as_ref());
    key
}

/// Issues and checks nonces with one key (nodes behind one name share it).
pub struct Nonces {
    key: hmac::Key,
    lifetime_secs: u64,
}

impl Nonces {
    pub fn new(key: &[u8; 32], lifetime_secs: u64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            lifetime_secs,
        }
    }

    /// Signs and checks with `key` from now on: nonces signed with the old key become
    /// stale (438, and the client retries with the fresh nonce that comes with it).
    pub fn set_key(&mut self, key: &[u8; 32]) {
        self.key = hmac::Key::new(hmac::HMAC_SHA256, key);
    }

    /// A nonce for `client` offering `features`, valid until `unix_now + lifetime`.
    pub fn issue(&self, features: SecurityFeatures, client: SocketAddr, unix_now: u64) -> String {
        let expiry = unix_now + self.lifetime_secs;
        let mut body = [0u8; EXPIRY_LEN + MAC_LEN];
        body[..EXPIRY_LEN].copy_from_slice(&expiry.to_be_bytes());
        body[EXPIRY_LEN..].copy_from_slice(&self.mac(features, expiry, client));
        let mut nonce = String::with_capacity(40);
        nonce.push_str(NONCE_COOKIE);
        STANDARD.encode_string(features.to_bytes(), &mut nonce);
        STANDARD_NO_PAD.encode_string(body, &mut nonce);
        nonce
    }

    /// The features a nonce was issued with, if we issued it to `client` and it has not
    /// expired.
    pub fn check(
        &self,
        nonce: &[u8],
        client: SocketAddr,
        unix_now: u64,
    ) -> Option<SecurityFeatures> {
        if nonce.len() > MAX_NONCE_LEN || !nonce.starts_with(NONCE_COOKIE.as_bytes()) {
            return None;
        }
        let encoded_features = nonce.get(NONCE_COOKIE.len()..COOKIE_LEN)?;
        let features = STANDARD.decode(encoded_features).ok()?.try_into().ok()?;
        let features = SecurityFeatures::from_bytes(features);
        let body = STANDARD_NO_PAD.decode(&nonce[COOKIE_LEN..]).ok()?;
        if body.len() != EXPIRY_LEN + MAC_LEN {
            return None;
        }
        let (expiry, mac) = body.split_at(EXPIRY_LEN);
        let expiry = u64::from_be_bytes(expiry.try_into().ok()?);
        // The MAC guards the expiry and the features; comparing it in constant time keeps a
        // forger from learning it byte by byte.
        let genuine = constant_time_eq(mac, &self.mac(features, expiry, client));
        (genuine && expiry > unix_now).then_some(features)
    }

    fn mac(&self, features: SecurityFeatures, expiry: u64, client: SocketAddr) -> [u8; MAC_LEN] {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(&features.to_bytes());
        context.update(&expiry.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => context.update(&ip.octets()),
            IpAddr::V6(ip) => context.update(&ip.octets()),
        }
        context.update(&client.port().to_be_bytes());
        let tag = context.sign();
        let mut mac = [0u8; MAC_LEN];
        mac.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
        mac
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: SecurityFeatures = SecurityFeatures(
        SecurityFeatures::PASSWORD_ALGORITHMS.0 | SecurityFeatures::USERNAME_ANONYMITY.0,
    );

    fn nonces() -> Nonces {
        Nonces::new(&[5; 32], 3600)
    }

    #[test]
    fn nonce_starts_with_the_cookie_and_its_features() {
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let nonce = nonces().issue(BOTH, client, 1000);
        assert!(nonce.starts_with("obMatJos2AAAD"), "{nonce}");
        assert_eq!(nonce.len(), 40);
        let algorithms_only = nonces().issue(SecurityFeatures::PASSWORD_ALGORITHMS, client, 1000);
        assert!(algorithms_only.starts_with("obMatJos2AAAB"));
        // RFC 8489 Appendix B.1: "AAAC" is username anonymity alone.
        assert_eq!(
            SecurityFeatures::from_bytes([0, 0, 2]),
            SecurityFeatures::USERNAME_ANONYMITY
        );
    }

    #[test]
    fn nonce_is_bound_to_client_and_expires() {
        let n = nonces();
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.1:5001".parse().unwrap();
        let nonce = n.issue(BOTH, client, 1000);
        assert_eq!(n.check(nonce.as_bytes(), client, 1000), Some(BOTH));
        assert_eq!(n.check(nonce.as_bytes(), client, 4599), Some(BOTH));
        assert_eq!(n.check(nonce.as_bytes(), client, 4600), None);
        assert_eq!(n.check(nonce.as_bytes(), other, 1000), None);
        assert_eq!(
            Nonces::new(&[6; 32], 3600).check(nonce.as_bytes(), client, 1000),
            None
        );
        for junk in [&b""[..], b"obMatJos2", b"obMatJos2AAAD", b"zz", &[b'A'; 65]] {
            assert_eq!(n.check(junk, client, 1000), None);
        }
    }

    #[test]
    fn nodes_with_one_secret_share_the_key_and_others_do_not() {
        let secret = b"a fleet's shared nonce secret";
        let key = nonce_key_from_secret(secret);
        assert_eq!(key, nonce_key_from_secret(secret));
        assert_ne!(key, nonce_key_from_secret(b"another fleet's nonce secret"));
        let client: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let node_a = Nonces::new(&key, 3600);
        let node_b = Nonces::new(&nonce_key_from_secret(secret), 3600);
        let nonce = node_a.issue(BOTH, client, 1000);
        assert_eq!(node_b.check(nonce.as_bytes(), client, 1000), Some(BOTH));
        let mut rekeyed = node_b;
        rekeyed.set_key(&nonce_key_from_secret(b"the next nonce secret"));
        assert_eq!(rekeyed.check(nonce.as_bytes(), client, 1000), None);
    }

    #[test]
    fn nonce_with_a_feature_bit_cleared_or_a_byte_changed_fails() {
        let n = nonces();
        let client: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let nonce = n.issue(BOTH, client, 1000);
        // A man in the middle hides that PASSWORD-ALGORITHMS was offered.
        let stripped = nonce.replacen("obMatJos2AAAD", "obMatJos2AAAC", 1);
        assert_eq!(n.check(stripped.as_bytes(), client, 1000), None);
        for at in 0..nonce.len() {
            let mut forged = nonce.clone().into_bytes();
            forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
            assert_eq!(n.check(&forged, client, 1000), None, "byte {at}");
        }
    }
}
