//! The `rendez` binary: command line → config → logging → server.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use base64::Engine;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use rendez::cli::{CheckArgs, Cli, Command, CredentialArgs, ServeArgs, TokenArgs};
use rendez::config::{Config, LogFormat};
use rendez::credential;
use rendez::net::SetLogLevel;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).map(|()| ExitCode::SUCCESS),
        Command::Credential(args) => print_credential(args).map(|()| ExitCode::SUCCESS),
        Command::Token(args) => print_token(args).map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check(args),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the whole context chain on one line, without a backtrace: these
            // messages are for operators.
            eprintln!("rendez: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.load_config()?;
    let set_log_level = init_logging(&config)?;
    // Without configured credentials a secret is generated for this run; a reload that
    // still configures none keeps it, so clients keep working.
    let generated = if config.auth.secrets.is_empty() && config.auth.users.is_empty() {
        let secret = generate_secret()?;
        // Printed once to the terminal (not the log) so the operator can mint credentials.
        println!("rendez: no credentials configured; generated a shared secret for this run:");
        println!("  secret: {secret}");
        let domain = match args.domain.as_slice() {
            [] => String::new(),
            names => format!(" --domain {}", names.join(",")),
        };
        println!(
            "  mint a credential: rendez credential --secret '{secret}'{domain} --user alice --json"
        );
        config.auth.secrets = vec![secret.clone()];
        Some(secret)
    } else {
        None
    };
    if let Some((before, after)) = rendez::net::raise_open_file_limit() {
        tracing::debug!(before, after, "open file limit");
    }
    let reload_config = move || -> anyhow::Result<rendez::Config> {
        let mut config = args.load_config()?;
        if let Some(secret) = &generated {
            if config.auth.secrets.is_empty() && config.auth.users.is_empty() {
                config.auth.secrets = vec![secret.clone()];
            }
        }
        Ok(config)
    };
    let hooks = rendez::Hooks {
        reload_config: Some(Box::new(reload_config)),
        set_log_level: Some(set_log_level),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime
        .block_on(rendez::run(config, hooks))
        .inspect_err(|error| tracing::error!("rendez stopped: {error:#}"))
}

fn print_credential(args: CredentialArgs) -> anyhow::Result<()> {
    let config = args.load_config()?;
    let secret = match (&args.secret, &config) {
        (Some(secret), _) => secret.clone(),
        (None, Some(config)) => config.auth.secrets.first().cloned().with_context(|| {
            "the config has no `auth.secrets`: add one, or pass --secret".to_string()
        })?,
        (None, None) => anyhow::bail!("give --secret or --config"),
    };
    let ttl = args
        .ttl
        .or(config.as_ref().map(|c| c.auth.credential_ttl))
        .unwrap_or(Duration::from_secs(24 * 3600));
    let expires_at = SystemTime::now() + ttl;
    let credential = credential::mint(&secret, &args.user, expires_at);
    if args.json {
        let urls = if args.urls.is_empty() {
            default_urls(config.as_ref())
        } else {
            args.urls.clone()
        };
        let json = credential::ice_server_json(&urls, &credential);
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else {
        println!("username: {}", credential.username);
        println!("password: {}", credential.password);
        println!(
            "expires:  {}",
            humantime::format_rfc3339_seconds(expires_at)
        );
    }
    Ok(())
}

fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    let secret = match (&args.secret, &args.config) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => Config::from_file(path)?
            .signal
            .token_secret
            .context("the config has no `[signal] token-secret`: add one, or pass --secret")?,
        (None, None) => anyhow::bail!("give --secret or --config"),
    };
    let expires = SystemTime::now() + args.ttl;
    let expires_unix = expires
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!(
        "{}",
        rendez::signal::token::mint(&secret, &args.room, expires_unix)
    );
    Ok(())
}

/// `rendez check`: exit status 0 only when the relayed echo came back and nothing failed.
fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let credentials = match (&args.password, &args.secret, &args.config) {
        (Some(password), _, _) => rendez::check::Credentials::Password {
            // clap makes --password require --user.
            user: args.user.clone().unwrap_or_default(),
            password: password.clone(),
        },
        (None, secret, config) => {
            let secret = match (secret, config) {
                (Some(secret), _) => secret.clone(),
                (None, Some(path)) => Config::from_file(path)?
                    .auth
                    .secrets
                    .first()
                    .cloned()
                    .context("the config has no `auth.secrets`: add one, or pass --secret")?,
                (None, None) => anyhow::bail!("give --secret, --config, or --user and --password"),
            };
            rendez::check::Credentials::Secret {
                secret,
                user: args.user.clone().unwrap_or_else(|| "rendez-check".into()),
            }
        }
    };
    let options = rendez::check::Options {
        url: args.url,
        credentials,
        timeout: args.timeout,
        ca: args.ca,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(rendez::check::run(&options, std::io::stdout()))?;
    Ok(if outcome.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// URLs for every transport the config serves, at its public address or this host's name.
fn default_urls(config: Option<&Config>) -> Vec<String> {
    let default = Config::default();
    let config = config.unwrap_or(&default);
    // A certificate names the domain, so `turns:` must too.
    if let Some(domain) = config.acme.as_ref().and_then(|acme| acme.domains.first()) {
        return credential::ice_urls(config, domain);
    }
    let host = config
        .external_ip
        .first()
        .or(config.relay_ip.first())
        .copied()
        .or(config
            .listen
            .iter()
            .map(|a| a.ip())
            .find(|ip| !ip.is_unspecified()))
        .map(|ip| match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        })
        .unwrap_or_else(hostname);
    credential::ice_urls(config, &host)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn generate_secret() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    rendez::random::fill_from_os(&mut bytes)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Starts logging; returns what changes the filter later.
fn init_logging(config: &Config) -> anyhow::Result<SetLogLevel> {
    let filter = EnvFilter::try_new(&config.log_level).with_context(|| {
        format!(
            "`log-level` {:?} is not a valid filter; try \"info\"",
            config.log_level
        )
    })?;
    // Colours only for a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    macro_rules! init_reloadable {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let reload = builder.reload_handle();
            builder.init();
            Box::new(move |level: &str| {
                reload.reload(EnvFilter::try_new(level)?)?;
                Ok(())
            })
        }};
    }
    Ok(match config.log_format {
        LogFormat::Text => init_reloadable!(builder),
        LogFormat::Json => init_reloadable!(builder.json()),
    })
}
