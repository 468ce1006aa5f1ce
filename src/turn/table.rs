//! The allocation table: every allocation, the index from relay address to owner, and the
//! timer queue, kept consistent by one owner.
//!
//! Invariants (checked by `debug_assert!` after each change in debug builds):
//! - every relay address of every allocation is in `by_relay`, pointing at its owner, and
//!   `by_relay` holds nothing else;
//! - an allocation has a timer entry exactly when its `scheduled` says so, at that instant.
//!
//! The rest of the core may change an allocation through [`AllocationTable::get_mut`] in
//! any way but its relay addresses and its `scheduled` instant, which only the methods here
//! change.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use super::allocation::{Allocation, Relay};
use super::FiveTuple;

#[derive(Default)]
pub(super) struct AllocationTable {
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    /// One wake-up per allocation, at its `scheduled` instant. An ordered set rather than a
    /// heap, so an allocation that ends early takes its entry with it: under churn a heap
    /// would hold every ended allocation's entry until its old deadline.
    timers: BTreeSet<(Instant, FiveTuple)>,
}

impl AllocationTable {
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    pub fn contains(&self, tuple: &FiveTuple) -> bool {
        self.allocations.contains_key(tuple)
    }

    pub fn get(&self, tuple: &FiveTuple) -> Option<&Allocation> {
        self.allocations.get(tuple)
    }

    /// For changes other than relay addresses and timers (see the module documentation).
    pub fn get_mut(&mut self, tuple: &FiveTuple) -> Option<&mut Allocation> {
        self.allocations.get_mut(tuple)
    }

    /// The allocation that owns the relay socket on `relay`.
    pub fn by_relay(&self, relay: &SocketAddr) -> Option<(FiveTuple, &Allocation)> {
        let tuple = *self.by_relay.get(relay)?;
        let allocation = self.allocations.get(&tuple);
        debug_assert!(
            allocation.is_some(),
            "relay {relay} indexed to a missing allocation"
        );
        Some((tuple, allocation?))
    }

    /// The allocation that owns the relay socket on `relay`, to meter its traffic.
    pub fn by_relay_mut(&mut self, relay: &SocketAddr) -> Option<(FiveTuple, &mut Allocation)> {
        let tuple = *self.by_relay.get(relay)?;
        Some((tuple, self.allocations.get_mut(&tuple)?))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    pub fn iter_with_tuples(&self) -> impl Iterator<Item = (FiveTuple, &Allocation)> {
        self.allocations.iter().map(|(tuple, a)| (*tuple, a))
    }

    /// Adds an allocation with its relays, to be woken at `wake_at`.
    pub fn insert(&mut self, tuple: FiveTuple, allocation: Allocation, wake_at: Instant) {
        debug_assert!(
            !self.allocations.contains_key(&tuple),
            "one allocation per 5-tuple"
        );
        for relay in &allocation.relays {
            let previous = self.by_relay.insert(relay.bind, tuple);
            debug_assert!(previous.is_none(), "relay {} owned twice", relay.bind);
        }
        self.allocations.insert(tuple, allocation);
        self.schedule(tuple, wake_at);
    }

    /// Takes an allocation out with its relay index entries and its timer.
    pub fn remove(&mut self, tuple: &FiveTuple) -> Option<Allocation> {
        let allocation = self.allocations.remove(tuple)?;
        if let Some(at) = allocation.scheduled {
            let queued = self.timers.remove(&(at, *tuple));
            debug_assert!(queued, "a scheduled allocation without its timer");
        }
        for relay in &allocation.relays {
            self.by_relay.remove(&relay.bind);
        }
        self.shrink_if_sparse();
        Some(allocation)
    }

    /// Puts `replacement` where relay `old` of `tuple`'s allocation was (a retry on another
    /// port keeps the relays' order: IPv4 first).
    pub fn replace_relay(&mut self, tuple: &FiveTuple, old: SocketAddr, replacement: Relay) {
        let Some(allocation) = self.allocations.get_mut(tuple) else {
            debug_assert!(false, "replacing a relay of a missing allocation");
            return;
        };
        let Some(slot) = allocation.relays.iter_mut().find(|r| r.bind == old) else {
            debug_assert!(false, "replacing relay {old} its allocation does not have");
            return;
        };
        *slot = replacement;
        self.by_relay.remove(&old);
        self.by_relay.insert(replacement.bind, *tuple);
    }

    /// Takes relay `bind` out of `tuple`'s allocation.
    pub fn remove_relay(&mut self, tuple: &FiveTuple, bind: SocketAddr) -> Option<Relay> {
        let allocation = self.allocations.get_mut(tuple)?;
        let index = allocation.relays.iter().position(|r| r.bind == bind)?;
        self.by_relay.remove(&bind);
        Some(allocation.relays.remove(index))
    }

    /// Wakes `tuple` at `at`, unless an earlier wake-up is already queued.
    pub fn schedule(&mut self, tuple: FiveTuple, at: Instant) {
        let Some(allocation) = self.allocations.get_mut(&tuple) else {
            debug_assert!(false, "scheduling a missing allocation");
            return;
        };
        if let Some(queued) = allocation.scheduled {
            if queued <= at {
                return;
            }
            self.timers.remove(&(queued, tuple));
        }
        allocation.scheduled = Some(at);
        self.timers.insert((at, tuple));
    }

    /// The next allocation due at `now`, its wake-up taken (schedule it again if it lives
    /// on).
    pub fn pop_due(&mut self, now: Instant) -> Option<FiveTuple> {
        let &(at, tuple) = self.timers.first()?;
        if at > now {
            return None;
        }
        self.timers.pop_first();
        match self.allocations.get_mut(&tuple) {
            Some(allocation) => allocation.scheduled = None,
            None => debug_assert!(false, "a timer outlived its allocation"),
        }
        Some(tuple)
    }

    /// When [`AllocationTable::pop_due`] next has something.
    pub fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Gives memory back after many allocations ended: hash maps never shrink by themselves.
    fn shrink_if_sparse(&mut self) {
        const MIN_CAPACITY: usize = 256;
        if self.allocations.capacity() > MIN_CAPACITY
            && self.allocations.len() * 4 < self.allocations.capacity()
        {
            self.allocations.shrink_to_fit();
            self.by_relay.shrink_to_fit();
        }
    }
}
