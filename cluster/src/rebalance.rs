//! The etcd side of a move (BRIEF §3, §5): starting, aborting and committing it, each one
//! compare-and-swap transaction on the ring document, and the per-node progress keys
//! `<prefix>rebalance/<epoch>/<node>`.
//!
//! Epochs only grow and are never reused: the next ring has epoch current + 1; a commit makes it
//! current; an abort keeps the members of the current ring but gives it the next ring's epoch,
//! so the epoch of an aborted move is spent and a later move gets a new one. An abort deletes
//! the move's progress keys; a commit keeps them as the record of what the move copied.

use std::collections::BTreeMap;

use chat_ring::transition::{plan_add, plan_remove, NodeProgress, Transition};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use crate::etcd::timed;
use crate::layout::{ring_key, NextRing, Phase, RingDoc, RingVersion};
use crate::ClusterError;

/// What the operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Add { node: String, weight: u32 },
    Remove { node: String },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Add { node, weight } => write!(f, "add {node} (weight {weight})"),
            Change::Remove { node } => write!(f, "remove {node}"),
        }
    }
}

/// One node's report on the move in flight, at `<prefix>rebalance/<epoch>/<node>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Has seen the next ring and dual-writes moving keys.
    pub seen: bool,
    /// Has copied every segment it gives away.
    pub copied: bool,
    /// Segments it gives away, and how many are copied.
    pub segments: u64,
    pub segments_done: u64,
    pub keys_copied: u64,
    pub bytes_copied: u64,
    /// Keys it copied in all, once its copy is complete (time-left estimates use segments).
    #[serde(default)]
    pub keys_total: u64,
    /// After the commit: has finished its share (an old owner sealed and dropped what it gave,
    /// a new owner received every seal). The next move waits for every node with a share.
    #[serde(default)]
    pub finished: bool,
    /// The last copy error, while it is retrying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub updated_ms: i64,
}

impl Progress {
    pub fn state(&self) -> NodeProgress {
        NodeProgress {
            seen: self.seen,
            copied: self.copied,
        }
    }
}

pub fn rebalance_prefix(prefix: &str, epoch: u64) -> String {
    format!("{prefix}rebalance/{epoch}/")
}

pub fn progress_key(prefix: &str, epoch: u64, node: &str) -> String {
    format!("{prefix}rebalance/{epoch}/{node}")
}

/// The ring document with its modification revision (for compare-and-swap).
async fn read_doc(client: &mut Client, prefix: &str) -> Result<(RingDoc, i64), ClusterError> {
    let key = ring_key(prefix);
    let resp = timed(client.get(key.clone(), None)).await?;
    let kv = resp
        .kvs()
        .first()
        .ok_or_else(|| ClusterError::Move("no ring yet: run `chatctl cluster init`".into()))?;
    let doc = serde_json::from_slice(kv.value()).map_err(|err| ClusterError::Json { key, err })?;
    Ok((doc, kv.mod_revision()))
}

/// Writes `doc` if the ring document is still at `revision`, deleting `also_delete` (a key
/// prefix) in the same transaction. Returns whether it was written.
async fn swap(
    client: &mut Client,
    prefix: &str,
    revision: i64,
    doc: &RingDoc,
    also_delete: Option<String>,
) -> Result<bool, ClusterError> {
    let key = ring_key(prefix);
    let value = serde_json::to_vec_pretty(doc).expect("ring serializes");
    let mut ops = vec![TxnOp::put(key.clone(), value, None)];
    if let Some(p) = also_delete {
        ops.push(TxnOp::delete(
            p,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        ));
    }
    let txn = Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, revision)])
        .and_then(ops);
    Ok(timed(client.txn(txn)).await?.succeeded())
}

/// The nodes with a share in `t` that have not reported it finished, given every node's
/// progress on it.
pub fn unfinished_shares(t: &Transition, progress: &BTreeMap<String, Progress>) -> Vec<String> {
    t.nodes()
        .into_iter()
        .filter(|n| t.copies_of(n).next().is_some() || t.receives(n).next().is_some())
        .filter(|n| !progress.get(*n).is_some_and(|p| p.finished))
        .map(str::to_string)
        .collect()
}

/// The nodes that still have work in the last committed move of `doc` (empty if none).
pub async fn unfinished(
    client: &mut Client,
    prefix: &str,
    doc: &RingDoc,
) -> Result<Vec<String>, ClusterError> {
    let Some(t) = doc.last_move()? else {
        return Ok(Vec::new());
    };
    let progress = read_progress(client, prefix, doc.current.epoch).await?;
    Ok(unfinished_shares(&t, &progress))
}

