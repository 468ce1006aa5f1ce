//! One UDP worker's share of the fast path's kernel maps: the entries of its own shard's
//! channels, written and deleted as its core announces them, and the program's counters
//! read back.
//!
//! The maps are kernel objects shared by every worker (the program looks up whatever
//! arrives on the interface); each worker opens its own handle to them and touches only
//! the keys of its own allocations, so no worker waits for another.

use std::collections::HashMap as StdHashMap;
use std::net::IpAddr;

use aya::maps::{HashMap, Map, MapData, MapError};

use super::XdpFigures;
use crate::turn::{FastPathEntry, Traffic};

/// `struct client_key` of bpf/relay.bpf.c: ChannelData from a client to a listen address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ClientKey {
    client_ip: [u8; 16],
    server_ip: [u8; 16],
    client_port: u16,
    server_port: u16,
    channel: u16,
    family: u16,
}

/// `struct peer_key`: a datagram from a peer to a relay address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PeerKey {
    relay_ip: [u8; 16],
    peer_ip: [u8; 16],
    relay_port: u16,
    peer_port: u16,
    family: u32,
}

/// `struct route`: where the rewritten datagram goes, and the program's counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Route {
    src_ip: [u8; 16],
    dst_ip: [u8; 16],
    src_port: u16,
    dst_port: u16,
    channel: u16,
    family: u16,
    packets: u64,
    bytes: u64,
}

// SAFETY: plain `repr(C)` integers and byte arrays without padding (checked by the size
// test below), valid for any bit pattern.
unsafe impl aya::Pod for ClientKey {}
// SAFETY: as above.
unsafe impl aya::Pod for PeerKey {}
// SAFETY: as above.
unsafe impl aya::Pod for Route {}

/// The two map entries of one channel, in the program's layout.
#[derive(Debug, PartialEq, Eq)]
struct Entries {
    client: ClientKey,
    to_peer: Route,
    peer: PeerKey,
    to_client: Route,
}

/// What was last read of one installed channel's counters.
#[derive(Clone, Copy, Default)]
struct Reported {
    to_peer: Traffic,
    to_client: Traffic,
}

/// One worker's handle on the fast path's maps.
pub(crate) struct ChannelMaps {
    client: HashMap<MapData, ClientKey, Route>,
    peer: HashMap<MapData, PeerKey, Route>,
    installed: StdHashMap<FastPathEntry, Reported>,
    map_full: u64,
}

impl ChannelMaps {
    /// Opens the maps with these kernel ids (a handle of this worker's own).
    pub(super) fn open(client_map: u32, peer_map: u32) -> Result<Self, MapError> {
        let open = |id| MapData::from_id(id).and_then(Map::from_map_data);
        Ok(Self {
            client: HashMap::try_from(open(client_map)?)?,
            peer: HashMap::try_from(open(peer_map)?)?,
            installed: StdHashMap::new(),
            map_full: 0,
        })
    }

    /// Lets the program relay `entry`. A channel whose client and peer are of different
    /// IP families (the program does not translate between them) stays on the sockets
    /// path, and so does one that finds a map full.
    pub fn insert(&mut self, entry: FastPathEntry) {
        let Some(entries) = entries(&entry) else {
            tracing::debug!(
                ?entry,
                "client and peer of different families: sockets path"
            );
            return;
        };
        if let Err(error) = self.client.insert(entries.client, entries.to_peer, 0) {
            self.refused(&entry, &error);
            return;
        }
        if let Err(error) = self.peer.insert(entries.peer, entries.to_client, 0) {
            let _ = self.client.remove(&entries.client);
            self.refused(&entry, &error);
            return;
        }
        self.installed.insert(entry, Reported::default());
    }

