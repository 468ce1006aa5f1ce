//! Starting a server: configuration → bound sockets → running shards and tasks.
//!
//! Everything that can fail (bad config, a port in use, a missing certificate) fails here,
//! before anything is served, with a message that names the config key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Instant;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use super::acme::Acme;
use super::address::resolve_relay_addresses;
use super::fleet::{resolve_alternates, NonceKeys};
use super::handle::Handle;
use super::observe::Observer;
use super::proxy_protocol::TrustedProxies;
use super::tls::CertStore;
use super::turn_io::stream::TurnRoute;
use super::turn_io::{stream, stream_shard, udp, worker};
use super::xdp::{FastPath, StunService};
use super::{http, limits, metrics, shared_port, tls, unix_now};
use crate::config::{AcmeChallenge, ChannelNumbersConfig, Config, LimitsConfig, RelayFamily};
use crate::random::Rng;
use crate::turn::{
    self, Alternate, ChallengeLimiter, ChannelNumbers, DefaultFamily, NatDiscovery, PeerPolicy,
    PortClaims, QuotaLimits, Quotas, RelayAddress, Reservations, ServerConfig, TcpRelayLimits,
};

/// What every shard shares: allocation quotas, the challenge rate per source, and the relay
/// port claims and EVEN-PORT reservations (a reservation made on one shard is redeemed on
/// whichever shard the next Allocate reaches).
#[derive(Clone)]
pub(crate) struct SharedLimits {
    quotas: Quotas,
    challenges: ChallengeLimiter,
    bindings: ChallengeLimiter,
    port_claims: PortClaims,
    reservations: Reservations,
}

impl SharedLimits {
    fn new(limits: &LimitsConfig) -> anyhow::Result<Self> {
        let shared = Self {
            quotas: Quotas::default(),
            challenges: ChallengeLimiter::new(
                limits.unauthorized_per_ip,
                Rng::from_os()?.next_u64(),
            ),
            bindings: ChallengeLimiter::new(limits.binding_per_ip, Rng::from_os()?.next_u64()),
            port_claims: PortClaims::default(),
            reservations: Reservations::default(),
        };
        shared.apply(limits);
        Ok(shared)
    }

    /// Takes new maximums (a reload); counts so far stay.
    pub fn apply(&self, limits: &LimitsConfig) {
        self.quotas.set_limits(QuotaLimits {
            per_user: limits.allocations_per_user,
            per_address: limits.allocations_per_ip,
            total: limits.allocations_total,
        });
        self.challenges.set_per_second(limits.unauthorized_per_ip);
        self.bindings.set_per_second(limits.binding_per_ip);
    }

    /// Allocations on every shard at this moment: each is counted by its quota claim as it
    /// is created and uncounted as it ends.
    pub fn allocations(&self) -> u32 {
        self.quotas.total()
    }
}

