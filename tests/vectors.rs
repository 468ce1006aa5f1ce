//! RFC 5769 test vectors, and RFC 8489's own (Appendix B.1): our parser, integrity check,
//! FINGERPRINT, SHA-256 long-term key and USERHASH against the published sample messages.

use rendez::stun::{
    decode_xor_address, long_term_key, userhash, AttrType, Class, IntegrityAlgorithm, LongTermKey,
    Message, MessageBuilder, Method, PasswordAlgorithm, TransactionId,
};

mod rfc5769;
use rfc5769::*;

#[test]
fn sample_request_parses_and_verifies() {
    let m = Message::parse(&SAMPLE_REQUEST).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Request, Method::BINDING));
    assert!(m.has_fingerprint());
    assert_eq!(
        m.attribute(AttrType::SOFTWARE),
        Some(&b"STUN test client"[..])
    );
    assert_eq!(m.attribute(AttrType::USERNAME), Some(&b"evtj:h6vY"[..]));
    assert_eq!(
        m.verify_integrity(SHORT_TERM_PASSWORD),
        Some(IntegrityAlgorithm::Sha1)
    );
    assert_eq!(m.verify_integrity(b"VOkJxbRl1RmTxUk/WvJxBu"), None);
    // PRIORITY is a comprehension-required attribute we understand (ICE).
    assert!(m.unknown_required_attributes().is_empty());
}

#[test]
fn sample_ipv4_response_decodes_mapped_address() {
    let m = Message::parse(&SAMPLE_IPV4_RESPONSE).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Success, Method::BINDING));
    let value = m.attribute(AttrType::XOR_MAPPED_ADDRESS).unwrap();
    let addr = decode_xor_address(value, &m.transaction_id()).unwrap();
    assert_eq!(addr, "192.0.2.1:32853".parse().unwrap());
    assert_eq!(
        m.verify_integrity(SHORT_TERM_PASSWORD),
        Some(IntegrityAlgorithm::Sha1)
    );
}

#[test]
fn sample_ipv6_response_decodes_mapped_address() {
    let m = Message::parse(&SAMPLE_IPV6_RESPONSE).unwrap();
    let value = m.attribute(AttrType::XOR_MAPPED_ADDRESS).unwrap();
    let addr = decode_xor_address(value, &m.transaction_id()).unwrap();
    assert_eq!(
        addr,
        "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap()
    );
    assert_eq!(
        m.verify_integrity(SHORT_TERM_PASSWORD),
        Some(IntegrityAlgorithm::Sha1)
    );
}

#[test]
fn sample_long_term_request_verifies_with_md5_key() {
    let m = Message::parse(&SAMPLE_LONG_TERM_REQUEST).unwrap();
    assert!(!m.has_fingerprint());
    let username = std::str::from_utf8(m.attribute(AttrType::USERNAME).unwrap()).unwrap();
    assert_eq!(username, "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}");
    assert_eq!(m.attribute(AttrType::REALM), Some(&b"example.org"[..]));
    assert_eq!(
        m.attribute(AttrType::NONCE),
        Some(&b"f//499k954d6OL34oL9FSTvy64sA"[..])
    );
    // The password "The<U+00AD>M<U+00AA>tr<U+2168>" is "TheMatrIX" after SASLprep.
    let key = long_term_key(username, "example.org", "TheMatrIX");
    assert_eq!(m.verify_integrity(&key), Some(IntegrityAlgorithm::Sha1));
    assert_eq!(
        m.verify_integrity(&long_term_key(username, "example.org", "TheMatrix")),
        None
    );
}