    /// Stops the program relaying `entry`; returns what it relayed since last reported.
    pub fn remove(&mut self, entry: FastPathEntry) -> (Traffic, Traffic) {
        if !self.installed.contains_key(&entry) {
            return (Traffic::default(), Traffic::default());
        }
        let news = self.read(&entry);
        if let Some(entries) = entries(&entry) {
            for removed in [
                self.client.remove(&entries.client),
                self.peer.remove(&entries.peer),
            ] {
                if let Err(error) = removed {
                    tracing::warn!(?entry, %error, "could not delete a fast path entry");
                }
            }
        }
        self.installed.remove(&entry);
        news
    }

    /// What the program relayed on every installed channel since last reported, for the
    /// channels that carried anything: (entry, client → peer, peer → client).
    pub fn traffic(&mut self) -> Vec<(FastPathEntry, Traffic, Traffic)> {
        let entries: Vec<FastPathEntry> = self.installed.keys().copied().collect();
        entries
            .into_iter()
            .filter_map(|entry| {
                let (to_peer, to_client) = self.read(&entry);
                (to_peer.packets + to_client.packets > 0).then_some((entry, to_peer, to_client))
            })
            .collect()
    }

    /// Takes every entry out (the worker is stopping).
    pub fn clear(&mut self) -> Vec<(FastPathEntry, Traffic, Traffic)> {
        let entries: Vec<FastPathEntry> = self.installed.keys().copied().collect();
        entries
            .into_iter()
            .map(|entry| {
                let (to_peer, to_client) = self.remove(entry);
                (entry, to_peer, to_client)
            })
            .collect()
    }

    pub fn figures(&self) -> XdpFigures {
        XdpFigures {
            channels: self.installed.len() as u64,
            map_full: self.map_full,
        }
    }

    /// The counters of `entry` now, less what was reported before.
    fn read(&mut self, entry: &FastPathEntry) -> (Traffic, Traffic) {
        let Some(entries) = entries(entry) else {
            return Default::default();
        };
        let counted = |route: Result<Route, MapError>| {
            route.map_or(Traffic::default(), |r| Traffic {
                packets: r.packets,
                bytes: r.bytes,
            })
        };
        let to_peer = counted(self.client.get(&entries.client, 0));
        let to_client = counted(self.peer.get(&entries.peer, 0));
        let Some(reported) = self.installed.get_mut(entry) else {
            return Default::default();
        };
        let since = |now: Traffic, before: Traffic| Traffic {
            packets: now.packets.saturating_sub(before.packets),
            bytes: now.bytes.saturating_sub(before.bytes),
        };
        let news = (
            since(to_peer, reported.to_peer),
            since(to_client, reported.to_client),
        );
        *reported = Reported { to_peer, to_client };
        news
    }

    fn refused(&mut self, entry: &FastPathEntry, error: &MapError) {
        let full = matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::E2BIG));
        if full {
            self.map_full += 1;
            tracing::debug!(
                ?entry,
                "fast path maps full (`[xdp] max-channels`): sockets path"
            );
        } else {
            tracing::warn!(?entry, %error, "could not add a fast path entry: sockets path");
        }
    }
}

/// The map entries for `entry`, or `None` when its client and peer differ in family.
fn entries(entry: &FastPathEntry) -> Option<Entries> {
    let client = entry.client.client;
    let server = entry.client.server;
    let peer = entry.peer.0;
    let relay = entry.relay.0;
    let family = family_of(client.ip());
    if family != family_of(server.ip())
        || family != family_of(peer.ip())
        || family != family_of(relay.ip())
    {
        return None;
    }
    let channel = entry.channel.to_be();
    Some(Entries {
        client: ClientKey {
            client_ip: ip_bytes(client.ip()),
            server_ip: ip_bytes(server.ip()),
            client_port: client.port().to_be(),
            server_port: server.port().to_be(),
            channel,
            family,
        },
        to_peer: Route {
            src_ip: ip_bytes(relay.ip()),
            dst_ip: ip_bytes(peer.ip()),
            src_port: relay.port().to_be(),
            dst_port: peer.port().to_be(),
            channel: 0,
            family,
            ..Route::default()
        },
        peer: PeerKey {
            relay_ip: ip_bytes(relay.ip()),
            peer_ip: ip_bytes(peer.ip()),
            relay_port: relay.port().to_be(),
            peer_port: peer.port().to_be(),
            family: u32::from(family),
        },
        to_client: Route {
            src_ip: ip_bytes(server.ip()),
            dst_ip: ip_bytes(client.ip()),
            src_port: server.port().to_be(),
            dst_port: client.port().to_be(),
            channel,
            family,
            ..Route::default()
        },
    })
}

