//! Ordered streams of raw writes to other holders of this node's keys: a move's stream to each
//! new owner (`crate::rebalance`) and the replication stream to each follower
//! (`crate::replication`). The writer puts [`StreamItem`]s on one channel; [`send::run_streams`]
//! sends each destination its items over QUIC in order, one request in flight per destination
//! (so the receiver applies them in the order made), retrying until acknowledged.

pub(crate) mod send;

use std::sync::Arc;

use chat_proto::cluster::{ForwardEntry, HashRange, RawWrite};
use chat_ring::transition::Transition;
use tokio::sync::oneshot;

use crate::writer::Hold;

/// Which stream an item belongs to.
#[derive(Clone)]
pub enum Scope {
    /// A move's stream to a new owner; stamped with the next ring's epoch.
    Move(Arc<Transition>),
    /// The owner's writes for a follower; stamped with the ring epoch they were made under.
    Replica { epoch: u64 },
}

impl Scope {
    pub fn epoch(&self) -> u64 {
        match self {
            Scope::Move(t) => t.to().epoch(),
            Scope::Replica { epoch } => *epoch,
        }
    }

    pub fn is_replica(&self) -> bool {
        matches!(self, Scope::Replica { .. })
    }

    /// Whether items of the two scopes may share one request.
    fn same(&self, other: &Scope) -> bool {
        self.is_replica() == other.is_replica() && self.epoch() == other.epoch()
    }
}

/// One item of the ordered stream to another holder.
pub struct StreamItem {
    pub dest: String,
    pub scope: Scope,
    pub kind: ItemKind,
    /// What happens once the destination acknowledged the item (or the move was aborted).
    pub done: Done,
}

pub enum ItemKind {
    /// Clear these ranges first (the start of a stream, or a range delete), then apply writes.
    Writes {
        reset: Vec<HashRange>,
        writes: Vec<RawWrite>,
    },
    /// The last item of a move's stream: the giver writes nothing more in these segments. With
    /// the outbox entries made by the moved users (see `Mirror.outbox`).
    Seal { outbox: Vec<ForwardEntry> },
}

impl StreamItem {
    pub fn writes(
        dest: String,
        scope: Scope,
        reset: Vec<HashRange>,
        writes: Vec<RawWrite>,
        done: Done,
    ) -> Self {
        StreamItem {
            dest,
            scope,
            kind: ItemKind::Writes { reset, writes },
            done,
        }
    }

    pub fn seal(dest: String, t: &Arc<Transition>, outbox: Vec<ForwardEntry>, done: Done) -> Self {
        StreamItem {
            dest,
            scope: Scope::Move(t.clone()),
            kind: ItemKind::Seal { outbox },
            done,
        }
    }

    fn epoch(&self) -> u64 {
        self.scope.epoch()
    }
}

/// What happens when an item is done with.
pub enum Done {
    Nothing,
    /// Someone waits for the acknowledgement (a copy page, a seal).
    Notify(oneshot::Sender<()>),
    /// Part of a batch that becomes visible once every destination acknowledged its writes.
    Release(Hold),
}

impl Done {
    /// The destination stored the item.
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
