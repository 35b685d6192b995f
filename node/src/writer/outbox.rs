//! The outbox: entries for users owned by other nodes, queued here in the batch that makes them
//! and removed once their owner stored them (or given up). The writer owns the queue's state:
//! the last seq and how many entries wait per recipient.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chat_proto::cluster::{forward_entry, ForwardEntry};
use chat_proto::store::{inbox_entry, InboxEntry};
use chat_proto::v1::Failed;
use prost::Message as _;

use super::batch::{Answer, Batch, BatchError};
use super::command::OutboxCmd;
use super::Writer;
use crate::error::ChatError;
use crate::store::keys::outbox_key;
use crate::store::{Cf, Store};

pub(super) struct OutboxState {
    /// The last outbox seq handed out.
    pub seq: u64,
    /// The seqs of the entries in the outbox. The forwarder may report an entry delivered more
    /// than once (it sends an entry again when it cannot know whether its removal was written,
    /// e.g. after a queue rebuild): only the first report counts.
    queued: HashSet<u64>,
    /// Recipients with entries waiting, and how many. An entry for a user this node owns goes
    /// through the outbox too while older ones for that user wait there (after the ring moved
    /// the user here), so it cannot overtake them: this count must never fall below the truth.
    waiting: HashMap<String, u32>,
}

impl OutboxState {
    pub(super) fn load(store: &Store) -> Result<OutboxState, ChatError> {
        let mut state = OutboxState {
            seq: store.last_outbox_seq()?,
            queued: HashSet::new(),
            waiting: HashMap::new(),
        };
        let mut from = 0;
        loop {
            let page = store.outbox_from(from, 10_000)?;
            let Some((last, _)) = page.last() else { break };
            from = last + 1;
            for (seq, e) in &page {
                state.add(*seq, &e.to);
            }
        }
        Ok(state)
    }

    pub(super) fn pending(&self, to: &str) -> bool {
        self.waiting.contains_key(to)
    }

    fn add(&mut self, seq: u64, to: &str) {
        if self.queued.insert(seq) {
            *self.waiting.entry(to.to_string()).or_default() += 1;
        }
    }

    fn remove(&mut self, seq: u64, to: &str) {
        if !self.queued.remove(&seq) {
            return;
        }
        if let Some(n) = self.waiting.get_mut(to) {
            *n -= 1;
            if *n == 0 {
                self.waiting.remove(to);
            }
        }
    }

    /// A committed batch added the entries `added` and removed the entries `removed`.
    pub(super) fn counted<'a>(
        &mut self,
        added: impl IntoIterator<Item = (u64, &'a str)>,
        removed: &[(u64, String)],
    ) {
        for (seq, to) in added {
            self.add(seq, to);
        }
        for (seq, to) in removed {
            self.remove(*seq, to);
        }
    }
}

impl Writer {
    pub(super) fn apply_outbox(&mut self, cmd: OutboxCmd, b: &mut Batch) {
        match cmd {
            OutboxCmd::Delivered { entries, reply } => {
                for (seq, to) in entries {
                    b.writes.delete_relaxed(Cf::Outbox, outbox_key(seq));
                    b.unoutboxed.push((seq, to));
                }
                b.answers.push(Answer::Done(reply));
            }
            // Writes several entries: if one fails after others were added to the batch, the
            // whole batch is abandoned rather than half-applied.
            OutboxCmd::GiveUp {
                entries,
                reason,
                reply,
            } => match self.give_up(&entries, &reason, b) {
                Ok(()) => b.answers.push(Answer::Done(reply)),
                Err(e) => {
                    b.abort = Some(BatchError::Aborted(format!("giving up entries: {e}")));
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    /// Queues `e` for its owner in this batch.
    pub(super) fn outbox_put(&mut self, e: ForwardEntry, b: &mut Batch) {
        self.outbox.seq += 1;
        b.writes
            .put(Cf::Outbox, outbox_key(self.outbox.seq), e.encode_to_vec());
        b.note_outboxed(self.outbox.seq, Arc::new(e));
    }

    /// Removes outbox entries the forwarder gave up on, telling each message's sender.
    fn give_up(
        &mut self,
        entries: &[(u64, Arc<ForwardEntry>)],
        reason: &str,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let now = b.now_ms;
        for (seq, e) in entries {
            b.writes.delete(Cf::Outbox, outbox_key(*seq));
            b.unoutboxed.push((*seq, e.to.clone()));
            let Some(forward_entry::Item::Message(m)) = &e.item else {
                // A receipt or group event that cannot be delivered is dropped: the message it
                // is about stays delivered or read either way.
                continue;
            };
            if !m.group.is_empty() {
                // One member's copy of a group message: the sender has its ✓ and the group's
                // counts, and no one failure report per unreachable member.
                tracing::warn!(msg_id = %m.msg_id, to = %e.to, group = %m.group, "gave up a member's copy of a group message");
                continue;
            }
            if !self.owns(&m.from, b) {
                tracing::warn!(msg_id = %m.msg_id, from = %m.from, "giving up a message whose sender moved away; not reported");
                continue;
            }
            let failed = Failed {
                msg_id: m.msg_id.clone(),
                to: m.to.clone(),
                client_msg_id: m.client_msg_id.clone(),
                reason: reason.to_string(),
                ts: now,
            };
            let entry = InboxEntry {
                entry: Some(inbox_entry::Entry::Failed(failed)),
            };
            self.append(&m.from, now, entry, b)?;
        }
        Ok(())
    }
}
