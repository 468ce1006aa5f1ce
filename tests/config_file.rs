//! The shipped `config/rendez.toml` parses, documents every key, and its commented-out
//! examples are valid too.

use rendez::config::{Config, LogFormat, PortRange};

const SHIPPED: &str = include_str!("../config/rendez.toml");

#[test]
fn shipped_config_parses_to_the_defaults() {
    let config = Config::from_toml(SHIPPED).expect("config/rendez.toml parses");
    assert_eq!(config, Config::default(), "the file shows the defaults");
}

#[test]
fn commented_examples_are_valid_keys() {
    let config = Config::from_toml(&uncomment_examples(SHIPPED)).expect("examples parse");
    assert_eq!(
        config.external_ip,
        ["203.0.113.7".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(config.relay_ip.len(), 2);
    assert!(config.tls.is_some());
    assert_eq!(config.static_users().len(), 2);
    assert_eq!(config.peers.allow.len(), 1);
    assert_eq!(config.peers.deny.len(), 1);
    assert_eq!(config.connections.proxy_protocol_from.len(), 1);
    assert_eq!(config.relay_ports, PortRange(49152..=65535));
    assert_eq!(config.log_format, LogFormat::Text);
    assert!(config.signal.token_secret.is_some());
    assert_eq!(config.signal.turn_urls.len(), 2);
    assert_eq!(config.alternate_servers.len(), 2);
    assert!(config.other_address.is_some());
    assert!(config.software.is_some());
    assert!(config.metrics.listen.is_some_and(|a| a.ip().is_loopback()));
    assert_eq!(
        config.auth.secret_file,
        [std::path::PathBuf::from(
            "$CREDENTIALS_DIRECTORY/turn-secret"
        )]
    );
    assert!(config.signal.token_secret_file.is_some());
    assert!(config.auth.nonce_secret_file.is_some());
}

/// `nonce-secret` (indented: it cannot stand beside `nonce-secret-file`) is valid.
#[test]
fn the_nonce_secret_example_parses() {
    let line = SHIPPED
        .lines()
        .find_map(|line| line.strip_prefix("#   nonce-secret = "))
        .expect("the nonce-secret example");
    let config = Config::from_toml(&format!("[auth]\nnonce-secret = {line}"))
        .expect("the nonce-secret example parses");
    assert!(config.auth.nonce_secret.is_some());
}

/// The one-port example under `tls-listen` (indented, so not uncommented with the others).
#[test]
fn the_one_port_example_shares_port_443() {
    let start = SHIPPED
        .find("#   tls-listen")
        .expect("the one-port example");
    let example: String = SHIPPED[start..]
        .lines()
        .map_while(|line| line.strip_prefix("#   "))
        .map(|line| format!("{line}\n"))
        .collect();
    let tls = "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n";
    let config = Config::from_toml(&format!("{example}{tls}")).expect("the example parses");
    assert_eq!(config.tls_listen, [config.signal.listen]);
    assert_eq!(config.signal.listen.port(), 443);
    let urls = rendez::credential::ice_urls(&config, "meet.example.com");
    assert!(urls.contains(&"turns:meet.example.com:443?transport=tcp".to_owned()));
    // Without [tls] it is refused, naming the section.
    let error = Config::from_toml(&example).unwrap_err().to_string();
    assert!(error.contains("tls"), "{error}");
}

#[test]
fn every_key_is_documented() {
    for key in [
        "realm",
        "listen",
        "external-ip",
        "relay-ip",
        "relay-ports",
        "tls-listen",
        "default-relay-family",
        "channel-numbers",
        "workers",
        "allocation-lifetime",
        "max-allocation-lifetime",
        "[tls]",
        "cert",
        "[acme]",
        "domains",
        "email",
        "directory",
        "challenge",
        "cache-dir",
        "ca",
        "renew-before",
        "http-listen",
        "[connections]",
        "max",
        "max-per-ip",
        "message-timeout",
        "idle-timeout",
        "proxy-protocol-from",
        "log-format",
        "log-level",
        "[auth]",
        "secrets",
        "secret-file",
        "credential-ttl",
        "max-credential-ttl",
        "nonce-secret",
        "nonce-secret-file",
        "[[auth.users]]",
        "name",
        "password",
        "key",
        "[peers]",
        "allow",
        "deny",
        "[signal]",
        "enabled",
        "room-size",
        "token-secret",
        "token-secret-file",
        "max-message-bytes",
        "messages-per-second",
        "rooms-per-ip",
        "turn-urls",
        "max-chat-bytes",
        "upstream-kbps",
        "[cluster]",
        "redis",
        "password-file",
        "heartbeat",
        "drain-timeout",
        "alternate-servers",
        "other-address",
        "software",
        "[limits]",
        "allocations-per-user",
        "allocations-per-ip",
        "allocations-total",
        "bandwidth-per-allocation",
        "unauthorized-per-ip",
        "binding-per-ip",
        "tcp-connections-per-allocation",
        "tcp-relays-total",
        "[metrics]",
    ] {
        let shown = SHIPPED
            .lines()
            .map(|l| l.trim_start_matches('#').trim())
            .any(|l| l.starts_with(key));
        assert!(shown, "config/rendez.toml does not show `{key}`");
    }
}

/// Turns `# key = value` and `# [table]` lines into live lines; prose stays a comment.
/// The `[acme]` example (indented, as it cannot stand next to the `[tls]` one) parses.
#[test]
fn the_acme_example_parses() {
    let example: String = SHIPPED
        .lines()
        .skip_while(|line| *line != "#   [acme]")
        .take_while(|line| line.starts_with("#   "))
        .map(|line| line.trim_start_matches("#   ").split(" #").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::from_toml(&example).expect("the [acme] example parses");
    let acme = config.acme.expect("[acme] is set");
    assert_eq!(acme.domains, ["meet.example.com"]);
    assert_eq!(
        acme.renew_before,
        std::time::Duration::from_secs(30 * 24 * 3600)
    );
    assert!(acme.ca.is_some() && acme.email.is_some());
}

fn uncomment_examples(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if looks_like_toml(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn looks_like_toml(line: &str) -> bool {
    let is_key = line.split_once(" = ").is_some_and(|(k, _)| {
        !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '-')
    });
    is_key || (line.starts_with('[') && line.ends_with(']'))
}
