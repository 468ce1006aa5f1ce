//! RFC 5769 test vectors: our parser, integrity check and FINGERPRINT against the
//! published sample messages.

use rendez::stun::{
    decode_xor_address, long_term_key, AttrType, Class, IntegrityAlgorithm, Message, Method,
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
