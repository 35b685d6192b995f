//! This node's share of a move of the ring (docs/rebalancing.md).
//!
//! - The committer decides, batch by batch, which writes move (it is the only writer). It puts
//!   them, the copy pages it reads between them, and finally a seal, on one ordered stream per
//!   new owner: [`MirrorItem`]s.
//! - [`run_mirror`] sends each new owner's stream over QUIC, one request in flight per
//!   destination (so the new owner applies everything in stream order), retrying until
//!   acknowledged.
//! - [`run_driver`] follows the move: reports progress to etcd, copies this node's segments page
//!   by page, tries the commit, and drops given-away ranges once sealed (or received ones after
//!   an abort).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_cluster::rebalance::{self, Progress};
use chat_cluster::{ClusterView, EtcdConfig};
use chat_proto::cluster::{
    peer_request, peer_response, ForwardEntry, HashRange, Mirror, PeerRequest, RawWrite,
};
use chat_ring::transition::Transition;
use tokio::sync::{mpsc, oneshot, watch};

use crate::commit::{Command, CommitterHandle};
use crate::peer::transport::Peers;
use crate::store::MOVING_CFS;

/// Most keys and bytes in one copy page.
pub const PAGE_KEYS: usize = 2_000;
pub const PAGE_BYTES: usize = 1 << 20;
/// Most writes in one mirror request.
const REQUEST_WRITES: usize = 10_000;
const REQUEST_BYTES: usize = 8 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One item of the ordered stream to a new owner.
pub struct MirrorItem {
    pub dest: String,
    pub transition: Arc<Transition>,
    pub reset: Vec<HashRange>,
    pub writes: Vec<RawWrite>,
    pub seal: bool,
    /// With a seal: outbox entries made by the moved users (see `Mirror.outbox`).
    pub outbox: Vec<ForwardEntry>,
    /// Dropped once the new owner acknowledged the item (or the move was aborted).
    pub done: Done,
}

impl MirrorItem {
    /// Writes for `dest` (a batch's moving writes, or a copy page).
    pub fn writes(dest: String, t: &Arc<Transition>, writes: Vec<RawWrite>, done: Done) -> Self {
        MirrorItem {
            dest,
            transition: t.clone(),
            reset: Vec::new(),
            writes,
            seal: false,
            outbox: Vec::new(),
            done,
        }
    }

    /// The first item of a stream: clear these ranges on `dest`.
    pub fn reset(dest: String, t: &Arc<Transition>, reset: Vec<HashRange>) -> Self {
        MirrorItem {
            reset,
            ..Self::writes(dest, t, Vec::new(), Done::Nothing)
        }
    }

    /// The last item of a stream, with the moved users' outbox entries.
    pub fn seal(dest: String, t: &Arc<Transition>, outbox: Vec<ForwardEntry>, done: Done) -> Self {
        MirrorItem {
            seal: true,
            outbox,
            ..Self::writes(dest, t, Vec::new(), done)
        }
    }

    fn epoch(&self) -> u64 {
        self.transition.to().epoch()
    }
}