/// Binds every listener and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Handle> {
    config.validate()?;
    let alternates = resolve_alternates(&config.alternate_servers).await?;
    let proxies = &config.connections.proxy_protocol_from;
    if proxies.iter().any(|net| net.prefix_len() == 0) {
        tracing::warn!(
            "`connections.proxy-protocol-from` includes every address: any client can claim any source address; list only your load balancers"
        );
    }
    let relays = resolve_relay_addresses(&config)?;
    // With [acme] the certificate comes from the CA (after the listeners are up, since the
    // CA validates through them); with [tls], from files.
    let acme = config.acme.as_ref().map(Acme::prepare).transpose()?;
    let certs = match &acme {
        Some(acme) => Some(acme.certs().clone()),
        None => config.tls.as_ref().map(CertStore::load).transpose()?,
    };
    let challenges = acme.as_ref().map(|a| a.challenges().clone());
    let acme_http_listener = acme_http_listener(&config)?;
    let tls = certs.as_ref().map(tls::turn_acceptor).transpose()?;
    let https = certs.as_ref().map(tls::http_acceptor).transpose()?;
    let shared_limits = SharedLimits::new(&config.limits)?;
    let workers = match config.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One slice of the relay ports per UDP worker, and one for TCP/TLS clients.
    let port_slices = split_ports(&config.relay_ports.0, workers + 1)?;
    let BoundListeners {
        udp_sets: listener_sets,
        udp_addrs,
        tcp: tcp_listeners,
        discovery,
    } = bind_udp_and_tcp(&config.listen, config.other_address, &relays, workers)?;
    let tcp_addrs = local_addrs(&tcp_listeners)?;
    // After the listeners: a port in use is reported before the kernel is touched.
    let fast_path = FastPath::start(
        &config.xdp,
        StunService {
            listen: &udp_addrs,
            nat_discovery: discovery.is_some(),
            software: config.software.as_deref(),
        },
    )?;
    let shared = shared_port::shared_addresses(&config);
    let (shared_listeners, tcp_listeners) = bind_shared_ports(&config, &shared, tcp_listeners)?;
    // Each shared port's address as bound, and what it serves.
    let shared_ports = shared_listeners
        .iter()
        .map(|(services, l)| Ok((l.local_addr()?, *services)))
        .collect::<std::io::Result<Vec<_>>>()?;
    let shared_addrs: Vec<SocketAddr> = shared_ports.iter().map(|(a, _)| *a).collect();
    let tls_listeners = match tls {
        None => Vec::new(),
        Some(_) => config
            .tls_listen
            .iter()
            .filter(|addr| !shared.contains_key(addr))
            .filter_map(|&addr| match stream::bind_tcp(addr) {
                Ok(listener) => Some(Ok(listener)),
                Err(error) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                    tracing::warn!(%addr, %error, "no IPv6 on this host; skipping this TLS listener");
                    None
                }
                Err(error) => Some(Err(anyhow::Error::new(error).context(format!(
                    "cannot listen on TLS {addr} (config key `tls-listen`): is another server using the port?"
                )))),
            })
            .collect::<anyhow::Result<Vec<_>>>()?,
    };
    let mut tls_addrs = local_addrs(&tls_listeners)?;
    tls_addrs.extend(
        shared_ports
            .iter()
            .filter(|(_, s)| s.turns)
            .map(|(a, _)| *a),
    );
    let signal_shared = shared.contains_key(&config.signal.listen);
    let signal_listener = (config.signal.enabled && !signal_shared)
        .then(|| {
            stream::bind_tcp(config.signal.listen).with_context(|| {
                format!(
                    "cannot listen for HTTP on {} (config key `signal.listen`): is another server using the port?",
                    config.signal.listen
                )
            })
        })
        .transpose()?;
    let signal_addr = match &signal_listener {
        Some(listener) => Some(listener.local_addr()?),
        None => shared_ports.iter().find(|(_, s)| s.page).map(|(a, _)| *a),
    };

    // Every shard signs nonces with the same key, so a nonce from one is good at another
    // (and, with `nonce-secret`, at every node of the fleet).
    let nonce_keys = NonceKeys::new()?;
    let nonce_key = nonce_keys.for_config(&config);
    let shard = |ports: &RangeInclusive<u16>, fast_path: bool| -> anyhow::Result<turn::Server> {
        let mut core = core_config(&config, &relays, &shared_limits, alternates.clone());
        core.relay_ports = ports.clone();
        core.nat_discovery = discovery;
        core.fast_path = fast_path;
        Ok(turn::Server::new(
            core,
            Instant::now(),
            unix_now(),
            Rng::from_os()?,
            nonce_key,
        ))
    };
    let mut worker_handles = Vec::with_capacity(workers);
    for (id, sockets) in listener_sets.into_iter().enumerate() {
        let maps = fast_path.as_ref().map(FastPath::channel_maps).transpose()?;
        let server = shard(&port_slices[id], maps.is_some())?;
        worker_handles
            .push(worker::spawn(id, server, sockets, maps).context("starting a UDP worker")?);
    }
    // The fast path relays only UDP clients' channels: the stream shard has none.
    let stream_server = shard(&port_slices[workers], false)?;

    let (stop, stopped) = watch::channel(false);
    let tracker = TaskTracker::new();
    let stream_shard = stream_shard::spawn(stream_server, &tracker, stopped.clone());
    let limits =
        limits::ConnectionLimits::new(config.connections.max, config.connections.max_per_ip);
    let stream_listeners = tcp_listeners
        .into_iter()
        .map(|l| (l, None))
        .chain(tls_listeners.into_iter().map(|l| (l, tls.clone())));
    for (listener, acceptor) in stream_listeners {
        tracker.spawn(stream::accept(
            stream_shard.clone(),
            tracker.clone(),
            listener,
            acceptor,
            limits.clone(),
            config.connections.clone(),
            stopped.clone(),
        ));
    }
    let mut hub = None;
    let mut page = None;
    if config.signal.enabled {
        let signal_hub = http::hub::spawn(
            &config,
            &udp_addrs,
            &tls_addrs,
            Rng::from_os()?,
            &tracker,
            stopped.clone(),
        )?;
        page = Some(http::PageRoute::new(
            signal_hub.clone(),
            tracker.clone(),
            stopped.clone(),
        ));
        hub = Some(signal_hub);
    }
    let proxies = TrustedProxies::new(config.connections.proxy_protocol_from.clone());
    if let (Some(listener), Some(page)) = (signal_listener, &page) {
        // The page server has caps of its own, so it cannot use up the TURN connections'.
        let http_limits =
            limits::ConnectionLimits::new(config.connections.max, config.connections.max_per_ip);
        tracker.spawn(http::serve(
            listener,
            https,
            proxies.clone(),
            page.clone(),
            http_limits,
            tracker.clone(),
            stopped.clone(),
        ));
    }
    if !shared_listeners.is_empty() {
        let routes = shared_port::Routes {
            turn: TurnRoute {
                shard: stream_shard.clone(),
                tracker: tracker.clone(),
                settings: config.connections.clone(),
                stopped: stopped.clone(),
            },
            page,
            certs: certs.clone(),
            challenges: challenges.clone(),
            proxies,
            // Shared ports have caps of their own too.
            limits: limits::ConnectionLimits::new(
                config.connections.max,
                config.connections.max_per_ip,
            ),
            message_timeout: config.connections.message_timeout,
            tracker: tracker.clone(),
            stopped: stopped.clone(),
        };
        for (services, listener) in shared_listeners {
            shared_port::spawn(listener, services, routes.clone())?;
        }
    }
    if let (Some(listener), Some(challenges)) = (acme_http_listener, &challenges) {
        tracker.spawn(http::serve_redirects(
            listener,
            challenges.clone(),
            limits::ConnectionLimits::new(config.connections.max, config.connections.max_per_ip),
            tracker.clone(),
            stopped.clone(),
        ));
    }
    // Every listener is up: the CA can validate.
    if let Some(acme) = acme {
        acme.spawn(&tracker, stopped.clone());
    }
    let observer = Observer {
        workers: worker_handles.iter().map(|w| w.published()).collect(),
        stream: stream_shard.published(),
        hub: hub.clone(),
        xdp_attached: fast_path.is_some(),
        xdp_binding: fast_path.as_ref().and_then(FastPath::binding_counter),
    };
    let metrics_addr = match config.metrics.listen {
        Some(addr) => {
            if !addr.ip().is_loopback() {
                tracing::warn!(%addr, "`metrics.listen` is not a loopback address: anyone who reaches it reads the server's figures; firewall it or use 127.0.0.1");
            }
            let listener = stream::bind_tcp(addr).with_context(|| {
                format!(
                    "cannot listen for metrics on {addr} (config key `metrics.listen`): is another server using the port?"
                )
            })?;
            let bound = listener.local_addr()?;
            tracker.spawn(metrics::serve(listener, observer.clone(), stop.subscribe()));
            Some(bound)
        }
        None => None,
    };
    tracing::info!(
        udp = ?udp_addrs,
        tcp = ?tcp_addrs,
        tls = ?tls_addrs,
        signal = ?signal_addr,
        shared = ?shared_addrs,
        metrics = ?metrics_addr,
        relays = ?relays,
        nat_discovery = ?discovery.map(|d| d.addresses()),
        ports = %config.relay_ports,
        workers,
        "rendez serving STUN/TURN"
    );
    Ok(Handle {
        udp_addrs,
        tcp_addrs,
        tls_addrs,
        signal_addr,
        relays,
        stream_shard,
        workers: worker_handles,
        stop,
        tracker,
        started: config,
        limits: shared_limits,
        certs,
        hub,
        observer,
        metrics_addr,
        discovery,
        nonce_keys,
        nonce_key: std::sync::Mutex::new(nonce_key),
        fast_path,
        reloading: tokio::sync::Mutex::new(()),
    })
}

