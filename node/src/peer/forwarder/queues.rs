//! The per-destination queues: which node an outbox entry goes to (under the ring the queues
//! are built for), and (re)filling the queues from the outbox on disk.

use std::collections::BTreeMap;
use std::sync::Arc;

use chat_proto::cluster::ForwardEntry;

use super::{Forwarder, SCAN_PAGE};

#[derive(Default)]
pub(super) struct Dest {
    pub(super) queue: BTreeMap<u64, Arc<ForwardEntry>>,
    /// Entries of this destination from this seq on may be on disk only.
    pub(super) spill_from: Option<u64>,
}

impl Dest {
    pub(super) fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.spill_from.is_some()
    }
}

impl Forwarder {
    /// The owner under the ring the queues are built for (not the live view: an entry routed
    /// by a newer ring than the queues could overtake older ones still queued for the old owner;
    /// the switch to a new ring happens in one place, the rebuild).
    pub(super) fn owner(&self, user: &str) -> Option<String> {
        self.ring.as_ref().map(|r| r.owner(user).to_string())
    }

    /// Queues an entry for its destination. Entries coming back from a request (`retry`) always
    /// go back in; others wait on disk once the queue is full (`spill_from`).
    pub(super) fn enqueue(&mut self, seq: u64, entry: Arc<ForwardEntry>, retry: bool) {
        let Some(dest) = self.owner(&entry.to) else {
            return;
        };
        let max_queued = self.opts.max_queued;
        let d = self.dests.entry(dest).or_default();
        if !retry {
            if d.spill_from.is_some_and(|from| seq >= from) {
                return;
            }
            if d.queue.len() >= max_queued {
                d.spill_from = Some(d.spill_from.map_or(seq, |from| from.min(seq)));
                return;
            }
        }
        d.queue.insert(seq, entry);
    }

    /// Reads the outbox (up to `visible_upto`) into the queues: every destination (`None`), or
    /// one that spilled. Returns the number of entries seen.
    pub(super) fn reload(&mut self, only: Option<&str>) -> usize {
        let from = only
            .and_then(|d| self.dests.get(d))
            .and_then(|d| d.spill_from)
            .unwrap_or(0);
        if let Some(d) = only.and_then(|d| self.dests.get_mut(d)) {
            d.spill_from = None;
        }
        let mut next = from;
        let mut seen = 0;
        while next <= self.visible_upto {
            let page = match self.store.outbox_from(next, SCAN_PAGE) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "outbox read failed; will read again");
                    // Keep the unread range marked as on disk only.
                    if let Some(d) = only.and_then(|d| self.dests.get_mut(d)) {
                        d.spill_from = Some(d.spill_from.map_or(next, |f| f.min(next)));
                    }
                    return seen;
                }
            };
            let Some(last) = page.last().map(|(s, _)| *s) else {
                return seen;
            };
            for (seq, e) in page {
                if seq > self.visible_upto {
                    return seen;
                }
                seen += 1;
                if self.inflight.contains(&seq) || self.removing.contains(&seq) {
                    continue;
                }
                let dest = self.owner(&e.to);
                if only.is_some() && dest.as_deref() != only {
                    continue;
                }
                self.enqueue(seq, Arc::new(e), false);
                // Refilling one destination stops once it is full again.
                if let Some(d) = only.and_then(|d| self.dests.get(d)) {
                    if d.spill_from.is_some() {
                        return seen;
                    }
                }
            }
            next = last + 1;
        }
        seen
    }
}
