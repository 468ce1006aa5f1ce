//! Telling systemd how the server is doing: the `sd_notify` protocol behind `Type=notify`.
//!
//! systemd names a unix datagram socket in `NOTIFY_SOCKET`; each message is one datagram of
//! `KEY=VALUE` lines. rendez sends READY=1 once every listener is bound, STATUS= with a
//! one-line summary every few seconds, WATCHDOG=1 while the server is healthy when
//! `WatchdogSec=` is set, RELOADING=1 … READY=1 around a reload and STOPPING=1 when shutdown
//! begins. Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing.
//!
//! The protocol is a few lines, so it is spoken here rather than through the `sd-notify`
//! crate, which reads the environment again at every call, cannot reach an abstract socket
//! (`@name`) and sends on a blocking socket. Here the address is resolved once, so a
//! [`Notifier`] is a plain value that is cheap to clone and pass around, and a send never
//! waits: a busy service manager must not stall the runtime, and a lost watchdog ping is
//! followed by another at half the watchdog interval.

use std::ffi::OsStr;
use std::io;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
use std::time::Duration;

use tokio::time::{interval, Interval, MissedTickBehavior};

use super::Handle;

/// How often STATUS= is refreshed while serving.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);
/// Watchdog pings are never further apart than this, whatever `WatchdogSec=` says.
const MAX_WATCHDOG_PING_INTERVAL: Duration = Duration::from_secs(3600);
/// Nor closer together than this, however small it is.
const MIN_WATCHDOG_PING_INTERVAL: Duration = Duration::from_millis(1);

