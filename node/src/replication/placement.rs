//! Who holds which keys in one ring, from this node's side: the followers of each key it owns,
//! and the owner of each key it follows. Built once per ring (`Ring::placed_segments`), then
//! answered by binary search on every write.

use std::collections::BTreeMap;

use chat_ring::replicas::{PlacedSegment, ReplicaSet};
use chat_ring::Ring;

pub(crate) struct Placement {
    epoch: u64,
    me: String,
    /// The whole circle, in hash order.
    segments: Vec<PlacedSegment>,
    /// Per follower of this node's keys, the ranges it follows (adjacent ones merged).
    followers: BTreeMap<String, Vec<(u64, u64)>>,
}

impl Placement {
    pub(crate) fn new(ring: &Ring, me: &str) -> Placement {
        let segments = ring.placed_segments();
        let mut followers: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
        for s in segments.iter().filter(|s| s.replicas.owner == me) {
            for f in &s.replicas.followers {
                let ranges = followers.entry(f.clone()).or_default();
                match ranges.last_mut() {
                    Some(last) if last.1.checked_add(1) == Some(s.start) => last.1 = s.end,
                    _ => ranges.push((s.start, s.end)),
                }
            }
        }
        Placement {
            epoch: ring.epoch(),
            me: me.to_string(),
            segments,
            followers,
        }
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The holders of the keys with owner hash `h`.
    pub(crate) fn holders(&self, h: u64) -> &ReplicaSet {
        // Segments cover the circle from 0: the last one starting at or before `h`.
        let i = self.segments.partition_point(|s| s.start <= h);
        &self.segments[i.saturating_sub(1)].replicas
    }

    /// The followers of a key this node owns; none for a key owned elsewhere.
    pub(crate) fn my_followers(&self, h: u64) -> &[String] {
        let r = self.holders(h);
        if r.owner == self.me {
            &r.followers
        } else {
            &[]
        }
    }

    /// Every follower of this node's keys, with the ranges it follows.
    pub(crate) fn followers(&self) -> &BTreeMap<String, Vec<(u64, u64)>> {
        &self.followers
    }

    /// Whether `owner` owns, and this node follows, every key hash in `start..=end`.
    pub(crate) fn follows(&self, owner: &str, start: u64, end: u64) -> bool {
        if start > end {
            return false;
        }
        let first = self.segments.partition_point(|s| s.start <= start).max(1) - 1;
        for s in &self.segments[first..] {
            if s.start > end {
                break;
            }
            let r = &s.replicas;
            if r.owner != owner || !r.followers.contains(&self.me) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring(copies: u32) -> Ring {
        Ring::equal(3, &["n1", "n2", "n3"], 16)
            .unwrap()
            .with_replication(copies)
            .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Every answer agrees with the ring's own `replicas_at`.
        #[test]
        fn answers_agree_with_the_ring(h in any::<u64>(), len in 0u64..1 << 60, copies in 1u32..4) {
            let ring = ring(copies);
            for me in ["n1", "n2", "n3"] {
                let p = Placement::new(&ring, me);
                let r = ring.replicas_at(h);
                prop_assert_eq!(&p.holders(h).owner, r.owner);
                let mine: Vec<&str> = p.my_followers(h).iter().map(String::as_str).collect();
                if r.owner == me {
                    prop_assert_eq!(&mine, &r.followers);
                    for f in &r.followers {
                        prop_assert!(p.followers()[*f].iter().any(|(a, z)| *a <= h && h <= *z));
                    }
                } else {
                    prop_assert!(mine.is_empty());
                }
                // `follows` over a range: true exactly when every segment in it says so.
                let end = h.saturating_add(len);
                let model = ring.placed_segments().iter()
                    .filter(|s| s.end >= h && s.start <= end)
                    .all(|s| s.replicas.owner == "n1" && s.replicas.followers.iter().any(|f| f == me));
                prop_assert_eq!(p.follows("n1", h, end), model);
            }
        }
    }

    #[test]
    fn one_copy_has_no_followers_and_three_nodes_with_two_copies_have_two_each() {
        let p = Placement::new(&ring(1), "n1");
        assert!(p.followers().is_empty());
        assert!(!p.follows("n2", 0, 0));
        let p = Placement::new(&ring(2), "n1");
        let f: Vec<&str> = p.followers().keys().map(String::as_str).collect();
        assert_eq!(f, ["n2", "n3"], "n1's keys are followed by both others");
        assert!(!p.follows("n1", 5, 4), "an empty range is refused");
    }
}
