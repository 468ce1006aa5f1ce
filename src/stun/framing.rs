//! Cutting messages out of a byte stream (TCP, TLS): STUN by its length field, ChannelData
//! by its length padded to 4 bytes (RFC 8656 §12.5).

use super::HEADER_LEN;

/// What the start of a stream buffer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes (ChannelData padding included).
    Complete(usize),
    /// A message has begun but more bytes are needed.
    Incomplete,
    /// Neither STUN nor ChannelData: the stream cannot be resynchronised.
    Invalid,
}

/// The length of the first message in `buffer`.
pub fn stream_frame(buffer: &[u8]) -> Frame {
    let Some(header) = buffer.get(..4) else {
        return match buffer.first() {
            Some(b) if b >> 6 > 1 => Frame::Invalid,
            _ => Frame::Incomplete,
        };
    };
    let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let total = match header[0] >> 6 {
        0b00 => {
            if declared % 4 != 0 {
                return Frame::Invalid;
            }
            // Check the magic cookie as soon as it is there, so garbage is refused early.
            if let Some(cookie) = buffer.get(4..8) {
                if cookie != super::MAGIC_COOKIE.to_be_bytes() {
                    return Frame::Invalid;
                }
            }
            HEADER_LEN + declared
        }
        // ChannelData on any channel 0x4000–0x7FFF (RFC 5766 §11): framed by its length
        // whatever the number, so a connection stays in step even on a number this server
        // does not bind (`channel-numbers = "rfc8656"`); the core drops those.
        0b01 => 4 + ((declared + 3) & !3),
        _ => return Frame::Invalid,
    };
    if buffer.len() >= total {
        Frame::Complete(total)
    } else {
        Frame::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageBuilder, Method, TransactionId};

    #[test]
    fn stun_messages_are_cut_by_length() {
        let msg =
            MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([1; 12])).finish();
        assert_eq!(stream_frame(&msg), Frame::Complete(20));
        let mut two = msg.clone();
        two.extend_from_slice(&msg);
        assert_eq!(stream_frame(&two), Frame::Complete(20));
        for cut in 0..20 {
            assert_eq!(stream_frame(&msg[..cut]), Frame::Incomplete, "cut at {cut}");
        }
    }

    #[test]
    fn channel_data_includes_padding() {
        let frame = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
        assert_eq!(stream_frame(&frame), Frame::Complete(12));
        assert_eq!(stream_frame(&frame[..9]), Frame::Incomplete);
    }

    #[test]
    fn channel_data_on_rfc_5766_numbers_is_framed() {
        let frame = [0x7F, 0xFF, 0x00, 0x02, 1, 2, 0, 0, 0x40];
        assert_eq!(stream_frame(&frame), Frame::Complete(8));
        assert_eq!(stream_frame(&[0x50, 0x00, 0x00, 0x00]), Frame::Complete(4));
    }

    #[test]
    fn garbage_is_invalid_early() {
        // A TLS ClientHello sent to the plain TCP port fails the magic cookie check.
        assert_eq!(
            stream_frame(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]),
            Frame::Invalid
        );
        // Text starting with a letter looks like ChannelData ("GET " on channel 0x4745,
        // "POST" on 0x504F); the connection layer refuses ChannelData before any STUN
        // message.
        assert_eq!(stream_frame(b"GET / HTTP/1.1\r\n"), Frame::Incomplete);
        assert_eq!(stream_frame(b"POST / HTTP/1.1\r\n"), Frame::Incomplete);
        assert_eq!(stream_frame(&[0xFF]), Frame::Invalid);
        assert_eq!(stream_frame(&[0x00, 0x01, 0x00, 0x03]), Frame::Invalid);
        assert_eq!(
            stream_frame(&[0x00, 0x01, 0x00, 0x00, 1, 2, 3, 4]),
            Frame::Invalid
        );
        assert_eq!(stream_frame(&[0x80, 0x00, 0x00, 0x00]), Frame::Invalid);
    }
}
