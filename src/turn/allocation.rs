//! One allocation: its relayed address, lifetime, permissions and channel bindings.
//!
//! Expiry is checked where the state is used (`now < expires_at`), so traffic stops exactly
//! on time whatever the timer granularity; the server's sweep only reclaims memory.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::fast_path::AnnouncedFastPath;
use super::meter::Meter;
use super::quota::QuotaClaim;
use super::RelayOptions;
use crate::stun::{AddressFamily, IntegrityAlgorithm, LongTermKey, TransactionId};

/// How long a permission lasts (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lasts (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a channel binding expires, neither its number nor its peer may be bound to
/// anything else for 5 minutes (RFC 8656 §12), so late packets are not misdelivered.
pub const CHANNEL_QUARANTINE: Duration = Duration::from_secs(300);
/// Permissions and channels one allocation may hold: a bound on memory and per-packet
/// lookup cost that no real client reaches (browsers use a handful).
pub const MAX_PERMISSIONS: usize = 128;
pub const MAX_CHANNELS: usize = 128;

pub struct Allocation {
    /// One relayed address, or two for a dual-stack allocation (RFC 8656 §7.2), IPv4 first.
    pub relays: Vec<Relay>,
    /// What the relayed addresses carry: datagrams, or TCP connections (RFC 6062).
    pub protocol: RelayProtocol,
    pub username: String,
    pub key: LongTermKey,
    pub expires_at: Instant,
    pub state: State,
    /// The Allocate transaction, so a retransmitted request gets the same answer.
    pub allocate_transaction: TransactionId,
    pub allocate_response: Vec<u8>,
    permissions: Vec<Permission>,
    channels: Vec<ChannelBinding>,
    /// The wake-up queued for it in the allocation table (only the table changes it).
    pub scheduled: Option<Instant>,
    pub created_at: Instant,
    pub to_peers: Meter,
    pub to_clients: Meter,
    /// What it has announced to the kernel fast path (empty without one).
    pub fast_path: AnnouncedFastPath,
    /// Its place in the server-wide quotas, given back when the allocation is dropped.
    _quota: QuotaClaim,
    /// The quota claim for the port an EVEN-PORT R=1 allocation reserves, held while its
    /// relay is being bound and then passed to the reservation.
    pub reservation_quota: Option<QuotaClaim>,
}

/// The transport of an allocation's relayed addresses (REQUESTED-TRANSPORT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayProtocol {
    /// UDP sockets relaying datagrams (RFC 8656).
    Udp,
    /// TCP listening sockets, with peer connections relayed over data connections
    /// (RFC 6062).
    Tcp,
}

impl RelayProtocol {
    /// A label for logs.
    pub fn name(self) -> &'static str {
        match self {
            RelayProtocol::Udp => "udp",
            RelayProtocol::Tcp => "tcp",
        }
    }
}

/// Who an allocation belongs to.
pub struct Owner {
    pub username: String,
    pub key: LongTermKey,
    pub quota: QuotaClaim,
}

/// One relayed transport address of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relay {
    /// The address the relay socket is bound to.
    pub bind: SocketAddr,
    /// The address advertised in XOR-RELAYED-ADDRESS (differs behind 1:1 NAT).
    pub public: SocketAddr,
    /// Whether the I/O layer has confirmed the socket.
    pub bound: bool,
}

/// An allocation waits for the I/O layer to bind its relay socket before it is answered.
pub enum State {
    Binding(PendingAllocate),
    Active,
}

/// What the success response needs once the relay socket is bound.
#[derive(Clone, Copy)]
pub struct PendingAllocate {
    pub lifetime: Duration,
    pub algorithm: IntegrityAlgorithm,
    pub fingerprint: bool,
    /// Which ports may serve it, also when a bind fails and another port is tried.
    pub ports: PortChoice,
    /// How to open its relay sockets (also on a retry).
    pub relay_options: RelayOptions,
    pub attempts: u8,
    /// The family of an ADDITIONAL-ADDRESS-FAMILY we could not serve: the response carries
    /// ADDRESS-ERROR-CODE 440 for it (RFC 8656 §7.2).
    pub unserved_family: Option<AddressFamily>,
}

/// Which relay ports an Allocate may get (RFC 8656 §7.2, §14.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortChoice {
    Any,
    /// EVEN-PORT without the R bit.
    Even,
    /// EVEN-PORT with the R bit: an even port, with the next one up claimed beside it (and
    /// reserved once the allocation is answered).
    EvenPair,
    /// The port of a RESERVATION-TOKEN: exactly that one, or 508.
    Reserved,
}

struct Permission {
    ip: IpAddr,
    expires_at: Instant,
}

struct ChannelBinding {
    number: u16,
    peer: SocketAddr,
    expires_at: Instant,
}

