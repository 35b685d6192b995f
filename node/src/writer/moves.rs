//! The writer's side of a move: it carries out what the move role (`crate::rebalance::role`)
//! decides, puts captured writes, copy pages and seals on the streams, and applies the streams
//! it receives.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chat_proto::cluster::{ForwardEntry, HashRange, Mirror, RawWrite};
use chat_ring::transition::Transition;
use tokio::sync::oneshot;

use super::batch::{Answer, Batch, Captures};
use super::command::{MoveCmd, PageRequest};
use super::visibility::Effects;
use super::{origin, Writer};
use crate::error::ChatError;
use crate::rebalance::capture::Chunk;
use crate::rebalance::role::{Step, StreamTarget};
use crate::rebalance::{encode_marker, MoveError, MoveEvent, Page};
use crate::store::keys::owner_hash;
use crate::store::{Cf, MOVE_MARKER_KEY};
use crate::stream::{Done, Scope, StreamItem};

impl Writer {
    pub(super) fn apply_move(&mut self, cmd: MoveCmd, b: &mut Batch) {
        match cmd {
            MoveCmd::CopyPage { page, reply } => {
                let _ = reply.send(self.copy_page(page));
            }
            MoveCmd::DropRanges { ranges, reply } => {
                // A later move may already bring some of these ranges back here: keep those.
                let keep = self.role.keep_on_drop();
                for (start, end) in ranges {
                    for (a, z) in chat_ring::range::subtract((start, end), &keep) {
                        b.writes.delete_hash_range(a, z);
                    }
                }
                let steps = self.role.dropped();
                self.carry_out(steps, b);
                b.clear_caches = true;
                b.answers.push(Answer::Done(reply));
            }
            MoveCmd::Wake => {}
            MoveCmd::Seal { epoch } => {
                if let Some(t) = self.role.seal(epoch) {
                    self.seal(t);
                }
            }
        }
    }

    /// Carries out the role's steps taken while a batch is assembled.
    pub(super) fn carry_out(&mut self, steps: Vec<Step>, b: &mut Batch) {
        for s in steps {
            match s {
                Step::RecordMarker(t) => b.writes.put(Cf::Node, MOVE_MARKER_KEY, encode_marker(&t)),
                Step::ClearMarker => {
                    b.writes.delete(Cf::Node, MOVE_MARKER_KEY);
                    self.store.remove_legacy_marker();
                }
                Step::Resets(t) => self.push_resets(&t),
                other => self.carry_out_event(other),
            }
        }
    }

    /// Tells the driver.
    pub(super) fn carry_out_event(&mut self, step: Step) {
        match step {
            Step::Adopted(t) => self.event(MoveEvent::Adopted(t)),
            Step::Finish(t) => self.event(MoveEvent::Finish(t)),
            Step::Aborted(t) => self.event(MoveEvent::Aborted(t)),
            other => tracing::error!(?other, "a step out of place; ignored"),
        }
    }

    /// Makes a committed batch visible: at once, or once every new owner and follower stored
    /// its captured writes. Batches become visible in commit order, so later ones wait behind
    /// it: were this node to fail first, nobody has seen what another holder lacks.
    pub(super) fn publish(&mut self, effects: Effects, captures: Captures) {
        let Some(tx) = &self.streams_tx else {
            let _ = self.visibility.push(effects, 0);
            return;
        };
        let mut items: Vec<(String, Scope, Chunk)> = Vec::new();
        if let Some(c) = captures.moving {
            let scope = Scope::Move(c.transition.clone());
            for (dest, chunks) in c.into_chunks() {
                items.extend(
                    chunks
                        .into_iter()
                        .map(|ch| (dest.clone(), scope.clone(), ch)),
                );
            }
        }
        if let Some(c) = captures.replica {
            let scope = Scope::Replica {
                epoch: c.placement.epoch(),
            };
            for (dest, chunks) in c.into_chunks() {
                items.extend(
                    chunks
                        .into_iter()
                        .map(|ch| (dest.clone(), scope.clone(), ch)),
                );
            }
        }
        let holds = self.visibility.push(effects, items.len());
        for ((dest, scope, chunk), hold) in items.into_iter().zip(holds) {
            let item =
                StreamItem::writes(dest, scope, chunk.reset, chunk.writes, Done::Release(hold));
            let _ = tx.send(item);
        }
    }

