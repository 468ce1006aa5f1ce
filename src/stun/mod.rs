//! The STUN/TURN wire format (RFC 8489, RFC 8656): parse and build messages, verify
//! MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT, derive long-term keys (MD5, SHA-256) and
//! USERHASH, and the 4-byte ChannelData framing.
//!
//! The parser borrows the datagram and never panics: every length is checked before it is
//! used, and anything malformed is a [`ParseError`] that the caller counts and drops.
//! We keep this codec ourselves rather than wrap `stun-types`: that crate logs at `warn` for
//! every malformed packet (a log flood anyone on the network can trigger), guards its HMAC
//! state with a mutex, and cannot take a precomputed long-term key. Everything outside this
//! folder sees only the small API below, so a swap stays local.

mod accessors;
mod attr;
mod builder;
mod channel_data;
mod framing;
mod integrity;
mod message;
mod password;

pub use accessors::{AddressFamily, ChangeRequest, EvenPort};
pub use attr::{decode_plain_address, decode_xor_address, xor_address_value, AttrType, ErrorCode};
pub use builder::MessageBuilder;
pub use channel_data::{ChannelData, CHANNEL_DATA_HEADER_LEN};
pub use framing::{stream_frame, Frame};
pub(crate) use integrity::constant_time_eq;
pub use integrity::IntegrityAlgorithm;
pub use message::{Message, ParseError};
pub use password::{
    long_term_key, userhash, LongTermKey, PasswordAlgorithm, UnknownPasswordAlgorithm,
};

/// The fixed value in every STUN header (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// STUN header length in bytes (RFC 8489 §5).
pub const HEADER_LEN: usize = 20;

/// The 96-bit transaction id that pairs a response with its request.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct TransactionId(pub [u8; 12]);

/// Which STUN a message speaks.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Dialect {
    /// RFC 8489 (and RFC 5389): the magic cookie, then a 96-bit transaction id.
    #[default]
    Rfc8489,
    /// Classic STUN (RFC 3489): a 128-bit transaction id whose first 32 bits stand where the
    /// cookie would, echoed in the response. Only Binding requests come this way; their
    /// answers carry MAPPED-ADDRESS, never the XOR attributes of later RFCs.
    Rfc3489 {
        /// The first 4 bytes of the 128-bit transaction id.
        id_start: [u8; 4],
    },
}

/// The class bits of the message type (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    Request,
    Indication,
    Success,
    Error,
}

/// STUN and TURN methods this server knows (RFC 8489 §18.2, RFC 8656 §17).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct Method(pub u16);

impl Method {
    pub const BINDING: Method = Method(0x001);
    pub const ALLOCATE: Method = Method(0x003);
    pub const REFRESH: Method = Method(0x004);
    pub const SEND: Method = Method(0x006);
    pub const DATA: Method = Method(0x007);
    pub const CREATE_PERMISSION: Method = Method(0x008);
    pub const CHANNEL_BIND: Method = Method(0x009);
    /// RFC 6062 §6.1: TCP relays.
    pub const CONNECT: Method = Method(0x00A);
    pub const CONNECTION_BIND: Method = Method(0x00B);
    pub const CONNECTION_ATTEMPT: Method = Method(0x00C);
}

/// Splits a 14-bit message type field into class and method (RFC 8489 §5, figure 3).
pub(crate) fn split_message_type(raw: u16) -> (Class, Method) {
    let class = match ((raw >> 7) & 0b10) | ((raw >> 4) & 0b1) {
        0b00 => Class::Request,
        0b01 => Class::Indication,
        0b10 => Class::Success,
        _ => Class::Error,
    };
    let method = (raw & 0x000F) | ((raw >> 1) & 0x0070) | ((raw >> 2) & 0x0F80);
    (class, Method(method))
}

/// Joins class and method into the 14-bit message type field.
pub(crate) fn join_message_type(class: Class, method: Method) -> u16 {
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::Success => 0b10,
        Class::Error => 0b11,
    };
    let m = method.0;
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b1) << 4) | ((c & 0b10) << 7)
}

/// What the first bytes of a datagram say it is (RFC 8656 §12: the top two bits tell STUN
/// from ChannelData).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Framing {
    Stun,
    ChannelData,
    Other,
}

pub fn classify(bytes: &[u8]) -> Framing {
    match bytes.first().map(|b| b >> 6) {
        Some(0b00) => Framing::Stun,
        Some(0b01) => Framing::ChannelData,
        _ => Framing::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_round_trips_for_every_class_and_method() {
        for method in [0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0xFFF] {
            for class in [
                Class::Request,
                Class::Indication,
                Class::Success,
                Class::Error,
            ] {
                let raw = join_message_type(class, Method(method));
                assert_eq!(split_message_type(raw), (class, Method(method)));
            }
        }
        // Known encodings from RFC 8489 §5 / RFC 8656.
        assert_eq!(join_message_type(Class::Request, Method::BINDING), 0x0001);
        assert_eq!(join_message_type(Class::Success, Method::BINDING), 0x0101);
        assert_eq!(join_message_type(Class::Error, Method::ALLOCATE), 0x0113);
        assert_eq!(join_message_type(Class::Indication, Method::DATA), 0x0017);
    }
}
