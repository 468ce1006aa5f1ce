//! One direction of an allocation's traffic: what it relayed (for the log line when it
//! ends) and `bandwidth-per-allocation`, enforced as a token bucket.
//!
//! The bucket is kept as one instant (the generic cell rate algorithm): `paid_until` is
//! when everything admitted so far would have drained at the configured rate. A packet is
//! admitted while that lies less than [`BURST`] ahead of now, so an allocation may send a
//! second's worth at once and then the rate, with no per-tick refill and no rounding loss;
//! an idle allocation may always send one packet, however low the rate.

use std::time::{Duration, Instant};

use super::stats::Traffic;

/// How far ahead of the rate an allocation may run: its bucket holds one second of
/// traffic, enough for a video key frame.
pub const BURST: Duration = Duration::from_secs(1);

pub struct Meter {
    pub traffic: Traffic,
    paid_until: Instant,
}

impl Meter {
    pub fn new(now: Instant) -> Self {
        Self {
            traffic: Traffic::default(),
            paid_until: now,
        }
    }

    /// Admits `bytes` at `bytes_per_second` (0: no limit) and counts them; false when the
    /// allocation is over its rate and the packet must be dropped.
    pub fn admit(&mut self, now: Instant, bytes: usize, bytes_per_second: u64) -> bool {
        if let Some(nanos) = (bytes as u64)
            .saturating_mul(1_000_000_000)
            .checked_div(bytes_per_second)
        {
            let backlog = self.paid_until.saturating_duration_since(now);
            let cost = Duration::from_nanos(nanos);
            // An idle allocation may always send one packet, even one larger than a
            // second's worth: a low rate slows an allocation down, it never silences it.
            if !backlog.is_zero() && backlog + cost > BURST {
                return false;
            }
            self.paid_until = now + backlog + cost;
        }
        self.traffic.count(bytes);
        true
    }

    /// Counts `traffic` that has already gone (the kernel fast path relayed it) and charges
    /// it to the bucket at `bytes_per_second` (0: no limit), however far that runs ahead.
    pub fn charge(&mut self, now: Instant, traffic: Traffic, bytes_per_second: u64) {
        self.traffic.add(&traffic);
        if let Some(nanos) = traffic
            .bytes
            .saturating_mul(1_000_000_000)
            .checked_div(bytes_per_second)
        {
            self.paid_until = self.paid_until.max(now) + Duration::from_nanos(nanos);
        }
    }

    /// When an allocation that has run more than [`BURST`] ahead of `bytes_per_second` is
    /// back within it; `None` while it is within (or there is no limit).
    pub fn over_rate_until(&self, now: Instant, bytes_per_second: u64) -> Option<Instant> {
        if bytes_per_second == 0 {
            return None;
        }
        let back_at = self.paid_until.checked_sub(BURST)?;
        (back_at > now).then_some(back_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut meter = Meter::new(t0);
        // 1000 B/s: a second's worth (10 × 100 B) at once, then nothing more.
        assert!((0..10).all(|_| meter.admit(t0, 100, 1000)));
        assert!(!meter.admit(t0, 100, 1000));
        // 100 ms later, room for 100 B again.
        let t1 = t0 + Duration::from_millis(100);
        assert!(meter.admit(t1, 100, 1000));
        assert!(!meter.admit(t1, 100, 1000));
        assert_eq!(meter.traffic.packets, 11);
        assert_eq!(meter.traffic.bytes, 1100);
    }

    #[test]
    fn sustained_rate_matches_the_limit() {
        let t0 = Instant::now();
        let mut meter = Meter::new(t0);
        // 1 MB/s offered as 1200 B packets every 100 µs (12 MB/s) for 10 s.
        let admitted: u64 = (0..100_000u64)
            .filter(|i| meter.admit(t0 + Duration::from_micros(i * 100), 1200, 1_000_000))
            .count() as u64
            * 1200;
        // 10 s at the rate plus the one-second burst, within one packet.
        assert!((10_998_000..=11_001_200).contains(&admitted), "{admitted}");
    }

    #[test]
    fn an_idle_allocation_may_send_one_packet_larger_than_the_burst() {
        let t0 = Instant::now();
        let mut meter = Meter::new(t0);
        assert!(meter.admit(t0, 1200, 1000));
        assert!(!meter.admit(t0 + Duration::from_millis(500), 1200, 1000));
        assert!(meter.admit(t0 + Duration::from_millis(1200), 1200, 1000));
    }

    #[test]
    fn charged_traffic_puts_an_allocation_over_its_rate_until_it_is_paid_off() {
        let t0 = Instant::now();
        let mut meter = Meter::new(t0);
        let second_and_a_half = Traffic {
            packets: 15,
            bytes: 1500,
        };
        meter.charge(t0, second_and_a_half, 1000);
        assert_eq!(meter.traffic, second_and_a_half);
        assert_eq!(
            meter.over_rate_until(t0, 1000),
            Some(t0 + Duration::from_millis(500))
        );
        assert!(!meter.admit(t0, 1, 1000), "over the rate: dropped");
        assert_eq!(
            meter.over_rate_until(t0 + Duration::from_millis(500), 1000),
            None
        );
        assert_eq!(meter.over_rate_until(t0, 0), None, "no limit");
    }

    #[test]
    fn zero_means_no_limit() {
        let t0 = Instant::now();
        let mut meter = Meter::new(t0);
        assert!((0..1000).all(|_| meter.admit(t0, 65_000, 0)));
    }
}
