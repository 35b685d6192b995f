//! The move role alone: deterministic tests of each path, and a property test that drives one
//! node through random interleavings of batches (some failing), the commit or an abort, seals,
//! drops and restarts at any step, with `Transition` as the oracle.

use std::collections::BTreeSet;

use chat_ring::transition::{plan_add, plan_remove};
use proptest::prelude::*;

use super::*;

fn ring(epoch: u64, ids: &[&str]) -> Ring {
    Ring::equal(epoch, ids, 8).unwrap()
}

/// n0, n1 and n2 take n3 in (epoch 1 → 2): n3 receives from everyone.
fn adding() -> Arc<Transition> {
    let from = ring(1, &["n0", "n1", "n2"]);
    let to = plan_add(&from, "n3", 1).unwrap();
    Arc::new(Transition::new(from, to).unwrap())
}

fn aborted_ring(t: &Transition) -> Ring {
    let ids: Vec<String> = t.from().members().map(|(id, _)| id.to_string()).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    ring(t.to().epoch(), &ids)
}

/// Runs one batch that only observes; returns the steps of observe and of the batch's end.
fn batch(r: &mut MoveRole, moving: Option<&Arc<Transition>>, ring: &Ring, ok: bool) -> Vec<Step> {
    let mut steps = r.observe(moving, Some(ring));
    steps.extend(r.batch_done(ok));
    steps
}

fn marker_of(steps: &[Step]) -> Option<Option<Marker>> {
    steps.iter().rev().find_map(|s| match s {
        Step::RecordMarker(m) => Some(Some(m.clone())),
        Step::ClearMarker => Some(None),
        _ => None,
    })
}

#[test]
fn a_receiver_restarted_after_some_seals_waits_only_for_the_others() {
    let t = adding();
    let givers: BTreeSet<String> = t.receives("n3").map(|s| s.from.clone()).collect();
    assert!(givers.len() >= 2, "{givers:?}");
    let mut r = MoveRole::new("n3", None);
    let steps = batch(&mut r, Some(&t), t.from(), true);
    assert!(steps.contains(&Step::Adopted(t.clone())));
    batch(&mut r, None, t.to(), true);
    let h = t.receives("n3").next().unwrap().start;
    assert!(r.held(h), "held until every seal");
    let first = givers.iter().next().unwrap();
    let steps = r.sealed(first, 2);
    let marker = match marker_of(&steps) {
        Some(Some(m)) => m,
        other => panic!("the seal is recorded: {other:?}"),
    };
    assert!(r.batch_done(true).is_empty());
    // Restarted: the first giver does not seal again.
    let mut r = MoveRole::new("n3", Some(marker));
    batch(&mut r, None, t.to(), true);
    assert!(r.held(h));
    assert!(r.settled(Some(2)).is_none());
    let mut last = Vec::new();
    for g in givers.iter().skip(1) {
        last = r.sealed(g, 2);
    }
    assert!(!r.held(h));
    assert_eq!(last, vec![Step::ClearMarker]);
    r.batch_done(true);
    assert_eq!(r.settled(Some(2)), Some(2));
}

#[test]
fn a_giver_restarted_after_the_commit_copies_again_then_seals_and_drops() {
    let t = adding();
    let mut r = MoveRole::new("n0", None);
    let steps = batch(&mut r, Some(&t), t.from(), true);
    let marker = match marker_of(&steps) {
        Some(Some(m)) => m,
        other => panic!("{other:?}"),
    };
    let mut r = MoveRole::new("n0", Some(marker));
    let steps = batch(&mut r, None, t.to(), true);
    assert_eq!(
        steps,
        vec![Step::Resets(t.clone()), Step::Finish(t.clone())]
    );
    assert!(r.settled(Some(2)).is_none());
    assert!(r.may_copy(2));
    assert_eq!(r.seal(2), Some(t.clone()));
    assert!(r.settled(Some(2)).is_none(), "the drop is left");
    assert_eq!(r.dropped(), vec![Step::ClearMarker]);
    r.batch_done(true);
    assert_eq!(r.settled(Some(2)), Some(2));
}

#[test]
fn an_adoption_whose_batch_failed_is_tried_again_and_reported_once() {
    let t = adding();
    let mut r = MoveRole::new("n3", None);
    let steps = batch(&mut r, Some(&t), t.from(), false);
    assert!(!steps.iter().any(|s| matches!(s, Step::Adopted(_))));
    assert!(r.current().is_none());
    let steps = batch(&mut r, Some(&t), t.from(), true);
    assert_eq!(
        steps
            .iter()
            .filter(|s| matches!(s, Step::Adopted(_)))
            .count(),
        1
    );
    assert!(batch(&mut r, Some(&t), t.from(), true).is_empty());
}

