//! Any bytes through the TCP/TLS framing and the ChannelData parser, as a stream would
//! deliver them: frame after frame until the input is used up or refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendez::stun::{stream_frame, ChannelData, Frame, Message};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Frame::Complete(len) = stream_frame(rest) {
        assert!(
            len <= rest.len() && len >= 4,
            "a frame lies within its input"
        );
        let frame = &rest[..len];
        let _ = Message::parse(frame);
        let _ = ChannelData::parse(frame);
        rest = &rest[len..];
    }
});
