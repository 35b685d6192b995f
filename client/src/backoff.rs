//! Capped exponential backoff with seeded jitter: the one retry schedule of the client.

use std::time::Duration;

/// `min · 2ⁿ` before the n-th retry in a row, never more than `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `n` failures in a row (`n = 0`: `min`).
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }
}

/// Spreads retries of many clients over time (factor in [0.5, 1.5)), from a seed so that a
/// seeded workload stays reproducible. splitmix64: tiny, and good enough for jitter.
#[derive(Debug, Clone)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `d` times a factor in [0.5, 1.5).
    pub(crate) fn apply(&mut self, d: Duration) -> Duration {
        // 53 random bits as a fraction in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_min_up_to_max() {
        let b = Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        let ms: Vec<u128> = (0..8).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        assert_eq!(b.delay(u32::MAX), b.max, "no overflow");
    }

    #[test]
    fn jitter_stays_within_half_and_one_and_a_half() {
        let mut j = Jitter::new(7);
        let d = Duration::from_millis(1000);
        let got: Vec<Duration> = (0..1000).map(|_| j.apply(d)).collect();
        assert!(got.iter().all(|g| *g >= d / 2 && *g < d.mul_f64(1.5)));
        assert!(got.iter().any(|g| *g < d) && got.iter().any(|g| *g > d));
        let mut again = Jitter::new(7);
        assert_eq!(again.apply(d), got[0], "same seed, same jitter");
    }
}