struct BoundListeners {
    /// One socket per listen address for each worker (then the three more addresses of NAT
    /// behaviour discovery, with `other-address`).
    udp_sets: Vec<Vec<std::net::UdpSocket>>,
    udp_addrs: Vec<SocketAddr>,
    tcp: Vec<tokio::net::TcpListener>,
    /// The four addresses of NAT behaviour discovery, with `other-address`.
    discovery: Option<NatDiscovery>,
}

/// UDP listener sets for the workers, and TCP listeners on exactly the same addresses and
/// ports; with `other` (`other-address`), the UDP listeners of NAT behaviour discovery too.
/// Port 0 is resolved by UDP; if TCP or a discovery address finds that port taken (the two
/// port spaces are separate, and the discovery addresses cross IPs and ports), the whole set
/// is bound again on another port.
/// With `[acme] challenge = "http-01"`, the plain-HTTP port the CA's validator reaches.
fn acme_http_listener(config: &Config) -> anyhow::Result<Option<tokio::net::TcpListener>> {
    let Some(acme) = config
        .acme
        .as_ref()
        .filter(|a| a.challenge == AcmeChallenge::Http01)
    else {
        return Ok(None);
    };
    let listener = stream::bind_tcp(acme.http_listen).with_context(|| {
        format!(
            "cannot listen for HTTP on {} (config key `acme.http-listen`): is another server using the port?",
            acme.http_listen
        )
    })?;
    Ok(Some(listener))
}

