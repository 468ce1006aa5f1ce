//! MESSAGE-INTEGRITY (HMAC-SHA1), MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.

use ring::hmac;

/// Which integrity attribute protects a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IntegrityAlgorithm {
    Sha1,
    Sha256,
}

impl IntegrityAlgorithm {
    pub(crate) fn tag_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    fn ring_algorithm(self) -> hmac::Algorithm {
        match self {
            Self::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => hmac::HMAC_SHA256,
        }
    }
}

/// XOR constant of FINGERPRINT (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// CRC-32 of `prefix` (the message up to the FINGERPRINT attribute, whose length field must
/// already count the FINGERPRINT) XOR the RFC constant.
pub(crate) fn fingerprint(prefix: &[u8]) -> u32 {
    crc32fast::hash(prefix) ^ FINGERPRINT_XOR
}

/// Checks a received FINGERPRINT. `prefix` is the message before the attribute: its length
/// field already covers the FINGERPRINT because FINGERPRINT is last.
pub(crate) fn fingerprint_matches(prefix: &[u8], value: &[u8]) -> bool {
    let Ok(received) = <[u8; 4]>::try_from(value) else {
        return false;
    };
    fingerprint(prefix) == u32::from_be_bytes(received)
}

/// HMAC over `prefix` (the message up to the integrity attribute) with the header's length
/// field rewritten to end just after an integrity value of `tag_len` bytes (RFC 8489 §14.5).
pub(crate) fn compute(
    algorithm: IntegrityAlgorithm,
    key: &[u8],
    prefix: &[u8],
    tag_len: usize,
) -> hmac::Tag {
    let covered_len = prefix.len() - super::HEADER_LEN + 4 + tag_len;
    let mut context = hmac::Context::with_key(&hmac::Key::new(algorithm.ring_algorithm(), key));
    context.update(&prefix[..2]);
    context.update(&(covered_len as u16).to_be_bytes());
    context.update(&prefix[4..]);
    context.sign()
}

/// Verifies a received integrity value. SHA-256 tags may be truncated to 16 bytes or more
/// (RFC 8489 §14.6); SHA-1 tags are always 20 bytes.
pub(crate) fn verify(
    algorithm: IntegrityAlgorithm,
    key: &[u8],
    prefix: &[u8],
    received: &[u8],
) -> bool {
    let valid_len = match algorithm {
        IntegrityAlgorithm::Sha1 => received.len() == 20,
        IntegrityAlgorithm::Sha256 => {
            (16..=32).contains(&received.len()) && received.len() % 4 == 0
        }
    };
    if !valid_len || prefix.len() < super::HEADER_LEN {
        return false;
    }
    let tag = compute(algorithm, key, prefix, received.len());
    constant_time_eq(&tag.as_ref()[..received.len()], received)
}

/// Compares without an early exit, so timing does not reveal how many bytes matched.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
