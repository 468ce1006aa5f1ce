//! The PROXY protocol (HAProxy's, versions 1 and 2): an L4 load balancer in front of rendez
//! begins each TCP connection with a header naming the client it relays, so rendez sees the
//! client's address instead of the balancer's.
//!
//! Only connections from `[connections] proxy-protocol-from` are read for a header, and from
//! them it is required: the spec forbids guessing whether one is there, since anyone allowed
//! to send one can claim any address. Connections from anywhere else are never read for a
//! header; one sent by them is garbage to STUN (or TLS) and closes the connection.
//!
//! The header is read exactly, never a byte beyond it: what follows belongs to STUN or to the
//! TLS handshake. Every header is at least 15 bytes long ("PROXY UNKNOWN\r\n"), so that much
//! is read first. Version 2 then says its own length in its 15th and 16th bytes (at most
//! 64 KiB with TLVs, held only until parsed, like a STUN message); a version 1 line is read
//! a byte at a time up to its LF (at most 107 bytes; a TCP4 line is about 45, and this
//! happens once per connection from a balancer). The caller bounds the time it all takes.
//! Parsing the complete header is the `ppp` crate's job; what its addresses mean is ours.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use ppp::{v1, v2};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The sources allowed to speak the PROXY protocol (`[connections] proxy-protocol-from`).
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpNet>);

/// Where a proxied connection comes from, by its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Relayed on behalf of `client`, which had connected to `server` (the balancer's
    /// address): the connection as the client made it.
    Relayed {
        client: SocketAddr,
        server: SocketAddr,
    },
    /// Not relayed for a client the header can name: the balancer's own health check
    /// (LOCAL), or a client without an IP address and TCP port (UNKNOWN, UNSPEC, UNIX,
    /// UDP). The spec says to use the connection's own addresses then.
    AsConnected,
}

