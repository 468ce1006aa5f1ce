//! TURN URIs as browsers take them in `iceServers` (RFC 7065):
//! `turn:HOST[:PORT][?transport=udp|tcp]` and `turns:HOST[:PORT][?transport=tcp]`.

use std::fmt;
use std::str::FromStr;

/// The default port of `turn:` (RFC 8489 §18.1, "stun" and "turn" over UDP and TCP).
pub const TURN_PORT: u16 = 3478;
/// The default port of `turns:` (RFC 8656 §18, "turns" over TLS).
pub const TURNS_PORT: u16 = 5349;

/// Where and how to reach a TURN server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnUrl {
    /// A DNS name or an IP address (without brackets).
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

/// How the client talks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    /// TLS over TCP (`turns:`).
    Tls,
}

impl Transport {
    /// The name used in output and diagnoses.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// Why a string is not a TURN URL; each message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("must start with `turn:` or `turns:`, e.g. turn:turn.example.com:3478?transport=udp")]
    Scheme,
    #[error("has no host, e.g. turn:turn.example.com")]
    NoHost,
    #[error("IPv6 addresses go in brackets, e.g. turn:[2001:db8::1]:3478")]
    UnbracketedIpv6,
    #[error("port `{0}` is not a number from 1 to 65535")]
    Port(String),
    #[error(
        "`{0}` is not a query this check understands: use `?transport=udp` or `?transport=tcp`"
    )]
    Query(String),
    #[error("`turns:` runs over TLS on TCP: leave out `?transport=` or write `?transport=tcp`")]
    TlsOverUdp,
}

impl FromStr for TurnUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Self, UrlError> {
        let (secure, rest) = if let Some(rest) = text.strip_prefix("turns:") {
            (true, rest)
        } else if let Some(rest) = text.strip_prefix("turn:") {
            (false, rest)
        } else {
            return Err(UrlError::Scheme);
        };
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let (host, port) = split_host_port(authority)?;
        let asked = match query {
            None => None,
            Some("transport=udp") => Some(Transport::Udp),
            Some("transport=tcp") => Some(Transport::Tcp),
            Some(other) => return Err(UrlError::Query(other.to_owned())),
        };
        let transport = match (secure, asked) {
            (true, Some(Transport::Udp)) => return Err(UrlError::TlsOverUdp),
            (true, _) => Transport::Tls,
            // RFC 7065 leaves the choice to the client when no transport is given; UDP is
            // what browsers try first.
            (false, asked) => asked.unwrap_or(Transport::Udp),
        };
        let default_port = if secure { TURNS_PORT } else { TURN_PORT };
        Ok(TurnUrl {
            host: host.to_owned(),
            port: port.unwrap_or(default_port),
            transport,
        })
    }
}

/// `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`.
fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), UrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(UrlError::UnbracketedIpv6)?;
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':').unwrap_or(after))),
        }
    } else {
        match authority.split_once(':') {
            Some((_, port)) if port.contains(':') => return Err(UrlError::UnbracketedIpv6),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(UrlError::NoHost);
    }
    let port = match port {
        None => None,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 => Some(port),
            _ => return Err(UrlError::Port(text.to_owned())),
        },
    };
    Ok((host, port))
}

impl fmt::Display for TurnUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.transport {
            Transport::Tls => write!(f, "turns:{host}:{}?transport=tcp", self.port),
            plain => write!(f, "turn:{host}:{}?transport={}", self.port, plain.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, transport: Transport) -> TurnUrl {
        TurnUrl {
            host: host.into(),
            port,
            transport,
        }
    }

    #[test]
    fn parses_the_forms_browsers_take() {
        let cases = [
            (
                "turn:turn.example.com",
                url("turn.example.com", 3478, Transport::Udp),
            ),
            (
                "turn:192.0.2.1:3479?transport=tcp",
                url("192.0.2.1", 3479, Transport::Tcp),
            ),
            (
                "turn:[2001:db8::1]?transport=udp",
                url("2001:db8::1", 3478, Transport::Udp),
            ),
            ("turns:h:443", url("h", 443, Transport::Tls)),
            (
                "turns:[::1]:5350?transport=tcp",
                url("::1", 5350, Transport::Tls),
            ),
            ("turns:h", url("h", 5349, Transport::Tls)),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<TurnUrl>(), Ok(expected), "{text}");
        }
    }

    #[test]
    fn display_is_the_explicit_form_and_parses_back() {
        for text in [
            "turn:h:3478?transport=udp",
            "turn:[::1]:1?transport=tcp",
            "turns:h:443?transport=tcp",
        ] {
            let parsed: TurnUrl = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
    }

    #[test]
    fn mistakes_get_a_message_saying_what_to_write() {
        let cases = [
            ("stun:h:3478", UrlError::Scheme),
            ("https://h", UrlError::Scheme),
            ("turn:", UrlError::NoHost),
            ("turn::3478", UrlError::NoHost),
            ("turn:2001:db8::1:3478", UrlError::UnbracketedIpv6),
            ("turn:[2001:db8::1", UrlError::UnbracketedIpv6),
            ("turn:h:0", UrlError::Port("0".into())),
            ("turn:h:70000", UrlError::Port("70000".into())),
            ("turn:h:", UrlError::Port("".into())),
            (
                "turn:h?transport=sctp",
                UrlError::Query("transport=sctp".into()),
            ),
            ("turns:h?transport=udp", UrlError::TlsOverUdp),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<TurnUrl>(), Err(expected), "{text}");
        }
    }
}
