//! A real `redis-server` (Debian's package) on loopback for one test: started on a port of
//! its own, stopped and started again on the same port, killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::tools::require_tool;
use super::TempDir;

pub struct RedisServer {
    child: Option<Child>,
    /// Its plain-TCP address (also with TLS: for the test's own checks).
    pub addr: SocketAddr,
    /// Its TLS address, when started [`RedisServer::with_tls`].
    pub tls_addr: Option<SocketAddr>,
    /// Arguments beyond the address and persistence.
    extra: Vec<String>,
    pub dir: TempDir,
}

impl RedisServer {
    /// Starts one (no persistence: a restart starts empty, the harder case), or `None`
    /// when redis-server is not installed and not required.
    pub fn start(name: &str) -> Option<Self> {
        Self::start_with(name, false, &[])
    }

    /// [`RedisServer::start`] with TLS on a second port, its certificate (for `localhost`)
    /// in `dir/cert.pem` (trust it with `SSL_CERT_FILE`), and `extra` arguments (e.g.
    /// `--requirepass`).
    pub fn with_tls(name: &str, extra: &[&str]) -> Option<Self> {
        Self::start_with(name, true, extra)
    }

    fn start_with(name: &str, tls: bool, extra: &[&str]) -> Option<Self> {
        require_tool("redis-server")?;
        let dir = TempDir::new(&format!("redis-{name}"));
        let mut extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let mut tls_addr = None;
        if tls {
            let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
            std::fs::write(dir.0.join("cert.pem"), certified.cert.pem()).unwrap();
            std::fs::write(dir.0.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
            let addr = free_port();
            tls_addr = Some(addr);
            for (flag, value) in [
                ("--tls-port", addr.port().to_string()),
                (
                    "--tls-cert-file",
                    dir.0.join("cert.pem").display().to_string(),
                ),
                (
                    "--tls-key-file",
                    dir.0.join("key.pem").display().to_string(),
                ),
                ("--tls-auth-clients", "no".into()),
            ] {
                extra.extend([flag.to_owned(), value]);
            }
        }
        let mut server = Self {
            child: None,
            addr: free_port(),
            tls_addr,
            extra,
            dir,
        };
        server.resume();
        Some(server)
    }

    /// `redis://127.0.0.1:PORT/0`
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Stops it at once (SIGKILL: as a crash or a network failure looks to its clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty) and waits until it answers.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.0.join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            // With `--requirepass` an unauthenticated PING is refused, but answered.
            let answered = self
                .command("PING")
                .is_some_and(|reply| reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"));
            if answered {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not answer within 10 s on {}", self.addr);
    }

    /// One inline command; its raw reply, or None when it cannot be asked.
    pub fn command(&self, command: &str) -> Option<String> {
        let mut stream = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
        let mut reply = vec![0u8; 64 * 1024];
        let n = stream.read(&mut reply).ok()?;
        Some(String::from_utf8_lossy(&reply[..n]).into_owned())
    }

    /// Calls made of each command so far (`INFO commandstats`), e.g. "evalsha" or "publish".
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.command("INFO commandstats").unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

/// A free port: the kernel's choice, released for redis to take.
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
