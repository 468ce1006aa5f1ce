//! Binding requests: RFC 8489's, classic STUN's (RFC 3489: no magic cookie), and NAT
//! behaviour discovery (RFC 5780).
//!
//! A Binding response tells a client its address as the server saw it. With `other-address`
//! configured the server has four addresses, two IPs (A1, A2) × two ports (P1, P2), and
//! listens for STUN on each over UDP ([`NatDiscovery`]). A response then also names where
//! it was sent from and the address diagonally opposite the one the request came to, and
//! CHANGE-REQUEST moves the answer to the other IP and/or port (RFC 5780 §6.1, table 1): a
//! client learns from which of them answers get through how its NAT filters. RESPONSE-PORT
//! sends the answer to another port of the client's IP, and PADDING makes it large enough to
//! be fragmented.
//!
//! The core decides which of the four addresses answers; it names it as the server side of
//! the reply's [`FiveTuple`], and the I/O layer sends from the socket bound there.
//!
//! Without `other-address`, and over TCP and TLS (where a connection cannot answer from
//! elsewhere), the server is one "without an alternate address": OTHER-ADDRESS and
//! RESPONSE-ORIGIN are left out, and CHANGE-REQUEST with a flag set, RESPONSE-PORT and
//! PADDING are unknown attributes (420), as RFC 5780 §6 asks. A CHANGE-REQUEST with no flag
//! set is answered like any Binding: that is what classic clients send first. Classic
//! clients get the same 420 for flags (as coturn answers them): RFC 3489 has no way to say
//! "not supported", and no answer at all would read as a NAT that filters everything.
//!
//! Every Binding answer is limited per source address (`binding-per-ip`) before any of this;
//! none is larger than its request by more than a fixed number of bytes (PADDING only
//! mirrors the request's), and RESPONSE-PORT keeps the request's IP, so neither lets the
//! server amplify a spoofed flood or aim it elsewhere. RFC 3489's RESPONSE-ADDRESS, which
//! would, is never understood.

use std::net::SocketAddr;

use super::server::{Reply, Server};
use super::{FiveTuple, Transport};
use crate::stun::{AttrType, ChangeRequest, Dialect, ErrorCode, Message};

/// The longest PADDING value a response carries: a client asks for about its path's MTU
/// (RFC 5780 §5), and a jumbo frame is 9000 bytes.
const MAX_PADDING: usize = 9000;

/// The four addresses of RFC 5780 §6: the primary listen address (A1:P1), `other-address`
/// (A2:P2), and their crossings (A2:P1, A1:P2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatDiscovery {
    primary: SocketAddr,
    other: SocketAddr,
}

impl NatDiscovery {
    /// `None` unless both addresses are specific, of one family, and differ in IP and in
    /// port (with no port 0).
    pub fn new(primary: SocketAddr, other: SocketAddr) -> Option<Self> {
        let specific = |a: SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        let valid = specific(primary)
            && specific(other)
            && primary.is_ipv4() == other.is_ipv4()
            && primary.ip() != other.ip()
            && primary.port() != other.port();
        valid.then_some(Self { primary, other })
    }

    /// `other-address`: the IP and port "change IP" and "change port" answer from.
    pub fn other(&self) -> SocketAddr {
        self.other
    }

    /// The four addresses to listen on: A1:P1, A2:P1, A1:P2, A2:P2.
    pub fn addresses(&self) -> [SocketAddr; 4] {
        LocalAddress::ALL.map(|at| self.address(at))
    }

    /// Which of the four `local` is, if any.
    fn locate(&self, local: SocketAddr) -> Option<LocalAddress> {
        LocalAddress::ALL
            .into_iter()
            .find(|&at| self.address(at) == local)
    }

    fn address(&self, at: LocalAddress) -> SocketAddr {
        let pick = |other: bool, a: SocketAddr| if other { a } else { self.primary };
        SocketAddr::new(
            pick(at.other_ip, self.other).ip(),
            pick(at.other_port, self.other).port(),
        )
    }
}

/// One of the four addresses: whose IP and whose port (`false`: the primary's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LocalAddress {
    other_ip: bool,
    other_port: bool,
}

impl LocalAddress {
    const ALL: [LocalAddress; 4] = [
        LocalAddress::at(false, false),
        LocalAddress::at(true, false),
        LocalAddress::at(false, true),
        LocalAddress::at(true, true),
    ];

    const fn at(other_ip: bool, other_port: bool) -> Self {
        Self {
            other_ip,
            other_port,
        }
    }

    /// Where a request that came here is answered from (RFC 5780 table 1).
    fn changed(self, change: ChangeRequest) -> Self {
        Self::at(
            self.other_ip ^ change.change_ip,
            self.other_port ^ change.change_port,
        )
    }

    /// OTHER-ADDRESS of a request that came here: the other IP and the other port.
    fn opposite(self) -> Self {
        Self::at(!self.other_ip, !self.other_port)
    }
}

/// What a Binding response says about the server's addresses, when it has four.
struct Discovery {
    /// Where the response is sent from (RESPONSE-ORIGIN, SOURCE-ADDRESS).
    origin: SocketAddr,
    /// The diagonally opposite address (OTHER-ADDRESS, CHANGED-ADDRESS).
    other: SocketAddr,
}

