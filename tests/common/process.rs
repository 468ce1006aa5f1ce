//! The real `rendez` binary as a test's child process, as an operator or systemd runs it:
//! its config file in a directory of its own, its log beside it, signals sent to it.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;

/// Variables of the test's own environment that would configure the child behind the
/// config file's back.
const INHERITED_SETTINGS: [&str; 4] =
    ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUST_LOG"];

/// `rendez serve --config FILE`, killed when dropped.
pub struct ServerProcess {
    child: Child,
    pub dir: TempDir,
    config: PathBuf,
}

impl ServerProcess {
    /// Writes `config` and starts the binary on it, with `env` set and nothing else from
    /// this environment that configures rendez (`RENDEZ_*`, systemd's variables).
    pub fn spawn(name: &str, config: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(name);
        let config_path = dir.0.join("rendez.toml");
        std::fs::write(&config_path, config).unwrap();
        let log = File::create(dir.0.join("log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rendez"));
        command
            .args(["serve", "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if key.starts_with("RENDEZ_") || INHERITED_SETTINGS.contains(&key.as_ref()) {
                command.env_remove(key.as_ref());
            }
        }
        command.envs(env.iter().copied());
        Self {
            child: command.spawn().expect("start rendez"),
            dir,
            config: config_path,
        }
    }

    /// Replaces the config file (for a reload).
    pub fn write_config(&self, config: &str) {
        std::fs::write(&self.config, config).unwrap();
    }

    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill only sends a signal, to the child this test started.
        unsafe { libc::kill(pid, signal) };
    }

    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Everything it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("log")).unwrap_or_default()
    }

    /// Its log lines that are JSON (with `log-format = "json"`: all of them).
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The UDP listener it logged when it started serving (JSON log), once it has.
    pub fn logged_udp_addr(&self) -> Option<SocketAddr> {
        let serving = self
            .json_log()
            .into_iter()
            .find(|line| message_of(line) == "rendez serving STUN/TURN")?;
        let udp = serving["fields"]["udp"].as_str()?;
        udp.trim_matches(['[', ']']).parse().ok()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits (blocking) up to `limit` for it to exit; panics with its log if it does not.
    pub fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("rendez still running after {limit:?}:\n{}", self.log())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The message of a JSON log line.
pub fn message_of(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}
