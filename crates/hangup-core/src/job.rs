//! The job: a SHA-256 hash chain, real CPU work with a checkable answer (SPEC §3).
//!
//! H0 is the seed's UTF-8 bytes, H(i+1) = SHA-256(H(i)); the answer is H(rounds).
//! [`HashChain::advance`] runs a bounded slice of rounds so that the caller can check
//! for cancellation between slices.

use sha2::{Digest, Sha256};

/// Rounds per slice between two looks at the cancellation: one SHA-256 of 32 bytes
/// costs 50–300 ns on current x86 (with or without SHA extensions), so a slice takes
/// 3–20 µs, which a cancelled job waits half of on average (256 rounds took 12.9 µs
/// here, with SHA extensions); the look itself is one atomic load.
pub const ROUNDS_PER_SLICE: u64 = 64;

/// A hash chain in progress.
#[derive(Debug, Clone)]
pub struct HashChain {
    current: [u8; 32],
    done: u64,
    rounds: u64,
}

impl HashChain {
    /// A chain of `rounds` rounds (at least 1) from `seed`.
    pub fn new(seed: &[u8], rounds: u64) -> Self {
        assert!(rounds >= 1, "a job has at least one round");
        Self {
            current: Sha256::digest(seed).into(),
            done: 1,
            rounds,
        }
    }

    /// Runs up to `max` more rounds; returns the digest once all rounds are done.
    pub fn advance(&mut self, max: u64) -> Option<[u8; 32]> {
        let end = self.rounds.min(self.done.saturating_add(max));
        while self.done < end {
            self.current = Sha256::digest(self.current).into();
            self.done += 1;
        }
        (self.done == self.rounds).then_some(self.current)
    }

    /// Rounds completed so far.
    pub fn rounds_done(&self) -> u64 {
        self.done
    }
}

/// Runs a whole chain, checking `cancelled` between slices of [`ROUNDS_PER_SLICE`]
/// rounds. Returns `None` if it was cancelled.
pub fn run_chain(seed: &[u8], rounds: u64, cancelled: impl Fn() -> bool) -> Option<[u8; 32]> {
    let mut chain = HashChain::new(seed, rounds);
    loop {
        if let Some(digest) = chain.advance(ROUNDS_PER_SLICE) {
            return Some(digest);
        }
        if cancelled() {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn one_round_is_sha256_of_the_seed() {
        // `printf hangup | sha256sum`, computed outside this code.
        let expected = "033ee1e762e5be87ffee1afa1e573e6bdfc01811ec246c42a0e864cf93def224";
        let digest = run_chain(b"hangup", 1, || false).unwrap();
        assert_eq!(hex::encode(digest), expected);
    }

    #[test]
    fn three_rounds_match_an_independent_computation() {
        // Python: h=b"hangup"; 3 x h=hashlib.sha256(h).digest()
        let expected = "21ae487329ef041eea42b9805802737c3ab8d0fb5cbccd5d96c58e0001a39be2";
        assert_eq!(
            hex::encode(run_chain(b"hangup", 3, || false).unwrap()),
            expected
        );
    }

    #[test]
    fn chain_matches_repeated_hashing() {
        let mut h: Vec<u8> = b"seed".to_vec();
        for _ in 0..1000 {
            h = Sha256::digest(&h).to_vec();
        }
        assert_eq!(run_chain(b"seed", 1000, || false).unwrap().to_vec(), h);
        let mut chain = HashChain::new(b"seed", 1000);
        let mut slices = 0;
        let digest = loop {
            slices += 1;
            if let Some(d) = chain.advance(7) {
                break d;
            }
        };
        assert_eq!(digest.to_vec(), h);
        assert_eq!(slices, 143);
    }

    #[test]
    fn cancellation_stops_within_a_slice() {
        let checks = Cell::new(0u32);
        let out = run_chain(b"x", u64::MAX, || {
            checks.set(checks.get() + 1);
            checks.get() >= 3
        });
        assert_eq!(out, None);
        assert_eq!(checks.get(), 3);
    }
}
