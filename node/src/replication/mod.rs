//! Replication (docs/replication.md): every key this node owns is copied to its followers (the
//! ring's next distinct members clockwise) before anything a batch did becomes visible.
//!
//! - [`placement`]: the followers of this node's keys, and the owner of the keys it follows, in
//!   one ring.
//! - [`capture`]: a batch's writes to keys with followers, per follower. The writer puts them on
//!   each follower's ordered stream (`crate::stream`) once the batch is on disk, and holds the
//!   batch's visibility (✓, live delivery, the outbox hand-off) until every follower stored
//!   them; a follower applies them in order, only from the sender its own ring names owner.
//! - [`fill`]: a follower that may lack data (at this node's start, a follower new to the ring,
//!   one whose store changed) is cleared and copied page by page on the same stream, ahead of
//!   the writes that follow; until it is full no batch of this node becomes visible.

pub(crate) mod capture;
pub(crate) mod fill;
pub(crate) mod placement;

use crate::writer::Hold;

/// A follower to fill: the writer has put a reset of `ranges` on its stream, and every later
/// batch waits for `hold`.
pub struct Fill {
    pub dest: String,
    /// The ring the fill belongs to: pages of another ring are refused.
    pub epoch: u64,
    pub ranges: Vec<(u64, u64)>,
    pub hold: Hold,
}
