//! The table of RFC 6062 peer connections: every TCP connection between a TCP allocation's
//! relayed address and a peer, from the Connect request (or the peer's own connection) to
//! its end, with the indexes and the timer queue kept consistent by one owner.
//!
//! Invariants (checked by `debug_assert!` in debug builds where they are relied on):
//! - every connection is listed under its owner in `by_owner`, and nothing else is;
//! - a bound connection's data connection is in `by_data`, pointing at it, and nothing else
//!   is;
//! - a connection has a timer entry exactly when it is not bound (connecting or waiting
//!   for its ConnectionBind), at its deadline.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Instant;

use super::server::Reply;
use super::FiveTuple;
use crate::random::Rng;

/// A peer connection's CONNECTION-ID (RFC 6062 §6.2.1): unique on this server while the
/// connection lives, and random, so a client cannot guess another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u32);

impl std::fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One peer connection of a TCP allocation.
pub(super) struct PeerConnection {
    /// The control connection whose allocation this belongs to.
    pub owner: FiveTuple,
    pub peer: SocketAddr,
    pub state: ConnectionState,
}

pub(super) enum ConnectionState {
    /// A Connect request is waiting for the I/O layer to connect to the peer; it is
    /// answered then, or with 447 at the deadline.
    Connecting { reply: Reply, deadline: Instant },
    /// Connected (by Connect or by the peer), waiting for a ConnectionBind until the
    /// deadline; the peer's bytes wait in the kernel meanwhile.
    Pending { deadline: Instant },
    /// Relaying raw bytes to and from the client's data connection `data`.
    Bound { data: FiveTuple },
}

impl ConnectionState {
    fn deadline(&self) -> Option<Instant> {
        match self {
            ConnectionState::Connecting { deadline, .. }
            | ConnectionState::Pending { deadline } => Some(*deadline),
            ConnectionState::Bound { .. } => None,
        }
    }
}

/// Connections counted by state, for the gauges.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionCounts {
    pub connecting: u64,
    pub pending: u64,
    pub bound: u64,
}

#[derive(Default)]
pub(super) struct PeerConnections {
    connections: HashMap<ConnectionId, PeerConnection>,
    by_owner: HashMap<FiveTuple, Vec<ConnectionId>>,
    by_data: HashMap<FiveTuple, ConnectionId>,
    /// The deadline of every connection that is not bound.
    timers: BTreeSet<(Instant, ConnectionId)>,
}

