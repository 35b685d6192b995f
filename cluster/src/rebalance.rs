//! The etcd side of a move (BRIEF §3, §5): starting, aborting and committing it, each one
//! compare-and-swap transaction on the ring document, and the per-node progress keys
//! `<prefix>rebalance/<epoch>/<node>`.
//!
//! Epochs only grow and are never reused: the next ring has epoch current + 1; a commit makes it
//! current; an abort keeps the members of the current ring but gives it the next ring's epoch,
//! so the epoch of an aborted move is spent and a later move gets a new one. An abort deletes
//! the move's progress keys; a commit keeps them as the record of what the move copied.

use std::collections::BTreeMap;

use chat_ring::transition::{plan_add, plan_remove, NodeProgress};
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

/// Starts a move: writes the next ring, if no move is in flight. Of two operators starting moves
/// at once, one gets `MoveInFlight`.
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
    let current = doc.current.build()?;
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
    let new = RingDoc {
        current: RingVersion {
            epoch,
            ..doc.current.clone()
        },
        next: None,
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
