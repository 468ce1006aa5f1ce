//! Framing a peer's datagram for its client in place: the I/O layer receives the payload
//! after [`PEER_HEADROOM`] spare bytes, the core writes the ChannelData header or the Data
//! indication's header and attributes just before it (and padding after it), and the I/O
//! layer sends the framed range straight from its receive buffer. No copy, no allocation.

use std::net::SocketAddr;
use std::ops::Range;

use crate::stun::{xor_address_value, ChannelData, TransactionId, MAGIC_COOKIE};

/// Room the core needs before a peer's payload: a STUN header (20), XOR-PEER-ADDRESS for
/// IPv6 (24) and the DATA attribute header (4).
pub const PEER_HEADROOM: usize = 48;
/// Room the core needs after a peer's payload: padding to a 4-byte boundary.
pub const PEER_TAILROOM: usize = 3;

/// Data indication message type (RFC 8656 §11.4): method 0x007, class indication.
const DATA_INDICATION: u16 = 0x0017;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const DATA: u16 = 0x0013;

pub(super) enum ClientFraming {
    Channel(u16),
    Indication {
        peer: SocketAddr,
        transaction: TransactionId,
    },
}

/// Frames `buffer[headroom..headroom + len]` and returns the range to send, or `None` when
/// the buffer lacks the room or the payload is too long to frame.
pub(super) fn frame_in_place(
    buffer: &mut [u8],
    headroom: usize,
    len: usize,
    framing: ClientFraming,
    stream: bool,
) -> Option<Range<usize>> {
    let padding = (4 - len % 4) % 4;
    let payload_end = headroom.checked_add(len)?;
    if buffer.len() < payload_end + padding || len > usize::from(u16::MAX) - PEER_HEADROOM {
        return None;
    }
    let mut prefix = [0u8; PEER_HEADROOM];
    let (prefix_len, padding) = match framing {
        ClientFraming::Channel(channel) => {
            prefix[..4].copy_from_slice(&ChannelData::header(channel, len as u16));
            // Only stream transports pad ChannelData (RFC 8656 §12.5).
            (4, if stream { padding } else { 0 })
        }
        ClientFraming::Indication { peer, transaction } => {
            let (address, address_len) = xor_address_value(peer, &transaction);
            let attributes_len = 4 + address_len + 4 + len + padding;
            prefix[0..2].copy_from_slice(&DATA_INDICATION.to_be_bytes());
            prefix[2..4].copy_from_slice(&(attributes_len as u16).to_be_bytes());
            prefix[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
            prefix[8..20].copy_from_slice(&transaction.0);
            prefix[20..22].copy_from_slice(&XOR_PEER_ADDRESS.to_be_bytes());
            prefix[22..24].copy_from_slice(&(address_len as u16).to_be_bytes());
            prefix[24..24 + address_len].copy_from_slice(&address[..address_len]);
            let data_at = 24 + address_len;
            prefix[data_at..data_at + 2].copy_from_slice(&DATA.to_be_bytes());
            prefix[data_at + 2..data_at + 4].copy_from_slice(&(len as u16).to_be_bytes());
            (data_at + 4, padding)
        }
    };
    let start = headroom.checked_sub(prefix_len)?;
    buffer[start..headroom].copy_from_slice(&prefix[..prefix_len]);
    buffer[payload_end..payload_end + padding].fill(0);
    Some(start..payload_end + padding)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{decode_xor_address, AttrType, Class, Message, Method};

    fn buffer_with(payload: &[u8]) -> Vec<u8> {
        let mut buffer = vec![0xEE; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        buffer[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        buffer
    }

    #[test]
    fn data_indication_framed_in_place_parses() {
        for peer in ["198.51.100.7:4000", "[2001:db8::7]:4000"] {
            let peer: SocketAddr = peer.parse().unwrap();
            for payload in [&b""[..], b"a", b"abcd", b"hello"] {
                let mut buffer = buffer_with(payload);
                let transaction = TransactionId([3; 12]);
                let framing = ClientFraming::Indication { peer, transaction };
                let range =
                    frame_in_place(&mut buffer, PEER_HEADROOM, payload.len(), framing, false)
                        .unwrap();
                let m = Message::parse(&buffer[range]).unwrap();
                assert_eq!((m.class(), m.method()), (Class::Indication, Method::DATA));
                assert_eq!(m.attribute(AttrType::DATA), Some(payload));
                let addr = m.attribute(AttrType::XOR_PEER_ADDRESS).unwrap();
                assert_eq!(decode_xor_address(addr, &transaction), Some(peer));
            }
        }
    }

    #[test]
    fn channel_data_is_padded_only_on_streams() {
        let mut buffer = buffer_with(b"hello");
        let range = frame_in_place(
            &mut buffer,
            PEER_HEADROOM,
            5,
            ClientFraming::Channel(0x4001),
            false,
        );
        assert_eq!(
            &buffer[range.unwrap()],
            &[0x40, 0x01, 0, 5, b'h', b'e', b'l', b'l', b'o']
        );
        let mut buffer = buffer_with(b"hello");
        let range = frame_in_place(
            &mut buffer,
            PEER_HEADROOM,
            5,
            ClientFraming::Channel(0x4001),
            true,
        )
        .unwrap();
        assert_eq!(range.len(), 12);
        assert_eq!(&buffer[range][9..], &[0, 0, 0]);
    }

    #[test]
    fn too_little_room_is_refused_not_a_panic() {
        let mut small = vec![0u8; 10];
        assert!(frame_in_place(&mut small, 2, 5, ClientFraming::Channel(0x4000), false).is_none());
        let mut no_tail = vec![0u8; PEER_HEADROOM + 5];
        let framing = ClientFraming::Indication {
            peer: "192.0.2.1:1".parse().unwrap(),
            transaction: TransactionId::default(),
        };
        assert!(frame_in_place(&mut no_tail, PEER_HEADROOM, 5, framing, false).is_none());
    }
}
