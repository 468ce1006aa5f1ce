//! Attribute types and the value encodings that need more than a byte copy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{TransactionId, MAGIC_COOKIE};

/// Attribute type codes (RFC 8489 §18.3, RFC 8656 §18, RFC 6156, RFC 8489 §14; RFC 5780 §7
/// and RFC 3489 §11.2 for NAT behaviour discovery).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub struct AttrType(pub u16);

impl AttrType {
    pub const MAPPED_ADDRESS: AttrType = AttrType(0x0001);
    /// RFC 3489's RESPONSE-ADDRESS: answer to any address named. Never understood: it would
    /// let anyone aim responses at a third party.
    pub const RESPONSE_ADDRESS: AttrType = AttrType(0x0002);
    /// RFC 5780 §7.2 (and RFC 3489): answer from the other IP and/or port.
    pub const CHANGE_REQUEST: AttrType = AttrType(0x0003);
    /// RFC 3489 §11.2.5: where the response was sent from (RESPONSE-ORIGIN's forerunner).
    pub const SOURCE_ADDRESS: AttrType = AttrType(0x0004);
    /// RFC 3489 §11.2.3: the address CHANGE-REQUEST would answer from (OTHER-ADDRESS's
    /// forerunner).
    pub const CHANGED_ADDRESS: AttrType = AttrType(0x0005);
    pub const USERNAME: AttrType = AttrType(0x0006);
    pub const MESSAGE_INTEGRITY: AttrType = AttrType(0x0008);
    pub const ERROR_CODE: AttrType = AttrType(0x0009);
    pub const UNKNOWN_ATTRIBUTES: AttrType = AttrType(0x000A);
    pub const CHANNEL_NUMBER: AttrType = AttrType(0x000C);
    pub const LIFETIME: AttrType = AttrType(0x000D);
    pub const XOR_PEER_ADDRESS: AttrType = AttrType(0x0012);
    pub const DATA: AttrType = AttrType(0x0013);
    pub const REALM: AttrType = AttrType(0x0014);
    pub const NONCE: AttrType = AttrType(0x0015);
    pub const XOR_RELAYED_ADDRESS: AttrType = AttrType(0x0016);
    pub const REQUESTED_ADDRESS_FAMILY: AttrType = AttrType(0x0017);
    pub const EVEN_PORT: AttrType = AttrType(0x0018);
    pub const REQUESTED_TRANSPORT: AttrType = AttrType(0x0019);
    pub const DONT_FRAGMENT: AttrType = AttrType(0x001A);
    pub const MESSAGE_INTEGRITY_SHA256: AttrType = AttrType(0x001C);
    pub const PASSWORD_ALGORITHM: AttrType = AttrType(0x001D);
    pub const USERHASH: AttrType = AttrType(0x001E);
    pub const XOR_MAPPED_ADDRESS: AttrType = AttrType(0x0020);
    pub const RESERVATION_TOKEN: AttrType = AttrType(0x0022);
    pub const PRIORITY: AttrType = AttrType(0x0024);
    pub const USE_CANDIDATE: AttrType = AttrType(0x0025);
    /// RFC 5780 §7.6: bytes that make a message large enough to be fragmented.
    pub const PADDING: AttrType = AttrType(0x0026);
    /// RFC 5780 §7.5: answer to this port at the request's source IP.
    pub const RESPONSE_PORT: AttrType = AttrType(0x0027);
    /// RFC 6062 §6.2.1: names a TCP peer connection of a TCP allocation.
    pub const CONNECTION_ID: AttrType = AttrType(0x002A);
    pub const ADDITIONAL_ADDRESS_FAMILY: AttrType = AttrType(0x8000);
    pub const ADDRESS_ERROR_CODE: AttrType = AttrType(0x8001);
    pub const PASSWORD_ALGORITHMS: AttrType = AttrType(0x8002);
    /// RFC 8489 §14.16: the name a TLS client checks the ALTERNATE-SERVER's certificate
    /// against.
    pub const ALTERNATE_DOMAIN: AttrType = AttrType(0x8003);
    pub const SOFTWARE: AttrType = AttrType(0x8022);
    pub const ALTERNATE_SERVER: AttrType = AttrType(0x8023);
    pub const FINGERPRINT: AttrType = AttrType(0x8028);
    pub const ICE_CONTROLLED: AttrType = AttrType(0x8029);
    pub const ICE_CONTROLLING: AttrType = AttrType(0x802A);
    /// RFC 5780 §7.3: where the response was sent from.
    pub const RESPONSE_ORIGIN: AttrType = AttrType(0x802B);
    /// RFC 5780 §7.4: where a response would come from with "change IP" and "change port".
    pub const OTHER_ADDRESS: AttrType = AttrType(0x802C);

