//! The kernel fast path as the core sees it: which bound channels a packet-rewriting
//! program outside the core (XDP, see `net::xdp`) may relay on its own, and when.
//!
//! The core stays the authority. A channel is *eligible* while all of this holds:
//! the client came over UDP, its allocation is active and relays UDP, the channel is bound
//! (not expired, not in quarantine), the allocation holds a live permission for the peer's
//! IP and a relay of its family, the peer is not one of this host's own services, and the
//! allocation is within `bandwidth-per-allocation` both ways.
//!
//! With [`ServerConfig::fast_path`](super::ServerConfig::fast_path) set, every allocation
//! remembers the entries it has announced, and after anything that may change eligibility
//! (a request, a timer, traffic the fast path reports, a reload) the core compares them
//! with what is eligible now and queues [`Output::FastPath`]: a `Remove` for each that no
//! longer is, then an `Insert` for each new one. So the entries inserted and not yet
//! removed always equal the eligible set, and a removal is queued before the response of
//! the request that caused it (a Refresh with LIFETIME 0 removes before it is answered).
//!
//! Packets the fast path relays never reach the core, so nothing here notices expiry by
//! traffic: the allocation's timer wakes at the earliest end of any announced entry. What
//! the fast path carried comes back through [`Server::count_fast_path`]: counted in the
//! statistics and charged to the allocation's bandwidth meters. An allocation that has
//! gone over its rate loses its entries (its traffic is then dropped by the sockets path)
//! until the meters have caught up.

use std::time::Instant;

use super::allocation::{Allocation, RelayProtocol};
use super::server::Server;
use super::stats::Traffic;
use super::{FiveTuple, Output, PeerAddr, RelayAddr, Transport};

/// A bound channel the fast path may relay: ChannelData from `client` on `channel` goes
/// from `relay` to `peer` as a plain datagram, and datagrams from `peer` to `relay` go to
/// the client framed on `channel`, from `client.server`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FastPathEntry {
    /// The client's 5-tuple (always UDP).
    pub client: FiveTuple,
    pub channel: u16,
    pub peer: PeerAddr,
    pub relay: RelayAddr,
}

/// A change of the eligible set, for the I/O layer to mirror into the fast path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastPathChange {
    /// `entry` became eligible: the fast path may relay it from now on.
    Insert(FastPathEntry),
    /// `entry` is no longer eligible: the fast path must stop relaying it before anything
    /// queued after this is carried out. Report its last traffic with
    /// [`Server::count_fast_path`] ([`Server::drive`] does, from
    /// [`Io::remove_fast_path`](super::Io::remove_fast_path)).
    Remove(FastPathEntry),
}

impl Server {
    /// Whether outputs for a fast path are produced at all.
    pub fn has_fast_path(&self) -> bool {
        self.fast_path
    }

    /// What the fast path carried for `entry` since the last report: counted as relayed
    /// and charged to its allocation's bandwidth (if the allocation still exists). An
    /// allocation now over its rate has its entries removed until it is within it again.
    pub fn count_fast_path(
        &mut self,
        now: Instant,
        entry: FastPathEntry,
        to_peer: Traffic,
        to_client: Traffic,
    ) {
        if to_peer.packets == 0 && to_client.packets == 0 {
            return;
        }
        let relayed = &mut self.stats.relayed[Transport::Udp as usize];
        relayed.to_peers.add(&to_peer);
        relayed.to_clients.add(&to_client);
        self.stats.fast_path.to_peers.add(&to_peer);
        self.stats.fast_path.to_clients.add(&to_client);
        let rate = self.bandwidth_per_allocation;
        let Some(allocation) = self.allocations.get_mut(&entry.client) else {
            return;
        };
        allocation.to_peers.charge(now, to_peer, rate);
        allocation.to_clients.charge(now, to_client, rate);
        if rate > 0 {
            self.sync_fast_path_and_schedule(now, entry.client);
        }
    }

    /// Every entry announced and not removed: what the fast path holds for this shard.
    pub fn fast_path_entries(&self) -> Vec<FastPathEntry> {
        let mut entries: Vec<FastPathEntry> = self
            .allocations
            .iter_with_tuples()
            .flat_map(|(_, a)| a.fast_path.announced.iter().copied())
            .collect();
        entries.sort();
        entries
    }

