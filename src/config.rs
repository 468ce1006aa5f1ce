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
    #[serde(deserialize_with = "one_or_many")]
    pub external_ip: Vec<IpAddr>,
    /// The local address(es) relay sockets bind to, at most one per IP family; detected
    /// from the interfaces when empty. A single string or a list.
    #[serde(deserialize_with = "one_or_many")]
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
    pub connections: ConnectionsConfig,
    pub signal: SignalConfig,
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
    /// Longest signaling message accepted.
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection (bursts of twice that).
    pub messages_per_second: u32,
    /// Rooms one IP address may be in at once.
    pub rooms_per_ip: usize,
    /// A signaling connection that sends nothing (not even a pong) for this long is closed.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// ICE server URLs handed to browsers; empty: every configured transport at the host
    /// name the browser used to reach the page.
    pub turn_urls: Vec<String>,
}

impl Default for SignalConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            room_size: 6,
            token_secret: None,
            max_message_bytes: 64 * 1024,
            messages_per_second: 20,
            rooms_per_ip: 8,
            idle_timeout: Duration::from_secs(60),
            turn_urls: Vec::new(),
        }
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

/// Limits on TCP and TLS connections, so idle or hostile connections cost bounded memory.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ConnectionsConfig {
    /// Open TCP/TLS connections in all.
    pub max: usize,
    /// Open TCP/TLS connections from one IP address.
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
    /// Static users.
    pub users: Vec<UserConfig>,
    /// Lifetime of credentials minted by `rendez credential` when --ttl is not given.
    #[serde(with = "humantime_serde_compat")]
    pub credential_ttl: Duration,
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
            connections: ConnectionsConfig::default(),
            signal: SignalConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            users: Vec::new(),
            credential_ttl: Duration::from_secs(24 * 3600),
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
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax(describe_syntax_error(&e, text)))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks what types alone cannot. Called by the parsers and again after overrides.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, problem: &str| ConfigError::Invalid {
            key: key.into(),
            problem: problem.into(),
        };
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
        if self.tls.is_some() && self.tls_listen.is_empty() {
            return Err(invalid(
                "tls-listen",
                "needs at least one address when [tls] is set, e.g. [\"0.0.0.0:5349\"]",
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
        if self.auth.credential_ttl.is_zero() {
            return Err(invalid(
                "auth.credential-ttl",
                "must be positive, e.g. \"24h\"",
            ));
        }
        Ok(())
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
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(IpAddr),
        Many(Vec<IpAddr>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(ip)) => Ok(vec![ip]),
        Ok(OneOrMany::Many(ips)) => Ok(ips),
        Err(_) => Err(serde::de::Error::custom(
            "expected an IP address or a list of them, like \"203.0.113.7\" or [\"203.0.113.7\", \"2001:db8::7\"]",
        )),
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
            ("[tls]\ncert = \"a.pem\"", "key"),
            ("[connections]\nmax = 0", "connections"),
            ("[signal]\nroom-size = 40", "signal.room-size"),
            ("[signal]\nlisten = \"nope\"", "listen"),
            ("[signal]\ntoken-secret = \"\"", "signal.token-secret"),
            ("[signal]\nidle-timeout = \"1s\"", "signal.idle-timeout"),
            ("[connections]\nidle-timeout = \"0s\"", "connections"),
            (
                "[connections]\nproxy-protocol-from = [\"10.0.0.1\"]",
                "proxy-protocol-from",
            ),
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
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

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
            realm = "example.com"
            listen = ["127.0.0.1:3478", "[::1]:3478"]
            external-ip = "203.0.113.7"
            relay-ip = ["10.0.0.4", "2001:db8::4"]
            default-relay-family = "match-client"
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
        assert_eq!(c.connections.max_per_ip, 4);
        assert_eq!(c.connections.proxy_protocol_from.len(), 2);
        assert!(c.tls.is_some());
    }
}
