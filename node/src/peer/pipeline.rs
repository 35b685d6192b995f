//! What the outbox forwarder and a move's streams share: per destination, at most `depth`
//! requests in flight (a move's streams use 1, so a destination applies requests in the order
//! they were made; the forwarder more, keeping each recipient's entries in one request at a
//! time itself), and after a failed request a wait (one [`Backoff`] per destination) before the
//! next. No I/O: the time is passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use chat_retry::Backoff;
use tokio::time::Instant;

#[derive(Debug)]
struct Lane {
    /// Requests in flight.
    inflight: usize,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

#[derive(Debug)]
pub(crate) struct Lanes {
    min: Duration,
    max: Duration,
    /// Most requests in flight per destination.
    depth: usize,
    lanes: BTreeMap<String, Lane>,
}

impl Lanes {
    pub(crate) fn new(min: Duration, max: Duration, depth: usize) -> Lanes {
        Lanes {
            min,
            max,
            depth: depth.max(1),
            lanes: BTreeMap::new(),
        }
    }

    fn lane(&mut self, dest: &str) -> &mut Lane {
        let (min, max) = (self.min, self.max);
        self.lanes.entry(dest.to_string()).or_insert_with(|| Lane {
            inflight: 0,
            retry_at: None,
            backoff: Backoff::new(min, max),
        })
    }

    /// Whether a request to `dest` may start at `now`: fewer than `depth` in flight, and no
    /// wait pending.
    pub(crate) fn ready(&self, dest: &str, now: Instant) -> bool {
        self.lanes
            .get(dest)
            .is_none_or(|l| l.inflight < self.depth && l.retry_at.is_none_or(|t| t <= now))
    }

    #[cfg(test)]
    fn inflight(&self, dest: &str) -> usize {
        self.lanes.get(dest).map_or(0, |l| l.inflight)
    }

    /// A request to `dest` starts.
    pub(crate) fn start(&mut self, dest: &str) {
        let depth = self.depth;
        let l = self.lane(dest);
        debug_assert!(l.inflight < depth, "at most `depth` requests in flight");
        l.inflight += 1;
    }

    /// The request to `dest` is over: on success the next may start at once; on failure it
    /// waits, and the wait is returned.
    pub(crate) fn done(&mut self, dest: &str, ok: bool, now: Instant) -> Option<Duration> {
        let l = self.lane(dest);
        l.inflight = l.inflight.saturating_sub(1);
        if ok {
            l.backoff.reset();
            l.retry_at = None;
            None
        } else {
            let wait = l.backoff.fail();
            l.retry_at = Some(now + wait);
            Some(wait)
        }
    }

    /// The earliest end of a wait among the destinations with room for a request that
    /// `with_work` says have something to send.
    pub(crate) fn wake_at(&self, with_work: impl Fn(&str) -> bool) -> Option<Instant> {
        self.lanes
            .iter()
            .filter(|(d, l)| l.inflight < self.depth && with_work(d))
            .filter_map(|(_, l)| l.retry_at)
            .min()
    }

    /// Ends every wait (a peer came back): the next attempt is now.
    pub(crate) fn retry_now(&mut self) {
        for l in self.lanes.values_mut() {
            l.retry_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_failure_makes_only_its_destination_wait_and_a_success_clears_it() {
        let t0 = Instant::now();
        let mut l = Lanes::new(100 * MS, 400 * MS, 1);
        assert!(l.ready("n2", t0));
        l.start("n2");
        l.start("n3");
        assert!(!l.ready("n2", t0), "one in flight");
        assert_eq!(l.done("n2", false, t0), Some(100 * MS));
        assert!(!l.ready("n2", t0 + 99 * MS));
        assert!(l.ready("n2", t0 + 100 * MS));
        assert_eq!(l.wake_at(|_| true), Some(t0 + 100 * MS));
        assert_eq!(
            l.wake_at(|d| d != "n2"),
            None,
            "no wait for a destination with no work"
        );
        l.start("n2");
        assert_eq!(l.done("n2", false, t0), Some(200 * MS));
        l.retry_now();
        assert!(l.ready("n2", t0));
        l.start("n2");
        assert_eq!(l.done("n2", true, t0), None);
        l.start("n2");
        assert_eq!(
            l.done("n2", false, t0),
            Some(100 * MS),
            "the backoff started over"
        );
        assert!(l.inflight("n3") == 1 && !l.ready("n3", t0 + 1000 * MS));
    }

    proptest! {
        /// Whatever happens, a destination never has more than `depth` requests in flight, waits
        /// are within the bounds, and they grow only while requests keep failing.
        #[test]
        fn at_most_depth_in_flight_and_bounded_waits(depth in 1usize..4, ops in prop::collection::vec((0usize..3, 0u8..3, 0u32..500), 0..80)) {
            let t0 = Instant::now();
            let mut l = Lanes::new(50 * MS, 800 * MS, depth);
            let mut in_flight = [0usize; 3];
            let mut last_wait = [None::<Duration>; 3];
            for (d, op, at) in ops {
                let dest = format!("n{d}");
                let now = t0 + at * MS;
                match op {
                    0 if l.ready(&dest, now) => {
                        prop_assert!(in_flight[d] < depth);
                        l.start(&dest);
                        in_flight[d] += 1;
                    }
                    1 | 2 if in_flight[d] > 0 => {
                        in_flight[d] -= 1;
                        match l.done(&dest, op == 1, now) {
                            None => last_wait[d] = None,
                            Some(w) => {
                                prop_assert!(w >= 50 * MS && w <= 800 * MS);
                                if let Some(prev) = last_wait[d] {
                                    prop_assert!(w == (prev * 2).min(800 * MS));
                                }
                                last_wait[d] = Some(w);
                            }
                        }
                    }
                    _ => {}
                }
                prop_assert_eq!(l.inflight(&dest), in_flight[d]);
            }
        }
    }
}