fn bind_udp_and_tcp(
    listen: &[SocketAddr],
    other: Option<SocketAddr>,
    relays: &[RelayAddress],
    workers: usize,
) -> anyhow::Result<BoundListeners> {
    const ATTEMPTS_WITH_PORT_ZERO: usize = 16;
    let any_port_zero = listen.iter().chain(&other).any(|a| a.port() == 0);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let (mut sets, udp_addrs) = udp::bind_listener_sets(listen, workers)?;
        let tcp: Result<Vec<_>, _> = udp_addrs
            .iter()
            .map(|&addr| stream::bind_tcp(addr).map_err(|e| (addr, e)))
            .collect();
        let discovery = match (&tcp, other) {
            (Ok(_), Some(other)) => {
                let primary = discovery_primary(&udp_addrs, other, relays)?;
                match udp::bind_discovery_sets(primary, other, workers) {
                    Ok((extra, discovery)) => {
                        for (sockets, extra) in sets.iter_mut().zip(extra) {
                            sockets.extend(extra);
                        }
                        Some(discovery)
                    }
                    Err(error)
                        if any_port_zero
                            && error.kind() == std::io::ErrorKind::AddrInUse
                            && attempt < ATTEMPTS_WITH_PORT_ZERO =>
                    {
                        continue
                    }
                    Err(error) => {
                        return Err(anyhow::Error::new(error).context(format!(
                            "cannot listen on UDP for NAT behaviour discovery between {primary} and {other} (config key `other-address`): is {} an address of this host, and are the ports free?",
                            other.ip()
                        )))
                    }
                }
            }
            _ => None,
        };
        match tcp {
            Ok(tcp) => {
                return Ok(BoundListeners {
                    udp_sets: sets,
                    udp_addrs,
                    tcp,
                    discovery,
                })
            }
            Err((_, error))
                if any_port_zero
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS_WITH_PORT_ZERO => {}
            Err((addr, error)) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot listen on TCP {addr} (config key `listen`): is another server using the port?"
                )))
            }
        }
    }
}

/// A shared port's listener and what it serves.
type SharedListener = (shared_port::Services, tokio::net::TcpListener);

/// The listeners of the addresses in more than one list ([`shared_port`]): the TCP side of
/// a `listen` address is taken from `tcp` (bound with its UDP side), the others are bound
/// here. Returns them with what each serves, and the rest of `tcp`.
fn bind_shared_ports(
    config: &Config,
    shared: &BTreeMap<SocketAddr, shared_port::Services>,
    tcp: Vec<tokio::net::TcpListener>,
) -> anyhow::Result<(Vec<SharedListener>, Vec<tokio::net::TcpListener>)> {
    let mut bound = Vec::new();
    let mut rest = Vec::new();
    for listener in tcp {
        match listener.local_addr().ok().and_then(|a| shared.get(&a)) {
            Some(&services) => bound.push((services, listener)),
            None => rest.push(listener),
        }
    }
    for (&addr, &services) in shared.iter().filter(|(a, _)| !config.listen.contains(a)) {
        match stream::bind_tcp(addr) {
            Ok(listener) => bound.push((services, listener)),
            Err(error) if addr.is_ipv6() && addr.ip().is_unspecified() => {
                tracing::warn!(%addr, %error, "no IPv6 on this host; skipping this shared port");
            }
            Err(error) => {
                return Err(anyhow::Error::new(error).context(format!(
                    "cannot listen on {addr} (config keys `tls-listen` and `signal.listen`): is another server using the port?"
                )))
            }
        }
    }
    Ok((bound, rest))
}

