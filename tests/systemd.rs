//! rendez as a systemd service: the real binary started the way systemd starts a
//! `Type=notify` unit (a `NOTIFY_SOCKET` this test binds, `WATCHDOG_USEC`), the messages it
//! sends there, and `systemd-analyze verify` on `systemd/rendez.service`.

mod common;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::ServerProcess;
use common::{Conn, TempDir, TurnClient};

/// Longest wait for one notification; the server sends READY=1 well within it.
const NOTIFY_WAIT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn ready_once_serving_then_status_then_stopping_on_sigterm() {
    let mut server = NotifiedServer::start("ready", &[]);
    server.expect("READY=1");
    // READY=1 comes after every listener is bound: the logged UDP listener answers at once.
    let mut client = TurnClient::new(Conn::udp(server.udp_addr()).await, "alice", "wonderland");
    assert_eq!(
        server.expect_prefix("STATUS="),
        "STATUS=0 allocations, 0 rooms, 0 participants"
    );
    client.allocate(&[]).await;
    // STATUS= is refreshed every few seconds with the allocations now running.
    assert_eq!(
        server.expect_prefix("STATUS="),
        "STATUS=1 allocation, 0 rooms, 0 participants"
    );

    // The allocation is still live: the drain waits out `drain-timeout` (1 s), then exits 0.
    server.process.terminate();
    server.expect("STOPPING=1");
    let status = server.process.wait_for_exit(Duration::from_secs(20));
    assert!(status.success(), "rendez exited with {status}");
}

#[test]
fn watchdog_pings_at_half_the_interval() {
    let mut server = NotifiedServer::start("watchdog", &[("WATCHDOG_USEC", "200000")]);
    server.expect("READY=1");
    let messages = server.receive_for(Duration::from_secs(1));
    let pings = messages.iter().filter(|m| *m == "WATCHDOG=1").count();
    // Every 100 ms for one second: 10, give or take a busy machine.
    assert!(
        (4..=15).contains(&pings),
        "{pings} watchdog pings in one second"
    );
    server.process.terminate();
    server.process.wait_for_exit(Duration::from_secs(20));
}

#[test]
fn watchdog_meant_for_another_process_is_left_alone() {
    let mut server = NotifiedServer::start(
        "watchdog-pid",
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    server.expect("READY=1");
    let messages = server.receive_for(Duration::from_millis(700));
    assert!(
        messages.iter().any(|m| m.starts_with("STATUS=")),
        "{messages:?}"
    );
    assert!(
        !messages.iter().any(|m| m == "WATCHDOG=1"),
        "WATCHDOG_PID is not rendez: {messages:?}"
    );
    server.process.terminate();
    server.process.wait_for_exit(Duration::from_secs(20));
}

/// `systemd-analyze verify` on the shipped unit, with `ExecStart=` pointed at the binary
/// just built (verify checks that the command exists). Clean means no output at all: verify
/// exits 0 even for unknown keys, it only warns.
#[test]
fn systemd_analyze_verify_is_clean() {
    let required = std::env::var("RENDEZ_REQUIRE_SYSTEMD").is_ok_and(|v| v == "1");
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    if !analyze.is_ok_and(|out| out.status.success()) {
        assert!(
            !required,
            "RENDEZ_REQUIRE_SYSTEMD=1 but systemd-analyze is missing (apt-get install systemd)"
        );
        println!("skipped: systemd-analyze is not installed");
        return;
    }
    let shipped = include_str!("../systemd/rendez.service");
    let installed_at = "ExecStart=/usr/local/bin/rendez ";
    assert!(
        shipped.contains(installed_at),
        "the unit runs /usr/local/bin/rendez, as README installs it"
    );
    let unit = shipped.replace(
        installed_at,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_rendez")),
    );
    let dir = TempDir::new("verify");
    let path = dir.0.join("rendez.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

/// `rendez serve` on loopback with a notify socket, as systemd would run it.
struct NotifiedServer {
    process: ServerProcess,
    socket: UnixDatagram,
    /// Where the notify socket is bound; removed with the server.
    _socket_dir: TempDir,
}

impl NotifiedServer {
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let dir = TempDir::new(&format!("{name}-notify"));
        let socket_path = dir.0.join("notify");
        let socket = UnixDatagram::bind(&socket_path).unwrap();
        socket.set_read_timeout(Some(NOTIFY_WAIT)).unwrap();
        let config = "realm = \"rendez.test\"\n\
             listen = [\"127.0.0.1:0\"]\n\
             relay-ip = \"127.0.0.1\"\n\
             relay-ports = \"14000-14099\"\n\
             workers = 1\n\
             log-format = \"json\"\n\
             drain-timeout = \"1s\"\n\
             [[auth.users]]\nname = \"alice\"\npassword = \"wonderland\"\n\
             [peers]\nallow = [\"127.0.0.0/8\", \"127.0.0.1/32\"]\n\
             [signal]\nlisten = \"127.0.0.1:0\"\n";
        let socket_var = socket_path.display().to_string();
        let mut vars = vec![("NOTIFY_SOCKET", socket_var.as_str())];
        vars.extend(env.iter().copied());
        Self {
            process: ServerProcess::spawn(name, config, &vars),
            socket,
            _socket_dir: dir,
        }
    }

    /// The next notification.
    fn receive(&mut self) -> String {
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(len) => String::from_utf8_lossy(&buf[..len]).into_owned(),
            Err(error) => panic!(
                "no notification within {NOTIFY_WAIT:?} ({error}); rendez said:\n{}",
                self.log()
            ),
        }
    }

    /// Every notification that arrives within `window`.
    fn receive_for(&mut self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut messages = Vec::new();
        let mut buf = [0u8; 4096];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            self.socket.set_read_timeout(Some(left)).unwrap();
            match self.socket.recv(&mut buf) {
                Ok(len) => messages.push(String::from_utf8_lossy(&buf[..len]).into_owned()),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(error) => panic!("notify socket: {error}"),
            }
        }
        self.socket.set_read_timeout(Some(NOTIFY_WAIT)).unwrap();
        messages
    }

    /// Waits for exactly `message`, skipping others (watchdog pings, status updates).
    fn expect(&mut self, message: &str) {
        assert_eq!(self.expect_prefix(message), message);
    }

    /// The first notification that starts with `prefix`, skipping others.
    fn expect_prefix(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + NOTIFY_WAIT;
        while Instant::now() < deadline {
            let message = self.receive();
            if message.starts_with(prefix) {
                return message;
            }
        }
        panic!(
            "no {prefix}… within {NOTIFY_WAIT:?}; rendez said:\n{}",
            self.log()
        )
    }

    /// The UDP listener rendez logged (JSON) before it said READY=1.
    fn udp_addr(&self) -> SocketAddr {
        self.process.logged_udp_addr().unwrap_or_else(|| {
            panic!(
                "no 'rendez serving' line before READY=1:\n{}",
                self.process.log()
            )
        })
    }

    fn log(&self) -> String {
        self.process.log()
    }
}
