use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::plan::{plan_add, plan_promote, plan_remove, plan_standby, plan_without};
use crate::transition::Transition;
use crate::{Member, MemberState};

/// 1 to 7 members named n0.., weights 1 to 3, some standby (at least one active).
fn members() -> impl Strategy<Value = Vec<Member>> {
    prop::collection::vec((1u32..=3, any::<bool>()), 1..=7).prop_map(|ms| {
        let mut out: Vec<Member> = ms
            .into_iter()
            .enumerate()
            .map(|(i, (w, standby))| Member {
                state: match standby {
                    true => MemberState::Standby,
                    false => MemberState::Active,
                },
                ..Member::new(format!("n{i}"), w)
            })
            .collect();
        out[0].state = MemberState::Active;
        out
    })
}

fn active(ms: &[Member]) -> Vec<Member> {
    ms.iter().map(|m| Member::new(&m.id, m.weight)).collect()
}

fn ring(ms: &[Member], vnodes: u32, rf: u32) -> Ring {
    Ring::new(3, ms, vnodes)
        .unwrap()
        .with_replication(rf)
        .unwrap()
}

/// Every member's points, computed with nothing shared with the code.
fn model_points(r: &Ring) -> Vec<(u64, String)> {
    let mut points: Vec<(u64, String)> = Vec::new();
    let hasher = crate::StableHasher::default();
    for (id, w) in r.members() {
        for index in 0..w * r.vnodes_per_weight() {
            let v = crate::VNode {
                node: id.to_string(),
                index,
            };
            points.push((
                std::hash::BuildHasher::hash_one(&hasher, &v),
                id.to_string(),
            ));
        }
    }
    points.sort();
    points
}

/// The rule written out: the points walked clockwise from the hash.
fn model(r: &Ring, points: &[(u64, String)], hash: u64) -> (String, Vec<String>) {
    let start = points.iter().position(|(p, _)| *p >= hash).unwrap_or(0);
    let mut candidates: Vec<String> = Vec::new();
    for i in 0..points.len() {
        let m = &points[(start + i) % points.len()].1;
        if !candidates.contains(m) {
            candidates.push(m.clone());
        }
    }
    let is_active = |m: &String| r.state(m) == Some(MemberState::Active);
    let k = (r.replication_factor() as usize).min(candidates.len());
    let mut set: Vec<String> = candidates[..k].to_vec();
    let owner = match set.iter().find(|m| is_active(m)) {
        Some(o) => o.clone(),
        None => {
            let o = candidates.iter().find(|m| is_active(m)).unwrap().clone();
            set[k - 1] = o.clone();
            o
        }
    };
    let followers = set.into_iter().filter(|m| *m != owner).collect();
    (owner, followers)
}

fn hashes() -> Vec<u64> {
    let mut h: Vec<u64> = (0..400)
        .map(|i| crate::key_hash(&format!("user-{i}")))
        .collect();
    h.extend([0, 1, u64::MAX]);
    h
}

