//! Entries other nodes forward here (messages and receipts for users this node owns), stored
//! once per entry id.

use chat_proto::cluster::{forward_entry, ForwardEntry, ForwardStatus};
use chat_proto::store::{inbox_entry, InboxEntry};

use super::batch::{Answer, Batch, BatchError};
use super::command::PeerCmd;
use super::Writer;
use crate::error::ChatError;
use crate::store::keys::forward_dedup_key;
use crate::store::Cf;

impl Writer {
    pub(super) fn apply_peer(&mut self, cmd: PeerCmd, b: &mut Batch) {
        match cmd {
            // Writes several entries: if one fails after others were added to the batch, the
            // whole batch is abandoned rather than half-applied.
            PeerCmd::Apply { entries, reply } => {
                let mut statuses = Vec::with_capacity(entries.len());
                for e in entries {
                    match self.apply_forwarded(e, b) {
                        Ok(st) => statuses.push(st),
                        Err(err) => {
                            b.abort = Some(BatchError::Aborted(format!(
                                "applying forwarded entries: {err}"
                            )));
                            let _ = reply.send(Err(err));
                            return;
                        }
                    }
                }
                b.answers.push(Answer::Applied(reply, statuses));
            }
            PeerCmd::Stream { from, req, reply } if req.replica => {
                match self.apply_replica(&from, req, b) {
                    // Answered once on disk, not once visible: this node's own batches may wait
                    // for its followers, and theirs for this node (a cycle of waits otherwise).
                    Ok(()) => b.on_disk.push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            PeerCmd::Stream { from, req, reply } => match self.apply_stream(&from, req, b) {
                Ok(()) => b.answers.push(Answer::Done(reply)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    /// Stores one entry forwarded by another node, once per entry id.
    fn apply_forwarded(
        &mut self,
        e: ForwardEntry,
        b: &mut Batch,
    ) -> Result<ForwardStatus, ChatError> {
        if e.to.is_empty() || e.id.is_empty() {
            return Ok(ForwardStatus::Invalid);
        }
        // Without a ring (a node that has not loaded it yet) nothing is ours to accept.
        if !self.owns(&e.to, b) {
            return Ok(ForwardStatus::NotOwner);
        }
        let entry = match e.item {
            Some(forward_entry::Item::Message(m)) => inbox_entry::Entry::Message(m),
            Some(forward_entry::Item::Receipt(r)) => inbox_entry::Entry::Receipt(r),
            Some(forward_entry::Item::GroupEvent(ev)) => inbox_entry::Entry::GroupEvent(ev),
            // For the group `to`: tallies are idempotent, no dedup record needed.
            Some(forward_entry::Item::GroupReceipt(r)) => {
                self.tally(&e.to, &r, b);
                return Ok(ForwardStatus::Stored);
            }
            None => return Ok(ForwardStatus::Invalid),
        };
        let key = forward_dedup_key(&e.to, &e.id);
        if b.forwarded.contains(&key) || self.store.forward_seen(&e.to, &e.id)? {
            return Ok(ForwardStatus::Stored);
        }
        // A message from a user the recipient blocked is taken (the sender must not learn of
        // the block) and remembered as seen, but never appended: seq 0 in its dedup record.
        let seq = match &entry {
            inbox_entry::Entry::Message(m)
                if m.group.is_empty() && self.blocked(&e.to, &m.from, b)? =>
            {
                tracing::trace!(to = %e.to, id = %e.id, "sender blocked by the recipient: not delivered");
                0
            }
            _ => {
                let seq = self.append(&e.to, e.created_ms, InboxEntry { entry: Some(entry) }, b)?;
                tracing::trace!(to = %e.to, id = %e.id, seq, "forwarded entry appended");
                seq
            }
        };
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&b.now_ms.to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        b.writes.put(Cf::Dedup, &key, v);
        b.forwarded.insert(key);
        Ok(ForwardStatus::Stored)
    }
}
