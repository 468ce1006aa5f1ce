//! A borrowed, validated view of one STUN message.

use super::attr::AttrType;
use super::integrity::{self, IntegrityAlgorithm};
use super::{split_message_type, Class, Dialect, Method, TransactionId, HEADER_LEN, MAGIC_COOKIE};

/// Why bytes are not a usable STUN message. Callers count these and drop the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("shorter than a STUN header")]
    TooShort,
    #[error("not a STUN message (top bits or magic cookie)")]
    NotStun,
    #[error("length field disagrees with the datagram size")]
    BadLength,
    #[error("attribute runs past the end of the message")]
    TruncatedAttribute,
    #[error("attribute after FINGERPRINT")]
    AttributeAfterFingerprint,
    #[error("FINGERPRINT does not match")]
    BadFingerprint,
}

/// The only message type accepted without the magic cookie: a Binding request.
const CLASSIC_BINDING_REQUEST: u16 = 0x0001;

/// A STUN message whose framing, attribute lengths and FINGERPRINT have been checked.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    class: Class,
    method: Method,
    transaction_id: TransactionId,
    dialect: Dialect,
    /// Offset of the first MESSAGE-INTEGRITY attribute. Attributes after the first integrity
    /// attribute of either kind are ignored (RFC 8489 §14.5, §14.6).
    integrity_at: Option<usize>,
    integrity_sha256_at: Option<usize>,
    has_fingerprint: bool,
}

impl<'a> Message<'a> {
    /// Parses `bytes`, which must be exactly one message (a whole datagram, or one frame
    /// cut from a stream by its length field).
    ///
    /// Without the magic cookie only a Binding request is taken: the classic STUN of
    /// RFC 3489 (see [`Dialect::Rfc3489`]), which SIP phones and NAT-type tools still send.
    /// Every other method is RFC 8489 or later and must carry the cookie.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        if bytes.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        let raw_type = u16::from_be_bytes([bytes[0], bytes[1]]);
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        let cookie = [bytes[4], bytes[5], bytes[6], bytes[7]];
        let dialect = if u32::from_be_bytes(cookie) == MAGIC_COOKIE {
            Dialect::Rfc8489
        } else {
            Dialect::Rfc3489 { id_start: cookie }
        };
        let classic_binding = raw_type == CLASSIC_BINDING_REQUEST;
        if raw_type & 0xC000 != 0 || (dialect != Dialect::Rfc8489 && !classic_binding) {
            return Err(ParseError::NotStun);
        }
        if length % 4 != 0 || HEADER_LEN + length != bytes.len() {
            return Err(ParseError::BadLength);
        }
        let (class, method) = split_message_type(raw_type);
        let mut transaction_id = TransactionId::default();
        transaction_id.0.copy_from_slice(&bytes[8..20]);