fn set(r: &ReplicaSet) -> BTreeSet<&str> {
    r.all().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The holders are the model's: distinct, as many as the ring has copies, the owner active
    /// and the same as `owner`.
    #[test]
    fn replicas_follow_the_rule(ms in members(), rf in 1u32..=4) {
        let r = ring(&ms, 32, rf);
        let points = model_points(&r);
        for h in hashes() {
            let got = r.replicas_at(h);
            let (owner, followers) = model(&r, &points, h);
            prop_assert_eq!(got.owner, owner.as_str());
            prop_assert_eq!(&got.followers, &followers.iter().map(String::as_str).collect::<Vec<_>>());
            let all: BTreeSet<&str> = got.all().collect();
            prop_assert_eq!(all.len(), r.copies());
            prop_assert_eq!(r.state(got.owner), Some(MemberState::Active));
        }
        for k in ["alice", "bob", "", "group:x"] {
            prop_assert_eq!(r.replicas(k).owner, r.owner(k));
        }
    }

    /// The placed segments cover the circle once, in order, and agree with `replicas_at` at
    /// their edges.
    #[test]
    fn placed_segments_cover_the_circle(ms in members(), rf in 1u32..=3) {
        let r = ring(&ms, 16, rf);
        let segs = r.placed_segments();
        prop_assert_eq!(segs[0].start, 0);
        prop_assert_eq!(segs.last().unwrap().end, u64::MAX);
        for w in segs.windows(2) {
            prop_assert_eq!(w[0].end + 1, w[1].start);
            prop_assert!(w[0].replicas != w[1].replicas);
        }
        for s in &segs {
            for h in [s.start, s.end, s.start + (s.end - s.start) / 2] {
                prop_assert_eq!(&r.replicas_at(h).to_owned(), &s.replicas);
            }
        }
        let total: f64 = segs.iter().map(|s| share(s.start, s.end)).sum();
        prop_assert!((total - 1.0).abs() < 1e-9);
    }

    /// Adding an active member changes at most one holder of any key, and only to the new
    /// member; owners change only to it.
    #[test]
    fn adding_changes_one_holder_at_most(ms in members(), rf in 1u32..=3, w in 1u32..=3) {
        let from = ring(&ms, 64, rf);
        let to = plan_add(&from, "new", w).unwrap();
        for c in changes(&from, &to) {
            let (b, a) = (set(&c.before), set(&c.after));
            prop_assert!(b.difference(&a).count() <= 1, "{:?}", c);
            prop_assert!(a.difference(&b).all(|n| *n == "new"), "{:?}", c);
            prop_assert!(c.before.owner == c.after.owner || c.after.owner == "new", "{:?}", c);
        }
    }

    /// Removing a member changes only the holders of the keys it held: it leaves, at most one
    /// other member joins.
    #[test]
    fn removing_changes_only_what_the_member_held(ms in members(), rf in 1u32..=3, pick in 0usize..7) {
        prop_assume!(ms.len() >= 2);
        let from = ring(&active(&ms), 64, rf);
        let gone = ms[pick % ms.len()].id.clone();
        let to = plan_remove(&from, &gone).unwrap();
        for c in changes(&from, &to) {
            let (b, a) = (set(&c.before), set(&c.after));
            prop_assert!(b.contains(gone.as_str()), "{:?}", c);
            prop_assert!(b.difference(&a).all(|n| *n == gone), "{:?}", c);
            prop_assert!(a.difference(&b).count() <= 1, "{:?}", c);
        }
    }

    /// Dropping a dead member hands each of its keys to a member that already held a copy
    /// (its first follower) whenever it had one; nobody else's keys change owner.
    #[test]
    fn a_dead_owners_keys_go_to_a_follower(ms in members(), rf in 2u32..=3, pick in 0usize..7) {
        prop_assume!(ms.len() >= 2);
        let ms = active(&ms);
        let from = ring(&ms, 64, rf);
        let dead = ms[pick % ms.len()].id.clone();
        let to = plan_without(&from, &[&dead]).unwrap();
        for c in changes(&from, &to) {
            if c.before.owner == dead {
                prop_assert_eq!(&c.after.owner, &c.before.followers[0], "{:?}", c);
            } else {
                prop_assert_eq!(&c.after.owner, &c.before.owner, "{:?}", c);
            }
        }
    }

    /// A member rejoining as a standby takes no key's ownership (no move) and follows exactly
    /// the keys it owned before it left, among others; its promotion moves keys only to it.
    #[test]
    fn a_standby_owns_nothing_until_promoted(ms in members(), rf in 2u32..=3, pick in 0usize..7) {
        prop_assume!(ms.len() >= 2);
        let ms = active(&ms);
        let full = ring(&ms, 64, rf);
        let back = ms[pick % ms.len()].clone();
        let without = plan_without(&full, &[&back.id]).unwrap();
        let standby = plan_standby(&without, &back.id, back.weight).unwrap();
        prop_assert!(Transition::new(without.clone(), standby.clone()).unwrap().segments().is_empty());
        for h in hashes() {
            if full.replicas_at(h).owner == back.id {
                prop_assert!(standby.replicas_at(h).followers.contains(&back.id.as_str()));
            }
        }
        let promoted = plan_promote(&standby, &back.id).unwrap();
        let t = Transition::new(standby, promoted.clone()).unwrap();
        prop_assert!(t.segments().iter().all(|s| s.to == back.id));
        // Promoted, it owns what it owned before it left.
        for h in hashes() {
            prop_assert_eq!(full.replicas_at(h), promoted.replicas_at(h));
        }
    }
}

/// With equal weights every member holds copies of about `copies / members` of the keys.
#[test]
fn equal_members_hold_equal_shares() {
    for n in 2..=6 {
        for rf in 1..=3u32 {
            let ms: Vec<Member> = (0..n).map(|i| Member::new(format!("n{i}"), 1)).collect();
            let r = ring(&ms, crate::DEFAULT_VNODES_PER_WEIGHT, rf);
            let ideal = r.copies() as f64 / n as f64;
            for m in &ms {
                let held = r.held_share(&m.id);
                assert!(
                    (held - ideal).abs() <= 0.05,
                    "{n} members, rf {rf}: {} holds {held:.3}, ideal {ideal:.3}",
                    m.id
                );
            }
        }
    }
}

/// A heavier member holds more than a lighter one, never more than every key.
#[test]
fn weights_are_respected() {
    let ms = [
        Member::new("a", 1),
        Member::new("b", 1),
        Member::new("c", 2),
        Member::new("d", 4),
    ];
    let r = ring(&ms, crate::DEFAULT_VNODES_PER_WEIGHT, 2);
    let (a, b, c, d) = (
        r.held_share("a"),
        r.held_share("b"),
        r.held_share("c"),
        r.held_share("d"),
    );
    // Equal weights, equal shares up to the spread of 256 points each next to a member of
    // half the weight.
    assert!((a - b).abs() < 0.08, "{a} {b}");
    assert!(a < c && c < d && d <= 1.0, "{a} {c} {d}");
    assert!((a + b + c + d - 2.0).abs() < 1e-9);
}

/// A ring of one member with factor 2 keeps one copy: there is nowhere else to put it.
#[test]
fn copies_are_capped_by_members() {
    let r = ring(&[Member::new("solo", 1)], 8, 2);
    assert_eq!(r.copies(), 1);
    assert_eq!(r.replicas("x").followers, Vec::<&str>::new());
    let r = ring(&[Member::new("a", 1), Member::new("b", 1)], 8, 5);
    assert_eq!(r.copies(), 2);
}
