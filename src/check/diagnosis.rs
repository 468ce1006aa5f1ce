//! What went wrong, in the operator's words: each failure the check can see becomes one
//! [`Diagnosis`] that names the likely cause and the config key or command that fixes it.
//!
//! The functions here are pure: they take what the check observed (a server's reply, which
//! echo arrived and from where, a TLS error) and return the diagnosis, so every rule is
//! tested without a network.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rustls::CertificateError;

use super::client::ErrorReply;
use super::url::Transport;

/// How bad a finding is: a failure makes the check fail; a warning is printed only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    Failure,
    Warning,
}

/// One finding, phrased for the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Diagnosis {
    Unresolvable {
        host: String,
        error: String,
    },
    UdpNoAnswer {
        server: SocketAddr,
    },
    UdpRefused {
        server: SocketAddr,
    },
    TcpRefused {
        server: SocketAddr,
        transport: Transport,
    },
    TcpNoAnswer {
        server: SocketAddr,
    },
    ConnectFailed {
        server: SocketAddr,
        error: String,
    },
    CertificateNameMismatch {
        host: String,
        names: Vec<String>,
    },
    CertificateUntrusted,
    CertificateExpired,
    TlsFailed {
        server: SocketAddr,
        error: String,
    },
    /// Something answered, but not like a TURN server.
    NotTurn {
        server: SocketAddr,
        what: String,
    },
    /// The server stopped answering (or closed the connection) after it had answered.
    NoAnswer {
        step: &'static str,
        closed: bool,
    },
    WrongSecret {
        realm: String,
    },
    WrongPassword {
        realm: String,
        user: String,
    },
    ClockSkew {
        ttl: Duration,
    },
    Refused {
        step: &'static str,
        reply: ErrorReply,
    },
    PeerDenied {
        peer: IpAddr,
    },
    RelayedAddressPrivate {
        relayed: SocketAddr,
        server: SocketAddr,
    },
    ExternalIpWrong {
        advertised: SocketAddr,
        actual: SocketAddr,
    },
    InboundBlocked {
        relayed: SocketAddr,
    },
    OutboundLost {
        peer: SocketAddr,
        peer_assumed: bool,
    },
    NothingThrough {
        relayed: SocketAddr,
    },
}

impl Diagnosis {
    pub fn severity(&self) -> Severity {
        match self {
            Diagnosis::RelayedAddressPrivate { .. } => Severity::Warning,
            _ => Severity::Failure,
        }
    }
}

/// Why connecting or the first exchange failed.
pub fn unreachable(server: SocketAddr, transport: Transport, error: &io::Error) -> Diagnosis {
    use io::ErrorKind::*;
    match (transport, error.kind()) {
        (Transport::Udp, ConnectionRefused) => Diagnosis::UdpRefused { server },
        (Transport::Udp, TimedOut) => Diagnosis::UdpNoAnswer { server },
        (_, ConnectionRefused) => Diagnosis::TcpRefused { server, transport },
        (_, TimedOut) => Diagnosis::TcpNoAnswer { server },
        _ => Diagnosis::ConnectFailed {
            server,
            error: error.to_string(),
        },
    }
}

/// Why the TLS handshake failed, from the error tokio-rustls returned.
pub fn tls_failure(host: &str, server: SocketAddr, error: &io::Error) -> Diagnosis {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(certificate)) => match certificate {
            CertificateError::NotValidForNameContext { presented, .. } => {
                Diagnosis::CertificateNameMismatch {
                    host: host.to_owned(),
                    names: presented.iter().map(|name| plain_name(name)).collect(),
                }
            }
            CertificateError::NotValidForName => Diagnosis::CertificateNameMismatch {
                host: host.to_owned(),
                names: Vec::new(),
            },
            CertificateError::UnknownIssuer => Diagnosis::CertificateUntrusted,
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => Diagnosis::CertificateExpired,
            other => Diagnosis::TlsFailed {
                server,
                error: format!("the certificate is not acceptable: {other}"),
            },
        },
        Some(other) => Diagnosis::TlsFailed {
            server,
            error: other.to_string(),
        },
        None if error.kind() == io::ErrorKind::UnexpectedEof => Diagnosis::TlsFailed {
            server,
            error: "the server closed the connection during the handshake".into(),
        },
        None => Diagnosis::TlsFailed {
            server,
            error: error.to_string(),
        },
    }
}

