//! Relay ports: which are taken, server-wide, and where each shard looks for a free one.
//!
//! Each shard searches its own slice of `relay-ports` (so shards do not compete for ports),
//! picking at random so that relayed addresses are not predictable from one another. The
//! record of which ports are taken is one bitmap per relay address shared by every shard
//! ([`PortClaims`]), 8 KiB for all 65 536 ports. It must be shared because a port can change
//! hands: a port held by an EVEN-PORT reservation on one shard is bound by whichever shard
//! the redeeming Allocate reaches (see [`super::reservation`]), and released there when that
//! allocation ends. Claims are single atomic bit operations, taken only when an allocation
//! is created or ends, so no shard ever waits for another and none holds a lock.

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The ports taken on this server's relay addresses, one bitmap per IP family (there is at
/// most one relay address per family). Cheap to clone (an `Arc`); give every shard of one
/// server the same one, as with [`super::Quotas`].
#[derive(Clone)]
pub struct PortClaims {
    families: Arc<[PortMap; 2]>,
}

impl Default for PortClaims {
    fn default() -> Self {
        Self {
            families: Arc::new([PortMap::new(), PortMap::new()]),
        }
    }
}

impl PortClaims {
    fn family(&self, v6: bool) -> PortMap {
        PortMap {
            words: self.families[usize::from(v6)].words.clone(),
        }
    }
}

/// One bit per port of one relay address.
struct PortMap {
    words: Arc<[AtomicU64]>,
}

impl PortMap {
    fn new() -> Self {
        Self {
            words: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn word(&self, port: u16) -> (&AtomicU64, u64) {
        (&self.words[usize::from(port >> 6)], 1 << (port & 63))
    }

    /// Takes `port` if it is free.
    fn claim(&self, port: u16) -> bool {
        let (word, bit) = self.word(port);
        word.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Takes the even `port` and the one after it together, or neither. An even port and
    /// its successor share a word, so one compare-and-swap does it.
    fn claim_pair(&self, port: u16) -> bool {
        debug_assert!(port % 2 == 0, "pairs start on an even port");
        let (word, bit) = self.word(port);
        let both = bit | bit << 1;
        word.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
            (w & both == 0).then_some(w | both)
        })
        .is_ok()
    }

    fn release(&self, port: u16) {
        let (word, bit) = self.word(port);
        word.fetch_and(!bit, Ordering::AcqRel);
    }

    fn is_claimed(&self, port: u16) -> bool {
        let (word, bit) = self.word(port);
        word.load(Ordering::Acquire) & bit != 0
    }
}

/// One shard's view of the ports of one relay address: it searches `slice`, but claims and
/// releases in the server-wide map, so it may also release a port outside its slice that
/// came to it through a reservation.
pub struct PortPool {
    slice: RangeInclusive<u16>,
    map: PortMap,
}

impl PortPool {
    /// A pool searching `slice` of the ports of the relay address of family `v6` in
    /// `claims`.
    pub fn new(slice: RangeInclusive<u16>, claims: &PortClaims, v6: bool) -> Self {
        Self {
            slice,
            map: claims.family(v6),
        }
    }

    /// Takes a free port, starting the search at a position drawn from `random`; with
    /// `even`, only even ports (EVEN-PORT, RFC 8656 §14.6).
    pub fn acquire(&mut self, random: u64, even: bool) -> Option<u16> {
        self.search(random)
            .filter(|port| !even || port % 2 == 0)
            .find(|&port| self.map.claim(port))
    }

    /// Takes an even port and the next one up together (EVEN-PORT with the R bit, RFC 8656
    /// §14.6): both in this shard's slice. Returns the even one.
    pub fn acquire_pair(&mut self, random: u64) -> Option<u16> {
        let last = *self.slice.end();
        self.search(random)
            .filter(|&port| port % 2 == 0 && port < last)
            .find(|&port| self.map.claim_pair(port))
    }

    /// Gives `port` back (any port of the relay address, not only this shard's slice).
    pub fn release(&mut self, port: u16) {
        self.map.release(port);
    }

    /// Ports of this shard's slice taken now (by any shard).
    pub fn in_use(&self) -> usize {
        self.slice
            .clone()
            .filter(|&port| self.map.is_claimed(port))
            .count()
    }

    /// Ports in this shard's slice, taken or not.
    pub fn capacity(&self) -> usize {
        self.slice.len()
    }

    /// Every port of the slice once, from a position drawn from `random`.
    fn search(&self, random: u64) -> impl Iterator<Item = u16> {
        let start = u32::from(*self.slice.start());
        let size = u32::from(*self.slice.end()) - start + 1;
        let first = (random % u64::from(size)) as u32;
        (0..size).map(move |i| (start + (first + i) % size) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(slice: RangeInclusive<u16>) -> PortPool {
        PortPool::new(slice, &PortClaims::default(), false)
    }

    #[test]
    fn hands_out_every_port_once_then_none() {
        let mut pool = pool(50000..=50009);
        let mut rng = crate::random::Rng::from_seed(1);
        let mut got: Vec<u16> = (0..10)
            .map(|_| pool.acquire(rng.next_u64(), false).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, (50000..=50009).collect::<Vec<_>>());
        assert_eq!(pool.acquire(rng.next_u64(), false), None);
        pool.release(50004);
        assert_eq!(pool.acquire(rng.next_u64(), false), Some(50004));
        assert_eq!(pool.in_use(), 10);
    }

    #[test]
    fn even_port_requests_get_even_ports() {
        let mut pool = pool(60001..=60005);
        assert!(pool.acquire(3, true).unwrap() % 2 == 0);
        assert!(pool.acquire(3, true).unwrap() % 2 == 0);
        assert_eq!(pool.acquire(3, true), None);
        assert!(pool.acquire(3, false).is_some());
    }

    #[test]
    fn pairs_are_an_even_port_and_the_next_one_both_free() {
        let mut pool = pool(60001..=60006);
        assert!(pool.map.claim(60003));
        // 60002 lacks its partner, 60006 has none in the slice: only 60004/60005 is a pair.
        assert_eq!(pool.acquire_pair(7), Some(60004));
        assert!(pool.map.is_claimed(60005));
        assert_eq!(pool.acquire_pair(7), None);
        assert_eq!(pool.in_use(), 3);
    }

    #[test]
    fn shards_share_the_claims_but_search_their_own_slices() {
        let claims = PortClaims::default();
        let mut one = PortPool::new(50000..=50001, &claims, false);
        let mut two = PortPool::new(50002..=50003, &claims, false);
        let even = one.acquire_pair(0).unwrap();
        assert_eq!(even, 50000);
        assert_eq!(one.acquire(0, false), None, "both of its ports are taken");
        // Shard two releases 50001 (a port it was handed through a reservation): shard one
        // can take it again.
        two.release(50001);
        assert_eq!(one.acquire(0, false), Some(50001));
        assert_eq!((one.in_use(), two.in_use()), (2, 0));
        // Families are separate maps.
        let mut v6 = PortPool::new(50000..=50001, &claims, true);
        assert_eq!(v6.acquire_pair(0), Some(50000));
    }

    #[test]
    fn whole_port_space_fits() {
        let mut pool = pool(0..=65535);
        assert!(pool.acquire(u64::MAX, false).is_some());
        assert!(pool.acquire_pair(u64::MAX).is_some());
        pool.release(65535);
        pool.release(1);
    }
}
