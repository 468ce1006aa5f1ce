//! A server's life as a service: start; reload on SIGHUP; on SIGTERM (or Ctrl-C) drain,
//! then exit once the allocations have ended or `drain-timeout` has passed. A second
//! SIGTERM ends the drain at once. Under systemd (`NOTIFY_SOCKET`) each step is reported:
//! READY=1 once every listener is bound, RELOADING=1 and READY=1 around a reload,
//! STOPPING=1 when the drain begins, STATUS= and WATCHDOG=1 all along.

use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::bootstrap::start;
use super::handle::Handle;
use super::notify::Notifier;
use crate::config::Config;

/// How often a drain looks whether allocations are left.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Reads the configuration again, as at start (file, flags, environment).
pub type ReloadConfig = Box<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;
/// Applies a `log-level` filter (it has been checked already).
pub type SetLogLevel = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;

/// What the caller (the binary) does for a reload.
#[derive(Default)]
pub struct Hooks {
    /// Without it a SIGHUP is logged and ignored.
    pub reload_config: Option<ReloadConfig>,
    pub set_log_level: Option<SetLogLevel>,
}

/// Runs a server with `config` until it is told to stop, reloading and draining as the
/// signals say.
pub async fn run(config: Config, hooks: Hooks) -> anyhow::Result<()> {
    // Before anything is bound: from here on SIGHUP reloads instead of killing.
    let mut signals = Signals::new()?;
    let notifier = Notifier::from_env();
    let mut drain_timeout = config.drain_timeout;
    let handle = start(config).await?;
    notifier.ready();
    loop {
        tokio::select! {
            _ = signals.hangup.recv() => {
                notifier.reloading();
                if let Some(timeout) = reload(&handle, &hooks).await {
                    drain_timeout = timeout;
                }
                notifier.ready();
            }
            _ = signals.stop.recv() => break,
            // Never ends: status lines and watchdog pings while the server runs.
            () = notifier.report(&handle) => {}
        }
    }
    notifier.stopping();
    drain(&handle, drain_timeout, &mut signals).await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Reloads, or logs why not; returns the new drain timeout when the reload took.
async fn reload(handle: &Handle, hooks: &Hooks) -> Option<Duration> {
    let began = Instant::now();
    let Some(reload_config) = &hooks.reload_config else {
        tracing::warn!("SIGHUP: this server has no configuration to reload");
        return None;
    };
    let applied = async {
        let config = reload_config()?;
        // Checked before anything is applied, so a bad filter rejects the whole reload.
        tracing_subscriber::EnvFilter::try_new(&config.log_level).map_err(|e| {
            anyhow::anyhow!(
                "invalid config: `log-level` {:?} is not a valid filter ({e}); try \"info\"",
                config.log_level
            )
        })?;
        // The filter was checked above; set first, so a failure here applies nothing.
        if let Some(set_log_level) = &hooks.set_log_level {
            set_log_level(&config.log_level)?;
        }
        let reloaded = handle.reload(config.clone()).await?;
        anyhow::Ok((reloaded, config.drain_timeout))
    }
    .await;
    match applied {
        Ok((reloaded, drain_timeout)) => {
            let elapsed_ms = began.elapsed().as_secs_f64() * 1000.0;
            tracing::info!(elapsed_ms, "configuration reloaded");
            if !reloaded.needs_restart.is_empty() {
                tracing::warn!(
                    keys = reloaded.needs_restart.join(", "),
                    "changed settings need a restart to take effect; the running values stay"
                );
            }
            Some(drain_timeout)
        }
        Err(error) => {
            tracing::error!("reload refused, the running configuration stays: {error:#}");
            None
        }
    }
}

/// Refuses new allocations and waits, up to `timeout`, for the existing ones to end.
async fn drain(handle: &Handle, timeout: Duration, signals: &mut Signals) {
    let began = Instant::now();
    let deadline = began + timeout;
    handle.drain().await;
    tracing::info!(
        allocations = handle.allocations_now(),
        timeout_s = timeout.as_secs_f64(),
        "draining: new allocations are refused, existing ones go on"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_POLL) => {}
            _ = signals.stop.recv() => {
                tracing::info!("second stop signal: not waiting for allocations");
                return;
            }
        }
        // The exact count, not the gauges: those lag by up to a publishing round, and a
        // zero read from them could end an allocation made just before the drain.
        let left = handle.allocations_now();
        if left == 0 {
            let elapsed_s = began.elapsed().as_secs_f64();
            tracing::info!(elapsed_s, "drained: every allocation has ended");
            return;
        }
        if Instant::now() >= deadline {
            tracing::info!(allocations = left, "drain timeout passed; stopping anyway");
            return;
        }
    }
}

/// The signals a service answers.
struct Signals {
    hangup: Signal,
    stop: StopSignals,
}

/// SIGTERM or SIGINT.
struct StopSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            hangup: signal(SignalKind::hangup())?,
            stop: StopSignals {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            },
        })
    }
}

impl StopSignals {
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
