//! A token bucket with the time passed in: no clock, no I/O, so its promises are property-tested.

/// A bucket's shape: it holds at most `burst` tokens and refills `per_min` tokens a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_min: u32,
    pub burst: u32,
}

impl Rate {
    /// No limit.
    pub const OFF: Rate = Rate {
        per_min: 0,
        burst: 0,
    };

    /// A rate of 0 turns the limit off.
    pub fn is_off(self) -> bool {
        self.per_min == 0
    }

    /// Milliseconds to refill one token (at least 1).
    fn ms_per_token(self) -> u64 {
        (60_000 / u64::from(self.per_min.max(1))).max(1)
    }

    /// Milliseconds for an empty bucket to fill up: after that long untouched a bucket is as good
    /// as new and can be forgotten.
    pub fn full_after_ms(self) -> u64 {
        self.ms_per_token() * u64::from(self.burst.max(1))
    }
}

/// The state of one bucket: when it was full, in the bucket's own terms. `full_at_ms` is the
/// moment the bucket is (or was) full; each token taken moves it one refill period later. A
/// bucket whose `full_at_ms` lies more than `burst` periods ahead is empty.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bucket {
    full_at_ms: u64,
}

impl Bucket {
    /// Takes one token at `now_ms`, or says how many milliseconds until one is available.
    pub fn take(&mut self, rate: Rate, now_ms: u64) -> Result<(), u64> {
        if rate.is_off() {
            return Ok(());
        }
        let per = rate.ms_per_token();
        let full_at = self.full_at_ms.max(now_ms);
        let next = full_at + per;
        // At most `burst` tokens may be owed at once.
        let limit = now_ms + per * u64::from(rate.burst.max(1));
        if next > limit {
            return Err(next - limit);
        }
        self.full_at_ms = next;
        Ok(())
    }

    /// Whether the bucket is full at `now_ms` (it remembers nothing worth keeping).
    pub fn is_full(&self, now_ms: u64) -> bool {
        self.full_at_ms <= now_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let rate = Rate {
            per_min: 60,
            burst: 3,
        };
        let mut b = Bucket::default();
        for _ in 0..3 {
            b.take(rate, 10_000).unwrap();
        }
        assert_eq!(b.take(rate, 10_000), Err(1_000));
        assert_eq!(b.take(rate, 10_400), Err(600));
        b.take(rate, 11_000).unwrap();
        assert_eq!(b.take(rate, 11_000), Err(1_000));
        assert!(!b.is_full(11_000));
        assert!(!b.is_full(13_999));
        assert!(b.is_full(14_000));
    }

    #[test]
    fn an_off_limit_takes_everything() {
        let off = Rate::OFF;
        let mut b = Bucket::default();
        for t in 0..10_000 {
            b.take(off, t / 100).unwrap();
        }
    }

    proptest! {
        /// Over any window, no more than `burst` + the window's refill is let through, and a
        /// refusal's hint is exact: waiting that long, the next take succeeds.
        #[test]
        fn never_more_than_burst_plus_refill_and_the_hint_is_exact(
            per_min in 1u32..10_000,
            burst in 1u32..200,
            gaps in proptest::collection::vec(0u64..500, 1..400),
        ) {
            let rate = Rate { per_min, burst };
            let mut b = Bucket::default();
            let mut now = 1_000_000u64;
            let mut passed: Vec<u64> = Vec::new();
            for g in gaps {
                now += g;
                match b.take(rate, now) {
                    Ok(()) => passed.push(now),
                    Err(wait) => {
                        prop_assert!(wait >= 1);
                        let mut probe = b;
                        prop_assert!(probe.take(rate, now + wait).is_ok());
                        let mut early = b;
                        prop_assert!(early.take(rate, now + wait - 1).is_err());
                    }
                }
            }
            let per = rate.ms_per_token();
            for (i, start) in passed.iter().enumerate() {
                let in_window = passed[i..].iter().take_while(|t| **t <= start + 10_000).count() as u64;
                prop_assert!(in_window <= u64::from(burst) + 10_000 / per + 1,
                    "{in_window} passed within 10 s");
            }
        }
    }
}
