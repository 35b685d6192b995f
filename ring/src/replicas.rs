//! Copies: which nodes hold a key, as pure computation.
//!
//! The rule: walk the circle clockwise from the key's hash over every member's points and take
//! the first `copies()` distinct members. The owner is the first active one among them (so it is
//! always [`Ring::owner`]: the first active member clockwise); the others are its followers, in
//! clockwise order. If all of them are standbys, the last is replaced by the first active member
//! further on, so a key always has an owner and never more than `copies()` holders.
//!
//! Why clockwise successors: a key's followers are the members that would own it if the ones
//! before them left. Removing a dead owner from the ring (the failover) therefore hands each of
//! its keys to a node that already holds a copy, and adding or removing one member changes at
//! most one holder of any key.

use crate::range::intervals;
use crate::Ring;

/// The holders of one key in a ring, borrowed from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicas<'a> {
    pub owner: &'a str,
    /// In clockwise order; `copies() - 1` of them.
    pub followers: Vec<&'a str>,
}

impl<'a> Replicas<'a> {
    /// The owner, then the followers.
    pub fn all(&self) -> impl Iterator<Item = &'a str> + '_ {
        std::iter::once(self.owner).chain(self.followers.iter().copied())
    }

    /// Whether `node` holds a copy.
    pub fn holds(&self, node: &str) -> bool {
        self.all().any(|n| n == node)
    }

    pub fn to_owned(&self) -> ReplicaSet {
        ReplicaSet {
            owner: self.owner.to_string(),
            followers: self.followers.iter().map(|f| f.to_string()).collect(),
        }
    }
}

/// The holders of a range of keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSet {
    pub owner: String,
    pub followers: Vec<String>,
}

impl ReplicaSet {
    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.owner.as_str()).chain(self.followers.iter().map(String::as_str))
    }

    pub fn holds(&self, node: &str) -> bool {
        self.all().any(|n| n == node)
    }
}

/// A range of key hashes (both ends included) whose keys have the same holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedSegment {
    pub start: u64,
    pub end: u64,
    pub replicas: ReplicaSet,
}

/// A range of key hashes whose holders differ between two rings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaChange {
    pub start: u64,
    pub end: u64,
    pub before: ReplicaSet,
    pub after: ReplicaSet,
}

/// The share of the circle (0..=1) that `start..=end` covers.
pub fn share(start: u64, end: u64) -> f64 {
    ((end - start) as f64 + 1.0) / 2f64.powi(64)
}

impl Ring {
    /// The holders of `id` (a user or group id).
    pub fn replicas(&self, id: &str) -> Replicas<'_> {
        self.replicas_at(crate::key_hash(id))
    }

    /// The holders of the keys with this hash.
    pub fn replicas_at(&self, hash: u64) -> Replicas<'_> {
        let points = &self.all_points;
        let n = points.len();
        let first = points.partition_point(|(p, _)| *p < hash) % n;
        let want = self.copies();
        let active = |i: u32| self.members[&self.names[i as usize]].state.is_active();
        // Member indexes in clockwise order, and where the owner is among them.
        let mut chosen: Vec<u32> = Vec::with_capacity(want);
        let mut owner: Option<usize> = None;
        for step in 0..n {
            let m = points[(first + step) % n].1;
            if chosen.len() < want {
                if chosen.contains(&m) {
                    continue;
                }
                chosen.push(m);
                if owner.is_none() && active(m) {
                    owner = Some(chosen.len() - 1);
                }
            } else if owner.is_none() && active(m) {
                // Every chosen member is a standby: the first active one further on owns.
                chosen[want - 1] = m;
                owner = Some(want - 1);
            }
            if chosen.len() == want && owner.is_some() {
                break;
            }
        }
        let owner = owner.expect("a ring has an active member");
        let name = |i: u32| self.names[i as usize].as_str();
        Replicas {
            owner: name(chosen[owner]),
            followers: chosen
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != owner)
                .map(|(_, &m)| name(m))
                .collect(),
        }
    }

    /// The whole circle as ranges with the same holders, in hash order; adjacent ranges differ.
    pub fn placed_segments(&self) -> Vec<PlacedSegment> {
        let cuts: Vec<u64> = cut_points(&[self]);
        let mut out: Vec<PlacedSegment> = Vec::new();
        for (start, end) in intervals(&cuts) {
            let r = self.replicas_at(end);
            match out.last_mut() {
                Some(s) if s.replicas.owner == r.owner && s.replicas.followers == r.followers => {
                    s.end = end
                }
                _ => out.push(PlacedSegment {
                    start,
                    end,
                    replicas: r.to_owned(),
                }),
            }
        }
        out
    }

    /// The share of the circle (0..=1) of which `node` holds copies.
    pub fn held_share(&self, node: &str) -> f64 {
        self.placed_segments()
            .iter()
            .filter(|s| s.replicas.holds(node))
            .map(|s| share(s.start, s.end))
            .sum()
    }
}

/// Where the holders of keys differ from `from` to `to`, in hash order, adjacent ranges with the
/// same change merged.
pub fn changes(from: &Ring, to: &Ring) -> Vec<ReplicaChange> {
    let cuts = cut_points(&[from, to]);
    let mut out: Vec<ReplicaChange> = Vec::new();
    for (start, end) in intervals(&cuts) {
        let (a, b) = (from.replicas_at(end), to.replicas_at(end));
        if a == b {
            continue;
        }
        let (a, b) = (a.to_owned(), b.to_owned());
        match out.last_mut() {
            Some(c) if c.end + 1 == start && c.before == a && c.after == b => c.end = end,
            _ => out.push(ReplicaChange {
                start,
                end,
                before: a,
                after: b,
            }),
        }
    }
    out
}

/// Every point of every member of these rings, sorted, without repeats: where the circle is cut
/// into ranges with the same holders (and so the same owner) in each ring.
pub(crate) fn cut_points(rings: &[&Ring]) -> Vec<u64> {
    let mut cuts: Vec<u64> = rings
        .iter()
        .flat_map(|r| r.all_points.iter().map(|(h, _)| *h))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

#[cfg(test)]
mod tests;
