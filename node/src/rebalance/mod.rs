//! This node's share of a move of the ring (docs/rebalancing.md).
//!
//! - [`role`]: what this node must do in a move, as a state machine with no I/O, which the
//!   writer (`crate::writer::moves`) drives batch by batch. [`capture`] records a batch's
//!   writes in segments this node gives away; [`hold`] keeps a receiver's commands for the
//!   received segments until every seal is in.
//! - The writer puts the captured writes, the copy pages it reads between batches, and finally a
//!   seal, on one ordered stream per new owner: [`StreamItem`]s.
//! - [`stream::run_streams`] sends each new owner its stream over QUIC, one request in flight
//!   per destination (so the new owner applies everything in stream order), retrying until
//!   acknowledged.
//! - [`driver::run_driver`] follows the move: reports progress to etcd, copies this node's
//!   segments page by page, tries the commit, and drops given-away ranges once sealed (or
//!   received ones after an abort).

pub(crate) mod capture;
pub mod driver;
pub(crate) mod hold;
pub(crate) mod role;
pub(crate) mod stream;

use std::sync::Arc;

use chat_cluster::ClusterView;
use chat_proto::cluster::{ForwardEntry, HashRange, RawWrite};
use chat_ring::transition::Transition;
use tokio::sync::oneshot;

use crate::writer::Hold;

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

/// One item of the ordered stream to a new owner.
pub struct StreamItem {
    pub dest: String,
    pub transition: Arc<Transition>,
    pub kind: ItemKind,
    /// What happens once the new owner acknowledged the item (or the move was aborted).
    pub done: Done,
}

pub enum ItemKind {
    /// Clear these ranges first (the start of a stream, or a range delete), then apply writes.
    Writes {
        reset: Vec<HashRange>,
        writes: Vec<RawWrite>,
    },
    /// The last item: the giver writes nothing more in these segments. With the outbox entries
    /// made by the moved users (see `Mirror.outbox`).
    Seal { outbox: Vec<ForwardEntry> },
}

impl StreamItem {
    pub fn writes(
        dest: String,
        t: &Arc<Transition>,
        reset: Vec<HashRange>,
        writes: Vec<RawWrite>,
        done: Done,
    ) -> Self {
        StreamItem {
            dest,
            transition: t.clone(),
            kind: ItemKind::Writes { reset, writes },
            done,
        }
    }

    pub fn seal(dest: String, t: &Arc<Transition>, outbox: Vec<ForwardEntry>, done: Done) -> Self {
        StreamItem {
            dest,
            transition: t.clone(),
            kind: ItemKind::Seal { outbox },
            done,
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
    /// Part of a batch that becomes visible once every new owner acknowledged its writes.
    Release(Hold),
}

impl Done {
    /// The new owner stored the item.
    pub fn acked(self) {
        match self {
            Done::Nothing => {}
            Done::Notify(tx) => {
                let _ = tx.send(());
            }
            Done::Release(h) => h.release(),
        }
    }

    /// The move was aborted: the new owner's copy no longer matters.
    pub fn abandoned(self) {
        match self {
            // Dropped unsent: the waiter learns the move is over.
            Done::Nothing | Done::Notify(_) => {}
            Done::Release(h) => h.abandon("the move was aborted"),
        }
    }
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