    /// The copy starts from scratch (after a restart too): clear what the new owners may hold
    /// from an earlier attempt, before any dual write or page.
    pub(super) fn push_resets(&self, t: &Arc<Transition>) {
        let Some(tx) = &self.streams_tx else { return };
        let mut by_dest: BTreeMap<&str, Vec<HashRange>> = BTreeMap::new();
        for s in t.copies_of(&self.routing.self_id) {
            by_dest.entry(&s.to).or_default().push(HashRange {
                start: s.start,
                end: s.end,
            });
        }
        for (dest, reset) in by_dest {
            let _ = tx.send(StreamItem::writes(
                dest.to_string(),
                Scope::Move(t.clone()),
                reset,
                Vec::new(),
                Done::Nothing,
            ));
        }
    }

    /// Seals every stream of `t` this node gives to; the driver drops the ranges once each seal
    /// is acknowledged.
    fn seal(&mut self, t: Arc<Transition>) {
        let me = &self.routing.self_id;
        let dests: HashSet<String> = t.copies_of(me).map(|s| s.to.clone()).collect();
        let Some(tx) = &self.streams_tx else { return };
        let mut acks = Vec::new();
        for dest in dests {
            let (done, ack) = oneshot::channel();
            acks.push(ack);
            let outbox = self.moved_outbox(&t, &dest);
            if !outbox.is_empty() {
                tracing::info!(%dest, entries = outbox.len(), "handing the moved users' outbox entries over with the seal");
            }
            let _ = tx.send(StreamItem::seal(dest, &t, outbox, Done::Notify(done)));
        }
        self.event(MoveEvent::Sealing(t, acks));
    }

    /// Giver, at the seal: the outbox entries made by users that `t` moves from here to `dest`
    /// (messages they sent, receipts they made), oldest first. The new owner queues them ahead
    /// of what those users do next, so a sender's older messages, stuck here while their
    /// recipient's node is unreachable, cannot be overtaken by newer ones sent from its new
    /// home. They stay in this outbox too (delivered twice at worst; receivers deduplicate by
    /// id).
    fn moved_outbox(&self, t: &Transition, dest: &str) -> Vec<ForwardEntry> {
        let me = &self.routing.self_id;
        let moved = |e: &ForwardEntry| {
            origin(e).is_some_and(|u| {
                t.segment_of(chat_ring::key_hash(u))
                    .is_some_and(|s| &s.from == me && s.to == dest)
            })
        };
        let (mut out, mut after) = (Vec::new(), 0);
        loop {
            let page = match self.store.outbox_from(after, 4096) {
                Ok(p) => p,
                Err(e) => {
                    // Only their order is at stake: this node still delivers them.
                    tracing::error!(error = %e, "reading the outbox for the seal failed");
                    return out;
                }
            };
            let Some(last) = page.last().map(|(seq, _)| *seq) else {
                return out;
            };
            out.extend(page.into_iter().map(|(_, e)| e).filter(|e| moved(e)));
            after = last + 1;
        }
    }