/// RFC 5780's A1:P1 for `other`: the first listen address of its family as bound, and on a
/// wildcard the relay IP of the family (the host's address that rendez already relays on).
fn discovery_primary(
    bound: &[SocketAddr],
    other: SocketAddr,
    relays: &[RelayAddress],
) -> anyhow::Result<SocketAddr> {
    let same_family = |ip: std::net::IpAddr| ip.is_ipv4() == other.is_ipv4();
    let Some(&listen) = bound.iter().find(|a| same_family(a.ip())) else {
        anyhow::bail!(
            "`other-address` {other} has no `listen` address of its IP family to pair with"
        );
    };
    let ip = if listen.ip().is_unspecified() {
        relays.iter().map(|r| r.bind).find(|&ip| same_family(ip))
    } else {
        Some(listen.ip())
    };
    match ip {
        Some(ip) if ip != other.ip() => Ok(SocketAddr::new(ip, listen.port())),
        _ => anyhow::bail!(
            "`other-address` {other} needs a primary IP other than its own: list this host's main address first in `listen` (e.g. \"203.0.113.7:3478\") or set `relay-ip` to it"
        ),
    }
}

/// Splits the relay port range into `shards` contiguous slices.
fn split_ports(
    range: &RangeInclusive<u16>,
    shards: usize,
) -> anyhow::Result<Vec<RangeInclusive<u16>>> {
    let (start, end) = (usize::from(*range.start()), usize::from(*range.end()));
    let size = end - start + 1;
    if size < shards * 2 {
        anyhow::bail!(
            "`relay-ports` has {size} ports; {shards} shards ({} UDP workers and one for TCP/TLS) need at least {}: widen the range or lower `workers`",
            shards - 1,
            shards * 2
        );
    }
    Ok((0..shards)
        .map(|i| {
            let first = start + size * i / shards;
            let last = start + size * (i + 1) / shards - 1;
            first as u16..=last as u16
        })
        .collect())
}

/// The TURN core's view of the configuration, with `alternate-servers` as resolved.
pub(crate) fn core_config(
    config: &Config,
    relays: &[RelayAddress],
    limits: &SharedLimits,
    alternates: Vec<Alternate>,
) -> ServerConfig {
    let mut core = ServerConfig::new(&config.realm, relays[0], config.relay_ports.0.clone());
    core.relays = relays.to_vec();
    core.default_family = match config.default_relay_family {
        RelayFamily::Ipv4 => DefaultFamily::Ipv4,
        RelayFamily::Ipv6 => DefaultFamily::Ipv6,
        RelayFamily::MatchClient => DefaultFamily::MatchClient,
    };
    core.own_addresses = own_addresses(config, relays);
    core.server_relay_ports = config.relay_ports.0.clone();
    core.default_lifetime = config.allocation_lifetime;
    core.max_lifetime = config.max_allocation_lifetime;
    core.users = config.static_users();
    core.secrets = config.auth.secrets.clone();
    core.max_credential_ttl = config.auth.max_credential_ttl;
    core.peers = PeerPolicy::new(config.peers.allow.clone(), config.peers.deny.clone());
    core.quotas = limits.quotas.clone();
    core.challenge_limit = Some(limits.challenges.clone());
    core.binding_limit = Some(limits.bindings.clone());
    core.bandwidth_per_allocation = config.limits.bandwidth_per_allocation;
    core.alternate_servers = alternates;
    core.channel_numbers = match config.channel_numbers {
        ChannelNumbersConfig::Rfc5766 => ChannelNumbers::Rfc5766,
        ChannelNumbersConfig::Rfc8656 => ChannelNumbers::Rfc8656,
    };
    core.port_claims = limits.port_claims.clone();
    core.reservations = limits.reservations.clone();
    core.software.clone_from(&config.software);
    core.tcp_relays = TcpRelayLimits {
        per_allocation: config.limits.tcp_connections_per_allocation as usize,
        total: config.limits.tcp_relays_total as usize,
    };
    core
}

/// Every address of this host: relay and advertised addresses, specific listen addresses
/// and the interfaces' addresses.
fn own_addresses(config: &Config, relays: &[RelayAddress]) -> Vec<std::net::IpAddr> {
    let mut own: Vec<std::net::IpAddr> = relays.iter().flat_map(|r| [r.bind, r.public]).collect();
    own.extend(
        config
            .listen
            .iter()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_unspecified()),
    );
    if let Ok(interfaces) = if_addrs::get_if_addrs() {
        own.extend(interfaces.iter().map(|i| i.ip()));
    }
    own.sort();
    own.dedup();
    own
}

fn local_addrs(listeners: &[tokio::net::TcpListener]) -> std::io::Result<Vec<SocketAddr>> {
    listeners.iter().map(|l| l.local_addr()).collect()
}
