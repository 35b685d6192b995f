//! Receipts: an ack (or read) of a range of a user's inbox becomes one receipt per sender, in
//! each sender's inbox (here or through the outbox).

use std::collections::HashMap;

use chat_proto::store::{inbox_entry, InboxEntry};
use chat_proto::v1::{Receipt, ReceiptKind};

use super::batch::Batch;
use super::Writer;
use crate::error::ChatError;

/// Most message ids in one stored receipt; a longer run is split into several receipts.
const MAX_RECEIPT_IDS: usize = 512;
/// Inbox entries read per step when collecting the messages an ack covers.
const RECEIPT_SCAN_PAGE: u64 = 1024;

/// Where a receipt goes: the sender's inbox, or a group's tallies.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Target {
    Sender(String),
    Group(String),
}

impl Writer {
    /// Stores a receipt of `kind` in each sender's inbox for the messages of `user`'s inbox in
    /// `from..=to` (one receipt per sender, split at MAX_RECEIPT_IDS).
    pub(super) fn receipts(
        &mut self,
        user: &str,
        from: u64,
        to: u64,
        kind: ReceiptKind,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        // Senders (or, for group messages, groups: counted on the group's home node) in order
        // of first appearance, with their message ids in inbox order.
        let mut by_sender: Vec<(Target, Vec<String>)> = Vec::new();
        let mut index: HashMap<Target, usize> = HashMap::new();
        let mut note = |entry: &InboxEntry| {
            if let Some(inbox_entry::Entry::Message(m)) = &entry.entry {
                if m.from == user {
                    return;
                }
                let target = if m.group.is_empty() {
                    Target::Sender(m.from.clone())
                } else {
                    Target::Group(m.group.clone())
                };
                let i = *index.entry(target.clone()).or_insert_with(|| {
                    by_sender.push((target, Vec::new()));
                    by_sender.len() - 1
                });
                by_sender[i].1.push(m.msg_id.clone());
            }
        };
        if let Some(entries) = self.cache.recent(user, from, to) {
            // The same retention rule as reads from storage.
            let floor = self.store.retention_floor_ms();
            for (_, _, entry) in entries.filter(|(_, ts, _)| *ts >= floor) {
                note(entry);
            }
        } else {
            let mut next = from;
            while next <= to {
                let want = (to - next + 1).min(RECEIPT_SCAN_PAGE) as usize;
                let page = self.store.inbox_from(user, next, want)?;
                let Some(last) = page.last().map(|e| e.seq) else {
                    break;
                };
                for e in page.iter().take_while(|e| e.seq <= to) {
                    note(&e.entry);
                }
                next = last + 1;
            }
        }
        let ts = b.now_ms;
        for (target, ids) in by_sender {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                let receipt = Receipt {
                    kind: kind as i32,
                    by: user.to_string(),
                    msg_ids: chunk.to_vec(),
                    ts,
                };
                let sender = match &target {
                    Target::Sender(s) => s,
                    Target::Group(g) => {
                        self.tally_to(g, receipt, b);
                        continue;
                    }
                };
                let entry = InboxEntry {
                    entry: Some(inbox_entry::Entry::Receipt(receipt)),
                };
                let id = (self.env.new_id)();
                self.deliver_to(sender, ts, &id, entry, b)?;
            }
        }
        Ok(())
    }
}
