//! The writer's side of replication (`crate::replication`): as owner, the placement of each
//! batch's ring, fills of followers, and fill pages; as follower, the owners' streams.

use std::sync::Arc;

use chat_proto::cluster::{HashRange, Mirror};
use chat_ring::Ring;

use super::batch::Batch;
use super::command::{ReplicaCmd, ReplicaPage};
use super::Writer;
use crate::error::ChatError;
use crate::rebalance::{MoveError, Page};
use crate::replication::placement::Placement;
use crate::replication::Fill;
use crate::store::keys::owner_hash;
use crate::store::Cf;
use crate::stream::{Done, Scope, StreamItem};

impl Writer {
    /// At a batch's start: the placement of the batch's ring. Followers new to this node's keys
    /// (all of them at start: what a follower holds from before is unknown) are filled before
    /// anything later becomes visible.
    pub(super) fn observe_placement(&mut self, ring: Option<&Arc<Ring>>) {
        let Some(ring) = ring else { return };
        if self
            .placement
            .as_ref()
            .is_some_and(|p| p.epoch() == ring.epoch())
        {
            return;
        }
        let new = Arc::new(Placement::new(ring, &self.routing.self_id));
        let old = self.placement.replace(new.clone());
        // Keys this node followed may be its own now: nothing cached about them is trusted.
        self.cache.forget();
        let dests: Vec<String> = new
            .followers()
            .iter()
            .filter(|(dest, ranges)| {
                old.as_ref()
                    .and_then(|o| o.followers().get(*dest))
                    .is_none_or(|before| before != *ranges)
            })
            .map(|(dest, _)| dest.clone())
            .collect();
        self.start_fills(&new, dests);
    }

    /// Clears what each of `dests` follows for this node and has it copied again; every batch
    /// from now on waits until they are full.
    fn start_fills(&mut self, p: &Arc<Placement>, dests: Vec<String>) {
        let (Some(streams), Some(fills)) = (&self.streams_tx, &self.fills_tx) else {
            return;
        };
        if dests.is_empty() {
            return;
        }
        let holds = self.visibility.push(Box::new(|| {}), dests.len());
        for (dest, hold) in dests.into_iter().zip(holds) {
            let ranges = p.followers().get(&dest).cloned().unwrap_or_default();
            let reset = ranges
                .iter()
                .map(|&(start, end)| HashRange { start, end })
                .collect();
            let scope = Scope::Replica { epoch: p.epoch() };
            let _ = streams.send(StreamItem::writes(
                dest.clone(),
                scope,
                reset,
                Vec::new(),
                Done::Nothing,
            ));
            let _ = fills.send(Fill {
                dest,
                epoch: p.epoch(),
                ranges,
                hold,
            });
        }
    }

    pub(super) fn apply_replica_cmd(&mut self, cmd: ReplicaCmd) {
        match cmd {
            ReplicaCmd::Page { req, reply } => {
                let _ = reply.send(self.replica_page(req));
            }
            ReplicaCmd::Refill { dest, reply } => {
                let result = match self.placement.clone() {
                    Some(p) if p.followers().contains_key(&dest) => {
                        self.start_fills(&p, vec![dest]);
                        Ok(())
                    }
                    _ => Err(MoveError::NotInFlight(format!("{dest} follows nothing here")).into()),
                };
                let _ = reply.send(result);
            }
        }
    }

    /// Reads the next page of what `req.dest` follows and puts it on its stream (ahead of the
    /// current batch's own writes, which the page, read from disk, does not include).
    fn replica_page(&self, req: ReplicaPage) -> Result<Page, ChatError> {
        let ReplicaPage {
            dest,
            epoch,
            cf,
            range: (start, end),
            max,
            after,
        } = req;
        let p = self
            .placement
            .as_ref()
            .filter(|p| p.epoch() == epoch)
            .ok_or_else(|| MoveError::NotInFlight(format!("the ring of epoch {epoch}")))?;
        let within = p
            .followers()
            .get(&dest)
            .is_some_and(|rs| rs.iter().any(|&(a, z)| a <= start && end <= z));
        if !within {
            return Err(
                MoveError::NotInFlight(format!("{dest} does not follow that range")).into(),
            );
        }
        self.stream_page(dest, Scope::Replica { epoch }, cf, (start, end), max, after)
    }

    /// Follower: applies one request of an owner's stream, if in this node's ring `from` owns
    /// every key it writes and this node follows them (fencing: a deposed owner, or one whose
    /// ring is older than a change of holders, is refused and gives no ✓).
    pub(super) fn apply_replica(
        &mut self,
        from: &str,
        req: Mirror,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let Some(p) = self.placement.clone() else {
            return Err(MoveError::NotYet("no ring here yet".into()).into());
        };
        if req.epoch > p.epoch() {
            return Err(MoveError::NotYet(format!(
                "the ring of epoch {} (this node has {})",
                req.epoch,
                p.epoch()
            ))
            .into());
        }
        if req.seal || !req.outbox.is_empty() {
            return Err(ChatError::BadFrame(
                "a replication request with a seal or outbox entries".into(),
            ));
        }
        let fenced = |what: &str| -> ChatError {
            MoveError::OutOfRange(format!(
                "{what} that {from} does not own, or this node does not follow, in ring epoch {}",
                p.epoch()
            ))
            .into()
        };
        if req.reset.iter().any(|r| !p.follows(from, r.start, r.end)) {
            return Err(fenced("a reset"));
        }
        let mut writes = Vec::with_capacity(req.writes.len());
        for w in &req.writes {
            let Some(cf) = Cf::from_wire(w.cf) else {
                return Err(ChatError::BadFrame(format!(
                    "column family {} is not replicated",
                    w.cf
                )));
            };
            if !owner_hash(&w.key).is_some_and(|h| p.follows(from, h, h)) {
                return Err(fenced("a write"));
            }
            writes.push((cf, w));
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
        Ok(())
    }
}
