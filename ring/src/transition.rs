//! Moving from one ring version to the next (BRIEF §5), as pure computation.
//!
//! A move is a pair of rings: `from` (current) and `to` (next, one epoch later). The circle of
//! key hashes splits into intervals at every virtual node of either ring; inside an interval both
//! rings have a fixed owner, so the keys that move form a list of [`Segment`]s, each a contiguous
//! range of key hashes (and so, because storage keys begin with the key hash, a contiguous key
//! range on disk).
//!
//! During the move:
//! - the session owner of every key is its `from` owner (one node, always);
//! - writes for a moving key go to both owners ([`Transition::write_targets`]);
//! - the move may commit once every node involved has seen the next ring and every old owner has
//!   copied its segments ([`Transition::may_commit`]).
//!
//! After the commit `to` is the current ring and the session owner is the `to` owner.
//! Nothing here does I/O: node, router and `chatctl` all call these functions, and the property
//! tests below check them exhaustively.

use std::collections::{BTreeMap, BTreeSet};

use crate::{Member, Ring, RingError};

/// A range of key hashes, both ends included, that moves from one node to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub from: String,
    pub to: String,
}

impl Segment {
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.end
    }

    /// The share of the circle this segment covers (0..=1).
    pub fn share(&self) -> f64 {
        ((self.end - self.start) as f64 + 1.0) / 2f64.powi(64)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("the next ring's epoch {next} must be greater than the current {current}")]
    EpochNotGrowing { current: u64, next: u64 },
    #[error("{0:?} is already a member")]
    AlreadyMember(String),
    #[error("{0:?} is not a member")]
    NotMember(String),
    #[error("the last member cannot be removed")]
    LastMember,
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// The ring after adding `node` with `weight` to `current`: same vnodes per weight, epoch + 1.
pub fn plan_add(current: &Ring, node: &str, weight: u32) -> Result<Ring, TransitionError> {
    if current.members.contains_key(node) {
        return Err(TransitionError::AlreadyMember(node.to_string()));
    }
    let mut members: Vec<Member> = current.member_list();
    members.push(Member {
        id: node.to_string(),
        weight,
    });
    Ok(Ring::new(
        current.epoch() + 1,
        &members,
        current.vnodes_per_weight(),
    )?)
}

/// The ring after removing `node` from `current`: epoch + 1.
pub fn plan_remove(current: &Ring, node: &str) -> Result<Ring, TransitionError> {
    if !current.members.contains_key(node) {
        return Err(TransitionError::NotMember(node.to_string()));
    }
    if current.members.len() == 1 {
        return Err(TransitionError::LastMember);
    }
    let members: Vec<Member> = current
        .member_list()
        .into_iter()
        .filter(|m| m.id != node)
        .collect();
    Ok(Ring::new(
        current.epoch() + 1,
        &members,
        current.vnodes_per_weight(),
    )?)
}

/// What one node has reported about the move in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeProgress {
    /// It has seen the next ring (and from then on dual-writes moving keys).
    pub seen: bool,
    /// It has copied every segment it is the old owner of.
    pub copied: bool,
}

/// A move from `from` to `to`.
#[derive(Debug, Clone)]
pub struct Transition {
    from: Ring,
    to: Ring,
    segments: Vec<Segment>,
}

/// Two transitions are the same move when both rings are: the same epochs and members.
impl PartialEq for Transition {
    fn eq(&self, other: &Transition) -> bool {
        let same = |a: &Ring, b: &Ring| a.epoch() == b.epoch() && a.members == b.members;
        same(&self.from, &other.from) && same(&self.to, &other.to)
    }
}

impl Transition {
    pub fn new(from: Ring, to: Ring) -> Result<Transition, TransitionError> {
        if to.epoch() <= from.epoch() {
            return Err(TransitionError::EpochNotGrowing {
                current: from.epoch(),
                next: to.epoch(),
            });
        }
        let segments = moving_segments(&from, &to);
        Ok(Transition { from, to, segments })
    }

    pub fn from(&self) -> &Ring {
        &self.from
    }

    pub fn to(&self) -> &Ring {
        &self.to
    }

