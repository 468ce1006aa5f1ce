//! What a TURN node shares with the other nodes of its fleet: the nonce key (from
//! `[auth] nonce-secret`, so a nonce handed out by one node is good at another) and the
//! alternate servers it sends clients to when it is full or draining (`alternate-servers`,
//! whose names are resolved here, at start and at each reload).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{AlternateHost, AlternateServer, Config, ConfigError};
use crate::random::{fill_from_os, OsRngFailed};
use crate::turn::{nonce_key_from_secret, Alternate};

/// The longest a reload or start waits for the names in `alternate-servers` to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Chooses the nonce key of every shard: made from `nonce-secret` when it is set, so every
/// node with the same secret makes the same key; otherwise random, made once per run, so a
/// reload without the secret keeps the nonces handed out so far.
pub(crate) struct NonceKeys {
    random: [u8; 32],
}

impl NonceKeys {
    pub fn new() -> Result<Self, OsRngFailed> {
        let mut random = [0u8; 32];
        fill_from_os(&mut random)?;
        Ok(Self { random })
    }

    /// The key for `config`.
    pub fn for_config(&self, config: &Config) -> [u8; 32] {
        match &config.auth.nonce_secret {
            Some(secret) => nonce_key_from_secret(secret.expose().as_bytes()),
            None => self.random,
        }
    }
}

/// The alternates of `alternate-servers` with their names resolved: each name to its first
/// address of each IP family. A name that does not resolve (or not in time) is an error
/// naming the key, so a typo stops a start or a reload instead of sending clients nowhere.
pub(crate) async fn resolve_alternates(
    servers: &[AlternateServer],
) -> Result<Vec<Alternate>, ConfigError> {
    let mut alternates = Vec::with_capacity(servers.len());
    for server in servers {
        let alternate = match &server.host {
            AlternateHost::Ip(ip) => Alternate::at(SocketAddr::new(*ip, server.port)),
            AlternateHost::Name(name) => Alternate {
                addresses: resolve(name, server.port).await?,
                domain: Some(name.clone()),
            },
        };
        alternates.push(alternate);
    }
    Ok(alternates)
}

/// `name`'s first IPv4 and first IPv6 address (whichever it has), with `port`.
async fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, ConfigError> {
    let unresolved = |why: String| {
        ConfigError::Invalid {
        key: "alternate-servers".into(),
        problem: format!("cannot resolve {name}: {why}; write the name of a TURN server of the fleet, or its IP address"),
    }
    };
    let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((name, port)))
        .await
        .map_err(|_| unresolved(format!("no answer within {RESOLVE_TIMEOUT:?}")))?
        .map_err(|error| unresolved(error.to_string()))?
        .map(|a| SocketAddr::new(a.ip().to_canonical(), a.port()))
        .filter(|a| !a.ip().is_unspecified() && !a.ip().is_multicast());
    let mut addresses: Vec<SocketAddr> = Vec::with_capacity(2);
    for address in found {
        if !addresses.iter().any(|a| a.is_ipv4() == address.is_ipv4()) {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err(unresolved("it has no usable address".into()));
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(text: &str) -> Vec<AlternateServer> {
        Config::from_toml(&format!("alternate-servers = {text}"))
            .unwrap()
            .alternate_servers
    }

    #[tokio::test]
    async fn addresses_stay_as_given_and_names_resolve_with_their_domain() {
        let resolved = resolve_alternates(&entries(r#"["203.0.113.8:3478", "localhost:3479"]"#))
            .await
            .unwrap();
        assert_eq!(
            resolved[0],
            Alternate::at("203.0.113.8:3478".parse().unwrap())
        );
        assert_eq!(resolved[1].domain.as_deref(), Some("localhost"));
        assert!(resolved[1]
            .addresses
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 3479));
        assert!(resolved[1].addresses.iter().any(|a| a.is_ipv4()));
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_names_the_key() {
        // `.invalid` never resolves (RFC 6761 §6.4).
        let error = resolve_alternates(&entries(r#"["turn2.rendez.invalid:3478"]"#))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`alternate-servers`") && error.contains("turn2.rendez.invalid"),
            "{error}"
        );
    }

    #[test]
    fn the_nonce_key_comes_from_the_secret_or_stays_the_runs_own() {
        let keys = NonceKeys::new().unwrap();
        let plain = Config::default();
        assert_eq!(keys.for_config(&plain), keys.for_config(&plain));
        let shared =
            Config::from_toml("[auth]\nnonce-secret = \"0123456789abcdef-fleet\"").unwrap();
        let key = keys.for_config(&shared);
        assert_ne!(key, keys.for_config(&plain));
        assert_eq!(
            key,
            NonceKeys::new().unwrap().for_config(&shared),
            "another node"
        );
    }
}
