//! `rendez check`: does a TURN server work for a client on this machine?
//!
//! The check plays both ends of a relayed call. As the client it resolves the URL's host,
//! connects (TCP, then TLS for `turns:`), sends a Binding, allocates a relay with the given
//! credentials and creates a permission. As the peer it opens a second UDP socket on this
//! machine and learns that socket's public address with a Binding over UDP. Then the echo:
//! the peer sends to the relayed address and the datagram must come back to the client as
//! a Data indication; the client sends a Send indication and the datagram must reach the
//! peer, from the relayed address. Every step prints its latency; the first failure stops
//! the check with a [`Diagnosis`] in plain words; the allocation is released at the end.
//!
//! A peer on the operator's own machine is what makes the echo honest: the relayed packets
//! really leave the server for the internet and come back, through the same firewalls,
//! NATs and `external-ip` that a browser's packets meet.
//!
//! When a credential minted from the shared secret is refused, the check tries once more
//! with one valid for a day: if that one is accepted, the first was refused as expired, so
//! the server's clock is ahead of this machine's — a skew that makes every short-lived
//! credential fail early.

mod client;
mod diagnosis;
mod report;
mod tls;
mod transport;
mod url;

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

pub use diagnosis::{Diagnosis, Severity};
pub use url::{Transport, TurnUrl, UrlError, TURNS_PORT, TURN_PORT};

use crate::random::Rng;
use crate::stun::{AttrType, Method};
use client::{ErrorReply, Login, RequestError, TurnClient};
use diagnosis::{EchoEvidence, LoginKind};
use report::{Report, Status};
use transport::{Connection, Resend, TransactError, UdpTo};

/// How long a credential minted from `--secret` is valid: short, as a backend's would be.
pub const MINTED_TTL: Duration = Duration::from_secs(10 * 60);
/// The second try after a minted credential is refused, to tell clock skew from a wrong
/// secret.
const LONG_LIVED_TTL: Duration = Duration::from_secs(24 * 3600);

/// The longest wait for the peer's own Binding. The socket is unconnected (it must hear
/// the relay later), so a "port unreachable" cannot cut the wait short; and without an
/// answer the check still has a good guess.
const PEER_BINDING_WAIT: Duration = Duration::from_secs(1);

/// What to check and how to log in.
pub struct Options {
    pub url: TurnUrl,
    pub credentials: Credentials,
    /// The longest wait for each step.
    pub timeout: Duration,
    /// Extra trusted root certificates (PEM) for `turns:`.
    pub ca: Option<PathBuf>,
}

/// The check's login. No `Debug`: it holds a secret or a password.
pub enum Credentials {
    /// Mint a TURN REST credential (`EXPIRY:USER`) from a shared secret.
    Secret { secret: String, user: String },
    /// A static user (`[[auth.users]]`).
    Password { user: String, password: String },
}

/// The result: whether the echo came back, and what was found on the way.
#[derive(Debug)]
pub struct Outcome {
    pub echoed: bool,
    pub findings: Vec<Diagnosis>,
}

impl Outcome {
    /// The echo came back and nothing was found that makes clients fail.
    pub fn passed(&self) -> bool {
        self.echoed
            && self
                .findings
                .iter()
                .all(|finding| finding.severity() != Severity::Failure)
    }
}

/// Runs the check, writing the report to `out`. An `Err` is a problem on this machine (an
/// unreadable `--ca` file, no local socket), not a finding about the server.
pub async fn run(options: &Options, out: impl Write) -> anyhow::Result<Outcome> {
    let mut check = Check {
        options,
        report: Report::new(out),
        findings: Vec::new(),
        rng: Rng::from_os()?,
    };
    check.report.title(&options.url);
    let echoed = match check.all_steps().await {
        Ok(()) => true,
        Err(Halt::Diagnosed) => false,
        Err(Halt::Local(error)) => return Err(error),
    };
    for finding in &check.findings {
        check.report.finding(finding);
    }
    let outcome = Outcome {
        echoed,
        findings: check.findings,
    };
    check.report.verdict(&outcome);
    Ok(outcome)
}

/// Why the remaining steps are skipped.
enum Halt {
    /// A failure has been recorded as a finding.
    Diagnosed,
    /// Something failed on this machine: the check cannot go on.
    Local(anyhow::Error),
}

impl From<anyhow::Error> for Halt {
    fn from(error: anyhow::Error) -> Self {
        Halt::Local(error)
    }
}