/// A handle on the service manager's notification socket; every method is a no-op when
/// the process was not started with `NOTIFY_SOCKET`. Cheap to clone; never panics.
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    /// Where notifications go; `None`: nobody is listening.
    socket: Option<UnixAddr>,
    /// The watchdog limit (`WatchdogSec=`), when systemd enforces one on this process.
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The service manager named by `NOTIFY_SOCKET`, with the watchdog of `WATCHDOG_USEC`
    /// when `WATCHDOG_PID` is this process or absent (as `sd_watchdog_enabled` reads them).
    pub fn from_env() -> Self {
        Self::from_vars(
            std::env::var_os("NOTIFY_SOCKET").as_deref(),
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
    }

    /// A notifier that sends nothing, for servers not run by systemd.
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Whether a service manager is listening.
    pub fn is_enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How long systemd waits for a watchdog ping before it declares the service hung.
    pub fn watchdog_limit(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Startup (or a reload) is complete: every listener is bound.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A one-line status for `systemctl status` (line breaks become spaces).
    pub fn status(&self, line: &str) {
        self.send(&format!("STATUS={}", line.replace(['\n', '\r'], " ")));
    }

    /// A reload has begun; [`Notifier::ready`] ends it. systemd 253 and later expect the
    /// monotonic clock with it, to tell this reload from an earlier one.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// The service is alive; systemd restarts it when these stop for `WatchdogSec=`.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// Keeps the service manager informed while `handle` serves: STATUS= now and every few
    /// seconds, and WATCHDOG=1 at half the watchdog limit for as long as the server is
    /// healthy. It runs on the server's runtime, so a wedged runtime stops the pings too.
    /// Never returns: drop it (e.g. the losing branch of a `select!`) to stop.
    pub async fn report(&self, handle: &Handle) {
        if !self.is_enabled() {
            return std::future::pending().await;
        }
        let mut status = interval(STATUS_INTERVAL);
        status.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watchdog = self.watchdog.map(|limit| {
            let every = (limit / 2).clamp(MIN_WATCHDOG_PING_INTERVAL, MAX_WATCHDOG_PING_INTERVAL);
            let mut ticks = interval(every);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticks
        });
        let mut was_healthy = true;
        loop {
            let watchdog_due = tokio::select! {
                _ = status.tick() => false,
                _ = tick(&mut watchdog) => true,
            };
            let healthy = handle.is_healthy();
            if was_healthy && !healthy {
                tracing::error!(
                    watchdog = self.watchdog.is_some(),
                    "a shard has stopped and part of the server is down; with the watchdog on, systemd restarts rendez"
                );
            }
            if watchdog_due && healthy {
                self.watchdog();
            }
            if !watchdog_due || healthy != was_healthy {
                self.status(&status_line(handle, healthy));
            }
            was_healthy = healthy;
        }
    }

    fn from_vars(
        socket: Option<&OsStr>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Self {
        let Some(socket) = socket.filter(|s| !s.is_empty()) else {
            return Self::disabled();
        };
        let socket = match socket_address(socket) {
            Ok(address) => address,
            Err(error) => {
                tracing::warn!(?socket, %error, "NOTIFY_SOCKET is not a usable socket address; not notifying systemd");
                return Self::disabled();
            }
        };
        let for_this_process = watchdog_pid.is_none_or(|p| p.parse() == Ok(pid));
        let watchdog = watchdog_usec
            .and_then(|usec| usec.parse::<u64>().ok())
            .filter(|&usec| usec > 0 && for_this_process)
            .map(Duration::from_micros);
        Self {
            socket: Some(socket),
            watchdog,
        }
    }

    fn send(&self, message: &str) {
        let Some(address) = &self.socket else {
            return;
        };
        if let Err(error) = send_datagram(address, message.as_bytes()) {
            let state = message.split('=').next().unwrap_or_default();
            tracing::warn!(%error, state, "cannot notify systemd");
        }
    }
}

/// What `systemctl status` shows on its Status: line.
fn status_line(handle: &Handle, healthy: bool) -> String {
    let health = if healthy {
        ""
    } else {
        "unhealthy (a shard has stopped): "
    };
    format!("{health}{}", handle.status_line())
}

/// Waits for the next tick, or forever without a watchdog.
async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// A filesystem path, or `@name` for a socket in the abstract namespace.
fn socket_address(socket: &OsStr) -> io::Result<UnixAddr> {
    use std::os::unix::ffi::OsStrExt;
    match socket.as_bytes().strip_prefix(b"@") {
        Some(name) => abstract_address(name),
        None => UnixAddr::from_pathname(socket),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<UnixAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    UnixAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<UnixAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets exist only on Linux",
    ))
}

/// One datagram from a fresh socket (as `sd_notify` does: the manager may have re-created
/// its socket since the last message), without waiting for room in its queue.
fn send_datagram(address: &UnixAddr, bytes: &[u8]) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    let sent = socket.send_to_addr(bytes, address)?;
    if sent != bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC= with.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let seconds = u64::try_from(now.tv_sec).unwrap_or(0);
    let micros = u64::try_from(now.tv_nsec / 1000).unwrap_or(0);
    seconds.saturating_mul(1_000_000).saturating_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn notifier_to(path: &std::path::Path, usec: Option<&str>, pid: Option<&str>) -> Notifier {
        Notifier::from_vars(Some(path.as_os_str()), usec, pid, 42)
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let len = socket.recv(&mut buf).expect("a notification arrives");
        String::from_utf8_lossy(&buf[..len]).into_owned()
    }

    /// A datagram socket bound in a fresh directory, like systemd's notify socket.
    fn listening_socket(name: &str) -> (TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = TempDir::new(name);
        let path = dir.0.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        (dir, socket, path)
    }

    /// A directory that is removed when the test ends, even by a panic.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("rendez-notify-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn without_notify_socket_nothing_is_enabled() {
        let notifier = Notifier::from_vars(None, Some("1000000"), None, 42);
        assert!(!notifier.is_enabled());
        assert_eq!(notifier.watchdog_limit(), None);
        notifier.ready(); // a no-op, not an error
        let empty = Notifier::from_vars(Some(OsStr::new("")), None, None, 42);
        assert!(!empty.is_enabled());
    }

    #[test]
    fn messages_arrive_in_the_protocol_format() {
        let (_dir, socket, path) = listening_socket("format");
        let notifier = notifier_to(&path, None, None);
        notifier.ready();
        assert_eq!(receive(&socket), "READY=1");
        notifier.status("3 allocations\nand a second line");
        assert_eq!(receive(&socket), "STATUS=3 allocations and a second line");
        notifier.reloading();
        let reloading = receive(&socket);
        let (first, second) = reloading.split_once('\n').unwrap();
        assert_eq!(first, "RELOADING=1");
        let usec: u64 = second
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
        notifier.watchdog();
        assert_eq!(receive(&socket), "WATCHDOG=1");
    }

    #[test]
    fn watchdog_applies_to_this_process_only() {
        let path = std::path::Path::new("/run/systemd/notify");
        let ours = notifier_to(path, Some("30000000"), Some("42"));
        assert_eq!(ours.watchdog_limit(), Some(Duration::from_secs(30)));
        let anyones = notifier_to(path, Some("30000000"), None);
        assert_eq!(anyones.watchdog_limit(), Some(Duration::from_secs(30)));
        let another_process = notifier_to(path, Some("30000000"), Some("7"));
        assert_eq!(another_process.watchdog_limit(), None);
        for nonsense in ["0", "-5", "soon", ""] {
            assert_eq!(
                notifier_to(path, Some(nonsense), None).watchdog_limit(),
                None
            );
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn abstract_socket_names_are_reached() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("rendez-notify-test-{}", std::process::id());
        let address = UnixAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&address).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let notifier = Notifier::from_vars(
            Some(OsStr::from_bytes(format!("@{name}").as_bytes())),
            None,
            None,
            42,
        );
        notifier.stopping();
        assert_eq!(receive(&socket), "STOPPING=1");
    }

    #[test]
    fn a_vanished_manager_is_not_an_error() {
        let (dir, socket, path) = listening_socket("vanished");
        let notifier = notifier_to(&path, None, None);
        drop(socket);
        drop(dir);
        notifier.ready();
        notifier.status("still fine");
    }

    #[test]
    fn a_full_queue_never_blocks() {
        let (_dir, _socket, path) = listening_socket("full");
        let notifier = notifier_to(&path, None, None);
        // Nobody reads: the socket's queue (max_dgram_qlen, 512 by default) fills up, and
        // later sends must fail at once instead of waiting for room.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                notifier.status(&"x".repeat(200));
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(10))
            .expect("sending to a full queue returned at once");
    }
}
