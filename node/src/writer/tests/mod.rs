//! The writer's tests. Batches are built by hand here, so what shares a batch is decided by the
//! test, not by timing; the clock is the test's.

mod blocks;
mod devices;
mod forwarded;
mod groups;
mod history;
mod inbox;
mod moves;
mod replication;
mod retention;

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chat_auth::Identity;
use chat_cluster::ClusterView;
use chat_proto::cluster::{forward_entry, ForwardEntry, ForwardStatus};
use chat_proto::store::inbox_entry;
use chat_proto::v1::{Message, Receipt, Sent};
use chat_ring::Ring;
use tokio::sync::{mpsc, oneshot, watch};

use super::command::{Attached, ClientCmd, Command, PeerCmd};
use super::{Env, Outboxed, Writer, WriterOptions};
use crate::error::ChatError;
use crate::hub::Hub;
use crate::routing::Routing;
use crate::store::{Store, StoreOptions};

const RETENTION_MS: i64 = 3_600_000;

/// The test's clock (starting at the real time, as stored entries expire by the real time) and
/// id source.
#[derive(Clone)]
struct TestEnv {
    now: Arc<AtomicI64>,
}

impl TestEnv {
    fn advance(&self, by: Duration) {
        self.now.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    fn env(&self) -> Env {
        let now = self.now.clone();
        let next = Arc::new(AtomicU64::new(0));
        Env {
            now_ms: Arc::new(move || now.load(Ordering::SeqCst)),
            new_id: Arc::new(move || format!("id-{:06}", next.fetch_add(1, Ordering::SeqCst))),
        }
    }
}

fn now() -> i64 {
    chat_proto::now_ms()
}

fn writer() -> (Writer, Arc<Hub>) {
    let (w, hub, _) = writer_with_clock();
    (w, hub)
}

const STORE: StoreOptions = StoreOptions {
    retention: Duration::from_millis(RETENTION_MS as u64),
    block_cache_mib: 8,
    min_free_bytes: 0,
    compaction_headroom_bytes: 1024 * 1024 * 1024,
};

/// A writer on an in-memory store (its batches are the same; nothing touches the disk).
fn writer_with_clock() -> (Writer, Arc<Hub>, TestEnv) {
    writer_on(Store::in_memory(&STORE))
}

/// A writer on RocksDB in a temporary directory: for what only a disk has (its free space).
fn writer_on_disk() -> (Writer, Arc<Hub>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (w, hub, _) = writer_on(Store::open(dir.path(), &STORE).unwrap());
    (w, hub, dir)
}

fn writer_on(store: Arc<Store>) -> (Writer, Arc<Hub>, TestEnv) {
    let hub = Hub::new(1024, 64);
    let clock = TestEnv {
        now: Arc::new(AtomicI64::new(now())),
    };
    let opts = WriterOptions {
        sync: false,
        max_batch: 1024,
        queue_depth: 16,
        retention_ms: RETENTION_MS,
        routing: Routing::standalone("n1"),
        env: clock.env(),
        outbox_tx: None,
        streams_tx: None,
        events_tx: None,
        fills_tx: None,
    };
    let w = Writer::new(store, hub.clone(), opts).unwrap();
    (w, hub, clock)
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
    let cmd = Command::Client(ClientCmd::Send {
        from: from.clone(),
        client_msg_id: cmid.into(),
        to: to.into(),
        body: "hi".into(),
        reply,
        attachment: None,
    });
    (cmd, rx)
}

fn attach(who: &Identity, max: u32) -> (Command, oneshot::Receiver<Result<Attached, ChatError>>) {
    let (reply, rx) = oneshot::channel();
    let cmd = Command::Client(ClientCmd::Attach {
        who: who.clone(),
        max_devices: max,
        reply,
    });
    (cmd, rx)
}

fn ack(who: &Identity, up_to: u64, read: bool) -> Command {
    Command::Client(ClientCmd::Ack {
        who: who.clone(),
        up_to,
        read,
    })
}

fn receipts_of(c: &Writer, user: &str) -> Vec<(i32, Vec<String>)> {
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

/// A writer that is `self_id` in a two-node ring of n1 and n2.
fn routed(self_id: &str) -> (Writer, mpsc::UnboundedReceiver<Outboxed>) {
    let (mut c, _hub) = writer();
    let ring = Ring::equal(1, &["n1", "n2"], 16).unwrap();
    let (_tx, view) = watch::channel(ClusterView::fixed(ring, []));
    c.routing = Routing {
        self_id: self_id.into(),
        view,
    };
    c.role = crate::rebalance::role::MoveRole::new(self_id, None);
    let (tx, rx) = mpsc::unbounded_channel();
    c.outbox_tx = Some(tx);
    (c, rx)
}

/// The first user `<stem>-<i>` that `node` owns in `c`'s ring.
fn user_on(c: &Writer, node: &str, stem: &str) -> String {
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
        created_ms: now(),
        item: Some(forward_entry::Item::Message(Message {
            msg_id: id.into(),
            from: "far-away".into(),
            to: to.into(),
            body: "hi".into(),
            ..Message::default()
        })),
    }
}

#[allow(clippy::type_complexity)]
fn apply(
    entries: Vec<ForwardEntry>,
) -> (
    Command,
    oneshot::Receiver<Result<Vec<ForwardStatus>, ChatError>>,
) {
    let (reply, rx) = oneshot::channel();
    (Command::Peer(PeerCmd::Apply { entries, reply }), rx)
}