    /// Types 0x0000–0x7FFF must be understood or the request rejected (RFC 8489 §15).
    pub fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// Comprehension-required attributes this server understands (or may safely ignore
    /// because understanding them needs no action, such as DONT-FRAGMENT: Linux sends UDP
    /// with DF set by default).
    pub fn is_understood(self) -> bool {
        matches!(
            self,
            Self::MAPPED_ADDRESS
                | Self::USERNAME
                | Self::MESSAGE_INTEGRITY
                | Self::ERROR_CODE
                | Self::UNKNOWN_ATTRIBUTES
                | Self::CHANNEL_NUMBER
                | Self::LIFETIME
                | Self::XOR_PEER_ADDRESS
                | Self::DATA
                | Self::REALM
                | Self::NONCE
                | Self::XOR_RELAYED_ADDRESS
                | Self::REQUESTED_ADDRESS_FAMILY
                | Self::EVEN_PORT
                | Self::REQUESTED_TRANSPORT
                | Self::DONT_FRAGMENT
                | Self::MESSAGE_INTEGRITY_SHA256
                | Self::PASSWORD_ALGORITHM
                | Self::USERHASH
                | Self::XOR_MAPPED_ADDRESS
                | Self::RESERVATION_TOKEN
                | Self::PRIORITY
                | Self::USE_CANDIDATE
                | Self::CONNECTION_ID
        )
    }
}

/// An ERROR-CODE value with its reason phrase (RFC 8489 §14.8).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorCode {
    pub code: u16,
    pub reason: &'static str,
}

impl ErrorCode {
    pub const TRY_ALTERNATE: ErrorCode = ErrorCode::new(300, "Try Alternate");
    pub const BAD_REQUEST: ErrorCode = ErrorCode::new(400, "Bad Request");
    pub const UNAUTHORIZED: ErrorCode = ErrorCode::new(401, "Unauthorized");
    pub const FORBIDDEN: ErrorCode = ErrorCode::new(403, "Forbidden");
    pub const UNKNOWN_ATTRIBUTE: ErrorCode = ErrorCode::new(420, "Unknown Attribute");
    pub const ALLOCATION_MISMATCH: ErrorCode = ErrorCode::new(437, "Allocation Mismatch");
    pub const STALE_NONCE: ErrorCode = ErrorCode::new(438, "Stale Nonce");
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: ErrorCode =
        ErrorCode::new(440, "Address Family not Supported");
    pub const WRONG_CREDENTIALS: ErrorCode = ErrorCode::new(441, "Wrong Credentials");
    pub const UNSUPPORTED_TRANSPORT: ErrorCode =
        ErrorCode::new(442, "Unsupported Transport Protocol");
    pub const PEER_ADDRESS_FAMILY_MISMATCH: ErrorCode =
        ErrorCode::new(443, "Peer Address Family Mismatch");
    /// RFC 6062 §6.3.
    pub const CONNECTION_ALREADY_EXISTS: ErrorCode =
        ErrorCode::new(446, "Connection Already Exists");
    pub const CONNECTION_TIMEOUT_OR_FAILURE: ErrorCode =
        ErrorCode::new(447, "Connection Timeout or Failure");
    pub const ALLOCATION_QUOTA_REACHED: ErrorCode = ErrorCode::new(486, "Allocation Quota Reached");
    pub const SERVER_ERROR: ErrorCode = ErrorCode::new(500, "Server Error");
    pub const INSUFFICIENT_CAPACITY: ErrorCode = ErrorCode::new(508, "Insufficient Capacity");

    pub const fn new(code: u16, reason: &'static str) -> Self {
        Self { code, reason }
    }

    /// Reads the numeric code from an ERROR-CODE value (used by tests and clients).
    pub fn decode_code(value: &[u8]) -> Option<u16> {
        let class = u16::from(*value.get(2)? & 0x07);
        let number = u16::from(*value.get(3)?);
        Some(class * 100 + number)
    }
}