/// Why a connection from a trusted proxy is closed before it is served.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("the connection ended before a complete PROXY header: {0}")]
    Read(#[from] std::io::Error),
    #[error("no PROXY header: the connection does not begin with one")]
    Missing,
    #[error("PROXY v1 line without CRLF in its first {V1_LONGEST} bytes")]
    TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    MalformedV1(#[from] v1::BinaryParseError),
    #[error("malformed PROXY v2 header: {0}")]
    MalformedV2(#[from] v2::ParseError),
    #[error("PROXY v2 header with an undefined address family and protocol ({0:#04x})")]
    UndefinedTransport(u8),
}

/// "PROXY UNKNOWN\r\n", the shortest header of either version.
const SHORTEST: usize = 15;
/// The longest version 1 line, CRLF included (proxy-protocol.txt §2.1).
const V1_LONGEST: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";
/// Signature, version and command, family and protocol, and the length of the rest
/// (proxy-protocol.txt §2.2).
const V2_FIXED: usize = 16;

impl TrustedProxies {
    pub fn new(sources: Vec<IpNet>) -> Self {
        Self(sources)
    }

    /// Whether a connection from `ip` must begin with a PROXY header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// Reads the header a trusted proxy's connection begins with, and nothing after it.
pub async fn read_header<R: AsyncRead + Unpin>(stream: &mut R) -> Result<Origin, HeaderError> {
    let mut header = vec![0; SHORTEST];
    stream.read_exact(&mut header).await?;
    if header.starts_with(v2::PROTOCOL_PREFIX) {
        read_more(stream, &mut header, V2_FIXED - SHORTEST).await?;
        let rest = u16::from_be_bytes([header[V2_FIXED - 2], header[V2_FIXED - 1]]);
        read_more(stream, &mut header, usize::from(rest)).await?;
    } else if header.starts_with(V1_PREFIX) {
        // Only the LF says where a line ends; a lone LF is rejected by the parser.
        while header.last() != Some(&b'\n') {
            if header.len() == V1_LONGEST {
                return Err(HeaderError::TooLong);
            }
            read_more(stream, &mut header, 1).await?;
        }
    } else {
        return Err(HeaderError::Missing);
    }
    parse(&header)
}

/// What a complete header (exactly its bytes) says.
pub fn parse(header: &[u8]) -> Result<Origin, HeaderError> {
    if header.starts_with(v2::PROTOCOL_PREFIX) {
        parse_v2(header)
    } else {
        parse_v1(header)
    }
}

fn parse_v1(line: &[u8]) -> Result<Origin, HeaderError> {
    let header = v1::Header::try_from(line)?;
    Ok(match header.addresses {
        v1::Addresses::Tcp4(a) => relayed(
            (a.source_address, a.source_port),
            (a.destination_address, a.destination_port),
        ),
        v1::Addresses::Tcp6(a) => relayed(
            (a.source_address, a.source_port),
            (a.destination_address, a.destination_port),
        ),
        v1::Addresses::Unknown => Origin::AsConnected,
    })
}

fn parse_v2(bytes: &[u8]) -> Result<Origin, HeaderError> {
    use v2::{AddressFamily as Family, Protocol};
    let header = v2::Header::try_from(bytes)?;
    if header.command == v2::Command::Local {
        // The balancer's own connection; its address block, if any, is ignored.
        return Ok(Origin::AsConnected);
    }
    let origin = match (header.address_family(), header.protocol, header.addresses) {
        (_, Protocol::Stream, v2::Addresses::IPv4(a)) => relayed(
            (a.source_address, a.source_port),
            (a.destination_address, a.destination_port),
        ),
        (_, Protocol::Stream, v2::Addresses::IPv6(a)) => relayed(
            (a.source_address, a.source_port),
            (a.destination_address, a.destination_port),
        ),
        // The other combinations the spec defines (UNSPEC, UDP, UNIX) fall back to the
        // connection's own addresses, as it asks of receivers that do not support them;
        // any other "must be rejected as invalid" (proxy-protocol.txt §2.2).
        (Family::Unspecified, Protocol::Unspecified, _)
        | (Family::IPv4 | Family::IPv6 | Family::Unix, Protocol::Datagram, _)
        | (Family::Unix, Protocol::Stream, _) => Origin::AsConnected,
        (family, protocol, _) => {
            let transport = family as u8 | protocol as u8;
            return Err(HeaderError::UndefinedTransport(transport));
        }
    };
    Ok(origin)
}

/// A relayed client, with IPv4-mapped IPv6 addresses (from a dual-stack balancer) as the
/// IPv4 addresses they are, so the client is told and counted as it connected.
fn relayed<A: Into<IpAddr>>(client: (A, u16), server: (A, u16)) -> Origin {
    let canonical = |(ip, port): (A, u16)| SocketAddr::new(ip.into().to_canonical(), port);
    Origin::Relayed {
        client: canonical(client),
        server: canonical(server),
    }
}

/// Appends exactly `count` more bytes from `stream` to `header`.
async fn read_more<R: AsyncRead + Unpin>(
    stream: &mut R,
    header: &mut Vec<u8>,
    count: usize,
) -> std::io::Result<()> {
    let start = header.len();
    header.resize(start + count, 0);
    stream.read_exact(&mut header[start..]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

    /// A version 2 header: command byte, family/protocol byte, the rest after the length.
    fn v2(command: u8, transport: u8, rest: &[u8]) -> Vec<u8> {
        let mut header = SIGNATURE.to_vec();
        header.extend_from_slice(&[command, transport]);
        header.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        header.extend_from_slice(rest);
        header
    }

    /// The address block of TCP over IPv4 from 198.51.100.7:4242 to 203.0.113.1:3478.
    fn ipv4_block() -> Vec<u8> {
        let mut block = vec![198, 51, 100, 7, 203, 0, 113, 1];
        block.extend_from_slice(&4242u16.to_be_bytes());
        block.extend_from_slice(&3478u16.to_be_bytes());
        block
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    fn relayed_from(client: &str, server: &str) -> Origin {
        Origin::Relayed {
            client: addr(client),
            server: addr(server),
        }
    }

    /// Reads a header from `bytes` followed by a marker, and checks the marker is left.
    fn read(bytes: &[u8]) -> Result<Origin, HeaderError> {
        let mut input = bytes.to_vec();
        input.extend_from_slice(b"after");
        let mut stream = &input[..];
        let result = block_on(read_header(&mut stream));
        if result.is_ok() {
            assert_eq!(stream, b"after", "read past the header of {bytes:?}");
        }
        result
    }

    /// Runs a future that never waits (it reads from a slice) to completion.
    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn trusts_only_the_configured_sources_in_either_spelling() {
        let proxies = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        assert!(proxies.trusts("10.1.2.3".parse().unwrap()));
        assert!(proxies.trusts("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!proxies.trusts("11.0.0.1".parse().unwrap()));
        assert!(!TrustedProxies::default().trusts("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn v1_tcp4_and_tcp6_name_the_client_and_what_it_connected_to() {
        assert_eq!(
            read(b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\r\n").unwrap(),
            relayed_from("198.51.100.7:4242", "203.0.113.1:3478")
        );
        assert_eq!(
            read(b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\n").unwrap(),
            relayed_from("[2001:db8::7]:4242", "[2001:db8::1]:443")
        );
        // A dual-stack balancer's IPv4 client is an IPv4 client.
        assert_eq!(
            read(b"PROXY TCP6 ::ffff:198.51.100.7 ::ffff:203.0.113.1 4242 3478\r\n").unwrap(),
            relayed_from("198.51.100.7:4242", "203.0.113.1:3478")
        );
    }

    #[test]
    fn v1_unknown_keeps_the_connection_addresses() {
        assert_eq!(read(b"PROXY UNKNOWN\r\n").unwrap(), Origin::AsConnected);
        let longest = format!(
            "PROXY UNKNOWN {0} {0} 65535 65535\r\n",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        assert_eq!(longest.len(), V1_LONGEST);
        assert_eq!(read(longest.as_bytes()).unwrap(), Origin::AsConnected);
    }

    #[test]
    fn v1_lines_that_break_the_grammar_are_rejected() {
        for line in [
            &b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\n"[..], // LF without CR
            b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\r\r\n",
            b"PROXY TCP4 2001:db8::7 203.0.113.1 4242 3478\r\n", // family mismatch
            b"PROXY TCP4 198.51.100.7 203.0.113.1 65536 3478\r\n",
            b"PROXY TCP4 198.51.100.7 203.0.113.1 04242 3478\r\n", // leading zero
            b"PROXY TCP4 198.51.100.07 203.0.113.1 4242 3478\r\n",
            b"PROXY TCP4  198.51.100.7 203.0.113.1 4242 3478\r\n", // two spaces
            b"PROXY TCP4 198.51.100.7 203.0.113.1 4242\r\n",
            b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478 9\r\n",
            b"PROXY UDP4 198.51.100.7 203.0.113.1 4242 3478\r\n",
            b"PROXY TCP4 \xff\xfe.100.7 203.0.113.1 4242 3478\r\n",
        ] {
            assert!(
                matches!(read(line), Err(HeaderError::MalformedV1(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(line),
                read(line)
            );
        }
    }

    #[test]
    fn v1_without_crlf_is_read_to_107_bytes_and_no_further() {
        let endless = [b"PROXY UNKNOWN ".as_slice(), &[b'x'; 200]].concat();
        let mut stream = &endless[..];
        let result = block_on(read_header(&mut stream));
        assert!(matches!(result, Err(HeaderError::TooLong)), "{result:?}");
        assert_eq!(stream.len(), endless.len() - V1_LONGEST);
    }

    #[test]
    fn anything_else_is_not_a_header() {
        for bytes in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PROXY-TCP4 198.51.100.7 203.0.113.1 4242 3478\r\n",
            b"proxy TCP4 198.51.100.7 203.0.113.1 4242 3478\r\n",
            // A STUN Binding request, what a client that skipped the balancer sends.
            &[
                0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
            ],
        ] {
            assert!(
                matches!(read(bytes), Err(HeaderError::Missing)),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn truncated_headers_are_read_errors() {
        let v1 = b"PROXY TCP4 198.51.100.7 203.0.113.1 4242 3478\r\n";
        let v2 = v2(0x21, 0x11, &ipv4_block());
        for cut in [0, 5, 14, 15, 30, v1.len() - 1] {
            let mut stream = &v1[..cut];
            let result = block_on(read_header(&mut stream));
            assert!(
                matches!(result, Err(HeaderError::Read(_))),
                "v1 cut at {cut}"
            );
        }
        for cut in [0, 11, 15, 16, 20, v2.len() - 1] {
            let mut stream = &v2[..cut];
            let result = block_on(read_header(&mut stream));
            assert!(
                matches!(result, Err(HeaderError::Read(_))),
                "v2 cut at {cut}"
            );
        }
    }

    #[test]
    fn v2_tcp_over_ipv4_and_ipv6_name_the_client() {
        assert_eq!(
            read(&v2(0x21, 0x11, &ipv4_block())).unwrap(),
            relayed_from("198.51.100.7:4242", "203.0.113.1:3478")
        );
        let mut block = Vec::new();
        block.extend_from_slice(
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        block.extend_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        block.extend_from_slice(&[0x10, 0x92, 0x01, 0xbb]);
        assert_eq!(
            read(&v2(0x21, 0x21, &block)).unwrap(),
            relayed_from("[2001:db8::7]:4242", "[2001:db8::1]:443")
        );
    }

    #[test]
    fn v2_tlvs_after_the_addresses_are_skipped() {
        let mut rest = ipv4_block();
        rest.extend_from_slice(&[0x04, 0, 3, 1, 2, 3]); // NOOP
        rest.extend_from_slice(&[0xea, 0, 5, b'v', b'p', b'c', b'e', b'1']); // AWS VPC endpoint
        assert_eq!(
            read(&v2(0x21, 0x11, &rest)).unwrap(),
            relayed_from("198.51.100.7:4242", "203.0.113.1:3478")
        );
        // The largest header the length field allows is read whole, and no further.
        let mut rest = ipv4_block();
        rest.resize(usize::from(u16::MAX), 0);
        assert!(read(&v2(0x21, 0x11, &rest)).is_ok());
    }

    #[test]
    fn v2_local_and_addressless_transports_keep_the_connection_addresses() {
        // LOCAL: a health check, whatever its address block says.
        assert_eq!(read(&v2(0x20, 0x00, &[])).unwrap(), Origin::AsConnected);
        assert_eq!(
            read(&v2(0x20, 0x11, &ipv4_block())).unwrap(),
            Origin::AsConnected
        );
        assert_eq!(read(&v2(0x21, 0x00, &[])).unwrap(), Origin::AsConnected);
        assert_eq!(
            read(&v2(0x21, 0x12, &ipv4_block())).unwrap(),
            Origin::AsConnected
        );
        assert_eq!(
            read(&v2(0x21, 0x31, &[0; 216])).unwrap(),
            Origin::AsConnected
        );
    }

    #[test]
    fn v2_headers_that_break_the_spec_are_rejected() {
        let block = ipv4_block();
        let mut bad_signature = v2(0x21, 0x11, &block);
        bad_signature[11] = b'X';
        assert!(matches!(read(&bad_signature), Err(HeaderError::Missing)));
        for (header, what) in [
            (v2(0x11, 0x11, &block), "version 1 in binary"),
            (v2(0x31, 0x11, &block), "version 3"),
            (v2(0x22, 0x11, &block), "command 2"),
            (v2(0x21, 0x41, &block), "address family 4"),
            (v2(0x21, 0x13, &block), "protocol 3"),
            (
                v2(0x21, 0x11, &block[..11]),
                "address block shorter than IPv4's",
            ),
            (v2(0x21, 0x21, &block), "address block shorter than IPv6's"),
        ] {
            assert!(
                matches!(read(&header), Err(HeaderError::MalformedV2(_))),
                "{what}: {:?}",
                read(&header)
            );
        }
        for transport in [0x01, 0x02, 0x10, 0x20, 0x30] {
            assert!(
                matches!(
                    read(&v2(0x21, transport, &[0; 216])),
                    Err(HeaderError::UndefinedTransport(t)) if t == transport
                ),
                "{transport:#04x}"
            );
        }
    }

    #[test]
    fn v2_length_beyond_the_bytes_sent_waits_for_them() {
        // The length says 200 bytes follow but 12 do: the header is incomplete, not over.
        let mut header = v2(0x21, 0x11, &ipv4_block());
        header[14..16].copy_from_slice(&200u16.to_be_bytes());
        let mut stream = &header[..];
        let result = block_on(read_header(&mut stream));
        assert!(matches!(result, Err(HeaderError::Read(_))), "{result:?}");
    }

    proptest::proptest! {
        #[test]
        fn no_input_panics_or_is_read_past_a_header(
            start in proptest::sample::select(vec![&b""[..], b"PROXY ", b"PROXY TCP4 ", SIGNATURE]),
            version_and_transport in proptest::sample::select(vec![0x20u8, 0x21, 0x11, 0x12, 0x21, 0x22, 0x31]),
            rest: Vec<u8>,
        ) {
            let mut bytes = start.to_vec();
            if start == SIGNATURE {
                bytes.push(version_and_transport);
            }
            bytes.extend_from_slice(&rest);
            let mut stream = &bytes[..];
            let result = block_on(read_header(&mut stream));
            let consumed = bytes.len() - stream.len();
            if let Ok(origin) = result {
                // What was consumed is exactly the header.
                proptest::prop_assert_eq!(parse(&bytes[..consumed]).ok(), Some(origin));
            }
            proptest::prop_assert!(consumed <= V2_FIXED + usize::from(u16::MAX));
        }

        #[test]
        fn a_v1_header_is_read_exactly(
            client in proptest::arbitrary::any::<std::net::SocketAddrV4>(),
            server in proptest::arbitrary::any::<std::net::SocketAddrV4>(),
            after: Vec<u8>,
        ) {
            let mut input = format!(
                "PROXY TCP4 {} {} {} {}\r\n",
                client.ip(), server.ip(), client.port(), server.port()
            ).into_bytes();
            input.extend_from_slice(&after);
            let mut stream = &input[..];
            let result = block_on(read_header(&mut stream)).unwrap();
            proptest::prop_assert_eq!(result, Origin::Relayed { client: client.into(), server: server.into() });
            proptest::prop_assert_eq!(stream, &after[..]);
        }
    }
}
