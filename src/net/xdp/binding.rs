//! STUN Binding requests answered by the program (`[xdp] binding`, bpf/stun_binding.h):
//! which addresses it answers at, the SOFTWARE its responses carry, and how many it sent.
//!
//! The program answers only at the addresses in `binding_listeners`: rendez's UDP `listen`
//! addresses, with a wildcard one stood for by every address of its family the host has
//! at start (an address added later takes the sockets path, which still answers). Relay
//! ports are never there: a peer's datagram to one is data for a client. The map stays
//! empty, and the sockets path answers every Binding, with `[xdp] binding = false` and with
//! `other-address` (NAT behaviour discovery adds attributes the program does not write).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use aya::Ebpf;

pub(super) const LISTEN_MAP: &str = "binding_listeners";
const REPLY_MAP: &str = "binding_reply";
const COUNT_MAP: &str = "binding_responses";
/// SOFTWARE's longest value (763 bytes, RFC 8489 §14.14), padded: `MAX_SOFTWARE`.
const MAX_SOFTWARE: usize = 764;

/// `struct listen_key` of bpf/stun_binding.h.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ListenKey {
    ip: [u8; 16],
    port: u16,
    family: u16,
}

/// `struct binding_reply`: what a response carries after XOR-MAPPED-ADDRESS.
#[repr(C)]
#[derive(Clone, Copy)]
struct BindingReply {
    software_len: u32,
    software: [u8; MAX_SOFTWARE],
}

// SAFETY: plain `repr(C)` integers and byte arrays without padding (checked by the size
// test below), valid for any bit pattern.
unsafe impl aya::Pod for ListenKey {}
// SAFETY: as above.
unsafe impl aya::Pod for BindingReply {}

/// Where the program answers Binding requests, as decided before loading it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct BindingListeners(Vec<SocketAddr>);

impl BindingListeners {
    /// The addresses to answer at: none when off or with NAT behaviour discovery, else
    /// every UDP listen address (wildcards as the host's addresses of that family).
    pub fn new(enabled: bool, nat_discovery: bool, listen: &[SocketAddr]) -> Self {
        if !enabled || nat_discovery {
            return Self::default();
        }
        let host: Vec<IpAddr> = if_addrs::get_if_addrs()
            .map(|interfaces| interfaces.iter().map(|i| i.ip()).collect())
            .unwrap_or_default();
        Self(expand(listen, &host))
    }

