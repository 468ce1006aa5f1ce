//! Any bytes through the STUN parser and everything a server asks of a parsed message: the
//! typed accessors, integrity with both algorithms, unknown comprehension-required
//! attributes. What parsed once parses again the same from the bytes it kept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendez::stun::{classify, decode_xor_address, AttrType, ErrorCode, Framing, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(data) else {
        return;
    };
    assert_eq!(
        classify(data),
        Framing::Stun,
        "only STUN-framed bytes parse"
    );
    let kept = message.as_bytes();
    assert!(kept.len() <= data.len());
    let again = Message::parse(kept).expect("the bytes a message kept parse alone");
    assert_eq!(
        (again.class(), again.method(), again.transaction_id()),
        (message.class(), message.method(), message.transaction_id())
    );

    let tid = message.transaction_id();
    let _ = message.unknown_required_attributes();
    let _ = message.verify_integrity(b"0123456789abcdef");
    let _ = (
        message.requested_transport(),
        message.requested_family(),
        message.additional_family(),
        message.has_even_port(),
        message.has_reservation_token(),
        message.lifetime(),
        message.channel_number(),
        message.xor_peer_address(),
        message.xor_mapped_address(),
        message.error_code(),
        message.data(),
        message.username(),
        message.realm(),
        message.nonce(),
    );
    let _ = message.xor_peer_addresses().count();
    let _ = message.xor_relayed_addresses().count();
    for kind in [
        AttrType::XOR_PEER_ADDRESS,
        AttrType::XOR_MAPPED_ADDRESS,
        AttrType::XOR_RELAYED_ADDRESS,
    ] {
        for value in message.attributes(kind) {
            let _ = decode_xor_address(value, &tid);
        }
    }
    if let Some(value) = message.attribute(AttrType::ERROR_CODE) {
        let _ = ErrorCode::decode_code(value);
    }
});
