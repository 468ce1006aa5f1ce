//! Allocation quotas that hold across every shard: per user, per client address and in
//! total.
//!
//! Shards own their allocations, but a quota is about the whole server: a user with ten
//! allocations on one UDP worker must not get ten more on the next. So the counts live in
//! one [`Quotas`] shared by all shards. It is touched only when an allocation is created or
//! ends (never for a relayed packet), so one short mutex is cheap; the claim an allocation
//! holds gives its count back when the allocation is dropped, whatever ends it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// Which quota refused an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaExceeded {
    User,
    Address,
    Total,
}

impl QuotaExceeded {
    pub const ALL: [QuotaExceeded; 3] = [Self::User, Self::Address, Self::Total];

    /// A label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Address => "address",
            Self::Total => "total",
        }
    }
}

/// The configured maximums; changed live by a reload (lowering one ends nothing, it only
/// refuses new allocations until the count is under it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    pub per_user: u32,
    pub per_address: u32,
    pub total: u32,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            per_user: u32::MAX,
            per_address: u32::MAX,
            total: u32::MAX,
        }
    }
}

/// The shared allocation counts. Cheap to clone (an `Arc`). The default has no limits.
#[derive(Clone)]
pub struct Quotas {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    per_user: AtomicU32,
    per_address: AtomicU32,
    total_limit: AtomicU32,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    by_user: HashMap<Box<str>, u32>,
    by_address: HashMap<QuotaKey, u32>,
    total: u32,
}

/// A client address as every per-address limit counts it: IPv4 as is, IPv6 by its /64,
/// since one host usually holds a whole /64. The one definition of "per IP" — TURN quotas,
/// the unauthorized-reply limiter, connection caps and signaling's `rooms-per-ip` all key
/// on it, so no limit can be dodged by hopping addresses inside one /64.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuotaKey {
    V4(u32),
    V6(u64),
}

impl QuotaKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

/// One allocation's place in the counts, given back on drop.
pub struct QuotaClaim {
    quotas: Arc<Shared>,
    user: Box<str>,
    address: QuotaKey,
}

impl std::fmt::Debug for QuotaClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaClaim").finish_non_exhaustive()
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Self::new(QuotaLimits::default())
    }
}

impl Quotas {
    pub fn new(limits: QuotaLimits) -> Self {
        let quotas = Self {
            inner: Arc::default(),
        };
        quotas.set_limits(limits);
        quotas
    }

    pub fn set_limits(&self, limits: QuotaLimits) {
        let shared = &self.inner;
        shared.per_user.store(limits.per_user, Ordering::Relaxed);
        shared
            .per_address
            .store(limits.per_address, Ordering::Relaxed);
        shared.total_limit.store(limits.total, Ordering::Relaxed);
    }

    /// Counts one more allocation for `user` from `ip`, or says which quota is full.
    pub fn claim(&self, user: &str, ip: IpAddr) -> Result<QuotaClaim, QuotaExceeded> {
        let shared = &self.inner;
        let address = QuotaKey::of(ip);
        let mut counts = shared.lock();
        if counts.total >= shared.total_limit.load(Ordering::Relaxed) {
            return Err(QuotaExceeded::Total);
        }
        if counts.by_user.get(user).copied().unwrap_or(0) >= shared.per_user.load(Ordering::Relaxed)
        {
            return Err(QuotaExceeded::User);
        }
        if counts.by_address.get(&address).copied().unwrap_or(0)
            >= shared.per_address.load(Ordering::Relaxed)
        {
            return Err(QuotaExceeded::Address);
        }
        counts.total += 1;
        *counts.by_user.entry(user.into()).or_default() += 1;
        *counts.by_address.entry(address).or_default() += 1;
        Ok(QuotaClaim {
            quotas: shared.clone(),
            user: user.into(),
            address,
        })
    }

    /// Allocations counted now, on every shard.
    pub fn total(&self) -> u32 {
        self.inner.lock().total
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic elsewhere while holding the lock cannot leave the counts half-updated
        // (each update is a few integer operations), so a poisoned lock is still usable.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for QuotaClaim {
    fn drop(&mut self) {
        let mut counts = self.quotas.lock();
        counts.total = counts.total.saturating_sub(1);
        release(&mut counts.by_user, &*self.user);
        release(&mut counts.by_address, &self.address);
    }
}

/// Decrements a count and forgets keys that reach zero, so the maps hold only users and
/// addresses that have allocations now.
fn release<K, Q>(map: &mut HashMap<K, u32>, key: &Q)
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(count) = map.get_mut(key) {
        *count -= 1;
        if *count == 0 {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_quota_refuses_at_its_limit_and_frees_on_drop() {
        let quotas = Quotas::new(QuotaLimits {
            per_user: 2,
            per_address: 3,
            total: 5,
        });
        let a1 = quotas.claim("alice", ip("192.0.2.1")).unwrap();
        let a2 = quotas.claim("alice", ip("192.0.2.2")).unwrap();
        assert_eq!(
            quotas.claim("alice", ip("192.0.2.3")).unwrap_err(),
            QuotaExceeded::User
        );
        let b1 = quotas.claim("bob", ip("192.0.2.1")).unwrap();
        let b2 = quotas.claim("carol", ip("192.0.2.1")).unwrap();
        assert_eq!(
            quotas.claim("dave", ip("192.0.2.1")).unwrap_err(),
            QuotaExceeded::Address
        );
        let _b3 = quotas.claim("dave", ip("192.0.2.9")).unwrap();
        assert_eq!(
            quotas.claim("erin", ip("192.0.2.10")).unwrap_err(),
            QuotaExceeded::Total
        );
        drop((a1, b1));
        assert_eq!(quotas.total(), 3);
        quotas.claim("alice", ip("192.0.2.1")).unwrap();
        drop((a2, b2));
        assert!(!quotas.inner.lock().by_user.contains_key("carol"));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let quotas = Quotas::new(QuotaLimits {
            per_address: 1,
            ..QuotaLimits::default()
        });
        let _a = quotas.claim("a", ip("2001:db8::1")).unwrap();
        assert!(quotas.claim("b", ip("2001:db8::ffff:2")).is_err());
        let _c = quotas.claim("c", ip("2001:db8:0:1::1")).unwrap();
        let _d = quotas.claim("d", ip("::ffff:192.0.2.1")).unwrap();
        assert!(quotas.claim("e", ip("192.0.2.1")).is_err());
    }
}
