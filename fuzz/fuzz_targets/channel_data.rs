//! Any bytes as a ChannelData datagram (RFC 8656 §12.4): the parser and the stream framing
//! must agree on where the message ends, and the payload is exactly what the header says.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rendez::stun::{classify, stream_frame, ChannelData, Frame, Framing, CHANNEL_DATA_HEADER_LEN};
use rendez::turn::CHANNEL_NUMBERS;

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = ChannelData::parse(data) else {
        return;
    };
    assert_eq!(classify(data), Framing::ChannelData);
    assert!(CHANNEL_NUMBERS.contains(&parsed.channel));
    let len = parsed.payload.len();
    assert_eq!(
        parsed.payload,
        &data[CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len]
    );
    let header = ChannelData::header(parsed.channel, len as u16);
    assert_eq!(&header[..], &data[..CHANNEL_DATA_HEADER_LEN]);
    // On a stream the same message is padded to 4 bytes (§12.5).
    let padded = CHANNEL_DATA_HEADER_LEN + len.next_multiple_of(4);
    let expected = if data.len() >= padded {
        Frame::Complete(padded)
    } else {
        Frame::Incomplete
    };
    assert_eq!(stream_frame(data), expected);
});