/// 4 or 6, as the packet carrying the address would be (IPv4-mapped IPv6 is IPv4).
fn family_of(ip: IpAddr) -> u16 {
    match ip.to_canonical() {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    }
}

/// The program's 16-byte form: IPv6, or IPv4 in the first 4 bytes.
fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    let mut bytes = [0; 16];
    match ip.to_canonical() {
        IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::{FiveTuple, PeerAddr, RelayAddr, Transport};

    fn entry(client: &str, server: &str, peer: &str, relay: &str) -> FastPathEntry {
        FastPathEntry {
            client: FiveTuple {
                transport: Transport::Udp,
                client: client.parse().unwrap(),
                server: server.parse().unwrap(),
            },
            channel: 0x4001,
            peer: PeerAddr(peer.parse().unwrap()),
            relay: RelayAddr(relay.parse().unwrap()),
        }
    }

    #[test]
    fn layouts_match_the_program() {
        // bpf/relay.bpf.c: 40-byte keys, a 56-byte route, no padding.
        assert_eq!(std::mem::size_of::<ClientKey>(), 40);
        assert_eq!(std::mem::size_of::<PeerKey>(), 40);
        assert_eq!(std::mem::size_of::<Route>(), 56);
    }

    #[test]
    fn entries_are_in_network_order_both_ways() {
        let e = entries(&entry(
            "192.0.2.1:5000",
            "192.0.2.10:3478",
            "198.51.100.7:4000",
            "192.0.2.10:50000",
        ))
        .unwrap();
        assert_eq!(&e.client.client_ip[..4], &[192, 0, 2, 1]);
        assert_eq!(e.client.client_port.to_ne_bytes(), 5000u16.to_be_bytes());
        assert_eq!(e.client.channel.to_ne_bytes(), [0x40, 0x01]);
        assert_eq!(e.to_peer.dst_port.to_ne_bytes(), 4000u16.to_be_bytes());
        assert_eq!(&e.to_peer.src_ip[..4], &[192, 0, 2, 10]);
        assert_eq!(e.peer.relay_port.to_ne_bytes(), 50000u16.to_be_bytes());
        assert_eq!(e.to_client.dst_port.to_ne_bytes(), 5000u16.to_be_bytes());
        assert_eq!(e.to_client.src_port.to_ne_bytes(), 3478u16.to_be_bytes());
        assert_eq!(e.to_client.channel, e.client.channel);
        assert_eq!((e.client.family, e.peer.family), (4, 4));
    }

    #[test]
    fn mapped_addresses_count_as_ipv4_and_mixed_families_stay_on_the_sockets_path() {
        let mapped = entries(&entry(
            "[::ffff:192.0.2.1]:5000",
            "[::ffff:192.0.2.10]:3478",
            "198.51.100.7:4000",
            "192.0.2.10:50000",
        ))
        .unwrap();
        assert_eq!(&mapped.client.client_ip[..4], &[192, 0, 2, 1]);
        assert_eq!(mapped.client.family, 4);
        assert_eq!(
            entries(&entry(
                "192.0.2.1:5000",
                "192.0.2.10:3478",
                "[2001:db8::7]:4000",
                "[2001:db8::10]:50000",
            )),
            None
        );
    }
}
