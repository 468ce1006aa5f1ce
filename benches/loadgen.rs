//! rendez-loadgen: drives any TURN server on loopback and measures it.
//!
//! Modes (`--mode`):
//! - `relay`: N allocations (one client socket each), one permission and M channels each,
//!   bound to echo peers in this process; then ChannelData of `--size` bytes at `--rate`
//!   packets/s in total (`--rate 0`: closed loop with `--window` packets in flight, i.e.
//!   saturation). Path: client → server → peer → server → client. With `--transport tcp`
//!   or `tls` each allocation is one TCP (TLS) connection to the server instead of a UDP
//!   socket: STUN and ChannelData (padded to 4 bytes) framed on the stream, RFC 8656 §12.5;
//!   the relay to the peers stays UDP.
//! - `raw`: the same traffic as bare UDP payloads through `rendez-forwarder` (the ceiling).
//! - `echo`: bare payloads to `rendez-forwarder --echo`, which sends them straight back
//!   (the ceiling of the Binding flood: one receive and one send per request).
//! - `binding`: a flood of Binding requests from `--clients` sockets; counts responses.
//! - `churn`: `--clients` sockets each cycle Allocate (with the 401 dance) → Refresh(0).
//! - `memory`: opens N allocations, reads the server's VmRSS before, during and after
//!   deleting them all.
//!
//! Every payload carries a sequence number and a send timestamp, so loss and round-trip
//! time come from the packets themselves. With `--server-pid` the server's CPU time
//! (utime + stime from /proc/PID/stat) is read at the start and end of the measured window:
//! throughput per server CPU-second is fair even when this generator is the slower side.
//! One JSON object on stdout is the result; progress and warnings go to stderr.
//!
//! Safety rails: every address must be loopback — or, for benches/xdp/compare.sh, in the
//! benchmarking range 198.18.0.0/15 (RFC 2544) while this process runs in a network
//! namespace other than init's, so that the traffic stays in the namespaces the script made —
//! every phase has a deadline, and the packet count is capped (`--max-packets`).
//!
//! Layout: this file has the command line, the modes and the report; `loadgen/control.rs`
//! opens and deletes allocations, `loadgen/traffic.rs` sends and receives the measured
//! packets (and runs the echo peers), `loadgen/stream.rs` is TURN over TCP/TLS (framing,
//! the rustls client), `loadgen/measure.rs` reads /proc and keeps the histogram;
//! `udp_sockets.rs` (shared with the forwarder) binds the UDP sockets and waits on them with
//! epoll. recvmmsg/sendmmsg are rendez's own batching layer, `rendez::net::batch`.

#[path = "loadgen/control.rs"]
mod control;
#[path = "loadgen/measure.rs"]
mod measure;
#[path = "loadgen/stream.rs"]
mod stream;
#[path = "loadgen/traffic.rs"]
mod traffic;
mod udp_sockets;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use rendez::stun::{Class, Message, MessageBuilder, Method, TransactionId};
use serde_json::{json, Map, Value};

use control::{Control, Request, SetupOutcome};
use measure::{read_cpu_seconds, read_rss_kib, Histogram, Snapshot, Watched};
use traffic::{EchoPeers, Links, Traffic, TrafficResult, Wire};
use udp_sockets::{bind_udp, DATAGRAM_CAPACITY};

// ---------------------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    Relay,
    Raw,
    Echo,
    Binding,
    Churn,
    Memory,
}

/// TLS versions the generator offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum TlsVersion {
    /// TLS 1.3 and 1.2: the server chooses.
    Any,
    #[value(name = "1.2")]
    V1_2,
    #[value(name = "1.3")]
    V1_3,
}

/// How clients reach the server (relay mode); the relay to the peers is UDP in every case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Transport {
    Udp,
    /// One TCP connection per allocation.
    Tcp,
    /// One TLS connection per allocation (any server certificate is accepted).
    Tls,
}