/// Starts a move: writes the next ring, if no move is in flight and every node finished its
/// share of the last one. Of two operators starting moves at once, one gets `MoveInFlight`.
pub async fn begin(
    client: &mut Client,
    prefix: &str,
    change: &Change,
) -> Result<RingDoc, ClusterError> {
    let (doc, revision) = read_doc(client, prefix).await?;
    if let Some(next) = &doc.next {
        return Err(ClusterError::MoveInFlight(
            next.ring.epoch,
            next.change.clone(),
        ));
    }
    // Nodes follow one move at a time: a node still sealing (or waiting for seals of) the last
    // move would otherwise take part in the next one with that work undone (found by the chaos
    // suite: a giver restarted after a commit was still copying when the next move gave the
    // ranges back, and a stale copy was served).
    let nodes = unfinished(client, prefix, &doc).await?;
    if !nodes.is_empty() {
        return Err(ClusterError::PreviousMoveUnfinished {
            epoch: doc.current.epoch,
            nodes,
        });
    }
    let current = doc.current.build()?;
    // A move hands segments to new owners; with followers it would also have to fill every
    // new follower before the commit, which is not built: the moved keys would then have one
    // copy while the ring promises more.
    if current.copies() > 1 {
        return Err(ClusterError::Move(format!(
            "the ring keeps {} copies of every key, and moves of a replicated ring are not built yet (docs/replication.md)",
            current.copies()
        )));
    }
    let next = match change {
        Change::Add { node, weight } => plan_add(&current, node, *weight),
        Change::Remove { node } => plan_remove(&current, node),
    }
    .map_err(|e| ClusterError::Move(e.to_string()))?;
    let new = RingDoc {
        current: doc.current.clone(),
        next: Some(NextRing {
            ring: RingVersion::of(&next),
            phase: Phase::Copying,
            change: change.to_string(),
            started_ms: now_ms(),
        }),
        previous: doc.previous.clone(),
    };
    if swap(client, prefix, revision, &new, None).await? {
        return Ok(new);
    }
    // Somebody else changed the ring between our read and our write: say what is there now.
    let (now, _) = read_doc(client, prefix).await?;
    Err(match now.next {
        Some(n) => ClusterError::MoveInFlight(n.ring.epoch, n.change),
        None => ClusterError::Move("the ring changed meanwhile; try again".into()),
    })
}

/// Aborts the move in flight: the current ring stays (with the spent epoch of the next one).
pub async fn abort(client: &mut Client, prefix: &str) -> Result<RingDoc, ClusterError> {
    let (doc, revision) = read_doc(client, prefix).await?;
    let Some(next) = &doc.next else {
        return Err(ClusterError::NoMove);
    };
    let epoch = next.ring.epoch;
    // The last committed move was finished everywhere before this one began.
    let new = RingDoc {
        current: RingVersion {
            epoch,
            ..doc.current.clone()
        },
        next: None,
        previous: None,
    };
    let cleanup = Some(rebalance_prefix(prefix, epoch));
    if swap(client, prefix, revision, &new, cleanup).await? {
        Ok(new)
    } else {
        Err(ClusterError::Move(
            "the ring changed meanwhile (committed or aborted by someone else?)".into(),
        ))
    }
}

/// Commits the move in flight if every node has seen it and copied its share (any node or
/// `chatctl` may call this; the compare-and-swap makes it happen once). Returns the new ring
/// document, or `None` if the move may not commit yet.
pub async fn commit(client: &mut Client, prefix: &str) -> Result<Option<RingDoc>, ClusterError> {
    let (doc, revision) = read_doc(client, prefix).await?;
    let Some(t) = doc.transition()? else {
        return Err(ClusterError::NoMove);
    };
    let next = doc.next.as_ref().expect("a transition has a next ring");
    let progress = read_progress(client, prefix, next.ring.epoch).await?;
    let states = progress
        .iter()
        .map(|(n, p)| (n.clone(), p.state()))
        .collect();
    if !t.may_commit(&states) {
        return Ok(None);
    }
    let new = RingDoc {
        current: next.ring.clone(),
        next: None,
        previous: Some(doc.current.clone()),
    };
    // The progress keys stay, as the record of what the move did (late reports cannot change
    // them: a report is written only while its move is in flight).
    if swap(client, prefix, revision, &new, None).await? {
        Ok(Some(new))
    } else {
        // Committed (or aborted) by someone else meanwhile.
        Ok(None)
    }
}

