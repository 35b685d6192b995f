//! The per-destination queues: which node an outbox entry goes to (under the ring the queues
//! are built for), (re)filling the queues from the outbox on disk, and what the next request
//! to a destination carries.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chat_proto::cluster::ForwardEntry;
use prost::Message as _;

use super::{Carried, Forwarder, SCAN_PAGE};

/// How far past its size a request looks for entries of recipients not in flight.
const SCAN_FACTOR: usize = 4;

/// The next request's entries, taken out of `queue` in seq order: every entry whose recipient
/// is not in a request in flight (`busy`), up to `max_items` entries and `max_bytes` (at least
/// one entry). An entry of a busy recipient stays, and so do all later ones of that recipient,
/// so a recipient's entries are in one request in flight at a time and arrive in outbox order.
/// The recipients taken become busy. No I/O.
pub(super) fn take_request(
    queue: &mut BTreeMap<u64, Arc<ForwardEntry>>,
    busy: &mut HashSet<String>,
    max_items: usize,
    max_bytes: usize,
) -> Carried {
    let mut seqs = Vec::new();
    let mut taken: HashSet<&str> = HashSet::new();
    let mut bytes = 0;
    for (seq, e) in queue.iter().take(max_items.saturating_mul(SCAN_FACTOR)) {
        if seqs.len() >= max_items || bytes >= max_bytes {
            break;
        }
        if busy.contains(&e.to) {
            continue;
        }
        taken.insert(&e.to);
        bytes += e.encoded_len();
        seqs.push(*seq);
    }
    busy.extend(taken.into_iter().map(str::to_string));
    seqs.into_iter()
        .filter_map(|s| queue.remove_entry(&s))
        .collect()
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(to: usize) -> Arc<ForwardEntry> {
        Arc::new(ForwardEntry {
            to: format!("u{to}"),
            ..Default::default()
        })
    }

    #[test]
    fn a_busy_recipients_entries_wait_and_the_others_go() {
        let mut q: BTreeMap<u64, _> = [(1, 0), (2, 1), (3, 0), (4, 2), (5, 1)]
            .into_iter()
            .map(|(s, to)| (s, entry(to)))
            .collect();
        let mut busy = HashSet::from(["u1".to_string()]);
        let got: Vec<u64> = take_request(&mut q, &mut busy, 10, usize::MAX)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(got, [1, 3, 4]);
        assert_eq!(q.keys().copied().collect::<Vec<_>>(), [2, 5]);
        assert!(busy.contains("u0") && busy.contains("u2"));
        assert!(
            take_request(&mut q, &mut busy, 10, usize::MAX).is_empty(),
            "every recipient left is busy"
        );
        busy.remove("u1");
        let got: Vec<u64> = take_request(&mut q, &mut busy, 1, usize::MAX)
            .iter()
            .map(|(s, _)| *s)
            .collect();
        assert_eq!(got, [2], "at most max_items");
    }

    proptest! {
        /// Requests taken, answered and failed in any order, with at most `depth` in flight:
        /// every entry is stored exactly once in the end, each recipient's entries in outbox
        /// order, and no recipient is ever in two requests in flight.
        #[test]
        fn each_recipient_keeps_its_order_whatever_fails(
            recipients in prop::collection::vec(0usize..5, 1..60),
            ops in prop::collection::vec((0u8..3, 0usize..8), 0..200),
            depth in 1usize..5,
            max_items in 1usize..6,
        ) {
            let mut q: BTreeMap<u64, _> = recipients
                .iter()
                .enumerate()
                .map(|(i, to)| (i as u64 + 1, entry(*to)))
                .collect();
            let mut busy = HashSet::new();
            let mut inflight: Vec<Carried> = Vec::new();
            let mut stored: Vec<(String, u64)> = Vec::new();
            let finish = |req: Carried, ok: bool, q: &mut BTreeMap<u64, Arc<ForwardEntry>>,
                          busy: &mut HashSet<String>, stored: &mut Vec<(String, u64)>| {
                for (seq, e) in req {
                    busy.remove(&e.to);
                    if ok {
                        stored.push((e.to.clone(), seq));
                    } else {
                        q.insert(seq, e);
                    }
                }
            };
            for (op, i) in ops {
                if op == 0 {
                    if inflight.len() < depth {
                        let req = take_request(&mut q, &mut busy, max_items, usize::MAX);
                        let mut tos: Vec<&str> = req.iter().map(|(_, e)| e.to.as_str()).collect();
                        tos.dedup();
                        for other in &inflight {
                            for (_, e) in other {
                                prop_assert!(!tos.contains(&e.to.as_str()), "a recipient in two requests");
                            }
                        }
                        if !req.is_empty() {
                            inflight.push(req);
                        }
                    }
                } else if !inflight.is_empty() {
                    let req = inflight.remove(i % inflight.len());
                    finish(req, op == 1, &mut q, &mut busy, &mut stored);
                }
            }
            // Then everything in flight answers and the rest goes out.
            for req in std::mem::take(&mut inflight) {
                finish(req, true, &mut q, &mut busy, &mut stored);
            }
            while !q.is_empty() {
                let req = take_request(&mut q, &mut busy, max_items, usize::MAX);
                prop_assert!(!req.is_empty());
                finish(req, true, &mut q, &mut busy, &mut stored);
            }
            prop_assert_eq!(stored.len(), recipients.len());
            for to in 0..5 {
                let name = format!("u{to}");
                let seqs: Vec<u64> = stored.iter().filter(|(t, _)| *t == name).map(|(_, s)| *s).collect();
                let want: Vec<u64> = recipients.iter().enumerate()
                    .filter(|(_, r)| **r == to).map(|(i, _)| i as u64 + 1).collect();
                prop_assert_eq!(seqs, want);
            }
        }
    }
}
