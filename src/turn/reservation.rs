//! EVEN-PORT reservations (RFC 8656 §7.2, §14.6, §14.9).
//!
//! An Allocate with EVEN-PORT whose R bit is set gets an even relay port, and the port after
//! it is held for [`RESERVATION_LIFETIME`] under an 8-byte RESERVATION-TOKEN drawn from the
//! core's cryptographic generator (so it cannot be guessed). An Allocate carrying the token
//! gets exactly that port; an unknown, used or expired token gets 508, and a token together
//! with EVEN-PORT or an address family gets 400.
//!
//! Several shards, one table. The RTP allocation and the RTCP one that redeems its token come
//! from two client ports: the kernel hashes each 5-tuple to a UDP worker of its own, so the
//! second usually reaches another shard (and over TCP, another connection of the stream
//! shard). Two designs keep to the single-owner rule:
//! - name the reserving shard in the token and ask it to hand the port over: the redeeming
//!   shard would have to wait for another thread's answer in the middle of a request, a new
//!   pending state per Allocate and a cross-thread channel, for a rare request;
//! - keep the reservations in one small table for the whole server, as the quotas are.
//!
//! rendez does the second. The table is touched only by an Allocate with R or a token and
//! when a reservation expires, never per packet, so one short mutex costs nothing and no
//! lock is held while anything is sent. The reserved port is claimed in the server-wide
//! [`PortClaims`](super::ports::PortClaims), so whichever shard redeems the token binds the
//! port, and releases the claim itself when that allocation ends: ownership passes with the
//! token and nothing is ever handed back.
//!
//! Each reservation holds a quota claim (`[limits] allocations-per-user`, `-per-ip`,
//! `-total`) until it is redeemed (the claim passes to the new allocation) or expires, so a
//! user holds no more ports, allocated or reserved, than the quotas allow. Only the user who
//! made a reservation may redeem it.
//!
//! Expiry is checked wherever the table is read (a late token is 508 at once), and the shard
//! that made a reservation wakes at its deadline and removes it if nobody did, giving the
//! port and the quota claim back.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::allocation::{Allocation, Owner, PendingAllocate, PortChoice, Relay};
use super::auth::{quota_name, Credentials};
use super::quota::QuotaClaim;
use super::requests::{relay_options, PROTOCOL_UDP};
use super::server::{Reply, Server, RELAY_BIND_TIMEOUT};
use super::{FiveTuple, Output, RelayAddr};
use crate::stun::{ErrorCode, Message};

/// How long the port after an EVEN-PORT R=1 allocation is held (RFC 8656 §7.2: "about 30
/// seconds").
pub const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// The value of RESERVATION-TOKEN (RFC 8656 §14.9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationToken(pub [u8; 8]);

/// The reservations of every shard of one server. Cheap to clone (an `Arc`); give every
/// shard the same one, as with [`super::Quotas`].
#[derive(Clone, Default)]
pub struct Reservations {
    table: Arc<Mutex<HashMap<ReservationToken, Reservation>>>,
}

/// A port held for a later Allocate.
pub(super) struct Reservation {
    /// The reserved port on one relay address (not bound: the redeeming shard binds it).
    pub relay: Relay,
    /// The user who may redeem it, as quotas name users.
    pub user: Box<str>,
    /// Its place in the quotas, passed to the allocation that redeems it.
    pub quota: QuotaClaim,
    pub expires_at: Instant,
}

/// Why a token gets no port (both are 508 to the client).
pub(super) enum Unredeemable {
    /// No such reservation, or another user's.
    Unknown,
    /// Its time ran out; it is out of the table now and this port must be released.
    Expired(Relay),
}

impl Reservations {
    /// Reservations held now, on every shard.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no reservation is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a reservation under the first token from `new_token` not in use (64 random
    /// bits: a clash is all but impossible, but cheap to rule out); `None` if a few tries
    /// all clashed.
    fn insert(
        &self,
        reservation: Reservation,
        mut new_token: impl FnMut() -> ReservationToken,
    ) -> Option<ReservationToken> {
        let mut table = self.lock();
        let token = (0..4)
            .map(|_| new_token())
            .find(|token| !table.contains_key(token))?;
        table.insert(token, reservation);
        Some(token)
    }

    /// Takes the reservation under `token` for `user`, once.
    fn redeem(
        &self,
        token: ReservationToken,
        user: &str,
        now: Instant,
    ) -> Result<Reservation, Unredeemable> {
        let taken = {
            let mut table = self.lock();
            match table.get(&token) {
                Some(r) if &*r.user == user => table.remove(&token),
                _ => None,
            }
        };
        let reservation = taken.ok_or(Unredeemable::Unknown)?;
        if now < reservation.expires_at {
            Ok(reservation)
        } else {
            // Its quota claim goes with it, outside the table's lock.
            Err(Unredeemable::Expired(reservation.relay))
        }
    }