const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// Writes a plain (not XORed) address value, as MAPPED-ADDRESS and ALTERNATE-SERVER carry
/// it (RFC 8489 §14.1), into `out`.
pub(crate) fn encode_plain_address(addr: SocketAddr, out: &mut Vec<u8>) {
    let family = if addr.is_ipv4() {
        FAMILY_IPV4
    } else {
        FAMILY_IPV6
    };
    out.extend_from_slice(&[0, family]);
    out.extend_from_slice(&addr.port().to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
}

/// Reads a plain address value (MAPPED-ADDRESS, OTHER-ADDRESS, ...); `None` for a wrong
/// length or an unknown family.
pub fn decode_plain_address(value: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]);
    match (*value.get(1)?, value.len()) {
        (FAMILY_IPV4, 8) => {
            let octets: [u8; 4] = value[4..8].try_into().ok()?;
            Some(SocketAddr::new(Ipv4Addr::from(octets).into(), port))
        }
        (FAMILY_IPV6, 20) => {
            let octets: [u8; 16] = value[4..20].try_into().ok()?;
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        _ => None,
    }
}

/// Writes an XOR-*-ADDRESS value (RFC 8489 §14.2) into `out`.
pub(crate) fn encode_xor_address(addr: SocketAddr, tid: &TransactionId, out: &mut Vec<u8>) {
    let (value, len) = xor_address_value(addr, tid);
    out.extend_from_slice(&value[..len]);
}

/// An XOR-*-ADDRESS value in a fixed array (8 bytes used for IPv4, 20 for IPv6), for
/// callers that must not allocate.
pub fn xor_address_value(addr: SocketAddr, tid: &TransactionId) -> ([u8; 20], usize) {
    let mut value = [0u8; 20];
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    value[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            value[1] = FAMILY_IPV4;
            value[4..8].copy_from_slice(&(u32::from(ip) ^ MAGIC_COOKIE).to_be_bytes());
            (value, 8)
        }
        IpAddr::V6(ip) => {
            value[1] = FAMILY_IPV6;
            let mask = xor_mask_v6(tid);
            for (i, octet) in ip.octets().iter().enumerate() {
                value[4 + i] = octet ^ mask[i];
            }
            (value, 20)
        }
    }
}

/// Reads an XOR-*-ADDRESS value; `None` for a wrong length or an unknown family.
pub fn decode_xor_address(value: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (family, value.len()) {
        (FAMILY_IPV4, 8) => {
            let raw = u32::from_be_bytes([value[4], value[5], value[6], value[7]]) ^ MAGIC_COOKIE;
            Some(SocketAddr::new(Ipv4Addr::from(raw).into(), port))
        }
        (FAMILY_IPV6, 20) => {
            let mask = xor_mask_v6(tid);
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = value[4 + i] ^ mask[i];
            }
            Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port))
        }
        _ => None,
    }
}

fn xor_mask_v6(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&tid.0);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_round_trips_v4_and_v6() {
        let tid = TransactionId([7; 12]);
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:3478", "0.0.0.0:0"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = Vec::new();
            encode_xor_address(addr, &tid, &mut buf);
            assert_eq!(decode_xor_address(&buf, &tid), Some(addr));
        }
    }

    #[test]
    fn plain_address_round_trips_and_rejects_bad_values() {
        for addr in ["192.0.2.1:32853", "[2001:db8::1]:3478"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = Vec::new();
            encode_plain_address(addr, &mut buf);
            assert_eq!(decode_plain_address(&buf), Some(addr));
        }
        assert_eq!(decode_plain_address(&[0, 1, 0, 0, 1, 2, 3]), None);
        assert_eq!(decode_plain_address(&[0, 3, 0, 0, 1, 2, 3, 4]), None);
    }

    #[test]
    fn xor_address_rejects_bad_family_and_length() {
        let tid = TransactionId::default();
        assert_eq!(decode_xor_address(&[0, 3, 0, 0, 1, 2, 3, 4], &tid), None);
        assert_eq!(decode_xor_address(&[0, 1, 0, 0, 1, 2, 3], &tid), None);
        assert_eq!(decode_xor_address(&[0, 2, 0, 0, 1, 2, 3, 4], &tid), None);
        assert_eq!(decode_xor_address(&[], &tid), None);
    }

    #[test]
    fn error_code_decodes_class_and_number() {
        assert_eq!(ErrorCode::decode_code(&[0, 0, 4, 38]), Some(438));
        assert_eq!(ErrorCode::decode_code(&[0, 0, 5]), None);
    }
}