    /// How many entries the map needs (at least one: a map cannot have none).
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.0.len().max(1)).unwrap_or(u32::MAX)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `listen` with each wildcard replaced by `host`'s addresses of its family (UDP listeners
/// are IPv6-only, so `[::]` stands for IPv6 addresses alone), without duplicates.
fn expand(listen: &[SocketAddr], host: &[IpAddr]) -> Vec<SocketAddr> {
    let mut addresses: Vec<SocketAddr> = listen
        .iter()
        .flat_map(|&addr| {
            if addr.ip().is_unspecified() {
                host.iter()
                    .filter(|ip| ip.is_ipv4() == addr.is_ipv4())
                    .map(|&ip| SocketAddr::new(ip, addr.port()))
                    .collect()
            } else {
                vec![addr]
            }
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses
}

/// Fills the program's Binding maps after loading: the listen addresses and SOFTWARE.
pub(super) fn fill(
    ebpf: &mut Ebpf,
    listeners: &BindingListeners,
    software: Option<&str>,
) -> anyhow::Result<()> {
    let mut map: HashMap<_, ListenKey, u32> = HashMap::try_from(
        ebpf.map_mut(LISTEN_MAP)
            .ok_or_else(|| anyhow::anyhow!("the embedded object has no map {LISTEN_MAP}"))?,
    )?;
    for &addr in &listeners.0 {
        map.insert(listen_key(addr), 1, 0)?;
    }
    let mut reply: Array<_, BindingReply> = Array::try_from(
        ebpf.map_mut(REPLY_MAP)
            .ok_or_else(|| anyhow::anyhow!("the embedded object has no map {REPLY_MAP}"))?,
    )?;
    reply.set(0, binding_reply(software), 0)?;
    Ok(())
}

/// The kernel ids of the maps user space touches after start.
#[derive(Clone, Copy, Debug)]
pub(super) struct BindingMapIds {
    reply: u32,
    count: u32,
}

impl BindingMapIds {
    pub fn of(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let id = |name: &str| -> anyhow::Result<u32> {
            let map = ebpf
                .map(name)
                .ok_or_else(|| anyhow::anyhow!("the embedded object has no map {name}"))?;
            let data = match map {
                Map::Array(data) | Map::PerCpuArray(data) => data,
                _ => anyhow::bail!("the embedded object's {name} is not an array"),
            };
            Ok(data.info()?.id())
        };
        Ok(Self {
            reply: id(REPLY_MAP)?,
            count: id(COUNT_MAP)?,
        })
    }

    /// Puts a reloaded `software` into the program's responses.
    pub fn set_software(&self, software: Option<&str>) -> Result<(), MapError> {
        let mut reply: Array<MapData, BindingReply> =
            Array::try_from(MapData::from_id(self.reply).and_then(Map::from_map_data)?)?;
        reply.set(0, binding_reply(software), 0)
    }

    pub fn counter(&self) -> Result<BindingCounter, MapError> {
        let map = MapData::from_id(self.count).and_then(Map::from_map_data)?;
        Ok(BindingCounter(Arc::new(PerCpuArray::try_from(map)?)))
    }
}

/// The program's count of Binding responses, read for `/metrics`; cheap to clone.
#[derive(Clone)]
pub(crate) struct BindingCounter(Arc<PerCpuArray<MapData, u64>>);

impl BindingCounter {
    /// Responses sent so far, all CPUs together (0 if the map cannot be read).
    pub fn responses(&self) -> u64 {
        self.0
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }
}

fn listen_key(addr: SocketAddr) -> ListenKey {
    let mut ip = [0; 16];
    let family = match addr.ip().to_canonical() {
        IpAddr::V4(v4) => {
            ip[..4].copy_from_slice(&v4.octets());
            4
        }
        IpAddr::V6(v6) => {
            ip = v6.octets();
            6
        }
    };
    ListenKey {
        ip,
        port: addr.port().to_be(),
        family,
    }
}

/// SOFTWARE as the program writes it (config validation keeps it within the 763 bytes
/// the program's buffer holds).
fn binding_reply(software: Option<&str>) -> BindingReply {
    let mut reply = BindingReply {
        software_len: 0,
        software: [0; MAX_SOFTWARE],
    };
    if let Some(software) = software {
        let bytes = &software.as_bytes()[..software.len().min(MAX_SOFTWARE - 1)];
        reply.software[..bytes.len()].copy_from_slice(bytes);
        reply.software_len = bytes.len() as u32;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn layouts_match_the_program() {
        assert_eq!(std::mem::size_of::<ListenKey>(), 20);
        assert_eq!(std::mem::size_of::<BindingReply>(), 4 + MAX_SOFTWARE);
    }

    #[test]
    fn wildcards_stand_for_the_hosts_addresses_of_their_family() {
        let host: Vec<IpAddr> = ["127.0.0.1", "192.0.2.7", "::1", "2001:db8::7"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let listen = [addr("0.0.0.0:3478"), addr("[2001:db8::9]:3478")];
        assert_eq!(
            expand(&listen, &host),
            [
                addr("127.0.0.1:3478"),
                addr("192.0.2.7:3478"),
                addr("[2001:db8::9]:3478"),
            ]
        );
        let v6 = expand(&[addr("[::]:3479"), addr("[::1]:3479")], &host);
        assert_eq!(v6, [addr("[::1]:3479"), addr("[2001:db8::7]:3479")]);
    }

    #[test]
    fn off_or_with_nat_discovery_nothing_is_answered_in_the_kernel() {
        let listen = [addr("192.0.2.7:3478")];
        assert!(BindingListeners::new(false, false, &listen).is_empty());
        assert!(BindingListeners::new(true, true, &listen).is_empty());
        let on = BindingListeners::new(true, false, &listen);
        assert_eq!(on.0, listen);
        assert_eq!(BindingListeners::default().capacity(), 1);
    }

    #[test]
    fn keys_and_software_are_in_the_programs_form() {
        let key = listen_key(addr("192.0.2.7:3478"));
        assert_eq!(&key.ip[..5], &[192, 0, 2, 7, 0]);
        assert_eq!(key.port.to_ne_bytes(), 3478u16.to_be_bytes());
        assert_eq!(key.family, 4);
        assert_eq!(listen_key(addr("[::ffff:192.0.2.7]:1")).family, 4);
        let reply = binding_reply(Some("rendez 1.0"));
        assert_eq!(reply.software_len, 10);
        assert_eq!(&reply.software[..11], b"rendez 1.0\0");
        assert_eq!(binding_reply(None).software_len, 0);
    }
}
