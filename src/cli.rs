//! The command line: `rendez serve`, `rendez credential`, `rendez token` and `rendez check`.
//!
//! Flags override the config file for the common keys; each flag also reads a `RENDEZ_*`
//! environment variable, so a container or systemd unit can configure rendez without a file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::check::TurnUrl;
use crate::config::{
    AcmeChallenge, AcmeConfig, Config, ConfigError, LogFormat, PortRange, TlsConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "rendez",
    version,
    about = "STUN/TURN server (UDP; RFC 8489, RFC 8656) that makes small video calls work through any NAT",
    long_about = "rendez is a STUN/TURN server for WebRTC.\n\n\
        Run it with `rendez serve` (working defaults: UDP 3478 on every address, a random \
        shared secret printed at start), then give browsers \
        `turn:HOST:3478` in their iceServers with credentials from `rendez credential`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
// Parsed once at start: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the STUN/TURN server until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Mint a short-lived TURN credential (TURN REST API scheme) for a user.
    Credential(CredentialArgs),
    /// Mint a token that admits its holder to one room, for deployments with
    /// `[signal] token-secret`.
    Token(TokenArgs),
    /// Check a TURN server from this machine: Binding, Allocate, CreatePermission and a
    /// relayed echo back to this machine, each step with its latency, and a plain diagnosis
    /// of what fails. Exit status 0 only when the echo came back.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
#[command(group(
    clap::ArgGroup::new("login")
        .required(true)
        .multiple(true)
        .args(["secret", "config", "password"])
))]
pub struct CheckArgs {
    /// The server as clients see it: turn:HOST:PORT?transport=udp|tcp or turns:HOST:PORT.
    #[arg(value_name = "URL")]
    pub url: TurnUrl,
    /// Mint a 10-minute credential from this shared secret (as in `auth.secrets`).
    /// Prefer RENDEZ_SECRET or --config: command lines are visible to other local users.
    // A secret may begin with `-` (base64url): it is a value, not a flag.
    #[arg(
        long,
        env = "RENDEZ_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub secret: Option<String>,
    /// Take the secret (the first of `auth.secrets`) from this config.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The user name: put in the minted credential (default "rendez-check"), or a static
    /// user with --password.
    #[arg(long)]
    pub user: Option<String>,
    /// A static user's password (`[[auth.users]]`), with --user; used instead of a secret.
    #[arg(
        long,
        env = "RENDEZ_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,
    /// How long to wait for each step.
    #[arg(long, default_value = "3s", value_parser = parse_timeout, value_name = "DURATION")]
    pub timeout: Duration,
    /// Also trust the CA certificate(s) in this PEM file for `turns:` (besides the public
    /// roots browsers trust).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(600) {
        return Err("must be from 10ms to 10m, e.g. 3s".into());
    }
    Ok(timeout)
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["secret", "config"])))]
pub struct TokenArgs {
    /// The room the token admits to.
    #[arg(long)]
    pub room: String,
    /// How long the token stays valid, e.g. 30m, 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ttl: Duration,
    /// The token secret (as in `[signal] token-secret`). Prefer RENDEZ_TOKEN_SECRET or --config.
    #[arg(
        long,
        env = "RENDEZ_TOKEN_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub secret: Option<String>,
    /// Take the secret from `[signal] token-secret` in this config.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Config file (TOML). Without one, rendez runs with defaults and a generated secret.
    #[arg(long, short, env = "RENDEZ_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on for STUN/TURN over UDP (repeat or comma-separate for several);
    /// replaces `listen`.
    #[arg(
        long,
        env = "RENDEZ_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR:PORT"
    )]
    pub listen: Vec<SocketAddr>,
    /// Realm used in authentication challenges; replaces `realm`.
    #[arg(long, env = "RENDEZ_REALM")]
    pub realm: Option<String>,
    /// Public IP(s) to advertise as relayed addresses (1:1 NAT), one per family;
    /// replaces `external-ip`.
    #[arg(
        long,
        env = "RENDEZ_EXTERNAL_IP",
        value_delimiter = ',',
        value_name = "IP"
    )]
    pub external_ip: Vec<IpAddr>,
    /// Local IP(s) that relay sockets bind to, one per family; replaces `relay-ip`.
    #[arg(
        long,
        env = "RENDEZ_RELAY_IP",
        value_delimiter = ',',
        value_name = "IP"
    )]
    pub relay_ip: Vec<IpAddr>,
    /// Address to listen on for TURN over TLS (repeatable); replaces `tls-listen`.
    #[arg(
        long,
        env = "RENDEZ_TLS_LISTEN",
        value_delimiter = ',',
        value_name = "ADDR:PORT"
    )]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TURN over TLS; sets `[tls] cert` (with --tls-key).
    #[arg(
        long,
        env = "RENDEZ_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TURN over TLS; sets `[tls] key` (with --tls-cert).
    #[arg(
        long,
        env = "RENDEZ_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Relay port range; replaces `relay-ports`.
    #[arg(long, env = "RENDEZ_RELAY_PORTS", value_name = "START-END")]
    pub relay_ports: Option<PortRange>,
    /// TURN REST API shared secret (repeat for several); replaces `auth.secrets`.
    /// Prefer RENDEZ_SECRET: command lines are visible to other local users.
    #[arg(
        long = "secret",
        env = "RENDEZ_SECRET",
        value_delimiter = ',',
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub secrets: Vec<String>,
    /// Address for the call page and WebSocket signaling; replaces `signal.listen`.
    #[arg(long, env = "RENDEZ_SIGNAL_LISTEN", value_name = "ADDR:PORT")]
    pub signal_listen: Option<SocketAddr>,
    /// Public DNS name(s) of this server, with a certificate from Let's Encrypt; sets
    /// `[acme] domains`. Without a config file, a whole public deployment: HTTPS page,
    /// signaling and `turns:` on 443, TURN on UDP/TCP 3478, HTTP on 80 for the ACME
    /// challenge and a redirect to HTTPS.
    #[arg(
        long,
        env = "RENDEZ_DOMAIN",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub domain: Vec<String>,
    /// Contact address for the certificate authority; sets `[acme] email` (with --domain).
    #[arg(
        long,
        env = "RENDEZ_EMAIL",
        value_name = "ADDRESS",
        requires = "domain"
    )]
    pub email: Option<String>,
    /// The ACME server's directory URL instead of Let's Encrypt's (a private CA, or a test
    /// one such as pebble); sets `[acme] directory` (with --domain).
    #[arg(
        long,
        env = "RENDEZ_ACME_DIRECTORY",
        value_name = "URL",
        requires = "domain"
    )]
    pub acme_directory: Option<String>,
    /// A PEM root to trust, beside Mozilla's, for that server's HTTPS; sets `[acme] ca`
    /// (with --domain).
    #[arg(long, env = "RENDEZ_ACME_CA", value_name = "FILE", requires = "domain")]
    pub acme_ca: Option<PathBuf>,
    /// Log format; replaces `log-format`.
    #[arg(long, env = "RENDEZ_LOG_FORMAT", value_parser = parse_log_format, value_name = "text|json")]
    pub log_format: Option<LogFormat>,
    /// Log filter such as "info" or "rendez=debug"; replaces `log-level`.
    #[arg(long, env = "RENDEZ_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["secret", "config"])))]
