//! Delivered/read tallies of group messages, on the group's home node: a member's receipt
//! becomes one expiring key per member and message (`dedup` column family), so neither order
//! nor a repeat matters and no receipt per member reaches the sender.

use chat_proto::cluster::{forward_entry, ForwardEntry};
use chat_proto::v1::{Receipt, ReceiptKind};

use super::batch::Batch;
use super::Writer;
use crate::store::groups::{TALLY_DELIVERED, TALLY_READ};
use crate::store::keys::tally_key;
use crate::store::Cf;

impl Writer {
    /// A member's receipt for group messages, counted on the group's home node: here, or
    /// through the outbox. Tallies are idempotent (one key per member and message), so
    /// neither order nor a repeat matters.
    pub(super) fn tally_to(&mut self, group: &str, receipt: Receipt, b: &mut Batch) {
        if self.owns(group, b) && !self.held(group) {
            self.tally(group, &receipt, b);
            return;
        }
        let e = ForwardEntry {
            to: group.to_string(),
            id: (self.env.new_id)(),
            created_ms: receipt.ts,
            item: Some(forward_entry::Item::GroupReceipt(receipt)),
        };
        self.outbox_put(e, b);
    }

    pub(super) fn tally(&mut self, group: &str, r: &Receipt, b: &mut Batch) {
        let kind = match ReceiptKind::try_from(r.kind) {
            Ok(ReceiptKind::Delivered) => TALLY_DELIVERED,
            Ok(ReceiptKind::Read) => TALLY_READ,
            _ => return,
        };
        let ts = b.now_ms.to_be_bytes();
        for id in &r.msg_ids {
            b.writes
                .put(Cf::Dedup, tally_key(group, id, kind, &r.by), ts);
        }
    }
}