type Step<T> = Result<T, Halt>;

struct Check<'a, W: Write> {
    options: &'a Options,
    report: Report<W>,
    findings: Vec<Diagnosis>,
    rng: Rng,
}

/// Where the peer is, and whether that was learned or guessed.
struct Peer {
    socket: UdpSocket,
    addr: SocketAddr,
    assumed: bool,
}

impl<W: Write> Check<'_, W> {
    /// Every step in order; `Ok` when the echo came back.
    async fn all_steps(&mut self) -> Step<()> {
        let server = self.resolve().await?;
        let connection = self.connect(server).await?;
        let (login, kind) = self.login(MINTED_TTL);
        let rng = Rng::from_os().context("seeding transaction ids")?;
        let mut client = TurnClient::new(connection, login, rng, self.options.timeout);
        self.binding(&mut client, server).await?;
        let (relayed, mapped) = self.allocate(&mut client, &kind, server).await?;
        let echoed = self.relay_echo(&mut client, server, relayed, mapped).await;
        self.release(&mut client).await;
        echoed
    }

    async fn resolve(&mut self) -> Step<SocketAddr> {
        let url = &self.options.url;
        let started = Instant::now();
        let lookup = tokio::time::timeout(
            self.options.timeout,
            tokio::net::lookup_host((url.host.as_str(), url.port)),
        )
        .await;
        let error = match lookup {
            Ok(Ok(mut addrs)) => match addrs.next() {
                Some(server) => {
                    self.report
                        .step("resolve", Status::Ok, Some(started.elapsed()), server);
                    return Ok(server);
                }
                None => "no address".to_owned(),
            },
            Ok(Err(error)) => error.to_string(),
            Err(_) => "the lookup timed out".to_owned(),
        };
        self.report
            .step("resolve", Status::Fail, Some(started.elapsed()), &error);
        self.fail(Diagnosis::Unresolvable {
            host: url.host.clone(),
            error,
        })
    }

    /// UDP needs no connection; TCP connects, and TLS shakes hands on top.
    async fn connect(&mut self, server: SocketAddr) -> Step<Connection> {
        let transport = self.options.url.transport;
        if transport == Transport::Udp {
            let connection = Connection::udp(server)
                .await
                .context("opening a local UDP socket")?;
            return Ok(connection);
        }
        // Read the CA file before connecting, so a bad file is reported as such.
        let connector = match transport {
            Transport::Tls => Some(tls::connector(self.options.ca.as_deref())?),
            _ => None,
        };
        let started = Instant::now();
        let tcp = match tokio::time::timeout(self.options.timeout, TcpStream::connect(server)).await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(error)) => return self.unreachable("connect", started, server, &error),
            Err(_) => {
                let error = std::io::ErrorKind::TimedOut.into();
                return self.unreachable("connect", started, server, &error);
            }
        };
        // Requests are small and each waits for its answer: Nagle's algorithm would only
        // hold them back for the peer's delayed ACK.
        tcp.set_nodelay(true).context("setting TCP_NODELAY")?;
        self.report.step(
            "connect",
            Status::Ok,
            Some(started.elapsed()),
            format_args!("tcp {server}"),
        );
        let Some(connector) = connector else {
            return Ok(Connection::stream(tcp));
        };
        let host = &self.options.url.host;
        let name = tls::server_name(host)?;
        let started = Instant::now();
        let handshake =
            tokio::time::timeout(self.options.timeout, connector.connect(name, tcp)).await;
        let error = match handshake {
            Ok(Ok(stream)) => {
                let (_, session) = stream.get_ref();
                let version = session
                    .protocol_version()
                    .map_or("TLS".to_owned(), |v| format!("{v:?}"));
                let alpn = session.alpn_protocol().map_or("no ALPN".to_owned(), |p| {
                    format!("ALPN {}", String::from_utf8_lossy(p))
                });
                self.report.step(
                    "tls",
                    Status::Ok,
                    Some(started.elapsed()),
                    format_args!("{version}, {alpn}, certificate valid for {host}"),
                );
                return Ok(Connection::stream(stream));
            }
            Ok(Err(error)) => error,
            Err(_) => std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no answer to the TLS handshake",
            ),
        };
        self.report
            .step("tls", Status::Fail, Some(started.elapsed()), &error);
        self.fail(diagnosis::tls_failure(host, server, &error))
    }

    async fn binding(
        &mut self,
        client: &mut TurnClient<Connection>,
        server: SocketAddr,
    ) -> Step<()> {
        let started = Instant::now();
        match client.binding().await {
            Ok(mapped) => {
                self.report.step(
                    "binding",
                    Status::Ok,
                    Some(started.elapsed()),
                    format_args!("mapped {mapped}"),
                );
                Ok(())
            }
            Err(RequestError::Transport(TransactError::NoAnswer)) => {
                let silent = std::io::ErrorKind::TimedOut.into();
                match self.options.url.transport {
                    Transport::Udp => self.unreachable("binding", started, server, &silent),
                    _ => {
                        self.not_turn("binding", started, server, "no answer to a Binding request")
                    }
                }
            }
            Err(RequestError::Transport(TransactError::Io(error))) => {
                match (self.options.url.transport, error.kind()) {
                    (Transport::Udp, _) => self.unreachable("binding", started, server, &error),
                    (_, std::io::ErrorKind::UnexpectedEof) => self.not_turn(
                        "binding",
                        started,
                        server,
                        "it closed the connection instead of answering a Binding request",
                    ),
                    _ => self.not_turn("binding", started, server, &error.to_string()),
                }
            }
            Err(RequestError::Refused(reply)) => {
                let what = format!("Binding refused with {} {}", reply.code, reply.reason);
                self.not_turn("binding", started, server, &what)
            }
            Err(RequestError::Unexpected(what)) => self.not_turn("binding", started, server, what),
        }
    }

    /// Allocate a UDP relay; on a refused minted credential, tell clock skew from a wrong
    /// secret. Returns the relayed and the mapped address.
    async fn allocate(
        &mut self,
        client: &mut TurnClient<Connection>,
        kind: &LoginKind,
        server: SocketAddr,
    ) -> Step<(SocketAddr, SocketAddr)> {
        let started = Instant::now();
        let result = client.request(Method::ALLOCATE, request_udp_relay).await;
        let refused_minted = match (&result, kind) {
            (Err(RequestError::Refused(reply)), LoginKind::Minted { ttl }) if reply.code == 401 => {
                Some((reply.clone(), *ttl))
            }
            _ => None,
        };
        let Some((refused, ttl)) = refused_minted else {
            return self.allocated(result, started, server, kind, client.realm());
        };
        // Wrong secret, or expired already by the server's clock? A day-long one tells.
        self.report.step(
            "allocate",
            Status::Fail,
            Some(started.elapsed()),
            format_args!(
                "{} with a credential valid for {}; trying one valid for a day",
                describe(&refused),
                humantime::format_duration(ttl)
            ),
        );
        let (long_lived, _) = self.login(LONG_LIVED_TTL);
        client.change_login(long_lived);
        let started = Instant::now();
        let retry = client.request(Method::ALLOCATE, request_udp_relay).await;
        if retry.is_ok() {
            self.findings
                .push(diagnosis::allocate_refused(&refused, kind, true));
        }
        self.allocated(retry, started, server, kind, client.realm())
    }

    /// Reports an Allocate's result.
    fn allocated(
        &mut self,
        result: Result<client::Reply, RequestError>,
        started: Instant,
        server: SocketAddr,
        kind: &LoginKind,
        realm: Option<&str>,
    ) -> Step<(SocketAddr, SocketAddr)> {
        let elapsed = Some(started.elapsed());
        let reply = match result {
            Ok(reply) => reply,
            Err(error) => {
                self.report
                    .step("allocate", Status::Fail, elapsed, describe_error(&error));
                return self.fail(match error {
                    RequestError::Refused(reply) => {
                        diagnosis::allocate_refused(&reply, kind, false)
                    }
                    other => request_failed("Allocate", server, other),
                });
            }
        };
        let message = reply.message();
        let (Some(relayed), Some(mapped)) = (
            message.xor_relayed_addresses().next(),
            message.xor_mapped_address(),
        ) else {
            self.report
                .step("allocate", Status::Fail, elapsed, "incomplete response");
            return self.fail(Diagnosis::NotTurn {
                server,
                what: "the Allocate response lacks XOR-RELAYED-ADDRESS or XOR-MAPPED-ADDRESS"
                    .into(),
            });
        };
        let lifetime = message
            .lifetime()
            .map_or(String::new(), |l| format!(", lifetime {} s", l.as_secs()));
        let realm = realm.unwrap_or_default();
        self.report.step(
            "allocate",
            Status::Ok,
            elapsed,
            format_args!("relayed {relayed}{lifetime}, realm \"{realm}\""),
        );
        if let Some(warning) = diagnosis::relayed_address(relayed, server) {
            self.findings.push(warning);
        }
        Ok((relayed, mapped))
    }

    /// The peer, the permission for it, and the echo both ways.
    async fn relay_echo(
        &mut self,
        client: &mut TurnClient<Connection>,
        server: SocketAddr,
        relayed: SocketAddr,
        mapped: SocketAddr,
    ) -> Step<()> {
        let peer = self.peer(server, relayed, mapped).await?;
        self.permission(client, server, peer.addr).await?;
        let inbound_arrived = self.echo_inbound(client, &peer, relayed).await?;
        let outbound_source = self.echo_outbound(client, &peer, relayed).await?;
        let evidence = EchoEvidence {
            relayed,
            peer: peer.addr,
            peer_assumed: peer.assumed,
            inbound_arrived,
            outbound_source,
        };
        match diagnosis::echo_failure(&evidence) {
            Some(failure) => self.fail(failure),
            None => Ok(()),
        }
    }

    /// Opens the peer socket and learns its public address with a Binding over UDP to the
    /// server (on the URL's port; for `turns:`, on the standard STUN port). Without an
    /// answer it guesses: this machine's address as the server saw it, with the socket's
    /// own port.
    async fn peer(
        &mut self,
        server: SocketAddr,
        relayed: SocketAddr,
        mapped: SocketAddr,
    ) -> anyhow::Result<Peer> {
        let socket = UdpSocket::bind(transport::unspecified(relayed))
            .await
            .context("opening the peer's UDP socket")?;
        let local_port = socket.local_addr()?.port();
        let started = Instant::now();
        let stun_server = self.stun_server(server, relayed).await;
        let learned = match stun_server {
            Some(stun_server) => {
                let mut wire = UdpTo {
                    socket: &socket,
                    server: stun_server,
                };
                let wait = self.options.timeout.min(PEER_BINDING_WAIT);
                client::binding(&mut wire, &mut self.rng, wait)
                    .await
                    .ok()
                    .map(|addr| (addr, stun_server))
            }
            None => None,
        };
        if let Some((addr, stun_server)) = learned {
            self.report.step(
                "peer",
                Status::Ok,
                Some(started.elapsed()),
                format_args!(
                    "{addr} (this machine's UDP address, from a Binding to {stun_server})"
                ),
            );
            return Ok(Peer {
                socket,
                addr,
                assumed: false,
            });
        }
        let ip = if mapped.is_ipv4() == relayed.is_ipv4() {
            mapped.ip()
        } else {
            route_to(relayed).await?
        };
        let addr = SocketAddr::new(ip, local_port);
        self.report.step(
            "peer",
            Status::Warn,
            Some(started.elapsed()),
            match stun_server {
                Some(asked) => format!("{addr} (a guess: no Binding answer over UDP from {asked})"),
                None => {
                    format!("{addr} (a guess: the server has no address of the relay's family)")
                }
            },
        );
        Ok(Peer {
            socket,
            addr,
            assumed: true,
        })
    }

    /// Where the peer asks for its public address: the server over UDP, on the URL's port
    /// (for `turns:`, the standard STUN port), at an address of the relay's family.
    async fn stun_server(&self, server: SocketAddr, relayed: SocketAddr) -> Option<SocketAddr> {
        let url = &self.options.url;
        let port = match url.transport {
            Transport::Tls => TURN_PORT,
            _ => url.port,
        };
        if server.is_ipv4() == relayed.is_ipv4() {
            return Some(SocketAddr::new(server.ip(), port));
        }
        // Reached over the other family: a dual-stack name may have an address of this one.
        let lookup = tokio::net::lookup_host((url.host.as_str(), port));
        let addrs = tokio::time::timeout(self.options.timeout, lookup)
            .await
            .ok()?
            .ok()?;
        addrs
            .into_iter()
            .find(|addr| addr.is_ipv4() == relayed.is_ipv4())
    }

    async fn permission(
        &mut self,
        client: &mut TurnClient<Connection>,
        server: SocketAddr,
        peer: SocketAddr,
    ) -> Step<()> {
        let started = Instant::now();
        let result = client
            .request(Method::CREATE_PERMISSION, |b| {
                b.add_xor_address(AttrType::XOR_PEER_ADDRESS, peer);
            })
            .await;
        let elapsed = Some(started.elapsed());
        match result {
            Ok(_) => {
                self.report.step(
                    "permission",
                    Status::Ok,
                    elapsed,
                    format_args!("for {}", peer.ip()),
                );
                Ok(())
            }
            Err(error) => {
                self.report
                    .step("permission", Status::Fail, elapsed, describe_error(&error));
                self.fail(match error {
                    RequestError::Refused(reply) if reply.code == 403 => {
                        Diagnosis::PeerDenied { peer: peer.ip() }
                    }
                    RequestError::Refused(reply) => Diagnosis::Refused {
                        step: "CreatePermission",
                        reply,
                    },
                    other => request_failed("CreatePermission", server, other),
                })
            }
        }
    }

    /// The peer sends to the relayed address; it must come back as a Data indication.
    async fn echo_inbound(
        &mut self,
        client: &mut TurnClient<Connection>,
        peer: &Peer,
        relayed: SocketAddr,
    ) -> anyhow::Result<bool> {
        let payload = self.payload("in");
        let started = Instant::now();
        let deadline = started + self.options.timeout;
        let mut resend = Resend::starting_at(started, true);
        let arrived = loop {
            let now = Instant::now();
            if now >= deadline {
                break Ok(None);
            }
            if resend.is_due(now) {
                peer.socket
                    .send_to(&payload, relayed)
                    .await
                    .context("sending from the peer socket")?;
            }
            let wake = resend.next_at().map_or(deadline, |next| next.min(deadline));
            match client.data_indication(&payload, wake).await {
                Ok(Some(from)) => break Ok(Some(from)),
                Ok(None) => {}
                Err(error) => break Err(error),
            }
        };
        let elapsed = Some(started.elapsed());
        match arrived {
            Ok(Some(from)) => {
                self.report.step(
                    "echo in",
                    Status::Ok,
                    elapsed,
                    format_args!("peer → {relayed} → here, as a Data indication from {from}"),
                );
                Ok(true)
            }
            Ok(None) => {
                self.report.step(
                    "echo in",
                    Status::Fail,
                    elapsed,
                    format_args!("nothing the peer sent to {relayed} came back"),
                );
                Ok(false)
            }
            Err(error) => {
                self.report.step(
                    "echo in",
                    Status::Fail,
                    elapsed,
                    format_args!("the connection failed: {error}"),
                );
                Ok(false)
            }
        }
    }

    /// The client sends a Send indication; the datagram must reach the peer. Returns where
    /// it came from.
    async fn echo_outbound(
        &mut self,
        client: &mut TurnClient<Connection>,
        peer: &Peer,
        relayed: SocketAddr,
    ) -> anyhow::Result<Option<SocketAddr>> {
        let payload = self.payload("out");
        let started = Instant::now();
        let deadline = started + self.options.timeout;
        let mut resend = Resend::starting_at(started, true);
        let mut datagram = [0u8; 2048];
        let mut send_error = None;
        let source = loop {
            let now = Instant::now();
            if now >= deadline {
                break None;
            }
            if resend.is_due(now) {
                if let Err(error) = client.send_indication(peer.addr, &payload).await {
                    send_error = Some(error);
                    break None;
                }
            }
            let wake = resend.next_at().map_or(deadline, |next| next.min(deadline));
            if let Ok(received) =
                tokio::time::timeout_at(wake, peer.socket.recv_from(&mut datagram)).await
            {
                let (len, from) = received.context("receiving on the peer socket")?;
                if datagram[..len] == payload[..] {
                    break Some(from);
                }
            }
        };
        let elapsed = Some(started.elapsed());
        match (source, send_error) {
            (Some(from), _) => {
                let status = if from == relayed {
                    Status::Ok
                } else {
                    Status::Warn
                };
                self.report.step(
                    "echo out",
                    status,
                    elapsed,
                    format_args!("here → {relayed} → peer, arrived from {from}"),
                );
            }
            (None, Some(error)) => self.report.step(
                "echo out",
                Status::Fail,
                elapsed,
                format_args!("the connection failed: {error}"),
            ),
            (None, None) => self.report.step(
                "echo out",
                Status::Fail,
                elapsed,
                format_args!("nothing relayed to the peer at {} arrived", peer.addr),
            ),
        }
        Ok(source)
    }

    /// Frees the allocation now rather than when it expires (Refresh with LIFETIME 0).
    async fn release(&mut self, client: &mut TurnClient<Connection>) {
        let started = Instant::now();
        let result = client
            .request(Method::REFRESH, |b| {
                b.add_u32(AttrType::LIFETIME, 0);
            })
            .await;
        let elapsed = Some(started.elapsed());
        match result {
            Ok(_) => self
                .report
                .step("release", Status::Ok, elapsed, "allocation deleted"),
            Err(error) => self.report.step(
                "release",
                Status::Warn,
                elapsed,
                format_args!("{} (it expires by itself)", describe_error(&error)),
            ),
        }
    }

    /// The login for this run; minted ones are valid for `ttl` from now.
    fn login(&self, ttl: Duration) -> (Login, LoginKind) {
        match &self.options.credentials {
            Credentials::Secret { secret, user } => {
                let minted = crate::credential::mint(secret, user, SystemTime::now() + ttl);
                let login = Login {
                    username: minted.username,
                    password: minted.password,
                };
                (login, LoginKind::Minted { ttl })
            }
            Credentials::Password { user, password } => (
                Login {
                    username: user.clone(),
                    password: password.clone(),
                },
                LoginKind::Static { user: user.clone() },
            ),
        }
    }

    /// A payload no stray datagram will match.
    fn payload(&mut self, direction: &str) -> Vec<u8> {
        let mut nonce = [0u8; 8];
        self.rng.fill(&mut nonce);
        format!("rendez check {direction} {}", crate::hex::encode(&nonce)).into_bytes()
    }

    fn unreachable<T>(
        &mut self,
        step: &str,
        started: Instant,
        server: SocketAddr,
        error: &std::io::Error,
    ) -> Step<T> {
        let detail = match error.kind() {
            std::io::ErrorKind::TimedOut => "no answer".to_owned(),
            _ => error.to_string(),
        };
        self.report
            .step(step, Status::Fail, Some(started.elapsed()), detail);
        self.fail(diagnosis::unreachable(
            server,
            self.options.url.transport,
            error,
        ))
    }

    fn not_turn<T>(
        &mut self,
        step: &str,
        started: Instant,
        server: SocketAddr,
        what: &str,
    ) -> Step<T> {
        self.report
            .step(step, Status::Fail, Some(started.elapsed()), what);
        self.fail(Diagnosis::NotTurn {
            server,
            what: what.to_owned(),
        })
    }

    fn fail<T>(&mut self, diagnosis: Diagnosis) -> Step<T> {
        self.findings.push(diagnosis);
        Err(Halt::Diagnosed)
    }
}