    /// Receiver: applies one request of a giver's stream.
    pub(super) fn apply_stream(
        &mut self,
        from: &str,
        req: Mirror,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let ring_epoch = b.ring.as_ref().map_or(0, |r| r.epoch());
        let t = match self.role.stream_target(req.epoch, req.seal, ring_epoch) {
            StreamTarget::Apply(t) => t,
            StreamTarget::AlreadyApplied => return Ok(()),
            StreamTarget::NotYet => {
                return Err(
                    MoveError::NotYet(format!("no move to epoch {} here (yet)", req.epoch)).into(),
                )
            }
        };
        let me = &self.routing.self_id;
        let ours = |h: u64| {
            t.segment_of(h)
                .is_some_and(|s| s.from == from && &s.to == me)
        };
        if req
            .reset
            .iter()
            .any(|r| r.start > r.end || !ours(r.start) || !ours(r.end))
        {
            return Err(MoveError::OutOfRange("a reset".into()).into());
        }
        let mut writes = Vec::with_capacity(req.writes.len());
        for w in &req.writes {
            let Some(cf) = Cf::from_wire(w.cf) else {
                return Err(
                    MoveError::OutOfRange(format!("column family {} does not move", w.cf)).into(),
                );
            };
            if !owner_hash(&w.key).is_some_and(ours) {
                return Err(MoveError::OutOfRange("a write".into()).into());
            }
            writes.push((cf, w));
        }
        // Outbox entries handed over with a seal: made by users of these segments.
        if req
            .outbox
            .iter()
            .any(|e| e.to.is_empty() || !origin(e).is_some_and(|u| ours(chat_ring::key_hash(u))))
        {
            return Err(
                MoveError::OutOfRange("an outbox entry of a user not moving".into()).into(),
            );
        }
        for r in &req.reset {
            b.writes.delete_hash_range(r.start, r.end);
        }
        for (cf, w) in writes {
            if w.delete {
                b.writes.delete(cf, &w.key);
            } else {
                b.writes.put(cf, &w.key, &w.value);
            }
        }
        b.clear_caches = true;
        // Queued ahead of anything the moved users do from now on (their commands are held
        // until this seal, and later ones get later outbox seqs).
        for e in req.outbox {
            self.outbox_put(e, b);
        }
        if req.seal {
            let steps = self.role.sealed(from, req.epoch);
            self.carry_out(steps, b);
        }
        Ok(())
    }

    /// Giver: reads a copy page and puts it on the stream (before the current batch's own
    /// moving writes, which it does not include: the page is read from what is on disk).
    fn copy_page(&self, req: PageRequest) -> Result<Page, ChatError> {
        let PageRequest {
            transition: t,
            cf,
            range: (start, end),
            max,
            dest,
            after,
        } = req;
        if !self.role.may_copy(t.to().epoch()) {
            return Err(
                MoveError::NotInFlight(format!("the move to epoch {}", t.to().epoch())).into(),
            );
        }
        self.stream_page(dest, Scope::Move(t.clone()), cf, (start, end), max, after)
    }

    /// Reads one page of `cf` in `range` from disk and puts it on `dest`'s stream in `scope`
    /// (ahead of the current batch's own writes, which the page does not include): a move's
    /// copy and a follower's fill.
    pub(super) fn stream_page(
        &self,
        dest: String,
        scope: Scope,
        cf: Cf,
        (start, end): (u64, u64),
        (max_keys, max_bytes): (usize, usize),
        after: Option<Vec<u8>>,
    ) -> Result<Page, ChatError> {
        let Some(tx) = &self.streams_tx else {
            return Err(MoveError::NotInFlight("no streams to other holders".into()).into());
        };
        let (kvs, done) =
            self.store
                .hash_range_page(cf, start, end, after.as_deref(), max_keys, max_bytes)?;
        let keys = kvs.len() as u64;
        let bytes = kvs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let last_key = if done {
            None
        } else {
            kvs.last().map(|(k, _)| k.clone())
        };
        let (ack_tx, acked) = oneshot::channel();
        if keys == 0 {
            // Nothing to send: done at once (most ranges are empty in most column families).
            let _ = ack_tx.send(());
        } else {
            let wire_cf = cf.to_wire().map_or(0, |c| c as i32);
            let writes = kvs
                .into_iter()
                .map(|(key, value)| RawWrite {
                    cf: wire_cf,
                    key,
                    value,
                    delete: false,
                })
                .collect();
            let _ = tx.send(StreamItem::writes(
                dest,
                scope,
                Vec::new(),
                writes,
                Done::Notify(ack_tx),
            ));
        }
        Ok(Page {
            keys,
            bytes,
            last_key,
            acked,
        })
    }
}