#[test]
fn an_abort_clears_the_marker_and_tells_the_driver() {
    let t = adding();
    let mut r = MoveRole::new("n3", None);
    batch(&mut r, Some(&t), t.from(), true);
    let steps = batch(&mut r, None, &aborted_ring(&t), true);
    assert_eq!(steps, vec![Step::ClearMarker, Step::Aborted(t.clone())]);
    assert_eq!(r.settled(Some(2)), Some(2));
}

/// One node's view of the world in the property test.
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A batch of commands (ok or failed).
    Batch(bool),
    Commit,
    Abort,
    Restart,
    /// A giver's seal reaches the receiver (the index picks the giver).
    SealFrom(usize),
    /// The driver, copy done after the commit, asks the giver to seal.
    DriverSeal,
    /// The driver, seals acknowledged, drops the given ranges.
    Drop,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => any::<bool>().prop_map(Event::Batch),
        1 => Just(Event::Commit),
        1 => Just(Event::Abort),
        2 => Just(Event::Restart),
        2 => (0usize..4).prop_map(Event::SealFrom),
        1 => Just(Event::DriverSeal),
        1 => Just(Event::Drop),
    ]
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum MoveFate {
    Flight,
    Committed,
    Aborted,
}

struct World {
    t: Arc<Transition>,
    me: String,
    role: MoveRole,
    phase: MoveFate,
    disk: Option<Marker>,
    /// The driver learnt of the adoption (it reports `seen`, needed for the commit).
    reported: bool,
    /// Receiver: givers whose seal the receiver acknowledged.
    acked: BTreeSet<String>,
    /// Giver: sealed since the last restart (the driver then drops the given ranges), and the
    /// ranges dropped at least once.
    sealed: bool,
    dropped: bool,
    settled: Vec<u64>,
}

impl World {
    fn ring(&self) -> Ring {
        match self.phase {
            MoveFate::Flight => self.t.from().clone(),
            MoveFate::Committed => self.t.to().clone(),
            MoveFate::Aborted => aborted_ring(&self.t),
        }
    }

    fn moving(&self) -> Option<Arc<Transition>> {
        (self.phase == MoveFate::Flight).then(|| self.t.clone())
    }

    fn givers(&self) -> Vec<String> {
        let g: BTreeSet<String> = self.t.receives(&self.me).map(|s| s.from.clone()).collect();
        g.into_iter().collect()
    }

    fn gives(&self) -> bool {
        self.t.copies_of(&self.me).next().is_some()
    }

    /// One batch: observe, then `during` (the commands, and a giver whose seal they applied),
    /// then the outcome.
    fn batch(
        &mut self,
        ok: bool,
        during: impl FnOnce(&mut MoveRole) -> (Vec<Step>, Option<String>),
    ) -> Result<(), TestCaseError> {
        let ring = self.ring();
        let moving = self.moving();
        let mut steps = self.role.observe(moving.as_ref(), Some(&ring));
        // The receiver's safety: once it has seen the commit, commands for the received
        // segments wait until every giver's seal is in.
        if self.phase == MoveFate::Committed {
            let all_in = self.givers().iter().all(|g| self.acked.contains(g));
            for s in self.t.receives(&self.me) {
                prop_assert_eq!(self.role.held(s.start), !all_in, "held at {}", s.start);
            }
        }
        let before = self.role.clone();
        let (more, sealed_by) = during(&mut self.role);
        steps.extend(more);
        if !ok {
            self.role = before;
        } else if let Some(g) = sealed_by {
            self.acked.insert(g);
        }
        let mut marker = None;
        for s in &steps {
            match s {
                Step::RecordMarker(m) => marker = Some(Some(m.clone())),
                Step::ClearMarker => marker = Some(None),
                _ => {}
            }
        }
        let done = self.role.batch_done(ok);
        if ok {
            if let Some(m) = marker {
                self.disk = m;
            }
        }
        for s in done {
            if let Step::Adopted(t) = &s {
                prop_assert_eq!(t.to().epoch(), self.t.to().epoch());
                if self.gives() || !self.givers().is_empty() {
                    prop_assert!(self.disk.is_some(), "adopted without a stored marker");
                }
                self.reported = true;
            }
        }
        if let Some(e) = self.role.settled(Some(ring.epoch())) {
            if e == self.t.to().epoch() && self.phase == MoveFate::Committed {
                prop_assert!(
                    self.givers().iter().all(|g| self.acked.contains(g)),
                    "settled before every seal"
                );
                prop_assert!(!self.gives() || self.dropped, "settled before the drop");
                prop_assert!(self.disk.is_none(), "settled with a marker");
            }
            self.settled.push(e);
        }
        Ok(())
    }

