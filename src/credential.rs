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
}