/// A certificate name as rustls reports it (`DnsName("a.example")`, `IpAddress(192.0.2.1)`)
/// in the form an operator writes it.
fn plain_name(presented: &str) -> String {
    let inner = presented
        .strip_prefix("DnsName(\"")
        .and_then(|rest| rest.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|rest| rest.strip_suffix(')'))
        });
    inner.unwrap_or(presented).to_owned()
}

/// How the check logged in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginKind {
    /// A TURN REST credential minted here from the shared secret, valid for `ttl`.
    Minted { ttl: Duration },
    /// A static user with a password.
    Static { user: String },
}

/// Why an authenticated Allocate was refused. `long_lived_accepted`: after a minted
/// credential was refused, one valid for a day was accepted, so the first was refused as
/// expired and the server's clock is ahead of ours.
pub fn allocate_refused(
    reply: &ErrorReply,
    login: &LoginKind,
    long_lived_accepted: bool,
) -> Diagnosis {
    if reply.code != 401 {
        return Diagnosis::Refused {
            step: "Allocate",
            reply: reply.clone(),
        };
    }
    let realm = reply.realm.clone().unwrap_or_default();
    match login {
        LoginKind::Static { user } => Diagnosis::WrongPassword {
            realm,
            user: user.clone(),
        },
        LoginKind::Minted { ttl } if long_lived_accepted => Diagnosis::ClockSkew { ttl: *ttl },
        LoginKind::Minted { .. } => Diagnosis::WrongSecret { realm },
    }
}

/// A warning when the relayed address is private although the server was reached at a
/// public one: clients on the internet cannot send to it (`external-ip` missing).
pub fn relayed_address(relayed: SocketAddr, server: SocketAddr) -> Option<Diagnosis> {
    (!is_public(relayed.ip()) && is_public(server.ip()))
        .then_some(Diagnosis::RelayedAddressPrivate { relayed, server })
}

/// What the relayed echo showed, in both directions.
#[derive(Clone, Copy, Debug)]
pub struct EchoEvidence {
    /// The XOR-RELAYED-ADDRESS the server advertised.
    pub relayed: SocketAddr,
    /// The peer's address as given in CreatePermission and Send.
    pub peer: SocketAddr,
    /// Whether the peer address was guessed, not learned from a Binding response.
    pub peer_assumed: bool,
    /// Whether the peer's datagram to the relayed address came back as a Data indication.
    pub inbound_arrived: bool,
    /// Where the datagram relayed to the peer came from, if it arrived.
    pub outbound_source: Option<SocketAddr>,
}

/// Why the echo failed, or `None` when it came back both ways.
pub fn echo_failure(echo: &EchoEvidence) -> Option<Diagnosis> {
    match (echo.inbound_arrived, echo.outbound_source) {
        (true, Some(_)) => None,
        // The relay sends from an address other than the one it advertises: peers answer
        // to the advertised one, which does not lead back to it.
        (false, Some(source)) if source.ip() != echo.relayed.ip() => {
            Some(Diagnosis::ExternalIpWrong {
                advertised: echo.relayed,
                actual: source,
            })
        }
        (false, Some(_)) => Some(Diagnosis::InboundBlocked {
            relayed: echo.relayed,
        }),
        (true, None) => Some(Diagnosis::OutboundLost {
            peer: echo.peer,
            peer_assumed: echo.peer_assumed,
        }),
        (false, None) => Some(Diagnosis::NothingThrough {
            relayed: echo.relayed,
        }),
    }
}

