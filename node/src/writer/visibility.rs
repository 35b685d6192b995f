//! Commit-ordered visibility: what a committed batch makes visible (answers such as ✓, live
//! deliveries, the outbox hand-off) runs in commit order, and a batch may be *held* until
//! others have it too (while a move is in flight, every new owner must store the batch's moving
//! writes first). A held batch holds back the batches after it, so nothing a client sent later
//! becomes visible first.
//!
//! A hold ends only by an explicit call: [`Hold::release`] (the other side acknowledged) or
//! [`Hold::abandon`] (the move was aborted: this node still has everything, so the batch may be
//! seen). A hold dropped without either (the node stops) leaves its batch and every later one
//! invisible: their answers are dropped, and clients retry what they never got a ✓ for.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What a committed batch makes visible.
pub(crate) type Effects = Box<dyn FnOnce() + Send>;

struct Slot {
    /// Holds not yet ended.
    holds: Arc<AtomicUsize>,
    effects: Option<Effects>,
}

#[derive(Default)]
pub(crate) struct Visibility {
    /// Id of the front slot, and the slots in commit order.
    slots: Mutex<(u64, VecDeque<Slot>)>,
    /// Held while running slots, so two threads never run them out of order.
    runner: Mutex<()>,
}

/// One party a batch waits for.
#[must_use = "a hold must be released or abandoned, or its batch never becomes visible"]
pub struct Hold {
    vis: Arc<Visibility>,
    holds: Arc<AtomicUsize>,
    ended: bool,
}

impl Visibility {
    /// Adds a committed batch that waits for `holds` parties (0: none), and runs whatever is
    /// runnable now.
    pub(crate) fn push(self: &Arc<Self>, effects: Effects, holds: usize) -> Vec<Hold> {
        let counter = Arc::new(AtomicUsize::new(holds));
        self.slots.lock().expect("not poisoned").1.push_back(Slot {
            holds: counter.clone(),
            effects: Some(effects),
        });
        self.run_ready();
        (0..holds)
            .map(|_| Hold {
                vis: self.clone(),
                holds: counter.clone(),
                ended: false,
            })
            .collect()
    }

    /// Batches waiting to become visible (`chat_batches_held`, set as slots run).
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.slots.lock().expect("not poisoned").1.len()
    }

    fn run_ready(&self) {
        let _one_at_a_time = self.runner.lock().expect("not poisoned");
        loop {
            let effects = {
                let mut g = self.slots.lock().expect("not poisoned");
                match g.1.front() {
                    Some(s) if s.holds.load(Ordering::Acquire) == 0 => {
                        g.0 += 1;
                        g.1.pop_front().and_then(|s| s.effects)
                    }
                    _ => {
                        metrics::gauge!(crate::admin::BATCHES_HELD).set(g.1.len() as f64);
                        return;
                    }
                }
            };
            if let Some(f) = effects {
                f();
            }
        }
    }
}

impl Hold {
    /// The party acknowledged the batch.
    pub(crate) fn release(mut self) {
        self.end();
    }

    /// The party no longer matters (the move was aborted): the batch may become visible.
    pub(crate) fn abandon(mut self, why: &str) {
        tracing::debug!(why, "hold abandoned");
        self.end();
    }

    fn end(&mut self) {
        self.ended = true;
        if self.holds.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.vis.run_ready();
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if !self.ended {
            tracing::debug!("hold dropped unreleased: its batch stays invisible");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorder() -> (Arc<Mutex<Vec<u32>>>, impl Fn(u32) -> Effects) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (seen, move |i| {
            let s = s.clone();
            Box::new(move || s.lock().unwrap().push(i)) as Effects
        })
    }

    #[test]
    fn batches_become_visible_in_commit_order_behind_a_held_one() {
        let vis = Arc::new(Visibility::default());
        let (seen, effect) = recorder();
        assert!(vis.push(effect(1), 0).is_empty());
        let mut holds = vis.push(effect(2), 2);
        let _ = vis.push(effect(3), 0);
        assert_eq!(*seen.lock().unwrap(), vec![1], "2 waits, and 3 behind it");
        assert_eq!(vis.waiting(), 2);
        holds.pop().unwrap().release();
        assert_eq!(*seen.lock().unwrap(), vec![1], "one hold left");
        holds.pop().unwrap().abandon("aborted");
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
        assert_eq!(vis.waiting(), 0);
    }

    #[test]
    fn a_dropped_hold_keeps_its_batch_invisible() {
        let vis = Arc::new(Visibility::default());
        let (seen, effect) = recorder();
        drop(vis.push(effect(1), 1));
        let _ = vis.push(effect(2), 0);
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(vis.waiting(), 2);
    }
}