impl PeerConnections {
    /// Connections in every state, on this shard.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    pub fn get(&self, id: ConnectionId) -> Option<&PeerConnection> {
        self.connections.get(&id)
    }

    /// Adds a connection under a fresh random id.
    pub fn insert(
        &mut self,
        rng: &mut Rng,
        owner: FiveTuple,
        peer: SocketAddr,
        state: ConnectionState,
    ) -> ConnectionId {
        let id = loop {
            // Ids are 32 bits and live connections few, so a collision is rare; 0 is
            // avoided as some clients take it for "none".
            let candidate = ConnectionId(rng.next_u64() as u32);
            if candidate.0 != 0 && !self.connections.contains_key(&candidate) {
                break candidate;
            }
        };
        if let Some(deadline) = state.deadline() {
            self.timers.insert((deadline, id));
        }
        debug_assert!(!matches!(state, ConnectionState::Bound { .. }));
        self.by_owner.entry(owner).or_default().push(id);
        self.connections
            .insert(id, PeerConnection { owner, peer, state });
        id
    }

    /// The owner's connection to exactly `peer` (in any state), for 446.
    pub fn find(&self, owner: &FiveTuple, peer: SocketAddr) -> Option<ConnectionId> {
        self.by_owner
            .get(owner)?
            .iter()
            .copied()
            .find(|id| self.connections.get(id).is_some_and(|c| c.peer == peer))
    }

    /// The owner's connections in every state (connecting, pending, bound), for its limit.
    pub fn count_of(&self, owner: &FiveTuple) -> usize {
        self.by_owner.get(owner).map_or(0, Vec::len)
    }

    /// The connection relaying for data connection `data`.
    pub fn by_data(&self, data: &FiveTuple) -> Option<ConnectionId> {
        self.by_data.get(data).copied()
    }

    /// Moves a connection to `state`, keeping its timer and the data index in step.
    pub fn set_state(&mut self, id: ConnectionId, state: ConnectionState) {
        let Some(connection) = self.connections.get_mut(&id) else {
            debug_assert!(false, "changing a missing connection");
            return;
        };
        if let Some(old) = connection.state.deadline() {
            self.timers.remove(&(old, id));
        }
        if let ConnectionState::Bound { data } = connection.state {
            self.by_data.remove(&data);
        }
        if let Some(new) = state.deadline() {
            self.timers.insert((new, id));
        }
        if let ConnectionState::Bound { data } = state {
            let previous = self.by_data.insert(data, id);
            debug_assert!(
                previous.is_none(),
                "one peer connection per data connection"
            );
        }
        connection.state = state;
    }

    /// Takes a connection out with its index entries and timer.
    pub fn remove(&mut self, id: ConnectionId) -> Option<PeerConnection> {
        let connection = self.connections.remove(&id)?;
        if let Some(deadline) = connection.state.deadline() {
            self.timers.remove(&(deadline, id));
        }
        if let ConnectionState::Bound { data } = connection.state {
            self.by_data.remove(&data);
        }
        if let Some(ids) = self.by_owner.get_mut(&connection.owner) {
            ids.retain(|other| *other != id);
            if ids.is_empty() {
                self.by_owner.remove(&connection.owner);
            }
        }
        self.shrink_if_sparse();
        Some(connection)
    }

    /// Takes out every connection of `owner` (its allocation ended).
    pub fn remove_owner(&mut self, owner: &FiveTuple) -> Vec<(ConnectionId, PeerConnection)> {
        let ids = self.by_owner.get(owner).cloned().unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| Some((id, self.remove(id)?)))
            .collect()
    }

    /// A connection whose deadline has passed at `now`, earliest first. It stays due until
    /// the caller removes it or gives it a new state.
    pub fn pop_due(&mut self, now: Instant) -> Option<ConnectionId> {
        let &(at, id) = self.timers.first()?;
        if at > now {
            return None;
        }
        Some(id)
    }

    /// When [`PeerConnections::pop_due`] next has something.
    pub fn next_wake(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    pub fn counts(&self) -> ConnectionCounts {
        let mut counts = ConnectionCounts::default();
        for connection in self.connections.values() {
            match connection.state {
                ConnectionState::Connecting { .. } => counts.connecting += 1,
                ConnectionState::Pending { .. } => counts.pending += 1,
                ConnectionState::Bound { .. } => counts.bound += 1,
            }
        }
        counts
    }

    /// Gives memory back after a burst of connections: hash maps never shrink by
    /// themselves.
    fn shrink_if_sparse(&mut self) {
        const MIN_CAPACITY: usize = 256;
        if self.connections.capacity() > MIN_CAPACITY
            && self.connections.len() * 4 < self.connections.capacity()
        {
            self.connections.shrink_to_fit();
            self.by_owner.shrink_to_fit();
            self.by_data.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turn::Transport;
    use std::time::Duration;

    fn tuple(port: u16) -> FiveTuple {
        FiveTuple {
            transport: Transport::Tcp,
            client: SocketAddr::from(([192, 0, 2, 1], port)),
            server: SocketAddr::from(([192, 0, 2, 10], 3478)),
        }
    }

    #[test]
    fn indexes_and_timers_follow_every_change() {
        let t0 = Instant::now();
        let mut table = PeerConnections::default();
        let mut rng = Rng::from_seed(1);
        let owner = tuple(5000);
        let peer: SocketAddr = "198.51.100.7:80".parse().unwrap();
        let deadline = t0 + Duration::from_secs(30);
        let id = table.insert(&mut rng, owner, peer, ConnectionState::Pending { deadline });
        assert_eq!(table.find(&owner, peer), Some(id));
        assert_eq!(table.count_of(&owner), 1);
        assert_eq!(table.next_wake(), Some(deadline));

        let data = tuple(5001);
        table.set_state(id, ConnectionState::Bound { data });
        assert_eq!(
            table.next_wake(),
            None,
            "a bound connection has no deadline"
        );
        assert_eq!(table.by_data(&data), Some(id));
        assert_eq!(table.count_of(&owner), 1, "bound, it still counts");

        let removed = table.remove_owner(&owner);
        assert_eq!(removed.len(), 1);
        assert_eq!(table.by_data(&data), None);
        assert_eq!(table.find(&owner, peer), None);
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn due_connections_come_out_in_deadline_order() {
        let t0 = Instant::now();
        let mut table = PeerConnections::default();
        let mut rng = Rng::from_seed(2);
        let owner = tuple(5000);
        let late = table.insert(
            &mut rng,
            owner,
            "198.51.100.7:1".parse().unwrap(),
            ConnectionState::Pending {
                deadline: t0 + Duration::from_secs(20),
            },
        );
        let early = table.insert(
            &mut rng,
            owner,
            "198.51.100.7:2".parse().unwrap(),
            ConnectionState::Pending {
                deadline: t0 + Duration::from_secs(10),
            },
        );
        assert_ne!(early, late);
        assert_eq!(table.pop_due(t0), None);
        let now = t0 + Duration::from_secs(25);
        assert_eq!(table.pop_due(now), Some(early));
        table.remove(early);
        assert_eq!(table.pop_due(now), Some(late));
        table.remove(late);
        assert_eq!(table.pop_due(now), None);
    }
}
