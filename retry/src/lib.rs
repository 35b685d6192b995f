//! How long to wait between attempts. Every retry loop of the workspace (etcd sessions, peer
//! dials, forward requests, move streams, client devices) waits the same way: `min` after the
//! first failure, doubling with each further failure up to `max`, and a success starts over.
//! No clock is read here: callers add the wait to their own `now`. [`Jitter`] spreads the
//! retries of many clients.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Failures in a row so far.
    failures: u32,
}

impl Backoff {
    /// `min` must not be zero (it would never grow) nor above `max`.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        assert!(!min.is_zero() && min.as_nanos() <= max.as_nanos());
        Backoff {
            min,
            max,
            failures: 0,
        }
    }

    /// The wait after `n + 1` failures in a row: `min · 2ⁿ`, at most `max`.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// An attempt failed: how long to wait before the next one.
    pub fn fail(&mut self) -> Duration {
        let wait = self.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Whether the last attempt failed.
    pub fn backing_off(&self) -> bool {
        self.failures > 0
    }
}

/// Spreads retries of many clients over time (a factor in [0.5, 1.5)), from a seed so that a
/// seeded workload stays reproducible. splitmix64: tiny, and good enough for jitter.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
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
    pub fn apply(&mut self, d: Duration) -> Duration {
        // 53 random bits as a fraction in [0, 1).
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(0.5 + unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn waits_double_up_to_the_cap_and_start_over_after_a_success() {
        let mut b = Backoff::new(100 * MS, 500 * MS);
        assert!(!b.backing_off());
        let waits: Vec<_> = (0..5).map(|_| b.fail()).collect();
        assert_eq!(waits, [100 * MS, 200 * MS, 400 * MS, 500 * MS, 500 * MS]);
        assert!(b.backing_off());
        b.reset();
        assert_eq!(b.fail(), 100 * MS);
        assert_eq!(b.delay(u32::MAX), 500 * MS, "no overflow");
        let many = Backoff::new(50 * MS, 2000 * MS);
        let ms: Vec<u128> = (0..8).map(|n| many.delay(n).as_millis()).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
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