    fn step(&mut self, ev: Event) -> Result<(), TestCaseError> {
        let epoch = self.t.to().epoch();
        match ev {
            Event::Batch(ok) => self.batch(ok, |_| (Vec::new(), None))?,
            Event::Commit if self.phase == MoveFate::Flight && self.reported => {
                self.phase = MoveFate::Committed
            }
            Event::Abort if self.phase == MoveFate::Flight => self.phase = MoveFate::Aborted,
            Event::Restart => {
                self.role = MoveRole::new(&self.me, self.disk.clone());
                // The driver's seal acknowledgements die with it.
                self.sealed = false;
            }
            Event::SealFrom(i) if self.phase == MoveFate::Committed => {
                let givers = self.givers();
                let Some(g) = givers.get(i % givers.len().max(1)).cloned() else {
                    return Ok(());
                };
                if self.acked.contains(&g) {
                    return Ok(());
                }
                let ring_epoch = self.ring().epoch();
                let mut acked_unapplied = false;
                self.batch(true, |r| match r.stream_target(epoch, true, ring_epoch) {
                    StreamTarget::Apply(_) => (r.sealed(&g, epoch), Some(g)),
                    StreamTarget::AlreadyApplied => {
                        acked_unapplied = true;
                        (Vec::new(), None)
                    }
                    StreamTarget::NotYet => (Vec::new(), None),
                })?;
                prop_assert!(!acked_unapplied, "a seal acknowledged unapplied");
            }
            Event::DriverSeal
                if self.phase == MoveFate::Committed && self.role.seal(epoch).is_some() =>
            {
                self.sealed = true;
            }
            Event::Drop if self.sealed && !self.dropped => {
                self.dropped = true;
                self.batch(true, |r| (r.dropped(), None))?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Everything left happens, without faults: the move ends and the node settles.
    fn heal(&mut self) -> Result<(), TestCaseError> {
        self.step(Event::Batch(true))?;
        if self.phase == MoveFate::Flight {
            self.phase = if self.reported {
                MoveFate::Committed
            } else {
                MoveFate::Aborted
            };
        }
        self.step(Event::Batch(true))?;
        for i in 0..self.givers().len() {
            self.step(Event::SealFrom(i))?;
        }
        self.step(Event::DriverSeal)?;
        self.step(Event::Drop)?;
        self.step(Event::Batch(true))?;
        let epoch = self.t.to().epoch();
        prop_assert!(
            self.settled.contains(&epoch),
            "never settled: {:?} {:?}",
            self.phase,
            self.role
        );
        prop_assert!(self.disk.is_none(), "a marker left behind");
        Ok(())
    }
}

/// A move of 2-4 nodes (an add or a remove) and a node of either ring.
fn moves() -> impl Strategy<Value = (Arc<Transition>, String)> {
    (2usize..=4, any::<bool>(), 0usize..5).prop_map(|(n, add, pick)| {
        let ids: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let from = ring(1, &refs);
        let to = if add {
            plan_add(&from, "n9", 1).unwrap()
        } else {
            plan_remove(&from, &ids[pick % n]).unwrap()
        };
        let t = Arc::new(Transition::new(from, to).unwrap());
        let nodes: Vec<String> = t.nodes().into_iter().map(String::from).collect();
        let me = nodes[pick % nodes.len()].clone();
        (t, me)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the interleaving and wherever the node restarts: it reports an adoption only
    /// with its marker stored, holds received segments from the commit until every seal is in,
    /// settles only once its share is done (seals in, ranges dropped, marker gone), and does
    /// settle once the faults stop.
    #[test]
    fn the_role_is_safe_and_finishes_under_any_interleaving(
        (t, me) in moves(),
        events in prop::collection::vec(event(), 0..40),
    ) {
        let mut w = World {
            t,
            role: MoveRole::new(&me, None),
            me,
            phase: MoveFate::Flight,
            disk: None,
            reported: false,
            acked: BTreeSet::new(),
            sealed: false,
            dropped: false,
            settled: Vec::new(),
        };
        for ev in events {
            w.step(ev)?;
        }
        w.heal()?;
    }
}
