//! Follows a move for this node: progress reports to etcd, the copy (page by page, through the
//! writer, which orders pages with the dual writes), commit attempts, and the drops of given
//! ranges once sealed (or of received ones after an abort).

use std::sync::Arc;
use std::time::Duration;

use chat_cluster::rebalance::{self, Progress};
use chat_cluster::{ClusterView, EtcdConfig};
use chat_retry::Backoff;
use chat_ring::transition::Transition;
use tokio::sync::{mpsc, watch};

use super::{aborted, in_flight, MoveEvent};
use crate::config::RebalanceSection;
use crate::error::ChatError;
use crate::store::Cf;
use crate::writer::{PageRequest, WriterHandle};

/// Follows moves for this node: progress, copy, commit attempts, clean-up.
pub async fn run_driver(
    mut events: mpsc::UnboundedReceiver<MoveEvent>,
    writer: WriterHandle,
    etcd: EtcdConfig,
    self_id: String,
    view: watch::Receiver<ClusterView>,
    tuning: RebalanceSection,
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
                let _ = writer.wake().await;
                continue;
            }
        };
        match ev {
            MoveEvent::Adopted(t) | MoveEvent::Finish(t) => {
                tokio::spawn(share_of_move(
                    t,
                    writer.clone(),
                    etcd.clone(),
                    self_id.clone(),
                    view.clone(),
                    tuning.clone(),
                ));
            }
            MoveEvent::Sealing(t, acks) => {
                let (writer, me, backoff) = (writer.clone(), self_id.clone(), tuning.backoff());
                tokio::spawn(async move {
                    for a in acks {
                        let _ = a.await;
                    }
                    let ranges = t.copies_of(&me).map(|s| (s.start, s.end)).collect();
                    drop_ranges(&writer, ranges, "given away", backoff).await;
                });
            }
            MoveEvent::Settled(epoch) => {
                settled_tx.send_replace(epoch);
            }
            MoveEvent::Aborted(t) => {
                let ranges: Vec<(u64, u64)> =
                    t.receives(&self_id).map(|s| (s.start, s.end)).collect();
                if !ranges.is_empty() {
                    let (writer, backoff) = (writer.clone(), tuning.backoff());
                    tokio::spawn(async move {
                        drop_ranges(&writer, ranges, "received in an aborted move", backoff).await;
                    });
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

/// Drops ranges this node no longer owns, retrying until the writer has: a drop that failed
/// (the disk full, say) would leave the move's marker on disk, and a removed node would then
/// never drain. A late drop is safe: the writer keeps what a later move brought back here.
async fn drop_ranges(
    writer: &WriterHandle,
    ranges: Vec<(u64, u64)>,
    why: &str,
    (min, max): (Duration, Duration),
) {
    let n = ranges.len();
    let mut backoff = Backoff::new(min, max);
    loop {
        match writer.drop_ranges(ranges.clone()).await {
            Ok(()) => {
                tracing::info!(segments = n, why, "dropped moved ranges");
                return;
            }
            // The writer is gone; the marker stays on disk and the next start takes the move up.
            Err(ChatError::ShuttingDown) => return,
            Err(e) => {
                let wait = backoff.fail();
                tracing::warn!(error = %e, why, retry_in = ?wait, "dropping moved ranges failed; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Reports `seen`, copies every segment this node gives away, reports `copied`, then tries the
/// commit until the move ends.
async fn share_of_move(
    t: Arc<Transition>,
    writer: WriterHandle,
    etcd: EtcdConfig,
    me: String,
    view: watch::Receiver<ClusterView>,
    tuning: RebalanceSection,
) {
    let epoch = t.to().epoch();
    let page_limits = (tuning.page_keys, tuning.page_bytes);
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
        for cf in Cf::MOVING {
            let mut after: Option<Vec<u8>> = None;
            loop {
                if stopped(&view) {
                    return;
                }
                let page = writer
                    .copy_page(PageRequest {
                        transition: t.clone(),
                        cf,
                        range: (s.start, s.end),
                        max: page_limits,
                        dest: s.to.clone(),
                        after: after.clone(),
                    })
                    .await;
                let page = match page {
                    Ok(page) => page,
                    Err(ChatError::ShuttingDown) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "reading a copy page failed; retrying");
                        p.error = Some(e.to_string());
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
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
    let mut tick = tokio::time::interval(tuning.commit_every());
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
    let _ = writer.seal(epoch).await;
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
