//! Filling followers: the writer starts a fill (a reset on the follower's stream, a hold on
//! visibility, a [`Fill`] here); this task copies the follower's ranges page by page on the
//! same stream, one page in flight, and releases the hold once the last page is stored.
//! Followers whose store changed (named by the stream sender) are handed back to the writer to
//! be filled again.

use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;

use super::Fill;
use crate::config::RebalanceSection;
use crate::error::ChatError;
use crate::rebalance::MoveError;
use crate::store::Cf;
use crate::writer::{ReplicaPage, WriterHandle};

pub(crate) async fn run_fills(
    mut fills: mpsc::UnboundedReceiver<Fill>,
    mut lost: mpsc::UnboundedReceiver<String>,
    writer: WriterHandle,
    tuning: RebalanceSection,
    mut shutdown: broadcast::Receiver<()>,
) {
    let mut tasks = JoinSet::new();
    let limits = (tuning.page_keys, tuning.page_bytes);
    loop {
        tokio::select! {
            fill = fills.recv() => match fill {
                Some(f) => {
                    tasks.spawn(fill_one(f, writer.clone(), limits));
                }
                None => return,
            },
            Some(dest) = lost.recv() => {
                if let Err(e) = writer.replica_refill(dest.clone()).await {
                    tracing::warn!(node = %dest, error = %e, "could not start filling a follower again");
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            _ = shutdown.recv() => return,
        }
    }
}

/// Copies every range `f.dest` follows, then releases the hold.
async fn fill_one(f: Fill, writer: WriterHandle, max: (usize, usize)) {
    let dest = f.dest.clone();
    metrics::gauge!(crate::admin::REPLICA_IN_SYNC, "node" => dest.clone()).set(0.0);
    metrics::counter!(crate::admin::REPLICA_FILLS, "node" => dest.clone()).increment(1);
    let started = tokio::time::Instant::now();
    tracing::info!(node = %dest, epoch = f.epoch, ranges = f.ranges.len(), "filling a follower");
    let (mut keys, mut bytes) = (0u64, 0u64);
    for &range in &f.ranges {
        for cf in Cf::MOVING {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let req = ReplicaPage {
                    dest: dest.clone(),
                    epoch: f.epoch,
                    cf,
                    range,
                    max,
                    after: after.clone(),
                };
                let page = match writer.replica_page(req).await {
                    Ok(p) => p,
                    Err(ChatError::ShuttingDown) => return,
                    Err(ChatError::Move(MoveError::NotInFlight(why))) => {
                        // The ring changed: the writer filled anew whoever follows now.
                        f.hold.abandon(&why);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(node = %dest, error = %e, "reading a fill page failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                // Dropped unacknowledged: the node stops (the hold goes with it).
                if page.acked.await.is_err() {
                    return;
                }
                keys += page.keys;
                bytes += page.bytes;
                match page.last_key {
                    Some(k) => after = Some(k),
                    None => break,
                }
            }
        }
    }
    f.hold.release();
    metrics::gauge!(crate::admin::REPLICA_IN_SYNC, "node" => dest.clone()).set(1.0);
    tracing::info!(node = %dest, keys, bytes, took = ?started.elapsed(), "follower filled; following");
}
