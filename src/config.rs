//! The configuration file (`config/rendez.toml`): strict TOML, one place for defaults.
//!
//! Every key is optional; a missing key takes the default written here. Unknown keys are
//! an error that names the key, and every value is checked before the server starts, so a
//! typo stops startup with a message instead of running with a surprise.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The whole configuration. Field names match the TOML keys (kebab-case there).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// REALM sent in challenges; part of every long-term key.
    pub realm: String,
    /// Addresses to listen on for STUN/TURN over UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// Addresses to listen on for TURN over TLS; used when `[tls]` is configured.
    pub tls_listen: Vec<SocketAddr>,
    /// The public address(es) to advertise in XOR-RELAYED-ADDRESS (1:1 NAT, e.g. cloud VMs),
    /// at most one per IP family. A single string or a list.
    #[serde(deserialize_with = "one_or_many_ips")]
    pub external_ip: Vec<IpAddr>,
    /// The local address(es) relay sockets bind to, at most one per IP family; detected
    /// from the interfaces when empty. A single string or a list.
    #[serde(deserialize_with = "one_or_many_ips")]
    pub relay_ip: Vec<IpAddr>,
    /// Relay ports, "START-END".
    pub relay_ports: PortRange,
    /// Lifetime of an allocation that asks for less or none (RFC 8656: 10 minutes).
    #[serde(with = "humantime_serde_compat")]
    pub allocation_lifetime: Duration,
    /// The longest lifetime granted (RFC 8656: 1 hour).
    #[serde(with = "humantime_serde_compat")]
    pub max_allocation_lifetime: Duration,
    /// UDP worker threads, each with its own sockets and allocations; 0: one per core.
    pub workers: usize,
    /// The relay family for clients that do not ask (browsers never send
    /// REQUESTED-ADDRESS-FAMILY).
    pub default_relay_family: RelayFamily,
    pub log_format: LogFormat,
    /// A tracing filter: "info", "debug", "rendez=debug,warn", ...
    pub log_level: String,
    pub auth: AuthConfig,
    pub peers: PeersConfig,
    pub tls: Option<TlsConfig>,
    /// Automatic certificates from an ACME server (Let's Encrypt), instead of `[tls]`.
    pub acme: Option<AcmeConfig>,
    pub connections: ConnectionsConfig,
    pub signal: SignalConfig,
    /// Rooms that span nodes: every node with the same `[cluster] redis` shares rooms.
    pub cluster: Option<ClusterConfig>,
    pub limits: LimitsConfig,
    pub metrics: MetricsConfig,
    /// The kernel fast path for bound channels (build with `--features xdp`).
    pub xdp: XdpConfig,
    /// On SIGTERM, how long existing allocations may go on relaying (new ones are refused)
    /// before the server exits anyway.
    #[serde(with = "humantime_serde_compat")]
    pub drain_timeout: Duration,
    /// Other TURN servers of the fleet, "IP:PORT" or "HOST:PORT": where a draining or
    /// full server (`limits.allocations-total` reached, relay ports exhausted) sends new
    /// allocations, in turn (300 Try Alternate with ALTERNATE-SERVER, and ALTERNATE-DOMAIN
    /// for a name over TLS). Names are resolved at start and reload. Empty: 486 or 508.
    pub alternate_servers: Vec<AlternateServer>,
    /// Which channel numbers ChannelBind accepts: RFC 5766's 0x4000–0x7FFF (the default,
    /// for older clients) or RFC 8656's 0x4000–0x4FFF.
    pub channel_numbers: ChannelNumbersConfig,
    /// NAT behaviour discovery (RFC 5780): a second IP of this host and a second port. STUN
    /// is then answered on both IPs × both ports over UDP, with OTHER-ADDRESS and
    /// CHANGE-REQUEST. The primary address is the first `listen` address of its family (on
    /// a wildcard, the relay IP of the family).
    pub other_address: Option<SocketAddr>,
    /// SOFTWARE in every response; unset: the server's version is not advertised.
    pub software: Option<String>,
}

/// An `alternate-servers` entry as written: an IP address or a DNS name, and a port.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct AlternateServer {
    pub host: AlternateHost,
    pub port: u16,
}

/// How an alternate server is named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AlternateHost {
    Ip(IpAddr),
    /// A DNS name, resolved at start and at each reload; TLS clients are told it.
    Name(String),
}

impl std::fmt::Display for AlternateServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.host {
            AlternateHost::Ip(ip) => SocketAddr::new(*ip, self.port).fmt(f),
            AlternateHost::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for AlternateServer {
    fn from(address: SocketAddr) -> Self {
        Self {
            host: AlternateHost::Ip(address.ip()),
            port: address.port(),
        }
    }
}

impl TryFrom<String> for AlternateServer {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if let Ok(address) = text.parse::<SocketAddr>() {
            return Ok(address.into());
        }
        let problem = || {
            format!(
                "alternate-servers: expected \"IP:PORT\" or \"HOST:PORT\", like \"203.0.113.8:3478\", \"[2001:db8::8]:3478\" or \"turn2.example.com:3478\"; got {text:?}"
            )
        };
        let (host, port) = text.rsplit_once(':').ok_or_else(problem)?;
        let port: u16 = port.parse().map_err(|_| problem())?;
        // A bare IPv6 address without brackets (or a mistyped one) is no DNS name either.
        if !is_dns_name(host) || host.parse::<IpAddr>().is_ok() {
            return Err(problem());
        }
        Ok(Self {
            host: AlternateHost::Name(host.to_ascii_lowercase()),
            port,
        })
    }
}

/// A secret from the config (`[auth] nonce-secret`): compared and cloned like a string, but
/// never shown by `Debug`, so a logged config does not carry it.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the code that keys something with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Quotas and rate limits, so one user, address or flood cannot take the whole server.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LimitsConfig {
    /// Allocations one user holds at once (a REST credential's user is the NAME in
    /// `EXPIRY:NAME`, so minting new credentials does not escape it). A call-page visitor
    /// in a full room of six holds up to 15: one per peer and TURN transport.
    pub allocations_per_user: u32,
    /// Allocations one client address holds at once (IPv6: one /64).
    pub allocations_per_ip: u32,
    /// Allocations on the whole server.
    pub allocations_total: u32,
    /// Bytes per second one allocation relays in each direction; the excess is dropped.
    /// 0: no limit.
    pub bandwidth_per_allocation: u64,
    /// 401 and 438 replies per second over UDP to one source address (IPv6: one /64);
    /// beyond it requests are dropped (clients retransmit), so the server cannot be used
    /// to reflect traffic at a spoofed address.
    pub unauthorized_per_ip: u32,
    /// Binding responses per second over UDP to one source address (IPv6: one /64). Binding
    /// needs no credentials and its answer is larger than the request, so a spoofed flood is
    /// limited too; ICE sends a few per call.
    pub binding_per_ip: u32,
    /// Peer connections one TCP allocation (RFC 6062) may have open, in any state: Connects
    /// in progress, connections waiting (up to 30 s) for their ConnectionBind, and bound ones
    /// relaying. Beyond it a Connect gets 508 and a peer's connection is closed.
    pub tcp_connections_per_allocation: u32,
    /// TCP relays (peer connections of TCP allocations, in any state) on the whole server.
    /// Each costs two sockets and 32 KiB of buffers while it relays.
    pub tcp_relays_total: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            allocations_per_user: 30,
            allocations_per_ip: 100,
            allocations_total: 10_000,
            bandwidth_per_allocation: 1_000_000,
            unauthorized_per_ip: 20,
            binding_per_ip: 100,
            tcp_connections_per_allocation: 16,
            tcp_relays_total: 1000,
        }
    }
}

/// Prometheus metrics.
#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct MetricsConfig {
    /// Serve `/metrics` (Prometheus text) here; off when unset. Keep it on loopback or a
    /// private network: the figures describe the whole server.
    pub listen: Option<SocketAddr>,
}

/// `[xdp]`: the kernel fast path. Off unless `interface` is set.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct XdpConfig {
    /// The network interface(s) clients and peers reach the relay through: `"eth0"`, or
    /// `["eth0", "eth1"]` when clients and peers face different interfaces.
    #[serde(deserialize_with = "some_interfaces")]
    pub interface: Option<Vec<String>>,
    /// How the program is attached.
    pub mode: XdpMode,
    /// Bound channels the fast path holds at most (both directions each); more stay on
    /// the sockets path.
    pub max_channels: u32,
    /// Answer STUN Binding requests to the UDP listen addresses in the kernel too (while
    /// the fast path is attached); `false` leaves every Binding to the sockets path.
    pub binding: bool,
}

impl Default for XdpConfig {
    fn default() -> Self {
        Self {
            interface: None,
            mode: XdpMode::Auto,
            max_channels: 65536,
            binding: true,
        }
    }
}

