//! The writer: the one writer of the node's storage.
//!
//! Callers queue commands through a [`WriterHandle`] (a bounded channel). A dedicated thread
//! takes whatever is queued (up to `max_batch`), applies it to one batch of writes, writes that
//! batch with one WAL fsync (group commit), and only then makes it visible: answers (✓), live
//! deliveries, the outbox hand-off ([`visibility`]). One thread assigns every sequence number,
//! so per-user order needs no locks, and a device never sees an entry that is not on disk.
//!
//! Rooms per job: [`inbox`] (1:1 sends, attach, acks) and [`receipts`]; [`groups`] and
//! [`tallies`] (a group's changes, sends and receipt counts on its home node); [`outbox`] (entries for
//! users owned elsewhere, their delivery and give-up) and [`forwarded`] (entries other nodes
//! hand here); [`moves`] (this node's part in a move of the ring, as decided by
//! `crate::rebalance::role`); [`replicas`] (copies for followers, and the copies this node
//! follows: `crate::replication`); [`cache`]; [`batch`].

pub(crate) mod batch;
mod blocks;
mod cache;
pub(crate) mod command;
mod forwarded;
pub(crate) mod groups;
mod history;
mod inbox;
mod moves;
mod outbox;
mod receipts;
mod replicas;
mod tallies;
mod visibility;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use chat_proto::cluster::ForwardEntry;
use prost::Message as _;
use tokio::sync::mpsc;

use crate::error::ChatError;
use crate::hub::Hub;
use crate::rebalance::capture::Capture;
use crate::rebalance::hold::Held;
use crate::rebalance::role::MoveRole;
use crate::rebalance::MoveEvent;
use crate::replication::capture::ReplicaCapture;
use crate::replication::placement::Placement;
use crate::replication::Fill;
use crate::routing::Routing;
use crate::store::keys::user_state_key;
use crate::store::{Cf, Store};
use crate::stream::StreamItem;
use crate::throttle::Throttle;
use batch::{Batch, BatchError, Captures, Writes};
use cache::Cache;
use command::Command;
pub use command::{Outboxed, PageRequest, ReplicaPage, SettingsChange, WriterHandle};
pub use groups::{GroupDone, GroupLimits, GroupOp};
use outbox::OutboxState;
pub use visibility::Hold;
use visibility::Visibility;

/// A batch write (with its fsync) slower than this is logged.
const SLOW_COMMIT: std::time::Duration = std::time::Duration::from_millis(100);
/// Errors that repeat per batch while they last are logged at most once per this interval.
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Where the writer takes the time and new ids from: once per batch for the time, so every
/// entry of a batch has the same timestamp. Tests pass their own.
#[derive(Clone)]
pub struct Env {
    pub now_ms: Arc<dyn Fn() -> i64 + Send + Sync>,
    pub new_id: Arc<dyn Fn() -> String + Send + Sync>,
}

impl Default for Env {
    fn default() -> Env {
        Env {
            now_ms: Arc::new(chat_proto::now_ms),
            new_id: Arc::new(|| uuid::Uuid::now_v7().to_string()),
        }
    }
}

/// What the writer needs besides storage and the hub.
pub struct WriterOptions {
    pub sync: bool,
    pub max_batch: usize,
    pub queue_depth: usize,
    pub retention_ms: i64,
    pub routing: Routing,
    pub env: Env,
    /// Where new outbox entries go once committed (`None`: nobody forwards, e.g. standalone).
    pub outbox_tx: Option<mpsc::UnboundedSender<Outboxed>>,
    /// The streams to new owners and followers, and the move driver's events (`None`:
    /// standalone).
    pub streams_tx: Option<mpsc::UnboundedSender<StreamItem>>,
    pub events_tx: Option<mpsc::UnboundedSender<MoveEvent>>,
    /// Followers to fill (`crate::replication::fill`; `None`: standalone).
    pub fills_tx: Option<mpsc::UnboundedSender<Fill>>,
}

pub struct Writer {
    store: Arc<Store>,
    hub: Arc<Hub>,
    sync: bool,
    max_batch: usize,
    retention_ms: i64,
    env: Env,
    routing: Routing,
    cache: Cache,
    outbox: OutboxState,
    outbox_tx: Option<mpsc::UnboundedSender<Outboxed>>,
    streams_tx: Option<mpsc::UnboundedSender<StreamItem>>,
    events_tx: Option<mpsc::UnboundedSender<MoveEvent>>,
    fills_tx: Option<mpsc::UnboundedSender<Fill>>,
    /// Who holds which keys in the ring of the last batch.
    placement: Option<Arc<Placement>>,
    role: MoveRole,
    /// Receiver after a commit: commands waiting for the seals.
    held: Held,
    visibility: Arc<Visibility>,
}

