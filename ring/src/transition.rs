//! Moving from one ring version to the next (BRIEF §5), as pure computation.
//!
//! A move is a pair of rings: `from` (current) and `to` (next, one epoch later). The circle of
//! key hashes splits into intervals at every virtual node of either ring; inside an interval both
//! rings have a fixed owner, so the keys that move form a list of [`Segment`]s, each a contiguous
//! range of key hashes (and so, because storage keys begin with the key hash, a contiguous key
//! range on disk).
//!
//! During the move:
//! - the session owner of every key is its `from` owner (one node, always);
//! - writes for a key go to every holder of it in either ring ([`Transition::write_targets`]):
//!   both owners if it moves, and with more than one copy per key the followers of both rings;
//! - the move may commit once every node involved has seen the next ring and every old owner has
//!   copied what the next ring's new holders lack ([`Transition::may_commit`]).
//!
//! After the commit `to` is the current ring, the session owner is the `to` owner, and a holder
//! of the old ring that holds nothing of a range in the next one drops it
//! ([`Transition::releases`]).
//!
//! With one copy per key the holders' changes ([`Transition::holder_changes`]) are exactly the
//! owners' ([`Segment`]s); with more they also cover followers, which fill like new owners.
//! Nothing here does I/O: node, router and `chatctl` all call these functions, and the property
//! tests below check them exhaustively.

use std::collections::{BTreeMap, BTreeSet};

pub use crate::plan::{plan_add, plan_remove};
use crate::range::intervals;
use crate::replicas::{changes, cut_points, ReplicaChange};
use crate::{Ring, RingError};

/// A range of key hashes, both ends included, that moves from one node to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub start: u64,
    pub end: u64,
    pub from: String,
    pub to: String,
}

impl Segment {
    pub fn contains(&self, hash: u64) -> bool {
        self.start <= hash && hash <= self.end
    }

    /// The share of the circle this segment covers (0..=1).
    pub fn share(&self) -> f64 {
        ((self.end - self.start) as f64 + 1.0) / 2f64.powi(64)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("the next ring's epoch {next} must be greater than the current {current}")]
    EpochNotGrowing { current: u64, next: u64 },
    #[error("{0:?} is already a member")]
    AlreadyMember(String),
    #[error("{0:?} is not a member")]
    NotMember(String),
    #[error("{0:?} is not a standby member")]
    NotStandby(String),
    #[error("the last member cannot be removed")]
    LastMember,
    #[error(transparent)]
    Ring(#[from] RingError),
}

/// What one node has reported about the move in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeProgress {
    /// It has seen the next ring (and from then on dual-writes moving keys).
    pub seen: bool,
    /// It has copied every segment it is the old owner of.
    pub copied: bool,
}

/// A move from `from` to `to`.
#[derive(Debug, Clone)]
pub struct Transition {
    from: Ring,
    to: Ring,
    segments: Vec<Segment>,
    holder_changes: Vec<ReplicaChange>,
}

/// Two transitions are the same move when both rings are: the same epochs, members and
/// replication factors.
impl PartialEq for Transition {
    fn eq(&self, other: &Transition) -> bool {
        let same = |a: &Ring, b: &Ring| {
            a.epoch() == b.epoch()
                && a.members == b.members
                && a.replication_factor() == b.replication_factor()
        };
        same(&self.from, &other.from) && same(&self.to, &other.to)
    }
}

impl Transition {
    pub fn new(from: Ring, to: Ring) -> Result<Transition, TransitionError> {
        if to.epoch() <= from.epoch() {
            return Err(TransitionError::EpochNotGrowing {
                current: from.epoch(),
                next: to.epoch(),
            });
        }
        let segments = moving_segments(&from, &to);
        let holder_changes = changes(&from, &to);
        Ok(Transition {
            from,
            to,
            segments,
            holder_changes,
        })
    }

    pub fn from(&self) -> &Ring {
        &self.from
    }

    pub fn to(&self) -> &Ring {
        &self.to
    }