impl Server {
    /// Answers a Binding request that the per-source limit has let through.
    pub(super) fn answer_binding(&mut self, message: &Message<'_>, reply: &Reply) {
        let from = reply.to;
        let here = self
            .nat_discovery
            .filter(|_| from.transport == Transport::Udp)
            .and_then(|discovery| Some((discovery, discovery.locate(from.server)?)));
        let change = message.change_request();
        let response_port = message.response_port();
        let padding = message.padding_len();

        let mut unknown = message.unknown_required_attributes();
        unknown.retain(|&kind| !understood(AttrType(kind), here.is_some()));
        if here.is_none() && change.flatten().is_some_and(ChangeRequest::any) {
            unknown.push(AttrType::CHANGE_REQUEST.0);
        }
        if !unknown.is_empty() {
            self.send_error(reply, ErrorCode::UNKNOWN_ATTRIBUTE, |b| {
                b.add_unknown_attributes(&unknown);
            });
            return;
        }
        // RFC 5780 §6.1, §7.5: RESPONSE-PORT with PADDING is 400; port 0 cannot be sent to.
        let malformed = change == Some(None)
            || matches!(response_port, Some(None | Some(0)))
            || (response_port.is_some() && padding.is_some());
        if malformed {
            self.send_error(reply, ErrorCode::BAD_REQUEST, |_| {});
            return;
        }

        let discovery = here.map(|(discovery, at)| Discovery {
            origin: discovery.address(at.changed(change.flatten().unwrap_or_default())),
            other: discovery.address(at.opposite()),
        });
        let answer = Reply {
            to: FiveTuple {
                server: discovery.as_ref().map_or(from.server, |d| d.origin),
                client: SocketAddr::new(
                    from.client.ip(),
                    response_port.flatten().unwrap_or(from.client.port()),
                ),
                ..from
            },
            ..*reply
        };
        let padding = padding.map(|len| len.next_multiple_of(4).min(MAX_PADDING));
        self.send_success(&answer, |b| {
            match reply.dialect {
                Dialect::Rfc8489 => {
                    b.add_xor_address(AttrType::XOR_MAPPED_ADDRESS, from.client);
                    if let Some(d) = &discovery {
                        // RFC 5780 §6.1: both mapped addresses, the origin and the other.
                        b.add_plain_address(AttrType::MAPPED_ADDRESS, from.client)
                            .add_plain_address(AttrType::RESPONSE_ORIGIN, d.origin)
                            .add_plain_address(AttrType::OTHER_ADDRESS, d.other);
                    }
                }
                Dialect::Rfc3489 { .. } => {
                    b.add_plain_address(AttrType::MAPPED_ADDRESS, from.client);
                    if let Some(d) = &discovery {
                        b.add_plain_address(AttrType::SOURCE_ADDRESS, d.origin)
                            .add_plain_address(AttrType::CHANGED_ADDRESS, d.other);
                    }
                }
            }
            if let Some(len) = padding {
                b.add_padding(len);
            }
        });
    }
}

/// Comprehension-required attributes a Binding request may carry beyond the ones every
/// request may: CHANGE-REQUEST always (its flags are judged apart), RESPONSE-PORT and
/// PADDING only where the server does NAT behaviour discovery.
fn understood(kind: AttrType, discovery: bool) -> bool {
    kind == AttrType::CHANGE_REQUEST
        || (discovery && (kind == AttrType::RESPONSE_PORT || kind == AttrType::PADDING))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn four_addresses_and_table_1_of_rfc_5780() {
        let d = NatDiscovery::new(addr("192.0.2.1:3478"), addr("192.0.2.2:3479")).unwrap();
        assert_eq!(
            d.addresses(),
            [
                addr("192.0.2.1:3478"),
                addr("192.0.2.2:3478"),
                addr("192.0.2.1:3479"),
                addr("192.0.2.2:3479"),
            ]
        );
        let at = d.locate(addr("192.0.2.2:3478")).unwrap();
        let change = |change_ip, change_port| ChangeRequest {
            change_ip,
            change_port,
        };
        let from = |c| d.address(at.changed(c));
        assert_eq!(from(change(false, false)), addr("192.0.2.2:3478"));
        assert_eq!(from(change(true, false)), addr("192.0.2.1:3478"));
        assert_eq!(from(change(false, true)), addr("192.0.2.2:3479"));
        assert_eq!(from(change(true, true)), addr("192.0.2.1:3479"));
        assert_eq!(d.address(at.opposite()), addr("192.0.2.1:3479"));
        assert_eq!(d.locate(addr("192.0.2.3:3478")), None);
    }

    #[test]
    fn addresses_must_differ_in_ip_and_port_within_one_family() {
        let ok = |p: &str, o: &str| NatDiscovery::new(addr(p), addr(o)).is_some();
        assert!(ok("192.0.2.1:3478", "192.0.2.2:3479"));
        assert!(!ok("192.0.2.1:3478", "192.0.2.1:3479"), "same IP");
        assert!(!ok("192.0.2.1:3478", "192.0.2.2:3478"), "same port");
        assert!(!ok("192.0.2.1:3478", "[2001:db8::2]:3479"), "two families");
        assert!(!ok("0.0.0.0:3478", "192.0.2.2:3479"), "wildcard");
        assert!(!ok("192.0.2.1:3478", "192.0.2.2:0"), "port 0");
    }
}
