//! The ordered streams to new owners: one request in flight per destination, so a new owner
//! applies everything in stream order; retried until acknowledged.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use chat_cluster::ClusterView;
use chat_proto::cluster::{peer_request, peer_response, Mirror, PeerErrorCode, PeerRequest};
use tokio::sync::{mpsc, watch};

use super::{aborted, ItemKind, StreamItem};
use crate::config::RebalanceSection;
use crate::peer::pipeline::Lanes;
use crate::peer::transport::Peers;

/// Sends every new owner its stream, in order, one request in flight per destination.
pub(crate) async fn run_streams(
    mut rx: mpsc::UnboundedReceiver<StreamItem>,
    peers: Arc<Peers>,
    self_id: String,
    view: watch::Receiver<ClusterView>,
    tuning: RebalanceSection,
) {
    let mut queues: BTreeMap<String, VecDeque<StreamItem>> = BTreeMap::new();
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
            while q
                .front()
                .is_some_and(|i| aborted(&i.transition, &view.borrow()))
            {
                if let Some(item) = q.pop_front() {
                    item.done.abandoned();
                }
            }
            let Some(first) = q.front() else { continue };
            let epoch = first.epoch();
            let (req, n) = coalesce(q, epoch, limits);
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
                        Some(peer_response::Response::Mirror(_)) => Ok(()),
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
                Some(item) => queues.entry(item.dest.clone()).or_default().push_back(item),
                None => return,
            },
            Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                let Ok((dest, n, ok)) = done else { continue };
                let wait = lanes.done(&dest, ok.is_ok(), tokio::time::Instant::now());
                match ok {
                    Ok(()) => {
                        let q = queues.get_mut(&dest).expect("queue of a request");
                        for item in q.drain(..n) {
                            item.done.acked();
                        }
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
/// items of the same move without a reset of their own, up to a limit; a seal goes last. And
/// how many items it covers.
fn coalesce(
    q: &VecDeque<StreamItem>,
    epoch: u64,
    (max_writes, max_bytes): (usize, usize),
) -> (Mirror, usize) {
    let mut req = Mirror {
        epoch,
        ..Mirror::default()
    };
    let (mut n, mut bytes) = (0, 0usize);
    for (i, item) in q.iter().enumerate() {
        if item.epoch() != epoch {
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
    use crate::rebalance::Done;
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
        StreamItem::writes("n2".into(), t, reset, writes, Done::Nothing)
    }

    #[test]
    fn a_request_takes_one_reset_first_and_ends_at_the_next_reset_or_the_seal() {
        let t = t();
        let mut q = VecDeque::new();
        q.push_back(item(&t, true, vec![w(1)]));
        q.push_back(item(&t, false, vec![w(2), w(3)]));
        q.push_back(item(&t, true, vec![w(4)]));
        let (req, n) = coalesce(&q, 2, LIMITS);
        assert_eq!(
            (n, req.reset.len(), req.writes.len(), req.seal),
            (2, 1, 3, false)
        );
        q.drain(..n);
        q.push_back(StreamItem::seal("n2".into(), &t, Vec::new(), Done::Nothing));
        q.push_back(item(&t, false, vec![w(5)]));
        let (req, n) = coalesce(&q, 2, LIMITS);
        assert_eq!(
            (n, req.writes.len(), req.seal),
            (2, 1, true),
            "the seal ends it"
        );
        // The write limit ends a request, but never splits an item.
        q.clear();
        q.push_back(item(&t, true, vec![w(1), w(2), w(3)]));
        q.push_back(item(&t, false, vec![w(4)]));
        let (req, n) = coalesce(&q, 2, (2, 1 << 20));
        assert_eq!((n, req.writes.len()), (1, 3));
    }
}