    /// Every moving range, in hash order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segments `node` must copy (it owns them now and loses them).
    pub fn copies_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.from == node)
    }

    /// The segments `node` receives.
    pub fn receives<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.to == node)
    }

    /// The segment a key hash lies in, if it moves.
    pub fn segment_of(&self, hash: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.end < hash);
        self.segments.get(i).filter(|s| s.contains(hash))
    }

    /// Where a key moves: `Some((old owner, new owner))`, `None` if it stays.
    pub fn moving(&self, id: &str) -> Option<(&str, &str)> {
        let s = self.segment_of(crate::key_hash(id))?;
        Some((&s.from, &s.to))
    }

    /// The one node that serves sessions for `id` (and assigns its sequence numbers): the old
    /// owner until the move commits, the new one after.
    pub fn session_owner(&self, id: &str, committed: bool) -> &str {
        if committed {
            self.to.owner(id)
        } else {
            self.from.owner(id)
        }
    }

    /// The nodes that must store a write for `id` before it is acknowledged while the move is in
    /// flight: the session owner first, then the new owner if the key moves.
    pub fn write_targets(&self, id: &str) -> Vec<&str> {
        let (old, new) = (self.from.owner(id), self.to.owner(id));
        if old == new {
            vec![old]
        } else {
            vec![old, new]
        }
    }

    /// The share of the key space that moves (0..=1).
    pub fn moved_share(&self) -> f64 {
        self.segments.iter().map(Segment::share).sum()
    }

    /// Every node with a part in the move: members of either ring.
    pub fn nodes(&self) -> BTreeSet<&str> {
        self.from
            .members()
            .chain(self.to.members())
            .map(|(id, _)| id)
            .collect()
    }

    /// How the move ended, judged from a later current ring: committed if it holds the next
    /// ring's members at (or past) its epoch; aborted if it holds other members there (an abort
    /// keeps the old members under the next ring's epoch). Neither while the epoch is older.
    pub fn committed_in(&self, ring: &Ring) -> bool {
        ring.epoch() >= self.to.epoch() && ring.members == self.to.members
    }

    pub fn aborted_in(&self, ring: &Ring) -> bool {
        ring.epoch() >= self.to.epoch() && ring.members != self.to.members
    }

    /// Whether the move may commit: every node of either ring has seen the next ring, and every
    /// node with segments to copy has copied them. A node missing from `progress` has done
    /// neither.
    pub fn may_commit(&self, progress: &BTreeMap<String, NodeProgress>) -> bool {
        let get = |n: &str| progress.get(n).copied().unwrap_or_default();
        self.nodes().into_iter().all(|n| {
            let p = get(n);
            p.seen && (p.copied || self.copies_of(n).next().is_none())
        })
    }
}

/// Compares the owners of both rings interval by interval between consecutive points of either
/// ring, and merges adjacent intervals with the same move.
fn moving_segments(from: &Ring, to: &Ring) -> Vec<Segment> {
    let (pf, pt) = (from.points(), to.points());
    let mut cuts: Vec<u64> = pf.iter().chain(pt.iter()).map(|(h, _)| *h).collect();
    cuts.sort_unstable();
    cuts.dedup();
    // Intervals (cuts[i-1], cuts[i]], plus the wrap-around: (last, MAX] and [0, first], which
    // both belong to the owner of the first point at or after 0 in each ring.
    let mut ranges: Vec<(u64, u64)> = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0u64;
    for &c in &cuts {
        ranges.push((start, c));
        if c == u64::MAX {
            start = u64::MAX;
            break;
        }
        start = c + 1;
    }
    if cuts.last() != Some(&u64::MAX) {
        ranges.push((start, u64::MAX));
    }
    let mut out: Vec<Segment> = Vec::new();
    for (start, end) in ranges {
        let (a, b) = (owner_at(&pf, end), owner_at(&pt, end));
        if a == b {
            continue;
        }
        match out.last_mut() {
            Some(s) if s.end + 1 == start && s.from == a && s.to == b => s.end = end,
            _ => out.push(Segment {
                start,
                end,
                from: a.to_string(),
                to: b.to_string(),
            }),
        }
    }
    out
}

