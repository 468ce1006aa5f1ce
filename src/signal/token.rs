//! Room access tokens: `EXPIRY.SIGNATURE`, where SIGNATURE is base64url(HMAC-SHA256(secret,
//! "rendez-room" NUL room NUL EXPIRY)). Minted by `rendez token`, checked at join when
//! `[signal] token-secret` is set.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;

/// A token for `room` valid until `expires_unix`.
pub fn mint(secret: &str, room: &str, expires_unix: u64) -> String {
    format!("{expires_unix}.{}", signature(secret, room, expires_unix))
}

/// Whether `token` grants `room` at `unix_now`.
pub fn verify(secret: &str, room: &str, token: &str, unix_now: u64) -> bool {
    let Some((expiry, signature)) = token.split_once('.') else {
        return false;
    };
    let Ok(expiry) = expiry.parse::<u64>() else {
        return false;
    };
    let Ok(received) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    expiry > unix_now && hmac::verify(&key, &signed_bytes(room, expiry), &received).is_ok()
}

fn signature(secret: &str, room: &str, expiry: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    URL_SAFE_NO_PAD.encode(hmac::sign(&key, &signed_bytes(room, expiry)).as_ref())
}

fn signed_bytes(room: &str, expiry: u64) -> Vec<u8> {
    format!("rendez-room\0{room}\0{expiry}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_grants_its_room_until_it_expires() {
        let token = mint("s", "standup", 1000);
        assert!(verify("s", "standup", &token, 999));
        assert!(!verify("s", "standup", &token, 1000), "expired");
        assert!(!verify("s", "other", &token, 999), "another room");
        assert!(!verify("t", "standup", &token, 999), "another secret");
        assert!(!verify("s", "standup", "2000.forged", 999));
        assert!(!verify("s", "standup", "garbage", 999));
        let (_, sig) = token.split_once('.').unwrap();
        assert!(
            !verify("s", "standup", &format!("5000.{sig}"), 999),
            "expiry is signed"
        );
    }
}