/// Records one node's progress on the move to `epoch`, but only while that move is in flight
/// (a late report must not recreate keys of a move that has ended).
pub async fn report(
    client: &mut Client,
    prefix: &str,
    epoch: u64,
    node: &str,
    progress: &Progress,
) -> Result<bool, ClusterError> {
    let (doc, revision) = read_doc(client, prefix).await?;
    if doc.next.as_ref().map(|n| n.ring.epoch) != Some(epoch) {
        return Ok(false);
    }
    let value = serde_json::to_vec(progress).expect("progress serializes");
    let txn = Txn::new()
        .when([Compare::mod_revision(
            ring_key(prefix),
            CompareOp::Equal,
            revision,
        )])
        .and_then([TxnOp::put(progress_key(prefix, epoch, node), value, None)]);
    Ok(timed(client.txn(txn)).await?.succeeded())
}

/// Records that `node` finished its share of the committed move to `epoch` (see
/// [`Progress::finished`]), if that move is still the last one committed (else nothing needs
/// it any more: a later move began, which needed it, or the epoch was an abort's).
pub async fn report_finished(
    client: &mut Client,
    prefix: &str,
    epoch: u64,
    node: &str,
) -> Result<(), ClusterError> {
    // Retried only when the ring changed between the read and the write.
    for _ in 0..10 {
        let (doc, revision) = read_doc(client, prefix).await?;
        if doc.current.epoch != epoch || doc.previous.is_none() {
            return Ok(());
        }
        let key = progress_key(prefix, epoch, node);
        let resp = timed(client.get(key.clone(), None)).await?;
        let mut p: Progress = match resp.kvs().first() {
            Some(kv) => serde_json::from_slice(kv.value()).map_err(|err| ClusterError::Json {
                key: key.clone(),
                err,
            })?,
            None => Progress::default(),
        };
        if p.finished {
            return Ok(());
        }
        p.finished = true;
        p.updated_ms = now_ms();
        let value = serde_json::to_vec(&p).expect("progress serializes");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                ring_key(prefix),
                CompareOp::Equal,
                revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        if timed(client.txn(txn)).await?.succeeded() {
            return Ok(());
        }
    }
    Err(ClusterError::Move(
        "the ring kept changing while recording a finished share".into(),
    ))
}

/// Every node's progress on the move to `epoch`.
pub async fn read_progress(
    client: &mut Client,
    prefix: &str,
    epoch: u64,
) -> Result<BTreeMap<String, Progress>, ClusterError> {
    let p = rebalance_prefix(prefix, epoch);
    let resp = timed(client.get(p.clone(), Some(GetOptions::new().with_prefix()))).await?;
    let mut out = BTreeMap::new();
    for kv in resp.kvs() {
        let key = kv.key_str()?.to_string();
        let node = key.strip_prefix(&p).unwrap_or(&key).to_string();
        let progress =
            serde_json::from_slice(kv.value()).map_err(|err| ClusterError::Json { key, err })?;
        out.insert(node, progress);
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chat_ring::Ring;

    fn ring(epoch: u64, ids: &[&str]) -> Ring {
        Ring::equal(epoch, ids, 16).unwrap()
    }

    #[test]
    fn the_next_move_waits_for_every_node_with_a_share_and_only_for_those() {
        let from = ring(1, &["a", "b", "c"]);
        let to = plan_remove(&from, "c").unwrap();
        let t = Transition::new(from, to).unwrap();
        let done = |ids: &[&str]| -> BTreeMap<String, Progress> {
            ids.iter()
                .map(|id| {
                    let p = Progress {
                        finished: true,
                        ..Progress::default()
                    };
                    (id.to_string(), p)
                })
                .collect()
        };
        // c gives everything it had to a and b; all three have a share.
        assert_eq!(unfinished_shares(&t, &done(&[])), ["a", "b", "c"]);
        assert_eq!(unfinished_shares(&t, &done(&["a", "b"])), ["c"]);
        assert!(unfinished_shares(&t, &done(&["a", "b", "c"])).is_empty());
        // Only nodes with a share are waited for: here z reports, unfinished, but has none.
        let mut progress = done(&["a", "b", "c"]);
        progress.insert("z".into(), Progress::default());
        assert!(unfinished_shares(&t, &progress).is_empty());
    }
}
