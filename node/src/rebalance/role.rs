//! This node's part in a move, as a state machine with no I/O: the writer feeds it what it sees
//! (the move in the view at each batch, the outcome of each batch, seals, drops) and carries out
//! the [`Step`]s it returns.
//!
//! Giver (old owner of some segments): adopt (marker recorded in the adopting batch, then
//! resets on the streams and the driver told), dual-write and copy, then after the commit
//! *finishing*: seal once the copy is complete, drop the given ranges once every seal is
//! acknowledged, clear the marker. Receiver (new owner): adopt, apply the streams, then after
//! the commit *sealing*: commands for the received segments are held until every giver's seal
//! is in. A restart reads the marker and takes up whichever of these it was in.

use std::collections::BTreeSet;
use std::sync::Arc;

use chat_ring::transition::{Segment, Transition};
use chat_ring::Ring;

/// What a node records of its unfinished move (in the batch that adopts it, and again as seals
/// come in), so that a restart takes up where it was.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Marker {
    pub transition: Arc<Transition>,
    /// Receiver: the givers whose seal is already applied (they do not seal again).
    pub sealed: BTreeSet<String>,
}

/// What the writer must do.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// Put this marker in the current batch.
    RecordMarker(Marker),
    /// Delete the marker in the current batch.
    ClearMarker,
    /// Put each stream's reset on it: the copy starts from scratch.
    Resets(Arc<Transition>),
    /// Tell the driver: the move is adopted (report, copy, try the commit).
    Adopted(Arc<Transition>),
    /// Tell the driver: restarted after the commit, before sealing: copy again, then seal.
    Finish(Arc<Transition>),
    /// Tell the driver: the move was aborted (drop what was received).
    Aborted(Arc<Transition>),
}

/// New owner after a commit: the received segments, and the givers whose seal is not in yet.
#[derive(Debug, Clone)]
pub(crate) struct Sealing {
    pub transition: Arc<Transition>,
    segments: Vec<Segment>,
    /// Givers whose seal is not in yet, and those whose seal is.
    givers: BTreeSet<String>,
    sealed: BTreeSet<String>,
}

/// Which move a stream request belongs to, seen from the receiver.
#[derive(Debug, PartialEq)]
pub(crate) enum StreamTarget {
    Apply(Arc<Transition>),
    /// A retry of a request of a move that ended here: acknowledge it.
    AlreadyApplied,
    /// Not this node's move (yet): the giver retries.
    NotYet,
}

/// Clone: the writer keeps a copy from before a batch's commands and goes back to it if the batch
/// fails (a seal in a failed batch was not applied).
#[derive(Debug, Clone)]
pub(crate) struct MoveRole {
    me: String,
    /// The move in flight as the writer follows it.
    current: Option<Arc<Transition>>,
    /// `current` was adopted at the start of the running batch: it counts once that batch (with
    /// the marker) is on disk. Always false between batches.
    adopting: bool,
    sealing: Option<Sealing>,
    /// Giver after a commit: the move whose copy must finish before the seal.
    finishing: Option<Arc<Transition>>,
    /// At startup: the unfinished move found in the marker, decided on once the ring is known.
    restarted: Option<Marker>,
    /// Whether a marker is on disk, and the marker write of the current batch (if any).
    on_disk: Option<Marker>,
    marker_write: Option<Option<Marker>>,
    /// A marker delete whose batch failed: tried again in the next batch.
    clear_again: bool,
    /// The last ring epoch reported settled.
    settled: u64,
}

impl MoveRole {
    pub(crate) fn new(me: &str, marker: Option<Marker>) -> MoveRole {
        MoveRole {
            me: me.to_string(),
            current: None,
            adopting: false,
            sealing: None,
            finishing: None,
            on_disk: marker.clone(),
            restarted: marker,
            marker_write: None,
            clear_again: false,
            settled: 0,
        }
    }

    /// The move whose writes this node captures and streams, if it gives anything in it.
    pub(crate) fn current(&self) -> Option<&Arc<Transition>> {
        self.current.as_ref()
    }

    pub(crate) fn sealing(&self) -> Option<&Sealing> {
        self.sealing.as_ref()
    }