/// Command-line options. Counts and durations are capped so a typo cannot start an
/// unbounded run.
#[derive(Parser, Debug)]
#[command(about = "Load generator for TURN servers on loopback (see benches/README.md)")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    /// The server's address: UDP (the forwarder's in raw mode), or its TCP or TLS
    /// listener with `--transport`. Loopback only.
    #[arg(long, default_value = "127.0.0.1:3478")]
    server: SocketAddrV4,
    /// Client transport in relay mode: a UDP socket, or a TCP or TLS connection per
    /// allocation.
    #[arg(long, value_enum, default_value = "udp")]
    transport: Transport,
    /// TLS versions offered with `--transport tls` (compare servers at the same version).
    #[arg(long, value_enum, default_value = "any")]
    tls_version: TlsVersion,
    #[arg(long, default_value = "bench")]
    user: String,
    #[arg(long, default_value = "bench")]
    password: String,
    /// Realm for the long-term key; default: the one in the server's 401.
    #[arg(long)]
    realm: Option<String>,
    /// Allocations (relay, memory) or forwarder clients (raw).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20_000))]
    allocations: u32,
    /// Channels (and echo peers) per allocation.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    channels: u16,
    /// Sockets for binding floods; concurrent allocate/delete cycles for churn.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    clients: u32,
    /// Application payload bytes per relayed packet (ChannelData adds 4).
    #[arg(long, default_value_t = 160)]
    size: usize,
    /// Packets (or Binding requests) per second in total; 0: closed loop at `--window`.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Packets in flight in closed-loop mode (`--rate 0`).
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// Datagrams per sendmmsg/recvmmsg call at most.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seconds of measured traffic (or churn).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before the measured window (not counted).
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Stop sending after this many packets in all.
    #[arg(long, default_value_t = 20_000_000)]
    max_packets: u64,
    /// Seconds allowed for opening (and for deleting) all allocations.
    #[arg(long, default_value_t = 60.0)]
    setup_timeout: f64,
    /// Transactions in flight while opening or deleting allocations.
    #[arg(long, default_value_t = 128)]
    setup_window: usize,
    /// Seconds to wait before reading VmRSS in memory mode (lets the server settle).
    #[arg(long, default_value_t = 1.0)]
    settle: f64,
    /// The server's process id: its CPU time and memory are read from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Other processes or threads whose CPU time counts as the server's side (repeatable):
    /// the kernel threads that run the server interface's receive processing (threaded
    /// NAPI), as benches/xdp/compare.sh passes them.
    #[arg(long = "server-side-pid")]
    server_side_pids: Vec<u32>,
    /// Processes or threads whose CPU time counts with the generator's (repeatable): the
    /// receive threads of the generator's own interface.
    #[arg(long = "client-side-pid")]
    client_side_pids: Vec<u32>,
    /// The echo peer's fixed address (raw mode: the forwarder's `--peer`).
    #[arg(long)]
    peer: Option<SocketAddrV4>,
    /// Address the client sockets bind to; default: the server's (any 127.0.0.0/8 address
    /// is local).
    #[arg(long)]
    local_ip: Option<Ipv4Addr>,
    /// Address the echo peers bind to.
    #[arg(long, default_value = "127.0.0.1")]
    peer_ip: Ipv4Addr,
    /// Copied into the report, for the comparison script.
    #[arg(long)]
    scenario: Option<String>,
    /// Copied into the report (e.g. the server's name).
    #[arg(long)]
    label: Option<String>,
}

/// 198.18.0.0/15: set aside for benchmarking network devices (RFC 2544), routed nowhere.
fn is_benchmarking_address(ip: &Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    a == 198 && (b & 0xfe) == 18
}

/// True when this process runs in a named network namespace (`ip netns add` mounts each
/// under /run/netns) that is not init's: then the only interfaces it sees are the ones
/// made for that namespace.
fn in_own_network_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |path: &std::path::Path| std::fs::metadata(path).map(|m| (m.dev(), m.ino())).ok();
    let Some(own) = id("/proc/self/ns/net".as_ref()) else {
        return false;
    };
    // Unreadable from inside a namespace on some kernels; then the name check alone decides.
    if id("/proc/1/ns/net".as_ref()) == Some(own) {
        return false;
    }
    let Ok(named) = std::fs::read_dir("/run/netns") else {
        return false;
    };
    named
        .filter_map(Result::ok)
        .any(|entry| id(&entry.path()) == Some(own))
}

