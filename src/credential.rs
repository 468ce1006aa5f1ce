//! Short-lived TURN credentials (the TURN REST API scheme) and the `iceServers` entry a
//! browser needs to use them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::hmac;

/// A username/password pair for long-term credential auth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    pub username: String,
    pub password: String,
}

/// Mints `EXPIRY:NAME` with password base64(HMAC-SHA1(secret, username)).
pub fn mint(secret: &str, name: &str, expires_at: SystemTime) -> Credential {
    let expiry = expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let username = if name.is_empty() {
        expiry.to_string()
    } else {
        format!("{expiry}:{name}")
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let password = crate::turn::rest_password(&key, &username);
    Credential { username, password }
}

/// An RTCIceServer object: `{"urls": [...], "username": ..., "credential": ...}`.
pub fn ice_server_json(urls: &[String], credential: &Credential) -> serde_json::Value {
    serde_json::json!({
        "urls": urls,
        "username": credential.username,
        "credential": credential.password,
    })
}

/// The TURN URLs a browser needs to reach every transport `config` serves, addressed to
/// `host`: `turn:…?transport=udp`, `turn:…?transport=tcp`, and `turns:…?transport=tcp`
/// when TLS is configured. `turns:` names the port TURN over TLS shares with the page when
/// it does (usually 443, which the page's visitors can reach whatever their firewall), else
/// the first `tls-listen` port.
pub fn ice_urls(config: &crate::Config, host: &str) -> Vec<String> {
    let port = config.listen.first().map_or(3478, |a| a.port());
    let mut urls = vec![
        format!("turn:{host}:{port}?transport=udp"),
        format!("turn:{host}:{port}?transport=tcp"),
    ];
    if config.serves_tls() {
        let shared_with_page = config
            .tls_listen
            .iter()
            .find(|&&a| config.signal.enabled && a == config.signal.listen && a.port() != 0);
        let tls_port = shared_with_page
            .or(config.tls_listen.first())
            .map_or(5349, |a| a.port());
        urls.push(format!("turns:{host}:{tls_port}?transport=tcp"));
    }
    urls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_username_carries_expiry_and_name() {
        let c = mint(
            "north",
            "bob",
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        assert_eq!(c.username, "1700000000:bob");
        assert_eq!(c.password, "7tNSWpJ3gOxGfEgOjt+kaWhBC20=");
        let json = ice_server_json(&["turn:example.com:3478".into()], &c);
        assert_eq!(json["urls"][0], "turn:example.com:3478");
        assert_eq!(json["credential"], c.password);
    }

    #[test]
    fn urls_cover_every_configured_transport() {
        let plain = crate::Config::default();
        assert_eq!(
            ice_urls(&plain, "turn.example.com"),
            [
                "turn:turn.example.com:3478?transport=udp",
                "turn:turn.example.com:3478?transport=tcp"
            ]
        );
        let tls = crate::Config::from_toml("[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"").unwrap();
        assert_eq!(ice_urls(&tls, "h")[2], "turns:h:5349?transport=tcp");
        let shared = crate::Config::from_toml(
            "tls-listen = [\"0.0.0.0:5349\", \"0.0.0.0:443\"]\n[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[signal]\nlisten = \"0.0.0.0:443\"",
        )
        .unwrap();
        assert_eq!(ice_urls(&shared, "h")[2], "turns:h:443?transport=tcp");
    }
}