/// A public unicast address: one rendez's default peer policy would relay to.
pub fn is_public(ip: IpAddr) -> bool {
    crate::turn::PeerPolicy::default().permits(ip)
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diagnosis::Unresolvable { host, error } => write!(
                f,
                "cannot resolve `{host}` ({error}): check the name, or use the server's IP address"
            ),
            Diagnosis::UdpNoAnswer { server } => write!(
                f,
                "UDP blocked or nothing listening: no answer over UDP from {server}. A firewall \
                 or cloud security group may drop UDP port {port}, or `listen` does not cover \
                 this address; try `?transport=tcp` (or `turns:`) to see whether TCP gets through",
                port = server.port()
            ),
            Diagnosis::UdpRefused { server } => write!(
                f,
                "nothing listens on UDP {server} (the host answered \"port unreachable\"): is \
                 rendez running, and does `listen` include this address and port?"
            ),
            Diagnosis::TcpRefused { server, transport } => {
                let key = if *transport == Transport::Tls {
                    "tls-listen"
                } else {
                    "listen"
                };
                write!(
                    f,
                    "nothing listens on TCP {server} (connection refused): is rendez running, and \
                     does `{key}` include this address and port?"
                )
            }
            Diagnosis::TcpNoAnswer { server } => write!(
                f,
                "no answer to a TCP connection to {server}: a firewall or cloud security group \
                 drops it, or the host is down"
            ),
            Diagnosis::ConnectFailed { server, error } => {
                write!(f, "cannot connect to {server}: {error}")
            }
            Diagnosis::CertificateNameMismatch { host, names } => {
                write!(
                    f,
                    "certificate name mismatch: the server's certificate is not valid for \
                     `{host}`; "
                )?;
                if names.is_empty() {
                    write!(f, "it names no host this check can read")?;
                } else {
                    write!(f, "it is for {}", names.join(", "))?;
                }
                write!(
                    f,
                    ". Use a URL with a name the certificate has, or give `[tls] cert` a \
                     certificate that includes `{host}`"
                )
            }
            Diagnosis::CertificateUntrusted => write!(
                f,
                "untrusted certificate: the server's certificate is not signed by an authority \
                 this check trusts (self-signed, or a private CA), and browsers will refuse it \
                 too: use a certificate from a public CA (e.g. Let's Encrypt), or pass your own \
                 CA with `--ca FILE` if every client trusts it"
            ),
            Diagnosis::CertificateExpired => write!(
                f,
                "expired certificate: the server's certificate has expired or is not valid yet: \
                 renew the certificate in `[tls] cert`, or check this machine's clock"
            ),
            Diagnosis::TlsFailed { server, error } => write!(
                f,
                "the TLS handshake with {server} failed ({error}): is this rendez's \
                 `tls-listen` port, with `[tls]` configured?"
            ),
            Diagnosis::NotTurn { server, what } => write!(
                f,
                "{server} answered, but not like a STUN/TURN server ({what}): is this the \
                 right host and port?"
            ),
            Diagnosis::NoAnswer { step, closed } => {
                if *closed {
                    write!(
                        f,
                        "the server closed the connection instead of answering {step}"
                    )
                } else {
                    write!(
                        f,
                        "the server answered before but not {step}: is it overloaded or shutting \
                         down?"
                    )
                }
            }
            Diagnosis::WrongSecret { realm } => write!(
                f,
                "wrong secret: the server (realm \"{realm}\") refused the credential minted from \
                 the secret, so the secret is not one of the server's `auth.secrets` (or the \
                 server's clock is more than a day ahead of this machine's)"
            ),
            Diagnosis::WrongPassword { realm, user } => write!(
                f,
                "wrong user or password: the server (realm \"{realm}\") refused `{user}`: the \
                 password is wrong, the user is not in `[[auth.users]]`, or its `key` was \
                 computed for a realm other than \"{realm}\""
            ),
            Diagnosis::ClockSkew { ttl } => write!(
                f,
                "clock skew: the server's clock is at least {} ahead of this machine's. A \
                 credential valid for {} was refused as expired, one valid for a day was \
                 accepted: every short-lived credential expires early for this server. Sync \
                 both clocks (chrony or systemd-timesyncd)",
                humantime::format_duration(*ttl),
                humantime::format_duration(*ttl)
            ),
            Diagnosis::Refused { step, reply } => {
                let (code, reason) = (reply.code, &reply.reason);
                write!(f, "the server refused {step} with {code} {reason}")?;
                let hint = match code {
                    300 => "it is draining (shutting down) and sends new clients elsewhere",
                    403 => "this client may not use the relay",
                    437 => "an earlier allocation from this address still exists; run again",
                    440 | 442 => "the server does not relay this address family or transport",
                    486 => {
                        "allocation quota reached for this user or address (`[limits]`), or the \
                         server is draining"
                    }
                    508 => "no relay port is free (widen `relay-ports`)",
                    _ => return Ok(()),
                };
                write!(f, ": {hint}")
            }
            Diagnosis::PeerDenied { peer } => {
                write!(
                    f,
                    "peer address denied: the server's peer policy refuses {peer} (403 \
                     Forbidden). "
                )?;
                if is_public(*peer) {
                    write!(
                        f,
                        "This machine's address is in a `[peers] deny` range: run the check from \
                         another machine, or narrow `deny`"
                    )
                } else {
                    write!(
                        f,
                        "This machine's address is private or loopback, which rendez refuses \
                         unless `[peers] allow` names it: run the check from a machine on the \
                         internet, or allow that range if your clients really are there"
                    )
                }
            }
            Diagnosis::RelayedAddressPrivate { relayed, server } => write!(
                f,
                "`external-ip` missing? The relayed address {relayed} is private, but this \
                 machine reached the server at the public {server}: clients on the internet \
                 cannot send to the relay. Set `external-ip` to the server's public address"
            ),
            Diagnosis::ExternalIpWrong { advertised, actual } => write!(
                f,
                "`external-ip` missing or wrong: the server advertises the relayed address \
                 {advertised}, but the relay's packets come from {actual}, and what peers send \
                 to {advertised} never reaches it. Set `external-ip = \"{ip}\"` (the address \
                 clients reach) and restart",
                ip = actual.ip()
            ),
            Diagnosis::InboundBlocked { relayed } => write!(
                f,
                "the relay's packets reach this machine, but packets sent to the relayed \
                 address {relayed} never reach the relay: allow inbound UDP to `relay-ports` in \
                 the firewall or cloud security group (or `external-ip` is wrong)"
            ),
            Diagnosis::OutboundLost { peer, peer_assumed } => {
                write!(
                    f,
                    "the relay got this machine's packet, but what it relayed to {peer} never \
                     arrived: "
                )?;
                if *peer_assumed {
                    write!(
                        f,
                        "{peer} was a guess (no STUN answer over UDP told this machine its \
                         public address), and behind NAT it is probably wrong"
                    )
                } else {
                    write!(
                        f,
                        "this machine's NAT or firewall dropped it; the server itself looks fine"
                    )
                }
            }
            Diagnosis::NothingThrough { relayed } => {
                write!(
                    f,
                    "nothing came through the relay at {relayed} in either direction: "
                )?;
                if is_public(relayed.ip()) {
                    write!(
                        f,
                        "UDP to and from `relay-ports` is blocked (firewall, cloud security \
                         group), or `external-ip` is wrong"
                    )
                } else {
                    write!(
                        f,
                        "the relayed address is private, so `external-ip` is probably missing; \
                         also check that UDP `relay-ports` are open"
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stun::{ErrorCode, Message, MessageBuilder, Method, TransactionId};
    use rustls::pki_types::ServerName;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A 401 as rendez sends it after a failed authentication.
    fn unauthorized_reply() -> ErrorReply {
        let mut b = MessageBuilder::new(
            crate::stun::Class::Error,
            Method::ALLOCATE,
            TransactionId([4; 12]),
        );
        b.add_error(ErrorCode::UNAUTHORIZED)
            .add(crate::stun::AttrType::REALM, b"turn.example.org")
            .add(crate::stun::AttrType::NONCE, b"00000000deadbeef")
            .add_fingerprint();
        let bytes = b.finish();
        ErrorReply::from_message(&Message::parse(&bytes).unwrap())
    }

    #[test]
    fn refused_rest_credential_is_clock_skew_only_when_a_longer_one_works() {
        let reply = unauthorized_reply();
        assert_eq!(reply.code, 401);
        assert_eq!(reply.realm.as_deref(), Some("turn.example.org"));
        let minted = LoginKind::Minted {
            ttl: Duration::from_secs(600),
        };
        let skew = allocate_refused(&reply, &minted, true);
        assert_eq!(
            skew,
            Diagnosis::ClockSkew {
                ttl: Duration::from_secs(600)
            }
        );
        assert!(skew.to_string().contains("at least 10m ahead"), "{skew}");
        let wrong = allocate_refused(&reply, &minted, false);
        assert_eq!(
            wrong,
            Diagnosis::WrongSecret {
                realm: "turn.example.org".into()
            }
        );
        assert!(wrong.to_string().contains("auth.secrets"));
    }

    #[test]
    fn refused_static_user_names_the_realm() {
        let login = LoginKind::Static {
            user: "alice".into(),
        };
        let text = allocate_refused(&unauthorized_reply(), &login, false).to_string();
        assert!(
            text.contains("\"turn.example.org\"") && text.contains("`alice`"),
            "{text}"
        );
    }

    #[test]
    fn other_refusals_keep_code_and_reason_with_a_hint() {
        let reply = ErrorReply {
            code: 486,
            reason: "Allocation Quota Reached".into(),
            realm: None,
        };
        let login = LoginKind::Static { user: "a".into() };
        let text = allocate_refused(&reply, &login, false).to_string();
        assert!(
            text.contains("486 Allocation Quota Reached") && text.contains("[limits]"),
            "{text}"
        );
    }

    #[test]
    fn echo_evidence_decides_the_cause() {
        let relayed = addr("1.2.3.4:50000");
        let base = EchoEvidence {
            relayed,
            peer: addr("5.6.7.8:40000"),
            peer_assumed: false,
            inbound_arrived: true,
            outbound_source: Some(relayed),
        };
        assert_eq!(echo_failure(&base), None);

        let from_elsewhere = EchoEvidence {
            inbound_arrived: false,
            outbound_source: Some(addr("9.9.9.9:50000")),
            ..base
        };
        assert_eq!(
            echo_failure(&from_elsewhere),
            Some(Diagnosis::ExternalIpWrong {
                advertised: relayed,
                actual: addr("9.9.9.9:50000")
            })
        );
        let text = echo_failure(&from_elsewhere).unwrap().to_string();
        assert!(text.contains("external-ip = \"9.9.9.9\""), "{text}");

        let inbound_only_blocked = EchoEvidence {
            inbound_arrived: false,
            ..base
        };
        assert_eq!(
            echo_failure(&inbound_only_blocked),
            Some(Diagnosis::InboundBlocked { relayed })
        );

        let outbound_lost = EchoEvidence {
            outbound_source: None,
            peer_assumed: true,
            ..base
        };
        let diagnosis = echo_failure(&outbound_lost).unwrap();
        assert!(diagnosis.to_string().contains("was a guess"), "{diagnosis}");

        let nothing = EchoEvidence {
            inbound_arrived: false,
            outbound_source: None,
            ..base
        };
        assert_eq!(
            echo_failure(&nothing),
            Some(Diagnosis::NothingThrough { relayed })
        );
        let text = echo_failure(&nothing).unwrap().to_string();
        assert!(
            text.contains("UDP to and from `relay-ports` is blocked"),
            "{text}"
        );
        let private = Diagnosis::NothingThrough {
            relayed: addr("10.0.0.5:50000"),
        };
        assert!(private
            .to_string()
            .contains("`external-ip` is probably missing"));
    }

    #[test]
    fn private_relayed_address_is_a_warning_only_for_a_public_server() {
        let warning = relayed_address(addr("10.0.0.5:50000"), addr("1.2.3.4:3478"));
        assert!(matches!(
            warning,
            Some(Diagnosis::RelayedAddressPrivate { .. })
        ));
        assert_eq!(warning.unwrap().severity(), Severity::Warning);
        // On a LAN or on loopback, a private relayed address is what clients reach too.
        assert_eq!(
            relayed_address(addr("10.0.0.5:50000"), addr("10.0.0.5:3478")),
            None
        );
        assert_eq!(
            relayed_address(addr("1.2.3.4:50000"), addr("1.2.3.4:3478")),
            None
        );
    }

    fn handshake_error(error: rustls::Error) -> io::Error {
        // tokio-rustls reports a failed handshake this way.
        io::Error::new(io::ErrorKind::InvalidData, error)
    }

    #[test]
    fn tls_errors_become_plain_causes() {
        let server = addr("192.0.2.1:5349");
        let mismatch = handshake_error(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForNameContext {
                expected: ServerName::try_from("turn.example.org").unwrap(),
                presented: vec![
                    "DnsName(\"other.example.org\")".into(),
                    "IpAddress(192.0.2.7)".into(),
                ],
            },
        ));
        let diagnosis = tls_failure("turn.example.org", server, &mismatch);
        assert_eq!(
            diagnosis,
            Diagnosis::CertificateNameMismatch {
                host: "turn.example.org".into(),
                names: vec!["other.example.org".into(), "192.0.2.7".into()],
            }
        );
        assert!(diagnosis
            .to_string()
            .contains("it is for other.example.org, 192.0.2.7"));

        let untrusted = handshake_error(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer,
        ));
        assert_eq!(
            tls_failure("h", server, &untrusted),
            Diagnosis::CertificateUntrusted
        );
        let expired = handshake_error(rustls::Error::InvalidCertificate(CertificateError::Expired));
        assert_eq!(
            tls_failure("h", server, &expired),
            Diagnosis::CertificateExpired
        );
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert!(matches!(
            tls_failure("h", server, &eof),
            Diagnosis::TlsFailed { .. }
        ));
    }

    #[test]
    fn connection_errors_say_refused_or_silent() {
        let server = addr("192.0.2.1:3478");
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let silent = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(
            unreachable(server, Transport::Udp, &refused),
            Diagnosis::UdpRefused { server }
        );
        let udp_silent = unreachable(server, Transport::Udp, &silent);
        assert!(udp_silent
            .to_string()
            .starts_with("UDP blocked or nothing listening"));
        assert!(unreachable(server, Transport::Tls, &refused)
            .to_string()
            .contains("`tls-listen`"));
        assert_eq!(
            unreachable(server, Transport::Tcp, &silent),
            Diagnosis::TcpNoAnswer { server }
        );
    }
}