/// The node of the first point at or after `hash`, wrapping to the first point.
fn owner_at<'a>(points: &'a [(u64, &'a str)], hash: u64) -> &'a str {
    let i = points.partition_point(|(p, _)| *p < hash);
    points.get(i).unwrap_or(&points[0]).1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_hash;
    use proptest::prelude::*;

    fn ring(epoch: u64, members: &[(String, u32)], vnodes: u32) -> Ring {
        let m: Vec<Member> = members
            .iter()
            .map(|(id, w)| Member {
                id: id.clone(),
                weight: *w,
            })
            .collect();
        Ring::new(epoch, &m, vnodes).unwrap()
    }

    /// 1 to 7 members named n0.., weights 1 to 3.
    fn members() -> impl Strategy<Value = Vec<(String, u32)>> {
        prop::collection::vec(1u32..=3, 1..=7).prop_map(|ws| {
            ws.into_iter()
                .enumerate()
                .map(|(i, w)| (format!("n{i}"), w))
                .collect()
        })
    }

    fn weight_share(r: &Ring, node: &str) -> f64 {
        let total: u32 = r.members().map(|(_, w)| w).sum();
        r.members().find(|(id, _)| *id == node).unwrap().1 as f64 / total as f64
    }

    /// The exact share of the circle a node owns in a ring (from its points).
    fn owned_share(r: &Ring, node: &str) -> f64 {
        let p = r.points();
        let mut share = 0.0;
        for (i, (h, n)) in p.iter().enumerate() {
            if *n == node {
                let prev = if i == 0 { p[p.len() - 1].0 } else { p[i - 1].0 };
                share += h.wrapping_sub(prev) as f64 / u64::MAX as f64;
            }
        }
        share
    }

    /// Checks what must hold for any move, with sampled keys.
    fn check_move(t: &Transition, keys: &[String]) {
        // Segments are sorted, disjoint, and never empty moves.
        for w in t.segments().windows(2) {
            assert!(w[0].end < w[1].start, "{:?} {:?}", w[0], w[1]);
        }
        for s in t.segments() {
            assert!(s.start <= s.end && s.from != s.to);
        }
        for k in keys {
            let (old, new) = (t.from().owner(k), t.to().owner(k));
            // A key is in a segment exactly when its owner changes, and the segment says how.
            assert_eq!(t.moving(k), (old != new).then_some((old, new)), "{k}");
            // Exactly one session owner in each phase: the old owner, then the new one.
            assert_eq!(t.session_owner(k, false), old);
            assert_eq!(t.session_owner(k, true), new);
            // Every write reaches the session owner of both phases, and nothing else.
            let targets = t.write_targets(k);
            assert_eq!(targets[0], old);
            assert!(targets.contains(&new));
            assert_eq!(targets.len(), if old == new { 1 } else { 2 });
        }
    }

    fn keys() -> Vec<String> {
        (0..2_000).map(|i| format!("user-{i}")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Adding a node moves keys only to it, about its ideal share, and nothing else.
        #[test]
        fn adding_moves_only_to_the_new_node(ms in members(), w in 1u32..=3) {
            let from = ring(5, &ms, 256);
            let to = plan_add(&from, "new", w).unwrap();
            prop_assert_eq!(to.epoch(), 6);
            let t = Transition::new(from, to).unwrap();
            prop_assert!(t.segments().iter().all(|s| s.to == "new"));
            // The moved share is exactly the new node's share of the new ring...
            prop_assert!((t.moved_share() - owned_share(t.to(), "new")).abs() < 1e-9);
            // ...which is within 5 points of the ideal w / total weight (1/(N+1) for equal weights).
            let ideal = weight_share(t.to(), "new");
            prop_assert!((t.moved_share() - ideal).abs() <= 0.05, "{} vs {}", t.moved_share(), ideal);
            check_move(&t, &keys());
        }

        /// Removing a node moves exactly its keys, each to the node that now owns it.
        #[test]
        fn removing_moves_only_the_removed_nodes_keys(ms in members(), pick in 0usize..7) {
            prop_assume!(ms.len() >= 2);
            let gone = ms[pick % ms.len()].0.clone();
            let from = ring(9, &ms, 256);
            let before = owned_share(&from, &gone);
            let to = plan_remove(&from, &gone).unwrap();
            let t = Transition::new(from, to).unwrap();
            prop_assert!(t.segments().iter().all(|s| s.from == gone));
            prop_assert!((t.moved_share() - before).abs() < 1e-9);
            let ideal = weight_share(t.from(), &gone);
            prop_assert!((t.moved_share() - ideal).abs() <= 0.05);
            prop_assert!(t.copies_of(&gone).count() == t.segments().len());
            check_move(&t, &keys());
        }

        /// Any sequence of adds and removes: epochs only grow, and each step is a valid move.
        #[test]
        fn epochs_only_grow_over_any_sequence(ops in prop::collection::vec((any::<bool>(), 0usize..6, 1u32..=3), 1..8)) {
            let mut cur = ring(1, &[("n0".to_string(), 1)], 32);
            let mut next_id = 1;
            for (add, pick, w) in ops {
                let ids: Vec<String> = cur.members().map(|(id, _)| id.to_string()).collect();
                let next = if add || ids.len() == 1 {
                    next_id += 1;
                    plan_add(&cur, &format!("n{next_id}"), w).unwrap()
                } else {
                    plan_remove(&cur, &ids[pick % ids.len()]).unwrap()
                };
                prop_assert!(next.epoch() > cur.epoch());
                let t = Transition::new(cur.clone(), next.clone()).unwrap();
                check_move(&t, &keys()[..300]);
                // The reverse move is refused: it would make the epoch go back.
                prop_assert!(Transition::new(next.clone(), cur).is_err());
                cur = next;
            }
        }

        /// A move commits only when every node of either ring has seen it and every old owner
        /// has copied.
        #[test]
        fn commit_needs_every_node_seen_and_every_old_owner_copied(
            ms in members(), seen in prop::collection::vec(any::<bool>(), 8), copied in prop::collection::vec(any::<bool>(), 8)
        ) {
            let from = ring(1, &ms, 64);
            let t = Transition::new(from.clone(), plan_add(&from, "new", 1).unwrap()).unwrap();
            let nodes: Vec<String> = t.nodes().into_iter().map(String::from).collect();
            let progress: BTreeMap<String, NodeProgress> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), NodeProgress { seen: seen[i], copied: copied[i] }))
                .collect();
            let expect = nodes.iter().enumerate().all(|(i, n)| {
                seen[i] && (copied[i] || t.copies_of(n).next().is_none())
            });
            prop_assert_eq!(t.may_commit(&progress), expect);
            // Everyone done: commits; anyone missing: does not.
            let done: BTreeMap<String, NodeProgress> = nodes
                .iter()
                .map(|n| (n.clone(), NodeProgress { seen: true, copied: true }))
                .collect();
            prop_assert!(t.may_commit(&done));
            let mut missing = done.clone();
            missing.remove("new");
            prop_assert!(!t.may_commit(&missing));
        }
    }

    /// Segments are found by key hash at their edges too.
    #[test]
    fn segment_edges_belong_to_the_segment() {
        let ms: Vec<(String, u32)> = (0..3).map(|i| (format!("n{i}"), 1)).collect();
        let from = ring(1, &ms, 16);
        let t = Transition::new(from.clone(), plan_add(&from, "n3", 1).unwrap()).unwrap();
        assert!(!t.segments().is_empty());
        for s in t.segments() {
            for h in [s.start, s.end, s.start + (s.end - s.start) / 2] {
                assert_eq!(t.segment_of(h), Some(s));
                assert_eq!(owner_at(&t.to().points(), h), s.to);
                assert_eq!(owner_at(&t.from().points(), h), s.from);
            }
            if s.start > 0 {
                assert_ne!(t.segment_of(s.start - 1), Some(s));
            }
        }
        // Keys hash to their segment.
        for i in 0..1000 {
            let k = format!("k{i}");
            let moving = t.segment_of(key_hash(&k)).is_some();
            assert_eq!(moving, from.owner(&k) != t.to().owner(&k));
        }
    }

    #[test]
    fn plans_refuse_what_cannot_be_done() {
        let from = ring(1, &[("a".into(), 1), ("b".into(), 1)], 8);
        assert_eq!(
            plan_add(&from, "a", 1).unwrap_err(),
            TransitionError::AlreadyMember("a".into())
        );
        assert_eq!(
            plan_remove(&from, "zz").unwrap_err(),
            TransitionError::NotMember("zz".into())
        );
        let one = plan_remove(&from, "a").unwrap();
        assert_eq!(
            plan_remove(&one, "b").unwrap_err(),
            TransitionError::LastMember
        );
        assert!(matches!(
            Transition::new(from.clone(), from),
            Err(TransitionError::EpochNotGrowing { .. })
        ));
    }
}