/// Why a ChannelBind cannot be honoured (all are 400 except capacity, which is 508).
#[derive(Debug, PartialEq, Eq)]
pub enum ChannelBindError {
    NumberBoundToOtherPeer,
    PeerBoundToOtherNumber,
    TooManyChannels,
}

impl Allocation {
    pub fn new(
        relays: Vec<Relay>,
        owner: Owner,
        transaction: TransactionId,
        pending: PendingAllocate,
        now: Instant,
        expires_at: Instant,
    ) -> Self {
        Self {
            relays,
            protocol: RelayProtocol::Udp,
            username: owner.username,
            key: owner.key,
            _quota: owner.quota,
            reservation_quota: None,
            created_at: now,
            to_peers: Meter::new(now),
            to_clients: Meter::new(now),
            fast_path: AnnouncedFastPath::default(),
            expires_at,
            state: State::Binding(pending),
            allocate_transaction: transaction,
            allocate_response: Vec::new(),
            permissions: Vec::new(),
            channels: Vec::new(),
            scheduled: None,
        }
    }

    /// Permissions and channel bindings held now (expired ones until the next sweep).
    pub fn permission_and_channel_counts(&self) -> (usize, usize) {
        (self.permissions.len(), self.channels.len())
    }

    pub fn is_active(&self, now: Instant) -> bool {
        matches!(self.state, State::Active) && now < self.expires_at
    }

    /// The relayed address that talks to peers of `ip`'s family.
    pub fn relay_for(&self, ip: IpAddr) -> Option<&Relay> {
        let v6 = ip.to_canonical().is_ipv6();
        self.relays.iter().find(|r| r.bind.is_ipv6() == v6)
    }

    /// Installs or refreshes permissions for every address, or none if that would exceed
    /// the cap.
    pub fn add_permissions(&mut self, now: Instant, ips: &[IpAddr]) -> bool {
        let new = ips
            .iter()
            .filter(|ip| !self.permissions.iter().any(|p| p.ip == **ip))
            .count();
        let live = self
            .permissions
            .iter()
            .filter(|p| now < p.expires_at)
            .count();
        if live + new > MAX_PERMISSIONS {
            return false;
        }
        for &ip in ips {
            self.refresh_permission(now, ip);
        }
        true
    }

    pub fn has_permission(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions
            .iter()
            .any(|p| p.ip == ip && now < p.expires_at)
    }

    /// Binds or refreshes `number` ↔ `peer` and refreshes the peer's permission
    /// (RFC 8656 §12.2).
    pub fn bind_channel(
        &mut self,
        now: Instant,
        number: u16,
        peer: SocketAddr,
    ) -> Result<(), ChannelBindError> {
        // Bindings in quarantine still block conflicting rebinds.
        let blocks = |c: &ChannelBinding| now < c.expires_at + CHANNEL_QUARANTINE;
        if let Some(existing) = self
            .channels
            .iter()
            .find(|c| c.number == number && blocks(c))
        {
            if existing.peer != peer {
                return Err(ChannelBindError::NumberBoundToOtherPeer);
            }
        } else if self.channels.iter().any(|c| c.peer == peer && blocks(c)) {
            return Err(ChannelBindError::PeerBoundToOtherNumber);
        }
        match self.channels.iter_mut().find(|c| c.number == number) {
            Some(existing) => {
                existing.peer = peer;
                existing.expires_at = now + CHANNEL_LIFETIME;
            }
            None => {
                if self.channels.iter().filter(|c| blocks(c)).count() >= MAX_CHANNELS {
                    return Err(ChannelBindError::TooManyChannels);
                }
                if !self.add_permissions(now, &[peer.ip()]) {
                    return Err(ChannelBindError::TooManyChannels);
                }
                self.channels.push(ChannelBinding {
                    number,
                    peer,
                    expires_at: now + CHANNEL_LIFETIME,
                });
                return Ok(());
            }
        }
        self.refresh_permission(now, peer.ip());
        Ok(())
    }

    /// The peer a live channel is bound to.
    pub fn channel_peer(&self, now: Instant, number: u16) -> Option<SocketAddr> {
        self.channels
            .iter()
            .find(|c| c.number == number && now < c.expires_at)
            .map(|c| c.peer)
    }

    /// The live channel bound to `peer`.
    pub fn channel_for_peer(&self, now: Instant, peer: SocketAddr) -> Option<u16> {
        self.channels
            .iter()
            .find(|c| c.peer == peer && now < c.expires_at)
            .map(|c| c.number)
    }

