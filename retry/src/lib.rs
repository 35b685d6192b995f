//! How long to wait between attempts. Every retry loop of the workspace (etcd sessions, peer
//! dials, forward requests, move streams) waits the same way: the first wait after a failure is
//! `min`, each further failure doubles it up to `max`, and a success starts over. No clock is
//! read here: callers add the wait to their own `now`.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The wait the next failure gets.
    next: Duration,
}

impl Backoff {
    /// `min` must not be zero (it would never grow) nor above `max`.
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        assert!(!min.is_zero() && min.as_nanos() <= max.as_nanos());
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// An attempt failed: how long to wait before the next one.
    pub fn fail(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).clamp(self.min, self.max);
        wait
    }

    /// An attempt succeeded: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }

    /// Whether the last attempt failed (the next wait is past `min`).
    pub fn backing_off(&self) -> bool {
        self.next > self.min
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
    }
}
