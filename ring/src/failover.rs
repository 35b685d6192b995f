//! The failover decision, as pure computation: given the ring, which members are alive (their
//! leases hold) and which have caught up with what they follow, the ring the survivors write or
//! why no ring may be written.
//!
//! Every survivor computes the same answer from the same inputs and writes it by
//! compare-and-swap on the ring document, like a move's commit, so exactly one write wins and no
//! election is needed. The new ring simply lacks the dead members: a key's next active member
//! clockwise is its first active follower (`replicas.rs`), so each of a dead owner's keys falls to
//! a node that already holds it. That is only safe if that node has caught up; otherwise the
//! decision is to wait, because serving from a partial copy would hide acknowledged messages.

use std::collections::{BTreeMap, BTreeSet};

use crate::plan::plan_without;
use crate::replicas::{changes, share};
use crate::transition::TransitionError;
use crate::{Ring, RingError};

/// What the survivors do about the members whose leases expired.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Every member is alive: nothing to do.
    Keep,
    /// Write `ring` (one epoch later, without `dead`).
    Failover { ring: Ring, dead: Vec<String> },
    /// Write nothing: the dead members' users stay unavailable until one comes back or an
    /// operator acts.
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("no active member would be left")]
    NoActiveLeft,
    /// The first active member after `dead` (who would own its keys) holds no caught-up copy
    /// of `share` of the circle: with one copy per key, or a follower still catching up, or
    /// every holder of those keys down at once.
    #[error("{:.2}% of the keys {dead} owned have no caught-up copy on {successor}, which would own them", share * 100.0)]
    NoCopy {
        dead: String,
        successor: String,
        share: f64,
    },
}