    /// Every entry eligible at `now` (what [`Server::fast_path_entries`] equals once the
    /// timers due at `now` have run). A walk over every allocation: for tests.
    pub fn eligible_fast_paths(&self, now: Instant) -> Vec<FastPathEntry> {
        if !self.fast_path {
            return Vec::new();
        }
        let mut entries: Vec<FastPathEntry> = self
            .allocations
            .iter_with_tuples()
            .flat_map(|(tuple, a)| self.eligible(now, tuple, a).0)
            .collect();
        entries.sort();
        entries
    }

    /// Brings `tuple`'s announced entries in line with what is eligible now and wakes the
    /// allocation when the next of them ends.
    pub(super) fn sync_fast_path_and_schedule(&mut self, now: Instant, tuple: FiveTuple) {
        if !self.fast_path {
            return;
        }
        self.sync_fast_path(now, tuple);
        if let Some(allocation) = self.allocations.get(&tuple) {
            let deadline = allocation.next_deadline();
            self.allocations.schedule(tuple, deadline);
        }
    }

    /// Every allocation's entries brought in line (after a reload changed the policy or
    /// the bandwidth limit).
    pub(super) fn sync_all_fast_paths(&mut self, now: Instant) {
        if !self.fast_path {
            return;
        }
        let tuples: Vec<FiveTuple> = self
            .allocations
            .iter_with_tuples()
            .map(|(tuple, _)| tuple)
            .collect();
        for tuple in tuples {
            self.sync_fast_path_and_schedule(now, tuple);
        }
    }

    /// Queues removals of what `tuple` announced that is no longer eligible, then
    /// insertions of what newly is (the caller schedules the allocation's timer).
    pub(super) fn sync_fast_path(&mut self, now: Instant, tuple: FiveTuple) {
        if !self.fast_path {
            return;
        }
        let Some(allocation) = self.allocations.get(&tuple) else {
            return;
        };
        let (eligible, retry_at) = self.eligible(now, tuple, allocation);
        let Some(allocation) = self.allocations.get_mut(&tuple) else {
            return;
        };
        let announced = &mut allocation.fast_path.announced;
        announced.retain(|entry| {
            let keep = eligible.contains(entry);
            if !keep {
                self.outputs
                    .push_back(Output::FastPath(super::FastPathChange::Remove(*entry)));
            }
            keep
        });
        for entry in eligible {
            if !announced.contains(&entry) {
                announced.push(entry);
                self.outputs
                    .push_back(Output::FastPath(super::FastPathChange::Insert(entry)));
            }
        }
        allocation.fast_path.retry_at = retry_at;
    }

    /// Queues the removal of every entry a removed allocation had announced.
    pub(super) fn withdraw_fast_path(&mut self, allocation: &mut Allocation) {
        for entry in allocation.fast_path.announced.drain(..) {
            self.outputs
                .push_back(Output::FastPath(super::FastPathChange::Remove(entry)));
        }
    }

    /// The entries of `allocation` eligible at `now`, and, when bandwidth alone holds some
    /// back, when to look again.
    fn eligible(
        &self,
        now: Instant,
        tuple: FiveTuple,
        allocation: &Allocation,
    ) -> (Vec<FastPathEntry>, Option<Instant>) {
        let served = tuple.transport == Transport::Udp
            && allocation.protocol == RelayProtocol::Udp
            && allocation.is_active(now);
        if !served {
            return (Vec::new(), None);
        }
        let rate = self.bandwidth_per_allocation;
        let over_rate = [&allocation.to_peers, &allocation.to_clients]
            .into_iter()
            .filter_map(|meter| meter.over_rate_until(now, rate))
            .max();
        let mut entries = Vec::new();
        for (channel, peer) in allocation.live_channels(now) {
            let Some(relay) = allocation.relay_for(peer.ip()) else {
                continue;
            };
            if !allocation.has_permission(now, peer.ip()) || self.host.is_own_service(peer) {
                continue;
            }
            if over_rate.is_some() {
                return (Vec::new(), over_rate);
            }
            entries.push(FastPathEntry {
                client: tuple,
                channel,
                peer: PeerAddr(peer),
                relay: RelayAddr(relay.bind),
            });
        }
        (entries, None)
    }
}

/// What one allocation has announced to the fast path.
#[derive(Default)]
pub(super) struct AnnouncedFastPath {
    pub announced: Vec<FastPathEntry>,
    /// When an allocation held back by its bandwidth may be eligible again.
    pub retry_at: Option<Instant>,
}
