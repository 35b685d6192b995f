//! This node's share of a move of the ring (docs/rebalancing.md).
//!
//! - [`role`]: what this node must do in a move, as a state machine with no I/O, which the
//!   writer (`crate::writer::moves`) drives batch by batch. [`capture`] records a batch's
//!   writes in segments this node gives away; [`hold`] keeps a receiver's commands for the
//!   received segments until every seal is in.
//! - The writer puts the captured writes, the copy pages it reads between batches, and finally a
//!   seal, on one ordered stream per new owner (`crate::stream`, shared with replication).
//! - [`driver::run_driver`] follows the move: reports progress to etcd, copies this node's
//!   segments page by page, tries the commit, and drops given-away ranges once sealed (or
//!   received ones after an abort).

pub(crate) mod capture;
pub mod driver;
pub(crate) mod hold;
pub(crate) mod role;

use std::sync::Arc;

use chat_cluster::ClusterView;
use chat_ring::transition::Transition;
use tokio::sync::oneshot;

/// Why a move's request (a stream item, a copy page) was refused, by what the sender can do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MoveError {
    /// This node has not seen what the request belongs to yet (a move it has not adopted, a
    /// seal before it saw the commit): expected for a moment; the sender retries.
    #[error("not yet: {0}")]
    NotYet(String),
    /// The request writes outside what the sender gives this node: nothing was applied; the
    /// two nodes' views of the move differ.
    #[error("outside the move: {0}")]
    OutOfRange(String),
    /// This node has no share of that move (any more): a copy page it cannot serve.
    #[error("not in flight: {0}")]
    NotInFlight(String),
}

/// What the writer tells the driver.
pub enum MoveEvent {
    /// The writer streams (or receives) the moving writes of this transition from now on.
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

/// The move marker's bytes: both rings, and the givers whose seal is in.
pub(crate) fn encode_marker(m: &role::Marker) -> Vec<u8> {
    let v = serde_json::json!({
        "from": chat_cluster::RingVersion::of(m.transition.from()),
        "to": chat_cluster::RingVersion::of(m.transition.to()),
        "sealed": m.sealed,
    });
    serde_json::to_vec(&v).expect("rings serialize")
}

pub(crate) fn decode_marker(bytes: &[u8]) -> Option<role::Marker> {
    #[derive(serde::Deserialize)]
    struct Stored {
        from: chat_cluster::RingVersion,
        to: chat_cluster::RingVersion,
        // Absent in markers written before seals were recorded.
        #[serde(default)]
        sealed: std::collections::BTreeSet<String>,
    }
    let m: Stored = serde_json::from_slice(bytes)
        .map_err(|e| tracing::error!(error = %e, "unreadable move marker; ignored"))
        .ok()?;
    let t = Transition::new(m.from.build().ok()?, m.to.build().ok()?).ok()?;
    Some(role::Marker {
        transition: Arc::new(t),
        sealed: m.sealed,
    })
}

/// Whether `t` was aborted, judged from the ring a node holds: an abort keeps the old members
/// under the next ring's epoch.
pub fn aborted(t: &Transition, view: &ClusterView) -> bool {
    !in_flight(t, view) && view.ring.as_ref().is_some_and(|r| t.aborted_in(r))
}

/// Whether `t` is the move in flight in `view`.
pub(crate) fn in_flight(t: &Transition, view: &ClusterView) -> bool {
    view.moving
        .as_ref()
        .is_some_and(|m| m.to().epoch() == t.to().epoch())
}

/// A copy page read by the writer and put on the stream.
pub struct Page {
    pub keys: u64,
    pub bytes: u64,
    /// The last key read; `None` once the segment's range in this column family is done.
    pub last_key: Option<Vec<u8>>,
    pub acked: oneshot::Receiver<()>,
}