/// The decision for `ring` when only `alive` members hold leases and `caught_up` members have
/// finished filling every copy they follow in this ring.
pub fn decide(ring: &Ring, alive: &BTreeSet<String>, caught_up: &BTreeSet<String>) -> Decision {
    let dead: Vec<&str> = ring
        .members()
        .map(|(id, _)| id)
        .filter(|id| !alive.contains(*id))
        .collect();
    if dead.is_empty() {
        return Decision::Keep;
    }
    let next = match plan_without(ring, &dead) {
        Ok(next) => next,
        Err(TransitionError::LastMember | TransitionError::Ring(RingError::NoActiveMember)) => {
            return Decision::Refuse(Refusal::NoActiveLeft)
        }
        Err(e) => unreachable!("the dead are members of a valid ring: {e}"),
    };
    // Uncovered share per (dead owner, successor).
    let mut uncovered: BTreeMap<(String, String), f64> = BTreeMap::new();
    for c in changes(ring, &next) {
        if !dead.contains(&c.before.owner.as_str()) {
            continue;
        }
        let successor = &c.after.owner;
        if !(c.before.holds(successor) && caught_up.contains(successor)) {
            *uncovered
                .entry((c.before.owner.clone(), successor.clone()))
                .or_default() += share(c.start, c.end);
        }
    }
    if let Some(((dead, successor), share)) =
        uncovered.into_iter().max_by(|a, b| a.1.total_cmp(&b.1))
    {
        return Decision::Refuse(Refusal::NoCopy {
            dead,
            successor,
            share,
        });
    }
    Decision::Failover {
        ring: next,
        dead: dead.into_iter().map(String::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{Member, MemberState};

    fn ring(ids: &[&str], rf: u32) -> Ring {
        Ring::equal(4, ids, 64)
            .unwrap()
            .with_replication(rf)
            .unwrap()
    }

    fn names(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nothing_happens_while_everyone_is_alive() {
        let r = ring(&["a", "b", "c"], 2);
        let all = names(&["a", "b", "c"]);
        assert!(matches!(decide(&r, &all, &BTreeSet::new()), Decision::Keep));
    }

    #[test]
    fn a_dead_member_is_dropped_when_its_followers_have_caught_up() {
        let r = ring(&["a", "b", "c"], 2);
        let Decision::Failover { ring: next, dead } =
            decide(&r, &names(&["a", "c"]), &names(&["a", "c"]))
        else {
            panic!("expected a failover");
        };
        assert_eq!(dead, vec!["b".to_string()]);
        assert_eq!(next.epoch(), r.epoch() + 1);
        assert_eq!(next.replication_factor(), 2);
        assert_eq!(next.state("b"), None);
        for i in 0..500 {
            let k = format!("u{i}");
            if r.owner(&k) == "b" {
                assert!(r.replicas(&k).holds(next.owner(&k)), "{k}");
            } else {
                assert_eq!(r.owner(&k), next.owner(&k), "{k}");
            }
        }
    }

    #[test]
    fn a_follower_still_catching_up_is_not_made_owner() {
        let r = ring(&["a", "b", "c"], 2);
        // c has caught up, a has not: the keys b owned that would fall to a must wait.
        match decide(&r, &names(&["a", "c"]), &names(&["c"])) {
            Decision::Refuse(Refusal::NoCopy {
                dead,
                successor,
                share,
            }) => {
                assert_eq!((dead.as_str(), successor.as_str()), ("b", "a"));
                assert!(share > 0.05 && share < 0.5, "{share}");
            }
            d => panic!("expected a refusal, got {d:?}"),
        }
    }

    #[test]
    fn with_one_copy_a_dead_owner_is_waited_for() {
        let r = ring(&["a", "b", "c"], 1);
        let all_but_b = names(&["a", "c"]);
        assert!(matches!(
            decide(&r, &all_but_b, &all_but_b),
            Decision::Refuse(Refusal::NoCopy { .. })
        ));
    }

    #[test]
    fn two_holders_of_the_same_keys_down_is_refused_unless_a_third_copy_exists() {
        let two = ring(&["a", "b", "c"], 2);
        let only_a = names(&["a"]);
        assert!(matches!(
            decide(&two, &only_a, &only_a),
            Decision::Refuse(Refusal::NoCopy { .. })
        ));
        let three = ring(&["a", "b", "c", "d"], 3);
        let ad = names(&["a", "d"]);
        assert!(matches!(
            decide(&three, &ad, &ad),
            Decision::Failover { .. }
        ));
    }

    #[test]
    fn the_last_active_member_is_never_dropped() {
        let ms = [
            Member::new("a", 1),
            Member {
                state: MemberState::Standby,
                ..Member::new("b", 1)
            },
        ];
        let r = Ring::new(1, &ms, 8).unwrap().with_replication(2).unwrap();
        let b = names(&["b"]);
        assert!(matches!(
            decide(&r, &b, &b),
            Decision::Refuse(Refusal::NoActiveLeft)
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever is alive and caught up: a failover ring holds exactly the live members, and
        /// every key a dead member owned is owned by a caught-up former holder; a refusal
        /// names a dead owner's keys whose successor is not one. The same inputs give the same
        /// ring (the survivors' compare-and-swap writes one answer).
        #[test]
        fn a_failover_never_hands_keys_to_a_node_without_them(
            n in 2usize..=6, rf in 1u32..=3, alive in prop::collection::vec(any::<bool>(), 6),
            caught in prop::collection::vec(any::<bool>(), 6),
        ) {
            let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let r = ring(&refs, rf);
            let alive: BTreeSet<String> = ids.iter().zip(&alive).filter(|(_, a)| **a).map(|(i, _)| i.clone()).collect();
            let caught: BTreeSet<String> = ids.iter().zip(&caught).filter(|(_, c)| **c).map(|(i, _)| i.clone()).collect();
            let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
            match decide(&r, &alive, &caught) {
                Decision::Keep => prop_assert_eq!(alive.len(), n),
                Decision::Failover { ring: next, dead } => {
                    let members: BTreeSet<String> = next.members().map(|(id, _)| id.to_string()).collect();
                    prop_assert_eq!(&members, &alive);
                    prop_assert_eq!(dead.len(), n - alive.len());
                    for k in &keys {
                        let (old, new) = (r.owner(k), next.owner(k));
                        if !alive.contains(old) {
                            prop_assert!(r.replicas(k).holds(new) && caught.contains(new), "{}", k);
                        } else {
                            prop_assert_eq!(old, new);
                        }
                    }
                    let again = decide(&r, &alive, &caught);
                    let Decision::Failover { ring: again, .. } = again else { panic!("not the same decision") };
                    prop_assert_eq!(again.member_list(), next.member_list());
                    prop_assert_eq!(again.epoch(), next.epoch());
                }
                Decision::Refuse(Refusal::NoActiveLeft) => prop_assert!(alive.is_empty()),
                Decision::Refuse(Refusal::NoCopy { dead, successor, share }) => {
                    prop_assert!(!alive.contains(&dead) && alive.contains(&successor) && share > 0.0);
                    let next = plan_without(&r, &ids.iter().filter(|i| !alive.contains(*i)).map(String::as_str).collect::<Vec<_>>()).unwrap();
                    let bad = changes(&r, &next).into_iter().any(|c| {
                        c.before.owner == dead && c.after.owner == successor
                            && !(c.before.holds(&successor) && caught.contains(&successor))
                    });
                    prop_assert!(bad);
                }
            }
        }
    }
}