pub struct CredentialArgs {
    /// The shared secret (as in `auth.secrets`). Prefer RENDEZ_SECRET or --config.
    // A secret may begin with `-` (base64url): it is a value, not a flag.
    #[arg(
        long,
        env = "RENDEZ_SECRET",
        hide_env_values = true,
        allow_hyphen_values = true
    )]
    pub secret: Option<String>,
    /// Take the secret (the first of `auth.secrets`) and the default TTL from this config.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The user name to embed (shown in the username after the expiry).
    #[arg(long)]
    pub user: String,
    /// How long the credential stays valid, e.g. 30m, 24h, 7d.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub ttl: Option<Duration>,
    /// Print an RTCIceServer JSON object ready for a browser's iceServers.
    #[arg(long)]
    pub json: bool,
    /// TURN URL(s) to put in the JSON (repeatable). Default: every transport the config
    /// serves (UDP, TCP, and TLS when `[tls]` or `[acme]` is set) at its `[acme]` domain,
    /// else its public address, else this host's name.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// The server's DNS name(s), as given to `rendez serve --domain`: the URLs name it, and
    /// without --config they are those of that one-command deployment (`turns:` on 443).
    #[arg(
        long,
        env = "RENDEZ_DOMAIN",
        value_delimiter = ',',
        value_name = "NAME"
    )]
    pub domain: Vec<String>,
}