/// Longest run accepted for any duration flag.
const MAX_SECONDS: f64 = 600.0;
/// Largest packet count accepted (the loss bitmap costs one bit per packet).
const MAX_PACKETS_CAP: u64 = 200_000_000;
/// Seq + timestamp: the smallest payload that can be measured.
const MIN_PAYLOAD: usize = 16;

impl Args {
    fn validate(&self) -> anyhow::Result<()> {
        self.validate_addresses()?;
        for (name, value) in [
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--setup-timeout", self.setup_timeout),
            ("--settle", self.settle),
        ] {
            if !(0.0..=MAX_SECONDS).contains(&value) {
                bail!("{name} must be between 0 and {MAX_SECONDS} seconds");
            }
        }
        if !(MIN_PAYLOAD..=DATAGRAM_CAPACITY - 4).contains(&self.size) {
            bail!(
                "--size must be between {MIN_PAYLOAD} and {}",
                DATAGRAM_CAPACITY - 4
            );
        }
        if self.max_packets > MAX_PACKETS_CAP {
            bail!("--max-packets is capped at {MAX_PACKETS_CAP}");
        }
        if self.window == 0 || self.batch == 0 || self.setup_window == 0 {
            bail!("--window, --batch and --setup-window must be positive");
        }
        if self.mode == Mode::Raw && (self.peer.is_none() || self.channels != 1) {
            bail!("raw mode needs --peer (the forwarder's peer) and exactly one channel");
        }
        if self.transport != Transport::Udp && self.mode != Mode::Relay {
            bail!("--transport tcp and tls are for relay mode only");
        }
        Ok(())
    }

    /// Loopback, or the benchmarking range from inside a network namespace of our own.
    fn validate_addresses(&self) -> anyhow::Result<()> {
        let addresses = [
            Some(*self.server.ip()),
            self.peer.map(|p| *p.ip()),
            self.local_ip,
            Some(self.peer_ip),
        ];
        let beyond_loopback: Vec<Ipv4Addr> = addresses
            .into_iter()
            .flatten()
            .filter(|ip| !ip.is_loopback())
            .collect();
        if beyond_loopback.is_empty() {
            return Ok(());
        }
        if !beyond_loopback.iter().all(is_benchmarking_address) {
            bail!(
                "rendez-loadgen sends to loopback (127.0.0.0/8) or, inside a network namespace \
                 of its own, to the benchmarking range 198.18.0.0/15 only"
            );
        }
        if !in_own_network_namespace() {
            bail!(
                "addresses beyond loopback (198.18.0.0/15) are for runs inside a named network \
                 namespace other than init's (`ip netns exec`, benches/xdp/compare.sh)"
            );
        }
        Ok(())
    }

    /// The address client sockets bind to.
    fn local_ip(&self) -> Ipv4Addr {
        self.local_ip.unwrap_or(*self.server.ip())
    }

    fn watched(&self) -> Watched {
        Watched {
            server_pid: self.server_pid,
            server_side: self.server_side_pids.clone(),
            client_side: self.client_side_pids.clone(),
        }
    }

    fn deadline_after(&self, seconds: f64) -> Instant {
        Instant::now() + Duration::from_secs_f64(seconds)
    }
}

// ---------------------------------------------------------------------------------------
// Modes
// ---------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.validate()?;
    // Thousands of client sockets need a high descriptor limit: take the hard limit.
    rendez::net::raise_open_file_limit();
    let mut report = Report::new(&args);
    match args.mode {
        Mode::Relay => run_relay(&args, &mut report)?,
        Mode::Raw | Mode::Echo => run_raw(&args, &mut report)?,
        Mode::Binding => run_binding(&args, &mut report)?,
        Mode::Churn => run_churn(&args, &mut report)?,
        Mode::Memory => run_memory(&args, &mut report)?,
    }
    println!("{}", Value::Object(report.fields));
    Ok(())
}

