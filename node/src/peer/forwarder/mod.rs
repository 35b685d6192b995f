//! The outbox forwarder: hands outbox entries to the node that owns their recipient.
//!
//! Per destination node, in outbox order, up to `forward.max_inflight` requests in flight, a
//! recipient's entries in one of them at a time (`queues::take_request`), so the entries to one
//! recipient arrive in the order they were accepted while other recipients' requests overlap.
//! The outbox on disk is the truth; memory holds a bounded queue per destination (entries past
//! the bound stay on disk and are read back as the queue drains). A failed request is retried
//! with backoff. An entry that could not be handed over for `give_up` is dropped and its sender
//! told (`Failed`), but only if no request carrying it may have reached the peer: an entry whose
//! fate is unknown is retried until the peer answers, because the receiver may already have
//! stored it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chat_proto::cluster::{peer_request, Forward, ForwardEntry, ForwardStatus, PeerRequest};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;

use self::queues::{take_request, Dest};
use self::send::{apply_here, forward, registered, ForwardReply};
use super::pipeline::Lanes;
use super::transport::{Peers, RequestError};
use crate::admin;
use crate::config::ForwardSection;
use crate::routing::Routing;
use crate::store::Store;
use crate::writer::{Outboxed, WriterHandle};

mod queues;
mod send;

/// Entries read from the outbox per step when (re)loading queues.
const SCAN_PAGE: usize = 4096;
/// Encoded bytes of entries per request, well below the transport's frame limit.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Outbox entries of one request, with their seqs, in order.
type Carried = Vec<(u64, Arc<ForwardEntry>)>;

struct Finished {
    dest: String,
    items: Carried,
    started: Instant,
    result: Result<ForwardReply, RequestError>,
}

pub struct Forwarder {
    store: Arc<Store>,
    writer: WriterHandle,
    peers: Arc<Peers>,
    routing: Routing,
    opts: ForwardSection,
    dests: HashMap<String, Dest>,
    /// Requests in flight per destination, and the waits after failures.
    lanes: Lanes,
    inflight: HashSet<u64>,
    /// Recipients with entries in a request in flight: their later entries wait for it.
    busy_to: HashSet<String>,
    /// What each running request carries, to retry it if its task fails.
    running: HashMap<tokio::task::Id, (String, Carried)>,
    /// Entries a request may have carried to a peer without an answer: never given up.
    uncertain: HashSet<u64>,
    /// Entries reported delivered whose removal from the outbox is not known to be written yet:
    /// a reload must not queue them again.
    removing: HashSet<u64>,
    /// The highest seq known to be visible: read from disk at startup, or handed over by the
    /// writer (in seq order, once its batch is visible). Reloads read no further, so an entry is
    /// never sent before its batch is visible, nor queued twice (once from disk, once handed).
    visible_upto: u64,
    /// Entries in the outbox on disk.
    depth: u64,
    epoch: u64,
    /// The ring of `epoch`: every queue is built for it.
    ring: Option<Arc<chat_ring::Ring>>,
}

impl Forwarder {
    pub fn new(
        store: Arc<Store>,
        writer: WriterHandle,
        peers: Arc<Peers>,
        routing: Routing,
        opts: ForwardSection,
    ) -> Forwarder {
        let (min, max) = opts.backoff();
        let depth = opts.max_inflight;
        Forwarder {
            store,
            writer,
            peers,
            routing,
            opts,
            dests: HashMap::new(),
            lanes: Lanes::new(min, max, depth),
            inflight: HashSet::new(),
            busy_to: HashSet::new(),
            running: HashMap::new(),
            uncertain: HashSet::new(),
            removing: HashSet::new(),
            visible_upto: 0,
            depth: 0,
            epoch: 0,
            ring: None,
        }
    }

