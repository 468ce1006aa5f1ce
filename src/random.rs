//! The one random generator of the cores: ChaCha12, seeded by the I/O layer.
//!
//! The cores never read the OS RNG themselves (so a test can replay any run from a seed);
//! they take an [`Rng`] when they are built. A cryptographic generator, because what it
//! picks is sent to clients or decides what they can guess: relay ports, Data indication
//! transaction ids, participant ids. Seeing some of its output tells nothing of the rest.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha12Rng;

/// A seeded cryptographic random generator.
pub struct Rng(ChaCha12Rng);

/// The OS random number generator failed (it does not, on any supported system).
#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed")]
pub struct OsRngFailed;

impl Rng {
    /// A generator whose output is fixed by `seed`: for tests, benchmarks and fuzzing.
    pub fn from_seed(seed: u64) -> Self {
        Self(ChaCha12Rng::seed_from_u64(seed))
    }

    /// A generator seeded from the OS: what a server uses.
    pub fn from_os() -> Result<Self, OsRngFailed> {
        let mut seed = [0u8; 32];
        fill_from_os(&mut seed)?;
        Ok(Self(ChaCha12Rng::from_seed(seed)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Fills `bytes` with random bits.
    pub fn fill(&mut self, bytes: &mut [u8]) {
        self.0.fill_bytes(bytes);
    }
}

/// Fills `bytes` straight from the OS: for keys, which no seed should ever reproduce.
pub fn fill_from_os(bytes: &mut [u8]) -> Result<(), OsRngFailed> {
    use ring::rand::SecureRandom;
    ring::rand::SystemRandom::new()
        .fill(bytes)
        .map_err(|_| OsRngFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_replays_and_different_seeds_differ() {
        let (mut a, mut b, mut c) = (Rng::from_seed(7), Rng::from_seed(7), Rng::from_seed(8));
        let first = a.next_u64();
        assert_eq!(first, b.next_u64());
        assert_ne!(first, c.next_u64());
        let mut bytes = [0u8; 12];
        a.fill(&mut bytes);
        assert_ne!(bytes, [0; 12]);
    }

    #[test]
    fn os_seeded_generators_differ() {
        let mut a = Rng::from_os().unwrap();
        let mut b = Rng::from_os().unwrap();
        assert_ne!(a.next_u64(), b.next_u64());
    }
}