/// `[xdp] mode`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// In the driver (fastest); startup fails if the driver cannot, or the process may not.
    Native,
    /// In the kernel's generic path (any interface, slower than native).
    Generic,
    /// Native where the driver can, else generic; without the privilege, the sockets path.
    #[default]
    Auto,
}

impl XdpMode {
    /// The name as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
            XdpMode::Auto => "auto",
        }
    }
}

/// The HTTP server with the call page and WebSocket signaling.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SignalConfig {
    /// Serve the page and signaling at all.
    pub enabled: bool,
    /// HTTP address (HTTPS when `[tls]` is set: browsers allow cameras only on secure
    /// origins or localhost).
    pub listen: SocketAddr,
    /// Participants per room (full mesh).
    pub room_size: usize,
    /// When set, joining a room needs a token from `rendez token`.
    pub token_secret: Option<String>,
    /// A file holding `token-secret` instead (e.g. a systemd credential); read by
    /// [`Config::load_secrets`].
    pub token_secret_file: Option<PathBuf>,
    /// Longest signaling message accepted.
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection (bursts of twice that).
    pub messages_per_second: u32,
    /// Rooms one IP address (IPv6: one /64) may be in at once.
    pub rooms_per_ip: usize,
    /// A signaling connection that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// ICE server URLs handed to browsers; empty: every configured transport at the host
    /// name the browser used to reach the page.
    pub turn_urls: Vec<String>,
    /// Lifetime of the TURN credentials each page visitor gets. Allocations are refreshed
    /// with them, so this bounds how long a relayed call can last without a reload of the
    /// page.
    #[serde(with = "humantime_serde_compat")]
    pub credential_ttl: Duration,
    /// Longest chat message, in bytes of UTF-8.
    pub max_chat_bytes: usize,
    /// The video a participant may send in all (kbit/s, audio not included): the page
    /// shares it among its peers, so a full mesh fits an ordinary uplink.
    pub upstream_kbps: u32,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            room_size: 6,
            token_secret: None,
            token_secret_file: None,
            max_message_bytes: 64 * 1024,
            messages_per_second: 20,
            rooms_per_ip: 8,
            idle_timeout: Duration::from_secs(60),
            turn_urls: Vec::new(),
            credential_ttl: Duration::from_secs(6 * 3600),
            max_chat_bytes: 4096,
            upstream_kbps: 2500,
        }
    }
}

/// `[cluster]`: rooms shared with the other nodes of a fleet through one Redis. `Debug`
/// shows the Redis URL without its password.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterConfig {
    /// `redis://[:PASSWORD@]HOST:PORT/DB`, or `rediss://` for TLS.
    pub redis: String,
    /// A file holding the Redis password instead of the URL (e.g. a systemd credential);
    /// read by [`Config::load_secrets`] into `password`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The Redis password from `password-file`.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// How often a node renews its presence; a node silent for three heartbeats is taken
    /// for dead and its participants leave their rooms.
    #[serde(
        default = "ClusterConfig::default_heartbeat",
        with = "humantime_serde_compat"
    )]
    pub heartbeat: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis", &self.redis_display())
            .field("password_file", &self.password_file)
            .field("password", &self.password)
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl ClusterConfig {
    fn default_heartbeat() -> Duration {
        Duration::from_secs(2)
    }

    /// The Redis server as logs may show it: scheme, host and port, never a password.
    pub fn redis_display(&self) -> String {
        let (scheme, rest) = self
            .redis
            .split_once("://")
            .unwrap_or(("redis", &self.redis));
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let host = host.split('/').next().unwrap_or(host);
        format!("{scheme}://{host}")
    }
}

/// Certificate and key for TURN over TLS (`turns:`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Automatic certificates (`[acme]`): obtained from an ACME server at start when none is
/// cached, renewed in the background, and served wherever `[tls]` would be.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AcmeConfig {
    /// DNS names of the certificate; each must resolve to this server.
    pub domains: Vec<String>,
    /// Contact address the CA writes to about expiry and problems.
    #[serde(default)]
    pub email: Option<String>,
    /// The ACME directory URL.
    #[serde(default = "AcmeConfig::default_directory")]
    pub directory: String,
    #[serde(default)]
    pub challenge: AcmeChallenge,
    /// Account key and certificates, kept across restarts.
    #[serde(default = "AcmeConfig::default_cache_dir")]
    pub cache_dir: PathBuf,
    /// An extra PEM root, beside Mozilla's, for the directory's HTTPS (a private ACME
    /// server).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left.
    #[serde(
        default = "AcmeConfig::default_renew_before",
        with = "humantime_serde_compat"
    )]
    pub renew_before: Duration,
    /// With `challenge = "http-01"`: the plain-HTTP address the CA's validator reaches
    /// (port 80 in production); it answers challenges and redirects the rest to HTTPS.
    #[serde(default = "AcmeConfig::default_http_listen")]
    pub http_listen: SocketAddr,
}

impl AcmeConfig {
    /// Let's Encrypt's production directory.
    pub const LETS_ENCRYPT: &'static str = "https://acme-v02.api.letsencrypt.org/directory";

    /// `[acme]` for `domains` with every other key at its default.
    pub fn for_domains(domains: Vec<String>) -> AcmeConfig {
        AcmeConfig {
            domains,
            email: None,
            directory: Self::default_directory(),
            challenge: AcmeChallenge::default(),
            cache_dir: Self::default_cache_dir(),
            ca: None,
            renew_before: Self::default_renew_before(),
            http_listen: Self::default_http_listen(),
        }
    }

    fn default_directory() -> String {
        Self::LETS_ENCRYPT.into()
    }
    fn default_cache_dir() -> PathBuf {
        PathBuf::from("/var/lib/rendez/acme")
    }
    fn default_renew_before() -> Duration {
        Duration::from_secs(30 * 24 * 3600)
    }
    fn default_http_listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 80))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.domains.is_empty() {
            return Err(invalid(
                "acme.domains",
                "needs at least one DNS name, e.g. [\"meet.example.com\"]",
            ));
        }
        if let Some(bad) = self.domains.iter().find(|d| !is_dns_name(d)) {
            return Err(invalid(
                "acme.domains",
                &format!("{bad:?} is not a DNS name (letters, digits, '-' and '.')"),
            ));
        }
        if let Some(email) = &self.email {
            if !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(invalid(
                    "acme.email",
                    &format!("{email:?} is not an email address"),
                ));
            }
        }
        if !self.directory.starts_with("https://") {
            return Err(invalid(
                "acme.directory",
                "must be an https:// URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
            ));
        }
        if self.renew_before.is_zero() {
            return Err(invalid(
                "acme.renew-before",
                "must be more than zero, e.g. \"30d\"",
            ));
        }
        Ok(())
    }
}

fn invalid(key: &str, problem: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// How the ACME server checks that this server answers for the domain.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// A TLS handshake with ALPN `acme-tls/1` on port 443: needs nothing but 443.
    #[default]
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
    /// `GET /.well-known/acme-challenge/TOKEN` on port 80 (`http-listen`).
    #[serde(rename = "http-01")]
    Http01,
}

/// Limits on TCP and TLS connections, so idle or hostile connections cost bounded memory.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ConnectionsConfig {
    /// Open TCP/TLS connections in all.
    pub max: usize,
    /// Open TCP/TLS connections from one IP address (IPv6: one /64).
    pub max_per_ip: usize,
    /// A PROXY header, a TLS handshake, a new connection's first message, and every message
    /// once its first byte has arrived must complete within this.
    #[serde(with = "humantime_serde_compat")]
    pub message_timeout: Duration,
    /// A connection without an allocation that sends nothing for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// Load balancers whose TCP/TLS connections begin with a PROXY protocol (v1 or v2)
    /// header naming the client they relay. Connections from these must have one, and no
    /// one else's are read for one. Empty: off.
    pub proxy_protocol_from: Vec<IpNet>,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        Self {
            max: 10_000,
            max_per_ip: 64,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            proxy_protocol_from: Vec::new(),
        }
    }
}

