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
        let path = config_path.to_str().unwrap().to_owned();
        Self::spawn_in(dir, config_path, &["serve", "--config", &path], env)
    }

    /// `rendez ARGS` with no config file (its log in a directory named for `name`), with
    /// `env` set and nothing else from this environment that configures rendez.
    pub fn spawn_args(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(name);
        let config_path = dir.0.join("no-config-file");
        Self::spawn_in(dir, config_path, args, env)
    }

    fn spawn_in(dir: TempDir, config_path: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = File::create(dir.0.join("log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_rendez"));
        command
            .args(args)
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

    /// Waits (blocking, up to 10 s) until it logs that it serves (needs `log-format =
    /// "json"`): its first UDP listener. Panics with its log if it exits or stays silent.
    pub fn wait_until_serving(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(udp) = self.logged_udp_addr() {
                return udp;
            }
            if let Some(status) = self.try_wait() {
                panic!("rendez exited ({status}) before serving:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("rendez did not start serving within 10 s:\n{}", self.log())
    }

    /// The metrics listener it logged when it started serving (JSON log, `[metrics] listen`).
    pub fn logged_metrics_addr(&self) -> Option<SocketAddr> {
        self.logged_optional_addr("metrics")
    }

    /// The page and signaling listener it logged when it started serving (JSON log).
    pub fn logged_signal_addr(&self) -> Option<SocketAddr> {
        self.logged_optional_addr("signal")
    }

    /// An `Option<SocketAddr>` field of the "serving" line (logged as `Some(ADDR)`).
    fn logged_optional_addr(&self, field: &str) -> Option<SocketAddr> {
        let serving = self
            .json_log()
            .into_iter()
            .find(|line| message_of(line) == "rendez serving STUN/TURN")?;
        serving["fields"][field]
            .as_str()?
            .strip_prefix("Some(")?
            .strip_suffix(')')?
            .parse()
            .ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its resident memory (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// How many file descriptors it has open.
    pub fn open_fds(&self) -> usize {
        open_fds(self.pid())
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

/// The resident memory (VmRSS) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("it runs");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("it runs")
        .count()
}

/// The sum of every sample of the metric family `name` in a Prometheus text scrape.
pub fn metric_sum(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// GET /metrics from `addr` (blocking): the body.
pub fn scrape_metrics(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("metrics listener");
    stream.set_read_timeout(Some(super::WAIT)).unwrap();
    let request = "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("metrics response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The message of a JSON log line.
pub fn message_of(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or("")
}