    pub async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Outboxed>,
        mut shutdown: broadcast::Receiver<()>,
    ) {
        let mut view = self.routing.view.clone();
        {
            let v = view.borrow_and_update();
            self.epoch = v.epoch();
            self.ring = v.ring.clone();
        }
        self.visible_upto = self.store.last_outbox_seq().unwrap_or(0);
        self.depth = self.reload(None) as u64;
        // Whether an entry found at startup was sent before a crash or restart is not known: it
        // may be stored at its peer already, so it is never given up (only retried).
        for d in self.dests.values() {
            self.uncertain.extend(d.queue.keys());
        }
        tracing::info!(entries = self.depth, "outbox loaded");
        let mut tasks: JoinSet<Finished> = JoinSet::new();
        // Waits for the writer to remove delivered entries; yields their seqs.
        let mut removals: JoinSet<Vec<u64>> = JoinSet::new();
        // Set when the ring changed: queues are rebuilt once no request is in flight, so an
        // entry coming back from the old owner cannot fall behind a later one sent to the new.
        let mut rebuild = false;
        let mut peers_seen = registered(&view.borrow());
        loop {
            if rebuild && tasks.is_empty() {
                tracing::debug!(
                    epoch = self.epoch,
                    "rebuilding forward queues under a new ring"
                );
                rebuild = false;
                for d in self.dests.values_mut() {
                    d.queue.clear();
                    d.spill_from = None;
                }
                self.reload(None);
                // Destinations change with the ring, so every wait ends: entries a peer with
                // this ring refused (NOT_OWNER) go to their new owners now, and an unreachable
                // peer gets one early attempt.
                self.lanes.retry_now();
            }
            if !rebuild {
                self.dispatch(&mut tasks);
            }
            metrics::gauge!(admin::OUTBOX_DEPTH).set(self.depth as f64);
            let dests = &self.dests;
            let wake = self
                .lanes
                .wake_at(|d| dests.get(d).is_some_and(Dest::has_work))
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                m = rx.recv() => match m {
                    Some(batch) => {
                        for (seq, e) in batch {
                            // Up to `visible_upto`: read from disk at startup already.
                            if seq <= self.visible_upto {
                                continue;
                            }
                            self.visible_upto = seq;
                            self.depth += 1;
                            self.enqueue(seq, e, false);
                        }
                    }
                    None => break,
                },
                Some(done) = tasks.join_next_with_id() => match done {
                    Ok((id, done)) => {
                        self.running.remove(&id);
                        self.on_done(done, &mut removals).await;
                    }
                    Err(e) => {
                        // A request that panicked: its outcome is unknown, so retry its entries.
                        tracing::error!(error = %e, "forward task failed");
                        if let Some((dest, items)) = self.running.remove(&e.id()) {
                            let result = Err(RequestError::Unknown(format!("task failed: {e}")));
                            let started = Instant::now();
                            let finished = Finished { dest, items, started, result };
                            self.on_done(finished, &mut removals).await;
                        }
                    }
                },
                changed = view.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let (epoch, ring, now_registered) = {
                        let v = view.borrow_and_update();
                        (v.epoch(), v.ring.clone(), registered(&v))
                    };
                    if epoch != self.epoch {
                        // Destinations follow the ring: rebuild the queues under the new one.
                        self.epoch = epoch;
                        self.ring = ring;
                        rebuild = true;
                    }
                    if now_registered != peers_seen {
                        // A peer registered (again): try waiting destinations now.
                        peers_seen = now_registered;
                        self.lanes.retry_now();
                    }
                }
                Some(Ok(seqs)) = removals.join_next() => {
                    for s in seqs {
                        self.removing.remove(&s);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.recv() => break,
            }
        }
        // Entries still in flight stay in the outbox; they are sent again after a restart and the
        // receivers deduplicate them.
        tasks.abort_all();
    }

    /// Starts requests for every destination that has entries, room for another request and
    /// no wait pending, while they have entries of recipients not in flight.
    fn dispatch(&mut self, tasks: &mut JoinSet<Finished>) {
        let now = Instant::now();
        let ready: Vec<String> = self
            .dests
            .iter()
            .filter(|(n, d)| d.has_work() && self.lanes.ready(n, now))
            .map(|(n, _)| n.clone())
            .collect();
        for dest in ready {
            while self.lanes.ready(&dest, now) && self.start_request(&dest, tasks) {}
        }
    }

    /// Starts the next request to `dest`, if it has entries of recipients not in flight.
    fn start_request(&mut self, dest: &str, tasks: &mut JoinSet<Finished>) -> bool {
        let d = &self.dests[dest];
        if d.spill_from.is_some() && d.queue.len() < self.opts.max_queued / 2 {
            self.reload(Some(dest));
        }
        let d = self.dests.get_mut(dest).expect("listed");
        let items = take_request(
            &mut d.queue,
            &mut self.busy_to,
            self.opts.batch as usize,
            MAX_BATCH_BYTES,
        );
        if items.is_empty() {
            return false;
        }
        let dest = dest.to_string();
        self.lanes.start(&dest);
        tracing::trace!(%dest, first = items[0].0, last = items[items.len() - 1].0, n = items.len(), "forward request");
        for (seq, _) in &items {
            self.inflight.insert(*seq);
        }
        let entries: Vec<ForwardEntry> = items.iter().map(|(_, e)| (**e).clone()).collect();
        let (peers, writer, timeout) =
            (self.peers.clone(), self.writer.clone(), self.opts.timeout());
        let (self_id, epoch) = (self.routing.self_id.clone(), self.epoch);
        let view = self.routing.view.clone();
        let (task_dest, task_items) = (dest.clone(), items.clone());
        let handle = tasks.spawn(async move {
            let started = Instant::now();
            let result = if dest == self_id {
                apply_here(&writer, entries, &view).await
            } else {
                let req = PeerRequest {
                    from_node: self_id,
                    epoch,
                    request: Some(peer_request::Request::Forward(Forward { entries })),
                };
                forward(&peers, &dest, &req, timeout).await
            };
            Finished {
                dest,
                items,
                started,
                result,
            }
        });
        self.running.insert(handle.id(), (task_dest, task_items));
        true
    }

    /// Handles a request's outcome; the wait for the removal of the entries it delivered goes
    /// into `removals`.
    async fn on_done(&mut self, done: Finished, removals: &mut JoinSet<Vec<u64>>) {
        let Finished {
            dest,
            items,
            started,
            result,
        } = done;
        for (seq, e) in &items {
            self.inflight.remove(seq);
            self.busy_to.remove(&e.to);
        }
        tracing::trace!(%dest, first = items.first().map(|i| i.0), n = items.len(), ok = result.is_ok(), "forward answered");
        match result {
            Ok(ForwardReply {
                statuses,
                epoch: peer_epoch,
            }) => {
                metrics::histogram!(admin::FORWARD_SECONDS).record(started.elapsed().as_secs_f64());
                let (mut done_seqs, mut done_to) = (Vec::new(), Vec::new());
                let (mut not_owner, mut invalid) = (0, 0);
                for ((seq, entry), st) in items.into_iter().zip(statuses) {
                    match st {
                        ForwardStatus::Stored => {
                            done_seqs.push(seq);
                            done_to.push(entry.to.clone());
                        }
                        ForwardStatus::Invalid => {
                            tracing::error!(seq, to = %entry.to, "peer refused an outbox entry as invalid; dropping it");
                            invalid += 1;
                            done_seqs.push(seq);
                            done_to.push(entry.to.clone());
                        }
                        // A status this version does not know (a newer peer): keep the entry.
                        ForwardStatus::Unspecified => {
                            self.uncertain.insert(seq);
                            self.enqueue(seq, entry, true);
                        }
                        ForwardStatus::NotOwner => {
                            not_owner += 1;
                            // Re-routed under whatever ring we hold when it is next sent.
                            self.enqueue(seq, entry, true);
                        }
                    }
                }
                for s in &done_seqs {
                    self.uncertain.remove(s);
                }
                metrics::counter!(admin::FORWARDED, "result" => "stored")
                    .increment(done_seqs.len() as u64 - invalid);
                if invalid > 0 {
                    metrics::counter!(admin::FORWARDED, "result" => "invalid").increment(invalid);
                }
                // Removed in a later batch, not waited for here: if that batch fails (a full
                // disk), the entries stay and are sent again after a restart, and the receiver
                // deduplicates them.
                let delivered = done_seqs.iter().copied().zip(done_to).collect();
                match self.writer.delivered(delivered).await {
                    Ok(removed) => {
                        // Until then a reload (a rebuild) would still find them on disk.
                        self.removing.extend(done_seqs.iter().copied());
                        let seqs = done_seqs.clone();
                        removals.spawn(async move {
                            // A failed removal leaves them on disk: they may be sent again, and
                            // the receiver deduplicates them.
                            let _ = removed.await;
                            seqs
                        });
                    }
                    Err(e) => tracing::debug!(error = %e, "outbox removal not queued"),
                }
                self.depth = self.depth.saturating_sub(done_seqs.len() as u64);
                if not_owner > 0 {
                    metrics::counter!(admin::FORWARDED, "result" => "not_owner")
                        .increment(not_owner);
                    // The epochs say whose ring is stale. Either way the entries wait (backoff):
                    // a newer ring here re-routes them at once when it arrives (the rebuild
                    // ends every wait); an older one at the peer is retried at the same peer.
                    if peer_epoch > self.epoch {
                        tracing::info!(peer = %dest, not_owner, peer_epoch, epoch = self.epoch, "peer has a newer ring; re-routing once this node has it");
                    } else {
                        tracing::info!(peer = %dest, not_owner, peer_epoch, epoch = self.epoch, "peer does not own some recipients under its ring; retrying after backoff");
                    }
                }
                self.lanes.done(&dest, not_owner == 0, Instant::now());
            }
            Err(e) => {
                let uncertain = matches!(e, RequestError::Unknown(_));
                metrics::counter!(admin::FORWARDED, "result" => "failed")
                    .increment(items.len() as u64);
                tracing::warn!(peer = %dest, entries = items.len(), error = %e, "forward failed; will retry");
                for (seq, entry) in items {
                    if uncertain {
                        self.uncertain.insert(seq);
                    }
                    self.enqueue(seq, entry, true);
                }
                self.lanes.done(&dest, false, Instant::now());
                self.give_up_expired(&dest, &e.to_string()).await;
            }
        }
    }

    /// Gives up the entries of `dest` older than the give-up time that surely never arrived.
    async fn give_up_expired(&mut self, dest: &str, reason: &str) {
        let floor = chat_proto::now_ms() - self.opts.give_up_ms as i64;
        let Some(d) = self.dests.get_mut(dest) else {
            return;
        };
        let expired: Vec<(u64, Arc<ForwardEntry>)> = d
            .queue
            .iter()
            .filter(|(s, e)| !self.uncertain.contains(s) && e.created_ms < floor)
            .map(|(s, e)| (*s, e.clone()))
            .collect();
        if expired.is_empty() {
            return;
        }
        let reason = format!("recipient's node unreachable: {reason}");
        if let Err(e) = self.writer.give_up(expired.clone(), reason).await {
            tracing::error!(error = %e, "could not record given-up entries; will try again");
            return;
        }
        tracing::warn!(peer = %dest, entries = expired.len(), "gave up forwarding; senders told");
        metrics::counter!(admin::FORWARDED, "result" => "given_up").increment(expired.len() as u64);
        self.depth = self.depth.saturating_sub(expired.len() as u64);
        if let Some(d) = self.dests.get_mut(dest) {
            for (s, _) in &expired {
                d.queue.remove(s);
            }
        }
    }
}