/// `channel-numbers`: see [`crate::turn::ChannelNumbers`].
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelNumbersConfig {
    #[default]
    Rfc5766,
    Rfc8656,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RelayFamily {
    #[default]
    Ipv4,
    Ipv6,
    MatchClient,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AuthConfig {
    /// TURN REST API shared secrets; the first one mints, all of them verify.
    pub secrets: Vec<String>,
    /// Files holding one more shared secret each (e.g. systemd credentials), added after
    /// `secrets` by [`Config::load_secrets`]. A single path or a list.
    #[serde(deserialize_with = "one_or_many_paths")]
    pub secret_file: Vec<PathBuf>,
    /// Static users.
    pub users: Vec<UserConfig>,
    /// Lifetime of credentials minted by `rendez credential` when --ttl is not given.
    #[serde(with = "humantime_serde_compat")]
    pub credential_ttl: Duration,
    /// REST credentials whose expiry lies further ahead than this are refused, so a
    /// credential minted to last for ever (or by a backend with a broken clock) is useless.
    #[serde(with = "humantime_serde_compat")]
    pub max_credential_ttl: Duration,
    /// What the nonce key is made from, shared by every node of a fleet so that a nonce
    /// one node hands out is good at another (still only from the client's address).
    /// At least 16 bytes. Unset: a random key for this run.
    pub nonce_secret: Option<Secret>,
    /// A file holding `nonce-secret` instead (e.g. a systemd credential); read by
    /// [`Config::load_secrets`].
    pub nonce_secret_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct UserConfig {
    pub name: String,
    pub password: Option<String>,
    /// Hex MD5(name:realm:password), instead of `password`.
    pub key: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct PeersConfig {
    /// Peer ranges to allow even if the default list denies them.
    pub allow: Vec<IpNet>,
    /// Peer ranges to deny in addition to the default list.
    pub deny: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An inclusive port range written "START-END".
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(try_from = "String")]
pub struct PortRange(pub RangeInclusive<u16>);

impl Default for Config {
    fn default() -> Self {
        Self {
            realm: "rendez".into(),
            listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 3478)),
                SocketAddr::from(([0u16; 8], 3478)),
            ],
            tls_listen: vec![
                SocketAddr::from(([0, 0, 0, 0], 5349)),
                SocketAddr::from(([0u16; 8], 5349)),
            ],
            external_ip: Vec::new(),
            relay_ip: Vec::new(),
            relay_ports: PortRange(49152..=65535),
            default_relay_family: RelayFamily::Ipv4,
            workers: 0,
            allocation_lifetime: Duration::from_secs(600),
            max_allocation_lifetime: Duration::from_secs(3600),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            auth: AuthConfig::default(),
            peers: PeersConfig::default(),
            tls: None,
            acme: None,
            connections: ConnectionsConfig::default(),
            signal: SignalConfig::default(),
            cluster: None,
            limits: LimitsConfig::default(),
            metrics: MetricsConfig::default(),
            xdp: XdpConfig::default(),
            drain_timeout: Duration::from_secs(30),
            alternate_servers: Vec::new(),
            channel_numbers: ChannelNumbersConfig::Rfc5766,
            other_address: None,
            software: None,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            secret_file: Vec::new(),
            users: Vec::new(),
            credential_ttl: Duration::from_secs(24 * 3600),
            max_credential_ttl: Duration::from_secs(7 * 24 * 3600),
            nonce_secret: None,
            nonce_secret_file: None,
        }
    }
}

/// A configuration problem, phrased for the operator: what key, what is wrong, what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Syntax(String),
    #[error("invalid config: `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

impl Config {
    /// Whether TURN over TLS and the HTTPS page are served: with a certificate from files
    /// (`[tls]`) or from an ACME server (`[acme]`).
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some() || self.acme.is_some()
    }

    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(describe_syntax_error(&e, text)))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file, then reads the secret files it names
    /// ([`Config::load_secrets`]).
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut config = Self::from_toml(&text)?;
        config.load_secrets()?;
        Ok(config)
    }

    /// Reads the secret files — `[auth] secret-file` into `auth.secrets` (after those
    /// already there), `[auth] nonce-secret-file` into `auth.nonce-secret`,
    /// `[signal] token-secret-file` into `signal.token-secret` — and expands
    /// `$CREDENTIALS_DIRECTORY` (where systemd puts `LoadCredential=` files) in them and in
    /// `[tls] cert` and `key`. Each file holds one secret; a trailing newline is dropped.
    ///
    /// Afterwards the config holds the values themselves and no file keys, so running this
    /// again changes nothing; a reload parses the file anew and runs it on the new config.
    /// On error (naming the key and the file, never the content) `self` is unchanged.
    pub fn load_secrets(&mut self) -> Result<(), ConfigError> {
        let credentials = std::env::var_os(CREDENTIALS_DIRECTORY).map(PathBuf::from);
        self.load_secrets_from(credentials.as_deref())
    }

    /// [`Config::load_secrets`] with systemd's credentials directory given.
    fn load_secrets_from(&mut self, credentials: Option<&Path>) -> Result<(), ConfigError> {
        const SECRET_FILE: &str = "auth.secret-file";
        const TOKEN_SECRET_FILE: &str = "signal.token-secret-file";
        const NONCE_SECRET_FILE: &str = "auth.nonce-secret-file";
        let mut secrets = self.auth.secrets.clone();
        for path in &self.auth.secret_file {
            let secret = read_secret(&expand_credentials(path, credentials, SECRET_FILE)?)
                .map_err(|problem| problem.for_key(SECRET_FILE))?;
            if !secrets.contains(&secret) {
                secrets.push(secret);
            }
        }
        let token_secret = match &self.signal.token_secret_file {
            Some(_) if self.signal.token_secret.is_some() => {
                return Err(ConfigError::Invalid {
                    key: TOKEN_SECRET_FILE.into(),
                    problem: "set either `token-secret` or `token-secret-file`, not both".into(),
                })
            }
            Some(path) => Some(
                read_secret(&expand_credentials(path, credentials, TOKEN_SECRET_FILE)?)
                    .map_err(|problem| problem.for_key(TOKEN_SECRET_FILE))?,
            ),
            None => self.signal.token_secret.clone(),
        };
        let cluster = match &self.cluster {
            Some(cluster) => {
                const PASSWORD_FILE: &str = "cluster.password-file";
                let password = match &cluster.password_file {
                    Some(path) => Some(Secret::new(
                        read_secret(&expand_credentials(path, credentials, PASSWORD_FILE)?)
                            .map_err(|problem| problem.for_key(PASSWORD_FILE))?,
                    )),
                    None => cluster.password.clone(),
                };
                Some(ClusterConfig {
                    password_file: None,
                    password,
                    ..cluster.clone()
                })
            }
            None => None,
        };
        let nonce_secret = match &self.auth.nonce_secret_file {
            Some(_) if self.auth.nonce_secret.is_some() => return Err(both_nonce_secrets()),
            Some(path) => {
                let path = expand_credentials(path, credentials, NONCE_SECRET_FILE)?;
                let secret =
                    read_secret(&path).map_err(|problem| problem.for_key(NONCE_SECRET_FILE))?;
                if secret.len() < MIN_NONCE_SECRET_BYTES {
                    return Err(SecretFileProblem {
                        path,
                        problem: NONCE_SECRET_TOO_SHORT.into(),
                    }
                    .for_key(NONCE_SECRET_FILE));
                }
                Some(Secret::new(secret))
            }
            None => self.auth.nonce_secret.clone(),
        };
        let tls = match &self.tls {
            Some(tls) => Some(TlsConfig {
                cert: expand_credentials(&tls.cert, credentials, "tls.cert")?,
                key: expand_credentials(&tls.key, credentials, "tls.key")?,
            }),
            None => None,
        };
        self.auth.secrets = secrets;
        self.auth.secret_file.clear();
        self.auth.nonce_secret = nonce_secret;
        self.auth.nonce_secret_file = None;
        self.signal.token_secret = token_secret;
        self.signal.token_secret_file = None;
        self.tls = tls;
        self.cluster = cluster;
        Ok(())
    }

    /// Checks what types alone cannot. Called by the parsers and again after overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        };
        if let Some(interfaces) = &self.xdp.interface {
            if interfaces.is_empty() {
                return Err(invalid(
                    "xdp.interface",
                    "names no interface: name one, e.g. \"eth0\", or remove the key to turn the fast path off",
                ));
            }
            for (i, interface) in interfaces.iter().enumerate() {
                // IFNAMSIZ: 15 bytes and a NUL.
                if interface.is_empty() || interface.len() > 15 || interface.contains(['/', ' ']) {
                    return Err(invalid(
                        "xdp.interface",
                        "must be a network interface name of 1 to 15 characters, e.g. \"eth0\" (see `ip link`)",
                    ));
                }
                if interfaces[..i].contains(interface) {
                    return Err(invalid(
                        "xdp.interface",
                        &format!("names {interface:?} twice: list each interface once"),
                    ));
                }
            }
        }
        if !(1..=1 << 24).contains(&self.xdp.max_channels) {
            return Err(invalid(
                "xdp.max-channels",
                "must be 1 to 16777216 (each costs about 200 bytes of kernel memory), e.g. 65536",
            ));
        }
        if self.realm.is_empty() || self.realm.len() > 127 {
            return Err(invalid(
                "realm",
                "must be 1 to 127 characters, e.g. \"example.com\"",
            ));
        }
        if self.listen.is_empty() {
            return Err(invalid(
                "listen",
                "needs at least one address, e.g. [\"0.0.0.0:3478\"]",
            ));
        }
        if self
            .relay_ip
            .iter()
            .any(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(invalid(
                "relay-ip",
                "must be addresses of this host (not 0.0.0.0 or ::); leave it out to detect them",
            ));
        }
        if self
            .external_ip
            .iter()
            .any(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(invalid(
                "external-ip",
                "must be the public unicast addresses clients reach",
            ));
        }
        for (key, ips) in [
            ("relay-ip", &self.relay_ip),
            ("external-ip", &self.external_ip),
        ] {
            if ips.iter().filter(|ip| ip.is_ipv4()).count() > 1
                || ips.iter().filter(|ip| ip.is_ipv6()).count() > 1
            {
                return Err(invalid(key, "give at most one IPv4 and one IPv6 address"));
            }
        }
        if !self.relay_ip.is_empty() {
            for ip in &self.external_ip {
                if !self.relay_ip.iter().any(|r| r.is_ipv4() == ip.is_ipv4()) {
                    return Err(invalid(
                        "external-ip",
                        "each external address needs a relay-ip of the same IP family",
                    ));
                }
            }
        }
        if let Some(acme) = &self.acme {
            acme.validate()?;
            if self.tls.is_some() {
                return Err(invalid(
                    "acme",
                    "and [tls] both give the certificate: keep one of them",
                ));
            }
        }
        if self.serves_tls() && self.tls_listen.is_empty() {
            return Err(invalid(
                "tls-listen",
                "needs at least one address when [tls] or [acme] is set, e.g. [\"0.0.0.0:5349\"]",
            ));
        }
        // An address may be in more than one of `listen`, `tls-listen` and `signal.listen`
        // (one port for everything), but only once in each.
        for (key, list) in [("listen", &self.listen), ("tls-listen", &self.tls_listen)] {
            if let Some(twice) = list
                .iter()
                .enumerate()
                .find(|&(i, a)| a.port() != 0 && list[..i].contains(a))
                .map(|(_, a)| a)
            {
                return Err(invalid(
                    key,
                    &format!("lists {twice} twice: give each address once"),
                ));
            }
        }
        if !self.serves_tls()
            && self.signal.enabled
            && self.signal.listen.port() != 0
            && self.tls_listen.contains(&self.signal.listen)
        {
            return Err(invalid(
                "tls",
                &format!(
                    "is needed to serve the page and TURN over TLS together on {} (`tls-listen` and `signal.listen`): add [tls] with `cert` and `key`, or [acme]",
                    self.signal.listen
                ),
            ));
        }
        let c = &self.connections;
        if c.max == 0 || c.max_per_ip == 0 {
            return Err(invalid(
                "connections",
                "`max` and `max-per-ip` must be at least 1",
            ));
        }
        if self.allocation_lifetime < Duration::from_secs(1)
            || self.allocation_lifetime > self.max_allocation_lifetime
            || self.max_allocation_lifetime > Duration::from_secs(24 * 3600)
        {
            return Err(invalid(
                "allocation-lifetime",
                "must be at least 1s and at most `max-allocation-lifetime`, which is at most 24h",
            ));
        }
        if self.workers > 256 {
            return Err(invalid("workers", "must be 0 (one per core) to 256"));
        }
        let signal = &self.signal;
        if !(1..=16).contains(&signal.room_size) {
            return Err(invalid(
                "signal.room-size",
                "must be 1 to 16 (a full mesh beyond 6 strains browsers)",
            ));
        }
        if signal.token_secret.as_deref() == Some("") {
            return Err(invalid(
                "signal.token-secret",
                "must not be empty; remove it to allow anyone",
            ));
        }
        if signal.max_message_bytes < 1024
            || signal.messages_per_second == 0
            || signal.rooms_per_ip == 0
        {
            return Err(invalid(
                "signal",
                "`max-message-bytes` must be at least 1024, `messages-per-second` and `rooms-per-ip` at least 1",
            ));
        }
        if signal.idle_timeout < Duration::from_secs(2) {
            return Err(invalid("signal.idle-timeout", "must be at least 2s"));
        }
        if !(1..=signal.max_message_bytes / 2).contains(&signal.max_chat_bytes) {
            return Err(invalid(
                "signal.max-chat-bytes",
                "must be at least 1 and at most half of `max-message-bytes` (a chat message travels inside a signaling message), e.g. 4096",
            ));
        }
        if !(100..=100_000).contains(&signal.upstream_kbps) {
            return Err(invalid(
                "signal.upstream-kbps",
                "must be 100 to 100000 (kbit/s of video a participant sends in all), e.g. 2500",
            ));
        }
        if let Some(cluster) = &self.cluster {
            // The URL may hold a password: the message names the key, never the value.
            if redis::IntoConnectionInfo::into_connection_info(cluster.redis.as_str()).is_err() {
                return Err(invalid(
                    "cluster.redis",
                    "is not a Redis URL: write it as \"redis://HOST:PORT/DB\", or \"rediss://…\" for TLS",
                ));
            }
            if cluster.password_file.is_some() && cluster.redis.contains('@') {
                return Err(invalid(
                    "cluster.password-file",
                    "set the password either in the `redis` URL or in `password-file`, not both",
                ));
            }
            if cluster.heartbeat < Duration::from_millis(100)
                || cluster.heartbeat > Duration::from_secs(60)
            {
                return Err(invalid(
                    "cluster.heartbeat",
                    "must be 100ms to 60s, e.g. \"2s\" (a dead node's participants leave after three)",
                ));
            }
        }
        const DAY: Duration = Duration::from_secs(24 * 3600);
        if c.message_timeout > DAY || c.idle_timeout > DAY || signal.idle_timeout > DAY {
            return Err(invalid("connections", "timeouts must be at most 24h"));
        }
        if self.auth.credential_ttl > 365 * DAY {
            return Err(invalid("auth.credential-ttl", "must be at most 365 days"));
        }
        if c.message_timeout.is_zero() || c.idle_timeout.is_zero() {
            return Err(invalid(
                "connections",
                "timeouts must be positive, e.g. \"10s\"",
            ));
        }
        if self.auth.secrets.iter().any(String::is_empty) {
            return Err(invalid("auth.secrets", "secrets must not be empty strings"));
        }
        if self.auth.nonce_secret.is_some() && self.auth.nonce_secret_file.is_some() {
            return Err(both_nonce_secrets());
        }
        if let Some(secret) = &self.auth.nonce_secret {
            if secret.expose().len() < MIN_NONCE_SECRET_BYTES {
                return Err(invalid("auth.nonce-secret", NONCE_SECRET_TOO_SHORT));
            }
        }
        for (i, user) in self.auth.users.iter().enumerate() {
            let key = format!("auth.users[{i}]");
            if user.name.is_empty()
                || user.name.contains(':') && crate::turn::rest_expiry(&user.name).is_some()
            {
                return Err(invalid(
                    &key,
                    "`name` must be non-empty and not look like a REST name (EXPIRY:NAME)",
                ));
            }
            match (&user.password, &user.key) {
                (Some(_), None) => {}
                (None, Some(hex)) if parse_key(hex).is_some() => {}
                (None, Some(_)) => {
                    return Err(invalid(
                        &key,
                        "`key` must be 32 hex digits: MD5(name:realm:password)",
                    ))
                }
                _ => return Err(invalid(&key, "set exactly one of `password` or `key`")),
            }
        }
        let limits = &self.limits;
        if (1..MIN_BANDWIDTH).contains(&limits.bandwidth_per_allocation) {
            return Err(invalid(
                "limits.bandwidth-per-allocation",
                "is bytes per second (1000000 = 8 Mbit/s): at least 64000, or 0 for no limit",
            ));
        }
        for (key, value) in [
            ("limits.allocations-per-user", limits.allocations_per_user),
            ("limits.allocations-per-ip", limits.allocations_per_ip),
            ("limits.allocations-total", limits.allocations_total),
            ("limits.unauthorized-per-ip", limits.unauthorized_per_ip),
            ("limits.binding-per-ip", limits.binding_per_ip),
            (
                "limits.tcp-connections-per-allocation",
                limits.tcp_connections_per_allocation,
            ),
            ("limits.tcp-relays-total", limits.tcp_relays_total),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if self.signal.credential_ttl < Duration::from_secs(60)
            || self.signal.credential_ttl > 7 * DAY
        {
            return Err(invalid(
                "signal.credential-ttl",
                "must be 1m to 7d, e.g. \"6h\"",
            ));
        }
        if self.drain_timeout > DAY {
            return Err(invalid(
                "drain-timeout",
                "must be at most 24h, e.g. \"30s\"",
            ));
        }
        for alternate in &self.alternate_servers {
            validate_alternate(alternate)
                .map_err(|problem| invalid("alternate-servers", &problem))?;
        }
        if self.auth.max_credential_ttl > 365 * DAY
            || self.auth.credential_ttl > self.auth.max_credential_ttl
            || self.signal.credential_ttl > self.auth.max_credential_ttl
        {
            return Err(invalid(
                "auth.max-credential-ttl",
                "must be at most 365 days and at least `auth.credential-ttl` and `signal.credential-ttl`",
            ));
        }
        if self.auth.credential_ttl.is_zero() {
            return Err(invalid(
                "auth.credential-ttl",
                "must be positive, e.g. \"24h\"",
            ));
        }
        if let Some(software) = &self.software {
            // RFC 8489 §14.14: fewer than 128 characters, at most 763 bytes.
            if software.is_empty() || software.chars().count() > 127 || software.len() > 763 {
                return Err(invalid(
                    "software",
                    "must be 1 to 127 characters, e.g. \"rendez\"; remove it to send none",
                ));
            }
        }
        if let Some(other) = self.other_address {
            self.validate_other_address(other)
                .map_err(|problem| invalid("other-address", &problem))?;
        }
        Ok(())
    }

    /// The address whose IP and port `other-address` pairs with (RFC 5780's A1:P1): the
    /// first `listen` address of its family. When that is a wildcard, the server pairs with
    /// the relay IP of the family at start.
    pub fn primary_address(&self) -> Option<SocketAddr> {
        let other = self.other_address?;
        self.listen
            .iter()
            .find(|a| a.is_ipv4() == other.is_ipv4())
            .copied()
    }

    fn validate_other_address(&self, other: SocketAddr) -> Result<(), String> {
        let ip = other.ip();
        if ip.is_unspecified() || ip.is_multicast() || ip.to_canonical() != ip {
            return Err("must be a second unicast IP of this host with a port, written plainly, e.g. \"203.0.113.8:3479\"".into());
        }
        let Some(primary) = self.primary_address() else {
            return Err(format!(
                "needs a `listen` address of the same IP family ({other} is {})",
                if other.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        };
        if primary.ip() == ip {
            return Err(format!(
                "must be another IP than the primary listen address {primary}"
            ));
        }
        if primary.port() == other.port() && other.port() != 0 {
            return Err(format!(
                "must use another port than the primary listen address {primary}, e.g. {}",
                SocketAddr::new(ip, primary.port().wrapping_add(1).max(1))
            ));
        }
        Ok(())
    }

    /// The keys that differ between `self` and `new` but take effect only after a restart
    /// (sockets, threads and the relay port split are made once, at start).
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let signal = |c: &Config| (c.signal.enabled, c.signal.listen);
        [
            ("listen", self.listen != new.listen),
            ("tls-listen", self.tls_listen != new.tls_listen),
            ("tls", self.tls.is_some() != new.tls.is_some()),
            ("acme", self.acme != new.acme),
            ("external-ip", self.external_ip != new.external_ip),
            ("relay-ip", self.relay_ip != new.relay_ip),
            ("relay-ports", self.relay_ports != new.relay_ports),
            ("workers", self.workers != new.workers),
            ("log-format", self.log_format != new.log_format),
            (
                "signal.enabled / signal.listen",
                signal(self) != signal(new),
            ),
            ("metrics.listen", self.metrics != new.metrics),
            ("connections", self.connections != new.connections),
            ("other-address", self.other_address != new.other_address),
            // The cluster task connects once; its node id and Redis stay for the process.
            ("cluster", self.cluster != new.cluster),
            // The program is attached and its maps sized once, at start.
            ("xdp", self.xdp != new.xdp),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }

    /// Static users with their secrets, as the TURN core takes them.
    pub fn static_users(&self) -> Vec<(String, crate::turn::UserSecret)> {
        use crate::turn::UserSecret;
        self.auth
            .users
            .iter()
            .filter_map(|u| {
                let secret = match (&u.password, &u.key) {
                    (Some(p), _) => UserSecret::Password(p.clone()),
                    (None, Some(k)) => UserSecret::Key(parse_key(k)?),
                    (None, None) => return None,
                };
                Some((u.name.clone(), secret))
            })
            .collect()
    }
}

/// The environment variable in which systemd names the directory of a unit's credentials
/// (`LoadCredential=`, `SetCredential=`, `LoadCredentialEncrypted=`).
const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

/// The most a secret file may hold: a secret is a line, not a megabyte (or `/dev/zero`).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// `path` with `$CREDENTIALS_DIRECTORY` or `${CREDENTIALS_DIRECTORY}` replaced by
/// `credentials`; an error naming `key` if it is used but systemd did not set it.
fn expand_credentials(
    path: &Path,
    credentials: Option<&Path>,
    key: &str,
) -> Result<PathBuf, ConfigError> {
    const BRACED: &str = "${CREDENTIALS_DIRECTORY}";
    const BARE: &str = "$CREDENTIALS_DIRECTORY";
    let Some(text) = path
        .to_str()
        .filter(|t| t.contains(BARE) || t.contains(BRACED))
    else {
        return Ok(path.to_owned());
    };
    let invalid = |problem: &str| ConfigError::Invalid {
        key: key.into(),
        problem: format!("{}: {problem}", path.display()),
    };
    let Some(directory) = credentials else {
        return Err(invalid(
            "$CREDENTIALS_DIRECTORY is not set: systemd sets it for a unit with \
             LoadCredential=; outside systemd, write the file's own path",
        ));
    };
    let directory = directory
        .to_str()
        .ok_or_else(|| invalid("$CREDENTIALS_DIRECTORY is not UTF-8"))?;
    Ok(PathBuf::from(
        text.replace(BRACED, directory).replace(BARE, directory),
    ))
}

/// Why a secret file could not be used; [`SecretFileProblem::for_key`] makes it a
/// [`ConfigError`] that names the key and the file, never the content.
struct SecretFileProblem {
    path: PathBuf,
    problem: String,
}

impl SecretFileProblem {
    fn for_key(self, key: &str) -> ConfigError {
        let hint = if self.path.starts_with("/run/credentials") {
            " (does the unit have a LoadCredential= for it?)"
        } else {
            ""
        };
        ConfigError::Invalid {
            key: key.into(),
            problem: format!("{}: {}{hint}", self.path.display(), self.problem),
        }
    }
}

/// The one secret in the file at `path`, without its trailing newline.
fn read_secret(path: &Path) -> Result<String, SecretFileProblem> {
    use std::io::Read;
    let problem = |problem: String| SecretFileProblem {
        path: path.to_owned(),
        problem,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(MAX_SECRET_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|error| problem(format!("cannot read it: {error}")))?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(problem(format!(
            "is larger than {} KiB: a secret file holds one secret",
            MAX_SECRET_FILE_BYTES / 1024
        )));
    }
    let text = String::from_utf8(bytes).map_err(|_| problem("is not UTF-8 text".into()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(problem("is empty: write the secret into it".into()));
    }
    Ok(secret.to_owned())
}

/// The shortest `nonce-secret`: a guessable one would let anyone mint nonces for any
/// address, and so flood every node with authentication work and replies.
const MIN_NONCE_SECRET_BYTES: usize = 16;

const NONCE_SECRET_TOO_SHORT: &str = "must be at least 16 bytes; make one with `openssl rand -base64 32` and give every node of the fleet the same";

fn both_nonce_secrets() -> ConfigError {
    invalid(
        "auth.nonce-secret",
        "and `auth.nonce-secret-file` are both set: keep one of them",
    )
}

/// What an `alternate-servers` entry must be beyond its syntax.
fn validate_alternate(alternate: &AlternateServer) -> Result<(), String> {
    if alternate.port == 0 {
        return Err(format!("{alternate} needs a port other than 0, e.g. 3478"));
    }
    match &alternate.host {
        AlternateHost::Ip(ip) => {
            let plain = ip.to_canonical() == *ip;
            if ip.is_unspecified() || ip.is_multicast() || !plain {
                return Err(format!(
                    "{alternate} must be an address clients can reach, written plainly (IPv4 as IPv4, not ::ffff:…), e.g. [\"203.0.113.8:3478\", \"[2001:db8::8]:3478\"]"
                ));
            }
        }
        // RFC 8489 §14.16: ALTERNATE-DOMAIN holds fewer than 128 characters.
        AlternateHost::Name(name) if name.len() > 127 => {
            return Err(format!(
                "the name {name:?} is longer than the 127 characters ALTERNATE-DOMAIN can carry"
            ));
        }
        AlternateHost::Name(_) => {}
    }
    Ok(())
}

/// The lowest `bandwidth-per-allocation` (bytes/s) accepted: below it a video call cannot
/// work, and the value was most likely meant as kbit/s.
const MIN_BANDWIDTH: u64 = 64_000;

/// Keys whose values are secrets: an error on their line must not echo the value.
const SECRET_KEYS: &[&str] = &["secret", "password", "key"];

/// The parser's message with the offending line, unless that line holds a secret: then
/// only the line number and the message with every quoted value blanked out.
fn describe_syntax_error(error: &toml::de::Error, text: &str) -> String {
    let Some(span) = error.span() else {
        return error.to_string();
    };
    let line_number = text[..span.start.min(text.len())].matches('\n').count() + 1;
    let line = text.lines().nth(line_number - 1).unwrap_or("");
    if !SECRET_KEYS.iter().any(|key| line.contains(key)) {
        return error.to_string();
    }
    let mut redacted = String::new();
    for (i, part) in error.message().split('"').enumerate() {
        if i > 0 {
            redacted.push('"');
        }
        // Odd parts sit between quotes.
        redacted.push_str(if i % 2 == 1 { "…" } else { part });
    }
    format!("line {line_number}: {redacted} (value not shown: it may be a secret)")
}

/// Accepts `"1.2.3.4"` as well as `["1.2.3.4", "2001:db8::1"]`.
fn one_or_many_ips<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    one_or_many(
        d,
        "expected an IP address or a list of them, like \"203.0.113.7\" or [\"203.0.113.7\", \"2001:db8::7\"]",
    )
}

/// Accepts `"eth0"` as well as `["eth0", "eth1"]`; present, so the fast path is on.
fn some_interfaces<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    one_or_many(
        d,
        "expected a network interface name or a list of them, like \"eth0\" or [\"eth0\", \"eth1\"]",
    )
    .map(Some)
}