impl CredentialArgs {
    /// The config the secret and the URLs come from: the file, or with --domain the one
    /// `rendez serve` would run with these arguments; `None` with neither.
    pub fn load_config(&self) -> Result<Option<Config>, ConfigError> {
        if self.domain.is_empty() {
            return self.config.as_deref().map(Config::from_file).transpose();
        }
        let serve = ServeArgs {
            config: self.config.clone(),
            domain: self.domain.clone(),
            ..ServeArgs::default()
        };
        serve.load_config().map(Some)
    }
}

fn parse_log_format(text: &str) -> Result<LogFormat, String> {
    match text {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected `text` or `json`".into()),
    }
}

impl ServeArgs {
    /// The config file (or defaults) with this command line's overrides applied.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None if !self.domain.is_empty() => public_deployment(&self.domain),
            None => Config::default(),
        };
        if !self.domain.is_empty() {
            let acme = config
                .acme
                .get_or_insert_with(|| AcmeConfig::for_domains(Vec::new()));
            acme.domains = self.domain.clone();
            if let Some(email) = &self.email {
                acme.email = Some(email.clone());
            }
            if let Some(directory) = &self.acme_directory {
                acme.directory = directory.clone();
            }
            if let Some(ca) = &self.acme_ca {
                acme.ca = Some(ca.clone());
            }
        }
        if !self.listen.is_empty() {
            config.listen = self.listen.clone();
        }
        if let Some(realm) = &self.realm {
            config.realm = realm.clone();
        }
        if !self.external_ip.is_empty() {
            config.external_ip = self.external_ip.clone();
        }
        if !self.relay_ip.is_empty() {
            config.relay_ip = self.relay_ip.clone();
        }
        if !self.tls_listen.is_empty() {
            config.tls_listen = self.tls_listen.clone();
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            });
        }
        if let Some(ports) = &self.relay_ports {
            config.relay_ports = ports.clone();
        }
        if !self.secrets.is_empty() {
            config.auth.secrets = self.secrets.clone();
        }
        if let Some(listen) = self.signal_listen {
            config.signal.listen = listen;
        }
        if let Some(format) = self.log_format {
            config.log_format = format;
        }
        if let Some(level) = &self.log_level {
            config.log_level = level.clone();
        }
        // The file's secret files are read already; this expands $CREDENTIALS_DIRECTORY
        // in --tls-cert and --tls-key too.
        config.load_secrets()?;
        config.validate()?;
        Ok(config)
    }
}

