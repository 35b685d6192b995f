use super::*;
use crate::plan::{plan_promote, plan_standby};
use crate::{key_hash, Member};
use proptest::prelude::*;

fn ring(epoch: u64, members: &[(String, u32)], vnodes: u32) -> Ring {
    let m: Vec<Member> = members.iter().map(|(id, w)| Member::new(id, *w)).collect();
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
        // Every write reaches the session owner of both phases; with one copy per key, nothing
        // else.
        let targets = t.write_targets(k);
        assert_eq!(targets[0], old);
        assert!(targets.contains(&new));
        if t.from().copies() == 1 && t.to().copies() == 1 {
            assert_eq!(targets.len(), if old == new { 1 } else { 2 });
        }
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

/// Checks a move of rings with any replication factor against the holders of sampled keys.
fn check_replicated_move(t: &Transition, keys: &[String]) {
    for w in t.holder_changes().windows(2) {
        assert!(w[0].end < w[1].start, "{:?} {:?}", w[0], w[1]);
    }
    for k in keys {
        let h = key_hash(k);
        let (old, new) = (t.from().replicas(k), t.to().replicas(k));
        let change = t
            .holder_changes()
            .iter()
            .find(|c| c.start <= h && h <= c.end);
        // A key is in a holder change exactly when its holders differ, and it says how.
        assert_eq!(change.is_some(), old != new, "{k}");
        if let Some(c) = change {
            assert_eq!((&c.before, &c.after), (&old.to_owned(), &new.to_owned()));
        }
        // Writes reach every holder of either ring, each once, the session owner first.
        let targets = t.write_targets(k);
        assert_eq!(targets[0], t.session_owner(k, false));
        let want: BTreeSet<&str> = old.all().chain(new.all()).collect();
        assert_eq!(
            targets.iter().copied().collect::<BTreeSet<_>>(),
            want,
            "{k}"
        );
        assert_eq!(targets.len(), want.len());
        for n in t.nodes() {
            let fills = t.fills(n).any(|c| c.start <= h && h <= c.end);
            let releases = t.releases(n).any(|c| c.start <= h && h <= c.end);
            let gives = t.gives(n).any(|c| c.start <= h && h <= c.end);
            // A node is filled with what it will hold and lacks, drops what it will no longer
            // hold, and the current owner gives to whoever is filled.
            assert_eq!(fills, new.holds(n) && !old.holds(n), "{k} {n}");
            assert_eq!(releases, old.holds(n) && !new.holds(n), "{k} {n}");
            let anyone_filled = new.all().any(|m| !old.holds(m));
            assert_eq!(gives, old.owner == n && anyone_filled, "{k} {n}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// With one copy per key the holders' changes are the owners' segments.
    #[test]
    fn one_copy_holder_changes_are_the_segments(ms in members(), w in 1u32..=3, add in any::<bool>(), pick in 0usize..7) {
        let from = ring(2, &ms, 64);
        let to = if add || ms.len() == 1 {
            plan_add(&from, "new", w).unwrap()
        } else {
            plan_remove(&from, &ms[pick % ms.len()].0).unwrap()
        };
        let t = Transition::new(from, to).unwrap();
        let as_segments: Vec<(u64, u64, &str, &str)> = t
            .holder_changes()
            .iter()
            .map(|c| {
                assert!(c.before.followers.is_empty() && c.after.followers.is_empty());
                (c.start, c.end, c.before.owner.as_str(), c.after.owner.as_str())
            })
            .collect();
        let segments: Vec<(u64, u64, &str, &str)> = t
            .segments()
            .iter()
            .map(|s| (s.start, s.end, s.from.as_str(), s.to.as_str()))
            .collect();
        prop_assert_eq!(as_segments, segments);
        for n in t.nodes() {
            prop_assert_eq!(t.gives(n).count(), t.copies_of(n).count());
        }
    }

    /// Any sequence of adds, removes, standbys and promotions with 2 or 3 copies: every step's
    /// writes reach every holder of both rings, fills, gives and releases are exactly the
    /// differences, and each step is a valid move.
    #[test]
    fn replicated_moves_write_to_every_holder(
        rf in 2u32..=3,
        ops in prop::collection::vec((0u8..4, 0usize..6, 1u32..=3), 1..6),
    ) {
        let mut cur = ring(1, &[("n0".into(), 1), ("n1".into(), 2)], 32).with_replication(rf).unwrap();
        let mut next_id = 1;
        for (op, pick, w) in ops {
            let ids: Vec<String> = cur.members().map(|(id, _)| id.to_string()).collect();
            let standbys: Vec<&String> = ids.iter().filter(|i| !cur.state(i).unwrap().is_active()).collect();
            let next = match op {
                0 => {
                    next_id += 1;
                    plan_add(&cur, &format!("n{next_id}"), w)
                }
                1 => {
                    next_id += 1;
                    plan_standby(&cur, &format!("n{next_id}"), w)
                }
                2 if !standbys.is_empty() => plan_promote(&cur, standbys[pick % standbys.len()]),
                _ => plan_remove(&cur, &ids[pick % ids.len()]),
            };
            // A refused plan (the last active member) changes nothing.
            let Ok(next) = next else { continue };
            prop_assert_eq!(next.replication_factor(), rf);
            let t = Transition::new(cur.clone(), next.clone()).unwrap();
            check_replicated_move(&t, &keys()[..300]);
            check_move(&t, &keys()[..300]);
            cur = next;
        }
    }
}