/// Allocate, permission and channels, then ChannelData through the server and back.
fn run_relay(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    match args.transport {
        Transport::Udp => wait_until_ready(args)?,
        Transport::Tcp => stream::wait_until_ready(args.server, None, &binding_request())?,
        Transport::Tls => {
            let tls = stream::tls_config(args.tls_version)?;
            stream::wait_until_ready(args.server, Some(&tls), &binding_request())?;
        }
    }
    report.server_memory("rss_kib_before", args.server_pid);
    let echo = EchoPeers::spawn(args.channels.into(), args.peer_ip, None, run_bound(args))?;
    let mut control = Control::new(args, args.allocations as usize, echo.addresses.clone())?;
    let setup = control.run_setup(args)?;
    report.setup(&setup, &control);
    if let Some((version, suite)) = control.tls_parameters() {
        report.field("tls_version", version);
        report.field("tls_cipher_suite", suite);
    }
    let links = match args.transport {
        Transport::Udp => Links::Datagram(control.ready_sockets()),
        Transport::Tcp | Transport::Tls => Links::Stream(control.ready_streams()),
    };
    if links.is_empty() {
        bail!("no allocation succeeded: {:?}", control.stats.errors);
    }
    let wire = Wire::ChannelData {
        channels: args.channels,
    };
    let result = Traffic::new(args, wire, links)?.run(args)?;
    report.traffic(wire, &result);
    if args.transport != Transport::Udp {
        report.field("streams_closed", result.closed_streams as u64);
    }
    report.field("echoed", echo.stop());
    report.server_memory("rss_kib_after", args.server_pid);
    control.run_teardown(args);
    report.control_stats(&control);
    Ok(())
}

/// The same traffic without STUN, through rendez-forwarder: the machine's ceiling. Raw
/// mode relays through an echo peer; echo mode has the forwarder itself answer, from
/// `--clients` sockets like the Binding flood.
fn run_raw(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let (peers, clients) = match args.mode {
        Mode::Echo => (None, args.clients),
        _ => (
            Some(EchoPeers::spawn(
                1,
                args.peer_ip,
                args.peer,
                run_bound(args),
            )?),
            args.allocations,
        ),
    };
    let sockets: Vec<UdpSocket> = (0..clients)
        .map(|_| client_socket(args.local_ip(), args.server))
        .collect::<anyhow::Result<_>>()?;
    let fds: Vec<RawFd> = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let mut traffic = Traffic::new(args, Wire::Raw, Links::Datagram(fds))?;
    let started = Instant::now();
    traffic.open_raw_paths(args.deadline_after(args.setup_timeout))?;
    report.field("setup_seconds", started.elapsed().as_secs_f64());
    let result = traffic.run(args)?;
    match peers {
        Some(peers) => {
            report.traffic(Wire::Raw, &result);
            report.field("echoed", peers.stop());
        }
        // Echo answers are the counterpart of Binding responses.
        None => report.traffic(Wire::Binding, &result),
    }
    Ok(())
}

/// Binding requests from `--clients` sockets, answered by the server itself.
fn run_binding(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    wait_until_ready(args)?;
    let sockets: Vec<UdpSocket> = (0..args.clients)
        .map(|_| client_socket(args.local_ip(), args.server))
        .collect::<anyhow::Result<_>>()?;
    let fds = sockets.iter().map(AsRawFd::as_raw_fd).collect();
    let result = Traffic::new(args, Wire::Binding, Links::Datagram(fds))?.run(args)?;
    report.traffic(Wire::Binding, &result);
    Ok(())
}

/// Allocate → Refresh(lifetime 0) cycles; counts allocations completed in the window.
fn run_churn(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    wait_until_ready(args)?;
    report.server_memory("rss_kib_before", args.server_pid);
    let mut control = Control::new(args, args.clients as usize, Vec::new())?;
    control.begin(
        vec![Request::Allocate, Request::Delete],
        true,
        0..args.clients as usize,
    );
    let window_start = args.deadline_after(args.warmup);
    let window_end = window_start + Duration::from_secs_f64(args.duration);
    while Instant::now() < window_start {
        control.poll(Duration::from_millis(5))?;
    }
    let before = Snapshot::take(&args.watched(), control.stats.allocations);
    let latency_before = control.stats.allocate_latency.clone();
    while Instant::now() < window_end {
        control.poll(Duration::from_millis(5))?;
    }
    let after = Snapshot::take(&args.watched(), control.stats.allocations);
    // Let the cycles in flight finish so no allocation is left behind on the server.
    control.stop_cycling();
    let drain_deadline = args.deadline_after(args.setup_timeout.min(5.0));
    while !control.phase_done() && Instant::now() < drain_deadline {
        control.poll(Duration::from_millis(5))?;
    }
    // Deleted allocations should leave nothing behind: compare with rss_kib_before.
    report.server_memory("rss_kib_after", args.server_pid);
    let mut latency = control.stats.allocate_latency.clone();
    latency.subtract(&latency_before);
    report.rates("allocations", &before, &after);
    report.latency("allocate", &latency);
    report.control_stats(&control);
    Ok(())
}

