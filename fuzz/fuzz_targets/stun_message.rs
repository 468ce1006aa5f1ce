//! Any bytes through the STUN parser and everything a server asks of a parsed message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendez::stun::{decode_xor_address, AttrType, ErrorCode, Message};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::parse(data) else {
        return;
    };
    let tid = message.transaction_id();
    let _ = message.unknown_required_attributes();
    let _ = message.verify_integrity(b"0123456789abcdef");
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
