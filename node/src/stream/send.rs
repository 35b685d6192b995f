//! Sending the ordered streams: one request in flight per destination, so the receiver applies
//! everything in stream order; retried until acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chat_cluster::ClusterView;
use chat_proto::cluster::{peer_request, peer_response, Mirror, PeerErrorCode, PeerRequest};
use tokio::sync::{mpsc, watch};

use super::{ItemKind, Scope, StreamItem};
use crate::config::RebalanceSection;
use crate::peer::pipeline::Lanes;
use crate::peer::transport::Peers;
use crate::rebalance::aborted;

/// Sends every destination its stream, in order, one request in flight per destination. A
/// follower whose store changed (`MirrorAck.incarnation`: it lost its data) is named on
/// `lost_tx`, so its owner fills it again.
pub(crate) async fn run_streams(
    mut rx: mpsc::UnboundedReceiver<StreamItem>,
    peers: Arc<Peers>,
    self_id: String,
    view: watch::Receiver<ClusterView>,
    tuning: RebalanceSection,
    lost_tx: mpsc::UnboundedSender<String>,
) {
    let mut queues: BTreeMap<String, VecDeque<StreamItem>> = BTreeMap::new();
    // Each follower's store as its last replication answer named it.
    let mut incarnations: BTreeMap<String, String> = BTreeMap::new();
    let mut inflight = tokio::task::JoinSet::new();
    let (min, max) = tuning.backoff();
    // One request in flight per new owner: it applies a move's writes in the order made.
    let mut lanes = Lanes::new(min, max, 1);
    let limits = (tuning.request_writes, tuning.request_bytes);
    let timeout = tuning.request_timeout();
    loop {
        // Start a request for every idle destination with queued items.
        let now = tokio::time::Instant::now();
        for (dest, q) in queues.iter_mut() {
            if q.is_empty() || !lanes.ready(dest, now) {
                continue;
            }
            // An aborted move's items are dropped (their batches released): the old owner
            // still has everything.
            while q.front().is_some_and(|i| match &i.scope {
                Scope::Move(t) => aborted(t, &view.borrow()),
                Scope::Replica { .. } => false,
            }) {
                if let Some(item) = q.pop_front() {
                    item.done.abandoned();
                }
            }
            let Some(first) = q.front() else { continue };
            let epoch = first.epoch();
            let (req, n) = coalesce(q, limits);
            let replica = req.replica;
            lanes.start(dest);
            let (peers, dest, from) = (peers.clone(), dest.clone(), self_id.clone());
            inflight.spawn(async move {
                let request = PeerRequest {
                    from_node: from,
                    epoch,
                    request: Some(peer_request::Request::Mirror(req)),
                };
                let res = peers.request(&dest, &request, timeout).await;
                // Failures by what the receiver said: "not yet" is expected for a moment (it
                // adopts the move, or sees the commit, a little after this node).
                let ok = match res {
                    Ok(r) => match r.response {
                        Some(peer_response::Response::Mirror(a)) => {
                            Ok(replica.then_some(a.incarnation))
                        }
                        Some(peer_response::Response::Error(e)) => {
                            let code = PeerErrorCode::try_from(e.code)
                                .unwrap_or(PeerErrorCode::Unspecified);
                            Err((code, format!("{} (its ring epoch {})", e.message, r.epoch)))
                        }
                        other => Err((
                            PeerErrorCode::Internal,
                            format!("unexpected answer {other:?}"),
                        )),
                    },
                    Err(e) => Err((PeerErrorCode::Unspecified, e.to_string())),
                };
                (dest, n, ok)
            });
        }
        let next_retry = lanes.wake_at(|d| queues.get(d).is_some_and(|q| !q.is_empty()));
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => {
                    let q = queues.entry(item.dest.clone()).or_default();
                    q.push_back(item);
                    if q.len() % 64 == 1 {
                        let dest = q.back().map(|i| i.dest.clone()).unwrap_or_default();
                        metrics::gauge!(crate::admin::STREAM_QUEUED, "node" => dest)
                            .set(q.len() as f64);
                    }
                }
                None => return,
            },
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((dest, n, ok)) = done else { continue };
                let wait = lanes.done(&dest, ok.is_ok(), tokio::time::Instant::now());
                match ok {
                    Ok(incarnation) => {
                        if let Some(now) = incarnation.filter(|i| !i.is_empty()) {
                            if let Some(before) = incarnations.insert(dest.clone(), now.clone()) {
                                if before != now {
                                    tracing::warn!(node = %dest, before, now, "a follower's store changed (a new disk?): filling it again");
                                    let _ = lost_tx.send(dest.clone());
                                }
                            }
                        }
                        let q = queues.get_mut(&dest).expect("queue of a request");
                        for item in q.drain(..n) {
                            item.done.acked();
                        }
                        metrics::gauge!(crate::admin::STREAM_QUEUED, "node" => dest.clone())
                            .set(q.len() as f64);
                    }
                    Err((PeerErrorCode::NotYet, e)) => {
                        tracing::debug!(node = %dest, error = %e, retry_in = ?wait, "stream request early; retrying");
                    }
                    Err((code, e)) => {
                        tracing::warn!(node = %dest, ?code, error = %e, retry_in = ?wait, "stream request failed");
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

/// One request from the front of a queue: the first item's reset, then the writes of following
/// items of the same stream (move or replication, same epoch) without a reset of their own, up
/// to a limit; a seal goes last. And how many items it covers.
fn coalesce(q: &VecDeque<StreamItem>, (max_writes, max_bytes): (usize, usize)) -> (Mirror, usize) {
    let Some(first) = q.front() else {
        return (Mirror::default(), 0);
    };
    let scope = first.scope.clone();
    let mut req = Mirror {
        epoch: scope.epoch(),
        replica: scope.is_replica(),
        ..Mirror::default()
    };
    let (mut n, mut bytes) = (0, 0usize);
    for (i, item) in q.iter().enumerate() {
        if !item.scope.same(&scope) {
            break;
        }
        match &item.kind {
            ItemKind::Writes { reset, writes } => {
                if i > 0 && !reset.is_empty() {
                    break;
                }
                let item_bytes: usize = writes.iter().map(|w| w.key.len() + w.value.len()).sum();
                if i > 0
                    && (req.writes.len() + writes.len() > max_writes
                        || bytes + item_bytes > max_bytes)
                {
                    break;
                }
                if i == 0 {
                    req.reset = reset.clone();
                }
                bytes += item_bytes;
                req.writes.extend(writes.iter().cloned());
                n += 1;
            }
            ItemKind::Seal { outbox } => {
                req.seal = true;
                req.outbox = outbox.clone();
                n += 1;
                break;
            }
        }
    }
    (req, n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Done;
    use chat_proto::cluster::{HashRange, RawWrite};
    use chat_ring::transition::Transition;
    use chat_ring::Ring;

    fn t() -> Arc<Transition> {
        let from = Ring::equal(1, &["n1"], 4).unwrap();
        let to = Ring::equal(2, &["n1", "n2"], 4).unwrap();
        Arc::new(Transition::new(from, to).unwrap())
    }

    const LIMITS: (usize, usize) = (10_000, 8 << 20);

    fn w(k: u8) -> RawWrite {
        RawWrite {
            cf: chat_proto::cluster::MovingCf::Inbox as i32,
            key: vec![k; 9],
            value: vec![k],
            delete: false,
        }
    }

    fn item(t: &Arc<Transition>, reset: bool, writes: Vec<RawWrite>) -> StreamItem {
        let reset = if reset {
            vec![HashRange { start: 1, end: 2 }]
        } else {
            Vec::new()
        };
        StreamItem::writes(
            "n2".into(),
            Scope::Move(t.clone()),
            reset,
            writes,
            Done::Nothing,
        )
    }

    #[test]
    fn a_request_takes_one_reset_first_and_ends_at_the_next_reset_or_the_seal() {
        let t = t();
        let mut q = VecDeque::new();
        q.push_back(item(&t, true, vec![w(1)]));
        q.push_back(item(&t, false, vec![w(2), w(3)]));
        q.push_back(item(&t, true, vec![w(4)]));
        let (req, n) = coalesce(&q, LIMITS);
        assert_eq!(
            (n, req.reset.len(), req.writes.len(), req.seal),
            (2, 1, 3, false)
        );
        q.drain(..n);
        q.push_back(StreamItem::seal("n2".into(), &t, Vec::new(), Done::Nothing));
        q.push_back(item(&t, false, vec![w(5)]));
        let (req, n) = coalesce(&q, LIMITS);
        assert_eq!(
            (n, req.writes.len(), req.seal),
            (2, 1, true),
            "the seal ends it"
        );
        // The write limit ends a request, but never splits an item.
        q.clear();
        q.push_back(item(&t, true, vec![w(1), w(2), w(3)]));
        q.push_back(item(&t, false, vec![w(4)]));
        let (req, n) = coalesce(&q, (2, 1 << 20));
        assert_eq!((n, req.writes.len()), (1, 3));
    }

    #[test]
    fn replication_and_move_items_never_share_a_request_and_replication_is_flagged() {
        let t = t();
        let replica = |epoch, k| {
            StreamItem::writes(
                "n2".into(),
                Scope::Replica { epoch },
                Vec::new(),
                vec![w(k)],
                Done::Nothing,
            )
        };
        let mut q = VecDeque::new();
        q.push_back(replica(1, 1));
        q.push_back(replica(1, 2));
        q.push_back(item(&t, false, vec![w(3)]));
        q.push_back(replica(1, 4));
        let (req, n) = coalesce(&q, LIMITS);
        assert_eq!(
            (n, req.writes.len(), req.replica, req.epoch),
            (2, 2, true, 1)
        );
        q.drain(..n);
        let (req, n) = coalesce(&q, LIMITS);
        assert_eq!(
            (n, req.replica, req.epoch),
            (1, false, 2),
            "the move's item alone"
        );
        q.drain(..n);
        // Another ring's replication is another request: the follower checks each epoch.
        q.push_back(replica(2, 5));
        let (req, n) = coalesce(&q, LIMITS);
        assert_eq!((n, req.writes.len(), req.epoch), (1, 1, 1));
    }
}
