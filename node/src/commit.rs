//! The committer: the one writer of the node's storage.
//!
//! Sessions send it commands over a bounded channel. A dedicated thread takes whatever is queued
//! (up to `max_batch`), applies it to one RocksDB `WriteBatch`, writes that batch with one WAL fsync
//! (group commit), and only then answers the commands and publishes new inbox entries to online
//! devices. Because one thread assigns every sequence number, per-user order needs no locks, and a
//! device never sees an entry that is not on disk.
//!
//! An entry for a user this node does not own (a message to a user on another node, or a receipt
//! for a sender there) goes to the outbox in the same batch instead; the forwarder
//! (`crate::peer::forwarder`) hands it to the owner. Entries other nodes forward here are applied
//! by [`Command::Apply`], deduplicated by entry id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use chat_cluster::ClusterView;
use chat_proto::cluster::{forward_entry, ForwardEntry, ForwardStatus, HashRange, RawWrite};
use chat_proto::store::{inbox_entry, DeviceState, InboxEntry, SentRecord, UserState};
use chat_proto::v1::{Failed, Message, Receipt, ReceiptKind, Sent};
use chat_ring::transition::{Segment, Transition};
use chat_ring::Ring;
use prost::Message as _;
use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::ChatError;
use crate::hub::Hub;
use crate::rebalance::{Done, MirrorItem, MoveEvent, Page, ReleaseOnDrop, PAGE_BYTES, PAGE_KEYS};
use crate::store::keys::*;
use crate::store::{
    fail_stop, storage_failed, Store, CF_DEDUP, CF_INBOX, CF_META, CF_OUTBOX, MOVING_CFS,
};
use crate::throttle::Throttle;
use chat_auth::Identity;

/// Most message ids in one stored receipt; a longer run is split into several receipts.
const MAX_RECEIPT_IDS: usize = 512;
/// Inbox entries read per step when collecting the messages an ack covers.
const RECEIPT_SCAN_PAGE: u64 = 1024;
/// A batch write (with its fsync) slower than this is logged.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Errors that repeat per batch while they last are logged at most once per this interval.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// User states cached between batches before the cache is emptied (they are all on disk).
const USER_CACHE_MAX: usize = 200_000;
/// Newest committed entries kept per cached user, and in all, for receipts (see `CachedUser`).
const RECENT_PER_USER: usize = 32;
const RECENT_MAX: usize = 100_000;

/// What a device learns when it attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The device's durable cursor; its backlog starts after it.
    pub cursor: u64,
    /// The highest seq in the user's inbox.
    pub inbox_seq: u64,
}

pub enum Command {
    Send {
        from: Identity,
        client_msg_id: String,
        to: String,
        body: String,
        reply: oneshot::Sender<Result<Sent, ChatError>>,
    },
    /// A device connects: registers it (within the device limit) and returns its cursor.
    Attach {
        who: Identity,
        max_devices: u32,
        reply: oneshot::Sender<Result<Attached, ChatError>>,
    },
    /// The device has every entry up to `up_to`; with `read`, the user also read them.
    Ack {
        who: Identity,
        up_to: u64,
        read: bool,
    },
    /// Entries another node forwarded: one status per entry once the batch is on disk.
    Apply {
        entries: Vec<ForwardEntry>,
        reply: oneshot::Sender<Result<Vec<ForwardStatus>, ChatError>>,
    },
    /// The forwarder gives these outbox entries up: remove them, and tell each message's sender
    /// with a `Failed` entry in its inbox.
    GiveUp {
        entries: Vec<(u64, Arc<ForwardEntry>)>,
        reason: String,
        reply: oneshot::Sender<Result<(), ChatError>>,
    },
    /// Rebalancing, new owner: writes an old owner streams here, applied in stream order.
    Mirror {
        from: String,
        req: chat_proto::cluster::Mirror,
        reply: oneshot::Sender<Result<(), ChatError>>,
    },
    /// Rebalancing, old owner: read the next page of a segment it gives away and put it on the
    /// stream to the new owner, ordered with the dual writes of the batches around it.
    CopyPage {
        transition: Arc<Transition>,
        cf: &'static str,
        start: u64,
        end: u64,
        dest: String,
        after: Option<Vec<u8>>,
        reply: oneshot::Sender<Result<Page, ChatError>>,
    },
    /// Rebalancing: delete the data of these key-hash ranges (given away and sealed, or
    /// received in an aborted move).
    DropRanges {
        ranges: Vec<(u64, u64)>,
        reply: oneshot::Sender<Result<(), ChatError>>,
    },
    /// Nothing to do but start a batch: lets the committer notice a change of the move in flight
    /// while no other command comes.
    Observe,
    /// Rebalancing, old owner: the move to `epoch` committed and its copy is complete: seal the
    /// streams.
    Seal { epoch: u64 },
}

/// Outbox entries written by one batch, handed to the forwarder once on disk.
pub type Outboxed = Vec<(u64, Arc<ForwardEntry>)>;

/// Who owns what: the node's id and its view of the ring.
#[derive(Clone)]
pub struct Routing {
    pub self_id: String,
    pub view: watch::Receiver<ClusterView>,
}

impl Routing {
    /// A ring of one: this node owns everyone (standalone, and unit tests).
    pub fn standalone(self_id: &str) -> Routing {
        let (_tx, view) = watch::channel(ClusterView::fixed(Ring::single(self_id), []));
        Routing {
            self_id: self_id.to_string(),
            view,
        }
    }
}

#[derive(Clone)]
pub struct CommitterHandle {
    tx: mpsc::Sender<Command>,
}

impl CommitterHandle {
    /// Queues a command; waits while the queue is full (backpressure on busy senders).
    pub async fn submit(&self, cmd: Command) -> Result<(), ChatError> {
        self.tx.send(cmd).await.map_err(|_| ChatError::ShuttingDown)
    }
}

pub struct Committer {
    store: Arc<Store>,
    hub: Arc<Hub>,
    sync: bool,
    max_batch: usize,
    retention_ms: i64,
    users: HashMap<String, CachedUser>,
    /// Entries held in all `CachedUser::recent` together.
    recent_len: usize,
    /// Committed device states (`None`: known to have no record), so an ack reads no storage.
    devices: HashMap<Vec<u8>, Option<DeviceState>>,
    routing: Routing,
    outbox_tx: Option<mpsc::UnboundedSender<Outboxed>>,
    /// The last outbox seq handed out.
    outbox_seq: u64,
    /// Rebalancing (see `crate::rebalance`): where moving writes and copy pages go, and where
    /// the driver learns what the committer adopted.
    mirror_tx: Option<mpsc::UnboundedSender<MirrorItem>>,
    events_tx: Option<mpsc::UnboundedSender<MoveEvent>>,
    /// The move in flight as this committer applies it (taken from the view at batch start).
    move_state: Option<Arc<Transition>>,
    /// New owner, after a commit: the segments received, and the old owners whose seal has not
    /// arrived. Commands touching these segments wait in `deferred` until every seal is in.
    sealing: Option<(Arc<Transition>, Vec<Segment>, HashSet<String>)>,
    deferred: VecDeque<Command>,
    /// Users touched by the commands in `deferred`: later commands for them wait behind.
    deferred_users: HashSet<String>,
    /// Committed batches waiting to become visible, in commit order.
    published: Arc<PublishQueue>,
    /// Old owner, after a commit: the move whose copy must still finish before the seal (a
    /// commit on progress reported before a restart, or a restart after the commit).
    finishing: Option<Arc<Transition>>,
    /// Old owner, at startup: the unfinished move found in the store's marker, decided on once
    /// the ring is known.
    marker: Option<Arc<Transition>>,
    /// The last ring epoch told to the driver as settled (see [`MoveEvent::Settled`]).
    settled: u64,
}

#[derive(Clone)]
struct CachedUser {
    state: UserState,
    /// `next_seq` as of the last successful commit: seqs below it are on disk.
    committed_next: u64,
    /// The newest committed inbox entries not yet covered by both receipts, contiguous by seq
    /// (seq, stored ts, entry). A device acks an entry milliseconds after it was appended, so
    /// the receipts for it are made from here instead of reading the entry back from storage.
    recent: VecDeque<(u64, i64, Arc<InboxEntry>)>,
}

/// The work of one batch, applied to storage only if the whole batch commits.
#[derive(Default)]
struct Batch {
    wb: WriteBatch,
    dirty_users: HashSet<String>,
    /// Dedup records and device states written in this batch, read back before storage
    /// (`None`: the device was deleted in this batch).
    sent: HashMap<Vec<u8>, Sent>,
    devices: HashMap<Vec<u8>, Option<DeviceState>>,
    /// Devices registered in this batch, per user (not yet visible to `Store::devices`).
    new_devices: HashMap<String, usize>,
    /// (user, seq, stored ts, entry) appended in this batch.
    appended: Vec<(String, u64, i64, Arc<InboxEntry>)>,
    replies: Vec<Reply>,
    /// The ring this batch routes by (taken once per batch).
    ring: Option<Arc<Ring>>,
    outboxed: Outboxed,
    /// Forward dedup keys written in this batch.
    forwarded: HashSet<Vec<u8>>,
    /// A command failed after adding writes to the batch: nothing of the batch may commit.
    abort: Option<String>,
    /// Raw writes applied (mirror, range drops): the caches no longer match storage.
    clear_caches: bool,
    /// Recipients of the entries this batch put in the outbox.
    outboxed_to: HashSet<String>,
    /// The move marker is to be removed once the batch is on disk.
    clear_marker: bool,
    /// Recipients of outbox entries this batch removes (given up).
    unoutboxed_to: Vec<String>,
}

enum Reply {
    Sent(oneshot::Sender<Result<Sent, ChatError>>, Sent),
    Attached(oneshot::Sender<Result<Attached, ChatError>>, Attached),
    Applied(
        oneshot::Sender<Result<Vec<ForwardStatus>, ChatError>>,
        Vec<ForwardStatus>,
    ),
    Done(oneshot::Sender<Result<(), ChatError>>),
}

/// What the committer needs besides storage and the hub.
pub struct CommitterOptions {
    pub sync: bool,
    pub max_batch: usize,
    pub queue_depth: usize,
    pub retention_ms: i64,
    pub routing: Routing,
    /// Where new outbox entries go once committed (`None`: nobody forwards, e.g. standalone).
    pub outbox_tx: Option<mpsc::UnboundedSender<Outboxed>>,
    /// Rebalancing streams and events (`None`: standalone).
    pub mirror_tx: Option<mpsc::UnboundedSender<MirrorItem>>,
    pub events_tx: Option<mpsc::UnboundedSender<MoveEvent>>,
}

