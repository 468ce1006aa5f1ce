//! Binding UDP sockets: listener sets for the workers, and relay sockets.

use std::net::SocketAddr;
use std::os::fd::AsFd;

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};

use super::batch;
use crate::turn::{NatDiscovery, RelayOptions};

/// Binds every `listen` address once per worker with `SO_REUSEPORT`, so the kernel spreads
/// clients across workers by 5-tuple. Port 0 is resolved by the first socket and reused by
/// the rest. Returns the sockets per worker and the bound addresses.
///
/// An unspecified IPv6 address is bound IPv6-only so it can sit beside 0.0.0.0 on the same
/// port; if the host has no IPv6 at all, that listener is skipped with a warning rather than
/// failing startup. Sockets on an unspecified address report each datagram's destination, so
/// the worker answers from the address the client sent to.
pub(crate) fn bind_listener_sets(
    listen: &[SocketAddr],
    workers: usize,
) -> anyhow::Result<(Vec<Vec<std::net::UdpSocket>>, Vec<SocketAddr>)> {
    let mut per_worker: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in listen {
        let first = match bind_listener(addr) {
            Ok(socket) => socket,
            Err(error) if addr.is_ipv6() && addr.ip().is_unspecified() && listen.len() > 1 => {
                tracing::warn!(%addr, %error, "no IPv6 on this host; skipping this listener");
                continue;
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot listen on UDP {addr} (config key `listen`): is another server using the port?")
                })
            }
        };
        let actual = first.local_addr()?;
        bound.push(actual);
        per_worker[0].push(first);
        for sockets in per_worker.iter_mut().skip(1) {
            let socket = bind_listener(actual)
                .with_context(|| format!("cannot add a worker socket on UDP {actual}"))?;
            sockets.push(socket);
        }
    }
    Ok((per_worker, bound))
}

/// The three more listener sets of NAT behaviour discovery (RFC 5780 §6): `other`'s IP on
/// the primary port, `other` itself, and the primary IP on `other`'s port, each bound once
/// per worker like a `listen` address. A port 0 in `other` is resolved here; the error for
/// an address taken is `AddrInUse`, so a caller that chose port 0 may try again.
///
/// Every worker owns a socket on each of the four addresses, so the worker that reads a
/// request answers a CHANGE-REQUEST from its own socket on the address the core chose:
/// nothing crosses threads, and these sockets are listeners like any other (TURN works on
/// them too; the kernel spreads their clients over the workers).
///
/// Beside a wildcard primary listener (0.0.0.0:P1) the socket on the other IP and P1 is
/// bound too, with the same `SO_REUSEPORT`: the kernel delivers to the most specific
/// binding, so that address's datagrams come here and the wildcard keeps the rest.
pub(crate) fn bind_discovery_sets(
    primary: SocketAddr,
    other: SocketAddr,
    workers: usize,
) -> std::io::Result<(Vec<Vec<std::net::UdpSocket>>, NatDiscovery)> {
    let mut per_worker: Vec<Vec<std::net::UdpSocket>> = (0..workers).map(|_| Vec::new()).collect();
    // The other IP on the primary port first: then the kernel cannot give `other` port 0
    // the primary's port.
    bind_per_worker(SocketAddr::new(other.ip(), primary.port()), &mut per_worker)?;
    let other = bind_per_worker(other, &mut per_worker)?;
    bind_per_worker(SocketAddr::new(primary.ip(), other.port()), &mut per_worker)?;
    // A primary port 0 may have come out equal to `other`'s: then the sockets above joined
    // the primary's, and the caller binds everything again.
    let discovery = NatDiscovery::new(primary, other).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{other} does not differ from {primary} in IP and port"),
        )
    })?;
    Ok((per_worker, discovery))
}

/// Binds `addr` once for each worker (port 0 resolved by the first) and returns where.
fn bind_per_worker(
    addr: SocketAddr,
    per_worker: &mut [Vec<std::net::UdpSocket>],
) -> std::io::Result<SocketAddr> {
    let mut actual = addr;
    for sockets in per_worker.iter_mut() {
        let socket = bind_listener(actual)?;
        actual = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(actual)
}

/// One worker's listener socket on `addr`: shared by port, deep buffers, and on a wildcard
/// address told to report where each datagram was sent.
fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = bind_udp(addr, true)?;
    enlarge_buffers(&socket);
    if addr.ip().is_unspecified() {
        batch::report_destinations(&socket)?;
    }
    Ok(socket)
}

