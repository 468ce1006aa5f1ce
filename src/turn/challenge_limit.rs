//! `unauthorized-per-ip`: how many 401 and 438 replies one source gets per second.
//!
//! An unauthenticated Allocate of 20 bytes earns a challenge of about 100, so without a
//! limit a spoofed flood makes the server a reflector that multiplies traffic toward a
//! victim. The limit holds across every shard (the kernel spreads one source's ports over
//! the UDP workers), in fixed memory (a flood from many addresses cannot grow it): sources
//! are counted in a count-min sketch, a fixed table of one-second counters where each source
//! has two slots chosen by keyed hashes, and its count is the smaller of the two. A flood from
//! many addresses must fill both of an innocent source's slots to silence it, and the secret
//! seed keeps an attacker from choosing which slots those are.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::quota::QuotaKey;

/// Slots in the table: 64 KiB of counters.
const SLOTS: usize = 8192;

/// The shared limiter. Cheap to clone (an `Arc`).
#[derive(Clone)]
pub struct ChallengeLimiter {
    inner: Arc<Shared>,
}

struct Shared {
    per_second: AtomicU32,
    seed: u64,
    /// Each slot packs the second it counts (high 32 bits) and the count (low 32 bits).
    slots: Box<[AtomicU64]>,
}

impl ChallengeLimiter {
    /// `seed` must be secret (random per process).
    pub fn new(per_second: u32, seed: u64) -> Self {
        Self {
            inner: Arc::new(Shared {
                per_second: AtomicU32::new(per_second),
                seed,
                slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            }),
        }
    }

    pub fn set_per_second(&self, per_second: u32) {
        self.inner.per_second.store(per_second, Ordering::Relaxed);
    }

    /// Counts one challenge to `ip` in second `unix_secs`; false when that is over the
    /// limit (and then nothing should be sent).
    pub fn allow(&self, ip: IpAddr, unix_secs: u64) -> bool {
        let shared = &self.inner;
        let limit = shared.per_second.load(Ordering::Relaxed);
        let second = unix_secs as u32;
        let slots = shared.slots_of(ip).map(|i| &shared.slots[i]);
        let count = slots
            .iter()
            .map(|slot| count_in(slot.load(Ordering::Relaxed), second))
            .min()
            .unwrap_or(0);
        if count >= limit {
            return false;
        }
        for slot in slots {
            // Another shard may count the same slot at once: retry until our +1 lands.
            let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let count = count_in(packed, second).saturating_add(1);
                Some((u64::from(second) << 32) | u64::from(count))
            });
        }
        true
    }
}

/// A slot's count for `second` (a slot last counted in another second counts zero).
fn count_in(packed: u64, second: u32) -> u32 {
    if (packed >> 32) as u32 == second {
        packed as u32
    } else {
        0
    }
}

impl Shared {
    /// The source's two slots, from two keyed hashes.
    fn slots_of(&self, ip: IpAddr) -> [usize; 2] {
        let key = match QuotaKey::of(ip) {
            QuotaKey::V4(v4) => u64::from(v4),
            QuotaKey::V6(prefix) => prefix ^ (1 << 63),
        };
        [
            mix(key ^ self.seed),
            mix(key ^ self.seed.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15),
        ]
        .map(|h| (h % SLOTS as u64) as usize)
    }
}

/// SplitMix64's finaliser: cheap, and without the seed an attacker cannot tell which
/// addresses share a slot.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_limit_per_second_per_source() {
        let limiter = ChallengeLimiter::new(3, 42);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!((0..3).all(|_| limiter.allow(a, 100)));
        assert!(!limiter.allow(a, 100));
        assert!(limiter.allow(a, 101), "a new second, a new budget");
        assert!((0..3).all(|_| limiter.allow(b, 100)));
        assert!(!limiter.allow(b_same_64, 100), "IPv6 counts per /64");
        limiter.set_per_second(4);
        assert!(limiter.allow(b, 100));
    }

    #[test]
    fn a_flood_from_many_sources_rarely_silences_another() {
        // 2000 sources (a quarter of the slots each) spend their whole budget; most other
        // sources still have one slot of their two left untouched.
        let limiter = ChallengeLimiter::new(2, 7);
        for i in 0..2000u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            while limiter.allow(ip, 5) {}
        }
        let silenced = (0..1000u32)
            .filter(|i| !limiter.allow(IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0000 + i)), 5))
            .count();
        // One slot of 8192 is hit with probability about 2 × 2000 / 8192 ≈ 0.39; both of a
        // source's slots about 0.15 (a single slot would silence about 0.22).
        assert!(
            silenced < 250,
            "{silenced} of 1000 innocent sources silenced"
        );
    }
}
