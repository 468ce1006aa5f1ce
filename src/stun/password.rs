//! Long-term credential keys and the attributes that choose them (RFC 8489 §9.2.2):
//! PASSWORD-ALGORITHM(S) (§14.11, §14.12) and USERHASH (§14.4).
//!
//! Usernames, realms and passwords are used as given (no OpaqueString processing), as
//! everywhere else in rendez and in the clients it serves.

use md5::{Digest, Md5};
use ring::digest;

/// The hash that turns "username:realm:password" into the long-term key (RFC 8489 §18.5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PasswordAlgorithm {
    /// 0x0001: the key every client before RFC 8489 uses.
    Md5,
    /// 0x0002.
    Sha256,
}

/// A PASSWORD-ALGORITHM value this server does not know, or a malformed one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UnknownPasswordAlgorithm;

impl PasswordAlgorithm {
    /// The number in the IANA registry (RFC 8489 §18.5).
    pub fn code(self) -> u16 {
        match self {
            Self::Md5 => 0x0001,
            Self::Sha256 => 0x0002,
        }
    }

    /// Reads a PASSWORD-ALGORITHM value: the algorithm number, a parameter length and the
    /// parameters (RFC 8489 §14.12). Neither MD5 nor SHA-256 takes parameters.
    pub fn decode(value: &[u8]) -> Result<Self, UnknownPasswordAlgorithm> {
        match value {
            [0x00, 0x01, 0x00, 0x00] => Ok(Self::Md5),
            [0x00, 0x02, 0x00, 0x00] => Ok(Self::Sha256),
            _ => Err(UnknownPasswordAlgorithm),
        }
    }

    /// One algorithm as PASSWORD-ALGORITHM carries it, and as each entry of
    /// PASSWORD-ALGORITHMS does (§14.11): number, then a zero parameter length.
    pub fn encode(self) -> [u8; 4] {
        let [high, low] = self.code().to_be_bytes();
        [high, low, 0, 0]
    }

    /// The value of a PASSWORD-ALGORITHMS attribute listing `algorithms` in order.
    pub fn encode_list(algorithms: &[PasswordAlgorithm]) -> Vec<u8> {
        algorithms.iter().flat_map(|a| a.encode()).collect()
    }
}

/// The classic long-term key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut md5 = Md5::new();
    for (i, part) in [username, realm, password].iter().enumerate() {
        if i > 0 {
            md5.update(b":");
        }
        md5.update(part.as_bytes());
    }
    md5.finalize().into()
}

/// A long-term credential key of either algorithm: 16 bytes (MD5) or 32 (SHA-256). Its
/// `Debug` form hides the bytes, so a key never reaches a log by accident.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct LongTermKey {
    bytes: [u8; 32],
    algorithm: PasswordAlgorithm,
}

impl LongTermKey {
    /// The key of `username` in `realm` with `password`, hashed by `algorithm`.
    pub fn derive(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Self {
        match algorithm {
            PasswordAlgorithm::Md5 => Self::md5(long_term_key(username, realm, password)),
            PasswordAlgorithm::Sha256 => {
                let mut sha = digest::Context::new(&digest::SHA256);
                sha.update(username.as_bytes());
                sha.update(b":");
                sha.update(realm.as_bytes());
                sha.update(b":");
                sha.update(password.as_bytes());
                let mut bytes = [0u8; 32];
                bytes.copy_from_slice(sha.finish().as_ref());
                Self {
                    bytes,
                    algorithm: PasswordAlgorithm::Sha256,
                }
            }
        }
    }

    /// An MD5 key computed elsewhere (a `key` in the configuration).
    pub fn md5(key: [u8; 16]) -> Self {
        let mut bytes = [0u8; 32];
        bytes[..16].copy_from_slice(&key);
        Self {
            bytes,
            algorithm: PasswordAlgorithm::Md5,
        }
    }

    pub fn algorithm(&self) -> PasswordAlgorithm {
        self.algorithm
    }

    /// The key as MESSAGE-INTEGRITY(-SHA256) takes it.
    pub fn as_bytes(&self) -> &[u8] {
        match self.algorithm {
            PasswordAlgorithm::Md5 => &self.bytes[..16],
            PasswordAlgorithm::Sha256 => &self.bytes,
        }
    }
}

impl std::fmt::Debug for LongTermKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LongTermKey({:?}, ..)", self.algorithm)
    }
}

/// USERHASH: SHA-256(username ":" realm) (RFC 8489 §14.4), sent instead of USERNAME by a
/// client that keeps its name off the wire.
pub fn userhash(username: &str, realm: &str) -> [u8; 32] {
    let mut sha = digest::Context::new(&digest::SHA256);
    sha.update(username.as_bytes());
    sha.update(b":");
    sha.update(realm.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(sha.finish().as_ref());
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_reference_digests() {
        // Reference values from Python's hashlib over "user:realm:pass".
        let md5 = LongTermKey::derive(PasswordAlgorithm::Md5, "user", "realm", "pass");
        assert_eq!(
            crate::hex::encode(md5.as_bytes()),
            "8493fbc53ba582fb4c044c456bdc40eb"
        );
        let sha = LongTermKey::derive(PasswordAlgorithm::Sha256, "user", "realm", "pass");
        assert_eq!(
            crate::hex::encode(sha.as_bytes()),
            "07e934117abd40836e7c6329b54731b2b2d2a5f9a71f544922d75e0730d8251b"
        );
        assert_eq!(format!("{sha:?}"), "LongTermKey(Sha256, ..)");
    }

    #[test]
    fn password_algorithm_values_round_trip() {
        for algorithm in [PasswordAlgorithm::Md5, PasswordAlgorithm::Sha256] {
            assert_eq!(
                PasswordAlgorithm::decode(&algorithm.encode()),
                Ok(algorithm)
            );
        }
        for bad in [&[0, 3, 0, 0][..], &[0, 1, 0, 4, 1, 2, 3, 4], &[0, 1], &[]] {
            assert_eq!(
                PasswordAlgorithm::decode(bad),
                Err(UnknownPasswordAlgorithm)
            );
        }
        assert_eq!(
            PasswordAlgorithm::encode_list(&[PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5]),
            [0, 2, 0, 0, 0, 1, 0, 0]
        );
    }
}
