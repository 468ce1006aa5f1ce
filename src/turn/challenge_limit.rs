//! `unauthorized-per-ip`: how many 401 and 438 replies one source gets per second.
//!
//! An unauthenticated Allocate of 20 bytes earns a challenge of about 100, so without a
//! limit a spoofed flood makes the server a reflector that multiplies traffic toward a
//! victim. The limit holds across every shard (the kernel spreads one source's ports over
//! the UDP workers), in fixed memory (a flood from many addresses cannot grow it): sources
//! are hashed with a secret seed into a fixed table of one-second counters. Two sources
//! sharing a slot share its budget; the seed keeps an attacker from choosing which.

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
        let slot = &shared.slots[shared.slot_of(ip)];
        let second = unix_secs as u32;
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let (slot_second, count) = ((current >> 32) as u32, current as u32);
            let count = if slot_second == second { count } else { 0 };
            if count >= limit {
                return false;
            }
            let next = (u64::from(second) << 32) | u64::from(count + 1);
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Shared {
    fn slot_of(&self, ip: IpAddr) -> usize {
        let key = match QuotaKey::of(ip) {
            QuotaKey::V4(v4) => u64::from(v4),
            QuotaKey::V6(prefix) => prefix ^ (1 << 63),
        };
        // A keyed mix (SplitMix64's finaliser over key ^ seed): cheap, and without the
        // seed an attacker cannot tell which addresses share a slot.
        let mut x = key ^ self.seed;
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^= x >> 31;
        (x % SLOTS as u64) as usize
    }
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
}