        let mut message = Message {
            bytes,
            class,
            method,
            transaction_id,
            dialect,
            integrity_at: None,
            integrity_sha256_at: None,
            has_fingerprint: false,
        };
        for attribute in RawAttributes::new(bytes) {
            let (offset, kind, value) = attribute?;
            if message.has_fingerprint {
                return Err(ParseError::AttributeAfterFingerprint);
            }
            match kind {
                AttrType::MESSAGE_INTEGRITY if message.integrity_at.is_none() => {
                    message.integrity_at = Some(offset);
                }
                AttrType::MESSAGE_INTEGRITY_SHA256 if message.integrity_sha256_at.is_none() => {
                    message.integrity_sha256_at = Some(offset);
                }
                AttrType::FINGERPRINT => {
                    if !integrity::fingerprint_matches(&bytes[..offset], value) {
                        return Err(ParseError::BadFingerprint);
                    }
                    message.has_fingerprint = true;
                }
                _ => {}
            }
        }
        Ok(message)
    }

    pub fn class(&self) -> Class {
        self.class
    }

    pub fn method(&self) -> Method {
        self.method
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.transaction_id
    }

    /// RFC 8489 (magic cookie) or the classic STUN of RFC 3489.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub fn has_fingerprint(&self) -> bool {
        self.has_fingerprint
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity_at.is_some() || self.integrity_sha256_at.is_some()
    }

    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The first value of attribute `kind` among those covered by integrity.
    pub fn attribute(&self, kind: AttrType) -> Option<&'a [u8]> {
        self.attributes(kind).next()
    }

    /// Every value of attribute `kind` (CreatePermission may carry several XOR-PEER-ADDRESS).
    pub fn attributes(&self, kind: AttrType) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.covered_attributes()
            .filter(move |(k, _)| *k == kind)
            .map(|(_, value)| value)
    }

    /// Comprehension-required attribute types this server does not understand.
    /// Whether [`Message::unknown_required_attributes`] would be non-empty, without
    /// allocating (for the Send indication hot path).
    pub fn has_unknown_required_attributes(&self) -> bool {
        self.covered_attributes()
            .any(|(kind, _)| kind.is_comprehension_required() && !kind.is_understood())
    }

    pub fn unknown_required_attributes(&self) -> Vec<u16> {
        let mut unknown: Vec<u16> = self
            .covered_attributes()
            .map(|(kind, _)| kind)
            .filter(|kind| kind.is_comprehension_required() && !kind.is_understood())
            .map(|kind| kind.0)
            .collect();
        unknown.dedup();
        unknown
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 if present, else MESSAGE-INTEGRITY, with `key`
    /// (RFC 8489 §14.5, §14.6). Returns the algorithm that matched.
    pub fn verify_integrity(&self, key: &[u8]) -> Option<IntegrityAlgorithm> {
        if let Some(at) = self.integrity_sha256_at {
            let value = self.value_at(at)?;
            return integrity::verify(IntegrityAlgorithm::Sha256, key, &self.bytes[..at], value)
                .then_some(IntegrityAlgorithm::Sha256);
        }
        let at = self.integrity_at?;
        let value = self.value_at(at)?;
        integrity::verify(IntegrityAlgorithm::Sha1, key, &self.bytes[..at], value)
            .then_some(IntegrityAlgorithm::Sha1)
    }

    /// Attributes before the first integrity attribute: the only ones a receiver may act on.
    fn covered_attributes(&self) -> impl Iterator<Item = (AttrType, &'a [u8])> + 'a {
        // Whichever integrity attribute comes first ends what the tag covers: attributes
        // between MESSAGE-INTEGRITY-SHA256 and a later MESSAGE-INTEGRITY are not
        // authenticated and must be ignored (RFC 8489 §14.6).
        let end = [self.integrity_at, self.integrity_sha256_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.bytes.len());
        // Parse already validated every attribute, so errors cannot occur here; `flatten`
        // keeps this total anyway.
        RawAttributes::new(&self.bytes[..end])
            .flatten()
            .map(|(_, kind, value)| (kind, value))
    }

    fn value_at(&self, offset: usize) -> Option<&'a [u8]> {
        RawAttributes::new(self.bytes)
            .flatten()
            .find(|(at, _, _)| *at == offset)
            .map(|(_, _, value)| value)
    }
}

/// Iterates `(offset, type, value)` over the attributes after the header, checking that each
/// fits. `bytes` starts with the message header.
struct RawAttributes<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> RawAttributes<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            offset: HEADER_LEN,
        }
    }
}

impl<'a> Iterator for RawAttributes<'a> {
    type Item = Result<(usize, AttrType, &'a [u8]), ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        let Some(header) = rest.get(..4) else {
            self.offset = self.bytes.len();
            return Some(Err(ParseError::TruncatedAttribute));
        };
        let kind = AttrType(u16::from_be_bytes([header[0], header[1]]));
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let padded = (len + 3) & !3;
        let Some(value) = rest.get(4..4 + len) else {
            self.offset = self.bytes.len();
            return Some(Err(ParseError::TruncatedAttribute));
        };
        let start = self.offset;
        // Padding may be cut off only at the very end of a truncated buffer; a whole message
        // always has it, which the length%4 check in `parse` guarantees.
        self.offset = (self.offset + 4 + padded).min(self.bytes.len());
        Some(Ok((start, kind, value)))
    }
}