    /// At the start of every batch, with the view's move and ring: every write of the batch
    /// follows one decision.
    pub(crate) fn observe(
        &mut self,
        moving: Option<&Arc<Transition>>,
        ring: Option<&Ring>,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
        if std::mem::take(&mut self.clear_again) {
            self.clear_marker(&mut steps);
        }
        if let (Some(m), Some(ring)) = (self.restarted.take(), ring) {
            self.take_up(m, moving, ring, &mut steps);
        }
        let same = match (&self.current, moving) {
            (Some(a), Some(m)) => a.to().epoch() == m.to().epoch(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return steps;
        }
        if let Some(old) = self.current.take() {
            self.end(old, ring, &mut steps);
        }
        if let Some(t) = moving {
            if self.takes_part(t) {
                let marker = Marker {
                    transition: t.clone(),
                    sealed: BTreeSet::new(),
                };
                self.record_marker(Some(marker.clone()));
                steps.push(Step::RecordMarker(marker));
            }
            self.current = Some(t.clone());
            self.adopting = true;
        }
        steps
    }

    /// Restarted with a marker: picks up where the node was.
    fn take_up(
        &mut self,
        marker: Marker,
        moving: Option<&Arc<Transition>>,
        ring: &Ring,
        steps: &mut Vec<Step>,
    ) {
        let m = marker.transition;
        let in_flight = moving.is_some_and(|t| t.to().epoch() == m.to().epoch());
        if in_flight {
            // Adopted again from scratch, like a first time.
            return;
        }
        if m.committed_in(ring) {
            let mut sealing = self.sealing_of(&m);
            sealing.givers.retain(|g| !marker.sealed.contains(g));
            sealing.sealed = marker.sealed;
            if !sealing.givers.is_empty() {
                tracing::info!(epoch = m.to().epoch(), waiting = ?sealing.givers, "waiting again for the old owners' seals after a restart");
                self.sealing = Some(sealing);
            }
            if m.copies_of(&self.me).next().is_some() {
                tracing::info!(
                    epoch = m.to().epoch(),
                    "finishing a committed move after a restart"
                );
                steps.push(Step::Resets(m.clone()));
                steps.push(Step::Finish(m.clone()));
                self.finishing = Some(m);
            }
            if self.sealing.is_none() && self.finishing.is_none() {
                // Every seal was in before the restart, and nothing to give: only the marker
                // was left.
                self.clear_marker(steps);
            }
        } else if ring.epoch() >= m.to().epoch() {
            tracing::info!(
                epoch = m.to().epoch(),
                "the unfinished move was aborted meanwhile"
            );
            self.clear_marker(steps);
        }
    }

    fn end(&mut self, t: Arc<Transition>, ring: Option<&Ring>, steps: &mut Vec<Step>) {
        let committed = ring.is_some_and(|r| t.committed_in(r));
        tracing::info!(epoch = t.to().epoch(), committed, "the move ended");
        if !committed {
            self.clear_marker(steps);
            steps.push(Step::Aborted(t));
            return;
        }
        if t.copies_of(&self.me).next().is_some() {
            // The driver asks for the seal once the copy is complete.
            self.finishing = Some(t.clone());
        }
        if t.receives(&self.me).next().is_some() {
            self.sealing = Some(self.sealing_of(&t));
        }
    }

    fn sealing_of(&self, t: &Arc<Transition>) -> Sealing {
        let segments: Vec<Segment> = t.receives(&self.me).cloned().collect();
        let givers = segments.iter().map(|s| s.from.clone()).collect();
        Sealing {
            transition: t.clone(),
            segments,
            givers,
            sealed: BTreeSet::new(),
        }
    }

    fn takes_part(&self, t: &Transition) -> bool {
        t.copies_of(&self.me).next().is_some() || t.receives(&self.me).next().is_some()
    }

    fn record_marker(&mut self, m: Option<Marker>) {
        self.marker_write = Some(m);
    }

    fn clear_marker(&mut self, steps: &mut Vec<Step>) {
        if self.on_disk.is_some() || matches!(self.marker_write, Some(Some(_))) {
            self.record_marker(None);
            steps.push(Step::ClearMarker);
        }
    }

    /// The batch is on disk (`ok`) or failed. An adoption counts from its batch on: only then
    /// is the marker there for a restart to finish the move with.
    pub(crate) fn batch_done(&mut self, ok: bool) -> Vec<Step> {
        let write = self.marker_write.take();
        let mut steps = Vec::new();
        if !ok {
            self.clear_again = matches!(write, Some(None));
            if self.adopting {
                // Tried again by the next batch. A marker already stored (from before a
                // restart) is taken up again too: the move may commit before an adoption
                // succeeds, and then only the marker tells this node it has a share to finish.
                self.current = None;
                self.adopting = false;
                self.restarted = self.on_disk.clone();
            }
            return steps;
        }
        if let Some(on) = write {
            self.on_disk = on;
        }
        if self.adopting {
            self.adopting = false;
            let t = self.current.clone().expect("adopting a current move");
            tracing::info!(
                epoch = t.to().epoch(),
                "adopted the move: moving writes are streamed from now on"
            );
            steps.push(Step::Resets(t.clone()));
            steps.push(Step::Adopted(t));
        }
        steps
    }

    /// Whether writes for the key hash `h` must wait: it is in a segment received in a
    /// committed move whose giver has not sealed it yet (its stream may still write there).
    pub(crate) fn held(&self, h: u64) -> bool {
        self.sealing
            .as_ref()
            .is_some_and(|s| s.segments.iter().any(|seg| seg.contains(h)))
    }

    /// Receiver: which move a stream request of `epoch` belongs to.
    pub(crate) fn stream_target(&self, epoch: u64, seal: bool, ring_epoch: u64) -> StreamTarget {
        match (&self.current, &self.sealing) {
            // A seal counts only once this node has seen the commit: before that, the giver
            // retries it (else it would be acknowledged and forgotten).
            (Some(t), _) if t.to().epoch() == epoch && !seal => StreamTarget::Apply(t.clone()),
            (_, Some(s)) if s.transition.to().epoch() == epoch => {
                StreamTarget::Apply(s.transition.clone())
            }
            (None, None) if epoch <= ring_epoch => StreamTarget::AlreadyApplied,
            _ => StreamTarget::NotYet,
        }
    }

    /// Receiver: `from`'s seal of the move to `epoch` is applied (in the current batch).
    pub(crate) fn sealed(&mut self, from: &str, epoch: u64) -> Vec<Step> {
        let mut steps = Vec::new();
        let Some(s) = self
            .sealing
            .as_mut()
            .filter(|s| s.transition.to().epoch() == epoch)
        else {
            return steps;
        };
        if !s.givers.remove(from) {
            return steps;
        }
        s.sealed.insert(from.to_string());
        if !s.givers.is_empty() {
            // Recorded, so that after a restart this node does not wait for a seal that will
            // not come again.
            let marker = Marker {
                transition: s.transition.clone(),
                sealed: s.sealed.clone(),
            };
            self.record_marker(Some(marker.clone()));
            steps.push(Step::RecordMarker(marker));
        } else {
            tracing::info!(
                epoch,
                "every old owner sealed: serving the received segments"
            );
            self.sealing = None;
            if self.finishing.is_none() {
                self.clear_marker(&mut steps);
            }
        }
        steps
    }

    /// Giver: whether copy pages of the move to `epoch` may be read now.
    pub(crate) fn may_copy(&self, epoch: u64) -> bool {
        let is = |t: &Option<Arc<Transition>>| t.as_ref().is_some_and(|t| t.to().epoch() == epoch);
        is(&self.current) || is(&self.finishing)
    }

    /// Giver: the copy of the move to `epoch` is complete after its commit: the move to seal.
    pub(crate) fn seal(&mut self, epoch: u64) -> Option<Arc<Transition>> {
        match self.finishing.take() {
            Some(t) if t.to().epoch() == epoch => Some(t),
            other => {
                self.finishing = other;
                None
            }
        }
    }

    /// Ranges a drop must keep: received in the move in flight or one still sealing (a later
    /// move may bring dropped ranges back here).
    pub(crate) fn keep_on_drop(&self) -> Vec<(u64, u64)> {
        self.current
            .iter()
            .chain(self.sealing.iter().map(|s| &s.transition))
            .flat_map(|t| {
                t.receives(&self.me)
                    .map(|s| (s.start, s.end))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Ranges were dropped (in the current batch): with no move left, the marker goes.
    pub(crate) fn dropped(&mut self) -> Vec<Step> {
        let mut steps = Vec::new();
        if self.current.is_none() && self.finishing.is_none() && self.sealing.is_none() {
            self.clear_marker(&mut steps);
        }
        steps
    }

    /// After a batch under a ring of `ring_epoch`: `Some(epoch)` the first time this node has
    /// nothing left to do in the moves up to that ring (nothing to seal, drop or wait for), so
    /// the next move may start.
    pub(crate) fn settled(&mut self, ring_epoch: Option<u64>) -> Option<u64> {
        let epoch = ring_epoch.filter(|e| *e > self.settled)?;
        let unfinished = self.finishing.is_some()
            || self.sealing.is_some()
            || self.restarted.is_some()
            // The marker of a move in flight is that move's; without one, it is a committed
            // move's share still to drop.
            || (self.current.is_none() && self.on_disk.is_some());
        if unfinished {
            return None;
        }
        self.settled = epoch;
        Some(epoch)
    }

    /// Whether a marker is on disk (a gauge for operators).
    pub(crate) fn marker_on_disk(&self) -> bool {
        self.on_disk.is_some()
    }
}

#[cfg(test)]
#[path = "role_tests.rs"]
mod tests;