impl Committer {
    /// Starts the committer thread. It ends once every handle is dropped and the queue is drained.
    pub fn start(
        store: Arc<Store>,
        hub: Arc<Hub>,
        opts: CommitterOptions,
    ) -> Result<(CommitterHandle, std::thread::JoinHandle<()>), ChatError> {
        let (tx, rx) = mpsc::channel(opts.queue_depth);
        let mut c = Committer::new(store, hub, opts)?;
        let join = std::thread::Builder::new()
            .name("committer".into())
            .spawn(move || c.run(rx))
            .expect("spawn committer thread");
        Ok((CommitterHandle { tx }, join))
    }

    fn new(store: Arc<Store>, hub: Arc<Hub>, opts: CommitterOptions) -> Result<Self, ChatError> {
        let outbox_seq = store.last_outbox_seq()?;
        let marker = store
            .move_marker()
            .and_then(|b| crate::rebalance::decode_marker(&b))
            .map(Arc::new);
        Ok(Committer {
            store,
            hub,
            sync: opts.sync,
            max_batch: opts.max_batch,
            retention_ms: opts.retention_ms,
            users: HashMap::new(),
            recent_len: 0,
            devices: HashMap::new(),
            routing: opts.routing,
            outbox_tx: opts.outbox_tx,
            outbox_seq,
            mirror_tx: opts.mirror_tx,
            events_tx: opts.events_tx,
            move_state: None,
            sealing: None,
            deferred: VecDeque::new(),
            deferred_users: HashSet::new(),
            published: Arc::new(PublishQueue::default()),
            finishing: None,
            marker,
            settled: 0,
        })
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut cmds = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            cmds.push(first);
            while cmds.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            self.commit(cmds.drain(..));
            self.run_deferred();
        }
        tracing::info!("committer drained and stopped");
    }

    /// Commands that waited for a new owner's seals go first once every seal is in.
    fn run_deferred(&mut self) {
        if self.sealing.is_none() && !self.deferred.is_empty() {
            let mut waited = std::mem::take(&mut self.deferred);
            self.deferred_users.clear();
            while !waited.is_empty() {
                let n = waited.len().min(self.max_batch);
                let part: Vec<Command> = waited.drain(..n).collect();
                self.commit(part.into_iter());
            }
        }
    }

    fn commit(&mut self, cmds: impl Iterator<Item = Command>) {
        let (ring, moving) = {
            let v = self.routing.view.borrow();
            (v.ring.clone(), v.moving.clone())
        };
        let ring_epoch = ring.as_ref().map(|r| r.epoch());
        let mut b = Batch {
            ring,
            ..Batch::default()
        };
        self.observe_move(moving, &b);
        let outbox_seq_before = self.outbox_seq;
        for cmd in cmds {
            self.apply(cmd, &mut b);
        }
        for user in &b.dirty_users {
            let state = &self.users[user].state;
            b.wb.put_cf(
                self.store.cf(CF_META),
                user_state_key(user),
                state.encode_to_vec(),
            );
        }
        let mirrored = self.moving_writes(&b.wb);
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        let (commands, bytes) = (b.replies.len(), b.wb.size_in_bytes());
        let started = std::time::Instant::now();
        let result = match b.abort.take() {
            Some(why) => Err(why),
            None if b.wb.is_empty() => Ok(()),
            // Refused before RocksDB runs out of space itself (see `storage.min_free_mib`).
            None => match self.store.below_floor() {
                Some(why) => Err(why),
                None => match self.store.db().write_opt(b.wb, &wo) {
                    Ok(()) => Ok(()),
                    Err(e) if storage_failed(&e) => fail_stop(&e),
                    Err(e) => Err(e.to_string()),
                },
            },
        };
        let took = started.elapsed();
        metrics::histogram!(crate::admin::COMMIT_SECONDS).record(took.as_secs_f64());
        if took > SLOW_COMMIT {
            tracing::warn!(?took, commands, bytes, "slow commit (write + fsync)");
        }
        match result {
            Ok(()) => {
                for user in &b.dirty_users {
                    if let Some(u) = self.users.get_mut(user) {
                        u.committed_next = u.state.next_seq;
                    }
                }
                if b.clear_caches {
                    self.forget_cached();
                }
                if b.clear_marker {
                    self.store.clear_move_marker();
                }
                // Dual write: while a move is in flight, the replies of a batch with moving
                // writes go out once every new owner has stored them too.
                for (key, state) in b.devices {
                    self.devices.insert(key, state);
                }
                for (user, seq, ts, entry) in &b.appended {
                    self.remember(user, *seq, *ts, entry.clone());
                }
                self.store
                    .outbox_added(b.outboxed.iter().map(|(_, e)| e.to.as_str()));
                self.store
                    .outbox_removed(b.unoutboxed_to.iter().map(String::as_str));
                // What others may see of the batch: replies (✓, STORED), live deliveries, and
                // outbox entries to forward.
                let (hub, outbox_tx) = (self.hub.clone(), self.outbox_tx.clone());
                let (replies, appended, outboxed) = (b.replies, b.appended, b.outboxed);
                let publish = move || {
                    send_replies(replies);
                    for (user, seq, _, entry) in appended {
                        hub.publish(&user, seq, entry);
                    }
                    if let (false, Some(tx)) = (outboxed.is_empty(), outbox_tx) {
                        let _ = tx.send(outboxed);
                    }
                };
                match (&self.mirror_tx, &self.move_state) {
                    // Dual write: while a move is in flight, nothing of a batch with moving
                    // writes is visible until every new owner has stored them too. Were this
                    // node to fail first, nobody has seen what the new owner lacks. Batches
                    // become visible in commit order, so later ones wait behind it.
                    (Some(tx), Some(t)) if !mirrored.is_empty() => {
                        let id = self.published.push(Box::new(publish), false);
                        let q = self.published.clone();
                        let releases =
                            ReleaseOnDrop::new(mirrored.len(), Box::new(move || q.ready(id)));
                        for ((dest, writes), release) in mirrored.into_iter().zip(releases) {
                            let done = Done::Release(release);
                            let _ = tx.send(MirrorItem::writes(dest, t, writes, done));
                        }
                    }
                    _ => {
                        self.published.push(Box::new(publish), true);
                    }
                }
            }
            Err(e) => {
                // Nothing of the batch is on disk: forget the seqs handed out in memory.
                let reason = match ChatError::from_failed_write(&e) {
                    ChatError::StorageFull(_) => "storage_full",
                    _ => "error",
                };
                metrics::counter!(crate::admin::COMMIT_FAILURES, "reason" => reason).increment(1);
                static REFUSED: Throttle = Throttle::new(LOG_EVERY);
                if let Some(held) = REFUSED.allow(std::time::Instant::now()) {
                    tracing::error!(error = %e, commands, held_back = held, "commit failed");
                }
                self.forget_cached();
                self.outbox_seq = outbox_seq_before;
                for r in b.replies {
                    let err = || ChatError::from_failed_write(&e);
                    match r {
                        Reply::Sent(tx, _) => drop(tx.send(Err(err()))),
                        Reply::Attached(tx, _) => drop(tx.send(Err(err()))),
                        Reply::Applied(tx, _) => drop(tx.send(Err(err()))),
                        Reply::Done(tx) => drop(tx.send(Err(err()))),
                    }
                }
            }
        }
        if self.users.len() > USER_CACHE_MAX || self.devices.len() > USER_CACHE_MAX {
            self.forget_cached();
        }
        self.note_settled(ring_epoch);
    }

    /// Tells the driver once this node has no work left in the last committed move (nothing to
    /// seal, drop or wait for), so the next move may start (`Progress::finished`).
    fn note_settled(&mut self, ring_epoch: Option<u64>) {
        let Some(epoch) = ring_epoch.filter(|e| *e > self.settled) else {
            return;
        };
        let unfinished = self.finishing.is_some()
            || self.sealing.is_some()
            || self.marker.is_some()
            // The marker of a move in flight is that move's; without one, it is a committed
            // move's share still to drop.
            || (self.move_state.is_none() && self.store.move_pending());
        if unfinished {
            return;
        }
        self.settled = epoch;
        if let Some(ev) = &self.events_tx {
            let _ = ev.send(MoveEvent::Settled(epoch));
        }
    }

    /// Empties the caches; everything in them is on disk (or, after a failed commit, was never
    /// written and must be forgotten).
    fn forget_cached(&mut self) {
        self.users.clear();
        self.devices.clear();
        self.recent_len = 0;
    }

    /// Keeps a committed entry in its user's `recent` (if the user is cached).
    fn remember(&mut self, user: &str, seq: u64, ts: i64, entry: Arc<InboxEntry>) {
        if self.recent_len >= RECENT_MAX {
            for u in self.users.values_mut() {
                u.recent.clear();
            }
            self.recent_len = 0;
        }
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        if u.recent.back().is_some_and(|(last, _, _)| last + 1 != seq) {
            self.recent_len -= u.recent.len();
            u.recent.clear();
        }
        if u.recent.len() == RECENT_PER_USER {
            u.recent.pop_front();
            self.recent_len -= 1;
        }
        u.recent.push_back((seq, ts, entry));
        self.recent_len += 1;
    }

    fn apply(&mut self, cmd: Command, b: &mut Batch) {
        if self.waits_for_seal(&cmd) {
            for u in Self::touched(&cmd) {
                self.deferred_users.insert(u.to_string());
            }
            tracing::debug!(
                waiting = self.deferred.len() + 1,
                "command waits for a seal"
            );
            self.deferred.push_back(cmd);
            return;
        }
        match cmd {
            Command::Send { from, reply, .. } if !self.owns(&from.user, b) => {
                drop(reply.send(Err(moved(&from.user))))
            }
            Command::Send {
                from,
                client_msg_id,
                to,
                body,
                reply,
            } => match self.send(&from, client_msg_id, to, body, b) {
                Ok(sent) => b.replies.push(Reply::Sent(reply, sent)),
                Err(e) => drop(reply.send(Err(e))),
            },
            Command::Attach { who, reply, .. } if !self.owns(&who.user, b) => {
                drop(reply.send(Err(moved(&who.user))))
            }
            Command::Attach {
                who,
                max_devices,
                reply,
            } => match self.attach(&who, max_devices, b) {
                Ok(a) => b.replies.push(Reply::Attached(reply, a)),
                Err(e) => drop(reply.send(Err(e))),
            },
            // A session of a user that just moved away: its acks are made again at the new home.
            Command::Ack { who, .. } if !self.owns(&who.user, b) => {}
            Command::Ack { who, up_to, read } => {
                if let Err(e) = self.ack(&who, up_to, read, b) {
                    tracing::warn!(user = %who.user, device = %who.device, error = %e, "ack failed");
                }
            }
            // These write several entries per command: if one fails after others were added
            // to the batch, the whole batch is abandoned rather than half-applied.
            Command::Apply { entries, reply } => {
                let mut statuses = Vec::with_capacity(entries.len());
                for e in entries {
                    match self.apply_forwarded(e, b) {
                        Ok(st) => statuses.push(st),
                        Err(err) => {
                            b.abort = Some(format!("applying forwarded entries: {err}"));
                            drop(reply.send(Err(err)));
                            return;
                        }
                    }
                }
                b.replies.push(Reply::Applied(reply, statuses));
            }
            Command::GiveUp {
                entries,
                reason,
                reply,
            } => match self.give_up(&entries, &reason, b) {
                Ok(()) => b.replies.push(Reply::Done(reply)),
                Err(e) => {
                    b.abort = Some(format!("giving up entries: {e}"));
                    drop(reply.send(Err(e)));
                }
            },
            Command::Mirror { from, req, reply } => match self.apply_mirror(&from, req, b) {
                Ok(()) => b.replies.push(Reply::Done(reply)),
                Err(e) => drop(reply.send(Err(e))),
            },
            Command::CopyPage {
                transition,
                cf,
                start,
                end,
                dest,
                after,
                reply,
            } => {
                let page = self.copy_page(&transition, cf, start, end, dest, after);
                drop(reply.send(page));
            }
            Command::DropRanges { ranges, reply } => {
                // A later move may already bring some of these ranges back here: keep those.
                let me = &self.routing.self_id;
                let keep: Vec<(u64, u64)> = self
                    .move_state
                    .iter()
                    .chain(self.sealing.iter().map(|(t, _, _)| t))
                    .flat_map(|t| t.receives(me).map(|s| (s.start, s.end)).collect::<Vec<_>>())
                    .collect();
                for (start, end) in ranges {
                    for (a, z) in subtract((start, end), &keep) {
                        self.store.delete_hash_range(&mut b.wb, a, z);
                    }
                }
                // The move this node gave segments away in is done with.
                if self.move_state.is_none() && self.finishing.is_none() && self.sealing.is_none() {
                    b.clear_marker = true;
                }
                b.clear_caches = true;
                b.replies.push(Reply::Done(reply));
            }
            Command::Observe => {}
            Command::Seal { epoch } => {
                if let Some(t) = self.finishing.take() {
                    if t.to().epoch() == epoch {
                        self.seal(t);
                    } else {
                        self.finishing = Some(t);
                    }
                }
            }
        }
    }

    /// Compares the move in the view with the one this committer applies, and adopts or ends it.
    /// Runs at the start of every batch, so every write of the batch follows one decision.
    fn observe_move(&mut self, moving: Option<Arc<Transition>>, b: &Batch) {
        if let (Some(m), Some(ring)) = (&self.marker, &b.ring) {
            let m = m.clone();
            self.marker = None;
            let in_flight = moving
                .as_ref()
                .is_some_and(|t| t.to().epoch() == m.to().epoch());
            let committed = m.committed_in(ring);
            let me = self.routing.self_id.clone();
            if committed && !in_flight && m.receives(&me).next().is_some() {
                // New owner restarted after the commit, before every seal: keep waiting for them.
                let received: Vec<Segment> = m.receives(&me).cloned().collect();
                let givers = received.iter().map(|s| s.from.clone()).collect();
                tracing::info!(
                    epoch = m.to().epoch(),
                    "waiting again for the old owners' seals after a restart"
                );
                self.sealing = Some((m.clone(), received, givers));
            }
            if committed && !in_flight && m.copies_of(&me).next().is_some() {
                // Restarted after the commit, before the seal: copy again from scratch, then seal.
                tracing::info!(
                    epoch = m.to().epoch(),
                    "finishing a committed move after a restart"
                );
                self.push_resets(&m);
                self.finishing = Some(m.clone());
                if let Some(ev) = &self.events_tx {
                    let _ = ev.send(MoveEvent::Finish(m));
                }
            } else if !committed && !in_flight && ring.epoch() >= m.to().epoch() {
                tracing::info!(
                    epoch = m.to().epoch(),
                    "the unfinished move was aborted meanwhile"
                );
                self.store.clear_move_marker();
            }
            // In flight: adopted again below, from scratch.
        }
        let same = match (&self.move_state, &moving) {
            (Some(a), Some(m)) => a.to().epoch() == m.to().epoch(),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        if let Some(old) = self.move_state.take() {
            self.end_move(old, b);
        }
        if let Some(t) = moving {
            self.adopt_move(t);
        }
    }

    fn adopt_move(&mut self, t: Arc<Transition>) {
        let me = self.routing.self_id.clone();
        tracing::info!(
            epoch = t.to().epoch(),
            "adopting the move: moving writes are mirrored from now on"
        );
        // Remember the move across a restart until it is sealed (old and new owners). Taking
        // part without the marker would leave a restarted node not knowing it must finish its
        // share (found by the chaos suite: a full disk, then a restart after the commit). So the
        // move is not adopted: nothing is reported, the move waits, the next batch tries again;
        // writes until then are covered by the copy, which starts at adoption.
        if t.copies_of(&me).next().is_some() || t.receives(&me).next().is_some() {
            if let Err(e) = self
                .store
                .set_move_marker(&crate::rebalance::encode_marker(&t))
            {
                static UNRECORDED: Throttle = Throttle::new(LOG_EVERY);
                if let Some(held) = UNRECORDED.allow(std::time::Instant::now()) {
                    tracing::error!(error = %e, held_back = held, "cannot record the move in flight: not taking part yet");
                }
                return;
            }
        }
        self.push_resets(&t);
        self.move_state = Some(t.clone());
        if let Some(ev) = &self.events_tx {
            let _ = ev.send(MoveEvent::Adopted(t));
        }
    }

    /// The copy starts from scratch (after a restart too): clear what the new owners may hold
    /// from an earlier attempt, before any dual write or page.
    fn push_resets(&self, t: &Arc<Transition>) {
        let me = &self.routing.self_id;
        if let Some(tx) = &self.mirror_tx {
            let mut by_dest: std::collections::BTreeMap<&str, Vec<HashRange>> = Default::default();
            for s in t.copies_of(me) {
                by_dest.entry(&s.to).or_default().push(HashRange {
                    start: s.start,
                    end: s.end,
                });
            }
            for (dest, reset) in by_dest {
                let _ = tx.send(MirrorItem::reset(dest.to_string(), t, reset));
            }
        }
    }

    fn end_move(&mut self, t: Arc<Transition>, b: &Batch) {
        let me = self.routing.self_id.clone();
        let committed = b.ring.as_ref().is_some_and(|r| t.committed_in(r));
        tracing::info!(epoch = t.to().epoch(), committed, "the move ended");
        if !committed {
            self.store.clear_move_marker();
            if let Some(ev) = &self.events_tx {
                let _ = ev.send(MoveEvent::Aborted(t));
            }
            return;
        }
        // Old owner: the driver asks for the seal once the copy is complete (this node writes
        // nothing in the moved ranges any more, so a copy still running reads a settled state).
        if t.copies_of(&me).next().is_some() {
            self.finishing = Some(t.clone());
        }
        // New owner: serve the received segments only once every old owner has sealed them.
        let received: Vec<Segment> = t.receives(&me).cloned().collect();
        if !received.is_empty() {
            let givers = received.iter().map(|s| s.from.clone()).collect();
            self.sealing = Some((t, received, givers));
        }
    }

    /// Seals every stream of `t` this node gives to; the driver drops the ranges once each seal
    /// is acknowledged.
    fn seal(&mut self, t: Arc<Transition>) {
        let me = &self.routing.self_id;
        let dests: HashSet<String> = t.copies_of(me).map(|s| s.to.clone()).collect();
        let Some(tx) = &self.mirror_tx else { return };
        let mut acks = Vec::new();
        for dest in dests {
            let (done, ack) = oneshot::channel();
            acks.push(ack);
            let outbox = self.moved_outbox(&t, &dest);
            if !outbox.is_empty() {
                tracing::info!(%dest, entries = outbox.len(), "handing the moved users' outbox entries over with the seal");
            }
            let _ = tx.send(MirrorItem::seal(dest, &t, outbox, Done::Notify(done)));
        }
        if let Some(ev) = &self.events_tx {
            let _ = ev.send(MoveEvent::Sealing(t, acks));
        }
    }

    /// Old owner, at the seal: the outbox entries made by users that `t` moves from here to
    /// `dest` (messages they sent, receipts they made), oldest first. The new owner queues them
    /// ahead of what those users do next, so a sender's older messages, stuck here while their
    /// recipient's node is unreachable, cannot be overtaken by newer ones sent from its new home.
    /// They stay in this outbox too (delivered twice at worst; receivers deduplicate by id).
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

    /// The users a client or forwarded command touches.
    fn touched(cmd: &Command) -> Vec<&str> {
        match cmd {
            Command::Send { from, to, .. } => vec![from.user.as_str(), to.as_str()],
            Command::Attach { who, .. } | Command::Ack { who, .. } => vec![who.user.as_str()],
            Command::Apply { entries, .. } => entries.iter().map(|e| e.to.as_str()).collect(),
            Command::GiveUp { entries, .. } => entries
                .iter()
                .filter_map(|(_, e)| match &e.item {
                    Some(forward_entry::Item::Message(m)) => Some(m.from.as_str()),
                    _ => None,
                })
                .collect(),
            Command::Mirror { .. }
            | Command::CopyPage { .. }
            | Command::DropRanges { .. }
            | Command::Observe
            | Command::Seal { .. } => Vec::new(),
        }
    }

    /// Whether `cmd` must wait: it touches a held user (see `held`).
    fn waits_for_seal(&self, cmd: &Command) -> bool {
        Self::touched(cmd).iter().any(|u| self.held(u))
    }

    /// Whether writes for `user` must wait: the user is in a segment received in a committed
    /// move whose old owner has not sealed it yet (its stream may still write the user's keys),
    /// or a command for the user already waits (per-user order).
    fn held(&self, user: &str) -> bool {
        if self.deferred_users.contains(user) {
            return true;
        }
        let Some((_, segments, _)) = &self.sealing else {
            return false;
        };
        let h = chat_ring::key_hash(user);
        segments.iter().any(|s| s.contains(h))
    }

    /// The writes of `wb` that belong to segments this node gives away, per new owner.
    fn moving_writes(&self, wb: &WriteBatch) -> std::collections::BTreeMap<String, Vec<RawWrite>> {
        let mut out = std::collections::BTreeMap::new();
        let Some(t) = &self.move_state else {
            return out;
        };
        let me = &self.routing.self_id;
        if t.copies_of(me).next().is_none() {
            return out;
        }
        struct Collect<'a> {
            store: &'a Store,
            t: &'a Transition,
            me: &'a str,
            out: &'a mut std::collections::BTreeMap<String, Vec<RawWrite>>,
        }
        impl Collect<'_> {
            fn add(&mut self, cf_id: u32, key: &[u8], value: Option<&[u8]>) {
                let Some(cf) = self.store.cf_name(cf_id).filter(|c| MOVING_CFS.contains(c)) else {
                    return;
                };
                let Some(h) = key.get(..8) else { return };
                let h = u64::from_be_bytes(h.try_into().expect("8 bytes"));
                if let Some(s) = self.t.segment_of(h).filter(|s| s.from == self.me) {
                    self.out.entry(s.to.clone()).or_default().push(RawWrite {
                        cf: cf.to_string(),
                        key: key.to_vec(),
                        value: value.map(<[u8]>::to_vec).unwrap_or_default(),
                        delete: value.is_none(),
                    });
                }
            }
        }
        impl rocksdb::WriteBatchIteratorCf for Collect<'_> {
            fn put_cf(&mut self, cf_id: u32, key: &[u8], value: &[u8]) {
                self.add(cf_id, key, Some(value));
            }
            fn delete_cf(&mut self, cf_id: u32, key: &[u8]) {
                self.add(cf_id, key, None);
            }
            fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
        }
        wb.iterate_cf(&mut Collect {
            store: &self.store,
            t,
            me,
            out: &mut out,
        });
        out
    }

    /// New owner: applies one request of an old owner's stream.
    fn apply_mirror(
        &mut self,
        from: &str,
        req: chat_proto::cluster::Mirror,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let me = self.routing.self_id.clone();
        let sealing_this = self
            .sealing
            .as_ref()
            .is_some_and(|(t, _, _)| t.to().epoch() == req.epoch);
        let t = match (&self.move_state, &self.sealing) {
            // A seal counts only once this node has seen the commit: before that, the old owner
            // retries it (else it would be acknowledged and forgotten).
            (Some(t), _) if t.to().epoch() == req.epoch && !req.seal => t.clone(),
            (_, Some((t, _, _))) if sealing_this => t.clone(),
            _ => {
                let ring_epoch = b.ring.as_ref().map_or(0, |r| r.epoch());
                if req.epoch <= ring_epoch && self.move_state.is_none() && self.sealing.is_none() {
                    // A move that ended here (sealed, or aborted): this is a retry of what was
                    // applied already. Acknowledged, so the old owner's stream moves on.
                    return Ok(());
                }
                return Err(ChatError::Unavailable(format!(
                    "no move to epoch {} here (yet)",
                    req.epoch
                )));
            }
        };
        let ours = |h: u64| {
            t.segment_of(h)
                .is_some_and(|s| s.from == from && s.to == me)
        };
        for r in &req.reset {
            if !ours(r.start) || !ours(r.end) {
                return Err(ChatError::InvalidArgument("reset outside the move".into()));
            }
        }
        let mut writes = Vec::with_capacity(req.writes.len());
        for w in &req.writes {
            let Some(cf) = MOVING_CFS.into_iter().find(|c| *c == w.cf) else {
                return Err(ChatError::InvalidArgument(format!(
                    "cf {:?} does not move",
                    w.cf
                )));
            };
            let h = w
                .key
                .get(..8)
                .map(|h| u64::from_be_bytes(h.try_into().expect("8 bytes")));
            if !h.is_some_and(ours) {
                return Err(ChatError::InvalidArgument("write outside the move".into()));
            }
            writes.push((cf, w));
        }
        // Outbox entries handed over with a seal: made by users of these segments.
        if req
            .outbox
            .iter()
            .any(|e| e.to.is_empty() || !origin(e).is_some_and(|u| ours(chat_ring::key_hash(u))))
        {
            return Err(ChatError::InvalidArgument(
                "outbox entry of a user outside the move".into(),
            ));
        }
        for r in &req.reset {
            self.store.delete_hash_range(&mut b.wb, r.start, r.end);
        }
        for (cf, w) in writes {
            if w.delete {
                b.wb.delete_cf(self.store.cf(cf), &w.key);
            } else {
                b.wb.put_cf(self.store.cf(cf), &w.key, &w.value);
            }
        }
        b.clear_caches = true;
        // Queued ahead of anything the moved users do from now on (their commands are held
        // until this seal, and later ones get later outbox seqs).
        for e in req.outbox {
            self.outbox_seq += 1;
            b.wb.put_cf(
                self.store.cf(CF_OUTBOX),
                outbox_key(self.outbox_seq),
                e.encode_to_vec(),
            );
            b.outboxed_to.insert(e.to.clone());
            b.outboxed.push((self.outbox_seq, Arc::new(e)));
        }
        if req.seal {
            if let Some((_, _, givers)) = &mut self.sealing {
                givers.remove(from);
                if givers.is_empty() {
                    tracing::info!(
                        epoch = req.epoch,
                        "every old owner sealed: serving the received segments"
                    );
                    self.sealing = None;
                    if self.finishing.is_none() {
                        b.clear_marker = true;
                    }
                }
            }
        }
        Ok(())
    }

    /// Old owner: reads a copy page and puts it on the stream (before the current batch's own
    /// moving writes, which it does not include: the page is read from what is on disk).
    fn copy_page(
        &self,
        t: &Arc<Transition>,
        cf: &'static str,
        start: u64,
        end: u64,
        dest: String,
        after: Option<Vec<u8>>,
    ) -> Result<Page, ChatError> {
        let epoch = Some(t.to().epoch());
        if self.move_state.as_ref().map(|m| m.to().epoch()) != epoch
            && self.finishing.as_ref().map(|m| m.to().epoch()) != epoch
        {
            return Err(ChatError::Unavailable("the move is not in flight".into()));
        }
        let Some(tx) = &self.mirror_tx else {
            return Err(ChatError::Unavailable("no mirror stream".into()));
        };
        let (kvs, done) =
            self.store
                .hash_range_page(cf, start, end, after.as_deref(), PAGE_KEYS, PAGE_BYTES)?;
        let keys = kvs.len() as u64;
        let bytes = kvs.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        let last_key = if done {
            None
        } else {
            kvs.last().map(|(k, _)| k.clone())
        };
        let writes = kvs
            .into_iter()
            .map(|(key, value)| RawWrite {
                cf: cf.to_string(),
                key,
                value,
                delete: false,
            })
            .collect();
        let (ack_tx, acked) = oneshot::channel();
        if keys == 0 {
            // Nothing to send: done at once (most segments are empty in most column families).
            let _ = ack_tx.send(());
        } else {
            let _ = tx.send(MirrorItem::writes(dest, t, writes, Done::Notify(ack_tx)));
        }
        Ok(Page {
            keys,
            bytes,
            last_key,
            acked,
        })
    }

    /// Whether this node owns `user` under the batch's ring. Without a ring (a cluster that was
    /// never initialised) nothing is routed anywhere: sessions are refused before that point.
    fn owns(&self, user: &str, b: &Batch) -> bool {
        b.ring
            .as_ref()
            .is_none_or(|r| r.owner(user) == self.routing.self_id)
    }

    /// Appends `entry` to `user`'s inbox here if this node owns `user`, or puts it in the outbox
    /// for the owner (deduplicated there by `id`).
    fn deliver_to(
        &mut self,
        user: &str,
        ts: i64,
        id: &str,
        entry: InboxEntry,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        // Owned here and nothing older for the user waits in the outbox (after a move brought
        // the user here, earlier entries may still be on their way): append directly. Not for a
        // held user: a command of another user (an ack making receipts) reaches it here, and
        // the old owner's stream may still write the seqs this node would take. Such an entry
        // goes through the outbox, durable in this batch; the forwarder hands it back to this
        // committer (`Command::Apply`), which holds it like any command for that user.
        if self.owns(user, b)
            && !self.held(user)
            && !b.outboxed_to.contains(user)
            && !self.store.outbox_pending(user)
        {
            let seq = self.append(user, ts, entry, b)?;
            tracing::trace!(to = user, id, seq, "appended here");
            return Ok(());
        }
        tracing::trace!(to = user, id, "to the outbox");
        let item = match entry.entry {
            Some(inbox_entry::Entry::Message(m)) => forward_entry::Item::Message(m),
            Some(inbox_entry::Entry::Receipt(r)) => forward_entry::Item::Receipt(r),
            // Failed entries are only ever written to the sender's inbox on its own node.
            other => {
                return Err(ChatError::Internal(format!(
                    "entry cannot be forwarded: {other:?}"
                )))
            }
        };
        let fe = ForwardEntry {
            to: user.to_string(),
            id: id.to_string(),
            created_ms: ts,
            item: Some(item),
        };
        self.outbox_seq += 1;
        b.wb.put_cf(
            self.store.cf(CF_OUTBOX),
            outbox_key(self.outbox_seq),
            fe.encode_to_vec(),
        );
        b.outboxed_to.insert(user.to_string());
        b.outboxed.push((self.outbox_seq, Arc::new(fe)));
        Ok(())
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
        let entry = match e.item {
            Some(forward_entry::Item::Message(m)) => inbox_entry::Entry::Message(m),
            Some(forward_entry::Item::Receipt(r)) => inbox_entry::Entry::Receipt(r),
            None => return Ok(ForwardStatus::Invalid),
        };
        // Without a ring (a node that has not loaded it yet) nothing is ours to accept.
        if b.ring.is_none() || !self.owns(&e.to, b) {
            return Ok(ForwardStatus::NotOwner);
        }
        let key = forward_dedup_key(&e.to, &e.id);
        if b.forwarded.contains(&key) || self.store.forward_seen(&e.to, &e.id)? {
            return Ok(ForwardStatus::Stored);
        }
        let seq = self.append(&e.to, e.created_ms, InboxEntry { entry: Some(entry) }, b)?;
        tracing::trace!(to = %e.to, id = %e.id, seq, "forwarded entry appended");
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&chat_proto::now_ms().to_be_bytes());
        v.extend_from_slice(&seq.to_be_bytes());
        b.wb.put_cf(self.store.cf(CF_DEDUP), &key, v);
        b.forwarded.insert(key);
        Ok(ForwardStatus::Stored)
    }

    /// Removes outbox entries the forwarder gave up on, telling each message's sender.
    fn give_up(
        &mut self,
        entries: &[(u64, Arc<ForwardEntry>)],
        reason: &str,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let now = chat_proto::now_ms();
        for (seq, e) in entries {
            b.wb.delete_cf(self.store.cf(CF_OUTBOX), outbox_key(*seq));
            b.unoutboxed_to.push(e.to.clone());
            let Some(forward_entry::Item::Message(m)) = &e.item else {
                // A receipt that cannot be delivered is dropped: the message it is about stays
                // delivered or read either way.
                continue;
            };
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

    fn user<'a>(
        users: &'a mut HashMap<String, CachedUser>,
        store: &Store,
        user: &str,
    ) -> Result<&'a mut CachedUser, ChatError> {
        if !users.contains_key(user) {
            let state = store.user_state(user)?;
            let committed_next = state.next_seq;
            users.insert(
                user.to_string(),
                CachedUser {
                    state,
                    committed_next,
                    recent: VecDeque::new(),
                },
            );
        }
        Ok(users.get_mut(user).expect("just inserted"))
    }

    fn mark_dirty(b: &mut Batch, user: &str) {
        if !b.dirty_users.contains(user) {
            b.dirty_users.insert(user.to_string());
        }
    }

    /// Appends `entry` to `user`'s inbox in this batch and returns its seq.
    fn append(
        &mut self,
        user: &str,
        ts: i64,
        entry: InboxEntry,
        b: &mut Batch,
    ) -> Result<u64, ChatError> {
        let u = Self::user(&mut self.users, &self.store, user)?;
        let seq = u.state.next_seq;
        u.state.next_seq += 1;
        b.wb.put_cf(
            self.store.cf(CF_INBOX),
            inbox_key(user, seq),
            timed_value(ts, &entry),
        );
        Self::mark_dirty(b, user);
        b.appended
            .push((user.to_string(), seq, ts, Arc::new(entry)));
        Ok(seq)
    }

    /// Returns the Sent to answer with once the batch is on disk: the stored one for a retry,
    /// a new one otherwise.
    fn send(
        &mut self,
        from: &Identity,
        client_msg_id: String,
        to: String,
        body: String,
        b: &mut Batch,
    ) -> Result<Sent, ChatError> {
        let dkey = dedup_key(&from.user, &from.device, &client_msg_id);
        if let Some(s) = b.sent.get(&dkey) {
            return Ok(s.clone());
        }
        if let Some(rec) = self
            .store
            .sent_record(&from.user, &from.device, &client_msg_id)?
        {
            return Ok(Sent {
                client_msg_id,
                msg_id: rec.msg_id,
                ts: rec.ts,
            });
        }
        let ts = chat_proto::now_ms();
        let msg_id = uuid::Uuid::now_v7().to_string();
        let message = Message {
            msg_id: msg_id.clone(),
            from: from.user.clone(),
            from_device: from.device.clone(),
            to: to.clone(),
            body,
            ts,
            client_msg_id: client_msg_id.clone(),
        };
        let entry = InboxEntry {
            entry: Some(inbox_entry::Entry::Message(message)),
        };
        self.deliver_to(&to, ts, &msg_id, entry, b)?;
        let rec = SentRecord {
            msg_id: msg_id.clone(),
            ts,
        };
        b.wb.put_cf(self.store.cf(CF_DEDUP), &dkey, timed_value(ts, &rec));
        let sent = Sent {
            client_msg_id,
            msg_id,
            ts,
        };
        b.sent.insert(dkey, sent.clone());
        Ok(sent)
    }

    fn device(
        &mut self,
        key: &[u8],
        who: &Identity,
        b: &Batch,
    ) -> Result<Option<DeviceState>, ChatError> {
        if let Some(d) = b.devices.get(key).or_else(|| self.devices.get(key)) {
            return Ok(*d);
        }
        let d = self.store.device_state(&who.user, &who.device)?;
        self.devices.insert(key.to_vec(), d);
        Ok(d)
    }

    /// Writes a device's state, marking it seen now.
    fn put_device(&self, key: Vec<u8>, mut state: DeviceState, b: &mut Batch) {
        state.last_seen_ms = chat_proto::now_ms();
        b.wb.put_cf(self.store.cf(CF_META), &key, state.encode_to_vec());
        b.devices.insert(key, Some(state));
    }

    fn delete_device(&self, key: Vec<u8>, b: &mut Batch) {
        b.wb.delete_cf(self.store.cf(CF_META), &key);
        b.devices.insert(key, None);
    }

    fn attach(
        &mut self,
        who: &Identity,
        max_devices: u32,
        b: &mut Batch,
    ) -> Result<Attached, ChatError> {
        let now = chat_proto::now_ms();
        let key = device_key(&who.user, &who.device);
        let state = match self.device(&key, who, b)? {
            Some(d) => d,
            None => {
                // Devices unseen for the whole retention have nothing left to receive: forget them.
                let floor = now - self.retention_ms;
                let mut live = Vec::new();
                for (name, d) in self.store.devices(&who.user)? {
                    let k = device_key(&who.user, &name);
                    let d = match b.devices.get(&k) {
                        Some(Some(d)) => *d,
                        Some(None) => continue,
                        None => d,
                    };
                    if d.last_seen_ms < floor {
                        self.delete_device(k, b);
                    } else {
                        live.push(d);
                    }
                }
                let pending_new = b.new_devices.get(&who.user).copied().unwrap_or(0);
                if live.len() + pending_new >= max_devices as usize {
                    return Err(ChatError::TooManyDevices { max: max_devices });
                }
                *b.new_devices.entry(who.user.clone()).or_default() += 1;
                // A new device starts where the user's least advanced device stands: whatever no
                // device has yet is delivered to it too; older entries are history to page.
                DeviceState {
                    cursor: live.iter().map(|d| d.cursor).min().unwrap_or(0),
                    first_seen_ms: now,
                    last_seen_ms: now,
                }
            }
        };
        let cursor = state.cursor;
        self.put_device(key, state, b);
        let u = Self::user(&mut self.users, &self.store, &who.user)?;
        Ok(Attached {
            cursor,
            inbox_seq: u.state.next_seq - 1,
        })
    }

    fn ack(
        &mut self,
        who: &Identity,
        up_to: u64,
        read: bool,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        let u = Self::user(&mut self.users, &self.store, &who.user)?;
        // Only entries already on disk can have been delivered; a client acking beyond them must
        // not skip receipts for entries appended later.
        let up_to = up_to.min(u.committed_next - 1);
        let (delivered_from, read_from) = (u.state.delivered_upto, u.state.read_upto);
        let key = device_key(&who.user, &who.device);
        // A connected device whose record was forgotten (unseen for the retention before this
        // connection) is registered again rather than refused.
        let mut dev = self.device(&key, who, b)?.unwrap_or(DeviceState {
            cursor: 0,
            first_seen_ms: chat_proto::now_ms(),
            last_seen_ms: 0,
        });
        if up_to > dev.cursor {
            dev.cursor = up_to;
            self.put_device(key, dev, b);
        }
        if up_to > delivered_from {
            self.receipts(
                &who.user,
                delivered_from + 1,
                up_to,
                ReceiptKind::Delivered,
                b,
            )?;
        }
        if read && up_to > read_from {
            self.receipts(&who.user, read_from + 1, up_to, ReceiptKind::Read, b)?;
        }
        let u = Self::user(&mut self.users, &self.store, &who.user)?;
        let before = (u.state.delivered_upto, u.state.read_upto);
        u.state.delivered_upto = u.state.delivered_upto.max(up_to);
        if read {
            u.state.read_upto = u.state.read_upto.max(up_to);
        }
        if before != (u.state.delivered_upto, u.state.read_upto) {
            Self::mark_dirty(b, &who.user);
        }
        // Entries covered by both receipts are never needed for a receipt again.
        let done = u.state.delivered_upto.min(u.state.read_upto);
        while u.recent.front().is_some_and(|(seq, _, _)| *seq <= done) {
            u.recent.pop_front();
            self.recent_len -= 1;
        }
        Ok(())
    }

    /// Stores a receipt of `kind` in each sender's inbox for the messages of `user`'s inbox in
    /// `from..=to` (one receipt per sender, split at MAX_RECEIPT_IDS).
    fn receipts(
        &mut self,
        user: &str,
        from: u64,
        to: u64,
        kind: ReceiptKind,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        // Senders in order of first appearance, with their message ids in inbox order.
        let mut by_sender: Vec<(String, Vec<String>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut note = |entry: &InboxEntry| {
            if let Some(inbox_entry::Entry::Message(m)) = &entry.entry {
                if m.from == user {
                    return;
                }
                let i = *index.entry(m.from.clone()).or_insert_with(|| {
                    by_sender.push((m.from.clone(), Vec::new()));
                    by_sender.len() - 1
                });
                by_sender[i].1.push(m.msg_id.clone());
            }
        };
        let cached = self.users.get(user).and_then(|u| {
            let first = u.recent.front()?.0;
            (first <= from && u.recent.back()?.0 >= to).then(|| {
                u.recent
                    .range((from - first) as usize..=(to - first) as usize)
            })
        });
        if let Some(entries) = cached {
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
        let ts = chat_proto::now_ms();
        for (sender, ids) in by_sender {
            for chunk in ids.chunks(MAX_RECEIPT_IDS) {
                let receipt = Receipt {
                    kind: kind as i32,
                    by: user.to_string(),
                    msg_ids: chunk.to_vec(),
                    ts,
                };
                let entry = InboxEntry {
                    entry: Some(inbox_entry::Entry::Receipt(receipt)),
                };
                let id = uuid::Uuid::now_v7().to_string();
                self.deliver_to(&sender, ts, &id, entry, b)?;
            }
        }
        Ok(())
    }
}

/// A committed batch's publication: ready to run or not, and what to run.
type Slot = (bool, Option<Box<dyn FnOnce() + Send>>);

/// What committed batches make visible (replies, live deliveries, outbox hand-off), run in commit
/// order: a batch whose dual writes are not acknowledged yet holds back the batches after it, so
/// nothing a client sent later becomes visible first.
#[derive(Default)]
struct PublishQueue {
    /// Id of the front slot, and the slots: ready or not, and what to run.
    slots: std::sync::Mutex<(u64, VecDeque<Slot>)>,
    /// Held while running slots, so two threads never run them out of order.
    runner: std::sync::Mutex<()>,
}

impl PublishQueue {
    /// Adds a batch; runs it (and whatever became runnable) at once if nothing waits before it.
    fn push(&self, f: Box<dyn FnOnce() + Send>, ready: bool) -> u64 {
        let id = {
            let mut g = self.slots.lock().expect("not poisoned");
            g.1.push_back((ready, Some(f)));
            g.0 + g.1.len() as u64 - 1
        };
        self.run_ready();
        id
    }

    fn ready(&self, id: u64) {
        {
            let mut g = self.slots.lock().expect("not poisoned");
            let first = g.0;
            if let Some(slot) = id.checked_sub(first).and_then(|i| g.1.get_mut(i as usize)) {
                slot.0 = true;
            }
        }
        self.run_ready();
    }

    fn run_ready(&self) {
        let _one_at_a_time = self.runner.lock().expect("not poisoned");
        loop {
            let f = {
                let mut g = self.slots.lock().expect("not poisoned");
                match g.1.front() {
                    Some((true, _)) => {
                        g.0 += 1;
                        g.1.pop_front().and_then(|(_, f)| f)
                    }
                    _ => return,
                }
            };
            if let Some(f) = f {
                f();
            }
        }
    }
}

/// `range` without the parts covered by `keep` (all inclusive ranges of key hashes).
fn subtract(range: (u64, u64), keep: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = vec![range];
    for &(ks, ke) in keep {
        out = out
            .into_iter()
            .flat_map(|(s, e)| {
                if ke < s || ks > e {
                    return vec![(s, e)];
                }
                let mut parts = Vec::new();
                if ks > s {
                    parts.push((s, ks - 1));
                }
                if ke < e {
                    parts.push((ke + 1, e));
                }
                parts
            })
            .collect();
    }
    out
}

/// The answer to a command of a user this node no longer owns (the ring moved under a session).
/// The user whose action made an outbox entry: a message's sender, a receipt's reader.
fn origin(e: &ForwardEntry) -> Option<&str> {
    match &e.item {
        Some(forward_entry::Item::Message(m)) => Some(&m.from),
        Some(forward_entry::Item::Receipt(r)) => Some(&r.by),
        None => None,
    }
}

fn moved(user: &str) -> ChatError {
    ChatError::Unavailable(format!("{user} has moved to another node; reconnect"))
}

fn send_replies(replies: Vec<Reply>) {
    for r in replies {
        match r {
            Reply::Sent(tx, s) => drop(tx.send(Ok(s))),
            Reply::Attached(tx, a) => drop(tx.send(Ok(a))),
            Reply::Applied(tx, st) => drop(tx.send(Ok(st))),
            Reply::Done(tx) => drop(tx.send(Ok(()))),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Batches are built by hand here, so what shares a batch is decided by the test, not by
    //! timing.
    use super::*;
    use crate::store::StoreOptions;
    use std::time::Duration;

    const RETENTION_MS: i64 = 3_600_000;

    fn committer() -> (Committer, Arc<Hub>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            &StoreOptions {
                retention: Duration::from_millis(RETENTION_MS as u64),
                block_cache_mib: 8,
                min_free_bytes: 0,
            },
        )
        .unwrap();
        let hub = Hub::new(1024);
        let opts = CommitterOptions {
            sync: false,
            max_batch: 1024,
            queue_depth: 16,
            retention_ms: RETENTION_MS,
            routing: Routing::standalone("n1"),
            outbox_tx: None,
            mirror_tx: None,
            events_tx: None,
        };
        let c = Committer::new(store, hub.clone(), opts).unwrap();
        (c, hub, dir)
    }

    fn id(user: &str, device: &str) -> Identity {
        Identity {
            user: user.into(),
            device: device.into(),
        }
    }

    fn send(
        from: &Identity,
        cmid: &str,
        to: &str,
    ) -> (Command, oneshot::Receiver<Result<Sent, ChatError>>) {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Send {
            from: from.clone(),
            client_msg_id: cmid.into(),
            to: to.into(),
            body: "hi".into(),
            reply,
        };
        (cmd, rx)
    }

    fn attach(
        who: &Identity,
        max: u32,
    ) -> (Command, oneshot::Receiver<Result<Attached, ChatError>>) {
        let (reply, rx) = oneshot::channel();
        let cmd = Command::Attach {
            who: who.clone(),
            max_devices: max,
            reply,
        };
        (cmd, rx)
    }

    fn ack(who: &Identity, up_to: u64, read: bool) -> Command {
        Command::Ack {
            who: who.clone(),
            up_to,
            read,
        }
    }

    fn receipts_of(c: &Committer, user: &str) -> Vec<(i32, Vec<String>)> {
        c.store
            .inbox_from(user, 1, 1000)
            .unwrap()
            .into_iter()
            .filter_map(|e| match e.entry.entry {
                Some(inbox_entry::Entry::Receipt(r)) => Some((r.kind, r.msg_ids)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn subtracting_ranges_keeps_what_is_outside() {
        assert_eq!(subtract((10, 20), &[]), vec![(10, 20)]);
        assert_eq!(subtract((10, 20), &[(0, 9), (21, 30)]), vec![(10, 20)]);
        assert_eq!(subtract((10, 20), &[(12, 14)]), vec![(10, 11), (15, 20)]);
        assert_eq!(subtract((10, 20), &[(5, 12), (18, 25)]), vec![(13, 17)]);
        assert_eq!(subtract((10, 20), &[(10, 20)]), vec![]);
        assert_eq!(
            subtract((0, u64::MAX), &[(0, 0), (u64::MAX, u64::MAX)]),
            vec![(1, u64::MAX - 1)]
        );
    }

    #[test]
    fn retries_in_one_batch_get_the_same_sent_and_store_one_message() {
        let (mut c, _hub, _dir) = committer();
        let alice = id("alice", "phone");
        let (a, ra) = send(&alice, "x", "bob");
        let (b, rb) = send(&alice, "x", "bob");
        c.commit(vec![a, b].into_iter());
        let (sa, sb) = (
            ra.blocking_recv().unwrap().unwrap(),
            rb.blocking_recv().unwrap().unwrap(),
        );
        assert_eq!(sa, sb);
        assert_eq!(c.store.inbox_from("bob", 1, 10).unwrap().len(), 1);
        // And in a later batch, from disk.
        let (d, rd) = send(&alice, "x", "bob");
        c.commit(vec![d].into_iter());
        assert_eq!(rd.blocking_recv().unwrap().unwrap(), sa);
        assert_eq!(c.store.inbox_from("bob", 1, 10).unwrap().len(), 1);
    }

    /// Receipts come from the committer's recent entries when it has them and from storage
    /// otherwise; both must give the same receipts, including across the boundary between them.
    #[test]
    fn receipts_from_recent_entries_and_from_storage_agree() {
        let run = |forget_at: Option<usize>| {
            let (mut c, _hub, _dir) = committer();
            let (alice, carol, bob) = (id("alice", "a"), id("carol", "c"), id("bob", "phone"));
            let (p, _) = attach(&bob, 8);
            c.commit(vec![p].into_iter());
            // 100 messages (more than one user's recent entries) from two senders.
            let mut ids = Vec::new();
            for i in 0..100 {
                let from = if i % 3 == 0 { &carol } else { &alice };
                let (s, r) = send(from, &i.to_string(), "bob");
                c.commit(vec![s].into_iter());
                ids.push(r.blocking_recv().unwrap().unwrap().msg_id);
                if forget_at == Some(i) {
                    c.forget_cached();
                }
            }
            // Delivered in steps, read in one go at the end.
            for up_to in [10, 50, 95, 100] {
                c.commit(vec![ack(&bob, up_to, false)].into_iter());
            }
            c.commit(vec![ack(&bob, 100, true)].into_iter());
            // Receipts with each msg id replaced by the message's index in the send order.
            let index = |r: Vec<(i32, Vec<String>)>| -> Vec<(i32, Vec<usize>)> {
                r.into_iter()
                    .map(|(k, got)| {
                        let at = got.iter().map(|m| ids.iter().position(|x| x == m).unwrap());
                        (k, at.collect())
                    })
                    .collect()
            };
            (
                index(receipts_of(&c, "alice")),
                index(receipts_of(&c, "carol")),
            )
        };
        let (alice, carol) = run(None);
        for (got, from_carol) in [(&alice, false), (&carol, true)] {
            let expect: Vec<usize> = (0..100).filter(|i| (i % 3 == 0) == from_carol).collect();
            for kind in [ReceiptKind::Delivered, ReceiptKind::Read] {
                let at: Vec<usize> = got
                    .iter()
                    .filter(|(k, _)| *k == kind as i32)
                    .flat_map(|(_, at)| at.clone())
                    .collect();
                assert_eq!(at, expect, "{kind:?}");
            }
        }
        // Caches emptied part-way, so that other ranges are read from storage: the same receipts.
        for forget_at in [0, 40, 80, 97] {
            assert_eq!(
                run(Some(forget_at)),
                (alice.clone(), carol.clone()),
                "{forget_at}"
            );
        }
    }

    #[test]
    fn receipts_are_produced_once_even_for_acks_in_one_batch() {
        let (mut c, _hub, _dir) = committer();
        let (alice, phone, laptop) = (id("alice", "a"), id("bob", "phone"), id("bob", "laptop"));
        let (p, _) = attach(&phone, 8);
        let (l, _) = attach(&laptop, 8);
        let (s1, r1) = send(&alice, "1", "bob");
        let (s2, r2) = send(&alice, "2", "bob");
        c.commit(vec![p, l, s1, s2].into_iter());
        let ids = vec![
            r1.blocking_recv().unwrap().unwrap().msg_id,
            r2.blocking_recv().unwrap().unwrap().msg_id,
        ];
        // Both devices ack both messages, and one of them reads, all in one batch.
        c.commit(
            vec![
                ack(&phone, 1, false),
                ack(&laptop, 2, false),
                ack(&phone, 2, false),
                ack(&laptop, 2, true),
            ]
            .into_iter(),
        );
        // And again in a later batch: nothing new.
        c.commit(vec![ack(&phone, 2, true), ack(&laptop, 2, true)].into_iter());
        let got = receipts_of(&c, "alice");
        let delivered: Vec<String> = got
            .iter()
            .filter(|(k, _)| *k == ReceiptKind::Delivered as i32)
            .flat_map(|(_, ids)| ids.clone())
            .collect();
        let read: Vec<String> = got
            .iter()
            .filter(|(k, _)| *k == ReceiptKind::Read as i32)
            .flat_map(|(_, ids)| ids.clone())
            .collect();
        assert_eq!(delivered, ids);
        assert_eq!(read, ids);
    }

    #[test]
    fn acks_beyond_what_is_committed_do_not_skip_receipts() {
        let (mut c, _hub, _dir) = committer();
        let (alice, bob) = (id("alice", "a"), id("bob", "phone"));
        let (p, _) = attach(&bob, 8);
        let (s1, _) = send(&alice, "1", "bob");
        c.commit(vec![p, s1].into_iter());
        // An ack for seq 5 arrives in the same batch as the message that becomes seq 2.
        let (s2, r2) = send(&alice, "2", "bob");
        c.commit(vec![ack(&bob, 5, false), s2].into_iter());
        let second = r2.blocking_recv().unwrap().unwrap().msg_id;
        assert_eq!(receipts_of(&c, "alice").len(), 1, "receipt for seq 1 only");
        c.commit(vec![ack(&bob, 2, false)].into_iter());
        let got = receipts_of(&c, "alice");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].1, vec![second]);
    }

    #[test]
    fn a_stale_device_deleted_in_a_batch_is_not_resurrected_by_a_later_command() {
        let (mut c, _hub, _dir) = committer();
        let stale = id("carol", "old");
        // A device last seen long before the retention.
        let rec = DeviceState {
            cursor: 7,
            first_seen_ms: 1,
            last_seen_ms: 1,
        };
        c.store
            .db()
            .put_cf(
                c.store.cf(CF_META),
                device_key("carol", "old"),
                rec.encode_to_vec(),
            )
            .unwrap();
        let (x, rx) = attach(&id("carol", "new"), 2);
        let (again, ragain) = attach(&stale, 2);
        c.commit(vec![x, again].into_iter());
        assert!(rx.blocking_recv().unwrap().is_ok());
        // The stale device comes back as a new device (cursor from the live ones, not its old 7),
        // within the limit of 2.
        let a = ragain.blocking_recv().unwrap().unwrap();
        assert_eq!(a.cursor, 0);
        let devices = c.store.devices("carol").unwrap();
        assert_eq!(devices.len(), 2, "{devices:?}");
        assert!(devices.iter().all(|(_, d)| d.last_seen_ms > 1));
    }

    #[test]
    fn an_ack_from_a_forgotten_device_registers_it_again() {
        let (mut c, _hub, _dir) = committer();
        let (alice, bob) = (id("alice", "a"), id("bob", "phone"));
        let (s1, _) = send(&alice, "1", "bob");
        c.commit(vec![s1].into_iter());
        c.commit(vec![ack(&bob, 1, false)].into_iter());
        let d = c.store.device_state("bob", "phone").unwrap().unwrap();
        assert_eq!(d.cursor, 1);
        assert_eq!(receipts_of(&c, "alice").len(), 1);
    }

    /// A committer that is `self_id` in a two-node ring of n1 and n2.
    fn routed(
        self_id: &str,
    ) -> (
        Committer,
        mpsc::UnboundedReceiver<Outboxed>,
        tempfile::TempDir,
    ) {
        let (mut c, _hub, dir) = committer();
        let members = ["n1", "n2"].map(|id| chat_ring::Member {
            id: id.into(),
            weight: 1,
        });
        let ring = Ring::new(1, &members, 16).unwrap();
        let (_tx, view) = watch::channel(ClusterView::fixed(ring, []));
        c.routing = Routing {
            self_id: self_id.into(),
            view,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        c.outbox_tx = Some(tx);
        (c, rx, dir)
    }

    /// The first user `<stem>-<i>` that `node` owns in `c`'s ring.
    fn user_on(c: &Committer, node: &str, stem: &str) -> String {
        let ring = c.routing.view.borrow().ring.clone().unwrap();
        (0..)
            .map(|i| format!("{stem}-{i}"))
            .find(|u| ring.owner(u) == node)
            .unwrap()
    }

    fn forwarded(to: &str, id: &str) -> ForwardEntry {
        ForwardEntry {
            to: to.into(),
            id: id.into(),
            created_ms: chat_proto::now_ms(),
            item: Some(forward_entry::Item::Message(Message {
                msg_id: id.into(),
                from: "far-away".into(),
                to: to.into(),
                body: "hi".into(),
                ..Message::default()
            })),
        }
    }

    fn apply(
        entries: Vec<ForwardEntry>,
    ) -> (
        Command,
        oneshot::Receiver<Result<Vec<ForwardStatus>, ChatError>>,
    ) {
        let (reply, rx) = oneshot::channel();
        (Command::Apply { entries, reply }, rx)
    }

    #[test]
    fn entries_for_users_owned_elsewhere_go_to_the_outbox_in_the_same_batch() {
        let (mut c, mut rx, _dir) = routed("n1");
        let alice = user_on(&c, "n1", "alice");
        let bob = user_on(&c, "n2", "bob");
        let (s1, mut r1) = send(&id(&alice, "p"), "c1", &bob);
        let (s2, mut r2) = send(&id(&alice, "p"), "c2", &alice);
        c.commit(vec![s1, s2].into_iter());
        let sent = r1.try_recv().unwrap().unwrap();
        r2.try_recv().unwrap().unwrap();
        assert!(
            c.store.inbox_from(&bob, 1, 10).unwrap().is_empty(),
            "not stored here"
        );
        assert_eq!(
            c.store.inbox_from(&alice, 1, 10).unwrap().len(),
            1,
            "local stays local"
        );
        let out = c.store.outbox_from(0, 10).unwrap();
        assert_eq!(out.len(), 1);
        let (seq, e) = &out[0];
        assert_eq!(
            (e.to.as_str(), e.id.as_str()),
            (bob.as_str(), sent.msg_id.as_str())
        );
        let handed = rx.try_recv().unwrap();
        assert_eq!(handed.len(), 1);
        assert_eq!((handed[0].0, &*handed[0].1), (*seq, e));
        // Seqs keep growing across batches and restarts of the committer.
        let (s3, _r3) = send(&id(&alice, "p"), "c3", &bob);
        c.commit(vec![s3].into_iter());
        assert_eq!(c.store.last_outbox_seq().unwrap(), seq + 1);
    }

    #[test]
    fn forwarded_entries_are_stored_once_and_only_by_the_owner() {
        let (mut c, _rx, _dir) = routed("n1");
        let alice = user_on(&c, "n1", "alice");
        let bob = user_on(&c, "n2", "bob");
        let (a1, mut r1) = apply(vec![forwarded(&alice, "m1"), forwarded(&alice, "m1")]);
        c.commit(vec![a1].into_iter());
        assert_eq!(
            r1.try_recv().unwrap().unwrap(),
            [ForwardStatus::Stored, ForwardStatus::Stored]
        );
        let (a2, mut r2) = apply(vec![
            forwarded(&alice, "m1"),
            forwarded(&bob, "m2"),
            forwarded(&alice, ""),
            forwarded(&alice, "m3"),
        ]);
        c.commit(vec![a2].into_iter());
        assert_eq!(
            r2.try_recv().unwrap().unwrap(),
            [
                ForwardStatus::Stored,
                ForwardStatus::NotOwner,
                ForwardStatus::Invalid,
                ForwardStatus::Stored
            ]
        );
        let inbox: Vec<String> = c
            .store
            .inbox_from(&alice, 1, 10)
            .unwrap()
            .into_iter()
            .map(|e| match e.entry.entry {
                Some(inbox_entry::Entry::Message(m)) => m.msg_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(inbox, ["m1", "m3"], "a retry is stored once");
        assert!(c.store.inbox_from(&bob, 1, 10).unwrap().is_empty());
    }

    #[test]
    fn giving_up_tells_the_sender_and_empties_the_outbox() {
        let (mut c, _rx, _dir) = routed("n1");
        let alice = user_on(&c, "n1", "alice");
        let bob = user_on(&c, "n2", "bob");
        let (s1, mut r1) = send(&id(&alice, "p"), "c1", &bob);
        c.commit(vec![s1].into_iter());
        let sent = r1.try_recv().unwrap().unwrap();
        let entries: Vec<(u64, Arc<ForwardEntry>)> = c
            .store
            .outbox_from(0, 10)
            .unwrap()
            .into_iter()
            .map(|(s, e)| (s, Arc::new(e)))
            .collect();
        let (reply, mut done) = oneshot::channel();
        c.commit(
            vec![Command::GiveUp {
                entries,
                reason: "n2 unreachable".into(),
                reply,
            }]
            .into_iter(),
        );
        done.try_recv().unwrap().unwrap();
        assert!(c.store.outbox_from(0, 10).unwrap().is_empty());
        let inbox = c.store.inbox_from(&alice, 1, 10).unwrap();
        match &inbox[0].entry.entry {
            Some(inbox_entry::Entry::Failed(f)) => {
                assert_eq!(f.msg_id, sent.msg_id);
                assert_eq!(f.client_msg_id, "c1");
                assert_eq!(f.to, bob);
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    /// An ack on the new owner, in the window between a move's commit and the old owner's seal,
    /// makes receipts for a user that moved here. The old owner's stream still writes that
    /// user's inbox: a receipt appended here at the user's stale next seq was overwritten by the
    /// mirrored entry with the same seq (found by the chaos suite as lost receipts and, once,
    /// a lost message). Both must survive.
    /// n3 leaves the ring n1, n2, n3 (epoch 1 → 2); the committer is n2, which receives some of
    /// n3's users. Returns it with its outbox receiver, the move, a user moving from n3 to n2 and
    /// one that stays on n2.
    fn removal_on_n2() -> (
        Committer,
        mpsc::UnboundedReceiver<Outboxed>,
        Arc<Transition>,
        String,
        String,
        tempfile::TempDir,
    ) {
        let members = |ids: &[&str]| -> Vec<chat_ring::Member> {
            ids.iter()
                .map(|id| chat_ring::Member {
                    id: id.to_string(),
                    weight: 1,
                })
                .collect()
        };
        // n3 is removed: n2 receives some of its users.
        let from = Ring::new(1, &members(&["n1", "n2", "n3"]), 16).unwrap();
        let to = Ring::new(2, &members(&["n1", "n2"]), 16).unwrap();
        let t = Arc::new(Transition::new(from.clone(), to.clone()).unwrap());
        let (mut c, _hub, dir) = committer();
        let (_view_tx, view) = watch::channel(ClusterView::fixed(to.clone(), []));
        c.routing = Routing {
            self_id: "n2".into(),
            view,
        };
        let (otx, orx) = mpsc::unbounded_channel();
        c.outbox_tx = Some(otx);
        let find = |stem: &str, old: &str| {
            (0..)
                .map(|i| format!("{stem}-{i}"))
                .find(|u| from.owner(u) == old && to.owner(u) == "n2")
                .unwrap()
        };
        let mover = find("mover", "n3");
        let carol = find("carol", "n2");
        (c, orx, t, mover, carol, dir)
    }

    #[test]
    fn a_receipt_for_a_user_held_for_a_seal_survives_the_old_owners_writes() {
        let (mut c, mut orx, t, mover, carol, _dir) = removal_on_n2();
        // Carol has a message from the mover (forwarded before the move).
        let mut m = forwarded(&carol, "m1");
        if let Some(forward_entry::Item::Message(msg)) = &mut m.item {
            msg.from = mover.clone();
        }
        let (a, mut ra) = apply(vec![m]);
        c.commit(std::iter::once(a));
        assert_eq!(ra.try_recv().unwrap().unwrap(), [ForwardStatus::Stored]);
        let (at, mut rat) = attach(&id(&carol, "p"), 8);
        c.commit(std::iter::once(at));
        rat.try_recv().unwrap().unwrap();
        // The move committed; n3 has not sealed what it gave n2 yet.
        let received: Vec<Segment> = t.receives("n2").cloned().collect();
        c.sealing = Some((t.clone(), received, HashSet::from(["n3".to_string()])));
        assert!(c.held(&mover) && !c.held(&carol));
        // Carol reads the message: receipts for the held mover.
        c.commit(std::iter::once(ack(&id(&carol, "p"), 1, true)));
        // n3's last mirrored writes for the mover (its inbox up to seq 1, its state), and the seal.
        let theirs = InboxEntry {
            entry: Some(inbox_entry::Entry::Message(Message {
                msg_id: "theirs".into(),
                from: "someone".into(),
                to: mover.clone(),
                body: "sent before the move".into(),
                ..Message::default()
            })),
        };
        let state = UserState {
            next_seq: 2,
            ..UserState::default()
        };
        let write = |cf: &str, key: Vec<u8>, value: Vec<u8>| RawWrite {
            cf: cf.into(),
            key,
            value,
            delete: false,
        };
        let req = chat_proto::cluster::Mirror {
            epoch: 2,
            reset: Vec::new(),
            writes: vec![
                write(
                    CF_INBOX,
                    inbox_key(&mover, 1),
                    timed_value(chat_proto::now_ms(), &theirs),
                ),
                write(CF_META, user_state_key(&mover), state.encode_to_vec()),
            ],
            seal: true,
            outbox: Vec::new(),
        };
        let (reply, mut done) = oneshot::channel();
        c.commit(std::iter::once(Command::Mirror {
            from: "n3".into(),
            req,
            reply,
        }));
        done.try_recv().unwrap().unwrap();
        assert!(c.sealing.is_none(), "sealed");
        // The receipts waited in the outbox; the forwarder hands them back to this node.
        let mut entries = Vec::new();
        while let Ok(out) = orx.try_recv() {
            entries.extend(out.iter().map(|(_, e)| (**e).clone()));
        }
        assert!(!entries.is_empty(), "the receipts went through the outbox");
        assert!(entries.iter().all(|e| e.to == mover));
        let n = entries.len();
        let (a, mut ra) = apply(entries);
        c.commit(std::iter::once(a));
        assert_eq!(
            ra.try_recv().unwrap().unwrap(),
            vec![ForwardStatus::Stored; n]
        );
        let inbox = c.store.inbox_from(&mover, 1, 10).unwrap();
        assert_eq!(inbox[0].seq, 1);
        assert!(
            matches!(&inbox[0].entry.entry, Some(inbox_entry::Entry::Message(m)) if m.msg_id == "theirs"),
            "{inbox:?}"
        );
        let kinds: Vec<i32> = receipts_of(&c, &mover)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(kinds.contains(&(ReceiptKind::Read as i32)), "{kinds:?}");
        assert!(inbox[1..].iter().all(|e| e.seq >= 2));
    }

    /// A sender's message stuck in its old owner's outbox (recipient unreachable) was overtaken
    /// by the sender's next message from its new home (found by the chaos suite as reordered
    /// deliveries after a disk-full node and a move). The seal hands the old outbox entries over,
    /// and the new owner queues them ahead of the sender's next messages.
    #[test]
    fn outbox_entries_handed_over_with_the_seal_go_ahead_of_the_movers_next_sends() {
        let (mut c, mut orx, t, mover, _carol, _dir) = removal_on_n2();
        let ring = c.routing.view.borrow().ring.clone().unwrap();
        let far = (0..)
            .map(|i| format!("far-{i}"))
            .find(|u| ring.owner(u) == "n1")
            .unwrap();
        let received: Vec<Segment> = t.receives("n2").cloned().collect();
        c.sealing = Some((t.clone(), received, HashSet::from(["n3".to_string()])));
        // The mover, reconnected here, sends while n3 has not sealed: held.
        let (s2, mut r2) = send(&id(&mover, "p"), "c2", &far);
        c.commit(std::iter::once(s2));
        assert!(r2.try_recv().is_err(), "held until the seal");
        // n3's seal carries the mover's older message, still in n3's outbox.
        let mut old = forwarded(&far, "old-msg");
        if let Some(forward_entry::Item::Message(m)) = &mut old.item {
            m.from = mover.clone();
        }
        let seal = |outbox: Vec<ForwardEntry>| {
            let (reply, done) = oneshot::channel();
            let req = chat_proto::cluster::Mirror {
                epoch: 2,
                reset: Vec::new(),
                writes: Vec::new(),
                seal: true,
                outbox,
            };
            (
                Command::Mirror {
                    from: "n3".into(),
                    req,
                    reply,
                },
                done,
            )
        };
        // An entry of a user outside the move is refused, and nothing of it is kept.
        let mut stranger = forwarded(&far, "x");
        if let Some(forward_entry::Item::Message(m)) = &mut stranger.item {
            m.from = far.clone();
        }
        let (bad, mut bad_done) = seal(vec![stranger]);
        c.commit(std::iter::once(bad));
        assert!(bad_done.try_recv().unwrap().is_err());
        assert!(c.sealing.is_some(), "a refused seal does not count");
        let (good, mut good_done) = seal(vec![old]);
        c.commit(std::iter::once(good));
        good_done.try_recv().unwrap().unwrap();
        assert!(c.sealing.is_none());
        // The held send runs after the seal; its message is queued behind the old one.
        c.run_deferred();
        r2.try_recv().unwrap().unwrap();
        let out: Vec<String> = c
            .store
            .outbox_from(0, 10)
            .unwrap()
            .into_iter()
            .map(|(_, e)| match e.item {
                Some(forward_entry::Item::Message(m)) => m.client_msg_id.clone() + &m.msg_id,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(
            out[0], "old-msg",
            "the handed-over entry goes first: {out:?}"
        );
        assert!(out[1].starts_with("c2"), "{out:?}");
        let mut handed = Vec::new();
        while let Ok(o) = orx.try_recv() {
            handed.extend(o.iter().map(|(_, e)| e.id.clone()));
        }
        assert_eq!(handed.len(), 2);
        assert_eq!(handed[0], "old-msg");
    }

    /// `removal_on_n2` with the move in flight in the view, and the committer's move events.
    #[allow(clippy::type_complexity)]
    fn moving_on_n2() -> (
        Committer,
        mpsc::UnboundedReceiver<MoveEvent>,
        watch::Sender<ClusterView>,
        Arc<Transition>,
        tempfile::TempDir,
    ) {
        let (mut c, _orx, t, _mover, _carol, dir) = removal_on_n2();
        let (etx, erx) = mpsc::unbounded_channel();
        c.events_tx = Some(etx);
        let mut v = ClusterView::fixed(t.from().clone(), []);
        v.moving = Some(t.clone());
        let (view_tx, view) = watch::channel(v);
        c.routing.view = view;
        (c, erx, view_tx, t, dir)
    }

    /// The move events the committer sent so far.
    fn events(erx: &mut mpsc::UnboundedReceiver<MoveEvent>) -> Vec<MoveEvent> {
        std::iter::from_fn(|| erx.try_recv().ok()).collect()
    }

    /// A node that cannot record the move in flight (its disk is full) does not take part in it
    /// until it can: restarted after the commit, it would not know it must finish its share.
    #[test]
    fn a_move_is_adopted_only_once_its_marker_is_recorded() {
        let (mut c, mut erx, _view_tx, _t, dir) = moving_on_n2();
        // The marker's temp file cannot be created: a directory is in its place.
        let blocker = dir.path().join("move-in-flight.json.tmp");
        std::fs::create_dir(&blocker).unwrap();
        c.commit(std::iter::once(Command::Observe));
        assert!(c.move_state.is_none(), "adopted without a marker");
        let adopted = |erx: &mut mpsc::UnboundedReceiver<MoveEvent>| {
            events(erx)
                .iter()
                .filter(|e| matches!(e, MoveEvent::Adopted(_)))
                .count()
        };
        assert_eq!(adopted(&mut erx), 0, "reported without a marker");
        std::fs::remove_dir(&blocker).unwrap();
        c.commit(std::iter::once(Command::Observe));
        assert!(c.move_state.is_some());
        assert!(c.store.move_marker().is_some());
        assert_eq!(adopted(&mut erx), 1);
    }

    /// The next move waits for every node to finish its share of the last one: a new owner
    /// tells the driver it is settled only once every old owner's seal is in, not at the commit.
    #[test]
    fn a_new_owner_is_settled_only_once_every_seal_is_in() {
        let (mut c, mut erx, view_tx, t, _dir) = moving_on_n2();
        let settled = |erx: &mut mpsc::UnboundedReceiver<MoveEvent>| -> Vec<u64> {
            events(erx)
                .into_iter()
                .filter_map(|e| match e {
                    MoveEvent::Settled(epoch) => Some(epoch),
                    _ => None,
                })
                .collect()
        };
        c.commit(std::iter::once(Command::Observe));
        assert!(c.move_state.is_some(), "adopted");
        assert_eq!(settled(&mut erx), [1], "nothing left of earlier moves");
        view_tx.send_replace(ClusterView::fixed(t.to().clone(), []));
        c.commit(std::iter::once(Command::Observe));
        assert!(c.sealing.is_some(), "waits for n3's seal");
        assert!(settled(&mut erx).is_empty(), "not settled before the seal");
        let seal = chat_proto::cluster::Mirror {
            epoch: 2,
            reset: Vec::new(),
            writes: Vec::new(),
            seal: true,
            outbox: Vec::new(),
        };
        let (reply, mut done) = oneshot::channel();
        c.commit(std::iter::once(Command::Mirror {
            from: "n3".into(),
            req: seal,
            reply,
        }));
        done.try_recv().unwrap().unwrap();
        assert!(c.store.move_marker().is_none());
        assert_eq!(settled(&mut erx), [2]);
        c.commit(std::iter::once(Command::Observe));
        assert!(settled(&mut erx).is_empty(), "told once");
    }

    /// Below `storage.min_free_mib` of free disk a batch is refused with STORAGE_FULL before
    /// RocksDB is asked to write (it would go read-only on an out-of-space write), and nothing
    /// of it is stored; once space is back the same retry is accepted.
    #[test]
    fn writes_are_refused_with_storage_full_below_the_free_space_floor() {
        let (mut c, _hub, _dir) = committer();
        c.store.set_min_free_bytes(u64::MAX);
        let alice = id("alice", "p");
        let (s1, mut r1) = send(&alice, "c1", "bob");
        c.commit(std::iter::once(s1));
        match r1.try_recv().unwrap() {
            Err(e @ ChatError::StorageFull(_)) => {
                assert_eq!(e.code(), chat_proto::v1::ErrorCode::StorageFull)
            }
            other => panic!("expected STORAGE_FULL, got {other:?}"),
        }
        assert!(c.store.inbox_from("bob", 1, 10).unwrap().is_empty());
        c.store.set_min_free_bytes(0);
        let (s2, mut r2) = send(&alice, "c1", "bob");
        c.commit(std::iter::once(s2));
        r2.try_recv().unwrap().unwrap();
        assert_eq!(c.store.inbox_from("bob", 1, 10).unwrap().len(), 1);
    }
}