/// RFC 8489 Appendix B.1, a Binding request with USERHASH, PASSWORD-ALGORITHM SHA-256 and
/// MESSAGE-INTEGRITY-SHA256, as corrected by verified erratum 6268 (the published bytes
/// leave out PASSWORD-ALGORITHM yet count it in the length, and carry another MAC).
/// Username "<U+30DE><U+30C8><U+30EA><U+30C3><U+30AF><U+30B9>", password "TheMatrIX"
/// (after OpaqueString), realm "example.org", nonce "obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA".
#[rustfmt::skip]
const RFC8489_SHA256_USERHASH_REQUEST: [u8; 164] = [
    0x00, 0x01, 0x00, 0x90, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e, 0x00, 0x1e, 0x00, 0x20, 0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd,
    0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17, 0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2,
    0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f, 0x17, 0x04, 0x00, 0x15, 0x00, 0x29, 0x6f, 0x62, 0x4d, 0x61,
    0x74, 0x4a, 0x6f, 0x73, 0x32, 0x41, 0x41, 0x41, 0x43, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b,
    0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76,
    0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d,
    0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x1d, 0x00, 0x04, 0x00, 0x02, 0x00, 0x00,
    0x00, 0x1c, 0x00, 0x20, 0xb5, 0xc7, 0xbf, 0x00, 0x5b, 0x6c, 0x52, 0xa2, 0x1c, 0x51, 0xc5, 0xe8,
    0x92, 0xf8, 0x19, 0x24, 0x13, 0x62, 0x96, 0xcb, 0x92, 0x7c, 0x43, 0x14, 0x93, 0x09, 0x27, 0x8c,
    0xc6, 0x51, 0x8e, 0x65,
];

const MATRIX_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

#[test]
fn rfc_8489_sample_verifies_with_sha256_key_and_userhash() {
    let m = Message::parse(&RFC8489_SHA256_USERHASH_REQUEST).unwrap();
    assert_eq!((m.class(), m.method()), (Class::Request, Method::BINDING));
    assert_eq!(m.username(), None);
    assert_eq!(
        m.userhash(),
        Some(Some(&userhash(MATRIX_USER, "example.org")))
    );
    assert_eq!(m.password_algorithm(), Some(Ok(PasswordAlgorithm::Sha256)));
    let nonce = m.nonce().unwrap();
    // The nonce cookie: feature set 0x000002, username anonymity (bit 1, erratum 6290).
    assert!(nonce.starts_with(b"obMatJos2AAAC"));
    let key = LongTermKey::derive(
        PasswordAlgorithm::Sha256,
        MATRIX_USER,
        "example.org",
        "TheMatrIX",
    );
    assert_eq!(
        m.verify_integrity(key.as_bytes()),
        Some(IntegrityAlgorithm::Sha256)
    );
    let md5 = LongTermKey::derive(
        PasswordAlgorithm::Md5,
        MATRIX_USER,
        "example.org",
        "TheMatrIX",
    );
    assert_eq!(m.verify_integrity(md5.as_bytes()), None);
}

#[test]
fn rfc_8489_sample_is_rebuilt_byte_for_byte() {
    let transaction = TransactionId(RFC8489_SHA256_USERHASH_REQUEST[8..20].try_into().unwrap());
    let key = LongTermKey::derive(
        PasswordAlgorithm::Sha256,
        MATRIX_USER,
        "example.org",
        "TheMatrIX",
    );
    let mut b = MessageBuilder::new(Class::Request, Method::BINDING, transaction);
    b.add(AttrType::USERHASH, &userhash(MATRIX_USER, "example.org"))
        .add(
            AttrType::NONCE,
            b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA",
        )
        .add(AttrType::REALM, b"example.org")
        .add_password_algorithm(PasswordAlgorithm::Sha256)
        .add_integrity(IntegrityAlgorithm::Sha256, key.as_bytes());
    assert_eq!(b.finish(), RFC8489_SHA256_USERHASH_REQUEST);
}

#[test]
fn corrupted_vectors_are_rejected() {
    // Any flipped bit before FINGERPRINT breaks it.
    for i in 20..SAMPLE_REQUEST.len() - 8 {
        let mut bytes = SAMPLE_REQUEST;
        bytes[i] ^= 0x01;
        assert!(Message::parse(&bytes).is_err(), "flip at byte {i} accepted");
    }
    // Truncation anywhere is a parse error, never a panic.
    for len in 0..SAMPLE_REQUEST.len() {
        assert!(Message::parse(&SAMPLE_REQUEST[..len]).is_err());
    }
}
