//! UDP listeners: one task per listening socket.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::{drain_outputs, Shared};
use crate::turn::{FiveTuple, Transport};

/// The largest UDP payload; a STUN or ChannelData message never exceeds it.
const MAX_DATAGRAM: usize = 65_536;

/// Binds every `listen` address. An unspecified IPv6 address is bound IPv6-only so it can
/// sit beside 0.0.0.0 on the same port; if the host has no IPv6 at all, that listener is
/// skipped with a warning rather than failing startup.
pub(super) fn bind_listeners(
    listen: &[SocketAddr],
) -> anyhow::Result<(Vec<Arc<UdpSocket>>, Vec<SocketAddr>)> {
    let mut sockets = Vec::new();
    let mut addrs = Vec::new();
    for &addr in listen {
        match bind_udp(addr) {
            Ok(socket) => {
                addrs.push(socket.local_addr()?);
                sockets.push(Arc::new(socket));
            }
            Err(error) if addr.is_ipv6() && addr.ip().is_unspecified() && listen.len() > 1 => {
                tracing::warn!(%addr, %error, "no IPv6 on this host; skipping this listener");
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("cannot listen on UDP {addr} (config key `listen`): is another server using the port?")
                })
            }
        }
    }
    Ok((sockets, addrs))
}

pub(super) fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receives client datagrams until stopped.
pub(super) async fn serve(
    shared: Arc<Shared>,
    socket: Arc<UdpSocket>,
    mut stopped: watch::Receiver<bool>,
) {
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buffer) => r,
            _ = stopped.changed() => return,
        };
        let (len, client) = match received {
            Ok(r) => r,
            Err(error) => {
                // ICMP errors surface here on some systems; they concern one peer only.
                tracing::debug!(%error, "UDP receive error");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let from = FiveTuple {
            transport: Transport::Udp,
            client,
            server: local,
        };
        let packet = &buffer[..len];
        let (forward, transmits) = {
            let mut state = shared.lock();
            let forward = state
                .server
                .handle_client_packet(Instant::now(), from, packet)
                .and_then(|to_peer| {
                    let relay = state.relays.get(&to_peer.relay)?.socket.clone();
                    Some((relay, to_peer.peer, to_peer.payload))
                });
            (forward, drain_outputs(&shared, &mut state))
        };
        if let Some((relay, peer, payload)) = forward {
            if let Err(error) = relay.send_to(payload, peer).await {
                tracing::debug!(%peer, %error, "send to peer failed");
            }
        }
        shared.transmit(transmits).await;
    }
}