/// A nonblocking UDP socket on `addr` (IPv6-only for IPv6 addresses).
pub(crate) fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    #[cfg(unix)]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A relay socket on `relay`, opened as the core asks.
pub(crate) fn bind_relay_socket(
    relay: SocketAddr,
    options: RelayOptions,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = bind_udp(relay, false)?;
    if options.dont_fragment {
        set_dont_fragment(&socket, relay.is_ipv6(), true)?;
    }
    Ok(socket)
}

/// Sets or clears "don't fragment" on a UDP socket of family `v6` (the caller knows it, so
/// no system call asks): with it every datagram leaves with the DF bit (IPv4) and none is
/// fragmented by this host (IPv4 and IPv6); one larger than the path MTU fails to send
/// (`EMSGSIZE`) and is dropped. Without it, the kernel's default
/// (`IP_PMTUDISC_WANT`: DF on datagrams that fit, local fragmentation of larger ones).
#[cfg(target_os = "linux")]
pub(crate) fn set_dont_fragment(socket: &impl AsFd, v6: bool, on: bool) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, option, value) = match (v6, on) {
        (false, true) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DO,
        ),
        (false, false) => (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_WANT,
        ),
        (true, on) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_DONTFRAG,
            libc::c_int::from(on),
        ),
    };
    // SAFETY: setsockopt reads an int of the size given from a live local.
    let result = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            level,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere the option is not wired up: a relay that must not fragment cannot be opened.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_dont_fragment(_socket: &impl AsFd, _v6: bool, _on: bool) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// Receive and send buffer of a listener socket. Every client shares it, so the kernel's
/// default (about 200 KiB) overflows in bursts at a few tens of thousands of packets per
/// second; relay sockets serve one allocation each and keep the default.
const LISTENER_BUFFER_BYTES: usize = 4 << 20;

/// Grows a listener's buffers: past `net.core.rmem_max` when the process may (root or
/// CAP_NET_ADMIN), else as far as that limit allows.
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let size = LISTENER_BUFFER_BYTES as libc::c_int;
        for option in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            // SAFETY: setsockopt reads an int of the size given from a live local.
            unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    option,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    if socket.recv_buffer_size().unwrap_or(0) < LISTENER_BUFFER_BYTES {
        let _ = socket.set_recv_buffer_size(LISTENER_BUFFER_BYTES);
        let _ = socket.set_send_buffer_size(LISTENER_BUFFER_BYTES);
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// Reads an int socket option.
    fn option(socket: &std::net::UdpSocket, level: libc::c_int, name: libc::c_int) -> libc::c_int {
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into a live local int.
        let result = unsafe {
            libc::getsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
        value
    }

    #[test]
    fn a_dont_fragment_relay_socket_never_fragments_and_others_keep_the_default() {
        let mtu = |s: &std::net::UdpSocket| option(s, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let df = bind_relay_socket(
            any,
            RelayOptions {
                dont_fragment: true,
            },
        )
        .unwrap();
        assert_eq!(mtu(&df), libc::IP_PMTUDISC_DO);
        let plain = bind_relay_socket(any, RelayOptions::default()).unwrap();
        assert_ne!(mtu(&plain), libc::IP_PMTUDISC_DO);
        set_dont_fragment(&plain, false, true).unwrap();
        assert_eq!(mtu(&plain), libc::IP_PMTUDISC_DO);
        set_dont_fragment(&plain, false, false).unwrap();
        assert_eq!(mtu(&plain), libc::IP_PMTUDISC_WANT);
    }

    #[test]
    fn ipv6_relay_sockets_use_ipv6_dontfrag() {
        let Ok(df) = bind_relay_socket(
            "[::1]:0".parse().unwrap(),
            RelayOptions {
                dont_fragment: true,
            },
        ) else {
            eprintln!("skipped: no IPv6 loopback");
            return;
        };
        assert_eq!(option(&df, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG), 1);
        let plain = bind_relay_socket("[::1]:0".parse().unwrap(), RelayOptions::default()).unwrap();
        assert_eq!(option(&plain, libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG), 0);
    }
}
