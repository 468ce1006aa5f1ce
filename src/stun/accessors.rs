//! Typed views of the attributes a TURN server reads, so the protocol core never slices
//! attribute bytes itself. Each accessor returns `None` when the attribute is absent; a
//! malformed value is `None` too where the RFC answers both the same way (400), and a
//! distinct value where it does not (an unknown address family is 440 or 443, not 400).

use std::net::SocketAddr;
use std::time::Duration;

use super::{decode_xor_address, AttrType, Message, PasswordAlgorithm, UnknownPasswordAlgorithm};

/// The family code of REQUESTED-ADDRESS-FAMILY and ADDITIONAL-ADDRESS-FAMILY (RFC 8656
/// §14.8, §14.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
    /// Any other value, or a value of the wrong length.
    Unknown,
}

impl AddressFamily {
    /// The family code on the wire (RFC 8656 §14.8): 0x01 IPv4, 0x02 IPv6.
    pub fn code(self) -> u8 {
        match self {
            AddressFamily::Ipv4 => 0x01,
            AddressFamily::Ipv6 => 0x02,
            AddressFamily::Unknown => 0x00,
        }
    }

    fn decode(value: &[u8]) -> Self {
        match value {
            [0x01, 0, 0, 0] => AddressFamily::Ipv4,
            [0x02, 0, 0, 0] => AddressFamily::Ipv6,
            _ => AddressFamily::Unknown,
        }
    }
}

/// EVEN-PORT's flags (RFC 8656 §14.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvenPort {
    /// The R bit: reserve the next port up as well.
    pub reserve_next: bool,
}

/// The flags of CHANGE-REQUEST (RFC 5780 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ChangeRequest {
    /// Answer from the other IP address ("A").
    pub change_ip: bool,
    /// Answer from the other port ("B").
    pub change_port: bool,
}

impl ChangeRequest {
    /// Whether either flag is set: without one, the request is answered as any other.
    pub fn any(self) -> bool {
        self.change_ip || self.change_port
    }
}

impl<'a> Message<'a> {
    /// CHANGE-REQUEST (RFC 5780 §7.2); `Some(None)` when present but not 4 bytes.
    pub fn change_request(&self) -> Option<Option<ChangeRequest>> {
        self.attribute(AttrType::CHANGE_REQUEST).map(|value| {
            let [_, _, _, flags]: [u8; 4] = value.try_into().ok()?;
            Some(ChangeRequest {
                change_ip: flags & 0x04 != 0,
                change_port: flags & 0x02 != 0,
            })
        })
    }

    /// RESPONSE-PORT (RFC 5780 §7.5); `Some(None)` when present but not 4 bytes.
    pub fn response_port(&self) -> Option<Option<u16>> {
        self.attribute(AttrType::RESPONSE_PORT)
            .map(|value| match value {
                [high, low, _, _] => Some(u16::from_be_bytes([*high, *low])),
                _ => None,
            })
    }

    /// The length of PADDING's value (RFC 5780 §7.6), whose bytes mean nothing.
    pub fn padding_len(&self) -> Option<usize> {
        self.attribute(AttrType::PADDING).map(<[u8]>::len)
    }

    /// The protocol number of REQUESTED-TRANSPORT (RFC 8656 §14.7); `None` when absent or
    /// malformed.
    pub fn requested_transport(&self) -> Option<u8> {
        match self.attribute(AttrType::REQUESTED_TRANSPORT)? {
            [protocol, _, _, _] => Some(*protocol),
            _ => None,
        }
    }

    pub fn requested_family(&self) -> Option<AddressFamily> {
        self.attribute(AttrType::REQUESTED_ADDRESS_FAMILY)
            .map(AddressFamily::decode)
    }

    pub fn additional_family(&self) -> Option<AddressFamily> {
        self.attribute(AttrType::ADDITIONAL_ADDRESS_FAMILY)
            .map(AddressFamily::decode)
    }

    /// Whether EVEN-PORT is present (RFC 8656 §14.6).
    pub fn has_even_port(&self) -> bool {
        self.attribute(AttrType::EVEN_PORT).is_some()
    }