/// What happens when an item is done with.
pub enum Done {
    Nothing,
    /// Someone waits for the acknowledgement (a copy page, a seal).
    Notify(oneshot::Sender<()>),
    /// Part of a batch whose replies wait for every new owner's acknowledgement.
    Release(#[allow(dead_code)] ReleaseOnDrop),
}

/// Runs `release` when the last of `n` clones is dropped: the batch's replies go out once every
/// new owner has the batch's moving writes.
pub struct ReleaseOnDrop(Arc<Held>);

struct Held {
    left: AtomicUsize,
    release: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl ReleaseOnDrop {
    pub fn new(n: usize, release: Box<dyn FnOnce() + Send>) -> Vec<ReleaseOnDrop> {
        let held = Arc::new(Held {
            left: AtomicUsize::new(n),
            release: Mutex::new(Some(release)),
        });
        (0..n).map(|_| ReleaseOnDrop(held.clone())).collect()
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if self.0.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(f) = self.0.release.lock().expect("not poisoned").take() {
                f();
            }
        }
    }
}

/// What the committer tells the driver.
pub enum MoveEvent {
    /// The committer mirrors (or receives) the moving writes of this transition from now on.
    Adopted(Arc<Transition>),
    /// The move committed: seals are on their way; each receiver fires when acknowledged.
    Sealing(Arc<Transition>, Vec<oneshot::Receiver<()>>),
    /// The move was aborted.
    Aborted(Arc<Transition>),
    /// Restarted after the move committed but before this node sealed: copy again, then seal.
    Finish(Arc<Transition>),
    /// Nothing is left to do here in the moves up to the ring of this epoch: recorded in etcd
    /// as `finished`, which the next move waits for.
    Settled(u64),
}

/// The store's marker of an unfinished move: both rings.
pub fn encode_marker(t: &Transition) -> Vec<u8> {
    let v = serde_json::json!({
        "from": chat_cluster::RingVersion::of(t.from()),
        "to": chat_cluster::RingVersion::of(t.to()),
    });
    serde_json::to_vec(&v).expect("rings serialize")
}

pub fn decode_marker(bytes: &[u8]) -> Option<Transition> {
    #[derive(serde::Deserialize)]
    struct Marker {
        from: chat_cluster::RingVersion,
        to: chat_cluster::RingVersion,
    }
    let m: Marker = serde_json::from_slice(bytes)
        .map_err(|e| tracing::error!(error = %e, "unreadable move marker; ignored"))
        .ok()?;
    Transition::new(m.from.build().ok()?, m.to.build().ok()?).ok()
}

/// Whether `t` was aborted, judged from the ring a node holds: an abort keeps the old members
/// under the next ring's epoch.
pub fn aborted(t: &Transition, view: &ClusterView) -> bool {
    !in_flight(t, view) && view.ring.as_ref().is_some_and(|r| t.aborted_in(r))
}

/// Whether `t` is the move in flight in `view`.
fn in_flight(t: &Transition, view: &ClusterView) -> bool {
    view.moving
        .as_ref()
        .is_some_and(|m| m.to().epoch() == t.to().epoch())
}

/// Sends every new owner its stream, in order, one request in flight per destination.
pub async fn run_mirror(
    mut rx: mpsc::UnboundedReceiver<MirrorItem>,
    peers: Arc<Peers>,
    self_id: String,
    view: watch::Receiver<ClusterView>,
) {
    let mut queues: BTreeMap<String, VecDeque<MirrorItem>> = BTreeMap::new();
    let mut inflight = tokio::task::JoinSet::new();
    let mut busy: BTreeSet<String> = BTreeSet::new();
    let mut retry_at: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut backoff: BTreeMap<String, Duration> = BTreeMap::new();
    loop {
        // Start a request for every idle destination with queued items.
        let now = tokio::time::Instant::now();
        for (dest, q) in queues.iter_mut() {
            if busy.contains(dest) || q.is_empty() {
                continue;
            }
            if retry_at.get(dest).is_some_and(|t| *t > now) {
                continue;
            }
            // An aborted move's items are dropped (their replies released): the old owner
            // still has everything.
            while q
                .front()
                .is_some_and(|i| aborted(&i.transition, &view.borrow()))
            {
                q.pop_front();
            }
            let Some(first) = q.front() else { continue };
            let epoch = first.epoch();
            // Coalesce: the first item's reset, then plain writes of the same move, up to a
            // limit; a seal goes last.
            let mut req = Mirror {
                epoch,
                reset: first.reset.clone(),
                writes: Vec::new(),
                seal: false,
                outbox: Vec::new(),
            };
            let (mut n, mut bytes) = (0, 0usize);
            for (i, item) in q.iter().enumerate() {
                if item.epoch() != epoch || (i > 0 && !item.reset.is_empty()) {
                    break;
                }
                let item_bytes: usize = item
                    .writes
                    .iter()
                    .map(|w| w.key.len() + w.value.len())
                    .sum();
                if i > 0
                    && (req.writes.len() + item.writes.len() > REQUEST_WRITES
                        || bytes + item_bytes > REQUEST_BYTES)
                {
                    break;
                }
                bytes += item_bytes;
                req.writes.extend(item.writes.iter().cloned());
                n += 1;
                if item.seal {
                    req.seal = true;
                    req.outbox = item.outbox.clone();
                    break;
                }
            }
            busy.insert(dest.clone());
            let (peers, dest, from) = (peers.clone(), dest.clone(), self_id.clone());
            inflight.spawn(async move {
                let request = PeerRequest {
                    from_node: from,
                    epoch,
                    request: Some(peer_request::Request::Mirror(req)),
                };
                let res = peers.request(&dest, &request, REQUEST_TIMEOUT).await;
                let ok = match res {
                    Ok(r) => match r.response {
                        Some(peer_response::Response::Mirror(_)) => Ok(()),
                        Some(peer_response::Response::Error(e)) => Err(e.message),
                        other => Err(format!("unexpected answer {other:?}")),
                    },
                    Err(e) => Err(e.to_string()),
                };
                (dest, n, ok)
            });
        }
        let next_retry = retry_at.values().min().copied();
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => queues.entry(item.dest.clone()).or_default().push_back(item),
                None => return,
            },
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((dest, n, ok)) = done else { continue };
                busy.remove(&dest);
                match ok {
                    Ok(()) => {
                        retry_at.remove(&dest);
                        backoff.remove(&dest);
                        let q = queues.get_mut(&dest).expect("queue of a request");
                        for _ in 0..n {
                            if let Some(MirrorItem { done: Done::Notify(tx), .. }) = q.pop_front() {
                                let _ = tx.send(());
                            }
                        }
                    }
                    Err(e) => {
                        let b = backoff.entry(dest.clone()).or_insert(Duration::from_millis(50));
                        tracing::warn!(node = %dest, error = %e, retry_in = ?*b, "mirror request failed");
                        retry_at.insert(dest.clone(), tokio::time::Instant::now() + *b);
                        *b = (*b * 2).min(Duration::from_secs(2));
                    }
                }
            }
            _ = async {
                match next_retry {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Follows moves for this node: progress, copy, commit attempts, clean-up.
pub async fn run_driver(
    mut events: mpsc::UnboundedReceiver<MoveEvent>,
    committer: CommitterHandle,
    etcd: EtcdConfig,
    self_id: String,
    view: watch::Receiver<ClusterView>,
) {
    let mut watch_view = view.clone();
    let (settled_tx, settled_rx) = watch::channel(0u64);
    tokio::spawn(report_settled(settled_rx, etcd.clone(), self_id.clone()));
    loop {
        let ev = tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
            changed = watch_view.changed() => {
                if changed.is_err() {
                    return;
                }
                // A batch notices a change of the move; make sure one runs even if idle.
                let _ = committer.submit(Command::Observe).await;
                continue;
            }
        };
        match ev {
            MoveEvent::Adopted(t) | MoveEvent::Finish(t) => {
                tokio::spawn(share_of_move(
                    t,
                    committer.clone(),
                    etcd.clone(),
                    self_id.clone(),
                    view.clone(),
                ));
            }
            MoveEvent::Sealing(t, acks) => {
                let (committer, me) = (committer.clone(), self_id.clone());
                tokio::spawn(async move {
                    for a in acks {
                        let _ = a.await;
                    }
                    let ranges = t.copies_of(&me).map(|s| (s.start, s.end)).collect();
                    drop_ranges(&committer, ranges, "given away").await;
                });
            }
            MoveEvent::Settled(epoch) => {
                settled_tx.send_replace(epoch);
            }
            MoveEvent::Aborted(t) => {
                let ranges: Vec<(u64, u64)> =
                    t.receives(&self_id).map(|s| (s.start, s.end)).collect();
                if !ranges.is_empty() {
                    drop_ranges(&committer, ranges, "received in an aborted move").await;
                }
            }
        }
    }
}

/// Records in etcd that this node finished its share of the last committed move, once it has
/// (the latest epoch settled), retrying through etcd outages.
async fn report_settled(mut settled: watch::Receiver<u64>, etcd: EtcdConfig, me: String) {
    let mut etcd = Etcd {
        cfg: etcd,
        client: None,
    };
    let mut recorded = 0;
    loop {
        let epoch = *settled.borrow_and_update();
        if epoch > recorded {
            let res = match etcd.client().await {
                Ok((c, prefix)) => rebalance::report_finished(c, prefix, epoch, &me).await,
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    tracing::info!(epoch, "finished this node's share of the last move");
                    recorded = epoch;
                }
                Err(e) => {
                    etcd.client = None;
                    tracing::debug!(error = %e, epoch, "recording the finished share failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if settled.changed().await.is_err() {
            return;
        }
    }
}

async fn drop_ranges(committer: &CommitterHandle, ranges: Vec<(u64, u64)>, why: &str) {
    let (reply, rx) = oneshot::channel();
    let n = ranges.len();
    if committer
        .submit(Command::DropRanges { ranges, reply })
        .await
        .is_ok()
    {
        match rx.await {
            Ok(Ok(())) => tracing::info!(segments = n, why, "dropped moved ranges"),
            other => tracing::error!(?other, why, "dropping moved ranges failed"),
        }
    }
}

/// Reports `seen`, copies every segment this node gives away, reports `copied`, then tries the
/// commit until the move ends.
async fn share_of_move(
    t: Arc<Transition>,
    committer: CommitterHandle,
    etcd: EtcdConfig,
    me: String,
    view: watch::Receiver<ClusterView>,
) {
    let epoch = t.to().epoch();
    let mut etcd = Etcd {
        cfg: etcd,
        client: None,
    };
    let segments: Vec<_> = t.copies_of(&me).cloned().collect();
    // Copying goes on after a commit (the seal waits for it); only an abort stops it.
    let stopped = |view: &watch::Receiver<ClusterView>| aborted(&t, &view.borrow());
    let mut p = Progress {
        seen: true,
        segments: segments.len() as u64,
        ..Progress::default()
    };
    report(&mut etcd, epoch, &me, &mut p).await;
    let mut last_report = tokio::time::Instant::now();
    tracing::info!(
        epoch,
        segments = segments.len(),
        "move adopted: dual-writing and copying"
    );
    for s in &segments {
        for cf in MOVING_CFS {
            let mut after: Option<Vec<u8>> = None;
            loop {
                if stopped(&view) {
                    return;
                }
                let (reply, rx) = oneshot::channel();
                let cmd = Command::CopyPage {
                    transition: t.clone(),
                    cf,
                    start: s.start,
                    end: s.end,
                    dest: s.to.clone(),
                    after: after.clone(),
                    reply,
                };
                if committer.submit(cmd).await.is_err() {
                    return;
                }
                let page = match rx.await {
                    Ok(Ok(page)) => page,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "reading a copy page failed; retrying");
                        p.error = Some(e.to_string());
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                    Err(_) => return,
                };
                // One page in flight: memory stays bounded whatever the segment's size.
                if page.acked.await.is_err() {
                    // Dropped unacknowledged: the move was aborted (or the node stops).
                    return;
                }
                p.error = None;
                p.keys_copied += page.keys;
                p.bytes_copied += page.bytes;
                if last_report.elapsed() > Duration::from_secs(1) {
                    report(&mut etcd, epoch, &me, &mut p).await;
                    last_report = tokio::time::Instant::now();
                }
                match page.last_key {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
        p.segments_done += 1;
    }
    p.copied = true;
    p.keys_total = p.keys_copied;
    let mut reported = report(&mut etcd, epoch, &me, &mut p).await;
    tracing::info!(
        epoch,
        keys = p.keys_copied,
        bytes = p.bytes_copied,
        "copy done"
    );
    // Any node may commit once every node is done; the compare-and-swap makes it happen once.
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while in_flight(&t, &view.borrow()) {
        tick.tick().await;
        if !reported {
            reported = report(&mut etcd, epoch, &me, &mut p).await;
        }
        let attempt = match etcd.client().await {
            Ok((c, prefix)) => rebalance::commit(c, prefix).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(Some(_)) => tracing::info!(epoch, "move committed"),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, "commit attempt");
                etcd.client = None;
            }
        }
    }
    if stopped(&view) || segments.is_empty() {
        return;
    }
    // Committed, and the copy is complete: seal the streams. (Messages the moved users sent
    // before the commit may still wait in this node's outbox; see docs/rebalancing.md, limits.)
    let _ = committer.submit(Command::Seal { epoch }).await;
}

/// One etcd connection for a move's reports and commit attempts, made again after an error.
struct Etcd {
    cfg: EtcdConfig,
    client: Option<chat_cluster::etcd_client::Client>,
}

impl Etcd {
    /// The client and the cluster's prefix.
    async fn client(
        &mut self,
    ) -> Result<(&mut chat_cluster::etcd_client::Client, &str), chat_cluster::ClusterError> {
        if self.client.is_none() {
            self.client = Some(chat_cluster::connect(&self.cfg).await?);
        }
        let c = self.client.as_mut().expect("just connected");
        Ok((c, &self.cfg.prefix))
    }
}

/// Reports progress, retrying for a few seconds; whether it was written.
async fn report(etcd: &mut Etcd, epoch: u64, me: &str, p: &mut Progress) -> bool {
    p.updated_ms = chat_proto::now_ms();
    for attempt in 0..20 {
        let res = match etcd.client().await {
            Ok((c, prefix)) => rebalance::report(c, prefix, epoch, me, p).await,
            Err(e) => Err(e),
        };
        match res {
            Ok(_) => return true,
            Err(e) => {
                etcd.client = None;
                tracing::warn!(error = %e, attempt, "reporting move progress failed");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    false
}

/// A copy page read by the committer and put on the stream.
pub struct Page {
    pub keys: u64,
    pub bytes: u64,
    /// The last key read; `None` once the segment's range in this column family is done.
    pub last_key: Option<Vec<u8>>,
    pub acked: oneshot::Receiver<()>,
}
