//! The pool of relay ports on one relay address.
//!
//! Ports are picked at random (so relayed addresses are not predictable from one another)
//! from a bitmap of the configured range, which costs 8 KiB for all 65 536 ports.

use std::ops::RangeInclusive;

pub struct PortPool {
    range: RangeInclusive<u16>,
    in_use: Vec<u64>,
    used: usize,
}

impl PortPool {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        let words = (usize::from(*range.end()) >> 6) + 1;
        Self {
            range,
            in_use: vec![0; words],
            used: 0,
        }
    }

    /// Takes a free port, starting the search at a position drawn from `random`; with
    /// `even`, only even ports (EVEN-PORT, RFC 8656 §14.6).
    pub fn acquire(&mut self, random: u64, even: bool) -> Option<u16> {
        let start = u32::from(*self.range.start());
        let size = u32::from(*self.range.end()) - start + 1;
        let first = (random % u64::from(size)) as u32;
        (0..size)
            .map(|i| (start + (first + i) % size) as u16)
            .filter(|port| !even || port % 2 == 0)
            .find(|&port| !self.is_used(port))
            .inspect(|&port| self.set(port, true))
    }

    pub fn release(&mut self, port: u16) {
        if self.range.contains(&port) && self.is_used(port) {
            self.set(port, false);
        }
    }

    pub fn in_use(&self) -> usize {
        self.used
    }

    /// Ports in the range, used or not.
    pub fn capacity(&self) -> usize {
        self.range.len()
    }

    fn is_used(&self, port: u16) -> bool {
        self.in_use[usize::from(port >> 6)] & (1 << (port & 63)) != 0
    }

    fn set(&mut self, port: u16, used: bool) {
        let word = &mut self.in_use[usize::from(port >> 6)];
        if used {
            *word |= 1 << (port & 63);
            self.used += 1;
        } else {
            *word &= !(1 << (port & 63));
            self.used -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_port_once_then_none() {
        let mut pool = PortPool::new(50000..=50009);
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
        let mut pool = PortPool::new(60001..=60005);
        assert!(pool.acquire(3, true).unwrap() % 2 == 0);
        assert!(pool.acquire(3, true).unwrap() % 2 == 0);
        assert_eq!(pool.acquire(3, true), None);
        assert!(pool.acquire(3, false).is_some());
    }

    #[test]
    fn whole_port_space_fits() {
        let mut pool = PortPool::new(0..=65535);
        assert!(pool.acquire(u64::MAX, false).is_some());
        pool.release(65535);
        pool.release(1);
    }
}