    /// EVEN-PORT (RFC 8656 §14.6); an empty value is read as the R bit clear.
    pub fn even_port(&self) -> Option<EvenPort> {
        let value = self.attribute(AttrType::EVEN_PORT)?;
        Some(EvenPort {
            reserve_next: value.first().is_some_and(|flags| flags & 0x80 != 0),
        })
    }

    /// Whether RESERVATION-TOKEN is present (RFC 8656 §14.9).
    pub fn has_reservation_token(&self) -> bool {
        self.attribute(AttrType::RESERVATION_TOKEN).is_some()
    }

    /// The 8-byte value of RESERVATION-TOKEN (RFC 8656 §14.9); `None` when absent or of
    /// another length.
    pub fn reservation_token(&self) -> Option<[u8; 8]> {
        self.attribute(AttrType::RESERVATION_TOKEN)?.try_into().ok()
    }

    /// Whether DONT-FRAGMENT is present (RFC 8656 §14.8).
    pub fn has_dont_fragment(&self) -> bool {
        self.attribute(AttrType::DONT_FRAGMENT).is_some()
    }

    /// CONNECTION-ID (RFC 6062 §6.2.1); `None` when absent or malformed.
    pub fn connection_id(&self) -> Option<u32> {
        let raw: [u8; 4] = self.attribute(AttrType::CONNECTION_ID)?.try_into().ok()?;
        Some(u32::from_be_bytes(raw))
    }

    /// LIFETIME (RFC 8656 §14.2); `None` when absent or malformed.
    pub fn lifetime(&self) -> Option<Duration> {
        let raw: [u8; 4] = self.attribute(AttrType::LIFETIME)?.try_into().ok()?;
        Some(Duration::from_secs(u64::from(u32::from_be_bytes(raw))))
    }

    /// The number of CHANNEL-NUMBER (RFC 8656 §14.1); `None` when absent or malformed.
    pub fn channel_number(&self) -> Option<u16> {
        match self.attribute(AttrType::CHANNEL_NUMBER)? {
            [high, low, _, _] => Some(u16::from_be_bytes([*high, *low])),
            _ => None,
        }
    }

    /// The first XOR-PEER-ADDRESS (RFC 8656 §14.3); `None` when absent or malformed.
    pub fn xor_peer_address(&self) -> Option<SocketAddr> {
        let transaction = self.transaction_id();
        decode_xor_address(self.attribute(AttrType::XOR_PEER_ADDRESS)?, &transaction)
    }