/// REQUESTED-TRANSPORT: UDP (RFC 8656 §14.7), what browsers ask for.
fn request_udp_relay(builder: &mut crate::stun::MessageBuilder) {
    const UDP: u8 = 17;
    builder.add(AttrType::REQUESTED_TRANSPORT, &[UDP, 0, 0, 0]);
}

/// The diagnosis for a request that got no usable answer after the server had answered.
fn request_failed(step: &'static str, server: SocketAddr, error: RequestError) -> Diagnosis {
    match error {
        RequestError::Transport(TransactError::NoAnswer) => Diagnosis::NoAnswer {
            step,
            closed: false,
        },
        RequestError::Transport(TransactError::Io(_)) => Diagnosis::NoAnswer { step, closed: true },
        RequestError::Refused(reply) => Diagnosis::Refused { step, reply },
        RequestError::Unexpected(what) => Diagnosis::NotTurn {
            server,
            what: what.to_owned(),
        },
    }
}

/// "401 Unauthorized (realm "x")".
fn describe(reply: &ErrorReply) -> String {
    match &reply.realm {
        Some(realm) => format!("{} {} (realm \"{realm}\")", reply.code, reply.reason),
        None => format!("{} {}", reply.code, reply.reason),
    }
}

fn describe_error(error: &RequestError) -> String {
    match error {
        RequestError::Transport(TransactError::NoAnswer) => "no answer".into(),
        RequestError::Transport(TransactError::Io(error)) => error.to_string(),
        RequestError::Refused(reply) => describe(reply),
        RequestError::Unexpected(what) => (*what).to_owned(),
    }
}

/// This machine's address on the route to `destination` (no packet is sent).
async fn route_to(destination: SocketAddr) -> anyhow::Result<IpAddr> {
    let probe = UdpSocket::bind(transport::unspecified(destination)).await?;
    probe
        .connect(destination)
        .await
        .with_context(|| format!("no route from this machine to {destination}"))?;
    Ok(probe.local_addr()?.ip())
}