/// VmRSS of the server before, with N allocations open, and after deleting them.
fn run_memory(args: &Args, report: &mut Report) -> anyhow::Result<()> {
    let Some(pid) = args.server_pid else {
        bail!("memory mode needs --server-pid");
    };
    wait_until_ready(args)?;
    let echo = EchoPeers::spawn(args.channels.into(), args.peer_ip, None, run_bound(args))?;
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    let before = read_rss_kib(pid)?;
    let mut control = Control::new(args, args.allocations as usize, echo.addresses.clone())?;
    let cpu_before = read_cpu_seconds(pid).ok();
    let setup = control.run_setup(args)?;
    let cpu_after = read_cpu_seconds(pid).ok();
    report.setup(&setup, &control);
    if let (Some(b), Some(a)) = (cpu_before, cpu_after) {
        report.field("setup_server_cpu_seconds", a - b);
        report.field(
            "allocations_per_server_cpu_second",
            ratio(setup.succeeded as f64, a - b),
        );
    }
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    let during = read_rss_kib(pid)?;
    let deleted = control.run_teardown(args);
    report.control_stats(&control);
    std::thread::sleep(Duration::from_secs_f64(args.settle));
    let after = read_rss_kib(pid)?;
    echo.stop();
    let opened = setup.succeeded.max(1) as f64;
    report.field("rss_kib_before", before);
    report.field("rss_kib_during", during);
    report.field("rss_kib_after", after);
    report.field("deleted", deleted);
    report.field(
        "kib_per_allocation",
        (during as f64 - before as f64) / opened,
    );
    report.field(
        "kib_per_allocation_after_delete",
        (after as f64 - before as f64) / opened,
    );
    Ok(())
}

/// A bound for helper threads: the longest this process can legitimately run.
fn run_bound(args: &Args) -> Instant {
    args.deadline_after(
        2.0 * args.setup_timeout + args.warmup + args.duration + 4.0 * args.settle + 10.0,
    )
}

/// A nonblocking client socket on `local` connected to `server`.
fn client_socket(local: Ipv4Addr, server: SocketAddrV4) -> anyhow::Result<UdpSocket> {
    let socket = bind_udp(SocketAddrV4::new(local, 0)).context("bind client socket")?;
    socket.connect(server).context("connect client socket")?;
    Ok(socket)
}

/// Like [`client_socket`], on a chosen local port.
fn client_socket_on(local: Ipv4Addr, server: SocketAddrV4, port: u16) -> anyhow::Result<UdpSocket> {
    let socket = bind_udp(SocketAddrV4::new(local, port))?;
    socket.connect(server)?;
    Ok(socket)
}

