//! Builds STUN messages into a byte vector, attribute by attribute.

use std::net::SocketAddr;

use super::accessors::AddressFamily;
use super::attr::{encode_plain_address, encode_xor_address, AttrType, ErrorCode};
use super::integrity::{self, IntegrityAlgorithm};
use super::password::PasswordAlgorithm;
use super::{join_message_type, Class, Dialect, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Writes one message. The header's length field is kept current after every attribute, so
/// integrity and fingerprint can be computed at any point.
pub struct MessageBuilder {
    bytes: Vec<u8>,
    transaction_id: TransactionId,
    dialect: Dialect,
}

impl MessageBuilder {
    pub fn new(class: Class, method: Method, transaction_id: TransactionId) -> Self {
        Self::with_buffer(Vec::with_capacity(128), class, method, transaction_id)
    }

    /// Reuses `buffer`'s allocation (its contents are discarded).
    pub fn with_buffer(
        buffer: Vec<u8>,
        class: Class,
        method: Method,
        transaction_id: TransactionId,
    ) -> Self {
        Self::in_dialect(buffer, Dialect::Rfc8489, class, method, transaction_id)
    }

    /// A message of `dialect`: for [`Dialect::Rfc3489`] the header carries the first bytes of
    /// the classic transaction id where the cookie would be, and ERROR-CODE and
    /// UNKNOWN-ATTRIBUTES follow RFC 3489's length rules. Add no XOR attributes to those.
    pub fn in_dialect(
        mut buffer: Vec<u8>,
        dialect: Dialect,
        class: Class,
        method: Method,
        transaction_id: TransactionId,
    ) -> Self {
        buffer.clear();
        buffer.extend_from_slice(&join_message_type(class, method).to_be_bytes());
        buffer.extend_from_slice(&[0, 0]);
        match dialect {
            Dialect::Rfc8489 => buffer.extend_from_slice(&MAGIC_COOKIE.to_be_bytes()),
            Dialect::Rfc3489 { id_start } => buffer.extend_from_slice(&id_start),
        }
        buffer.extend_from_slice(&transaction_id.0);
        Self {
            bytes: buffer,
            transaction_id,
            dialect,
        }
    }

    pub fn add(&mut self, kind: AttrType, value: &[u8]) -> &mut Self {
        self.add_with(kind, |out| out.extend_from_slice(value))
    }

    pub fn add_u32(&mut self, kind: AttrType, value: u32) -> &mut Self {
        self.add(kind, &value.to_be_bytes())
    }

    pub fn add_xor_address(&mut self, kind: AttrType, addr: SocketAddr) -> &mut Self {
        let tid = self.transaction_id;
        self.add_with(kind, |out| encode_xor_address(addr, &tid, out))
    }

    /// An address attribute that is not XORed (ALTERNATE-SERVER, MAPPED-ADDRESS).
    pub fn add_plain_address(&mut self, kind: AttrType, addr: SocketAddr) -> &mut Self {
        self.add_with(kind, |out| encode_plain_address(addr, out))
    }

    pub fn add_error(&mut self, error: ErrorCode) -> &mut Self {
        let classic = self.dialect != Dialect::Rfc8489;
        self.add_with(AttrType::ERROR_CODE, |out| {
            let class = (error.code / 100) as u8;
            let number = (error.code % 100) as u8;
            out.extend_from_slice(&[0, 0, class, number]);
            out.extend_from_slice(error.reason.as_bytes());
            if classic {
                // RFC 3489 §11.2.9: the reason's length is a multiple of 4, padded with spaces.
                let short = (4 - error.reason.len() % 4) % 4;
                out.extend(std::iter::repeat_n(b' ', short));
            }
        })
    }

    /// ADDRESS-ERROR-CODE: why the relay of one address family was not allocated
    /// (RFC 8656 §14.10).
    pub fn add_address_error(&mut self, family: AddressFamily, error: ErrorCode) -> &mut Self {
        self.add_with(AttrType::ADDRESS_ERROR_CODE, |out| {
            out.extend_from_slice(&[
                family.code(),
                0,
                (error.code / 100) as u8,
                (error.code % 100) as u8,
            ]);
            out.extend_from_slice(error.reason.as_bytes());
        })
    }

    pub fn add_unknown_attributes(&mut self, kinds: &[u16]) -> &mut Self {
        let classic = self.dialect != Dialect::Rfc8489;
        self.add_with(AttrType::UNKNOWN_ATTRIBUTES, |out| {
            for kind in kinds {
                out.extend_from_slice(&kind.to_be_bytes());
            }
            // RFC 3489 §11.2.10: an odd list repeats one type, so its length is a multiple of 4.
            if let (true, Some(last)) = (classic && kinds.len() % 2 == 1, kinds.last()) {
                out.extend_from_slice(&last.to_be_bytes());
            }
        })
    }

    /// SOFTWARE (RFC 8489 §14.14). Classic STUN parsers want text in multiples of 4 bytes,
    /// so there the value is padded with spaces, as RFC 3489 §11.2.9 pads reason phrases.
    pub fn add_software(&mut self, software: &str) -> &mut Self {
        let classic = self.dialect != Dialect::Rfc8489;
        self.add_with(AttrType::SOFTWARE, |out| {
            out.extend_from_slice(software.as_bytes());
            if classic {
                let short = (4 - software.len() % 4) % 4;
                out.extend(std::iter::repeat_n(b' ', short));
            }
        })
    }

    /// PADDING of `len` zero bytes (RFC 5780 §7.6).
    pub fn add_padding(&mut self, len: usize) -> &mut Self {
        self.add_with(AttrType::PADDING, |out| out.resize(out.len() + len, 0))
    }

    /// PASSWORD-ALGORITHM: the algorithm a request's key was derived with (RFC 8489 §14.12).
    pub fn add_password_algorithm(&mut self, algorithm: PasswordAlgorithm) -> &mut Self {
        self.add(AttrType::PASSWORD_ALGORITHM, &algorithm.encode())
    }

    /// PASSWORD-ALGORITHMS: the algorithms a server offers, in order of preference (RFC 8489
    /// §14.11); a client echoes the list it was offered.
    pub fn add_password_algorithms(&mut self, algorithms: &[PasswordAlgorithm]) -> &mut Self {
        self.add(
            AttrType::PASSWORD_ALGORITHMS,
            &PasswordAlgorithm::encode_list(algorithms),
        )
    }

    /// Appends MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 computed with `key`.
    pub fn add_integrity(&mut self, algorithm: IntegrityAlgorithm, key: &[u8]) -> &mut Self {
        let tag_len = algorithm.tag_len();
        let tag = integrity::compute(algorithm, key, &self.bytes, tag_len);
        let kind = match algorithm {
            IntegrityAlgorithm::Sha1 => AttrType::MESSAGE_INTEGRITY,
            IntegrityAlgorithm::Sha256 => AttrType::MESSAGE_INTEGRITY_SHA256,
        };
        self.add(kind, tag.as_ref())
    }

    /// Appends FINGERPRINT; it must be the last attribute.
    pub fn add_fingerprint(&mut self) -> &mut Self {
        // The length field must count the FINGERPRINT before the CRC is taken.
        self.set_length(self.bytes.len() - HEADER_LEN + 8);
        let crc = integrity::fingerprint(&self.bytes);
        self.add_u32(AttrType::FINGERPRINT, crc)
    }

    pub fn finish(self) -> Vec<u8> {
        self.bytes
    }

    fn add_with(&mut self, kind: AttrType, write: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        let header_at = self.bytes.len();
        self.bytes.extend_from_slice(&kind.0.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0]);
        write(&mut self.bytes);
        let value_len = self.bytes.len() - header_at - 4;
        self.bytes[header_at + 2..header_at + 4].copy_from_slice(&(value_len as u16).to_be_bytes());
        let padding = (4 - value_len % 4) % 4;
        self.bytes.extend(std::iter::repeat_n(0u8, padding));
        self.set_length(self.bytes.len() - HEADER_LEN);
        self
    }

    fn set_length(&mut self, length: usize) {
        self.bytes[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::Message;
    use super::*;

    #[test]
    fn built_message_parses_and_verifies() {
        let tid = TransactionId([1; 12]);
        let key = b"0123456789abcdef";
        let mut b = MessageBuilder::new(Class::Success, Method::ALLOCATE, tid);
        b.add_xor_address(
            AttrType::XOR_RELAYED_ADDRESS,
            "203.0.113.5:50000".parse().unwrap(),
        )
        .add_u32(AttrType::LIFETIME, 600)
        .add(AttrType::SOFTWARE, b"rendez")
        .add_integrity(IntegrityAlgorithm::Sha1, key)
        .add_fingerprint();
        let bytes = b.finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.class(), Class::Success);
        assert_eq!(m.method(), Method::ALLOCATE);
        assert!(m.has_fingerprint());
        assert_eq!(m.verify_integrity(key), Some(IntegrityAlgorithm::Sha1));
        assert_eq!(m.verify_integrity(b"wrong key"), None);
        assert_eq!(m.attribute(AttrType::SOFTWARE), Some(&b"rendez"[..]));
        assert_eq!(
            m.attribute(AttrType::LIFETIME),
            Some(&600u32.to_be_bytes()[..])
        );
    }

    #[test]
    fn classic_messages_echo_the_whole_transaction_id_and_pad_as_rfc_3489_asks() {
        let dialect = Dialect::Rfc3489 {
            id_start: [1, 2, 3, 4],
        };
        let tid = TransactionId([5; 12]);
        let mut b =
            MessageBuilder::in_dialect(Vec::new(), dialect, Class::Error, Method::BINDING, tid);
        b.add_error(ErrorCode::UNKNOWN_ATTRIBUTE)
            .add_unknown_attributes(&[0x0002]);
        let bytes = b.finish();
        assert_eq!(&bytes[4..8], &[1, 2, 3, 4]);
        // Only a classic Binding request parses without the cookie; a response does not.
        assert_eq!(
            Message::parse(&bytes).err(),
            Some(super::super::ParseError::NotStun)
        );
        // ERROR-CODE: 4 + "Unknown Attribute" (17) padded with spaces to 20.
        assert_eq!(&bytes[20..24], &[0x00, 0x09, 0, 24]);
        assert_eq!(&bytes[45..48], b"   ");
        // UNKNOWN-ATTRIBUTES: the one type twice.
        assert_eq!(&bytes[48..56], &[0x00, 0x0A, 0, 4, 0, 2, 0, 2]);

        let mut b =
            MessageBuilder::in_dialect(Vec::new(), dialect, Class::Request, Method::BINDING, tid);
        b.add(AttrType::CHANGE_REQUEST, &[0, 0, 0, 0]);
        let bytes = b.finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.dialect(), dialect);
        assert_eq!(m.transaction_id(), tid);
        let mut b =
            MessageBuilder::in_dialect(Vec::new(), dialect, Class::Request, Method::ALLOCATE, tid);
        b.add(AttrType::LIFETIME, &[0, 0, 0, 1]);
        let allocate = b.finish();
        assert!(Message::parse(&allocate).is_err(), "TURN needs the cookie");
    }

    #[test]
    fn sha256_integrity_verifies() {
        let key = b"k";
        let mut b = MessageBuilder::new(Class::Request, Method::REFRESH, TransactionId([9; 12]));
        b.add_integrity(IntegrityAlgorithm::Sha256, key);
        let bytes = b.finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.verify_integrity(key), Some(IntegrityAlgorithm::Sha256));
    }

    #[test]
    fn attributes_after_the_sha256_tag_are_not_covered() {
        let key = b"k";
        let mut b = MessageBuilder::new(Class::Request, Method::REFRESH, TransactionId([2; 12]));
        b.add_u32(AttrType::LIFETIME, 600)
            .add_integrity(IntegrityAlgorithm::Sha256, key);
        // An attacker appends a LIFETIME and a bogus SHA-1 tag after the real SHA-256 one.
        b.add_u32(AttrType::LIFETIME, 0)
            .add(AttrType::MESSAGE_INTEGRITY, &[0; 20]);
        let bytes = b.finish();
        let m = Message::parse(&bytes).unwrap();
        assert_eq!(m.verify_integrity(key), Some(IntegrityAlgorithm::Sha256));
        let lifetimes: Vec<&[u8]> = m.attributes(AttrType::LIFETIME).collect();
        assert_eq!(
            lifetimes,
            vec![&600u32.to_be_bytes()[..]],
            "the injected one is ignored"
        );
    }

    #[test]
    fn flipped_bit_breaks_fingerprint() {
        let mut b = MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([3; 12]));
        b.add(AttrType::SOFTWARE, b"x").add_fingerprint();
        let mut bytes = b.finish();
        bytes[21] ^= 1;
        assert!(Message::parse(&bytes).is_err());
    }
}
