//! The `rendez` binary as an operator uses it: help, credentials, and config errors that
//! name the key.

use std::process::Command;

fn rendez(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_rendez"))
        .args(args)
        .env_remove("RENDEZ_SECRET")
        .env_remove("RENDEZ_TOKEN_SECRET")
        .output()
        .expect("run rendez")
}

#[test]
fn help_lists_subcommands_and_flags() {
    let out = rendez(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("serve") && text.contains("credential"),
        "{text}"
    );
    let serve = String::from_utf8_lossy(&rendez(&["serve", "--help"]).stdout).to_string();
    for flag in [
        "--config",
        "--listen",
        "--external-ip",
        "--relay-ip",
        "--relay-ports",
        "--secret",
        "RENDEZ_LISTEN",
    ] {
        assert!(serve.contains(flag), "serve --help lacks {flag}");
    }
    let credential = String::from_utf8_lossy(&rendez(&["credential", "--help"]).stdout).to_string();
    for flag in ["--secret", "--user", "--ttl", "--json", "--url", "--config"] {
        assert!(credential.contains(flag), "credential --help lacks {flag}");
    }
}

#[test]
fn credential_prints_rest_username_and_matching_password() {
    let out = rendez(&[
        "credential",
        "--secret",
        "s3cret",
        "--user",
        "alice",
        "--ttl",
        "1h",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let username = field("username:");
    let password = field("password:");
    let (expiry, name) = username.split_once(':').unwrap();
    assert_eq!(name, "alice");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (now + 3500..=now + 3700).contains(&expiry),
        "expiry {expiry} vs now {now}"
    );
    let expected = rendez::credential::mint(
        "s3cret",
        "alice",
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expiry),
    );
    assert_eq!(password, expected.password);
}

#[test]
fn credential_json_is_an_ice_server_with_the_given_urls() {
    let out = rendez(&[
        "credential",
        "--secret",
        "s",
        "--user",
        "bob",
        "--json",
        "--url",
        "turn:turn.example.com:3478?transport=udp",
        "--url",
        "turn:turn.example.com:3478?transport=tcp",
    ]);
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["urls"].as_array().unwrap().len(), 2);
    assert!(json["username"].as_str().unwrap().ends_with(":bob"));
    assert!(!json["credential"].as_str().unwrap().is_empty());
}

#[test]
fn credential_takes_secret_from_config() {
    let dir = std::env::temp_dir().join(format!("rendez-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "external-ip = \"203.0.113.9\"\n[auth]\nsecrets = [\"from-file\"]\n",
    )
    .unwrap();
    let out = rendez(&[
        "credential",
        "--config",
        path.to_str().unwrap(),
        "--user",
        "c",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["urls"][0], "turn:203.0.113.9:3478?transport=udp");
    let username = json["username"].as_str().unwrap();
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let expected = rendez::credential::mint(
        "from-file",
        "c",
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expiry),
    );
    assert_eq!(json["credential"], expected.password);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn credential_json_names_turns_on_the_port_shared_with_the_page() {
    let dir = std::env::temp_dir().join(format!("rendez-cli-443-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(
        &path,
        "external-ip = \"203.0.113.9\"\ntls-listen = [\"0.0.0.0:5349\", \"0.0.0.0:443\"]\n\
         [tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\n[auth]\nsecrets = [\"s\"]\n\
         [signal]\nlisten = \"0.0.0.0:443\"\n",
    )
    .unwrap();
    let out = rendez(&[
        "credential",
        "--config",
        path.to_str().unwrap(),
        "--user",
        "c",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["urls"][2], "turns:203.0.113.9:443?transport=tcp");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_config_stops_startup_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("rendez-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, key) in [
        ("relay-ports = \"9-1\"\n", "relay-ports"),
        ("listne = [\"127.0.0.1:3478\"]\n", "listne"),
        ("[peers]\nallow = [\"not-a-range\"]\n", "allow"),
    ] {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = rendez(&["serve", "--config", path.to_str().unwrap()]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{text:?}: {stderr}");
    }
    let out = rendez(&["serve", "--config", "/nonexistent/rendez.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rendez.toml"));
    std::fs::remove_dir_all(dir).ok();
}

/// The README's service setup: the shipped config with its `secret-file` example turned on,
/// and the secret where systemd's LoadCredential= puts it (`$CREDENTIALS_DIRECTORY`).
#[test]
fn secret_file_is_read_from_the_credentials_directory() {
    let dir = std::env::temp_dir().join(format!("rendez-creds-{}", std::process::id()));
    let credentials = dir.join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    std::fs::write(credentials.join("turn-secret"), "s3cret-from-systemd\n").unwrap();
    let example = "# secret-file = \"$CREDENTIALS_DIRECTORY/turn-secret\"";
    let shipped = include_str!("../config/rendez.toml");
    assert!(
        shipped.contains(example),
        "config/rendez.toml shows {example}"
    );
    let config = dir.join("rendez.toml");
    std::fs::write(&config, shipped.replace(example, &example[2..])).unwrap();
    let config = config.to_str().unwrap();
    let with_credentials = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rendez"))
            .args(args)
            .env_remove("RENDEZ_SECRET")
            .env("CREDENTIALS_DIRECTORY", &credentials)
            .output()
            .expect("run rendez")
    };

    let out = with_credentials(&["credential", "--config", config, "--user", "alice"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let username = field("username:");
    let expiry: u64 = username.split(':').next().unwrap().parse().unwrap();
    let expected = rendez::credential::mint(
        "s3cret-from-systemd",
        "alice",
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(expiry),
    );
    assert_eq!(field("password:"), expected.password);

    // Outside systemd the variable is unset: the error says which key and why.
    let out = rendez(&["credential", "--config", config, "--user", "alice"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("auth.secret-file") && stderr.contains("CREDENTIALS_DIRECTORY"),
        "{stderr}"
    );

    // A missing credential stops `serve` before it binds anything, naming key and file.
    std::fs::remove_file(credentials.join("turn-secret")).unwrap();
    let out = with_credentials(&["serve", "--config", config]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = credentials.join("turn-secret");
    assert!(
        stderr.contains("auth.secret-file") && stderr.contains(path.to_str().unwrap()),
        "{stderr}"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn token_admits_to_its_room_only() {
    let out = rendez(&[
        "token", "--secret", "room-key", "--room", "standup", "--ttl", "1h",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(rendez::signal::token::verify(
        "room-key", "standup", &token, now
    ));
    assert!(!rendez::signal::token::verify(
        "room-key", "other", &token, now
    ));
    assert!(!rendez::signal::token::verify(
        "room-key",
        "standup",
        &token,
        now + 3700
    ));
    let missing = rendez(&["token", "--room", "standup"]);
    assert!(!missing.status.success(), "a secret source is required");
}