impl Writer {
    /// Starts the writer thread. It ends once every handle is dropped and the queue is drained.
    pub fn start(
        store: Arc<Store>,
        hub: Arc<Hub>,
        opts: WriterOptions,
    ) -> Result<(WriterHandle, std::thread::JoinHandle<()>), ChatError> {
        let (tx, rx) = mpsc::channel(opts.queue_depth);
        let mut w = Writer::new(store, hub, opts)?;
        let join = std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || w.run(rx))
            .expect("spawn writer thread");
        Ok((WriterHandle { tx }, join))
    }

    fn new(store: Arc<Store>, hub: Arc<Hub>, opts: WriterOptions) -> Result<Self, ChatError> {
        let marker = store
            .move_marker()?
            .and_then(|b| crate::rebalance::decode_marker(&b));
        let role = MoveRole::new(&opts.routing.self_id, marker);
        metrics::gauge!(crate::admin::REBALANCE_PENDING)
            .set(f64::from(u8::from(role.marker_on_disk())));
        Ok(Writer {
            outbox: OutboxState::load(&store)?,
            store,
            hub,
            sync: opts.sync,
            max_batch: opts.max_batch,
            retention_ms: opts.retention_ms,
            env: opts.env,
            routing: opts.routing,
            cache: Cache::default(),
            outbox_tx: opts.outbox_tx,
            streams_tx: opts.streams_tx,
            events_tx: opts.events_tx,
            fills_tx: opts.fills_tx,
            placement: None,
            role,
            held: Held::default(),
            visibility: Arc::new(Visibility::default()),
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
            self.run_batch(cmds.drain(..));
            self.run_held();
        }
        tracing::info!("writer drained and stopped");
    }

    /// Commands that waited for a receiver's seals go first once every seal is in.
    fn run_held(&mut self) {
        if self.role.sealing().is_none() && !self.held.is_empty() {
            let mut waited = self.held.take();
            while !waited.is_empty() {
                let n = waited.len().min(self.max_batch);
                let part: Vec<Command> = waited.drain(..n).collect();
                self.run_batch(part.into_iter());
            }
        }
    }

    /// Applies `cmds` as one batch, writes it, and makes it visible (or fails every command).
    fn run_batch(&mut self, cmds: impl Iterator<Item = Command>) {
        let (ring, moving) = {
            let v = self.routing.view.borrow();
            (v.ring.clone(), v.moving.clone())
        };
        let ring_epoch = ring.as_ref().map(|r| r.epoch());
        let steps = self.role.observe(moving.as_ref(), ring.as_deref());
        self.observe_placement(ring.as_ref());
        let capture = Captures {
            moving: self
                .role
                .current()
                .and_then(|t| Capture::new(t, &self.routing.self_id)),
            replica: self
                .placement
                .as_ref()
                .filter(|_| self.streams_tx.is_some())
                .and_then(ReplicaCapture::new),
        };
        let writes = Writes::new(self.store.clone(), capture);
        let mut b = Batch::new(writes, ring, (self.env.now_ms)());
        self.carry_out(steps, &mut b);
        // A failed batch leaves the move role as it was before its commands.
        let role_before = self.role.clone();
        let outbox_seq_before = self.outbox.seq;
        for cmd in cmds {
            self.apply(cmd, &mut b);
        }
        for user in &b.dirty_users {
            let u = self.cache.cached(user).expect("a dirty user is cached");
            b.writes
                .put(Cf::Meta, user_state_key(user), u.state.encode_to_vec());
        }
        let (commands, bytes) = (b.answers.len(), b.writes.size_in_bytes());
        let Batch { writes, .. } = &mut b;
        let writes =
            std::mem::replace(writes, Writes::new(self.store.clone(), Captures::default()));
        let (wb, durable, capture) = writes.into_parts();
        let started = std::time::Instant::now();
        let result = match b.abort.take() {
            Some(why) => Err(why),
            None if wb.is_empty() => Ok(()),
            None => self
                .store
                .write(wb, self.sync && durable)
                .map_err(BatchError::from),
        };
        let took = started.elapsed();
        metrics::histogram!(crate::admin::COMMIT_SECONDS).record(took.as_secs_f64());
        if took > SLOW_COMMIT {
            tracing::warn!(?took, commands, bytes, "slow commit (write + fsync)");
        }
        match result {
            Ok(()) => {
                let steps = self.role.batch_done(true);
                self.committed(b, capture, steps);
            }
            Err(e) => {
                self.role = role_before;
                let _ = self.role.batch_done(false);
                self.failed(b, &e, outbox_seq_before);
            }
        }
        self.cache.trim();
        metrics::gauge!(crate::admin::REBALANCE_PENDING)
            .set(f64::from(u8::from(self.role.marker_on_disk())));
        if let Some(epoch) = self.role.settled(ring_epoch) {
            self.event(MoveEvent::Settled(epoch));
        }
    }

    /// The batch is on disk: update the caches and make it visible (held while new owners
    /// store its moving writes).
    fn committed(&mut self, b: Batch, capture: Captures, steps: Vec<crate::rebalance::role::Step>) {
        for reply in b.on_disk {
            let _ = reply.send(Ok(()));
        }
        self.cache.committed(&b.dirty_users);
        if b.clear_caches {
            self.cache.forget();
        }
        for (key, state) in b.devices {
            self.cache.devices.insert(key, state);
        }
        for (user, seq, ts, entry) in &b.appended {
            self.cache.remember(user, *seq, *ts, entry.clone());
        }
        self.outbox.counted(
            b.outboxed.iter().map(|(seq, e)| (*seq, e.to.as_str())),
            &b.unoutboxed,
        );
        // An adoption's resets go on the streams before the adopting batch's own writes.
        let mut after = Vec::new();
        for s in steps {
            match s {
                crate::rebalance::role::Step::Resets(t) => self.push_resets(&t),
                other => after.push(other),
            }
        }
        let (hub, outbox_tx) = (self.hub.clone(), self.outbox_tx.clone());
        let (answers, appended, outboxed) = (b.answers, b.appended, b.outboxed);
        let read_states = b.read_states;
        let effects = Box::new(move || {
            for a in answers {
                a.ok();
            }
            for (user, seq, _, entry) in appended {
                hub.publish(&user, seq, entry);
            }
            for (user, up_to_seq, device) in read_states {
                let frame = chat_proto::v1::ServerFrame {
                    frame: Some(chat_proto::v1::server_frame::Frame::ReadState(
                        chat_proto::v1::ReadState { up_to_seq, device },
                    )),
                };
                hub.notify(&user, &Arc::new(frame), "read_state");
            }
            if let (false, Some(tx)) = (outboxed.is_empty(), outbox_tx) {
                let _ = tx.send(outboxed);
            }
        });
        self.publish(effects, capture);
        for s in after {
            self.carry_out_event(s);
        }
    }

    /// Nothing of the batch is on disk: forget what it handed out in memory, and fail its
    /// commands.
    fn failed(&mut self, b: Batch, e: &BatchError, outbox_seq_before: u64) {
        metrics::counter!(crate::admin::COMMIT_FAILURES, "reason" => e.reason()).increment(1);
        static REFUSED: Throttle = Throttle::new(LOG_EVERY);
        if let Some(held) = REFUSED.allow(std::time::Instant::now()) {
            tracing::error!(error = %e, commands = b.answers.len(), held_back = held, "commit failed");
        }
        self.cache.forget();
        self.outbox.seq = outbox_seq_before;
        for a in b.answers {
            a.fail(e.answer());
        }
        for reply in b.on_disk {
            let _ = reply.send(Err(e.answer()));
        }
    }

    fn event(&self, ev: MoveEvent) {
        if let Some(tx) = &self.events_tx {
            let _ = tx.send(ev);
        }
    }

    fn apply(&mut self, cmd: Command, b: &mut Batch) {
        if self.waits_for_seal(&cmd) {
            self.held.push(cmd);
            return;
        }
        match cmd {
            Command::Client(c) => self.apply_client(c, b),
            Command::Peer(c) => self.apply_peer(c, b),
            Command::Outbox(c) => self.apply_outbox(c, b),
            Command::Move(c) => self.apply_move(c, b),
            Command::Replica(c) => self.apply_replica_cmd(c),
        }
    }

    /// Whether `cmd` must wait for a seal: it touches a user of a received segment not sealed
    /// yet, or one a waiting command touches (per-user order).
    fn waits_for_seal(&self, cmd: &Command) -> bool {
        // Nothing is held outside the short window after a move's commit: no need to list the
        // command's users (an allocation per command) the rest of the time.
        if self.held.is_empty() && self.role.sealing().is_none() {
            return false;
        }
        cmd.users().iter().any(|u| self.held(u))
    }

    fn held(&self, user: &str) -> bool {
        self.held.has(user) || self.role.held(chat_ring::key_hash(user))
    }

    /// Whether this node owns `user` under the batch's ring. Without a ring (a cluster that was
    /// never initialised) nothing is routed anywhere: sessions are refused before that point.
    /// Whether this node owns `user` (or a group) under the batch's ring. Without a ring (a
    /// cluster node that has not loaded it yet, say restarted while etcd is down) it owns no
    /// one: a group's fan-out judged then would append every member's copy here, in inboxes
    /// their home nodes never read (found by the chaos long run). A standalone node always has
    /// its ring of one.
    fn owns(&self, user: &str, b: &Batch) -> bool {
        b.ring
            .as_ref()
            .is_some_and(|r| r.owner(user) == self.routing.self_id)
    }
}

/// The answer to a command of a user this node no longer owns (the ring moved under a session).
fn moved(user: &str) -> ChatError {
    ChatError::Unavailable(format!("{user} has moved to another node; reconnect"))
}

/// The user whose action made an outbox entry: a message's sender, a receipt's reader.
pub(crate) fn origin(e: &ForwardEntry) -> Option<&str> {
    use chat_proto::cluster::forward_entry::Item;
    match &e.item {
        // A group's messages and events are made by the group's home node.
        Some(Item::Message(m)) if !m.group.is_empty() => Some(&m.group),
        Some(Item::Message(m)) => Some(&m.from),
        Some(Item::GroupEvent(e)) => Some(&e.group),
        Some(Item::Receipt(r) | Item::GroupReceipt(r)) => Some(&r.by),
        None => None,
    }
}