    /// Takes the reservation under `token` out if it has expired at `now`.
    fn expire(&self, token: ReservationToken, now: Instant) -> Option<Reservation> {
        let mut table = self.lock();
        let expired = table.get(&token).is_some_and(|r| now >= r.expires_at);
        let reservation = expired.then(|| table.remove(&token)).flatten();
        // Maps never shrink by themselves: give memory back after a burst of pairs.
        if table.capacity() > 64 && table.len() * 4 < table.capacity() {
            table.shrink_to_fit();
        }
        reservation
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReservationToken, Reservation>> {
        // Every change is one insert or remove, so a panic elsewhere cannot leave the table
        // half-updated: a poisoned lock is still usable.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The deadlines of the reservations one shard made, so it can sweep them.
#[derive(Default)]
pub(super) struct ReservationTimers(BTreeSet<(Instant, ReservationToken)>);

impl ReservationTimers {
    pub fn next_wake(&self) -> Option<Instant> {
        self.0.first().map(|(at, _)| *at)
    }
}

impl Server {
    /// An Allocate with RESERVATION-TOKEN (RFC 8656 §7.2): the reserved port or an error.
    pub(super) fn allocate_reserved(
        &mut self,
        now: Instant,
        message: &Message<'_>,
        credentials: Credentials,
        reply: &Reply,
    ) {
        let token = match reserved_allocate_token(message) {
            Ok(token) => token,
            Err(error) => {
                self.send_error(reply, error, |_| {});
                return;
            }
        };
        let Some((algorithm, _)) = reply.integrity else {
            debug_assert!(false, "an Allocate is handled only once authenticated");
            return;
        };
        let user = quota_name(&credentials.username);
        let reservation = match self.reservations.redeem(token, user, now) {
            Ok(reservation) => reservation,
            Err(why) => {
                if let Unredeemable::Expired(relay) = why {
                    self.release_port(relay.bind);
                }
                tracing::debug!(client = %reply.to.client, "unknown or expired reservation token");
                self.send_error(reply, ErrorCode::INSUFFICIENT_CAPACITY, |_| {});
                return;
            }
        };
        let pending = PendingAllocate {
            lifetime: self.granted_lifetime(message).max(self.default_lifetime),
            algorithm,
            fingerprint: reply.fingerprint,
            ports: PortChoice::Reserved,
            relay_options: relay_options(message),
            attempts: 0,
            unserved_family: None,
        };
        let owner = Owner {
            username: credentials.username,
            key: credentials.key,
            quota: reservation.quota,
        };
        self.outputs.push_back(Output::BindRelay {
            relay: RelayAddr(reservation.relay.bind),
            options: pending.relay_options,
        });
        let allocation = Allocation::new(
            vec![reservation.relay],
            owner,
            reply.transaction,
            pending,
            now,
            now + RELAY_BIND_TIMEOUT,
        );
        self.allocations
            .insert(reply.to, allocation, now + RELAY_BIND_TIMEOUT);
    }

    /// Reserves the port after `tuple`'s newly bound relay (its pair partner, claimed with
    /// it) for [`RESERVATION_LIFETIME`]: the token for the Allocate response. `None` (and the
    /// partner released) if the allocation holds no quota claim for it.
    pub(super) fn hold_reservation(
        &mut self,
        now: Instant,
        tuple: &FiveTuple,
    ) -> Option<ReservationToken> {
        let allocation = self.allocations.get_mut(tuple)?;
        let relay = allocation.relays.first().copied()?;
        let partner = pair_partner(relay);
        let Some(quota) = allocation.reservation_quota.take() else {
            debug_assert!(
                false,
                "an R=1 allocation holds a quota claim for its reservation"
            );
            self.release_port(partner.bind);
            return None;
        };
        let reservation = Reservation {
            relay: partner,
            user: quota_name(&allocation.username).into(),
            quota,
            expires_at: now + RESERVATION_LIFETIME,
        };
        let rng = &mut self.rng;
        let token = self.reservations.insert(reservation, || {
            let mut token = ReservationToken([0; 8]);
            rng.fill(&mut token.0);
            token
        });
        match token {
            Some(token) => {
                self.reservation_timers
                    .0
                    .insert((now + RESERVATION_LIFETIME, token));
            }
            None => self.release_port(partner.bind),
        }
        token
    }

    /// Gives back the partner port claimed with an R=1 allocation's relay that never became
    /// active (its bind failed, or it ended while binding).
    pub(super) fn release_pair_partner(&mut self, relay: std::net::SocketAddr) {
        self.release_port(next_port(relay));
    }

    /// Sweeps the reservations this shard made that are due at `now` (and not redeemed).
    pub(super) fn expire_reservations(&mut self, now: Instant) {
        while let Some(&(at, token)) = self.reservation_timers.0.first() {
            if at > now {
                break;
            }
            self.reservation_timers.0.pop_first();
            if let Some(expired) = self.reservations.expire(token, now) {
                self.release_port(expired.relay.bind);
            }
        }
    }
}

/// The port after `relay`: what an R=1 allocation reserves.
fn pair_partner(relay: Relay) -> Relay {
    Relay {
        bind: next_port(relay.bind),
        public: next_port(relay.public),
        bound: false,
    }
}

/// The port after `address`: the second half of the pair an R=1 relay's port starts (the
/// pair was claimed whole, so it exists).
fn next_port(address: std::net::SocketAddr) -> std::net::SocketAddr {
    std::net::SocketAddr::new(address.ip(), address.port() + 1)
}

/// The token of an Allocate that carries one, after the checks of RFC 8656 §7.2: UDP only,
/// and no EVEN-PORT or address family beside it (the token names one address).
fn reserved_allocate_token(message: &Message<'_>) -> Result<ReservationToken, ErrorCode> {
    let transport = message
        .requested_transport()
        .ok_or(ErrorCode::BAD_REQUEST)?;
    if transport != PROTOCOL_UDP {
        return Err(ErrorCode::UNSUPPORTED_TRANSPORT);
    }
    if message.even_port().is_some()
        || message.requested_family().is_some()
        || message.additional_family().is_some()
    {
        return Err(ErrorCode::BAD_REQUEST);
    }
    message
        .reservation_token()
        .map(ReservationToken)
        .ok_or(ErrorCode::BAD_REQUEST)
}