    /// Every moving range, in hash order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The segments `node` must copy (it owns them now and loses them).
    pub fn copies_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.from == node)
    }

    /// The segments `node` receives.
    pub fn receives<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.to == node)
    }

    /// The segment a key hash lies in, if it moves.
    pub fn segment_of(&self, hash: u64) -> Option<&Segment> {
        let i = self.segments.partition_point(|s| s.end < hash);
        self.segments.get(i).filter(|s| s.contains(hash))
    }

    /// Where a key moves: `Some((old owner, new owner))`, `None` if it stays.
    pub fn moving(&self, id: &str) -> Option<(&str, &str)> {
        let s = self.segment_of(crate::key_hash(id))?;
        Some((&s.from, &s.to))
    }

    /// The one node that serves sessions for `id` (and assigns its sequence numbers): the old
    /// owner until the move commits, the new one after.
    pub fn session_owner(&self, id: &str, committed: bool) -> &str {
        if committed {
            self.to.owner(id)
        } else {
            self.from.owner(id)
        }
    }

    /// The nodes that must store a write for `id` before it is acknowledged while the move is in
    /// flight: the session owner first, then its followers, then the next ring's holders that
    /// are not yet among them (the new owner first). Each once.
    pub fn write_targets(&self, id: &str) -> Vec<&str> {
        let (old, new) = (self.from.replicas(id), self.to.replicas(id));
        let mut targets: Vec<&str> = old.all().collect();
        for n in new.all() {
            if !targets.contains(&n) {
                targets.push(n);
            }
        }
        targets
    }

    /// Every range whose holders change, in hash order.
    pub fn holder_changes(&self) -> &[ReplicaChange] {
        &self.holder_changes
    }

    /// The ranges `node` must be filled with before the commit (it holds them in the next ring
    /// and not in this one). Their current owner copies them.
    pub fn fills<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ReplicaChange> + 'a {
        self.holder_changes
            .iter()
            .filter(move |c| c.after.holds(node) && !c.before.holds(node))
    }

    /// The ranges `node` copies to new holders (it owns them now, and some holder of the next
    /// ring lacks them).
    pub fn gives<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ReplicaChange> + 'a {
        self.holder_changes
            .iter()
            .filter(move |c| c.before.owner == node && c.after.all().any(|n| !c.before.holds(n)))
    }

    /// The ranges `node` drops after the commit (it holds them now and not in the next ring).
    pub fn releases<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a ReplicaChange> + 'a {
        self.holder_changes
            .iter()
            .filter(move |c| c.before.holds(node) && !c.after.holds(node))
    }

    /// The share of the key space that moves (0..=1).
    pub fn moved_share(&self) -> f64 {
        self.segments.iter().map(Segment::share).sum()
    }

    /// Every node with a part in the move: members of either ring.
    pub fn nodes(&self) -> BTreeSet<&str> {
        self.from
            .members()
            .chain(self.to.members())
            .map(|(id, _)| id)
            .collect()
    }

    /// How the move ended, judged from a later current ring: committed if it holds the next
    /// ring's members at (or past) its epoch; aborted if it holds other members there (an abort
    /// keeps the old members under the next ring's epoch). Neither while the epoch is older.
    pub fn committed_in(&self, ring: &Ring) -> bool {
        ring.epoch() >= self.to.epoch() && ring.members == self.to.members
    }

    pub fn aborted_in(&self, ring: &Ring) -> bool {
        ring.epoch() >= self.to.epoch() && ring.members != self.to.members
    }

    /// Whether the move may commit: every node of either ring has seen the next ring, and every
    /// node with ranges to give has copied them. A node missing from `progress` has done
    /// neither.
    pub fn may_commit(&self, progress: &BTreeMap<String, NodeProgress>) -> bool {
        let get = |n: &str| progress.get(n).copied().unwrap_or_default();
        self.nodes().into_iter().all(|n| {
            let p = get(n);
            p.seen && (p.copied || self.gives(n).next().is_none())
        })
    }
}

/// Compares the owners of both rings interval by interval between consecutive points of either
/// ring, and merges adjacent intervals with the same move.
fn moving_segments(from: &Ring, to: &Ring) -> Vec<Segment> {
    let (pf, pt) = (from.points(), to.points());
    let mut out: Vec<Segment> = Vec::new();
    for (start, end) in intervals(&cut_points(&[from, to])) {
        let (a, b) = (owner_at(&pf, end), owner_at(&pt, end));
        if a == b {
            continue;
        }
        match out.last_mut() {
            Some(s) if s.end + 1 == start && s.from == a && s.to == b => s.end = end,
            _ => out.push(Segment {
                start,
                end,
                from: a.to_string(),
                to: b.to_string(),
            }),
        }
    }
    out
}

/// The node of the first point at or after `hash`, wrapping to the first point.
fn owner_at<'a>(points: &'a [(u64, &'a str)], hash: u64) -> &'a str {
    let i = points.partition_point(|(p, _)| *p < hash);
    points.get(i).unwrap_or(&points[0]).1
}

#[cfg(test)]
mod tests;