/// Accepts `"/a"` as well as `["/a", "/b"]`.
fn one_or_many_paths<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    one_or_many(
        d,
        "expected a file path or a list of them, like \"$CREDENTIALS_DIRECTORY/turn-secret\"",
    )
}

/// One value or a list of them, with `expected` as the message for anything else.
fn one_or_many<'de, D, T>(d: D, expected: &str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(value)) => Ok(vec![value]),
        Ok(OneOrMany::Many(values)) => Ok(values),
        Err(_) => Err(serde::de::Error::custom(expected)),
    }
}

/// Parses 32 hex digits into a 16-byte key.
pub fn parse_key(hex: &str) -> Option<[u8; 16]> {
    crate::hex::decode(hex.as_bytes())?.try_into().ok()
}

impl TryFrom<String> for PortRange {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let problem = || {
            format!("relay-ports: expected \"START-END\" with 1 <= START <= END <= 65535, like \"49152-65535\"; got {text:?}")
        };
        let (start, end) = text.split_once('-').ok_or_else(problem)?;
        let start: u16 = start.trim().parse().map_err(|_| problem())?;
        let end: u16 = end.trim().parse().map_err(|_| problem())?;
        if start == 0 || start > end {
            return Err(problem());
        }
        Ok(PortRange(start..=end))
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

/// Durations written the human way ("24h", "90m", "3600s").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("expected a duration like \"24h\" or \"30m\": {e}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acme_defaults_and_errors_name_the_key() {
        let acme = Config::from_toml("[acme]\ndomains = [\"meet.example.com\"]")
            .unwrap()
            .acme
            .unwrap();
        assert_eq!(acme.directory, AcmeConfig::LETS_ENCRYPT);
        assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
        assert_eq!(acme.cache_dir, PathBuf::from("/var/lib/rendez/acme"));
        assert_eq!(acme.renew_before, Duration::from_secs(30 * 24 * 3600));
        for (text, key) in [
            ("[acme]\ndomains = []", "acme.domains"),
            ("[acme]\ndomains = [\"bad name\"]", "acme.domains"),
            (
                "[acme]\ndomains = [\"a.example\"]\nemail = \"nobody\"",
                "acme.email",
            ),
            (
                "[acme]\ndomains = [\"a.example\"]\ndirectory = \"http://ca\"",
                "acme.directory",
            ),
            (
                "[acme]\ndomains = [\"a.example\"]\nrenew-before = \"0s\"",
                "acme.renew-before",
            ),
            (
                "[acme]\ndomains = [\"a.example\"]\n[tls]\ncert = \"c\"\nkey = \"k\"",
                "acme",
            ),
        ] {
            let error = Config::from_toml(text).unwrap_err().to_string();
            assert!(error.contains(&format!("`{key}`")), "{text}: {error}");
        }
        let error = Config::from_toml("[acme]\ndomains = [\"a.example\"]\nchallenge = \"dns-01\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("challenge"), "{error}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml("relam = \"x\"").unwrap_err().to_string();
        assert!(err.contains("relam"), "{err}");
        let err = Config::from_toml("[auth]\nsecret = [\"x\"]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("secret"), "{err}");
    }

    #[test]
    fn one_address_may_serve_turn_turns_and_the_page() {
        let shared = Config::from_toml(
            "listen = [\"0.0.0.0:3478\", \"0.0.0.0:443\"]\ntls-listen = [\"0.0.0.0:443\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[signal]\nlisten = \"0.0.0.0:443\"",
        );
        assert!(shared.is_ok(), "{shared:?}");
        // TURN over TCP and the page in the clear need no certificate.
        let plain =
            Config::from_toml("listen = [\"0.0.0.0:80\"]\n[signal]\nlisten = \"0.0.0.0:80\"");
        assert!(plain.is_ok(), "{plain:?}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("relay-ports = \"5-1\"", "relay-ports"),
            ("relay-ports = \"abc\"", "relay-ports"),
            ("listen = [\"nope\"]", "listen"),
            ("listen = []", "listen"),
            ("realm = \"\"", "realm"),
            ("relay-ip = \"0.0.0.0\"", "relay-ip"),
            ("log-format = \"xml\"", "log-format"),
            ("[[auth.users]]\nname = \"a\"", "auth.users[0]"),
            (
                "[[auth.users]]\nname = \"a\"\nkey = \"12\"",
                "auth.users[0]",
            ),
            ("[auth]\nsecrets = [\"\"]", "auth.secrets"),
            ("[auth]\ncredential-ttl = \"soon\"", "credential-ttl"),
            ("[peers]\nallow = [\"10.0.0.0/33\"]", "allow"),
            (
                "external-ip = \"::1\"\nrelay-ip = \"127.0.0.1\"",
                "external-ip",
            ),
            ("relay-ip = [\"127.0.0.1\", \"127.0.0.2\"]", "relay-ip"),
            ("relay-ip = \"nope\"", "relay-ip"),
            ("default-relay-family = \"ipv5\"", "default-relay-family"),
            ("channel-numbers = \"rfc3489\"", "channel-numbers"),
            ("[tls]\ncert = \"a.pem\"", "key"),
            ("[connections]\nmax = 0", "connections"),
            ("[signal]\nroom-size = 40", "signal.room-size"),
            ("[signal]\nlisten = \"nope\"", "listen"),
            ("[signal]\ntoken-secret = \"\"", "signal.token-secret"),
            ("[signal]\nidle-timeout = \"1s\"", "signal.idle-timeout"),
            ("[signal]\nmax-chat-bytes = 0", "signal.max-chat-bytes"),
            ("[signal]\nupstream-kbps = 50", "signal.upstream-kbps"),
            ("[signal]\nmax-chat-bytes = 40000", "signal.max-chat-bytes"),
            ("[cluster]\nredis = \"http://x\"", "cluster.redis"),
            ("[cluster]\nheartbeat = \"2s\"", "redis"),
            (
                "[cluster]\nredis = \"redis://h\"\nheartbeat = \"10ms\"",
                "cluster.heartbeat",
            ),
            (
                "[cluster]\nredis = \"redis://:pw@h\"\npassword-file = \"/p\"",
                "cluster.password-file",
            ),
            ("[cluster]\nredis = \"redis://h\"\nnope = 1", "nope"),
            ("[xdp]\ninterface = \"\"", "xdp.interface"),
            ("[xdp]\ninterface = \"a-very-long-name0\"", "xdp.interface"),
            ("[xdp]\ninterface = []", "xdp.interface"),
            ("[xdp]\ninterface = [\"eth0\", \"eth0\"]", "xdp.interface"),
            ("[xdp]\ninterface = [\"eth0\", \"eth 1\"]", "xdp.interface"),
            ("[xdp]\ninterface = 3", "interface"),
            ("[xdp]\ninterface = \"eth0\"\nmode = \"turbo\"", "mode"),
            ("[xdp]\nmax-channels = 0", "xdp.max-channels"),
            ("[connections]\nidle-timeout = \"0s\"", "connections"),
            (
                "[limits]\nallocations-per-ip = 0",
                "limits.allocations-per-ip",
            ),
            (
                "[limits]\nunauthorized-per-ip = 0",
                "limits.unauthorized-per-ip",
            ),
            ("[limits]\nbandwidth = 5", "bandwidth"),
            (
                "[limits]\nbandwidth-per-allocation = 1000",
                "limits.bandwidth-per-allocation",
            ),
            (
                "alternate-servers = [\"[::ffff:1.2.3.4]:3478\"]",
                "alternate-servers",
            ),
            ("[signal]\ncredential-ttl = \"5s\"", "signal.credential-ttl"),
            ("drain-timeout = \"2d\"", "drain-timeout"),
            (
                "alternate-servers = [\"0.0.0.0:3478\"]",
                "alternate-servers",
            ),
            ("[metrics]\nlisten = \"nope\"", "listen"),
            (
                "[connections]\nproxy-protocol-from = [\"10.0.0.1\"]",
                "proxy-protocol-from",
            ),
            ("listen = [\"0.0.0.0:443\", \"0.0.0.0:443\"]", "listen"),
            (
                "tls-listen = [\"0.0.0.0:443\", \"0.0.0.0:443\"]",
                "tls-listen",
            ),
            (
                "tls-listen = [\"0.0.0.0:443\"]\n[signal]\nlisten = \"0.0.0.0:443\"",
                "tls",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn other_address_and_software_are_checked() {
        let listen = "listen = [\"192.0.2.1:3478\", \"[::]:3478\"]\n";
        let ok = Config::from_toml(&format!("{listen}other-address = \"192.0.2.2:3479\""))
            .expect("a second IP and port");
        assert_eq!(
            ok.primary_address(),
            Some("192.0.2.1:3478".parse().unwrap())
        );
        let wildcard = Config::from_toml("other-address = \"192.0.2.2:3479\"").unwrap();
        assert_eq!(
            wildcard.primary_address(),
            Some("0.0.0.0:3478".parse().unwrap())
        );
        for (text, problem) in [
            (
                format!("{listen}other-address = \"192.0.2.1:3479\""),
                "another IP",
            ),
            (
                format!("{listen}other-address = \"192.0.2.2:3478\""),
                "another port",
            ),
            (
                format!("{listen}other-address = \"0.0.0.0:3479\""),
                "unicast",
            ),
            (
                "listen = [\"[::1]:3478\"]\nother-address = \"192.0.2.2:3479\"".into(),
                "same IP family",
            ),
            ("other-address = \"192.0.2.2:3478\"".into(), "another port"),
            ("software = \"\"".into(), "1 to 127"),
            (format!("software = \"{}\"", "é".repeat(128)), "1 to 127"),
        ] {
            let err = Config::from_toml(&text).unwrap_err().to_string();
            let key = if text.contains("software") {
                "`software`"
            } else {
                "`other-address`"
            };
            assert!(
                err.contains(key) && err.contains(problem),
                "{text:?} gave {err}"
            );
        }
        let software = Config::from_toml(&format!("software = \"{}\"", "é".repeat(127)));
        assert!(
            software.is_ok(),
            "127 characters of 2 bytes fit in 763 bytes"
        );
        let mut moved = ok.clone();
        moved.other_address = Some("192.0.2.3:3479".parse().unwrap());
        assert_eq!(ok.restart_only_changes(&moved), ["other-address"]);
    }

    #[test]
    fn errors_on_secret_lines_do_not_echo_the_value() {
        let err = Config::from_toml("[auth]\nsecrets = \"hunter2-very-secret\"")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = Config::from_toml("[[auth.users]]\nname = \"a\"\npassword = 42")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    /// A directory of secret files, removed when the test ends.
    struct SecretDir(PathBuf);

    impl SecretDir {
        fn new(name: &str, files: &[(&str, &[u8])]) -> Self {
            let dir =
                std::env::temp_dir().join(format!("rendez-secrets-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, content) in files {
                std::fs::write(dir.join(file), content).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for SecretDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn secret_files_are_added_after_inline_secrets() {
        let dir = SecretDir::new(
            "added",
            &[
                ("turn-secret", b"from-credential\n"),
                ("old", b"older-secret\r\n"),
                ("token", b"room-key"),
            ],
        );
        let mut config = Config::from_toml(
            r#"
            [auth]
            secrets = ["inline"]
            secret-file = ["$CREDENTIALS_DIRECTORY/turn-secret", "${CREDENTIALS_DIRECTORY}/old"]
            [signal]
            token-secret-file = "$CREDENTIALS_DIRECTORY/token"
            [tls]
            cert = "${CREDENTIALS_DIRECTORY}/cert.pem"
            key = "$CREDENTIALS_DIRECTORY/key.pem"
            "#,
        )
        .unwrap();
        config.load_secrets_from(Some(&dir.0)).unwrap();
        assert_eq!(
            config.auth.secrets,
            ["inline", "from-credential", "older-secret"]
        );
        assert_eq!(config.signal.token_secret.as_deref(), Some("room-key"));
        let tls = config.tls.clone().unwrap();
        assert_eq!(tls.cert, dir.0.join("cert.pem"));
        assert_eq!(tls.key, dir.0.join("key.pem"));
        // The file keys are used up: running it again (a reload would parse anew) is a no-op.
        let resolved = config.clone();
        config.load_secrets_from(None).unwrap();
        assert_eq!(config, resolved);
        config.validate().unwrap();
    }

    #[test]
    fn the_redis_password_file_is_read_and_never_shown() {
        let dir = SecretDir::new("redis", &[("pw", b"hunter2\n")]);
        let mut config = Config::from_toml(
            "[cluster]\nredis = \"rediss://redis.example.com:6380/2\"\n\
             password-file = \"$CREDENTIALS_DIRECTORY/pw\"",
        )
        .unwrap();
        config.load_secrets_from(Some(&dir.0)).unwrap();
        let cluster = config.cluster.clone().unwrap();
        assert_eq!(
            cluster.password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(cluster.password_file, None);
        assert_eq!(cluster.heartbeat, Duration::from_secs(2));
        assert_eq!(cluster.redis_display(), "rediss://redis.example.com:6380");
        let with_password = ClusterConfig {
            redis: "redis://:hunter2@10.0.0.5:6379/0".into(),
            ..cluster
        };
        assert_eq!(with_password.redis_display(), "redis://10.0.0.5:6379");
        assert!(!format!("{with_password:?}").contains("hunter2"));
        let err = Config::from_toml("[cluster]\nredis = \"http://:hunter2@x\"")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn one_secret_file_may_be_a_plain_path() {
        let dir = SecretDir::new("plain", &[("s", b"only\n\n")]);
        let path = dir.0.join("s");
        let mut config =
            Config::from_toml(&format!("[auth]\nsecret-file = {:?}", path.display())).unwrap();
        config.load_secrets_from(None).unwrap();
        assert_eq!(config.auth.secrets, ["only"]);
    }

    #[test]
    fn unusable_secret_files_name_the_key_and_file_but_not_the_content() {
        let dir = SecretDir::new(
            "bad",
            &[
                ("empty", b"\n"),
                ("binary", b"\xff\xfehunter2"),
                ("huge", &[b'h'; 70 * 1024]),
                ("token", b"hunter2"),
            ],
        );
        for (text, key, file, problem) in [
            (
                "[auth]\nsecret-file = \"$CREDENTIALS_DIRECTORY/missing\"",
                "auth.secret-file",
                "missing",
                "cannot read",
            ),
            (
                "[auth]\nsecret-file = \"$CREDENTIALS_DIRECTORY/empty\"",
                "auth.secret-file",
                "empty",
                "is empty",
            ),
            (
                "[auth]\nsecret-file = [\"$CREDENTIALS_DIRECTORY/binary\"]",
                "auth.secret-file",
                "binary",
                "UTF-8",
            ),
            (
                "[auth]\nsecret-file = \"$CREDENTIALS_DIRECTORY/huge\"",
                "auth.secret-file",
                "huge",
                "larger than 64 KiB",
            ),
            (
                "[signal]\ntoken-secret-file = \"$CREDENTIALS_DIRECTORY/empty\"",
                "signal.token-secret-file",
                "empty",
                "is empty",
            ),
        ] {
            let mut config = Config::from_toml(text).unwrap();
            let before = config.clone();
            let err = config
                .load_secrets_from(Some(&dir.0))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
            assert!(
                err.contains(&dir.0.join(file).display().to_string()),
                "{text:?} gave {err}"
            );
            assert!(err.contains(problem), "{text:?} gave {err}");
            assert!(!err.contains("hunter2") && !err.contains("hhhh"), "{err}");
            assert_eq!(config, before, "a failed load leaves the config as it was");
        }
        let mut both = Config::from_toml(
            "[signal]\ntoken-secret = \"a\"\ntoken-secret-file = \"$CREDENTIALS_DIRECTORY/token\"",
        )
        .unwrap();
        let err = both
            .load_secrets_from(Some(&dir.0))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("signal.token-secret-file") && err.contains("not both"),
            "{err}"
        );
    }

    #[test]
    fn nonce_secret_inline_or_from_a_file_never_shown() {
        let inline =
            Config::from_toml("[auth]\nnonce-secret = \"hunter2-hunter2-hunter2\"").unwrap();
        assert_eq!(
            inline.auth.nonce_secret,
            Some(Secret::new("hunter2-hunter2-hunter2"))
        );
        assert!(!format!("{inline:?}").contains("hunter2"), "Debug hides it");
        let dir = SecretDir::new(
            "nonce",
            &[
                ("nonce", b"hunter2-from-a-file-0123\n"),
                ("short", b"hunter2\n"),
            ],
        );
        let mut from_file =
            Config::from_toml("[auth]\nnonce-secret-file = \"$CREDENTIALS_DIRECTORY/nonce\"")
                .unwrap();
        from_file.load_secrets_from(Some(&dir.0)).unwrap();
        assert_eq!(
            from_file.auth.nonce_secret,
            Some(Secret::new("hunter2-from-a-file-0123"))
        );
        assert_eq!(from_file.auth.nonce_secret_file, None);
        from_file.validate().unwrap();

        let mut short =
            Config::from_toml("[auth]\nnonce-secret-file = \"$CREDENTIALS_DIRECTORY/short\"")
                .unwrap();
        let error = short
            .load_secrets_from(Some(&dir.0))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`auth.nonce-secret-file`")
                && error.contains("at least 16 bytes")
                && error.contains("openssl rand"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn nonce_secret_errors_name_the_keys_and_hide_the_value() {
        for (text, keys) in [
            (
                "[auth]\nnonce-secret = \"hunter2\"",
                &["`auth.nonce-secret`", "at least 16 bytes"][..],
            ),
            (
                "[auth]\nnonce-secret = \"hunter2-hunter2-hunter2\"\nnonce-secret-file = \"/etc/n\"",
                &["`auth.nonce-secret`", "`auth.nonce-secret-file`", "keep one"][..],
            ),
            (
                // A syntax error on a secret's line names the line, not the value.
                "[auth]\nnonce-secret = [\"hunter2-hunter2-hunter2\"]",
                &["line 2"][..],
            ),
        ] {
            let error = Config::from_toml(text).unwrap_err().to_string();
            for key in keys {
                assert!(error.contains(key), "{text:?} gave {error}");
            }
            assert!(!error.contains("hunter2"), "{text:?} gave {error}");
        }
    }

    #[test]
    fn alternate_servers_are_addresses_or_names_with_a_port() {
        let config = Config::from_toml(
            r#"alternate-servers = ["203.0.113.8:3478", "[2001:db8::8]:3478", "TURN2.example.com:5349"]"#,
        )
        .unwrap();
        assert_eq!(
            config.alternate_servers,
            [
                AlternateServer::from("203.0.113.8:3478".parse::<SocketAddr>().unwrap()),
                AlternateServer::from("[2001:db8::8]:3478".parse::<SocketAddr>().unwrap()),
                AlternateServer {
                    host: AlternateHost::Name("turn2.example.com".into()),
                    port: 5349,
                },
            ]
        );
        assert_eq!(
            config.alternate_servers[2].to_string(),
            "turn2.example.com:5349"
        );
        let long = format!("{}example.com:3478", "a.".repeat(60));
        for entry in [
            "turn2.example.com",
            "turn2.example.com:0",
            "turn2.example.com:70000",
            "bad_name:3478",
            "2001:db8::8:3478",
            ":3478",
            "203.0.113.8:0",
            long.as_str(),
        ] {
            let text = format!("alternate-servers = [\"{entry}\"]");
            let error = Config::from_toml(&text).unwrap_err().to_string();
            assert!(error.contains("alternate-servers"), "{text:?} gave {error}");
        }
    }

    #[test]
    fn credentials_directory_must_be_set_when_used() {
        for (text, key) in [
            (
                "[auth]\nsecret-file = \"$CREDENTIALS_DIRECTORY/s\"",
                "auth.secret-file",
            ),
            (
                "[tls]\ncert = \"/etc/c.pem\"\nkey = \"${CREDENTIALS_DIRECTORY}/k.pem\"",
                "tls.key",
            ),
        ] {
            let mut config = Config::from_toml(text).unwrap();
            let err = config.load_secrets_from(None).unwrap_err().to_string();
            assert!(
                err.contains(key) && err.contains("LoadCredential="),
                "{err}"
            );
        }
        let mut plain =
            Config::from_toml("[tls]\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"").unwrap();
        plain.load_secrets_from(None).unwrap();
        assert_eq!(plain.tls.unwrap().key, PathBuf::from("/etc/k.pem"));
    }

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
            realm = "example.com"
            listen = ["127.0.0.1:3478", "[::1]:3478"]
            external-ip = "203.0.113.7"
            relay-ip = ["10.0.0.4", "2001:db8::4"]
            default-relay-family = "match-client"
            channel-numbers = "rfc8656"
            tls-listen = ["127.0.0.1:5349"]
            relay-ports = "40000-40100"
            log-format = "json"
            [auth]
            secrets = ["a", "b"]
            credential-ttl = "1h"
            [[auth.users]]
            name = "alice"
            password = "pw"
            [[auth.users]]
            name = "bob"
            key = "0123456789abcdef0123456789ABCDEF"
            [peers]
            allow = ["127.0.0.0/8"]
            deny = ["8.8.8.0/24"]
            [tls]
            cert = "/etc/rendez/cert.pem"
            key = "/etc/rendez/key.pem"
            [connections]
            max = 100
            max-per-ip = 4
            message-timeout = "5s"
            idle-timeout = "1m"
            proxy-protocol-from = ["10.0.0.0/8", "2001:db8::/32"]
            [xdp]
            interface = "eth0"
            mode = "native"
            max-channels = 1024
            "#,
        )
        .unwrap();
        assert_eq!(c.relay_ports, PortRange(40000..=40100));
        assert_eq!(c.static_users().len(), 2);
        assert_eq!(c.auth.credential_ttl, Duration::from_secs(3600));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.relay_ip.len(), 2);
        assert_eq!(
            c.external_ip,
            vec!["203.0.113.7".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(c.default_relay_family, RelayFamily::MatchClient);
        assert_eq!(c.channel_numbers, ChannelNumbersConfig::Rfc8656);
        assert_eq!(c.connections.max_per_ip, 4);
        assert_eq!(c.connections.proxy_protocol_from.len(), 2);
        assert!(c.tls.is_some());
        assert_eq!(c.xdp.interface, Some(vec!["eth0".to_owned()]));
        assert_eq!((c.xdp.mode, c.xdp.max_channels), (XdpMode::Native, 1024));
        let mut moved = c.clone();
        moved.xdp.mode = XdpMode::Generic;
        assert_eq!(c.restart_only_changes(&moved), ["xdp"]);
    }

    #[test]
    fn xdp_binding_is_on_by_default_a_bool_and_restart_only() {
        let default = Config::from_toml("[xdp]\ninterface = \"eth0\"").unwrap();
        assert!(default.xdp.binding);
        let off = Config::from_toml("[xdp]\ninterface = \"eth0\"\nbinding = false").unwrap();
        assert!(!off.xdp.binding);
        assert_eq!(default.restart_only_changes(&off), ["xdp"]);
        let error = Config::from_toml("[xdp]\nbinding = \"yes\"")
            .unwrap_err()
            .to_string();
        assert!(error.contains("binding"), "{error}");
    }

    #[test]
    fn xdp_interface_is_one_name_or_a_list() {
        let one = Config::from_toml("[xdp]\ninterface = \"eth0\"").unwrap();
        assert_eq!(one.xdp.interface, Some(vec!["eth0".to_owned()]));
        let two = Config::from_toml("[xdp]\ninterface = [\"eth0\", \"eth1\"]").unwrap();
        assert_eq!(
            two.xdp.interface,
            Some(vec!["eth0".to_owned(), "eth1".to_owned()])
        );
        assert_eq!(Config::from_toml("[xdp]").unwrap().xdp.interface, None);
        // Adding an interface takes a restart, like every other `[xdp]` change.
        assert_eq!(one.restart_only_changes(&two), ["xdp"]);
        for (toml, problem) in [
            ("[xdp]\ninterface = []", "names no interface"),
            ("[xdp]\ninterface = [\"eth0\", \"eth1\", \"eth0\"]", "twice"),
            ("[xdp]\ninterface = [\"eth0\", \"\"]", "1 to 15 characters"),
            ("[xdp]\ninterface = [\"eth0\", 7]", "list of them"),
        ] {
            let error = Config::from_toml(toml).unwrap_err().to_string();
            assert!(
                error.contains("interface") && error.contains(problem),
                "{toml}: {error}"
            );
        }
    }
}
