//! The campaigns' one source of choices: SplitMix64, seeded. A seed is the
//! whole recipe of a campaign (which fault, which node, how long), so the
//! real campaign (`tandem chaos`) and the simulated one (`tandem-core`'s
//! tests) draw from the same small generator: tiny, well mixed even for
//! consecutive seeds (1, 2, 3 give unrelated streams), and no dependency.

use std::time::Duration;

/// A seeded SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// The generator of `seed`.
    pub fn new(seed: u64) -> SplitMix {
        SplitMix(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// An index below `n` (0 when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.range(0, n as u64) as usize
    }

    /// True `permille` times in a thousand.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.range(0, 1000) < permille
    }

    /// A duration from `lo` to `hi`, both included, in whole milliseconds.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.range(0, span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_stream_and_draws_stay_in_range() {
        let (mut a, mut b) = (SplitMix::new(7), SplitMix::new(7));
        let first: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        assert_eq!(first, (0..5).map(|_| b.next_u64()).collect::<Vec<_>>());
        assert_ne!(first[0], SplitMix::new(8).next_u64());
        for _ in 0..1000 {
            assert!((3..9).contains(&a.range(3, 9)));
            assert!(a.index(4) < 4);
            let d = a.between(Duration::from_millis(10), Duration::from_millis(20));
            assert!((10..=20).contains(&d.as_millis()));
        }
        assert_eq!(a.range(5, 5), 5);
        assert_eq!(a.index(0), 0);
    }
}