/// `rendez serve --domain NAME` without a config file: the page, signaling and `turns:` on
/// 443 (IPv4 and IPv6), TURN on 3478, and port 80 answering the CA's HTTP-01 challenge and
/// redirecting everything else to HTTPS; the certificate from Let's Encrypt.
fn public_deployment(domains: &[String]) -> Config {
    let any4 = |port| SocketAddr::from(([0, 0, 0, 0], port));
    let any6 = |port| SocketAddr::from(([0u16; 8], port));
    let mut config = Config {
        realm: domains[0].clone(),
        listen: vec![any4(3478), any6(3478)],
        tls_listen: vec![any4(443), any6(443)],
        ..Config::default()
    };
    config.signal.listen = any4(443);
    let mut acme = AcmeConfig::for_domains(domains.to_vec());
    acme.challenge = AcmeChallenge::Http01;
    config.acme = Some(acme);
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn a_domain_alone_is_a_public_deployment() {
        let cli = Cli::try_parse_from([
            "rendez",
            "serve",
            "--domain",
            "meet.example.com",
            "--email",
            "ops@example.com",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.load_config().unwrap();
        let acme = config.acme.clone().unwrap();
        assert_eq!(acme.domains, ["meet.example.com"]);
        assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
        assert_eq!(acme.directory, AcmeConfig::LETS_ENCRYPT);
        assert_eq!(acme.challenge, AcmeChallenge::Http01);
        assert_eq!(acme.http_listen.port(), 80);
        assert_eq!(config.signal.listen.port(), 443);
        assert!(config.tls_listen.contains(&config.signal.listen));
        assert!(config.listen.iter().all(|a| a.port() == 3478));
        assert_eq!(config.realm, "meet.example.com");
        let urls = crate::credential::ice_urls(&config, "meet.example.com");
        assert!(
            urls.contains(&"turns:meet.example.com:443?transport=tcp".to_owned()),
            "{urls:?}"
        );
        assert!(urls.contains(&"turn:meet.example.com:3478?transport=udp".to_owned()));
    }

    #[test]
    fn another_acme_server_without_a_config_file() {
        let cli = Cli::try_parse_from([
            "rendez",
            "serve",
            "--domain",
            "meet.example.com",
            "--acme-directory",
            "https://ca.example/dir",
            "--acme-ca",
            "/etc/rendez/ca.pem",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let acme = args.load_config().unwrap().acme.unwrap();
        assert_eq!(acme.directory, "https://ca.example/dir");
        assert_eq!(acme.ca, Some(PathBuf::from("/etc/rendez/ca.pem")));
        assert_eq!(acme.challenge, AcmeChallenge::Http01);
        let without_domain = ["rendez", "serve", "--acme-directory", "https://ca/dir"];
        assert!(Cli::try_parse_from(without_domain).is_err());
    }

    #[test]
    fn a_credential_for_a_domain_is_for_its_public_deployment() {
        let cli = Cli::try_parse_from([
            "rendez",
            "credential",
            "--secret",
            "s",
            "--user",
            "a",
            "--domain",
            "meet.example.com",
        ])
        .unwrap();
        let Command::Credential(args) = cli.command else {
            panic!("expected credential");
        };
        let config = args.load_config().unwrap().unwrap();
        assert_eq!(config.acme.unwrap().domains, ["meet.example.com"]);
        assert_eq!(config.signal.listen.port(), 443);
    }

    #[test]
    fn a_domain_with_a_config_file_sets_only_the_acme_names() {
        let dir = std::env::temp_dir().join(format!("rendez-cli-domain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("rendez.toml");
        std::fs::write(
            &file,
            "[acme]\ndomains = [\"old.example.com\"]\ndirectory = \"https://ca.example/dir\"\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "rendez",
            "serve",
            "--config",
            file.to_str().unwrap(),
            "--domain",
            "a.example.com,b.example.com",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.load_config().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let acme = config.acme.unwrap();
        assert_eq!(acme.domains, ["a.example.com", "b.example.com"]);
        assert_eq!(acme.directory, "https://ca.example/dir");
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::try_parse_from([
            "rendez",
            "serve",
            "--listen",
            "127.0.0.1:3479,[::1]:3479",
            "--relay-ports",
            "50000-50010",
            "--realm",
            "r.example",
            "--log-format",
            "json",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        let config = args.load_config().unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.relay_ports, PortRange(50000..=50010));
        assert_eq!(config.realm, "r.example");
        assert_eq!(config.log_format, LogFormat::Json);
    }

    #[test]
    fn check_needs_a_url_and_a_login() {
        let parse = |args: &[&str]| Cli::try_parse_from([&["rendez", "check"], args].concat());
        assert!(parse(&["turn:h", "--user", "a"]).is_err());
        assert!(
            parse(&["turn:h", "--password", "p"]).is_err(),
            "--password needs --user"
        );
        assert!(parse(&["stun:h", "--secret", "s"]).is_err());
        assert!(parse(&["turn:h", "--secret", "s", "--timeout", "0s"]).is_err());
        let Command::Check(args) = parse(&[
            "turns:h:443",
            "--user",
            "a",
            "--password",
            "p",
            "--timeout",
            "500ms",
        ])
        .unwrap()
        .command
        else {
            panic!("expected check");
        };
        assert_eq!(args.url.port, 443);
        assert_eq!(args.timeout, Duration::from_millis(500));
    }

    #[test]
    fn a_secret_may_begin_with_a_hyphen() {
        // `rendez serve` generates base64url secrets, which begin with `-` one time in 64.
        let cli = Cli::try_parse_from([
            "rendez",
            "credential",
            "--secret",
            "-4xQ",
            "--user",
            "alice",
        ])
        .unwrap();
        let Command::Credential(args) = cli.command else {
            panic!("credential");
        };
        assert_eq!(args.secret.as_deref(), Some("-4xQ"));
        let cli =
            Cli::try_parse_from(["rendez", "token", "--secret", "-k", "--room", "r"]).unwrap();
        let Command::Token(args) = cli.command else {
            panic!("token");
        };
        assert_eq!(args.secret.as_deref(), Some("-k"));
    }

    #[test]
    fn credential_needs_a_secret_source() {
        assert!(Cli::try_parse_from(["rendez", "credential", "--user", "a"]).is_err());
        assert!(
            Cli::try_parse_from(["rendez", "credential", "--user", "a", "--secret", "s"]).is_ok()
        );
    }
}
