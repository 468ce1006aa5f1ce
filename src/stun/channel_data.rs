//! ChannelData framing (RFC 8656 §12.4): a 4-byte header (channel number, length) and the
//! application data, parsed in place.

/// Length of the ChannelData header.
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;

/// One ChannelData message borrowed from a receive buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub channel: u16,
    pub payload: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Parses a datagram. Bytes beyond the stated length are padding and ignored; a length
    /// longer than the datagram, or a channel number outside 0x4000–0x7FFF (the numbers
    /// whose top bits say ChannelData, RFC 5766 §11), is `None`. Whether the number may be
    /// bound at all is the TURN core's business (`channel-numbers`).
    pub fn parse(bytes: &'a [u8]) -> Option<Self> {
        let header = bytes.get(..CHANNEL_DATA_HEADER_LEN)?;
        let channel = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if !crate::turn::CHANNEL_NUMBERS.contains(&channel) {
            return None;
        }
        let payload = bytes.get(CHANNEL_DATA_HEADER_LEN..CHANNEL_DATA_HEADER_LEN + len)?;
        Some(Self { channel, payload })
    }

    /// The header for `payload_len` bytes on `channel`.
    pub fn header(channel: u16, payload_len: u16) -> [u8; CHANNEL_DATA_HEADER_LEN] {
        let c = channel.to_be_bytes();
        let l = payload_len.to_be_bytes();
        [c[0], c[1], l[0], l[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_header_and_ignores_padding() {
        let bytes = [0x40, 0x01, 0x00, 0x03, b'a', b'b', b'c', 0];
        let cd = ChannelData::parse(&bytes).unwrap();
        assert_eq!(cd.channel, 0x4001);
        assert_eq!(cd.payload, b"abc");
    }

    #[test]
    fn rejects_overlong_length_and_reserved_channels() {
        assert_eq!(ChannelData::parse(&[0x40, 0x01, 0x00, 0x09, 1, 2]), None);
        assert_eq!(ChannelData::parse(&[0x80, 0x00, 0x00, 0x00]), None);
        assert_eq!(ChannelData::parse(&[0x3F, 0xFF, 0x00, 0x00]), None);
        assert_eq!(ChannelData::parse(&[0x40, 0x01, 0x00]), None);
    }

    #[test]
    fn accepts_the_rfc_5766_range() {
        let cd = ChannelData::parse(&[0x7F, 0xFF, 0x00, 0x01, 9]).unwrap();
        assert_eq!((cd.channel, cd.payload), (0x7FFF, &[9][..]));
        assert!(ChannelData::parse(&[0x50, 0x00, 0x00, 0x00]).is_some());
    }

    #[test]
    fn header_round_trips() {
        let h = ChannelData::header(0x4FFF, 1200);
        let mut bytes = h.to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 1200));
        assert_eq!(ChannelData::parse(&bytes).unwrap().payload.len(), 1200);
    }
}