    /// Every live channel: its number and peer.
    pub fn live_channels(&self, now: Instant) -> impl Iterator<Item = (u16, SocketAddr)> + '_ {
        self.channels
            .iter()
            .filter(move |c| now < c.expires_at)
            .map(|c| (c.number, c.peer))
    }

    /// Drops expired permissions and channels past quarantine; returns the next instant at
    /// which something here changes (for the server's timer).
    pub fn sweep(&mut self, now: Instant) -> Instant {
        self.permissions.retain(|p| now < p.expires_at);
        self.channels
            .retain(|c| now < c.expires_at + CHANNEL_QUARANTINE);
        self.next_deadline()
    }

    pub fn next_deadline(&self) -> Instant {
        let permissions = self.permissions.iter().map(|p| p.expires_at);
        let channels = self
            .channels
            .iter()
            .map(|c| c.expires_at + CHANNEL_QUARANTINE);
        // A channel the fast path relays must be withdrawn the moment it expires, not
        // when its quarantine ends.
        let fast_path = self
            .channels
            .iter()
            .filter(|c| {
                self.fast_path
                    .announced
                    .iter()
                    .any(|entry| entry.channel == c.number)
            })
            .map(|c| c.expires_at)
            .chain(self.fast_path.retry_at);
        permissions
            .chain(channels)
            .chain(fast_path)
            .fold(self.expires_at, Instant::min)
    }

    fn refresh_permission(&mut self, now: Instant, ip: IpAddr) {
        let expires_at = now + PERMISSION_LIFETIME;
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(p) => p.expires_at = expires_at,
            None => self.permissions.push(Permission { ip, expires_at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::quota::Quotas;

    fn allocation(now: Instant) -> Allocation {
        let pending = PendingAllocate {
            lifetime: Duration::from_secs(600),
            algorithm: IntegrityAlgorithm::Sha1,
            fingerprint: false,
            ports: PortChoice::Any,
            relay_options: RelayOptions::default(),
            attempts: 0,
            unserved_family: None,
        };
        let relay = Relay {
            bind: "127.0.0.1:50000".parse().unwrap(),
            public: "203.0.113.1:50000".parse().unwrap(),
            bound: true,
        };
        let owner = Owner {
            username: "u".into(),
            key: LongTermKey::md5([0; 16]),
            quota: Quotas::default()
                .claim("u", "192.0.2.1".parse().unwrap())
                .unwrap(),
        };
        let mut a = Allocation::new(
            vec![relay],
            owner,
            TransactionId::default(),
            pending,
            now,
            now + Duration::from_secs(600),
        );
        a.state = State::Active;
        a
    }

    #[test]
    fn permission_expires_after_300_seconds() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(a.add_permissions(t0, &[ip]));
        assert!(a.has_permission(t0 + Duration::from_secs(299), ip));
        assert!(!a.has_permission(t0 + Duration::from_secs(300), ip));
    }

    #[test]
    fn channel_rebinding_rules() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let p1: SocketAddr = "198.51.100.1:1000".parse().unwrap();
        let p2: SocketAddr = "198.51.100.2:1000".parse().unwrap();
        assert_eq!(a.bind_channel(t0, 0x4000, p1), Ok(()));
        assert_eq!(a.bind_channel(t0, 0x4000, p1), Ok(()), "refresh is allowed");
        assert_eq!(
            a.bind_channel(t0, 0x4000, p2),
            Err(ChannelBindError::NumberBoundToOtherPeer)
        );
        assert_eq!(
            a.bind_channel(t0, 0x4001, p1),
            Err(ChannelBindError::PeerBoundToOtherNumber)
        );
        // Expired but quarantined: still blocks, does not forward.
        let t1 = t0 + CHANNEL_LIFETIME;
        assert_eq!(a.channel_peer(t1, 0x4000), None);
        assert_eq!(
            a.bind_channel(t1, 0x4000, p2),
            Err(ChannelBindError::NumberBoundToOtherPeer)
        );
        // After quarantine the number is free again.
        let t2 = t1 + CHANNEL_QUARANTINE;
        assert_eq!(a.bind_channel(t2, 0x4000, p2), Ok(()));
        assert_eq!(a.channel_peer(t2, 0x4000), Some(p2));
    }

    #[test]
    fn permission_cap_is_all_or_nothing() {
        let t0 = Instant::now();
        let mut a = allocation(t0);
        let ips: Vec<IpAddr> = (0..MAX_PERMISSIONS as u32)
            .map(|i| IpAddr::from(std::net::Ipv4Addr::from(0x0808_0000 + i)))
            .collect();
        assert!(a.add_permissions(t0, &ips));
        assert!(!a.add_permissions(t0, &["9.9.9.9".parse().unwrap()]));
        assert!(
            a.add_permissions(t0, &ips[..3]),
            "refreshing existing ones is fine"
        );
        assert_eq!(
            a.sweep(t0 + PERMISSION_LIFETIME),
            t0 + Duration::from_secs(600)
        );
    }
}