    /// Every XOR-PEER-ADDRESS in order, `None` for each malformed one.
    pub fn xor_peer_addresses(&self) -> impl Iterator<Item = Option<SocketAddr>> + 'a {
        let transaction = self.transaction_id();
        self.attributes(AttrType::XOR_PEER_ADDRESS)
            .map(move |value| decode_xor_address(value, &transaction))
    }

    /// The first XOR-MAPPED-ADDRESS (RFC 8489 §14.2): the sender as the server saw it.
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        let transaction = self.transaction_id();
        decode_xor_address(self.attribute(AttrType::XOR_MAPPED_ADDRESS)?, &transaction)
    }

    /// Every XOR-RELAYED-ADDRESS (RFC 8656 §14.5) in order, malformed ones left out.
    pub fn xor_relayed_addresses(&self) -> impl Iterator<Item = SocketAddr> + 'a {
        let transaction = self.transaction_id();
        self.attributes(AttrType::XOR_RELAYED_ADDRESS)
            .filter_map(move |value| decode_xor_address(value, &transaction))
    }

    /// The code of ERROR-CODE (RFC 8489 §14.8), e.g. 401; `None` when absent or malformed.
    pub fn error_code(&self) -> Option<u16> {
        super::ErrorCode::decode_code(self.attribute(AttrType::ERROR_CODE)?)
    }

    /// The payload of DATA (RFC 8656 §14.4).
    pub fn data(&self) -> Option<&'a [u8]> {
        self.attribute(AttrType::DATA)
    }

    /// USERNAME (RFC 8489 §14.3), as sent.
    pub fn username(&self) -> Option<&'a [u8]> {
        self.attribute(AttrType::USERNAME)
    }

    /// REALM (RFC 8489 §14.9), as sent.
    pub fn realm(&self) -> Option<&'a [u8]> {
        self.attribute(AttrType::REALM)
    }

    /// NONCE (RFC 8489 §14.10), as sent.
    pub fn nonce(&self) -> Option<&'a [u8]> {
        self.attribute(AttrType::NONCE)
    }

    /// USERHASH (RFC 8489 §14.4): SHA-256(username ":" realm), sent instead of USERNAME;
    /// `Some(None)` when present but not 32 bytes.
    pub fn userhash(&self) -> Option<Option<&'a [u8; 32]>> {
        self.attribute(AttrType::USERHASH)
            .map(|value| value.try_into().ok())
    }

    /// The algorithm PASSWORD-ALGORITHM names (RFC 8489 §14.12), or the error for one this
    /// server does not know.
    pub fn password_algorithm(
        &self,
    ) -> Option<Result<PasswordAlgorithm, UnknownPasswordAlgorithm>> {
        self.attribute(AttrType::PASSWORD_ALGORITHM)
            .map(PasswordAlgorithm::decode)
    }

    /// PASSWORD-ALGORITHMS (RFC 8489 §14.11) as sent: a request echoes the server's list,
    /// and the server compares it byte for byte with what it offered.
    pub fn password_algorithms(&self) -> Option<&'a [u8]> {
        self.attribute(AttrType::PASSWORD_ALGORITHMS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{Class, MessageBuilder, Method, TransactionId};

    fn parsed(build: impl FnOnce(&mut MessageBuilder)) -> Vec<u8> {
        let mut b = MessageBuilder::new(Class::Request, Method::ALLOCATE, TransactionId([5; 12]));
        build(&mut b);
        b.finish()
    }

    #[test]
    fn typed_values_and_malformed_ones() {
        let peer: SocketAddr = "[2001:db8::9]:4242".parse().unwrap();
        let bytes = parsed(|b| {
            b.add(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                .add(AttrType::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0])
                .add(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[9, 0, 0, 0])
                .add(AttrType::LIFETIME, &600u32.to_be_bytes())
                .add(AttrType::CHANNEL_NUMBER, &[0x40, 0x01, 0, 0])
                .add_xor_address(AttrType::XOR_PEER_ADDRESS, peer)
                .add(AttrType::XOR_PEER_ADDRESS, &[0, 9])
                .add(AttrType::DATA, b"payload");
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.requested_transport(), Some(17));
        assert_eq!(m.requested_family(), Some(AddressFamily::Ipv6));
        assert_eq!(m.additional_family(), Some(AddressFamily::Unknown));
        assert_eq!(m.lifetime(), Some(Duration::from_secs(600)));
        assert_eq!(m.channel_number(), Some(0x4001));
        assert_eq!(m.xor_peer_address(), Some(peer));
        assert_eq!(
            m.xor_peer_addresses().collect::<Vec<_>>(),
            [Some(peer), None]
        );
        assert_eq!(m.data(), Some(&b"payload"[..]));
        assert!(!m.has_even_port() && !m.has_reservation_token());
        assert_eq!((m.even_port(), m.reservation_token()), (None, None));
        assert!(!m.has_dont_fragment());
        assert_eq!(m.username(), None);
        assert_eq!(m.userhash(), None);
        assert_eq!(m.password_algorithm(), None);

        let bytes = parsed(|b| {
            b.add(AttrType::REQUESTED_TRANSPORT, &[17])
                .add(AttrType::LIFETIME, &[1, 2])
                .add(AttrType::CHANNEL_NUMBER, &[0x40]);
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.requested_transport(), None);
        assert_eq!(m.lifetime(), None);
        assert_eq!(m.channel_number(), None);
    }

    #[test]
    fn even_port_reservation_token_and_dont_fragment() {
        let bytes = parsed(|b| {
            b.add(AttrType::EVEN_PORT, &[0x80])
                .add(AttrType::RESERVATION_TOKEN, &[1, 2, 3, 4, 5, 6, 7, 8])
                .add(AttrType::DONT_FRAGMENT, &[]);
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.even_port(), Some(EvenPort { reserve_next: true }));
        assert_eq!(m.reservation_token(), Some([1, 2, 3, 4, 5, 6, 7, 8]));
        assert!(m.has_dont_fragment());

        let bytes = parsed(|b| {
            b.add(AttrType::EVEN_PORT, &[0x7F])
                .add(AttrType::RESERVATION_TOKEN, &[1, 2, 3]);
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(
            m.even_port(),
            Some(EvenPort {
                reserve_next: false
            })
        );
        assert!(m.has_reservation_token());
        assert_eq!(m.reservation_token(), None, "a token is 8 bytes");
        let empty = parsed(|b| {
            b.add(AttrType::EVEN_PORT, &[]);
        });
        let m = Message::parse(&empty).unwrap();
        assert_eq!(
            m.even_port(),
            Some(EvenPort {
                reserve_next: false
            })
        );
    }

    #[test]
    fn nat_discovery_attributes() {
        let bytes = parsed(|b| {
            b.add(AttrType::CHANGE_REQUEST, &[0, 0, 0, 0x06])
                .add(AttrType::RESPONSE_PORT, &[0x12, 0x34, 0, 0])
                .add(AttrType::PADDING, &[0; 37]);
        });
        let m = Message::parse(&bytes).unwrap();
        let both = ChangeRequest {
            change_ip: true,
            change_port: true,
        };
        assert_eq!(m.change_request(), Some(Some(both)));
        assert_eq!(m.response_port(), Some(Some(0x1234)));
        assert_eq!(m.padding_len(), Some(37));

        let bytes = parsed(|b| {
            b.add(AttrType::CHANGE_REQUEST, &[0, 0, 4])
                .add(AttrType::RESPONSE_PORT, &[1]);
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.change_request(), Some(None));
        assert_eq!(m.response_port(), Some(None));
        assert_eq!(m.padding_len(), None);

        let bytes = parsed(|b| {
            b.add(AttrType::CHANGE_REQUEST, &[0, 0, 0, 0x04]);
        });
        let only_ip = Message::parse(&bytes).unwrap().change_request();
        assert_eq!(only_ip.flatten().map(ChangeRequest::any), Some(true));
        assert!(!ChangeRequest::default().any());
    }

    #[test]
    fn credential_attributes() {
        let bytes = parsed(|b| {
            b.add(AttrType::USERHASH, &[7; 32])
                .add_password_algorithm(PasswordAlgorithm::Sha256)
                .add_password_algorithms(&[PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5]);
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.userhash(), Some(Some(&[7; 32])));
        assert_eq!(m.password_algorithm(), Some(Ok(PasswordAlgorithm::Sha256)));
        assert_eq!(m.password_algorithms(), Some(&[0, 2, 0, 0, 0, 1, 0, 0][..]));

        let bytes = parsed(|b| {
            b.add(AttrType::USERHASH, &[7; 20])
                .add(AttrType::PASSWORD_ALGORITHM, &[0, 9, 0, 0]);
        });
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.userhash(), Some(None));
        assert_eq!(m.password_algorithm(), Some(Err(UnknownPasswordAlgorithm)));
    }

    #[test]
    fn response_addresses_and_error_code() {
        let mapped: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let relayed: [SocketAddr; 2] = [
            "203.0.113.5:50000".parse().unwrap(),
            "[2001:db8::5]:50002".parse().unwrap(),
        ];
        let mut b = MessageBuilder::new(Class::Success, Method::ALLOCATE, TransactionId([6; 12]));
        b.add_xor_address(AttrType::XOR_RELAYED_ADDRESS, relayed[0])
            .add(AttrType::XOR_RELAYED_ADDRESS, &[0, 7])
            .add_xor_address(AttrType::XOR_RELAYED_ADDRESS, relayed[1])
            .add_xor_address(AttrType::XOR_MAPPED_ADDRESS, mapped);
        let bytes = b.finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.xor_mapped_address(), Some(mapped));
        assert_eq!(m.xor_relayed_addresses().collect::<Vec<_>>(), relayed);
        assert_eq!(m.error_code(), None);

        let mut b = MessageBuilder::new(Class::Error, Method::ALLOCATE, TransactionId([6; 12]));
        b.add_error(crate::stun::ErrorCode::UNAUTHORIZED);
        let bytes = b.finish();
        assert_eq!(Message::parse(&bytes).unwrap().error_code(), Some(401));
    }
}
