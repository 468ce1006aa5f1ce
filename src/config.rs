//! The configuration file (`config/rendez.toml`): strict TOML, one place for defaults.
//!
//! Every key is optional; a missing key takes the default written here. Unknown keys are
//! an error that names the key, and every value is checked before the server starts, so a
//! typo stops startup with a message instead of running with a surprise.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The whole configuration. Field names match the TOML keys (kebab-case there).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Config {
    /// REALM sent in challenges; part of every long-term key.
    pub realm: String,
    /// Addresses to listen on for STUN/TURN over UDP.
    pub listen: Vec<SocketAddr>,
    /// The public address to advertise in XOR-RELAYED-ADDRESS (1:1 NAT, e.g. cloud VMs).
    pub external_ip: Option<IpAddr>,
    /// The local address relay sockets bind to; detected from the interfaces when unset.
    pub relay_ip: Option<IpAddr>,
    /// Relay ports, "START-END".
    pub relay_ports: PortRange,
    pub log_format: LogFormat,
    /// A tracing filter: "info", "debug", "rendez=debug,warn", ...
    pub log_level: String,
    pub auth: AuthConfig,
    pub peers: PeersConfig,
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
            external_ip: None,
            relay_ip: None,
            relay_ports: PortRange(49152..=65535),
            log_format: LogFormat::Text,
            log_level: "info".into(),
            auth: AuthConfig::default(),
            peers: PeersConfig::default(),
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
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Syntax(e.to_string()))?;
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
        if let Some(ip) = self.relay_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(invalid(
                    "relay-ip",
                    "must be one address of this host (not 0.0.0.0 or ::); leave it out to detect it",
                ));
            }
        }
        if let Some(ip) = self.external_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(invalid(
                    "external-ip",
                    "must be the public unicast address clients reach",
                ));
            }
            if let Some(relay) = self.relay_ip {
                if relay.is_ipv4() != ip.is_ipv4() {
                    return Err(invalid(
                        "external-ip",
                        "must be of the same IP family as relay-ip",
                    ));
                }
            }
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

/// Parses 32 hex digits into a 16-byte key.
pub fn parse_key(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
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
        ] {
            let err = Config::from_toml(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
            realm = "example.com"
            listen = ["127.0.0.1:3478", "[::1]:3478"]
            external-ip = "203.0.113.7"
            relay-ip = "10.0.0.4"
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
            "#,
        )
        .unwrap();
        assert_eq!(c.relay_ports, PortRange(40000..=40100));
        assert_eq!(c.static_users().len(), 2);
        assert_eq!(c.auth.credential_ttl, Duration::from_secs(3600));
        assert_eq!(c.log_format, LogFormat::Json);
    }
}