/// Sends Binding requests until the server answers (it may still be starting).
fn wait_until_ready(args: &Args) -> anyhow::Result<()> {
    let server = args.server;
    let socket = client_socket(args.local_ip(), server)?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let request = binding_request();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buffer = [0u8; 1500];
    while Instant::now() < deadline {
        // Refused (nothing listening yet) and timeouts both mean: try again.
        let _ = socket.send(&request);
        if let Ok(len) = socket.recv(&mut buffer) {
            if Message::parse(&buffer[..len]).is_ok_and(|m| m.class() == Class::Success) {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("no Binding response from {server} within 10 s: is the server running?")
}

/// The readiness probe: a Binding request.
fn binding_request() -> Vec<u8> {
    MessageBuilder::new(Class::Request, Method::BINDING, TransactionId([7; 12])).finish()
}

// ---------------------------------------------------------------------------------------
// Report: one flat JSON object
// ---------------------------------------------------------------------------------------

struct Report {
    fields: Map<String, Value>,
    /// --server-side-pid or --client-side-pid given: report the server's side apart.
    watched_threads: bool,
}

impl Report {
    fn new(args: &Args) -> Self {
        let mode = format!("{:?}", args.mode).to_lowercase();
        let mut fields = Map::new();
        fields.insert(
            "scenario".into(),
            json!(args.scenario.clone().unwrap_or_else(|| mode.clone())),
        );
        fields.insert("label".into(), json!(args.label));
        fields.insert("mode".into(), json!(mode));
        fields.insert("server".into(), json!(args.server.to_string()));
        let transport = format!("{:?}", args.transport).to_lowercase();
        fields.insert("transport".into(), json!(transport));
        fields.insert("server_pid".into(), json!(args.server_pid));
        fields.insert("allocations".into(), json!(args.allocations));
        fields.insert("channels".into(), json!(args.channels));
        fields.insert("clients".into(), json!(args.clients));
        fields.insert("size".into(), json!(args.size));
        fields.insert("rate".into(), json!(args.rate));
        fields.insert("window".into(), json!(args.window));
        let watched_threads =
            !args.server_side_pids.is_empty() || !args.client_side_pids.is_empty();
        if watched_threads {
            fields.insert("server_side_pids".into(), json!(args.server_side_pids));
            fields.insert("client_side_pids".into(), json!(args.client_side_pids));
        }
        Self {
            fields,
            watched_threads,
        }
    }

    fn field(&mut self, name: &str, value: impl Into<Value>) {
        self.fields.insert(name.into(), value.into());
    }

    fn server_memory(&mut self, name: &str, pid: Option<u32>) {
        let rss = pid.and_then(|pid| read_rss_kib(pid).ok());
        self.field(name, json!(rss));
    }

    fn setup(&mut self, setup: &SetupOutcome, control: &Control) {
        self.field("setup_seconds", setup.seconds);
        self.field("setup_ok", setup.succeeded as u64);
        self.field("setup_failed", setup.failed as u64);
        self.field(
            "setup_allocations_per_second",
            ratio(setup.succeeded as f64, setup.seconds),
        );
        self.control_stats(control);
    }

    fn control_stats(&mut self, control: &Control) {
        self.field("allocate_successes", control.stats.allocations);
        self.field("delete_successes", control.stats.deletions);
        self.field("retransmits", control.stats.retransmits);
        self.field("errors", json!(control.stats.errors));
    }

    /// Relay and raw: `relayed_pps` and `packets_per_server_cpu_second` count relayed
    /// packets, two per round trip (client → peer and peer → client). Binding:
    /// `responses_per_second` and `responses_per_server_cpu_second`.
    fn traffic(&mut self, wire: Wire, result: &TrafficResult) {
        let total = &result.total;
        let lost = total.sent.saturating_sub(total.received);
        self.field("sent", total.sent);
        self.field("received", total.received);
        self.field("lost", lost);
        self.field("loss", ratio(lost as f64, total.sent as f64));
        self.field("duplicates", total.duplicates);
        self.field("foreign", total.foreign);
        self.field("send_errors", total.send_errors);
        self.field("receive_errors", total.receive_errors);
        self.field("rate_shortfall", total.skipped);
        self.field("written_off", total.written_off);
        self.field("server_socket_drops", json!(result.drops.server));
        self.field("generator_socket_drops", json!(result.drops.generator));
        self.field("window_sent", result.in_window.sent);
        self.field("window_received", result.in_window.received);
        let (name, per_round_trip) = match wire {
            Wire::Binding => ("responses", 1),
            Wire::ChannelData { .. } | Wire::Raw => ("relayed_packets", 2),
        };
        let count = result.in_window.received * per_round_trip;
        let (per_second, per_cpu) = self.window(&result.start, &result.end, count);
        self.field(&format!("{name}_per_second"), per_second);
        self.field(&format!("{name}_per_server_cpu_second"), json!(per_cpu));
        if per_round_trip == 2 {
            self.field("relayed_pps", per_second);
            self.field("packets_per_server_cpu_second", json!(per_cpu));
            self.field("round_trips_per_second", per_second / 2.0);
        }
        self.latency("rtt", &result.rtt);
    }

    /// `name`_per_second and `name`_per_server_cpu_second between two snapshots.
    fn rates(&mut self, name: &str, before: &Snapshot, after: &Snapshot) {
        let count = after.count - before.count;
        self.field(&format!("window_{name}"), count);
        let (per_second, per_cpu) = self.window(before, after, count);
        self.field(&format!("{name}_per_second"), per_second);
        self.field(&format!("{name}_per_server_cpu_second"), json!(per_cpu));
    }

    /// Durations and CPU times of a measured window; returns `count` per second and per
    /// server CPU-second (also stored as `per_second` and `per_server_cpu_second`).
    fn window(&mut self, start: &Snapshot, end: &Snapshot, count: u64) -> (f64, Option<f64>) {
        let seconds = end.at.duration_since(start.at).as_secs_f64();
        let delta = |e: Option<f64>, s: Option<f64>| e.zip(s).map(|(e, s)| e - s);
        let server = delta(end.server_cpu, start.server_cpu);
        let server_threads = delta(end.server_side_cpu, start.server_side_cpu);
        let client_threads = delta(end.client_side_cpu, start.client_side_cpu);
        let generator = end.generator_cpu - start.generator_cpu;
        let machine = delta(end.machine_cpu, start.machine_cpu);
        let ours = generator
            + server.unwrap_or(0.0)
            + server_threads.unwrap_or(0.0)
            + client_threads.unwrap_or(0.0);
        let other = machine.map(|m| (m - ours).max(0.0));
        let per_second = ratio(count as f64, seconds);
        let per_cpu = server.map(|cpu| ratio(count as f64, cpu));
        self.field("window_seconds", seconds);
        self.field("server_cpu_seconds", json!(server));
        self.field("generator_cpu_seconds", generator);
        self.field("machine_cpu_seconds", json!(machine));
        self.field("steal_seconds", json!(delta(end.steal, start.steal)));
        self.field("other_cpu_seconds", json!(other));
        self.field("per_second", per_second);
        self.field("per_server_cpu_second", json!(per_cpu));
        if !self.watched_threads {
            return (per_second, per_cpu);
        }
        // The server's side: its process and the threads named with --server-side-pid.
        let server_side = server.zip(server_threads).map(|(p, t)| p + t);
        self.field("server_threads_cpu_seconds", json!(server_threads));
        self.field("server_side_cpu_seconds", json!(server_side));
        self.field("client_threads_cpu_seconds", json!(client_threads));
        self.field(
            "per_server_side_cpu_second",
            json!(server_side.map(|cpu| ratio(count as f64, cpu))),
        );
        (per_second, per_cpu)
    }

    /// `name`_p50_us, `name`_p99_us, `name`_p999_us from a nanosecond histogram.
    fn latency(&mut self, name: &str, histogram: &Histogram) {
        for (suffix, q) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
            let micros = histogram
                .quantile(q)
                .map(|ns| (ns as f64 / 100.0).round() / 10.0);
            self.field(&format!("{name}_{suffix}_us"), json!(micros));
        }
        if name == "rtt" {
            let p50 = self.fields["rtt_p50_us"].clone();
            let p99 = self.fields["rtt_p99_us"].clone();
            self.field("p50_us", p50);
            self.field("p99_us", p99);
        }
    }
}

/// a / b, or 0 when b is 0 (an empty window must not print NaN into the JSON).
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let base = ["rendez-loadgen", "--mode", "relay"];
        Args::try_parse_from(base.iter().chain(extra)).expect("valid flags")
    }

    #[test]
    fn addresses_beyond_loopback_need_the_benchmarking_range_and_a_namespace_of_our_own() {
        assert!(args(&[]).validate().is_ok());
        assert!(args(&["--local-ip", "127.0.0.2", "--peer-ip", "127.0.0.3"])
            .validate()
            .is_ok());
        assert!(args(&["--server", "10.0.0.1:3478"]).validate().is_err());
        assert!(args(&["--peer-ip", "8.8.8.8"]).validate().is_err());
        // Allowed only when the test itself runs inside a named network namespace.
        let bench = args(&["--server", "198.18.0.1:3478", "--local-ip", "198.18.0.2"]);
        assert_eq!(bench.validate().is_ok(), in_own_network_namespace());
        assert!(is_benchmarking_address(&Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!is_benchmarking_address(&Ipv4Addr::new(198, 20, 0, 1)));
        assert!(!is_benchmarking_address(&Ipv4Addr::new(198, 17, 0, 1)));
    }
}
